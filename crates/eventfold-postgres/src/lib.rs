//! The PostgreSQL store of eventfold: the same contract as the in-memory and SQLite
//! stores (it passes the shared conformance suite), plus what a production database
//! offers: one transaction for the application's own rows and its events
//! ([`PostgresTransaction`]), a notification log that stays
//! gap-safe under concurrent writers without a table lock, LISTEN/NOTIFY wake-ups for
//! followers, and schemas shared by several applications.
//!
//! ```no_run
//! # async fn demo() -> eventfold_core::Result<()> {
//! use eventfold_core::{EventWriter, Metadata, NotificationQuery, NotificationReader, Recording, StoredEvent, Timestamp};
//! use eventfold_postgres::{PostgresConfig, PostgresStore};
//!
//! let mut config = PostgresConfig::new("postgres://app:secret@127.0.0.1/orders");
//! config.schema = "billing".into(); // tables "billing"."eventfold_events", ...
//! let store = PostgresStore::connect(&config).await?; // creates the tables if missing
//!
//! let issued = StoredEvent::new("invoice-7", 1, "Invoice.Issued", Timestamp::now(), br#"{"amount":42}"#.to_vec())
//!     .with_metadata(Metadata::new().with_correlation_id("req-1"));
//! let ids = store.record(&Recording::new().event(issued)).await?;
//! let log = store.select_notifications(&NotificationQuery::after(0, 100)).await?;
//! assert_eq!(log.last().map(|n| n.id), ids.last().copied());
//! # Ok(()) }
//! ```
//!
//! Most applications do not call the store directly: they build an
//! [`eventfold_core::Application`] on it, and use
//! [`Application::save_in`](eventfold_core::Application::save_in) in a transaction where a
//! command must commit together with the application's own rows (see "Transactions";
//! `examples/host_transaction.rs`).
//!
//! # Tables
//!
//! In schema [`PostgresConfig::schema`] (default `public`), every name prefixed with
//! [`PostgresConfig::table_prefix`] (default `eventfold_`), so applications can share a
//! database or a schema:
//!
//! | object | what | keys and indexes |
//! |---|---|---|
//! | `events` | every stream's events (`id`, `stream_id`, `version`, `topic`, `occurred_at`, `state`, `metadata`); `id` is the notification log position | `PRIMARY KEY (id)`, `UNIQUE (stream_id, version)`, index `events_topic_id (topic, id)` (v6) |
//! | `snapshots` | snapshots by stream and version | `PRIMARY KEY (stream_id, version)` |
//! | `tracking` | follower positions | `PRIMARY KEY (follower) INCLUDE (position)` |
//! | `schema_version` | applied migrations | `PRIMARY KEY (version)` |
//! | `notifications(...)`, `max_notification_id()`, `final_id()` | the read side of the protocol below, as PL/pgSQL functions (writers send plain SQL) | |
//! | `notification_id_seq` | id allocation (`CACHE 1`) | |
//!
//! Stream reads use the unique `(stream_id, version)` index; log reads walk the primary
//! key, or with topics one `(topic, id)` range per topic, merged (a rare topic costs no
//! more than a common one); [`NotificationReader::max_notification_id`](eventfold_core::NotificationReader::max_notification_id)
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
//! **Writers** ([`Ordering::Concurrent`], the default), in the statement that records:
//! 1. read `L_w`, the last id allocated so far, and take a *shared* transaction-level
//!    advisory lock keyed by it (the low 32 bits, in this store's lock class): the
//!    **announcement** "every id I take is above `L_w`". Shared locks never wait for each
//!    other, and nobody takes these locks exclusively, so writers never wait for writers;
//! 2. only then take ids from the sequence (`nextval` reads the announcement's row, so it
//!    cannot run first), which are therefore all above `L_w`;
//! 3. insert the rows. The announcement is held until the transaction ends. A host
//!    transaction that records several times keeps its first announcement (a
//!    transaction-local setting remembers it), so it holds one lock however many
//!    recordings it makes; a savepoint rolled back releases the lock and the setting
//!    together.
//!
//! **Readers** (the `final_id()` function, then the read, each a separate statement so
//! each sees the server as it is after the step before):
//! 1. read `L`, the last id allocated;
//! 2. read the announcements still held (`pg_locks`), and turn each 32-bit key back into
//!    the largest id allocated by then with those low bits (the id sequence, read after
//!    the locks, bounds them all);
//! 3. the final part of the log ends at `F = min(L, lowest announcement)`;
//! 4. return rows with `id <= F`, by id.
//!
//! **Invariant:** every id up to `F` was allocated by a transaction that had ended before
//! step 4's snapshot, so its rows are either visible then (and returned, in order) or never
//! will be. *Why:* take `m <= F` and its writer W. `m <= L` means `m` was handed out before
//! step 1, and W announced `L_w < m` before taking it, so before step 1. Had W still held
//! its announcement at step 2, `F <= L_w < m`; so it had released it, which PostgreSQL does
//! only after the end of W's transaction became visible, before step 4's snapshot. Ids
//! allocated after step 1 are above `L >= F`. The rows up to `F` form a prefix of the log,
//! so [`max_notification_id`](eventfold_core::NotificationReader::max_notification_id) is
//! the last row of that prefix and agrees with the reads.
//!
//! Schema versions 1–3 kept the same guarantee differently: each row carried a *stamp*
//! (the greatest transaction id of its writer and every writer below it), allocated under
//! an advisory lock released early by a rolled-back subtransaction, and readers probed
//! the writer locks of the in-flight transactions of a snapshot. That needed a PL/pgSQL
//! function on every write, whose per-transaction setup cost more than the insert itself;
//! version 4 writes with one plain SQL statement and reads announcements instead.
//!
//! **What holds the log back:** only writers *of these tables* that have announced and not
//! ended, and only for ids above their announcement. A long transaction elsewhere in the
//! cluster (a report, a stuck session, another application) does not delay followers; a
//! transaction that recorded (a [`PostgresTransaction`], a host transaction) does, until
//! it commits or rolls back, so keep those short. Writers never wait for readers or for
//! each other (beyond the unique key of a stream both write, and the append lock of a
//! stream both append to). The sequence uses `CACHE 1` (a
//! per-session cache would break the id order); do not insert into `events` except
//! through this store.
//!
//! `tests/it/gap_safety.rs` proves it under load: 16 writer tasks (half of them host
//! transactions that write their own row first and linger before committing) and a
//! follower reading all the time: every event seen exactly once, ids ascending, each
//! stream's versions in order; a naive id-order reader running alongside skips hundreds.
//!
//! # Transactions
//!
//! [`Store::begin`](eventfold_core::Store::begin) opens a [`PostgresTransaction`] (a
//! `sqlx::Transaction` from the pool) behind an [`eventfold_core::Transaction`]; a host
//! that opened a sqlx transaction itself hands it over with [`PostgresStore::join`]. In it:
//!
//! * [`Transaction::record`](eventfold_core::Transaction::record) and
//!   [`Application::save_in`](eventfold_core::Application::save_in) write events,
//!   appends, snapshots and follower positions with the in-host statement (one round trip;
//!   one announcement per transaction however many recordings; the wake-up NOTIFY inside
//!   the transaction, so followers wake when, and only if, it commits);
//! * [`Transaction::execute`](eventfold_core::Transaction::execute) and
//!   [`Transaction::query`](eventfold_core::Transaction::query) run portable SQL (`$1`
//!   placeholders are PostgreSQL's own). Values bind as `bigint`, `double precision`,
//!   `text`, `bytea`, and `NULL` without a type (the server infers it; such a statement is
//!   not kept prepared). Columns read by type: `smallint`/`integer`/`bigint` and `boolean`
//!   (0/1) as integers, `real`/`double precision` as reals, `text`/`varchar`/`char`/`name`
//!   and `numeric` as text, `bytea` as bytes; any other type is an error naming it (cast
//!   it in the query);
//! * the caller's own statements go to the connection,
//!   [`PostgresTransactionExt::postgres`] (`sqlx::query(..).execute(tx.postgres()?)`).
//!
//! Everything commits or rolls back together; dropped without a commit, the transaction
//! rolls back. The store's statements in a transaction it opened wait at most
//! [`PostgresConfig::reply_timeout`]; in a joined one they wait as the host's do.
//! [`PostgresStore::record_in`] still records into a bare `&mut sqlx::Transaction`.
//!
//! `Application::save_in` marks the roots saved at once and caches them only when the
//! transaction commits. After a rollback, reload the aggregates: a stream only continues
//! from a stored version (the store turns a gap into
//! [`Error::Conflict`](eventfold_core::Error::Conflict), as the other stores do), so a
//! stale copy can never leave a hole in a stream. A conflict found by the record statement
//! itself (a stream that does not continue, a follower position that does not move
//! forwards) writes nothing and leaves the transaction usable; one found by the unique key
//! (another transaction committed the same version meanwhile) aborts it, as PostgreSQL
//! aborts any transaction whose statement failed: roll back and retry.
//!
//! # Appends
//!
//! [`Recording::appends`](eventfold_core::Recording::appends) are events at whatever
//! version comes next in their stream (change records, whose writer does not know the
//! stream's latest version). Two transactions appending to one stream must both succeed,
//! with distinct, ordered versions, and a unique violation would abort the loser's
//! transaction; so appends are **serialised per stream with a transaction-level advisory
//! lock** (class derived from schema and prefix, key a 32-bit hash of the stream id):
//!
//! 1. one statement takes the locks of the recording's append streams, in key order (so
//!    two recordings cannot deadlock on them; two *transactions* that append to the same
//!    streams in opposite orders across several recordings can, and PostgreSQL's deadlock
//!    error is reported as transient);
//! 2. a second statement reads each stream's latest version. Under READ COMMITTED every
//!    statement takes a new snapshot, so it sees the rows of the lock's previous holder,
//!    which committed before the lock was released;
//! 3. the appends become events at the following versions (after the recording's own
//!    events of that stream) and go through the ordinary record statement, with its
//!    contiguity check and announcement.
//!
//! Gap safety is untouched: the stream locks are taken before the announcement, so a
//! writer waiting for one has announced nothing and holds back no reader (a host
//! transaction that announced in an earlier recording holds the log back while it waits,
//! as it would while doing anything else). A hash collision only makes two streams take
//! turns. A `stream_heads` upsert (`INSERT … ON CONFLICT DO UPDATE … RETURNING`) would
//! serialise the same way, through a row lock, but only if every save wrote it; the
//! advisory lock costs nothing when there are no appends, so the one-event command path
//! is the same statement as before. Appends cost two more round trips (and, outside a
//! transaction, `BEGIN` and `COMMIT`). They serialise with other appends only: a save at
//! a known version racing an append on the same stream meets the unique key, and
//! whichever commits second gets a conflict (that transaction is aborted).
//!
//! **One append in a transaction** (a change record:
//! [`Transaction::record`](eventfold_core::Transaction::record) of a
//! recording with exactly one append and nothing else) usually takes one statement
//! instead of three. It takes the append lock, then announces and takes its id (the
//! order of steps 1–3, inside one statement: the announcement's condition reads the
//! lock's CTE), and inserts at the stream's latest version + 1 with `ON CONFLICT
//! (stream_id, version) DO NOTHING`. That latest version comes from the statement's
//! snapshot, taken before the lock was granted, so it is stale when the lock's previous
//! holder committed an append in between. A stream's versions have no gaps, so a stale
//! read always names a version that is taken: the insert does nothing (`ON CONFLICT`
//! never raises, so the transaction is not aborted), and the append runs again as steps
//! 1–3, under the lock the transaction now holds, after every commit before it; an insert
//! that goes through had read the latest version. The id the first try took is a gap in
//! the log (which ids may have). A known-version save racing it no longer aborts the
//! append either: the insert waits for that save's row, and follows it if it commits
//! (`tests/it/transactions.rs`, `append_racing_a_known_version_follows_it_without_aborting`).
//! Under `REPEATABLE READ` or `SERIALIZABLE` (which this store does not use) a stale read
//! is a serialisation failure instead, as the three-statement path's unique violation
//! was. Measured (`eventfold bench changes --backend postgres`, statement log): a save
//! with its change record went from 6 statements (`BEGIN`, the row, lock, latest
//! version, record, `COMMIT`) to 4, the same as the row and one plain INSERT.
//!
//! # Metadata (schema version 5)
//!
//! [`StoredEvent::metadata`](eventfold_core::StoredEvent::metadata) is kept in a nullable
//! `text` column of `events`: the JSON that
//! [`Metadata::to_json`](eventfold_core::Metadata::to_json) writes, or `NULL` when empty.
//! `text`, not `jsonb`: the bytes read back are the bytes written (`jsonb` reorders keys,
//! drops duplicates and rewrites numbers), and inserts skip `jsonb`'s parse. Query it
//! with `metadata::jsonb` where needed. Text that is not a JSON object fails to load
//! with [`Error::Decode`](eventfold_core::Error::Decode) of kind
//! [`RecordKind::Metadata`](eventfold_core::RecordKind::Metadata). Migration 5 adds the
//! column (existing events read as empty metadata) and redefines the log function with
//! an upper bound and a newest-first order
//! ([`NotificationQuery::before`](eventfold_core::NotificationQuery::before),
//! [`NotificationQuery::newest`](eventfold_core::NotificationQuery::newest)), still never
//! past the final id of the protocol below.
//!
//! A negative version, id or position in the tables (never written by this store) is an
//! error, never a silent wrap to a huge `u64`: [`Error::Decode`](eventfold_core::Error::Decode)
//! for a record, a non-transient backend error for a follower position.
//!
//! # Wake-ups
//!
//! [`wakeups`](eventfold_core::NotificationReader::wakeups) starts a background task
//! holding a LISTEN connection on a channel named after schema and prefix
//! ([`PostgresStore::channel`]). It wakes followers on every notification and after every
//! (re)connection (what was sent meanwhile is lost, so they catch up); it reconnects with
//! backoff (50 ms doubling to 5 s) when the connection is killed or the server restarts.
//! Every [`PostgresConfig::listener_heartbeat`] (10 s) it checks that the server still
//! answers, so a connection that died without closing (a network partition, a server
//! host that lost power) is replaced too (`tests/it/followers.rs` freezes one behind a
//! TCP proxy). Followers poll as well, so a lost NOTIFY only delays them.
//!
//! Where the NOTIFY is sent is a measured choice. PostgreSQL serialises the commits of
//! all transactions that issued NOTIFY on one server-wide lock, held through the WAL
//! flush, which cancels the point of not locking the table. So
//! [`record`](eventfold_core::EventWriter::record) commits without it, wakes this
//! process's followers directly, and a background task sends one NOTIFY (with
//! `synchronous_commit = off`) per burst of commits, at most every 5 ms, for other
//! processes. A transaction ([`PostgresTransaction`], [`PostgresStore::record_in`])
//! cannot know when the caller commits, so there the NOTIFY is part of the transaction.
//! [`PostgresConfig::notify_in_transaction`] sends it inside `record`'s transaction too,
//! to measure what that costs.
//!
//! # Round trips
//!
//! | operation | round trips |
//! |---|---|
//! | [`record`](eventfold_core::EventWriter::record) (events, snapshots, tracking, any number of streams) | 1: one SQL statement in its own implicit transaction (scalar parameters for one event, arrays and UNNEST for more) |
//! | [`PostgresStore::record_in`], `Transaction::record`, `Application::save_in` | 1 inside the transaction (plus its BEGIN and COMMIT) |
//! | a recording with appends | 3 (append locks, the streams' latest versions, the record statement); in its own transaction also BEGIN and COMMIT |
//! | one append and nothing else, in a transaction (a change record) | 1 (3 when the lock's previous holder committed an append of the stream while the statement waited for the lock) |
//! | `Transaction::execute`, `Transaction::query` | 1 each (one more to prepare a statement the connection has not seen, or one with a `NULL` parameter) |
//! | [`load`](eventfold_core::EventReader::load) (latest snapshot + later events) | 1 (UNION ALL) |
//! | `select_events`, `select_snapshots`, `select_notifications`, `max_notification_id`, `tracking_position` | 1 each |
//! | an application command: `get` + `save` | 2 (1 with the aggregate cache and `cache_fastforward(false)`) |
//! | projection transaction: `begin`, the projection's own statements, `commit` | 1 + its own + 2 (move the position, COMMIT) |
//! | `followers` | 1 |
//!
//! Statements are prepared once per connection (the first use costs one more round trip).
//! sqlx's pool pings every connection it gets back (one more round trip per statement,
//! `strace` shows it), so the store keeps a few connections out of the pool for its own
//! single statements and reuses them without a ping; the pool does not ping before
//! handing a connection out either. Measured with `strace` on the client: 1.0 sends per
//! `load` and per `select_notifications`, 1.4 per `record` (the extra 0.4 is the
//! coalesced NOTIFY of the background sender and its pool ping).
//!
//! Where a command's time goes (`eventfold-bench`'s `examples/anatomy.rs`: interleaved
//! rounds of each piece, medians, on the shared 2-vCPU VM, so ±20%). On a current-thread runtime, as `eventfold
//! bench` runs: a bare single-row INSERT commit ~190–215 µs, ~40–50 µs of it without the
//! WAL flush (`synchronous_commit = off`); a `SELECT 1` round trip ~13–19 µs; `load`
//! ~30–40 µs; `record` of one event ~230–380 µs, ~90–115 µs without the flush. Inside the
//! Worlds loop the same calls take longer (`get` ~130–180 µs, `save` ~310–420 µs), more
//! than their server time explains; BENCHMARKS.md has what is known of that gap. On a
//! multi-threaded runtime each round trip costs
//! ~50 µs more (the reply wakes another thread); measured that way, schema v3's PL/pgSQL
//! `record(...)` took ~500–510 µs (~225–260 µs without the flush) and v4's statement
//! ~430–480 µs (~180–200 µs): the function's per-transaction setup (every simple
//! expression is prepared again in each transaction), its EXCEPTION block and the
//! `setval` of the stamp cost ~60–70 µs per call. PostgreSQL runs the statements with
//! generic plans (`pg_prepared_statements` counts them); a custom plan of the one-event
//! statement would cost ~120 µs of planning per execution (pgbench with
//! `plan_cache_mode = force_custom_plan`).
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
//! * A connection that dies without closing (a network partition, a frozen host: the
//!   socket stays open and no reply comes) → `Unavailable` after
//!   [`PostgresConfig::reply_timeout`] (30 s), and the connection is closed, never
//!   reused; the next command gets a fresh one (`tests/it/faults.rs` freezes connections
//!   behind a TCP proxy). sqlx offers no TCP keepalive or per-statement timeout, so
//!   without this deadline such a command would wait as long as the kernel keeps the
//!   socket. A projection transaction that times out is rolled back by the server when
//!   the connection finally closes; until then sqlx's pool counts its slot as taken.
//! * A version that exists → [`Error::Conflict`](eventfold_core::Error::Conflict)
//!   (`Conflict::Streams`, naming each stream and the version the writer expected),
//!   detected with sqlx's typed `DatabaseError::is_unique_violation()` (never by
//!   matching SQLSTATE text). A stream that would not continue from its latest version,
//!   or a tracking position that does not move forward (`Conflict::Tracking`, with the
//!   stored position), is a conflict too: the record statement then writes nothing and
//!   says so in its result.
//! * Server errors a retry can get past, by SQLSTATE (sqlx's typed `DatabaseError::code()`):
//!   serialization failure `40001`, deadlock `40P01`, lock not available `55P03`, too many
//!   connections `53300`, shutdown `57P01`–`57P03`, connection exceptions `08*` →
//!   [`Error::Backend`](eventfold_core::Error::Backend) with `transient: true`
//!   ([`Error::is_transient`](eventfold_core::Error::is_transient)).
//! * Other server errors → [`Error::Backend`](eventfold_core::Error::Backend), not transient.
//! * A projection's own sqlx error (it writes through
//!   [`PostgresTransactionExt::postgres`] and returns the driver's error):
//!   [`Store::is_transient_error`](eventfold_core::Store::is_transient_error) walks its
//!   sources and says yes to the same set (I/O, protocol, pool timed out or closed, FATAL,
//!   the codes above), so a follower waits out a restart or a killed connection in the
//!   middle of a batch instead of stopping for good (`tests/it/faults.rs` kills one).
//!
//! # Benchmarks
//!
//! The unpublished `eventfold-bench` crate has the building blocks `eventfold bench` calls:
//! the bare single-row commit rate of the server, and 1/4/16 concurrent writers with either
//! ordering. Its `examples/bench_writers.rs` prints the whole matrix.
//!
//! Measured on the project's 2-vCPU VM (PostgreSQL 15, default settings: `fsync` and
//! `synchronous_commit` on) with schema version 4, in one batch of
//! `scripts/bench-vs-peers.sh` (five runs, medians; BENCHMARKS.md has the rest): one
//! 100-byte event per recording, each writer on its own stream.
//!
//! | writers | concurrent (default) | table lock (`BEGIN`, `LOCK TABLE`, insert, `COMMIT`) |
//! |---|---|---|
//! | 1 | 2,716 recordings/s (p50 0.33 ms) | 1,212/s (p50 0.78 ms) |
//! | 4 | 6,483/s (p50 0.57 ms) | 1,708/s (p50 2.27 ms) |
//! | 16 | 12,360/s (p50 1.20 ms) | 1,599/s (p50 9.33 ms) |
//!
//! The bare single-row INSERT commit rate in the same batch: median 4,942/s. The table
//! lock lets one commit (one WAL flush) through at a time; concurrent writers share
//! flushes and never wait for each other. A NOTIFY inside every transaction would
//! serialise their commits again, which is why `record` sends it after the commit.
//!
//! `eventfold bench worlds --backend postgres` (one command = a `load` round trip, then a
//! `record` round trip and its commit) in the same batch: 1,539 commands/s (p50 0.61 ms,
//! p99 1.15 ms), 0.48 of the bare commit rate and 0.44 of a loop that reads a row by its
//! key before each bare commit, both measured between its passes; 2.48× the Rust
//! cqrs-es + postgres-es peer (2.55–2.72× in three earlier batches; schema v3: 2.27×).
//! BENCHMARKS.md has what is known of the gap to the read-then-commit loop.

