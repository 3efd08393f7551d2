//! [`PostgresStore`]: the storage contract on PostgreSQL.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Column, Connection, PgConnection, Postgres, Row, TypeInfo, ValueRef};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use eventfold_core::{
    CodecError, Conflict, Error, EventReader, EventWriter, Loaded, Metadata, Notification,
    NotificationQuery, NotificationReader, RecordKind, Recording, Result, SqlRow, SqlValue, Store,
    StoreTransaction, StoredEvent, StreamQuery, Timestamp, Tracking, TrackingReader, Transaction,
};

use crate::config::{Ordering, PostgresConfig};
use crate::error::{sqlx_error, unique_violation, Target};
use crate::schema::{self, fnv1a, MigrationReport, Sql, SCHEMA_VERSION};
use crate::wakeup::{self, ListenerStats};
use crate::BACKEND;

/// The PostgreSQL store. Cheap to clone: clones share one connection pool, one LISTEN
/// task and one NOTIFY sender, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    options: PgConnectOptions,
    config: PostgresConfig,
    sql: Sql,
    target: Target,
    wakeups: Arc<Notify>,
    listener: Mutex<Option<JoinHandle<()>>>,
    listener_stats: Arc<ListenerStats>,
    notifier: Mutex<Option<(JoinHandle<()>, Arc<Notify>)>>,
    /// Connections kept out of the pool between single-statement operations (see [`Lease`]).
    hot: Mutex<Vec<PoolConnection<Postgres>>>,
    hot_capacity: usize,
}

/// A connection for one single-statement operation.
///
/// sqlx pings every connection returned to its pool (one more round trip per statement,
/// measured at ~30 µs on loopback). The store keeps a few connections out of the pool
/// instead ([`Inner::hot`], at most `hot_capacity`, still counted by the pool) and returns
/// them to that stack without a ping. A lease dropped before [`Lease::keep`] (the
/// operation was cancelled or the connection failed) closes its connection.
struct Lease<'a> {
    inner: &'a Inner,
    conn: Option<PoolConnection<Postgres>>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until kept")
    }

    /// Keeps the connection after `result`, unless the result says it is broken.
    fn finish<T>(
        mut self,
        result: std::result::Result<T, sqlx::Error>,
    ) -> std::result::Result<T, sqlx::Error> {
        let healthy = match &result {
            Ok(_) => true,
            Err(error) => !crate::error::is_unavailable(error),
        };
        if let (true, Some(conn)) = (healthy, self.conn.take()) {
            let mut hot = lock(&self.inner.hot);
            if hot.len() < self.inner.hot_capacity {
                hot.push(conn);
            }
            // else: dropped here, back to the pool.
        }
        result
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Cancelled mid-statement or broken: its state is unknown, so close it.
            conn.close_on_drop();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.listener).take() {
            task.abort();
        }
        if let Some((task, _)) = lock(&self.notifier).take() {
            task.abort();
        }
        let hot = std::mem::take(&mut *lock(&self.hot));
        if tokio::runtime::Handle::try_current().is_err() {
            // Returning a connection to sqlx's pool spawns a task, which needs a runtime:
            // outside one, take them out of the pool and just close their sockets.
            for conn in hot {
                drop(conn.detach());
            }
        }
    }
}

/// Waits at most `limit` (zero: no limit) for the reply to `statement`. No reply in time
/// is reported as an I/O error: the connection counts as broken (a [`Lease`] closes it,
/// never reuses it) and the caller gets [`Error::Unavailable`] instead of waiting for as
/// long as the kernel keeps a dead connection open.
pub(crate) async fn within<T>(
    limit: Duration,
    statement: impl Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, sqlx::Error> {
    if limit.is_zero() {
        return statement.await;
    }
    tokio::time::timeout(limit, statement)
        .await
        .unwrap_or_else(|_| Err(timed_out(limit)))
}

/// The I/O error of a statement that got no reply within `limit`.
fn timed_out(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no reply from the server within {limit:?} (reply_timeout)"),
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target.0)
            .field("schema", &self.inner.config.schema)
            .field("table_prefix", &self.inner.config.table_prefix)
            .field("ordering", &self.inner.config.ordering)
            .finish_non_exhaustive()
    }
}

/// The arrays one recording is sent as (one row per element), validated.
struct RecordArgs<'r> {
    stream_ids: Vec<&'r str>,
    versions: Vec<i64>,
    topics: Vec<&'r str>,
    occurred_at: Vec<DateTime<Utc>>,
    states: Vec<&'r [u8]>,
    metadata: Vec<Option<String>>,
    snap_stream_ids: Vec<&'r str>,
    snap_versions: Vec<i64>,
    snap_topics: Vec<&'r str>,
    snap_occurred_at: Vec<DateTime<Utc>>,
    snap_states: Vec<&'r [u8]>,
    follower: Option<&'r str>,
    position: Option<i64>,
}

fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Config {
        variable: what.to_owned(),
        message: format!("{value} is larger than PostgreSQL's bigint"),
    })
}

/// Clamps a bound to bigint (a bound above `i64::MAX` selects the same rows as `i64::MAX`).
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn clamp_limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The streams of a recording with the version each expected to be its latest, as the
/// in-memory store reports them.
fn expected_versions(recording: &Recording) -> Vec<(String, u64)> {
    let mut first: Vec<(String, u64)> = Vec::new();
    for event in &recording.events {
        match first.iter_mut().find(|(s, _)| *s == event.stream_id) {
            Some((_, v)) => *v = (*v).min(event.version),
            None => first.push((event.stream_id.clone(), event.version)),
        }
    }
    first
        .into_iter()
        .map(|(s, v)| (s, v.saturating_sub(1)))
        .collect()
}

