//! [`PostgresStore`]: the storage contract on PostgreSQL.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use eventfold_core::{
    Application, Conflict, Error, EventReader, EventWriter, Loaded, Mapper, Notification,
    NotificationQuery, NotificationReader, ProjectionStore, Recording, Result, Saveable, Store,
    StoredEvent, StreamQuery, Timestamp, Tracking, TrackingReader,
};

use crate::config::{Ordering, PostgresConfig};
use crate::error::{sqlx_error, unique_violation, Target};
use crate::schema::{self, MigrationReport, Sql, SCHEMA_VERSION};
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
    notify_in_transaction: AtomicBool,
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
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply from the server within {limit:?} (reply_timeout)"),
            )))
        })
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
                return Err(Error::Conflict(Conflict::new(
                    expected_versions(recording)
                        .into_iter()
                        .filter(|(s, _)| *s == event.stream_id)
                        .collect(),
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

/// What a record statement found.
enum Recorded {
    /// Written; the notification ids in the recording's order.
    Ids(Vec<i64>),
    /// A stream of the recording does not continue from its stored latest version.
    Discontinuous,
    /// The recording's follower is already at or past its position.
    TrackingBehind,
}

fn stored(row: &PgRow, stream_id: &str, first_column: usize) -> Result<StoredEvent> {
    let get = |e: sqlx::Error| Error::backend(BACKEND, e);
    let version: i64 = row.try_get(first_column).map_err(get)?;
    let occurred_at: DateTime<Utc> = row.try_get(first_column + 2).map_err(get)?;
    Ok(StoredEvent {
        stream_id: stream_id.to_owned(),
        version: version as u64,
        topic: row.try_get(first_column + 1).map_err(get)?,
        timestamp: Timestamp::from_micros(occurred_at.timestamp_micros()),
        state: row.try_get(first_column + 3).map_err(get)?,
    })
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
        let options = options.application_name("eventfold");
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
                notify_in_transaction: AtomicBool::new(false),
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

    /// Records `recording` inside the caller's open transaction, so the application's own
    /// rows and the events commit or roll back together. Returns the notification ids.
    ///
    /// One round trip. The wake-up NOTIFY is part of the transaction, so followers wake
    /// when (and only if) the caller commits. On [`Error::Conflict`] nothing of the
    /// recording was written: roll the transaction back, reload, and run the command again
    /// (after a conflict found by the unique key the transaction is aborted anyway).
    ///
    /// Notification ids become visible to followers only after the caller commits, and
    /// only once every transaction that started writing before it has ended (see the
    /// crate docs, "Gap-safe order"): keep host transactions short.
    pub async fn record_in(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        recording: &Recording,
    ) -> Result<Vec<u64>> {
        let args = RecordArgs::new(recording)?;
        if args.is_empty() {
            return Ok(Vec::new());
        }
        if self.inner.config.ordering == Ordering::TableLock {
            sqlx::query(&self.inner.sql.lock_events)
                .execute(&mut **tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        let outcome = self
            .call_record(&mut **tx, &args, RecordStatement::InHost)
            .await;
        self.recorded(outcome, recording).await
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
                .bind(args.states[0]);
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
            Ok(Recorded::Ids(ids)) => Ok(ids.into_iter().map(|id| id as u64).collect()),
            Ok(Recorded::Discontinuous) => {
                Err(Error::Conflict(Conflict::new(expected_versions(recording))))
            }
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
                Err(Error::Conflict(Conflict::new(vec![(
                    format!("tracking:{}", tracking.follower),
                    current,
                )])))
            }
            Err(error) if unique_violation(&error).is_some() => {
                // Another writer took one of these versions first.
                Err(Error::Conflict(Conflict::new(expected_versions(recording))))
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

    /// For benchmarks: send the wake-up NOTIFY inside every recording transaction (as
    /// [`Self::record_in`] does) instead of after the commit. NOTIFY serialises commits
    /// on a server-wide lock, so this costs throughput under concurrent writers.
    #[doc(hidden)]
    pub fn set_notify_in_transaction(&self, in_transaction: bool) {
        self.inner
            .notify_in_transaction
            .store(in_transaction, AtomicOrdering::Relaxed);
    }

    async fn select_records(
        &self,
        asc: &str,
        desc: &str,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query(if query.descending { desc } else { asc })
            .bind(stream_id)
            .bind(clamp(query.after.unwrap_or(0)))
            .bind(clamp(query.up_to.unwrap_or(u64::MAX)))
            .bind(query.limit.map(clamp_limit))
            .fetch_all(lease.conn());
        let result = self.within(statement).await;
        let rows = lease.finish(result).map_err(|e| self.err(e))?;
        rows.iter().map(|row| stored(row, stream_id, 1)).collect()
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
        let mut loaded = Loaded::default();
        for row in &rows {
            let is_snapshot: bool = row.try_get(0).map_err(|e| self.err(e))?;
            let record = stored(row, stream_id, 1)?;
            if is_snapshot {
                loaded.snapshot = Some(record);
            } else {
                loaded.events.push(record);
            }
        }
        // UNION ALL keeps the branches' order in practice; make it a guarantee.
        if !loaded
            .events
            .windows(2)
            .all(|w| w[0].version < w[1].version)
        {
            loaded.events.sort_by_key(|e| e.version);
        }
        Ok(loaded)
    }
}

#[async_trait]
impl EventWriter for PostgresStore {
    /// One round trip: a single statement in its own (implicit) transaction (with
    /// [`Ordering::TableLock`], a transaction around `LOCK TABLE` and that statement).
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
        let args = RecordArgs::new(recording)?;
        if args.is_empty() {
            return Ok(Vec::new());
        }
        let in_tx = self
            .inner
            .notify_in_transaction
            .load(AtomicOrdering::Relaxed);
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
        if !ids.is_empty() {
            if in_tx {
                self.inner.wakeups.notify_waiters();
            } else {
                self.committed();
            }
        }
        Ok(ids)
    }
}

impl PostgresStore {
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
            .bind(clamp_limit(query.limit))
            .bind(topics);
        let mut lease = self.lease().await?;
        let result = self.within(statement.fetch_all(lease.conn())).await;
        let rows = lease.finish(result).map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0).map_err(|e| self.err(e))?;
                let stream_id: String = row.try_get(1).map_err(|e| self.err(e))?;
                Ok(Notification {
                    id: id as u64,
                    event: stored(row, &stream_id, 2)?,
                })
            })
            .collect()
    }

    /// The highest id [`Self::select_notifications`] can return now; index-only.
    async fn max_notification_id(&self) -> Result<u64> {
        let mut lease = self.lease().await?;
        let statement = sqlx::query_scalar(&self.inner.sql.max_notification_id);
        let result = self.within(statement.fetch_one(lease.conn())).await;
        let id: i64 = lease.finish(result).map_err(|e| self.err(e))?;
        Ok(id as u64)
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
        Ok(position.map(|p| p as u64))
    }
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }
}

