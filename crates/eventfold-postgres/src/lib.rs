//! The PostgreSQL store of eventfold: the same contract as the in-memory and SQLite
//! stores (it passes the shared conformance suite), plus what a production database
//! offers: saves inside the application's own transaction, a notification log that stays
//! gap-safe under concurrent writers without a table lock, LISTEN/NOTIFY wake-ups for
//! followers, and schemas shared by several applications.
//!
//! ```no_run
//! # async fn demo() -> eventfold_core::Result<()> {
//! use eventfold_core::{EventWriter, NotificationQuery, NotificationReader, Recording, StoredEvent, Timestamp};
//! use eventfold_postgres::{PostgresConfig, PostgresStore};
//!
//! let mut config = PostgresConfig::new("postgres://app:secret@127.0.0.1/orders");
//! config.schema = "billing".into(); // tables "billing"."eventfold_events", ...
//! let store = PostgresStore::connect(&config).await?; // creates the tables if missing
//!
//! let ids = store
//!     .record(&Recording {
//!         events: vec![StoredEvent {
//!             stream_id: "invoice-7".into(),
//!             version: 1,
//!             topic: "Invoice.Issued".into(),
//!             timestamp: Timestamp::now(),
//!             state: br#"{"amount":42}"#.to_vec(),
//!         }],
//!         ..Recording::default()
//!     })
//!     .await?;
//! let log = store.select_notifications(&NotificationQuery::after(0, 100)).await?;
//! assert_eq!(log.last().map(|n| n.id), ids.last().copied());
//! # Ok(()) }
//! ```
//!
//! Most applications do not call the store directly: they build an
//! [`eventfold_core::Application`] on it, and use [`save_in`] where a command must commit
//! together with the application's own rows (`examples/host_transaction.rs`).
//!
//! # Tables
//!
//! In schema [`PostgresConfig::schema`] (default `public`), every name prefixed with
//! [`PostgresConfig::table_prefix`] (default `eventfold_`), so applications can share a
//! database or a schema:
//!
//! | object | what | keys and indexes |
//! |---|---|---|
//! | `events` | every stream's events; `id` is the notification log position | `PRIMARY KEY (id) INCLUDE (stamp)`, `UNIQUE (stream_id, version)` |
//! | `snapshots` | snapshots by stream and version | `PRIMARY KEY (stream_id, version)` |
//! | `tracking` | follower positions | `PRIMARY KEY (follower) INCLUDE (position)` |
//! | `schema_version` | applied migrations | `PRIMARY KEY (version)` |
//! | `record(...)`, `notifications(...)`, `max_notification_id()`, `horizon()` | the write and read protocol below, as PL/pgSQL functions | |
//! | `notification_id_seq`, `notification_stamp_seq` | id allocation and the stamp register | |
//!
//! Stream reads use the unique `(stream_id, version)` index; log reads walk the primary
//! key; [`NotificationReader::max_notification_id`](eventfold_core::NotificationReader::max_notification_id)
//! and tracking lookups can be answered index-only. [`PostgresStore::migrate`] (and
//! `eventfold migrate`) creates and upgrades them idempotently, in one transaction,
//! serialised across processes by an advisory lock. With
//! [`PostgresConfig::create_tables`] off, a store refuses a database whose schema is not
//! at [`SCHEMA_VERSION`] with [`Error::SchemaVersion`](eventfold_core::Error::SchemaVersion)
//! ("run `eventfold migrate`").
//!
//! # Gap-safe order
//!
//! A follower reads the log with "ids after my position" and then moves its position to
//! the last id it saw. That is only correct if, once id `n` has been returned, no lower
//! id can appear later. With a plain sequence it can: transaction A takes id 1, B takes
//! id 2, B commits, a follower reads 2 and moves past 1 for ever when A commits.
//!
//! The Python `eventsourcing` library serialises writers: `LOCK TABLE ... IN EXCLUSIVE
//! MODE` in every insert transaction, held through the commit, so one writer commits at a
//! time ([`Ordering::TableLock`] does the same, for comparison).
//!
//! **Reading below `pg_snapshot_xmin` is not enough by itself.** Returning only rows whose
//! inserting transaction id is below the oldest transaction in flight fails when
//! transaction ids and sequence values are taken in different orders, which a host
//! transaction does whenever it writes its own rows before the events: H gets xid 100
//! (its own INSERT), A gets xid 101 and id 1 and stays open, H takes id 2 and commits.
//! Now xmin is 101, H's row (xid 100) passes the filter, id 1 is still in flight: skipped.
//! (`tests/it/gap_safety.rs` builds exactly this case.) So this store does the following.
//!
//! **Writers** ([`Ordering::SnapshotXmin`], the default), inside the recording transaction:
//! 1. take a *writer lock*: a transaction-level advisory lock keyed by the transaction's
//!    own id, held until the transaction ends (no other writer uses that key; readers
//!    only probe it for an instant with a try-lock, so it never waits for long);
//! 2. in the *allocation section*, under a second advisory lock, allocate the ids from
//!    the sequence and compute the rows' **stamp** = `greatest(own xid, stamp register)`,
//!    then raise the register (a sequence) to it. The section runs in a subtransaction
//!    that is rolled back, which releases its lock at once and keeps the sequence values
//!    (sequences are not transactional). It holds the lock for microseconds and never
//!    across a commit, so concurrent commits overlap and share WAL flushes;
//! 3. insert the rows.
//!
//! Hence **stamps never decrease as ids grow**, a row's stamp is at least its own
//! transaction's id, and a transaction holding ids holds its writer lock.
//!
//! **Readers** (the `horizon()` function, then the read, each a separate statement so each
//! sees a newer snapshot than the step before):
//! 1. read `last_id` (the last id allocated) and the stamp register `R`;
//! 2. take a snapshot; the candidates are its in-flight transactions with id `<= R` plus
//!    the ids from its `xmax` up to `R` (those count as in flight too);
//! 3. probe the candidates' writer locks, oldest first (in a rolled-back subtransaction);
//!    the horizon `h` is the first one still held, or `R + 1` if none is;
//! 4. return rows with `id <= last_id` and `stamp < h`, by id.
//!
//! **Invariant:** every row returned by step 4 has only final rows below it: each lower id
//! was written by a transaction that had ended before step 4's snapshot, so it is either
//! visible in that snapshot (and returned, in order) or never will be. *Why:* take a
//! returned row `n` and a lower id `m` written by W. W allocated `m` before `n` was
//! allocated, and `n` before step 1, so W's stamp is already in `R` and W's xid `x_W <=
//! stamp_m <= stamp_n < h`. If W were still running at step 2's snapshot, it would be a
//! candidate below `h` holding its writer lock, and step 3 would have set `h <= x_W`; so
//! its lock was free at step 3, which means W had ended (locks are released after the
//! commit becomes visible), before step 4's snapshot was taken. Rows allocated after
//! step 1 are excluded by `id <= last_id`. Because stamps are monotonic, the rows passing
//! step 4 form a prefix of the log, so
//! [`max_notification_id`](eventfold_core::NotificationReader::max_notification_id) is
//! the last row of that prefix and agrees with the reads.
//!
//! **What holds the log back:** only writers *of these tables* that allocated ids and have
//! not ended, and only for ids above theirs. Unlike a plain `xmin` filter, a long
//! transaction elsewhere in the cluster (a report, a stuck session, another application)
//! does not delay followers; a host transaction that called [`PostgresStore::record_in`]
//! does, until it commits or rolls back, so keep those short. Writers never wait for
//! readers. Sequences use `CACHE 1` (a per-session cache would break the id order); do not
//! insert into `events` except through `record(...)`.
//!
//! `tests/it/gap_safety.rs` proves it under load: 16 writer tasks (half of them host
//! transactions that write their own row first and linger before committing) and a
//! follower reading all the time: every event seen exactly once, ids ascending, each
//! stream's versions in order; a naive id-order reader running alongside skips hundreds.
//!
//! # Host transactions
//!
//! [`PostgresStore::record_in`] records inside the caller's `sqlx::Transaction`, and
//! [`save_in`] does the same for aggregates ([`eventfold_core::Application::prepare`],
//! `record_in`, [`eventfold_core::Application::saved`]): the application's rows and the
//! events commit or roll back together. After a rollback, reload the aggregates (see
//! [`save_in`]). A stream only continues from a stored version (the store turns a gap into
//! [`Error::Conflict`](eventfold_core::Error::Conflict), as the other stores do), so a
//! stale copy can never leave a hole in a stream.
//!
//! # Wake-ups
//!
//! [`wakeups`](eventfold_core::NotificationReader::wakeups) starts a background task
//! holding a LISTEN connection on a channel named after schema and prefix
//! ([`PostgresStore::channel`]). It wakes followers on every notification and after every
//! (re)connection (what was sent meanwhile is lost, so they catch up); it reconnects with
//! backoff (50 ms doubling to 5 s) when the connection is killed or the server restarts.
//! Followers poll as well, so a lost NOTIFY only delays them.
//!
//! Where the NOTIFY is sent is a measured choice. PostgreSQL serialises the commits of
//! all transactions that issued NOTIFY on one server-wide lock, held through the WAL
//! flush, which cancels the point of not locking the table. So
//! [`record`](eventfold_core::EventWriter::record) commits without it, wakes this
//! process's followers directly, and a background task sends one NOTIFY (with
//! `synchronous_commit = off`) per burst of commits, at most every 5 ms, for other
//! processes. [`PostgresStore::record_in`] cannot know when the caller commits, so there
//! the NOTIFY is part of the transaction.
//!
//! # Round trips
//!
//! | operation | round trips |
//! |---|---|
//! | [`record`](eventfold_core::EventWriter::record) (events, snapshots, tracking, any number of streams) | 1: one function call with array arguments (UNNEST), in its own implicit transaction |
//! | [`PostgresStore::record_in`] | 1 inside the caller's transaction (plus the caller's BEGIN and COMMIT) |
//! | [`load`](eventfold_core::EventReader::load) (latest snapshot + later events) | 1 (UNION ALL) |
//! | `select_events`, `select_snapshots`, `select_notifications`, `max_notification_id`, `tracking_position` | 1 each |
//! | an application command: `get` + `save` | 2 (1 with the aggregate cache and `cache_fastforward(false)`) |
//! | projection transaction: `begin`, the projection's own statements, `commit` | 1 + its own + 2 (move the position, COMMIT) |
//!
//! Statements are prepared once per connection (the first use costs one more round trip).
//! sqlx's pool pings every connection it gets back (one more round trip per statement,
//! `strace` shows it), so the store keeps a few connections out of the pool for its own
//! single statements and reuses them without a ping; the pool does not ping before
//! handing a connection out either. Measured with `strace` on the client: 1.0 sends per
//! `load` and per `select_notifications`, 1.4 per `record` (the extra 0.4 is the
//! coalesced NOTIFY of the background sender and its pool ping).
//!
//! Server time of one `record(...)` call with one event on a continuing stream, measured
//! with a loop of calls and commits inside the server (no client, no fsync; medians of
//! runs on the shared 2-vCPU VM, so ±20%): schema v2 ~95 µs, v3 ~60 µs, a bare
//! single-row INSERT into the same table ~40 µs. Schema v3 removed the two costs that
//! mattered: the general contiguity query (unnest, GROUP BY, anti-join: ~30 µs; a
//! recording of one stream now takes one index probe) and the function's `SET
//! search_path` (~8 µs). The rolled-back subtransaction of the allocation section costs
//! ~2 µs (within noise), so it stays: a session-level lock released by hand could be left
//! held by a cancel between lock and unlock, stopping every writer. A batch of 100 events
//! costs about what the same `INSERT ... SELECT FROM unnest(...)` costs alone (~6 µs per
//! row: the heap and the two indexes).
//!
//! # Errors and faults
//!
//! * Server unreachable at [`PostgresStore::connect`] (refused, timed out after
//!   [`PostgresConfig::connect_timeout`]) → [`Error::Unavailable`](eventfold_core::Error::Unavailable)
//!   naming the URL with its password replaced by `***`.
//! * Lost connection, server shutdown or restart, `pg_terminate_backend`, pool exhausted
//!   mid-run → `Unavailable` (driver I/O errors and server errors of severity FATAL).
//!   A recording is one statement in one transaction, so nothing of it is half-written.
//!   If the connection dies after the server committed but before the reply arrived, the
//!   command reports `Unavailable` although it was recorded; running it again then fails
//!   with a conflict instead of recording twice.
//! * A version that exists, or a stream that would not continue from its latest version,
//!   or a tracking position that does not move forward → [`Error::Conflict`](eventfold_core::Error::Conflict),
//!   detected with sqlx's typed `DatabaseError::is_unique_violation()` (never by
//!   matching SQLSTATE text) and told apart by constraint name.
//! * Other server errors → [`Error::Backend`](eventfold_core::Error::Backend).
//!
//! # Benchmarks
//!
//! [`bench`](mod@bench) has the building blocks `eventfold bench` calls: the bare single-row commit
//! rate of the server, and 1/4/16 concurrent writers with either ordering.
//! `examples/bench_writers.rs` prints the whole matrix.
//!
//! Measured on the project's 2-vCPU VM (PostgreSQL 15, default settings: `fsync` and
//! `synchronous_commit` on) with schema version 2: `cargo run --release --example
//! bench_writers -- 2`, five rounds of 2 s per cell, medians; one 100-byte event per
//! recording, each writer on its own stream. The machine was shared with other builds
//! (single rounds moved by up to 4x), so compare rows of one batch only.
//!
//! | writers | snapshot-xmin (default) | table lock | snapshot-xmin, NOTIFY inside each transaction |
//! |---|---|---|---|
//! | 1 | 1,753 recordings/s (p50 0.46 ms) | 1,731/s (p50 0.50 ms) | 1,610/s |
//! | 4 | 3,770/s (p50 0.93 ms, p99 3.5 ms) | 1,707/s (p50 2.2 ms, p99 6.0 ms) | 2,235/s |
//! | 16 | 2,856/s (p50 5.3 ms, p99 15 ms) | 1,462/s (p50 9.9 ms, p99 28 ms) | 1,573/s |
//!
//! The bare single-row INSERT commit rate in the same batch: median 2,925/s (p50
//! 0.33 ms). With one writer the orderings cost the same; with concurrent writers the
//! table lock lets one commit (one WAL flush) through at a time while snapshot-xmin
//! writers share flushes: 2.2x the table lock's throughput with 4 writers and 2.0x with
//! 16 (where the two cores are saturated), at about half the latency. A NOTIFY inside
//! every transaction gives most of that back, which is why `record` sends it after the
//! commit.
//!
//! `eventfold bench worlds --backend postgres` (one command = a `load` round trip, then a
//! `record` round trip and its commit), schema v2 against v3 interleaved in one batch,
//! five runs each, medians, with `eventfold bench pg-writers --seconds 1` for the bare
//! commit rate after each pair: v2 1,760 commands/s (p50 0.55 ms, p99 0.82 ms), v3 1,937/s
//! (p50 0.49 ms, p99 0.78 ms); raw_store 108,000 → 116,700 events/s; raw_single 2,651 →
//! 2,737/s; bare commits 4,101/s (p50 0.22 ms). A command is two round trips and one WAL
//! flush where a bare commit is one and one: with pgbench and no client at all, the same
//! two statements reach ~1,650/s against ~3,300/s bare (a `SELECT 1` round trip alone
//! costs ~0.12 ms on this VM), so ~50% of the bare rate is the ceiling of a command that
//! loads before it records, whatever the store does inside `record`.