impl<'r> RecordArgs<'r> {
    fn new(recording: &'r Recording) -> Result<Self> {
        // Versions of one stream must follow each other within the recording (the database
        // checks that the first one continues the stored stream).
        let mut next: HashMap<&str, u64> = HashMap::new();
        for event in &recording.events {
            let ok = match next.get(event.stream_id.as_str()) {
                Some(&expected) => event.version == expected,
                None => event.version >= 1,
            };
            if !ok {
                return Err(Error::Conflict(Conflict::streams(
                    expected_versions(recording)
                        .into_iter()
                        .filter(|(s, _)| *s == event.stream_id),
                )));
            }
            next.insert(&event.stream_id, event.version + 1);
        }
        let events = &recording.events;
        let snaps = &recording.snapshots;
        Ok(RecordArgs {
            stream_ids: events.iter().map(|e| e.stream_id.as_str()).collect(),
            versions: events
                .iter()
                .map(|e| to_i64(e.version, "version"))
                .collect::<Result<_>>()?,
            topics: events.iter().map(|e| e.topic.as_str()).collect(),
            occurred_at: events.iter().map(|e| e.timestamp.to_datetime()).collect(),
            states: events.iter().map(|e| e.state.as_slice()).collect(),
            metadata: events.iter().map(|e| e.metadata.to_json()).collect(),
            snap_stream_ids: snaps.iter().map(|e| e.stream_id.as_str()).collect(),
            snap_versions: snaps
                .iter()
                .map(|e| to_i64(e.version, "snapshot version"))
                .collect::<Result<_>>()?,
            snap_topics: snaps.iter().map(|e| e.topic.as_str()).collect(),
            snap_occurred_at: snaps.iter().map(|e| e.timestamp.to_datetime()).collect(),
            snap_states: snaps.iter().map(|e| e.state.as_slice()).collect(),
            follower: recording.tracking.as_ref().map(|t| t.follower.as_str()),
            position: recording
                .tracking
                .as_ref()
                .map(|t| to_i64(t.position, "tracking position"))
                .transpose()?,
        })
    }

    /// Adds the recording's appends at the versions the store allocated for them.
    fn with_appends(&mut self, appends: &'r [StoredEvent], versions: &[u64]) {
        for (append, &version) in appends.iter().zip(versions) {
            self.stream_ids.push(&append.stream_id);
            self.versions
                .push(i64::try_from(version).unwrap_or(i64::MAX));
            self.topics.push(&append.topic);
            self.occurred_at.push(append.timestamp.to_datetime());
            self.states.push(&append.state);
            self.metadata.push(append.metadata.to_json());
        }
    }

    fn is_empty(&self) -> bool {
        self.stream_ids.is_empty() && self.snap_stream_ids.is_empty() && self.follower.is_none()
    }
}

/// Which of the writers' statements of [`Sql`] records a recording.
#[derive(Debug, Clone, Copy)]
enum RecordStatement {
    /// One event and at most one snapshot, in its own transaction (the common command).
    One { snapshot: bool },
    /// Anything, in its own transaction.
    Any { notify: bool },
    /// Anything, inside a host transaction.
    InHost,
}

impl RecordStatement {
    fn for_own_transaction(args: &RecordArgs<'_>, notify: bool) -> Self {
        if notify
            || args.stream_ids.len() != 1
            || args.snap_stream_ids.len() > 1
            || args.follower.is_some()
        {
            RecordStatement::Any { notify }
        } else {
            RecordStatement::One {
                snapshot: !args.snap_stream_ids.is_empty(),
            }
        }
    }
}

/// A recording of one append and nothing else: what a change record is.
fn is_one_append(recording: &Recording) -> bool {
    recording.appends.len() == 1
        && recording.events.is_empty()
        && recording.snapshots.is_empty()
        && recording.tracking.is_none()
}

/// What a record statement found.
enum Recorded {
    /// Written; the notification ids in the recording's order.
    Ids(Vec<i64>),
    /// A stream of the recording does not continue from its stored latest version.
    Discontinuous,
    /// The recording's follower is already at or past its position.
    TrackingBehind,
}

/// A value that cannot be what the database holds (a negative version or id): a decode
/// error of the record, never a silent wrap to a huge `u64`.
fn out_of_range(kind: RecordKind, stream_id: &str, what: &'static str, value: i64) -> Error {
    Error::Decode {
        kind,
        stream_id: stream_id.to_owned(),
        version: 0,
        source: CodecError::OutOfRange { what, value },
    }
}

/// A stored non-negative bigint (a version or notification id) of a record.
fn unsigned(kind: RecordKind, stream_id: &str, what: &'static str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| out_of_range(kind, stream_id, what, value))
}

/// A stored position or id that belongs to no record (a follower's position, the log's
/// end): out of range is a backend error naming it.
fn unsigned_scalar(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| {
        Error::backend(
            BACKEND,
            format!("the stored {what} {value} is out of range (below zero)"),
        )
    })
}

/// One record from `row`: version, topic, time, state and metadata from `first_column` on.
fn stored(
    row: &PgRow,
    kind: RecordKind,
    stream_id: &str,
    first_column: usize,
) -> Result<StoredEvent> {
    let get = |e: sqlx::Error| Error::backend(BACKEND, e);
    let version: i64 = row.try_get(first_column).map_err(get)?;
    let version = unsigned(kind, stream_id, "version", version)?;
    let occurred_at: DateTime<Utc> = row.try_get(first_column + 2).map_err(get)?;
    let metadata: Option<&str> = row.try_get(first_column + 4).map_err(get)?;
    let metadata = Metadata::from_json(metadata).map_err(|e| Error::Decode {
        kind: RecordKind::Metadata,
        stream_id: stream_id.to_owned(),
        version,
        source: CodecError::Json(e),
    })?;
    Ok(StoredEvent::new(
        stream_id,
        version,
        row.try_get::<String, _>(first_column + 1).map_err(get)?,
        Timestamp::from_micros(occurred_at.timestamp_micros()),
        row.try_get(first_column + 3).map_err(get)?,
    )
    .with_metadata(metadata))
}

