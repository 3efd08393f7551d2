//! [`SqliteStore`]: the storage contract on one SQLite file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventfold_core::{
    error_chain, CodecError, Conflict, Error, EventReader, EventWriter, Loaded, Metadata,
    Notification, NotificationQuery, NotificationReader, RecordKind, Recording, Result, Store,
    StoredEvent, StreamQuery, Timestamp, Tracking, TrackingReader, Transaction,
};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Row};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::checkpoint::{self, Checkpointer};
use crate::config::{SqliteConfig, Synchronous};
use crate::schema::{self, MigrationReport};
use crate::transaction::SqliteTransaction;
use crate::{is_busy, sql_error, OpenError};

/// Reader connections per store, opened on first use. Readers never block each other or
/// the writer in WAL mode; more than the cores that run tasks would only sit idle.
const READERS: usize = 4;

/// Where the database lives.
#[derive(Debug)]
enum Location {
    File(PathBuf),
    /// A `memdb` URI, shared by the store's connections and gone with the last of them.
    Memory(String),
}

struct Inner {
    location: Location,
    synchronous: Synchronous,
    busy_timeout: Duration,
    /// The one connection that writes. SQLite has one writer per file anyway; taking turns
    /// here makes in-process writers wait on an async lock instead of in SQLite's busy
    /// handler, which would block the thread.
    writer: Arc<Mutex<Connection>>,
    /// Read-only connections, `None` until first used.
    readers: Box<[Mutex<Option<Connection>>]>,
    next_reader: AtomicUsize,
    wakeups: Arc<Notify>,
    /// Checkpoints the log in the background (files only).
    checkpointer: Option<Checkpointer>,
}

/// The embedded event store: events, snapshots, the notification log and follower
/// positions in one SQLite database. See the [crate docs](crate) for the design.
///
/// Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.location)
            .field("synchronous", &self.inner.synchronous)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

impl Inner {
    fn open_connection(&self, role: Role) -> Result<Connection> {
        open_connection(&self.location, self.synchronous, self.busy_timeout, role)
    }
}

fn open_connection(
    location: &Location,
    synchronous: Synchronous,
    busy_timeout: Duration,
    role: Role,
) -> Result<Connection> {
    let (name, flags) = match location {
        Location::File(path) => (path.as_os_str(), OpenFlags::default()),
        Location::Memory(uri) => (std::ffi::OsStr::new(uri.as_str()), OpenFlags::default()),
    };
    let setup = || -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(name, flags)?;
        conn.busy_timeout(busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(schema::STATEMENT_CACHE_CAPACITY);
        match role {
            Role::Writer => {
                if let Location::File(_) = location {
                    let mode: String =
                        conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
                    if !mode.eq_ignore_ascii_case("wal") {
                        tracing::warn!(
                            path = %Path::new(name).display(),
                            journal_mode = %mode,
                            "sqlite could not switch to WAL; readers and the writer will block each other"
                        );
                    }
                }
                conn.execute_batch(synchronous.pragma())?;
                if let Location::File(_) = location {
                    conn.execute_batch(checkpoint::WRITER_AUTOCHECKPOINT)?;
                }
            }
            Role::Reader => conn.execute_batch("PRAGMA query_only = ON")?,
        }
        Ok(conn)
    };
    setup().map_err(|source| {
        let busy = is_busy(&source);
        let error = OpenError {
            path: match location {
                Location::File(path) => path.display().to_string(),
                Location::Memory(uri) => uri.clone(),
            },
            source,
        };
        if busy {
            Error::transient("sqlite", error)
        } else {
            Error::backend("sqlite", error)
        }
    })
}

impl SqliteStore {
    /// Opens (or creates) the database file of `config`, switches it to WAL and applies
    /// the pragmas.
    ///
    /// With `create_tables` it migrates the schema to the current version; without, it
    /// fails with [`Error::SchemaVersion`] (hint: run `eventfold migrate`) unless the file
    /// is already at the current version. A file written by a newer eventfold always fails
    /// with [`Error::SchemaVersion`]. A file that cannot be opened fails with
    /// [`Error::Backend`] naming the path.
    pub fn open(config: &SqliteConfig) -> Result<Self> {
        if !config.create_tables && !config.path.exists() {
            return Err(Error::SchemaVersion {
                backend: "sqlite",
                found: 0,
                expected: schema::SCHEMA_VERSION,
                hint: format!(
                    "there is no database at {}; run `eventfold migrate`",
                    config.path.display()
                ),
            });
        }
        Self::open_at(
            Location::File(config.path.clone()),
            config.synchronous,
            config.busy_timeout,
            config.create_tables,
        )
    }