mod config;
mod error;
mod schema;
mod store;
mod wakeup;

pub mod bench;

pub use config::{redact_url, Ordering, PostgresConfig};
pub use schema::{MigrationReport, SCHEMA_VERSION};
pub use store::{save_in, PostgresStore, PostgresTransaction};
pub use wakeup::LISTENER_APPLICATION_NAME;

/// The backend name in errors and benchmarks.
pub const BACKEND: &str = "postgres";

/// The public futures can be spawned on a multi-threaded runtime (sqlx's generic
/// executors make that easy to break without noticing).
#[cfg(test)]
#[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
mod send_checks {
    use eventfold_core::{Application, Recording};

    use crate::bench::{self, BenchLength};
    use crate::{Ordering, PostgresConfig, PostgresStore};

    fn spawnable(config: PostgresConfig, store: PostgresStore, app: Application) {
        let c = config.clone();
        tokio::spawn(async move { PostgresStore::connect(&c).await });
        let c = config.clone();
        tokio::spawn(async move { PostgresStore::migrate_with(&c).await });
        let s = store.clone();
        tokio::spawn(async move { s.migrate().await });
        let s = store.clone();
        tokio::spawn(async move {
            let mut tx = s.pool().begin().await.unwrap();
            s.record_in(&mut tx, &Recording::default()).await
        });
        let s = store.clone();
        tokio::spawn(async move {
            let mut tx = s.pool().begin().await.unwrap();
            crate::save_in(&app, &s, &mut tx, &mut []).await
        });
        let c = config.clone();
        tokio::spawn(async move { bench::bare_insert_commit_rate(&c.url, 1).await });
        tokio::spawn(async move {
            bench::concurrent_writers(&config, 1, Ordering::TableLock, BenchLength::Count(1)).await
        });
    }
}