/// A projection's open transaction: the projection writes its rows through it, and
/// [`ProjectionStore::commit`] moves the follower's position in it before committing.
///
/// Dereferences to the [`PgConnection`], so queries run on it with
/// `.execute(&mut **tx)` where `tx: &mut PostgresTransaction`.
#[derive(Debug)]
pub struct PostgresTransaction {
    tx: sqlx::Transaction<'static, Postgres>,
}

impl PostgresTransaction {
    /// The underlying sqlx transaction.
    pub fn inner(&mut self) -> &mut sqlx::Transaction<'static, Postgres> {
        &mut self.tx
    }

    /// The underlying sqlx transaction, to commit or roll back by hand.
    pub fn into_inner(self) -> sqlx::Transaction<'static, Postgres> {
        self.tx
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
impl ProjectionStore for PostgresStore {
    type Transaction = PostgresTransaction;

    async fn begin(&self) -> Result<PostgresTransaction> {
        let tx = self
            .within(self.inner.pool.begin())
            .await
            .map_err(|e| self.err(e))?;
        Ok(PostgresTransaction { tx })
    }

    /// Moves the position (only forwards) and commits: two round trips.
    async fn commit(&self, mut tx: PostgresTransaction, tracking: &Tracking) -> Result<()> {
        let position = to_i64(tracking.position, "tracking position")?;
        let statement = sqlx::query_as(&self.inner.sql.move_tracking)
            .bind(&tracking.follower)
            .bind(position)
            .fetch_one(&mut *tx.tx);
        let (moved, current): (Option<i64>, Option<i64>) =
            self.within(statement).await.map_err(|e| self.err(e))?;
        if moved.is_none() {
            let _ = self.within(tx.tx.rollback()).await;
            return Err(Error::Conflict(Conflict::new(vec![(
                format!("tracking:{}", tracking.follower),
                current.map_or(0, |c| c as u64),
            )])));
        }
        self.within(tx.tx.commit()).await.map_err(|e| self.err(e))
    }

    async fn position(&self, follower: &str) -> Result<Option<u64>> {
        self.tracking_position(follower).await
    }
}

/// Saves aggregates inside the caller's transaction: [`Application::prepare`], then
/// [`PostgresStore::record_in`], then [`Application::saved`]. Returns the notification ids.
///
/// The aggregates are marked saved (and cached, if the application caches) when the
/// events are written into `tx`, before the caller commits. **If the caller then rolls
/// back, drop those aggregates and reload them**: they believe versions exist that do
/// not. A stale copy cannot corrupt a stream even so: the store rejects a recording that
/// does not continue from the stored latest version with [`Error::Conflict`], which also
/// evicts it from the application's cache.
///
/// `app` should be built on the same store (or at least the same tables) as `store`.
pub async fn save_in<M: Mapper>(
    app: &Application<M>,
    store: &PostgresStore,
    tx: &mut sqlx::Transaction<'_, Postgres>,
    roots: &mut [&mut dyn Saveable<M>],
) -> Result<Vec<u64>> {
    let recording = app.prepare(roots)?;
    if recording.events.is_empty() {
        return Ok(Vec::new());
    }
    match store.record_in(tx, &recording).await {
        Ok(ids) => {
            app.saved(roots);
            Ok(ids)
        }
        Err(Error::Conflict(_)) => Err(Error::Conflict(Conflict::new(
            roots.iter().map(|r| r.expected()).collect(),
        ))),
        Err(other) => Err(other),
    }
}