    /// A fresh, private, empty store in memory, gone when the last clone drops: for tests.
    ///
    /// It uses SQLite's `memdb` storage, shared by the store's connections (so a
    /// transaction and concurrent reads behave as with a file), in rollback-
    /// journal mode since `memdb` has no WAL. Each call gets its own database.
    pub fn open_in_memory() -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let uri = format!(
            "file:/eventfold-{}-{}?vfs=memdb",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::open_at(
            Location::Memory(uri),
            Synchronous::Off,
            Duration::from_secs(5),
            true,
        )
    }

    fn open_at(
        location: Location,
        synchronous: Synchronous,
        busy_timeout: Duration,
        create_tables: bool,
    ) -> Result<Self> {
        let writer = open_connection(&location, synchronous, busy_timeout, Role::Writer)?;
        if create_tables {
            schema::migrate(&writer)?;
        } else {
            schema::require_current(&writer)?;
        }
        schema::check_statements(&writer)?;
        let writer = Arc::new(Mutex::new(writer));
        let checkpointer = match location {
            Location::File(_) => {
                let conn = open_connection(&location, synchronous, busy_timeout, Role::Writer)?;
                match Checkpointer::start(conn, Arc::downgrade(&writer)) {
                    Ok(checkpointer) => Some(checkpointer),
                    Err(e) => {
                        // Not fatal: SQLite checkpoints inside commits as it normally does.
                        tracing::warn!(error = %e, "no sqlite checkpoint thread");
                        writer
                            .try_lock()
                            .map_err(|e| Error::backend("sqlite", e))?
                            .execute_batch("PRAGMA wal_autocheckpoint = 1000")
                            .map_err(sql_error)?;
                        None
                    }
                }
            }
            Location::Memory(_) => None,
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                location,
                synchronous,
                busy_timeout,
                writer,
                readers: (0..READERS).map(|_| Mutex::new(None)).collect(),
                next_reader: AtomicUsize::new(0),
                wakeups: Arc::new(Notify::new()),
                checkpointer,
            }),
        })
    }

    /// After a commit: let the checkpoint thread know the log grew.
    pub(crate) fn committed(&self) {
        if let Some(checkpointer) = &self.inner.checkpointer {
            checkpointer.poke();
        }
    }

    /// Brings the schema to the version this build expects, in one transaction.
    /// Idempotent: at the current version it changes nothing and reports `from == to`.
    ///
    /// It runs on a connection of its own, so it is safe to call from anywhere (it waits
    /// up to the busy timeout for a write in progress).
    pub fn migrate(&self) -> Result<MigrationReport> {
        let conn = self.inner.open_connection(Role::Writer)?;
        schema::migrate(&conn)
    }

    /// Creates or upgrades the database file of `config` to this build's schema version
    /// without opening a store, so the report says what was applied (what `eventfold
    /// migrate` runs). Creates the file if it does not exist.
    pub fn migrate_with(config: &SqliteConfig) -> Result<MigrationReport> {
        let location = Location::File(config.path.clone());
        let conn = open_connection(
            &location,
            config.synchronous,
            config.busy_timeout,
            Role::Writer,
        )?;
        schema::migrate(&conn)
    }

    /// The schema version stored in the database (`PRAGMA user_version`; 0 = no tables).
    pub fn schema_version(&self) -> Result<i64> {
        let conn = self.inner.open_connection(Role::Reader)?;
        schema::user_version(&conn)
    }

    /// The database file, or `None` for [`SqliteStore::open_in_memory`].
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.location {
            Location::File(path) => Some(path),
            Location::Memory(_) => None,
        }
    }

    /// A reader connection: the first idle one, or else a turn on one of them.
    async fn reader(&self) -> MutexGuard<'_, Option<Connection>> {
        let readers = &self.inner.readers;
        for reader in readers.iter() {
            if let Ok(guard) = reader.try_lock() {
                return guard;
            }
        }
        let i = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        readers[i].lock().await
    }

    /// Runs a short read inline: on the write connection if it is idle (its page cache is
    /// still valid after its own commits, where another connection would have to reread
    /// the pages), else on a reader.
    async fn read_short<T>(
        &self,
        f: impl FnOnce(&Connection) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        if let Ok(conn) = self.inner.writer.try_lock() {
            return f(&conn).map_err(Error::from);
        }
        self.read(f).await
    }

    /// Runs `f` on a reader connection, inline: a statement takes microseconds, less than
    /// a hop to another thread would.
    async fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut guard = self.reader().await;
        let conn = match &mut *guard {
            Some(conn) => conn,
            slot => slot.insert(self.inner.open_connection(Role::Reader)?),
        };
        f(conn).map_err(Error::from)
    }

    /// Wakes the followers of this process: new notifications were committed.
    pub(crate) fn wake_followers(&self) {
        self.inner.wakeups.notify_waiters();
    }
}