impl PostgresStore {
    /// Connects, checks the schema version and, with [`PostgresConfig::create_tables`],
    /// creates or upgrades the tables.
    ///
    /// Fails with [`Error::Unavailable`] (naming the URL without its password) when the
    /// server cannot be reached within [`PostgresConfig::connect_timeout`], with
    /// [`Error::SchemaVersion`] when the tables are not at this build's version and
    /// `create_tables` is off (the hint says to run `eventfold migrate`), and with
    /// [`Error::Config`] for an invalid URL, schema or prefix.
    pub async fn connect(config: &PostgresConfig) -> Result<Self> {
        config.validate()?;
        let target = Target(config.redacted_url());
        let options: PgConnectOptions = config.url.parse().map_err(|e| Error::Config {
            variable: "url".to_owned(),
            message: format!("cannot parse {}: {e}", target.0),
        })?;
        let options = with_search_path(options.application_name("eventfold"), &config.schema);
        let sql = Sql::new(config);

        // One direct connection first: it reports why the server cannot be reached (the
        // pool would only say it timed out), and it checks or migrates the schema.
        let mut conn = connect_once(&options, config, &target).await?;
        let found = schema::current_version(&mut conn, &sql, &target).await?;
        if found > SCHEMA_VERSION {
            return Err(schema::newer_schema(found));
        }
        if found < SCHEMA_VERSION {
            if !config.create_tables {
                return Err(schema::older_schema(found));
            }
            schema::migrate(&mut conn, &sql, config, &target).await?;
        }
        let _ = conn.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            // A ping before every checkout would double the round trips of a command; a
            // dead connection fails its statement with `Unavailable` instead.
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                options,
                config: config.clone(),
                sql,
                target,
                wakeups: Arc::new(Notify::new()),
                listener: Mutex::new(None),
                listener_stats: Arc::new(ListenerStats::default()),
                notifier: Mutex::new(None),
                hot: Mutex::new(Vec::new()),
                // Leave most of the pool to transactions (host, projections).
                hot_capacity: (config.max_connections as usize / 4)
                    .clamp(1, 4)
                    .min(config.max_connections as usize - 1),
            }),
        })
    }

    /// Creates or upgrades the tables to this build's schema version (idempotent; safe to
    /// run from several processes at once: they take turns on an advisory lock).
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let mut conn = self.inner.pool.acquire().await.map_err(|e| self.err(e))?;
        schema::migrate(
            &mut conn,
            &self.inner.sql,
            &self.inner.config,
            &self.inner.target,
        )
        .await
    }

    /// Creates or upgrades the tables described by `config` without keeping a store open
    /// (what `eventfold migrate` runs).
    pub async fn migrate_with(config: &PostgresConfig) -> Result<MigrationReport> {
        Self::migrate_up_to(config, SCHEMA_VERSION).await
    }

    /// Creates the tables of `config` at an older schema version, without keeping a store
    /// open: for tests of upgrades from that version.
    #[doc(hidden)]
    pub async fn migrate_up_to(config: &PostgresConfig, version: i64) -> Result<MigrationReport> {
        config.validate()?;
        let target = Target(config.redacted_url());
        let options: PgConnectOptions = config.url.parse().map_err(|e| Error::Config {
            variable: "url".to_owned(),
            message: format!("cannot parse {}: {e}", target.0),
        })?;
        let mut conn = connect_once(&options, config, &target).await?;
        let sql = Sql::new(config);
        let report = schema::migrate_up_to(
            &mut conn,
            &sql,
            config,
            &target,
            version.min(SCHEMA_VERSION),
        )
        .await;
        let _ = conn.close().await;
        report
    }

    /// The connection pool, for the application's own queries and transactions
    /// (`store.pool().begin()` opens a transaction to pass to [`Self::record_in`]).
    ///
    /// The store keeps a few of the pool's connections for its own statements; to shut
    /// down, call [`Self::close`] rather than closing the pool (which would wait for them).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Stops the LISTEN and NOTIFY tasks and closes every connection, waiting for
    /// connections in use to be returned. The store (and its clones) cannot be used after.
    pub async fn close(&self) {
        if let Some(task) = lock(&self.inner.listener).take() {
            task.abort();
        }
        if let Some((task, _)) = lock(&self.inner.notifier).take() {
            task.abort();
        }
        let hot = std::mem::take(&mut *lock(&self.inner.hot));
        drop(hot);
        self.inner.pool.close().await;
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The NOTIFY channel of this store's tables (derived from schema and prefix).
    pub fn channel(&self) -> &str {
        &self.inner.sql.channel
    }

    /// The qualified, quoted name of a table of this store: `"schema"."<prefix><name>"`
    /// for `name` in `events`, `snapshots`, `tracking`, `schema_version`.
    pub fn table_name(&self, name: &str) -> String {
        format!(
            "\"{}\".\"{}{name}\"",
            self.inner.config.schema, self.inner.config.table_prefix
        )
    }

    /// How many times the LISTEN task has started listening (its first connection plus
    /// every reconnection); 0 before [`NotificationReader::wakeups`] was first called.
    pub fn listener_connections(&self) -> u64 {
        self.inner
            .listener_stats
            .listening_since
            .load(AtomicOrdering::Relaxed)
    }

    /// Records `recording` inside the caller's open sqlx transaction, so the application's
    /// own rows and the events commit or roll back together. Returns the notification ids
    /// (of the events, then of the appends).
    ///
    /// One round trip (three with appends: see the crate docs, "Appends"). The wake-up
    /// NOTIFY is part of the transaction, so followers wake when (and only if) the caller
    /// commits. On [`Error::Conflict`] nothing of the recording was written: roll the
    /// transaction back, reload, and run the command again (after a conflict found by the
    /// unique key the transaction is aborted anyway).
    ///
    /// Notification ids become visible to followers only after the caller commits, and
    /// only once every transaction that started writing before it has ended (see the
    /// crate docs, "Gap-safe order"): keep host transactions short. To save aggregates in
    /// the caller's transaction, wrap it with [`Self::join`] instead and use
    /// [`eventfold_core::Application::save_in`].
    pub async fn record_in(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        recording: &Recording,
    ) -> Result<Vec<u64>> {
        self.record_into(tx, recording).await
    }

    /// [`Self::record_in`] on a connection inside an open transaction.
    async fn record_into(
        &self,
        conn: &mut PgConnection,
        recording: &Recording,
    ) -> Result<Vec<u64>> {
        let mut args = RecordArgs::new(recording)?;
        if recording.events.is_empty()
            && recording.appends.is_empty()
            && recording.snapshots.is_empty()
        {
            return match &recording.tracking {
                Some(tracking) => self.move_tracking(conn, tracking).await,
                None => Ok(Vec::new()),
            };
        }
        if self.inner.config.ordering == Ordering::TableLock {
            sqlx::query(&self.inner.sql.lock_events)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
        }
        if self.inner.config.ordering != Ordering::TableLock && is_one_append(recording) {
            let append = &recording.appends[0];
            let id: Option<i64> = sqlx::query_scalar(&self.inner.sql.append_one_in_host)
                .bind(&append.stream_id)
                .bind(fnv1a(&append.stream_id))
                .bind(&append.topic)
                .bind(append.timestamp.to_datetime())
                .bind(&append.state)
                .bind(append.metadata.to_json())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
            if let Some(id) = id {
                return Ok(vec![unsigned_scalar("notification id", id)?]);
            }
            // The lock's previous holder committed this version after the statement's
            // snapshot: append again below, under the lock this transaction now holds.
        }
        let outcome = async {
            if !recording.appends.is_empty() {
                let versions = self.allocate_versions(&mut *conn, recording).await?;
                args.with_appends(&recording.appends, &versions);
            }
            self.call_record(&mut *conn, &args, RecordStatement::InHost)
                .await
        }
        .await;
        self.recorded(outcome, recording).await
    }

    /// Moves a follower's position (only forwards) in the open transaction on `conn`.
    async fn move_tracking(
        &self,
        conn: &mut PgConnection,
        tracking: &Tracking,
    ) -> Result<Vec<u64>> {
        let position = to_i64(tracking.position, "tracking position")?;
        let (moved, current): (Option<i64>, Option<i64>) =
            sqlx::query_as(&self.inner.sql.move_tracking)
                .bind(&tracking.follower)
                .bind(position)
                .fetch_one(conn)
                .await
                .map_err(|e| self.err(e))?;
        if moved.is_none() {
            let current = current.map_or(Ok(0), |c| unsigned_scalar("tracking position", c))?;
            return Err(Error::Conflict(Conflict::tracking(
                tracking.follower.clone(),
                tracking.position,
                current,
            )));
        }
        Ok(Vec::new())
    }

    /// The versions of `recording.appends`, allocated under the per-stream append locks:
    /// one statement takes the locks of their streams (in key order, so two recordings
    /// cannot deadlock on them), the next reads each stream's latest version (a new
    /// statement, so under READ COMMITTED it sees the commit of the lock's previous
    /// holder), and the appends follow it (and the recording's own events of that stream).
    /// Must run inside a transaction: the locks are held until it ends.
    async fn allocate_versions(
        &self,
        conn: &mut PgConnection,
        recording: &Recording,
    ) -> std::result::Result<Vec<u64>, sqlx::Error> {
        let mut streams: Vec<&str> = recording
            .appends
            .iter()
            .map(|a| a.stream_id.as_str())
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let mut keys: Vec<i32> = streams.iter().map(|s| fnv1a(s)).collect();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query(&self.inner.sql.lock_streams)
            .bind(&keys)
            .execute(&mut *conn)
            .await?;
        let heads: Vec<(String, Option<i64>)> = sqlx::query_as(&self.inner.sql.stream_heads)
            .bind(&streams)
            .fetch_all(&mut *conn)
            .await?;
        let heads: HashMap<String, u64> = heads
            .into_iter()
            .map(|(stream, head)| {
                (
                    stream,
                    head.and_then(|h| u64::try_from(h).ok()).unwrap_or(0),
                )
            })
            .collect();
        let mut next: HashMap<&str, u64> = streams
            .iter()
            .map(|s| (*s, heads.get(*s).copied().unwrap_or(0)))
            .collect();
        for event in &recording.events {
            if let Some(head) = next.get_mut(event.stream_id.as_str()) {
                *head = (*head).max(event.version);
            }
        }
        Ok(recording
            .appends
            .iter()
            .map(|append| {
                let head = next.entry(append.stream_id.as_str()).or_insert(0);
                *head += 1;
                *head
            })
            .collect())
    }

    /// Sends `statement` with `args`.
    async fn call_record<'e, E>(
        &self,
        executor: E,
        args: &RecordArgs<'_>,
        statement: RecordStatement,
    ) -> std::result::Result<Recorded, sqlx::Error>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let sql = &self.inner.sql;
        if let RecordStatement::One { snapshot } = statement {
            let text = if snapshot {
                &sql.record_one_with_snapshot
            } else {
                &sql.record_one
            };
            let mut query = sqlx::query(text)
                .bind(args.stream_ids[0])
                .bind(args.versions[0])
                .bind(args.topics[0])
                .bind(args.occurred_at[0])
                .bind(args.states[0])
                .bind(args.metadata[0].as_deref());
            if snapshot {
                query = query
                    .bind(args.snap_stream_ids[0])
                    .bind(args.snap_versions[0])
                    .bind(args.snap_topics[0])
                    .bind(args.snap_occurred_at[0])
                    .bind(args.snap_states[0]);
            }
            let id: Option<i64> = query
                .fetch_optional(executor)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
            return Ok(id.map_or(Recorded::Discontinuous, |id| Recorded::Ids(vec![id])));
        }
        let text = match statement {
            RecordStatement::Any { notify: false } => &sql.record_any,
            RecordStatement::Any { notify: true } => &sql.record_any_notify,
            _ => &sql.record_in_host,
        };
        let row = sqlx::query(text)
            .bind(&args.stream_ids)
            .bind(&args.versions)
            .bind(&args.topics)
            .bind(&args.occurred_at)
            .bind(&args.states)
            .bind(&args.snap_stream_ids)
            .bind(&args.snap_versions)
            .bind(&args.snap_topics)
            .bind(&args.snap_occurred_at)
            .bind(&args.snap_states)
            .bind(args.follower)
            .bind(args.position)
            .bind(&args.metadata)
            .fetch_one(executor)
            .await?;
        let continues: bool = row.try_get(0)?;
        let moved: bool = row.try_get(1)?;
        let ids: Vec<i64> = row.try_get(2)?;
        Ok(if !continues {
            Recorded::Discontinuous
        } else if !moved {
            Recorded::TrackingBehind
        } else {
            Recorded::Ids(ids)
        })
    }

    /// Turns what a record statement returned into ids or the caller's error.
    async fn recorded(
        &self,
        outcome: std::result::Result<Recorded, sqlx::Error>,
        recording: &Recording,
    ) -> Result<Vec<u64>> {
        match outcome {
            Ok(Recorded::Ids(ids)) => ids
                .into_iter()
                .map(|id| unsigned_scalar("notification id", id))
                .collect(),
            Ok(Recorded::Discontinuous) => Err(Error::Conflict(Conflict::streams(
                expected_versions(recording),
            ))),
            Ok(Recorded::TrackingBehind) => {
                let tracking = recording
                    .tracking
                    .as_ref()
                    .expect("only a recording with tracking can find its follower ahead");
                let current = self
                    .tracking_position(&tracking.follower)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(tracking.position);
                Err(Error::Conflict(Conflict::tracking(
                    tracking.follower.clone(),
                    tracking.position,
                    current,
                )))
            }
            Err(error) if unique_violation(&error).is_some() => {
                // Another writer took one of these versions first.
                Err(Error::Conflict(Conflict::streams(expected_versions(
                    recording,
                ))))
            }
            Err(error) => Err(self.err(error)),
        }
    }

    /// [`within`] the configured [`PostgresConfig::reply_timeout`].
    async fn within<T>(
        &self,
        statement: impl Future<Output = std::result::Result<T, sqlx::Error>>,
    ) -> std::result::Result<T, sqlx::Error> {
        within(self.inner.config.reply_timeout, statement).await
    }

    fn err(&self, error: sqlx::Error) -> Error {
        sqlx_error(error, &self.inner.target)
    }

    async fn lease(&self) -> Result<Lease<'_>> {
        let hot = lock(&self.inner.hot).pop();
        let conn = match hot {
            Some(conn) => conn,
            None => self.inner.pool.acquire().await.map_err(|e| self.err(e))?,
        };
        Ok(Lease {
            inner: &self.inner,
            conn: Some(conn),
        })
    }

    /// Wakes this process's followers at once and, through a coalescing background
    /// NOTIFY, those of other processes.
    fn committed(&self) {
        self.inner.wakeups.notify_waiters();
        let mut notifier = lock(&self.inner.notifier);
        if notifier.as_ref().is_none_or(|(task, _)| task.is_finished()) {
            let signal = Arc::new(Notify::new());
            let task = tokio::spawn(wakeup::send_notifications(
                self.inner.options.clone(),
                self.inner.config.connect_timeout,
                self.inner.config.reply_timeout,
                self.inner.sql.notify.clone(),
                self.inner.sql.channel.clone(),
                signal.clone(),
            ));
            *notifier = Some((task, signal));
        }
        if let Some((_, signal)) = notifier.as_ref() {
            signal.notify_one();
        }
    }

    async fn select_records(
        &self,
        kind: RecordKind,
        asc: &str,
        desc: &str,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query(if query.descending { desc } else { asc })
            .bind(stream_id)
            // Without a lower bound, from the lowest bigint: a corrupt (negative) version
            // then fails to decode instead of staying out of sight.
            .bind(query.after.map_or(i64::MIN, clamp))
            .bind(clamp(query.up_to.unwrap_or(u64::MAX)))
            .bind(query.limit.map(clamp_limit))
            .fetch_all(lease.conn());
        let result = self.within(statement).await;
        let rows = lease.finish(result).map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| stored(row, kind, stream_id, 1))
            .collect()
    }

    fn start_listener(&self) -> bool {
        let mut listener = lock(&self.inner.listener);
        if listener.as_ref().is_some_and(|task| !task.is_finished()) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        *listener = Some(runtime.spawn(wakeup::listen(
            self.inner.options.clone(),
            self.inner.config.connect_timeout,
            self.inner.config.listener_heartbeat,
            self.inner.sql.channel.clone(),
            self.inner.wakeups.clone(),
            self.inner.listener_stats.clone(),
        )));
        true
    }
}

