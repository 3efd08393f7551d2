//! The tables, their migrations, and every statement the store runs.

use std::fmt;

use eventfold_core::{Error, Result};
use rusqlite::Connection;

use crate::sql_error;

/// Migration steps, in order: step `i` takes the schema from version `i` to `i + 1`.
/// The version lives in `PRAGMA user_version`. Never edit a released step; append one.
const MIGRATIONS: &[&str] = &[
    // 1: events (also the notification log), snapshots, follower positions.
    //
    // `id` is a plain rowid alias, not AUTOINCREMENT: a new row gets the largest id + 1,
    // so ids are never reused as long as the newest event is never deleted, which the
    // trigger enforces. AUTOINCREMENT would give the same guarantee by updating
    // `sqlite_sequence` in every commit: one more page per commit, ~15% more CPU per
    // command in the Worlds benchmark.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        state BLOB NOT NULL,
        UNIQUE (stream_id, version)
    );
    CREATE INDEX events_topic_id ON events (topic, id);
    CREATE TRIGGER events_keep_newest BEFORE DELETE ON events
    WHEN old.id = (SELECT MAX(id) FROM events)
    BEGIN
        SELECT RAISE(ABORT, 'the newest event cannot be deleted: its id would be reused');
    END;
    CREATE TABLE snapshots (
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (stream_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE tracking (
        follower TEXT NOT NULL PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: record metadata (correlation ids, headers) beside each event, as JSON text;
    // NULL for empty metadata and for every event written before this step. Adding a
    // nullable column without a default rewrites no row.
    "ALTER TABLE events ADD COLUMN metadata TEXT;",
];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATE_HINT: &str = "run `eventfold migrate`";
const NEWER_HINT: &str = "the database was written by a newer eventfold; upgrade eventfold";

// Statements. Each is prepared once per connection (`prepare_cached`), so the hot path
// never parses SQL.
pub(crate) const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const ROLLBACK: &str = "ROLLBACK";

pub(crate) const SAVEPOINT: &str = "SAVEPOINT eventfold_record";
pub(crate) const RELEASE: &str = "RELEASE eventfold_record";
pub(crate) const ROLLBACK_TO: &str = "ROLLBACK TO eventfold_record";

/// Inserts one event if it continues its stream (version 1, or the previous version
/// exists): 0 rows changed means it does not, a gap (the version is NULL, which the
/// `NOT NULL` column refuses) or a taken version (the unique key), and `OR IGNORE` skips
/// the row in both cases instead of failing the statement.
///
/// `VALUES`, not `INSERT ... SELECT ... WHERE EXISTS (... events ...)`: an insert whose
/// `SELECT` reads the table it writes first copies its rows into a temporary b-tree (see
/// [`APPEND_EVENT`]).
pub(crate) const INSERT_EVENT: &str =
    "INSERT OR IGNORE INTO events (stream_id, version, topic, timestamp, state, metadata) \
     VALUES (?1, CASE WHEN ?2 = 1 OR EXISTS (SELECT 1 FROM events \
                                             WHERE stream_id = ?1 AND version = ?2 - 1) \
                      THEN ?2 END, \
             ?3, ?4, ?5, ?6)";
/// Inserts one event at the next version of its stream. SQLite has one writer at a time,
/// so no other writer can take that version between the `MAX` and the insert.
///
/// `VALUES` with a scalar subquery, not `INSERT ... SELECT ... FROM events`: an
/// `INSERT ... SELECT` that reads the table it writes first copies the selected rows into
/// a temporary b-tree (opened and closed per call), which cost about 18,000 instructions
/// per append, a sixth of a save with its change record (callgrind, `eventfold bench
/// changes --backend sqlite`).
pub(crate) const APPEND_EVENT: &str =
    "INSERT INTO events (stream_id, version, topic, timestamp, state, metadata) \
     VALUES (?1, (SELECT COALESCE(MAX(version), 0) + 1 FROM events WHERE stream_id = ?1), \
             ?2, ?3, ?4, ?5)";
pub(crate) const INSERT_SNAPSHOT: &str =
    "INSERT INTO snapshots (stream_id, version, topic, timestamp, state) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (stream_id, version) DO NOTHING";
pub(crate) const MOVE_TRACKING: &str = "INSERT INTO tracking (follower, position) VALUES (?1, ?2) \
     ON CONFLICT (follower) DO UPDATE SET position = excluded.position \
     WHERE excluded.position > tracking.position";
pub(crate) const TRACKING_POSITION: &str = "SELECT position FROM tracking WHERE follower = ?1";
pub(crate) const FOLLOWERS: &str = "SELECT follower, position FROM tracking ORDER BY follower";

// Per-stream reads: ?1 stream, ?2 after (exclusive), ?3 up to (inclusive), ?4 limit (-1 = none).
// Every record read has the columns `version, topic, timestamp, state, metadata`
// (snapshots have no metadata: NULL).
pub(crate) const EVENTS_ASC: &str =
    "SELECT version, topic, timestamp, state, metadata FROM events \
     WHERE stream_id = ?1 AND version > ?2 AND version <= ?3 ORDER BY version ASC LIMIT ?4";
pub(crate) const EVENTS_DESC: &str =
    "SELECT version, topic, timestamp, state, metadata FROM events \
     WHERE stream_id = ?1 AND version > ?2 AND version <= ?3 ORDER BY version DESC LIMIT ?4";
pub(crate) const SNAPSHOTS_ASC: &str =
    "SELECT version, topic, timestamp, state, NULL FROM snapshots \
     WHERE stream_id = ?1 AND version > ?2 AND version <= ?3 ORDER BY version ASC LIMIT ?4";
pub(crate) const SNAPSHOTS_DESC: &str =
    "SELECT version, topic, timestamp, state, NULL FROM snapshots \
     WHERE stream_id = ?1 AND version > ?2 AND version <= ?3 ORDER BY version DESC LIMIT ?4";

/// The latest snapshot at or below ?2 (first column 1) and the events after it up to ?2
/// (first column 0), in one statement, hence one consistent read.
pub(crate) const LOAD: &str = "SELECT 1, version, topic, timestamp, state, NULL FROM ( \
         SELECT version, topic, timestamp, state FROM snapshots \
         WHERE stream_id = ?1 AND version <= ?2 ORDER BY version DESC LIMIT 1) \
     UNION ALL \
     SELECT 0, version, topic, timestamp, state, metadata FROM events \
     WHERE stream_id = ?1 AND version <= ?2 AND version > ( \
         SELECT COALESCE(MAX(version), 0) FROM snapshots WHERE stream_id = ?1 AND version <= ?2)";

// The notification log: ?1 after (exclusive), ?2 before (exclusive), ?3 limit, ?4 topics
// as a JSON array.
pub(crate) const NOTIFICATIONS_ASC: &str =
    "SELECT id, stream_id, version, topic, timestamp, state, metadata FROM events \
     WHERE id > ?1 AND id < ?2 ORDER BY id ASC LIMIT ?3";
pub(crate) const NOTIFICATIONS_DESC: &str =
    "SELECT id, stream_id, version, topic, timestamp, state, metadata FROM events \
     WHERE id > ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3";
pub(crate) const NOTIFICATIONS_BY_TOPIC_ASC: &str =
    "SELECT id, stream_id, version, topic, timestamp, state, metadata FROM events \
     WHERE id > ?1 AND id < ?2 AND topic IN (SELECT value FROM json_each(?4)) \
     ORDER BY id ASC LIMIT ?3";
pub(crate) const NOTIFICATIONS_BY_TOPIC_DESC: &str =
    "SELECT id, stream_id, version, topic, timestamp, state, metadata FROM events \
     WHERE id > ?1 AND id < ?2 AND topic IN (SELECT value FROM json_each(?4)) \
     ORDER BY id DESC LIMIT ?3";
pub(crate) const MAX_NOTIFICATION_ID: &str = "SELECT COALESCE(MAX(id), 0) FROM events";

/// Every statement the store runs, to check the schema and warm a connection's cache.
const STATEMENTS: &[&str] = &[
    INSERT_EVENT,
    APPEND_EVENT,
    INSERT_SNAPSHOT,
    MOVE_TRACKING,
    TRACKING_POSITION,
    FOLLOWERS,
    EVENTS_ASC,
    EVENTS_DESC,
    SNAPSHOTS_ASC,
    SNAPSHOTS_DESC,
    LOAD,
    NOTIFICATIONS_ASC,
    NOTIFICATIONS_DESC,
    NOTIFICATIONS_BY_TOPIC_ASC,
    NOTIFICATIONS_BY_TOPIC_DESC,
    MAX_NOTIFICATION_ID,
];

/// Room in each connection's statement cache: every statement above plus the
/// transaction statements, with space left for a projection's own statements.
pub(crate) const STATEMENT_CACHE_CAPACITY: usize = 64;

/// What [`crate::SqliteStore::migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version found before migrating (0 = no tables).
    pub from: i64,
    /// The schema version after migrating (the one this build expects).
    pub to: i64,
}

impl MigrationReport {
    /// True if at least one migration step ran.
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changed() {
            write!(
                f,
                "migrated sqlite schema from version {} to {}",
                self.from, self.to
            )
        } else {
            write!(f, "sqlite schema already at version {}", self.to)
        }
    }
}