/// Why a read failed: the driver, or a stored value it could not decode.
pub(crate) enum Failure {
    Sql(rusqlite::Error),
    Store(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sql(error)
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Sql(e) => sql_error(e),
            Failure::Store(e) => e,
        }
    }
}

/// `u64` bounds as SQLite integers (which stop at `i64::MAX`).
fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn limit(value: Option<usize>) -> i64 {
    value.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

/// Reads `version, topic, timestamp, state, metadata` starting at column `first`.
fn read_record(
    row: &Row<'_>,
    stream_id: String,
    first: usize,
) -> std::result::Result<StoredEvent, Failure> {
    let state = match row.get_ref(first + 3)? {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes.to_vec(),
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                first + 3,
                other.data_type(),
                "state is neither a BLOB nor TEXT".into(),
            )
            .into())
        }
    };
    let version: u64 = row.get(first)?;
    let metadata = match row.get_ref(first + 4)? {
        ValueRef::Null => Metadata::new(),
        value => read_metadata(value).map_err(|source| {
            Failure::Store(Error::Decode {
                kind: RecordKind::Metadata,
                stream_id: stream_id.clone(),
                version,
                source: CodecError::Json(source),
            })
        })?,
    };
    Ok(StoredEvent::new(
        stream_id,
        version,
        row.get::<_, String>(first + 1)?,
        Timestamp::from_micros(row.get(first + 2)?),
        state,
    )
    .with_metadata(metadata))
}

/// Parses a stored metadata value; what is not JSON text of an object is an error.
fn read_metadata(value: ValueRef<'_>) -> std::result::Result<Metadata, serde_json::Error> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Metadata::from_json(Some(text)),
            Err(_) => serde_json::from_slice(bytes),
        },
        ValueRef::Integer(i) => serde_json::from_str(&i.to_string()),
        ValueRef::Real(f) => serde_json::from_str(&f.to_string()),
        ValueRef::Null => Ok(Metadata::new()),
    }
}

fn select_stream(
    conn: &Connection,
    sql: &str,
    stream_id: &str,
    query: StreamQuery,
) -> std::result::Result<Vec<StoredEvent>, Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![
        stream_id,
        bound(query.after.unwrap_or(0)),
        bound(query.up_to.unwrap_or(u64::MAX)),
        limit(query.limit),
    ])?;
    let mut records = Vec::new();
    while let Some(row) = rows.next()? {
        records.push(read_record(row, stream_id.to_owned(), 0)?);
    }
    Ok(records)
}

/// True for a violated UNIQUE or PRIMARY KEY constraint: the typed code, not the message.
fn is_unique_violation(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(e, _) => {
            e.code == ErrorCode::ConstraintViolation
                && (e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
        }
        _ => false,
    }
}

/// The conflict for a failed recording: each of its streams with the version it expected
/// to be the latest (its first new version minus one).
fn conflict(recording: &Recording) -> Error {
    let mut expected: Vec<(String, u64)> = Vec::new();
    for event in &recording.events {
        let before = event.version.saturating_sub(1);
        match expected.iter_mut().find(|(s, _)| *s == event.stream_id) {
            Some((_, v)) => *v = (*v).min(before),
            None => expected.push((event.stream_id.clone(), before)),
        }
    }
    Error::Conflict(Conflict::streams(expected))
}