/// Puts the store's schema first on the search path of its connections, so the tables a
/// projection or view creates without a schema (portable SQL cannot name one) live beside
/// the store's own, not in `public`. The store's own statements name their schema anyway.
fn with_search_path(options: PgConnectOptions, schema: &str) -> PgConnectOptions {
    if schema == "public" {
        return options;
    }
    // No space: the startup `options` parameter splits on spaces.
    let quoted = format!("\"{}\",public", schema.replace('"', "\"\""));
    options.options([("search_path", quoted)])
}

async fn connect_once(
    options: &PgConnectOptions,
    config: &PostgresConfig,
    target: &Target,
) -> Result<PgConnection> {
    match tokio::time::timeout(config.connect_timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(match e {
            // A server that answers but refuses (bad password, no such database) is not
            // "unavailable"; report it as it is.
            sqlx::Error::Database(_) if !crate::error::is_unavailable(&e) => {
                Error::backend(BACKEND, e)
            }
            e => Error::Unavailable {
                backend: BACKEND,
                target: target.0.clone(),
                source: Box::new(e),
            },
        }),
        Err(_) => Err(Error::Unavailable {
            backend: BACKEND,
            target: target.0.clone(),
            source: format!(
                "no connection within {:?} (connect_timeout)",
                config.connect_timeout
            )
            .into(),
        }),
    }
}