mod config;
mod error;
mod schema;
mod store;
mod wakeup;

pub use config::{redact_url, url_passwords, Ordering, PostgresConfig};
pub use schema::{MigrationReport, SCHEMA_VERSION};
pub use store::{PostgresStore, PostgresTransaction, PostgresTransactionExt};
pub use wakeup::{LISTENER_APPLICATION_NAME, NOTIFIER_APPLICATION_NAME};

/// The backend name in errors (and in `eventfold-bench`'s).
pub const BACKEND: &str = "postgres";

/// The public futures can be spawned on a multi-threaded runtime (sqlx's generic
/// executors make that easy to break without noticing).
#[cfg(test)]
#[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
mod send_checks {
    use eventfold_core::{Application, Recording};

    use crate::{PostgresConfig, PostgresStore};

    #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
    struct Probe;

    impl eventfold_core::Aggregate for Probe {
        const TYPE: &'static str = "Probe";
        type Id = eventfold_core::uuid::Uuid;
        type Event = ();
        fn apply(&mut self, _: &()) {}
    }

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
            let tx = s.pool().begin().await.unwrap();
            let mut tx = s.join(tx);
            let mut root = eventfold_core::Root::<Probe>::new(());
            app.save_in(&mut tx, &mut root).await?;
            tx.commit().await
        });
        let s = store.clone();
        tokio::spawn(async move {
            use eventfold_core::Store;
            let mut tx = s.begin().await?;
            tx.execute("SELECT $1", &[1_i64.into()]).await?;
            tx.query("SELECT $1", &[eventfold_core::SqlValue::Null])
                .await?;
            tx.record(&Recording::new()).await?;
            tx.commit().await
        });
    }
}