/// Moves a follower forward inside the caller's transaction, or fails with a conflict
/// when the stored position is already at or past the new one.
fn move_tracking(conn: &Connection, tracking: &Tracking) -> Result<()> {
    let changed = conn
        .prepare_cached(schema::MOVE_TRACKING)
        .and_then(|mut stmt| stmt.execute(params![tracking.follower, tracking.position]))
        .map_err(sql_error)?;
    if changed == 0 {
        let current: u64 = conn
            .prepare_cached(schema::TRACKING_POSITION)
            .and_then(|mut stmt| stmt.query_row([&tracking.follower], |row| row.get(0)))
            .map_err(sql_error)?;
        return Err(Error::Conflict(Conflict::tracking(
            tracking.follower.clone(),
            tracking.position,
            current,
        )));
    }
    Ok(())
}

/// Writes a recording inside an open transaction; returns the new notification ids (of
/// the events, then of the appends). On error the caller rolls back: a statement may have
/// been written before the failing one.
pub(crate) fn write_recording(conn: &Connection, recording: &Recording) -> Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(recording.notification_count());
    if !recording.events.is_empty() {
        let mut insert = conn
            .prepare_cached(schema::INSERT_EVENT)
            .map_err(sql_error)?;
        for event in &recording.events {
            // One statement checks both halves of "continues the stream": no gap and no
            // taken version (either way it inserts nothing).
            match insert.execute(params![
                event.stream_id,
                event.version,
                event.topic,
                event.timestamp.as_micros(),
                event.state,
                event.metadata.to_json(),
            ]) {
                Ok(1) => ids.push(conn.last_insert_rowid() as u64),
                Ok(_) => return Err(conflict(recording)),
                Err(e) if is_unique_violation(&e) => return Err(conflict(recording)),
                Err(e) => return Err(sql_error(e)),
            }
        }
    }
    if !recording.appends.is_empty() {
        let mut append = conn
            .prepare_cached(schema::APPEND_EVENT)
            .map_err(sql_error)?;
        for event in &recording.appends {
            // The next version is read and taken in one statement, under the one writer.
            append
                .execute(params![
                    event.stream_id,
                    event.topic,
                    event.timestamp.as_micros(),
                    event.state,
                    event.metadata.to_json(),
                ])
                .map_err(sql_error)?;
            ids.push(conn.last_insert_rowid() as u64);
        }
    }
    if !recording.snapshots.is_empty() {
        let mut insert = conn
            .prepare_cached(schema::INSERT_SNAPSHOT)
            .map_err(sql_error)?;
        for snapshot in &recording.snapshots {
            insert
                .execute(params![
                    snapshot.stream_id,
                    snapshot.version,
                    snapshot.topic,
                    snapshot.timestamp.as_micros(),
                    snapshot.state,
                ])
                .map_err(sql_error)?;
        }
    }
    if let Some(tracking) = &recording.tracking {
        move_tracking(conn, tracking)?;
    }
    Ok(ids)
}

#[async_trait]
impl EventReader for SqliteStore {
    async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
        let sql = if query.descending {
            schema::EVENTS_DESC
        } else {
            schema::EVENTS_ASC
        };
        self.read_short(|conn| select_stream(conn, sql, stream_id, query))
            .await
    }

    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        let sql = if query.descending {
            schema::SNAPSHOTS_DESC
        } else {
            schema::SNAPSHOTS_ASC
        };
        self.read_short(|conn| select_stream(conn, sql, stream_id, query))
            .await
    }

    /// One statement: the latest snapshot at or below `up_to` and the events after it,
    /// read in one consistent snapshot of the database.
    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
        self.read_short(|conn| {
            let mut stmt = conn.prepare_cached(schema::LOAD)?;
            let mut rows = stmt.query(params![stream_id, bound(up_to.unwrap_or(u64::MAX))])?;
            let (mut snapshot, mut events) = (None, Vec::new());
            while let Some(row) = rows.next()? {
                let is_snapshot: bool = row.get(0)?;
                let record = read_record(row, stream_id.to_owned(), 1)?;
                if is_snapshot {
                    snapshot = Some(record);
                } else {
                    events.push(record);
                }
            }
            // The index yields versions in order; SQL does not promise it for UNION ALL.
            if !events.is_sorted_by_key(|e| e.version) {
                events.sort_by_key(|e| e.version);
            }
            Ok(Loaded::new(snapshot, events))
        })
        .await
    }
}