#[async_trait]
impl EventReader for PostgresStore {
    async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
        let sql = &self.inner.sql;
        self.select_records(
            RecordKind::Event,
            &sql.select_events_asc,
            &sql.select_events_desc,
            stream_id,
            query,
        )
        .await
    }

    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        let sql = &self.inner.sql;
        self.select_records(
            RecordKind::Snapshot,
            &sql.select_snapshots_asc,
            &sql.select_snapshots_desc,
            stream_id,
            query,
        )
        .await
    }

    /// One round trip: the newest snapshot at or below `up_to` and the events after it.
    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query(&self.inner.sql.load)
            .bind(stream_id)
            .bind(clamp(up_to.unwrap_or(u64::MAX)))
            .fetch_all(lease.conn());
        let result = self.within(statement).await;
        let rows = lease.finish(result).map_err(|e| self.err(e))?;
        let (mut snapshot, mut events) = (None, Vec::new());
        for row in &rows {
            let is_snapshot: bool = row.try_get(0).map_err(|e| self.err(e))?;
            let kind = if is_snapshot {
                RecordKind::Snapshot
            } else {
                RecordKind::Event
            };
            let record = stored(row, kind, stream_id, 1)?;
            if is_snapshot {
                snapshot = Some(record);
            } else {
                events.push(record);
            }
        }
        // UNION ALL keeps the branches' order in practice; make it a guarantee.
        if !events.windows(2).all(|w| w[0].version < w[1].version) {
            events.sort_by_key(|e| e.version);
        }
        Ok(Loaded::new(snapshot, events))
    }
}

