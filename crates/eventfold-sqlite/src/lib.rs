//! The embedded default store of eventfold: events, snapshots, the notification log and
//! follower positions in one SQLite file, with no server to run.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold_core::{
//!     EventReader, EventWriter, Metadata, NotificationReader, Recording, Store, StoredEvent,
//!     Timestamp,
//! };
//! use eventfold_sqlite::{SqliteConfig, SqliteStore};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("app.db")))?;
//!
//! let event = StoredEvent::new("counter-1", 1, "Counter.Opened", Timestamp::now(), b"{}".to_vec())
//!     .with_metadata(Metadata::new().with_correlation_id("request-7"));
//! let ids = store.record(&Recording::new().event(event.clone())).await?;
//! assert_eq!(ids, vec![1]);
//!
//! // Recording the same version again is a lost race: a conflict, and nothing is written.
//! let again = store.record(&Recording::new().event(event)).await;
//! assert!(again.unwrap_err().is_conflict());
//!
//! let loaded = store.load("counter-1", None).await?;
//! assert_eq!(loaded.events.len(), 1);
//! assert_eq!(loaded.events[0].metadata.correlation_id(), Some("request-7"));
//!
//! // Your own rows and eventfold's records in one transaction.
//! let mut tx = store.begin().await?;
//! tx.execute("CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, n INTEGER)", &[]).await?;
//! tx.execute("INSERT INTO totals VALUES ($1, $2)", &["counters".into(), 1.into()]).await?;
//! let opened = StoredEvent::new("counter-2", 1, "Counter.Opened", Timestamp::now(), b"{}".to_vec());
//! tx.record(&Recording::new().event(opened)).await?;
//! tx.commit().await?;
//! assert_eq!(store.max_notification_id().await?, 2);
//! # Ok::<(), eventfold_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Schema
//!
//! - `events(id, stream_id, version, topic, timestamp, state, metadata)` is both the
//!   streams and the notification log. `id INTEGER PRIMARY KEY` is the notification id;
//!   `UNIQUE (stream_id, version)` is the optimistic-concurrency check; an index on
//!   `(topic, id)` serves followers that want some topics only. Timestamps are
//!   microseconds since the epoch. A new id is the largest + 1, and a trigger refuses to
//!   delete the newest event, so ids are never reused; that costs nothing per commit,
//!   where `AUTOINCREMENT` would write one more page to every commit. `metadata` (added
//!   in schema version 2) is the record's [`eventfold_core::Metadata`] as JSON text, NULL
//!   when empty (and for every event written before version 2); a value that is not a
//!   JSON object fails to read with [`eventfold_core::Error::Decode`].
//! - `snapshots(stream_id, version, topic, timestamp, state)`, keyed by
//!   `(stream_id, version)`. Snapshots of one version are interchangeable, so a second
//!   one is ignored.
//! - `tracking(follower, position)`: each follower's last processed notification id.
//!
//! The schema version is `PRAGMA user_version`. Migrations are an ordered list of SQL steps
//! applied in one transaction ([`SqliteStore::migrate`], or on open unless
//! [`SqliteConfig::create_tables`] is off); a file newer than this build is refused with
//! [`eventfold_core::Error::SchemaVersion`].
//!
//! # Concurrency and order
//!
//! A recording is one `BEGIN IMMEDIATE … COMMIT`. A version that already exists violates
//! the unique key; the store recognises that by SQLite's extended result code (never by the
//! message), rolls everything back and returns [`eventfold_core::Error::Conflict`] naming the
//! recording's streams. A version that would leave a gap in its stream is a conflict too.
//! An append ([`eventfold_core::Recording::append`]) takes the stream's latest version + 1
//! in the insert itself (`INSERT … SELECT COALESCE(MAX(version), 0) + 1 …`): with one
//! writer at a time nothing can come between, so appends never conflict.
//!
//! A busy or locked database (another process held the write lock past
//! [`SqliteConfig::busy_timeout`]) is a transient [`eventfold_core::Error::Backend`], and
//! [`eventfold_core::Store::is_transient_error`] recognises the driver's `SQLITE_BUSY` and
//! `SQLITE_LOCKED` in a projection's error, so followers wait those out.
//!
//! SQLite lets one writer at a time into a file, across processes. Notification ids are
//! therefore given in commit order, and a reader can never see id `n` before an id below
//! `n` commits: the log is gap-safe without the in-flight-transaction bookkeeping a
//! multi-writer database needs.
//!
//! # Connections and threads
//!
//! The file runs in WAL mode, so readers and the writer do not block each other. A store
//! holds one write connection behind an async lock (in-process writers take turns without
//! blocking a thread), up to four read-only connections opened on first use, and one
//! connection on a checkpoint thread. Clones share them all. A single connection would be
//! simpler but would make every read wait for every write and for projection
//! transactions; many write connections would only queue in SQLite's busy handler.
//!
//! Short reads (`load`, stream selects, positions) run on the write connection when it is
//! idle: after a commit by another connection SQLite drops that connection's whole page
//! cache, so a reader would reread every page of the lookup from the file, while the writer
//! still has them. When the writer is busy they go to a reader. Notification batches always
//! go to a reader, so a follower catching up never holds up writers.
//!
//! Statements run inline on the calling task. A typical statement here takes a few
//! microseconds; handing it to a blocking thread and back would cost more than the
//! statement itself. No lock on a connection is ever held across an `.await`, except the
//! write connection inside a [`SqliteTransaction`], which is an async lock. The one case that
//! blocks a thread is another *process* (or another `SqliteStore` on the same file) holding
//! the write lock: SQLite then waits up to [`SqliteConfig::busy_timeout`].
//!
//! With `synchronous = NORMAL` the disk syncs happen at checkpoints, which SQLite would run
//! inside every few hundredth commit. The store's checkpoint thread runs them instead,
//! shortly after commits, without making writers wait (except for a short final pass now
//! and then that lets the log start over), which keeps the syncs off the commit path.
//!
//! # Durability
//!
//! The default is WAL with `synchronous = NORMAL` ([`Synchronous`]): a commit survives a
//! crash of the process, and a power loss may lose the last commits but never corrupts the
//! database or keeps half a recording. The store's checkpoint thread syncs the log about
//! 10 ms after commits (plus the rest of a pass in progress), so the commits at risk are
//! those of the last tens of milliseconds rather than of the last thousand pages.
//! [`Synchronous::Full`] makes every commit survive a power loss at the cost of one
//! `fsync` each.
//!
//! # Wake-ups
//!
//! After each commit that recorded events the store notifies
//! [`eventfold_core::NotificationReader::wakeups`], so followers in the same process react
//! at once; followers in other processes find new notifications by polling.
//!
//! # Transactions
//!
//! [`eventfold_core::Store::begin`] takes the write connection (waiting for in-process
//! writers) and runs `BEGIN IMMEDIATE` on it; the [`eventfold_core::Transaction`] it
//! returns wraps a [`SqliteTransaction`]. In it:
//!
//! - [`eventfold_core::Transaction::record`] writes a recording inside a `SAVEPOINT`, so a
//!   conflict leaves the transaction as it was before the call (SQLite by itself undoes
//!   only the failing statement, which would keep the first half of a recording); a
//!   recording of a single write (a change record, a one-event command) is one statement,
//!   which SQLite undoes by itself, so it runs without the savepoint;
//! - [`eventfold_core::Transaction::execute`] and [`eventfold_core::Transaction::query`]
//!   run portable SQL, `$1, $2, …` bound by name (so `$2` may come before `$1`), rows
//!   read as [`eventfold_core::SqlValue`] by storage class;
//! - [`SqliteTransactionExt::sqlite`] gives the [`rusqlite::Connection`] itself (`rusqlite`
//!   is re-exported here) for everything else.
//!
//! The commit runs `COMMIT`, then wakes this process's followers if events were recorded.
//! Dropped uncommitted, the transaction rolls back. Projections ([`eventfold_core::Projection`])
//! write their tables through the same transaction, in which the follower's position
//! then moves and commits. While open it holds the write lock: the store's own `record`
//! waits for it, so do not call it from inside (use the transaction's `record`).

mod checkpoint;
mod config;
mod schema;
mod store;
mod transaction;

use std::fmt;

pub use config::{SqliteConfig, Synchronous};
pub use rusqlite;
pub use schema::{MigrationReport, SCHEMA_VERSION};
pub use store::SqliteStore;
pub use transaction::{SqliteTransaction, SqliteTransactionExt};

use eventfold_core::Error;

/// Wraps a driver error as [`Error::Backend`] of the `"sqlite"` backend, transient for
/// a busy or locked database (another connection holds the lock a statement needs).
pub(crate) fn sql_error(error: rusqlite::Error) -> Error {
    if is_busy(&error) {
        Error::transient("sqlite", error)
    } else {
        Error::backend("sqlite", error)
    }
}

/// True for `SQLITE_BUSY` and `SQLITE_LOCKED` (with any extended code): the typed code,
/// never the message.
pub(crate) fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A database that could not be opened or set up, with its path.
#[derive(Debug)]
pub(crate) struct OpenError {
    pub(crate) path: String,
    pub(crate) source: rusqlite::Error,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot open {}: {}", self.path, self.source)
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