#[async_trait]
impl EventWriter for SqliteStore {
    /// `BEGIN IMMEDIATE`, the inserts, `COMMIT`: one commit per recording, all or nothing.
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
        let ids = {
            let conn = self.inner.writer.lock().await;
            conn.prepare_cached(schema::BEGIN_IMMEDIATE)
                .and_then(|mut stmt| stmt.execute([]))
                .map_err(sql_error)?;
            let committed = write_recording(&conn, recording).and_then(|ids| {
                conn.prepare_cached(schema::COMMIT)
                    .and_then(|mut stmt| stmt.execute([]))
                    .map_err(sql_error)?;
                Ok(ids)
            });
            if committed.is_err() {
                schema::rollback_quietly(&conn);
            }
            committed?
        };
        self.committed();
        if !ids.is_empty() {
            self.inner.wakeups.notify_waiters();
        }
        Ok(ids)
    }
}

fn read_notification(row: &Row<'_>) -> std::result::Result<Notification, Failure> {
    Ok(Notification::new(
        row.get(0)?,
        read_record(row, row.get(1)?, 2)?,
    ))
}

#[async_trait]
impl NotificationReader for SqliteStore {
    /// Gap-safe because SQLite has one writer at a time: ids are given in commit order.
    async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let topics = if query.topics.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&query.topics).map_err(|e| Error::backend("sqlite", e))?)
        };
        let after = bound(query.after);
        let before = bound(query.before.unwrap_or(u64::MAX));
        let limit = limit(Some(query.limit));
        self.read(|conn| {
            let mut stmt;
            let mut rows = match &topics {
                None => {
                    stmt = conn.prepare_cached(if query.descending {
                        schema::NOTIFICATIONS_DESC
                    } else {
                        schema::NOTIFICATIONS_ASC
                    })?;
                    stmt.query(params![after, before, limit])?
                }
                Some(topics) => {
                    stmt = conn.prepare_cached(if query.descending {
                        schema::NOTIFICATIONS_BY_TOPIC_DESC
                    } else {
                        schema::NOTIFICATIONS_BY_TOPIC_ASC
                    })?;
                    stmt.query(params![after, before, limit, topics])?
                }
            };
            let mut notifications = Vec::with_capacity(query.limit.min(1024));
            while let Some(row) = rows.next()? {
                notifications.push(read_notification(row)?);
            }
            Ok(notifications)
        })
        .await
    }

    async fn max_notification_id(&self) -> Result<u64> {
        self.read_short(|conn| {
            Ok(conn
                .prepare_cached(schema::MAX_NOTIFICATION_ID)?
                .query_row([], |row| row.get(0))?)
        })
        .await
    }

    /// Notified after every commit of this process that recorded events. Other processes
    /// writing the same file are seen by polling.
    fn wakeups(&self) -> Option<Arc<Notify>> {
        Some(self.inner.wakeups.clone())
    }
}

#[async_trait]
impl TrackingReader for SqliteStore {
    async fn tracking_position(&self, follower: &str) -> Result<Option<u64>> {
        self.read_short(|conn| {
            let mut stmt = conn.prepare_cached(schema::TRACKING_POSITION)?;
            let mut rows = stmt.query([follower])?;
            Ok(rows.next()?.map(|row| row.get(0)).transpose()?)
        })
        .await
    }

    async fn followers(&self) -> Result<Vec<Tracking>> {
        self.read_short(|conn| {
            let mut stmt = conn.prepare_cached(schema::FOLLOWERS)?;
            let mut rows = stmt.query([])?;
            let mut followers = Vec::new();
            while let Some(row) = rows.next()? {
                followers.push(Tracking::new(row.get::<_, String>(0)?, row.get(1)?));
            }
            Ok(followers)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Takes the write connection (waiting for in-process writers) and runs
    /// `BEGIN IMMEDIATE` on it: see [`SqliteTransaction`].
    async fn begin(&self) -> Result<Transaction> {
        let conn = self.inner.writer.clone().lock_owned().await;
        let tx = SqliteTransaction::begin(self.clone(), conn).map_err(sql_error)?;
        Ok(Transaction::new(tx))
    }

    /// True when `error` or one of its sources is a [`rusqlite::Error`] with the code
    /// `SQLITE_BUSY` or `SQLITE_LOCKED`: another connection held a lock the statement
    /// needed for longer than the busy timeout.
    fn is_transient_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        error_chain(error).any(|e| e.downcast_ref::<rusqlite::Error>().is_some_and(is_busy))
    }
}