#[async_trait]
impl EventWriter for PostgresStore {
    /// One round trip: a single statement in its own (implicit) transaction (with
    /// [`Ordering::TableLock`], a transaction around `LOCK TABLE` and that statement).
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
        let args = RecordArgs::new(recording)?;
        let in_tx = self.inner.config.notify_in_transaction;
        if !recording.appends.is_empty() {
            return self.record_with_appends(args, recording, in_tx).await;
        }
        if args.is_empty() {
            return Ok(Vec::new());
        }
        let statement = RecordStatement::for_own_transaction(&args, in_tx);
        let mut lease = self.lease().await?;
        let outcome = if self.inner.config.ordering == Ordering::TableLock {
            self.within(self.record_under_table_lock(lease.conn(), &args, statement))
                .await
        } else {
            self.within(self.call_record(lease.conn(), &args, statement))
                .await
        };
        let outcome = lease.finish(outcome);
        let ids = self.recorded(outcome, recording).await?;
        self.wake_after(&ids, in_tx);
        Ok(ids)
    }
}

impl PostgresStore {
    /// After a recording in a transaction of its own: wakes this process's followers, and
    /// the others' through the coalesced NOTIFY unless the statement already notified.
    fn wake_after(&self, ids: &[u64], notified_in_transaction: bool) {
        if ids.is_empty() {
            return;
        }
        if notified_in_transaction {
            self.inner.wakeups.notify_waiters();
        } else {
            self.committed();
        }
    }

    /// A recording with appends, in a transaction of its own: `BEGIN`, the append locks
    /// and the streams' latest versions ([`Self::allocate_versions`]), the record
    /// statement, `COMMIT`.
    async fn record_with_appends(
        &self,
        mut args: RecordArgs<'_>,
        recording: &Recording,
        in_tx: bool,
    ) -> Result<Vec<u64>> {
        let mut lease = self.lease().await?;
        let table_lock = self.inner.config.ordering == Ordering::TableLock;
        let work = async {
            let mut tx = lease.conn().begin().await?;
            if table_lock {
                sqlx::query(&self.inner.sql.lock_events)
                    .execute(&mut *tx)
                    .await?;
            }
            let versions = self.allocate_versions(&mut tx, recording).await?;
            args.with_appends(&recording.appends, &versions);
            let statement = RecordStatement::for_own_transaction(&args, in_tx);
            let recorded = self.call_record(&mut *tx, &args, statement).await?;
            if matches!(recorded, Recorded::Ids(_)) {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(recorded)
        };
        let outcome = self.within(work).await;
        let outcome = lease.finish(outcome);
        let ids = self.recorded(outcome, recording).await?;
        self.wake_after(&ids, in_tx);
        Ok(ids)
    }

    /// What Python `eventsourcing` does: the table locked from before the ids are taken
    /// until the commit.
    async fn record_under_table_lock(
        &self,
        conn: &mut PgConnection,
        args: &RecordArgs<'_>,
        statement: RecordStatement,
    ) -> std::result::Result<Recorded, sqlx::Error> {
        let mut tx = conn.begin().await?;
        sqlx::query(&self.inner.sql.lock_events)
            .execute(&mut *tx)
            .await?;
        let recorded = self.call_record(&mut *tx, args, statement).await?;
        tx.commit().await?;
        Ok(recorded)
    }
}

#[async_trait]
impl NotificationReader for PostgresStore {
    /// Gap-safe: only ids up to the last one whose writer has ended, and so every writer
    /// below it (see the crate docs). One round trip.
    async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>> {
        let topics = (!query.topics.is_empty()).then_some(&query.topics);
        let statement = sqlx::query(&self.inner.sql.notifications)
            .bind(clamp(query.after))
            .bind(query.before.map(clamp))
            .bind(clamp_limit(query.limit))
            .bind(topics)
            .bind(query.descending);
        let mut lease = self.lease().await?;
        let result = self.within(statement.fetch_all(lease.conn())).await;
        let rows = lease.finish(result).map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0).map_err(|e| self.err(e))?;
                let stream_id: String = row.try_get(1).map_err(|e| self.err(e))?;
                let id = unsigned(RecordKind::Event, &stream_id, "notification id", id)?;
                Ok(Notification::new(
                    id,
                    stored(row, RecordKind::Event, &stream_id, 2)?,
                ))
            })
            .collect()
    }

    /// The highest id [`Self::select_notifications`] can return now; index-only.
    async fn max_notification_id(&self) -> Result<u64> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query_scalar(&self.inner.sql.max_notification_id);
        let result = self.within(statement.fetch_one(lease.conn())).await;
        let id: i64 = lease.finish(result).map_err(|e| self.err(e))?;
        unsigned_scalar("notification id", id)
    }

    /// Woken by a background LISTEN connection (started on the first call, inside a Tokio
    /// runtime) on every NOTIFY of these tables and after every reconnection; and at once
    /// by this process's own commits.
    fn wakeups(&self) -> Option<Arc<Notify>> {
        self.start_listener();
        Some(self.inner.wakeups.clone())
    }
}