/// Reads `PRAGMA user_version`.
pub(crate) fn user_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql_error)
}

fn newer(found: i64) -> Error {
    Error::SchemaVersion {
        backend: "sqlite",
        found,
        expected: SCHEMA_VERSION,
        hint: NEWER_HINT.to_owned(),
    }
}

/// Applies the missing steps in one `BEGIN IMMEDIATE` transaction (so two processes
/// migrating at once serialise, and the second finds nothing to do).
pub(crate) fn migrate(conn: &Connection) -> Result<MigrationReport> {
    conn.execute_batch(BEGIN_IMMEDIATE).map_err(sql_error)?;
    let result = apply_migrations(conn);
    match result {
        Ok(report) => match conn.execute_batch(COMMIT) {
            Ok(()) => {
                if report.changed() {
                    tracing::info!(from = report.from, to = report.to, "migrated sqlite schema");
                }
                Ok(report)
            }
            Err(e) => {
                rollback_quietly(conn);
                Err(sql_error(e))
            }
        },
        Err(e) => {
            rollback_quietly(conn);
            Err(e)
        }
    }
}

fn apply_migrations(conn: &Connection) -> Result<MigrationReport> {
    let from = user_version(conn)?;
    if from > SCHEMA_VERSION {
        return Err(newer(from));
    }
    if from < 0 {
        return Err(Error::SchemaVersion {
            backend: "sqlite",
            found: from,
            expected: SCHEMA_VERSION,
            hint: "the file's user_version is not one eventfold writes; is it another program's database?"
                .to_owned(),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        conn.execute_batch(step).map_err(sql_error)?;
        // PRAGMA takes no parameters; the number is ours, not input.
        conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(sql_error)?;
    }
    Ok(MigrationReport {
        from,
        to: SCHEMA_VERSION,
    })
}

/// Checks the version without changing anything (for `create_tables = false`).
pub(crate) fn require_current(conn: &Connection) -> Result<()> {
    let found = user_version(conn)?;
    match found {
        SCHEMA_VERSION => Ok(()),
        newer_version if newer_version > SCHEMA_VERSION => Err(newer(newer_version)),
        older => Err(Error::SchemaVersion {
            backend: "sqlite",
            found: older,
            expected: SCHEMA_VERSION,
            hint: MIGRATE_HINT.to_owned(),
        }),
    }
}

/// Prepares every statement: fails with [`Error::SchemaVersion`] if the tables do not
/// match the version the file claims (changed by hand or by another program), and leaves
/// the statements in the connection's cache.
pub(crate) fn check_statements(conn: &Connection) -> Result<()> {
    for sql in STATEMENTS {
        if let Err(e) = conn.prepare_cached(sql) {
            return Err(Error::SchemaVersion {
                backend: "sqlite",
                found: user_version(conn).unwrap_or(-1),
                expected: SCHEMA_VERSION,
                hint: format!(
                    "the eventfold tables do not match their schema version ({e}); \
                     restore the file from a backup"
                ),
            });
        }
    }
    Ok(())
}

/// Rolls back the open transaction, if any; errors are moot (the caller already fails).
pub(crate) fn rollback_quietly(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn
            .prepare_cached(ROLLBACK)
            .and_then(|mut stmt| stmt.execute([]))
        {
            tracing::warn!(error = %e, "sqlite rollback failed");
        }
    }
}