#[async_trait]
impl TrackingReader for PostgresStore {
    async fn tracking_position(&self, follower: &str) -> Result<Option<u64>> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query_scalar(&self.inner.sql.tracking_position).bind(follower);
        let result = self.within(statement.fetch_optional(lease.conn())).await;
        let position: Option<i64> = lease.finish(result).map_err(|e| self.err(e))?;
        position
            .map(|p| unsigned_scalar("tracking position", p))
            .transpose()
    }

    async fn followers(&self) -> Result<Vec<Tracking>> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query_as(&self.inner.sql.followers);
        let result = self.within(statement.fetch_all(lease.conn())).await;
        let rows: Vec<(String, i64)> = lease.finish(result).map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(follower, position)| {
                Ok(Tracking::new(
                    follower,
                    unsigned_scalar("tracking position", position)?,
                ))
            })
            .collect()
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// `BEGIN` on a connection of the pool, within [`PostgresConfig::reply_timeout`].
    async fn begin(&self) -> Result<Transaction> {
        let tx = self
            .within(self.inner.pool.begin())
            .await
            .map_err(|e| self.err(e))?;
        Ok(Transaction::new(PostgresTransaction {
            store: self.clone(),
            tx,
            own: true,
            recorded: false,
        }))
    }

    /// sqlx's errors that a retry can get past: I/O, a broken protocol stream, a pool
    /// that timed out or closed, and server errors of severity `FATAL` or with a passing
    /// SQLSTATE (serialisation failure, deadlock, lock not available, too many
    /// connections, shutdown, connection exceptions); and the core's transient errors.
    fn is_transient_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        eventfold_core::error_chain(error).any(|e| {
            e.downcast_ref::<sqlx::Error>()
                .is_some_and(crate::error::is_transient)
                || e.downcast_ref::<Error>().is_some_and(Error::is_transient)
        })
    }
}

impl PostgresStore {
    /// Wraps a transaction the caller opened on this store's database (from
    /// [`Self::pool`] or a pool of their own) as an [`eventfold_core::Transaction`], so
    /// [`eventfold_core::Application::save_in`] and [`Transaction::record`] write into it
    /// and it commits or rolls back as a whole. The caller's own statements go through
    /// [`PostgresTransactionExt::postgres`].
    ///
    /// The store's statements in it wait as the caller's do (no
    /// [`PostgresConfig::reply_timeout`]: the transaction is the caller's).
    pub fn join(&self, tx: sqlx::Transaction<'static, Postgres>) -> Transaction {
        Transaction::new(PostgresTransaction {
            store: self.clone(),
            tx,
            own: false,
            recorded: false,
        })
    }
}

/// An open PostgreSQL transaction: eventfold's records, portable SQL and the caller's own
/// statements (on [`PostgresTransactionExt::postgres`], or by dereferencing to the
/// [`PgConnection`]) commit or roll back together. Opened by
/// [`Store::begin`](eventfold_core::Store::begin) or wrapped by [`PostgresStore::join`];
/// used through [`eventfold_core::Transaction`]. Dropped without a commit, it rolls back.
pub struct PostgresTransaction {
    store: PostgresStore,
    tx: sqlx::Transaction<'static, Postgres>,
    /// Opened by the store: its statements wait at most `reply_timeout`.
    own: bool,
    /// Events were recorded: wake this process's followers after the commit.
    recorded: bool,
}

impl std::fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransaction")
            .field("store", &self.store)
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

impl PostgresTransaction {
    /// The underlying sqlx transaction.
    pub fn inner(&mut self) -> &mut sqlx::Transaction<'static, Postgres> {
        &mut self.tx
    }

    /// The underlying sqlx transaction, to commit or roll back by hand (this process's
    /// followers are then not woken at once; they poll, and NOTIFY reaches them).
    pub fn into_inner(self) -> sqlx::Transaction<'static, Postgres> {
        self.tx
    }

    /// How long the store waits for its statements in this transaction (zero: as long as
    /// it takes).
    fn limit(&self) -> Duration {
        if self.own {
            self.store.inner.config.reply_timeout
        } else {
            Duration::ZERO
        }
    }
}

impl std::ops::Deref for PostgresTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for PostgresTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[async_trait]
impl StoreTransaction for PostgresTransaction {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// [`PostgresStore::record_in`] on this transaction.
    async fn record(&mut self, recording: &Recording) -> Result<Vec<u64>> {
        let store = self.store.clone();
        let limit = self.limit();
        let work = store.record_into(&mut self.tx, recording);
        let ids = if limit.is_zero() {
            work.await?
        } else {
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| store.err(timed_out(limit)))??
        };
        if !ids.is_empty() {
            self.recorded = true;
        }
        Ok(ids)
    }

    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let query = bind_all(sqlx::query(sql), params)?;
        let done = within(self.limit(), query.execute(&mut *self.tx))
            .await
            .map_err(|e| self.store.err(e))?;
        Ok(done.rows_affected())
    }

    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>> {
        let query = bind_all(sqlx::query(sql), params)?;
        let rows = within(self.limit(), query.fetch_all(&mut *self.tx))
            .await
            .map_err(|e| self.store.err(e))?;
        rows.iter().map(sql_row).collect()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let PostgresTransaction {
            store,
            tx,
            own,
            recorded,
        } = *self;
        let committed = if own {
            store.within(tx.commit()).await
        } else {
            tx.commit().await
        };
        committed.map_err(|e| store.err(e))?;
        if recorded {
            // The NOTIFY went out with the commit; this process's followers need not wait
            // for it to come back through the LISTEN connection.
            store.inner.wakeups.notify_waiters();
        }
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let PostgresTransaction { store, tx, own, .. } = *self;
        let rolled_back = if own {
            store.within(tx.rollback()).await
        } else {
            tx.rollback().await
        };
        rolled_back.map_err(|e| store.err(e))
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The PostgreSQL connection of an [`eventfold_core::Transaction`], for the caller's own
/// statements in it:
///
/// ```no_run
/// # async fn demo(app: &eventfold_core::Application) -> eventfold_core::Result<()> {
/// use eventfold_postgres::PostgresTransactionExt;
///
/// let mut tx = app.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)")
///     .bind(7_i64)
///     .execute(tx.postgres()?)
///     .await
///     .map_err(|e| eventfold_core::Error::backend("postgres", e))?;
/// tx.commit().await
/// # }
/// ```
pub trait PostgresTransactionExt {
    /// The connection of the open transaction; [`Error::Unsupported`] when the
    /// transaction is not on a [`PostgresStore`].
    fn postgres(&mut self) -> Result<&mut PgConnection>;
}

impl PostgresTransactionExt for Transaction {
    fn postgres(&mut self) -> Result<&mut PgConnection> {
        let backend = self.backend();
        match self.downcast_mut::<PostgresTransaction>() {
            Some(tx) => Ok(&mut tx.tx),
            None => Err(Error::Unsupported {
                backend,
                what: "a PostgreSQL connection",
            }),
        }
    }
}

/// SQL `NULL` of no declared type: the server infers the parameter's type from where it
/// is used (a typed NULL, say `text`, fails against an integer column).
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }

    fn compatible(_: &sqlx::postgres::PgTypeInfo) -> bool {
        true
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds each value as the PostgreSQL type closest to it: `bigint`, `double precision`,
/// `text`, `bytea`, and an untyped `NULL`.
///
/// A statement with a `NULL` parameter is not kept prepared: the server infers that
/// parameter's type when it parses the statement, and a prepared statement keeps the
/// type it inferred, which the next call's non-null value (always `bigint`, `double
/// precision`, `text` or `bytea`) may not match.
fn bind_all<'q>(query: PgQuery<'q>, params: &'q [SqlValue]) -> Result<PgQuery<'q>> {
    let mut query = query.persistent(!params.iter().any(SqlValue::is_null));
    for (i, param) in params.iter().enumerate() {
        query = match param {
            SqlValue::Null => query.bind(UntypedNull),
            SqlValue::Integer(v) => query.bind(*v),
            SqlValue::Real(v) => query.bind(*v),
            SqlValue::Text(v) => query.bind(v.as_str()),
            SqlValue::Blob(v) => query.bind(v.as_slice()),
            other => {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "parameter ${} is a {other:?}, which this store cannot bind",
                        i + 1
                    ),
                ))
            }
        };
    }
    Ok(query)
}

/// PostgreSQL type oids (`pg_type.oid`) read into [`SqlValue`]s.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const NUMERIC: u32 = 1700;
}

/// One result row as [`SqlValue`]s, by column type (see [`SqlValue`]); a column of
/// another type is an error naming it (cast it in the query).
fn sql_row(row: &PgRow) -> Result<SqlRow> {
    let get = |e: sqlx::Error| Error::backend(BACKEND, e);
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i).map_err(get)?;
            if raw.is_null() {
                return Ok(SqlValue::Null);
            }
            let column = &row.columns()[i];
            let type_info = column.type_info();
            let value = match type_info.oid().map(|o| o.0) {
                Some(oid::INT2) => SqlValue::Integer(row.try_get::<i16, _>(i).map_err(get)?.into()),
                Some(oid::INT4) => SqlValue::Integer(row.try_get::<i32, _>(i).map_err(get)?.into()),
                Some(oid::INT8) => SqlValue::Integer(row.try_get::<i64, _>(i).map_err(get)?),
                Some(oid::FLOAT4) => SqlValue::Real(row.try_get::<f32, _>(i).map_err(get)?.into()),
                Some(oid::FLOAT8) => SqlValue::Real(row.try_get::<f64, _>(i).map_err(get)?),
                Some(oid::BOOL) => {
                    SqlValue::Integer(row.try_get::<bool, _>(i).map_err(get)?.into())
                }
                Some(oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN) => {
                    SqlValue::Text(row.try_get::<String, _>(i).map_err(get)?)
                }
                Some(oid::BYTEA) => SqlValue::Blob(row.try_get::<Vec<u8>, _>(i).map_err(get)?),
                Some(oid::NUMERIC) => {
                    let bytes = raw.as_bytes().map_err(|e| Error::backend(BACKEND, e))?;
                    SqlValue::Text(numeric_text(bytes).ok_or_else(|| {
                        Error::backend(
                            BACKEND,
                            format!("column {:?} holds a malformed numeric", column.name()),
                        )
                    })?)
                }
                _ => {
                    return Err(Error::backend(
                        BACKEND,
                        format!(
                            "column {:?} is of type {}, which SqlValue cannot hold: cast it in \
                             the query (to bigint, double precision, text or bytea)",
                            column.name(),
                            type_info.name()
                        ),
                    ))
                }
            };
            Ok(value)
        })
        .collect()
}

/// The text of a `numeric` in PostgreSQL's binary format (as `numeric_out` writes it):
/// `ndigits`, `weight`, `sign`, `dscale`, then base-10000 digits, each an `i16`.
fn numeric_text(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> {
        Some(i16::from_be_bytes(
            bytes.get(i * 2..i * 2 + 2)?.try_into().ok()?,
        ))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = i64::from(word(1)?);
    let sign = u16::from_be_bytes(bytes.get(4..6)?.try_into().ok()?);
    let dscale = usize::try_from(word(3)?).ok()?;
    let digits: Vec<i16> = (0..ndigits).map(|d| word(4 + d)).collect::<Option<_>>()?;
    match sign {
        0xC000 => return Some("NaN".to_owned()),
        0xD000 => return Some("Infinity".to_owned()),
        0xF000 => return Some("-Infinity".to_owned()),
        _ => {}
    }
    let digit = |k: i64| -> i16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                out.push_str(&digit(k).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(k)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut k = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    Some(out)
}
