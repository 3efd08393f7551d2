//! `eventfold bench changes`: the workload of the peers' `crud_events_bench.py`
//! (django-events-sourcing → RabbitMQ → nameko) on eventfold: each save of an `Order` is
//! the caller's own SQL (INSERT or UPDATE of `orders`) plus a change record
//! (`eventfold-changes`) in ONE [`eventfold_core::Transaction`]; the relay
//! (`eventfold-relay`, [`NamekoChanges`]) and a consumer ([`eventfold_amqp::Consumer`] on
//! nameko's queues) run in the same process.
//!
//! Phases (as the peer's, N saves = N/2 create+update pairs, interleaved):
//! * `baseline`: the same saves without eventfold (the row only, same transaction shape);
//! * `floor` (on request): the row and one plain INSERT, by the caller's SQL, of a row as
//!   large as the change record into a table with the events table's keys and indexes:
//!   the least any outbox adds to a save, which bounds `record_only` / `baseline`;
//! * `record_only`: the row and its change record, no relay;
//! * `no_consumer`: exchange absent at start, no queue bound, relay running: saves/s, and
//!   `events_lost` = records neither confirmed nor parked;
//! * `consumer`: consumers running: saves/s, end-to-end events/s, commit → receipt lag,
//!   lost, duplicates, per-object inversions, the relay's AMQP connections;
//! * `backlog`: B change records recorded with the relay stopped, then drained; in the
//!   same run the broker's own confirmed-publish rate of the same message with the same
//!   window ([`broker_confirmed_rate`]), and the store's bare commit rate.
//!
//! A fresh virtual host per run (`rabbitmqctl`), a fresh SQLite file or PostgreSQL schema
//! per phase, all removed afterwards.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eventfold_amqp::nameko::HandlerType;
use eventfold_amqp::{
    AmqpConfig, ConfirmedPublisher, Consumer, ConsumerOptions, ExchangeKind, IncomingMessage,
    OrderKey, Outcome, OutgoingMessage, PublisherOptions, Subscription,
};
use eventfold_changes::{Changes, Model};
use eventfold_core::{NotificationQuery, SqlValue, Store};
use eventfold_relay::{NamekoChanges, Relay, RelayMetrics, Route};
use serde::Serialize;
use serde_json::{json, Value};

/// The relay's name (its follower position, lock queue and message ids).
const RELAY: &str = "orders";
/// nameko's consumer service and the queues it would use.
const CONSUMER_SERVICE: &str = "orders_consumer";

/// Where the change records live.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A fresh SQLite file per phase, in this directory.
    Sqlite {
        /// The directory of the scratch files.
        dir: std::path::PathBuf,
    },
    /// A fresh schema per phase on this server.
    #[cfg(feature = "postgres")]
    Postgres {
        /// The server's URL.
        url: String,
    },
}

impl Backend {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite { .. } => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct ChangesBench {
    /// The store.
    pub backend: Backend,
    /// The broker, without a virtual host (`amqp://guest:guest@127.0.0.1:5672`).
    pub amqp_url: String,
    /// N saves per phase (N/2 create+update pairs).
    pub saves: usize,
    /// B change records of the backlog phase.
    pub backlog: usize,
    /// Change records per transaction while the backlog is written (not timed).
    pub backlog_batch: usize,
    /// Relay batch size and window (and the broker probe's window and batch).
    pub window: usize,
    /// Messages of the broker's own confirmed-publish probe.
    pub broker_messages: usize,
    /// Bare single-row commits.
    pub bare_commits: u64,
    /// Longest wait for the relay or the consumer.
    pub timeout: Duration,
    /// Phases to run (`baseline`, `floor`, `record_only`, `no_consumer`, `consumer`,
    /// `consumer_paced`, `backlog`, `bare`).
    pub phases: Vec<String>,
    /// Consume from nameko's two per-handler queues (`evt-orders-order__created--...`,
    /// `...__updated--...`) instead of one queue bound `#`. Two queues keep no order
    /// between an instance's created and updated events; one queue keeps each key's order.
    pub nameko_queues: bool,
    /// Saves per second of the `consumer_paced` phase (the consumer phase at a set
    /// arrival rate, below the broker's).
    pub paced_saves_per_s: f64,
}

/// The peer's `Order` model, serialized as its DRF `ModelSerializer` writes it.
#[derive(Debug, Clone, Serialize)]
struct Order {
    id: i64,
    customer: String,
    qty: i32,
    amount: String,
    note: String,
    created: String,
}

impl Model for Order {
    const NAME: &'static str = "order";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Order {
    fn new(id: i64, tag: &str, i: usize) -> Self {
        Order {
            id,
            customer: format!("{tag}-{i}"),
            qty: 1,
            amount: "12.50".to_owned(),
            note: "bench".to_owned(),
            created: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
        }
    }
}

/// `rabbitmqctl -q <args>`, stdin given.
pub(crate) fn rabbitmqctl(args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running rabbitmqctl")?;
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes())?;
    }
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A fresh virtual host (guest has every permission), deleted on drop.
pub(crate) struct TempVhost {
    pub(crate) name: String,
}

impl TempVhost {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let name = format!(
            "ef-bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let definitions = json!({
            "vhosts": [{ "name": name }],
            "permissions": [{
                "user": "guest", "vhost": name,
                "configure": ".*", "write": ".*", "read": ".*",
            }],
        });
        rabbitmqctl(&["import_definitions"], Some(&definitions.to_string()))?;
        Ok(TempVhost { name })
    }
}

impl Drop for TempVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name], None);
    }
}

/// One phase's fresh store, removed by [`Scratch::remove`].
pub(crate) struct Scratch {
    pub(crate) store: Arc<dyn Store>,
    /// The caller's `orders` table.
    orders: String,
    /// What the caller's table names start with (empty on SQLite).
    prefix: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Files(Vec<std::path::PathBuf>),
    #[cfg(feature = "postgres")]
    Prefix(sqlx::PgPool, String),
}

impl Scratch {
    async fn open(backend: &Backend, run: &str, phase: &str) -> anyhow::Result<Self> {
        let scratch = Scratch::open_empty(backend, "efbc", run, phase).await?;
        let mut tx = scratch.store.begin().await?;
        tx.execute(
            &format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, customer VARCHAR(100) NOT NULL, \
                 qty INTEGER NOT NULL, amount TEXT NOT NULL, note TEXT NOT NULL, created TEXT NOT NULL)",
                scratch.orders
            ),
            &[],
        )
        .await?;
        tx.commit().await?;
        Ok(scratch)
    }

    /// A fresh store and no table of the caller's: a SQLite file named after `tag`, `run`
    /// and `phase`, or PostgreSQL tables prefixed `<tag>_<run>_<phase>_`.
    pub(crate) async fn open_empty(
        backend: &Backend,
        tag: &str,
        run: &str,
        phase: &str,
    ) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Sqlite { dir } => {
                let path = dir.join(format!("eventfold-bench-{tag}-{run}-{phase}.sqlite3"));
                let files = ["", "-wal", "-shm"]
                    .iter()
                    .map(|s| std::path::PathBuf::from(format!("{}{s}", path.display())))
                    .collect::<Vec<_>>();
                for f in &files {
                    let _ = std::fs::remove_file(f);
                }
                let store = eventfold_sqlite::SqliteStore::open(
                    &eventfold_sqlite::SqliteConfig::new(&path),
                )?;
                Scratch {
                    store: Arc::new(store),
                    orders: "orders".to_owned(),
                    prefix: String::new(),
                    cleanup: Cleanup::Files(files),
                }
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres { url } => {
                // Schema `public` with a prefix of its own: a store in another schema
                // fails to connect here (its `search_path` startup option has a space:
                // `invalid value for parameter "search_path"`).
                let prefix = format!("{tag}_{run}_{phase}_");
                let mut config = eventfold_postgres::PostgresConfig::new(url.clone());
                config.table_prefix = prefix.clone();
                let store = eventfold_postgres::PostgresStore::connect(&config).await?;
                let pool = store.pool().clone();
                Scratch {
                    store: Arc::new(store),
                    orders: format!("{prefix}orders"),
                    prefix: prefix.clone(),
                    cleanup: Cleanup::Prefix(pool, prefix),
                }
            }
        })
    }

    /// The name of the caller's table `name` in this scratch store.
    pub(crate) fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        let Scratch { store, cleanup, .. } = self;
        drop(store);
        match cleanup {
            Cleanup::Files(files) => {
                for f in files {
                    let _ = std::fs::remove_file(f);
                }
            }
            #[cfg(feature = "postgres")]
            Cleanup::Prefix(pool, prefix) => {
                let like = format!("{prefix}%");
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE $1",
                )
                .bind(&like)
                .fetch_all(&pool)
                .await?;
                for (t,) in tables {
                    sqlx::query(&format!("DROP TABLE IF EXISTS public.\"{t}\" CASCADE"))
                        .execute(&pool)
                        .await?;
                }
                let routines: Vec<(String,)> = sqlx::query_as(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n \
                     ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND p.proname LIKE $1",
                )
                .bind(&like)
                .fetch_all(&pool)
                .await?;
                for (r,) in routines {
                    sqlx::query(&format!("DROP ROUTINE IF EXISTS {r} CASCADE"))
                        .execute(&pool)
                        .await?;
                }
                pool.close().await;
            }
        }
        Ok(())
    }
}

/// What a save writes besides the caller's row.
#[derive(Clone, Copy)]
enum Extra<'a> {
    /// Nothing: the same saves without eventfold (`baseline`).
    Nothing,
    /// The row's change record.
    Change(&'a Changes),
    /// One plain INSERT, by the caller's SQL, of a row as large as the change record (the
    /// same body and metadata) into a table with the events table's keys and indexes:
    /// the least any outbox must add to a save (`floor`).
    Floor(&'a Floor, &'a str),
}

/// The `floor` phase's table and INSERT statement: one plain row shaped as the store's
/// events table, written by the caller's SQL (also the `floor` of `eventfold bench
/// replication`).
pub(crate) struct Floor {
    insert: String,
}

/// One row of a [`Floor`] table: what a record of the same size holds.
pub(crate) struct FloorRow {
    pub(crate) stream_id: String,
    pub(crate) version: i64,
    pub(crate) topic: String,
    pub(crate) state: Vec<u8>,
    pub(crate) metadata: eventfold_core::Metadata,
}

impl Floor {
    /// Creates the table `<beside>_floor` beside the caller's table, with the columns, keys
    /// and indexes of the store's events table on this backend.
    pub(crate) async fn create(store: &dyn Store, beside: &str) -> anyhow::Result<Self> {
        let table = format!("{beside}_floor");
        let (ddl, insert) = if store.backend() == "postgres" {
            (
                vec![format!(
                    "CREATE TABLE {table} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
                     stream_id text NOT NULL, version bigint NOT NULL, topic text NOT NULL, \
                     occurred_at timestamptz NOT NULL, state bytea NOT NULL, metadata text, \
                     UNIQUE (stream_id, version))"
                )],
                format!(
                    "INSERT INTO {table} (stream_id, version, topic, occurred_at, state, metadata) \
                     VALUES ($1, $2, $3, to_timestamp($4::bigint / 1e6), $5, $6)"
                ),
            )
        } else {
            (
                vec![
                    format!(
                        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, \
                         version INTEGER NOT NULL, topic TEXT NOT NULL, timestamp INTEGER NOT NULL, \
                         state BLOB NOT NULL, metadata TEXT, UNIQUE (stream_id, version))"
                    ),
                    format!("CREATE INDEX {table}_topic_id ON {table} (topic, id)"),
                ],
                format!(
                    "INSERT INTO {table} (stream_id, version, topic, timestamp, state, metadata) \
                     VALUES ($1, $2, $3, $4, $5, $6)"
                ),
            )
        };
        let mut tx = store.begin().await?;
        for statement in &ddl {
            tx.execute(statement, &[]).await?;
        }
        tx.commit().await?;
        Ok(Floor { insert })
    }

    /// Writes `row` in `tx`, as one plain INSERT.
    pub(crate) async fn insert(
        &self,
        tx: &mut eventfold_core::Transaction,
        row: FloorRow,
    ) -> anyhow::Result<()> {
        tx.execute(
            &self.insert,
            &[
                row.stream_id.into(),
                SqlValue::Integer(row.version),
                row.topic.into(),
                SqlValue::Integer(eventfold_core::Timestamp::now().as_micros()),
                row.state.into(),
                row.metadata.to_json().into(),
            ],
        )
        .await?;
        Ok(())
    }
}

/// The plain row a change record of `order` would be ([`Floor`]).
async fn insert_order_floor(
    floor: &Floor,
    service: &str,
    tx: &mut eventfold_core::Transaction,
    order: &Order,
    create: bool,
) -> anyhow::Result<()> {
    let event_type = if create {
        "order__created"
    } else {
        "order__updated"
    };
    let key = order.key();
    let metadata = eventfold_core::Metadata::new().with(
        eventfold_changes::CHANGE_KEY,
        json!({"service": service, "model": Order::NAME, "event_type": event_type, "key": key}),
    );
    let row = FloorRow {
        stream_id: format!("{service}.{}:{key}", Order::NAME),
        version: if create { 1 } else { 2 },
        topic: format!("{service}.{event_type}"),
        state: eventfold_amqp::nameko::python_json(order)?,
        metadata,
    };
    floor.insert(tx, row).await
}

/// One save: the row by the caller's own SQL, and `extra` (its change record, or the
/// floor's plain row), in one transaction. Returns the change record's notification id.
async fn save(
    store: &dyn Store,
    table: &str,
    extra: Extra<'_>,
    order: &Order,
    create: bool,
) -> anyhow::Result<Option<u64>> {
    let mut tx = store.begin().await?;
    let params = [
        SqlValue::from(order.id),
        order.customer.as_str().into(),
        order.qty.into(),
        order.amount.as_str().into(),
        order.note.as_str().into(),
        order.created.as_str().into(),
    ];
    if create {
        tx.execute(
            &format!(
                "INSERT INTO {table} (id, customer, qty, amount, note, created) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &params,
        )
        .await?;
    } else {
        tx.execute(
            &format!(
                "UPDATE {table} SET customer = $2, qty = $3, amount = $4, note = $5, created = $6 \
                 WHERE id = $1"
            ),
            &params,
        )
        .await?;
    }
    let id = match extra {
        Extra::Change(c) if create => c.created(&mut tx, order).await?,
        Extra::Change(c) => c.updated(&mut tx, order).await?,
        Extra::Floor(floor, service) => {
            insert_order_floor(floor, service, &mut tx, order, create).await?;
            None
        }
        Extra::Nothing => None,
    };
    tx.commit().await?;
    Ok(id)
}

const CREATED: u8 = 0;
/// The order id of the consumer phase's warm-up save (not counted).
const WARMUP: i64 = 1_000_000_000;
const UPDATED: u8 = 1;

/// What the save loop measured.
struct Saves {
    seconds: f64,
    latencies: Vec<f64>,
    /// (kind, order id) → the instant its commit returned.
    committed: HashMap<(u8, i64), Instant>,
    last_record: u64,
    started: Instant,
}

/// N/2 create+update pairs, interleaved, as the peer's `run_saves`.
async fn run_saves(
    store: &dyn Store,
    table: &str,
    extra: Extra<'_>,
    tag: &str,
    saves: usize,
) -> anyhow::Result<Saves> {
    run_saves_paced(store, table, extra, tag, saves, None).await
}

/// [`run_saves`], at most `pace` saves per second when given (save k starts no earlier
/// than k / pace seconds after the first).
async fn run_saves_paced(
    store: &dyn Store,
    table: &str,
    extra: Extra<'_>,
    tag: &str,
    saves: usize,
    pace: Option<f64>,
) -> anyhow::Result<Saves> {
    let pairs = saves / 2;
    let mut latencies = Vec::with_capacity(2 * pairs);
    let mut committed = HashMap::with_capacity(2 * pairs);
    let mut last_record = 0;
    let started = Instant::now();
    for i in 0..pairs {
        let mut order = Order::new(i as i64 + 1, tag, i);
        let slot = |k: usize| pace.map(|p| started + Duration::from_secs_f64(k as f64 / p));
        if let Some(at) = slot(2 * i) {
            tokio::time::sleep_until(at.into()).await;
        }
        let s = Instant::now();
        let id = save(store, table, extra, &order, true).await?;
        let done = Instant::now();
        latencies.push((done - s).as_secs_f64());
        committed.insert((CREATED, order.id), done);
        last_record = last_record.max(id.unwrap_or(0));
        order.qty = 2;
        if let Some(at) = slot(2 * i + 1) {
            tokio::time::sleep_until(at.into()).await;
        }
        let s = Instant::now();
        let id = save(store, table, extra, &order, false).await?;
        let done = Instant::now();
        latencies.push((done - s).as_secs_f64());
        committed.insert((UPDATED, order.id), done);
        last_record = last_record.max(id.unwrap_or(0));
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Saves {
        seconds,
        latencies,
        committed,
        last_record,
        started,
    })
}

/// The peers' percentile: nearest rank, rounded half up.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64 + 0.5).round() as isize - 1;
    sorted[rank.clamp(0, sorted.len() as isize - 1) as usize]
}

/// Four significant digits, as the peers print them.
pub fn sig4(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// A relay running in a task.
struct Running {
    relay: Arc<Relay>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), eventfold_relay::RelayError>>,
}

impl Running {
    fn start(store: Arc<dyn Store>, url: &str, window: usize) -> anyhow::Result<Self> {
        let relay = Arc::new(
            Relay::builder(store, url, RELAY)?
                .route(NamekoChanges::new())
                .batch_size(window)
                .window(window)
                .build(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let r = Arc::clone(&relay);
        let task = tokio::spawn(async move {
            r.run(async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Running { relay, stop, task })
    }

    async fn stop(self) -> anyhow::Result<RelayMetrics> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(self.relay.metrics())
    }
}

/// Waits until the relay's position reaches `last` (or `timeout`); the instant it did.
async fn wait_position(
    store: &dyn Store,
    last: u64,
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<Option<Instant>> {
    let t0 = Instant::now();
    loop {
        if store.tracking_position(RELAY).await?.unwrap_or(0) >= last {
            return Ok(Some(Instant::now()));
        }
        if t0.elapsed() > timeout {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}

/// What the consumers received: (kind, order id, instant), in arrival order.
#[derive(Default)]
struct Sink {
    receipts: Mutex<Vec<(u8, i64, Instant)>>,
    count: AtomicU64,
}

async fn start_consumers(
    config: &AmqpConfig,
    sink: &Arc<Sink>,
    nameko_queues: bool,
) -> anyhow::Result<Vec<Consumer>> {
    let mut consumers = Vec::new();
    let subscriptions = if nameko_queues {
        [
            ("order__created", "on_created"),
            ("order__updated", "on_updated"),
        ]
        .iter()
        .map(|(event_type, method)| {
            (
                Subscription::nameko(
                    "orders",
                    event_type,
                    CONSUMER_SERVICE,
                    method,
                    &HandlerType::ServicePool,
                ),
                *method,
            )
        })
        .collect::<Vec<_>>()
    } else {
        vec![(
            Subscription::new(
                "orders.events",
                "#",
                format!("evt-orders-all--{CONSUMER_SERVICE}.on_change"),
            ),
            "on_change",
        )]
    };
    for (subscription, method) in subscriptions {
        let sink = Arc::clone(sink);
        let options = ConsumerOptions {
            key: OrderKey::JsonField("/id".into()),
            role: format!("consumer-{method}"),
            ..Default::default()
        };
        consumers.push(
            Consumer::start(
                config.clone(),
                subscription,
                options,
                move |m: Arc<IncomingMessage>| {
                    let sink = Arc::clone(&sink);
                    async move {
                        let at = Instant::now();
                        let kind = if m.routing_key.ends_with("__created") {
                            CREATED
                        } else {
                            UPDATED
                        };
                        let id = serde_json::from_slice::<Value>(&m.body)
                            .ok()
                            .and_then(|v| v["id"].as_i64())
                            .unwrap_or(-1);
                        sink.receipts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((kind, id, at));
                        sink.count.fetch_add(1, AtomicOrdering::Relaxed);
                        Ok(())
                    }
                },
            )
            .await?,
        );
    }
    Ok(consumers)
}

/// A plain lapin connection to the run's virtual host, for declaring and inspecting.
pub(crate) struct Admin {
    pub(crate) conn: lapin::Connection,
    pub(crate) channel: lapin::Channel,
}

impl Admin {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        Ok(Admin { conn, channel })
    }

    pub(crate) async fn exchange_exists(&self, name: &str) -> anyhow::Result<bool> {
        let ch = self.conn.create_channel().await?;
        let found = ch
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .is_ok();
        let _ = ch.close(200, "done".into()).await;
        Ok(found)
    }

    pub(crate) async fn bound_queue(&self, queue: &str, exchange: &str) -> anyhow::Result<()> {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        self.channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions::durable(),
                Default::default(),
            )
            .await?;
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                Default::default(),
                Default::default(),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn count(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self
            .channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions::durable().passive(),
                Default::default(),
            )
            .await?
            .message_count())
    }

    pub(crate) async fn delete_queue(&self, queue: &str) -> anyhow::Result<()> {
        self.channel
            .queue_delete(queue.into(), Default::default())
            .await?;
        Ok(())
    }

    pub(crate) async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The broker's own confirmed-publish rate (what `eventfold-amqp`'s `confirm_rate`
/// example measures): `n` copies of `message` (persistent, as the relay sends them) to a
/// durable queue bound `#` to a scratch exchange, `window` in flight, in `batch`es, on one
/// [`ConfirmedPublisher`]; no store, no relay. The queue and exchange are deleted after.
pub async fn broker_confirmed_rate(
    vhost_url: &str,
    message: &OutgoingMessage,
    n: usize,
    window: usize,
    batch: usize,
) -> anyhow::Result<BrokerRate> {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let exchange = format!("bench-confirm-{suffix}");
    let queue = exchange.clone();
    let config = AmqpConfig::from_url(vhost_url)?.with_connection_name("eventfold-confirm-rate");
    let publisher = ConfirmedPublisher::connect(
        config,
        PublisherOptions {
            window,
            ..Default::default()
        },
    )
    .await?;
    publisher
        .declare_exchange(&exchange, ExchangeKind::Topic)
        .await?;
    let admin = Admin::connect(vhost_url).await?;
    admin.bound_queue(&queue, &exchange).await?;
    let mut message = message.clone();
    message.exchange = exchange.clone();
    let messages: Vec<OutgoingMessage> = (0..batch.clamp(1, n.max(1)))
        .map(|i| {
            let mut m = message.clone();
            m.message_id = Some(format!("{RELAY}:{}", 1_000_000 + i));
            m
        })
        .collect();
    let started = Instant::now();
    let (mut confirmed, mut other, mut sent) = (0usize, 0usize, 0usize);
    while sent < n {
        let k = messages.len().min(n - sent);
        for o in publisher.publish_all(&messages[..k]).await {
            match o {
                Ok(Outcome::Confirmed) => confirmed += 1,
                _ => other += 1,
            }
        }
        sent += k;
    }
    let seconds = started.elapsed().as_secs_f64();
    // One message at a time: the confirm round trip of a persistent message, the floor of
    // a relay that publishes a batch and awaits its confirms before reading the next.
    let mut rtt = Vec::with_capacity(200);
    for _ in 0..200 {
        let s = Instant::now();
        for o in publisher.publish_all(&messages[..1]).await {
            if !matches!(o, Ok(Outcome::Confirmed)) {
                other += 1;
            }
        }
        rtt.push(s.elapsed().as_secs_f64());
    }
    rtt.sort_by(f64::total_cmp);
    let in_queue = admin.count(&queue).await?;
    admin.delete_queue(&queue).await?;
    let _ = admin
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    admin.close().await;
    publisher.close().await?;
    if other > 0 {
        bail!("the broker did not confirm {other} of {n} messages");
    }
    Ok(BrokerRate {
        confirmed,
        seconds,
        per_second: confirmed as f64 / seconds,
        queue_messages: in_queue,
        body_bytes: message.body.len(),
        confirm_rtt_p50_ms: percentile(&rtt, 50.0) * 1e3,
        confirm_rtt_p99_ms: percentile(&rtt, 99.0) * 1e3,
    })
}

/// The broker's own confirmed-publish rate ([`broker_confirmed_rate`]).
#[derive(Debug, Clone, Copy)]
pub struct BrokerRate {
    /// Messages confirmed.
    pub confirmed: usize,
    /// Seconds taken.
    pub seconds: f64,
    /// Confirmed messages per second.
    pub per_second: f64,
    /// Messages in the queue at the end (all of them, if none was lost).
    pub queue_messages: u32,
    /// The body size.
    pub body_bytes: usize,
    /// Publish → confirm of one message alone, median (ms).
    pub confirm_rtt_p50_ms: f64,
    /// Publish → confirm of one message alone, 99th percentile (ms).
    pub confirm_rtt_p99_ms: f64,
}

/// The store's bare commit rate: one single-row INSERT per transaction, no eventfold
/// (SQLite: a plain connection with the store's pragmas, WAL and `synchronous = NORMAL`;
/// PostgreSQL: [`crate::postgres::bare_insert_commit_rate`]).
pub(crate) async fn bare_commits(
    backend: &Backend,
    run: &str,
    n: u64,
) -> anyhow::Result<(f64, f64)> {
    match backend {
        Backend::Sqlite { dir } => {
            use eventfold_sqlite::rusqlite;
            let path = dir.join(format!("eventfold-bench-changes-{run}-bare.sqlite3"));
            let files: Vec<_> = ["", "-wal", "-shm"]
                .iter()
                .map(|s| std::path::PathBuf::from(format!("{}{s}", path.display())))
                .collect();
            let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
                let conn = rusqlite::Connection::open(&path)?;
                let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
                conn.execute_batch(
                    "PRAGMA synchronous = NORMAL; \
                     CREATE TABLE bare (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
                )?;
                let mut lat = Vec::with_capacity(n as usize);
                let t0 = Instant::now();
                for i in 0..n {
                    let s = Instant::now();
                    conn.execute_batch("BEGIN IMMEDIATE")?;
                    conn.execute(
                        "INSERT INTO bare (id, body) VALUES (?1, ?2)",
                        rusqlite::params![i as i64 + 1, "bench"],
                    )?;
                    conn.execute_batch("COMMIT")?;
                    lat.push(s.elapsed().as_secs_f64());
                }
                let secs = t0.elapsed().as_secs_f64();
                lat.sort_by(f64::total_cmp);
                Ok((n as f64 / secs, percentile(&lat, 50.0) * 1e3))
            })
            .await?;
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            result
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres { url } => {
            let rate = crate::postgres::bare_insert_commit_rate(url, n).await?;
            Ok((rate.per_second, rate.p50_ms))
        }
    }
}

pub(crate) fn line(text: String) {
    println!("{text}");
}

/// A phase of saves without the relay, on a fresh store: `baseline` (the row only),
/// `floor` (the row and one plain INSERT as large as a change record, see [`Extra::Floor`])
/// or `record_only` (the row and its change record). Returns saves/s, the phase's figures
/// and its line.
async fn saves_phase(
    backend: &Backend,
    run: &str,
    phase: &str,
    changes: &Changes,
    n: usize,
) -> anyhow::Result<(f64, Value, String)> {
    let scratch = Scratch::open(backend, run, &phase.replace('_', "")).await?;
    let floor;
    let (extra, what) = match phase {
        "baseline" => (Extra::Nothing, "row only, one transaction each"),
        "floor" => {
            floor = Floor::create(&*scratch.store, &scratch.orders).await?;
            (
                Extra::Floor(&floor, changes.service()),
                "row + one plain INSERT as large as a change record: the least an outbox adds",
            )
        }
        _ => (
            Extra::Change(changes),
            "row + change record, no relay: the ceiling of saves with a relay",
        ),
    };
    let s = run_saves(&*scratch.store, &scratch.orders, extra, phase, n).await;
    scratch.remove().await?;
    let s = s?;
    let rate = n as f64 / s.seconds;
    let (p50, p99) = (
        percentile(&s.latencies, 50.0) * 1e3,
        percentile(&s.latencies, 99.0) * 1e3,
    );
    let figures = json!({
        "saves_per_s": sig4(rate),
        "save_p50_ms": sig4(p50),
        "save_p99_ms": sig4(p99),
    });
    let text = format!("[{phase:11}] {rate:.0} saves/s ({what}) p50 {p50:.3} ms p99 {p99:.3} ms");
    Ok((rate, figures, text))
}

/// Runs the benchmark; prints readable lines and returns the peer-shaped result of this
/// backend (the caller prints it as the last line).
pub async fn run(bench: &ChangesBench) -> anyhow::Result<Value> {
    let backend = bench.backend.name();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let vhost = TempVhost::new()?;
    let vhost_url = format!(
        "{}/{}",
        bench.amqp_url.trim_end_matches('/'),
        vhost.name.replace('/', "%2f")
    );
    let amqp = AmqpConfig::from_url(&vhost_url)?.with_connection_name("eventfold-bench-changes");
    let admin = Admin::connect(&vhost_url).await?;
    let changes = Changes::new("orders").register::<Order>();
    let has = |p: &str| bench.phases.iter().any(|x| x == p);
    let n = 2 * (bench.saves / 2);
    let mut results = serde_json::Map::new();
    line(format!(
        "eventfold bench changes: backend {backend}, {n} saves per phase, vhost {}, relay batch/window {}",
        vhost.name, bench.window
    ));

    let mut plain = None;
    let mut floor = None;
    let mut record_only = None;
    for (phase, slot) in [
        ("baseline", &mut plain),
        ("floor", &mut floor),
        ("record_only", &mut record_only),
    ] {
        if !has(phase) {
            continue;
        }
        let (rate, figures, text) = saves_phase(&bench.backend, &run, phase, &changes, n).await?;
        line(text);
        *slot = Some(rate);
        results.insert(phase.into(), figures);
    }

    if has("no_consumer") {
        let scratch = Scratch::open(&bench.backend, &run, "nocons").await?;
        let existed = admin.exchange_exists("orders.events").await?;
        let relay = Running::start(Arc::clone(&scratch.store), &vhost_url, bench.window)?;
        let s = run_saves(
            &*scratch.store,
            &scratch.orders,
            Extra::Change(&changes),
            "nocons",
            n,
        )
        .await?;
        let t_end = Instant::now();
        let drained = wait_position(
            &*scratch.store,
            s.last_record,
            bench.timeout,
            Duration::from_millis(5),
        )
        .await?;
        let metrics = relay.stop().await?;
        let status = Relay::status(&*scratch.store, RELAY).await?;
        let parked = eventfold_relay::parked_messages(&*scratch.store, RELAY).await?;
        let parked_ids: HashSet<u64> = parked.iter().map(|(_, p)| p.notification_id).collect();
        let exists_after = admin.exchange_exists("orders.events").await?;
        scratch.remove().await?;
        let delivered = metrics.confirmed.saturating_sub(metrics.returned);
        let lost = (n as u64).saturating_sub(delivered + parked_ids.len() as u64);
        let rate = n as f64 / s.seconds;
        results.insert(
            "no_consumer".into(),
            json!({
                "saves_per_s": sig4(rate),
                "save_p50_ms": sig4(percentile(&s.latencies, 50.0) * 1e3),
                "save_p99_ms": sig4(percentile(&s.latencies, 99.0) * 1e3),
                "exceptions_raised": 0,
                "exchange_exists_before": existed,
                "exchange_exists_after": exists_after,
                "events_delivered": delivered,
                "events_parked": parked_ids.len(),
                "events_lost": lost,
                "relay_caught_up_after_last_save_s":
                    drained.map(|t| sig4((t - t_end).as_secs_f64())),
                "relay_position": status.position,
                "amqp_connections_opened": metrics.connections_opened,
            }),
        );
        line(format!(
            "[no_consumer] {rate:.0} saves/s p50 {:.3} ms p99 {:.3} ms; exchange before {existed}, after {exists_after}; \
             {delivered} delivered, {} parked, {lost} lost; relay caught up {} after the last save; \
             relay opened {} AMQP connections",
            percentile(&s.latencies, 50.0) * 1e3,
            percentile(&s.latencies, 99.0) * 1e3,
            parked_ids.len(),
            drained.map_or("never (timeout)".to_owned(), |t| format!("{:.1} ms", (t - t_end).as_secs_f64() * 1e3)),
            metrics.connections_opened
        ));
    }

    for (phase, pace) in [
        ("consumer", None),
        ("consumer_paced", Some(bench.paced_saves_per_s)),
    ] {
        if !has(phase) {
            continue;
        }
        let scratch = Scratch::open(&bench.backend, &run, phase).await?;
        let sink = Arc::new(Sink::default());
        let amqp_before = eventfold_amqp::connections_opened();
        let consumers = start_consumers(&amqp, &sink, bench.nameko_queues).await?;
        let consumer_connections = eventfold_amqp::connections_opened() - amqp_before;
        let relay = Running::start(Arc::clone(&scratch.store), &vhost_url, bench.window)?;
        // One warm-up save, not counted, consumed before the clock starts: the relay holds
        // its lock and its publisher is connected (as the peer's consumer is up and its
        // dispatcher connected before the timed saves).
        let warmup = Order::new(WARMUP, "warmup", 0);
        save(
            &*scratch.store,
            &scratch.orders,
            Extra::Change(&changes),
            &warmup,
            true,
        )
        .await?;
        let t_wait = Instant::now();
        while sink.count.load(AtomicOrdering::Relaxed) < 1 {
            if t_wait.elapsed() > bench.timeout {
                bail!("the warm-up event never arrived");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sink.receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        sink.count.store(0, AtomicOrdering::Relaxed);
        let s = run_saves_paced(
            &*scratch.store,
            &scratch.orders,
            Extra::Change(&changes),
            "nk",
            n,
            pace,
        )
        .await?;
        let t_end = Instant::now();
        let deadline = s.started + bench.timeout;
        while (sink.count.load(AtomicOrdering::Relaxed) as usize) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A moment more to catch duplicates in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let metrics = relay.stop().await?;
        let mut dead = 0;
        for c in consumers {
            dead += c.shutdown().await?.dead_lettered;
        }
        let mut receipts =
            std::mem::take(&mut *sink.receipts.lock().unwrap_or_else(|p| p.into_inner()));
        receipts.retain(|r| r.1 != WARMUP);
        scratch.remove().await?;

        let mut first: HashMap<(u8, i64), Instant> = HashMap::new();
        let mut inversions = 0;
        let mut ordered = receipts.clone();
        ordered.sort_by_key(|r| r.2);
        for &(kind, id, at) in &ordered {
            if kind == UPDATED && !first.contains_key(&(CREATED, id)) {
                inversions += 1;
            }
            first.entry((kind, id)).or_insert(at);
        }
        let mut lags: Vec<f64> = s
            .committed
            .iter()
            .filter_map(|(k, c)| {
                first
                    .get(k)
                    .map(|r| r.saturating_duration_since(*c).as_secs_f64())
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        let lost = s
            .committed
            .keys()
            .filter(|k| !first.contains_key(k))
            .count();
        let duplicates = receipts.len() - first.len();
        let last = first.values().max().copied();
        let complete = lost == 0;
        let e2e = last
            .filter(|_| complete)
            .map(|t| n as f64 / (t - s.started).as_secs_f64());
        let rate = n as f64 / s.seconds;
        results.insert(
            phase.into(),
            json!({
                "saves_per_s": sig4(rate),
                "save_p50_ms": sig4(percentile(&s.latencies, 50.0) * 1e3),
                "save_p99_ms": sig4(percentile(&s.latencies, 99.0) * 1e3),
                "events_received": receipts.len(),
                "events_lost": lost,
                "duplicates": duplicates,
                "order_inversions": inversions,
                "dead_lettered": dead,
                "e2e_events_per_s": e2e.map(sig4),
                "lag_after_last_save_s": last.filter(|_| complete).map(|t| sig4(t.saturating_duration_since(t_end).as_secs_f64())),
                "event_lag_p50_ms": sig4(percentile(&lags, 50.0) * 1e3),
                "event_lag_p99_ms": sig4(percentile(&lags, 99.0) * 1e3),
                "event_lag_max_ms": sig4(lags.last().copied().unwrap_or(f64::NAN) * 1e3),
                "amqp_connections_opened": metrics.connections_opened,
                "consumer_amqp_connections": consumer_connections,
                "consumer_queues": if bench.nameko_queues { "nameko per-handler queues" } else { "one queue bound #" },
                "relay_batches": metrics.batches,
                "relay_published": metrics.published,
            }),
        );
        let x = &results[phase];
        line(format!(
            "[{phase:11}] {rate:.0} saves/s p50 {} ms p99 {} ms; received {}/{n} (lost {lost}, dup {duplicates}, \
             updated-before-created {inversions}); e2e {} ev/s; lag p50 {} ms p99 {} ms max {} ms; \
             relay opened {} AMQP connections (its leader lock is on the one it publishes on), {} relay batches",
            x["save_p50_ms"], x["save_p99_ms"], receipts.len(), x["e2e_events_per_s"],
            x["event_lag_p50_ms"], x["event_lag_p99_ms"], x["event_lag_max_ms"],
            metrics.connections_opened, metrics.batches
        ));
    }

    let mut drain = None;
    let mut broker = None;
    let mut confirm_rtt = None;
    if has("backlog") {
        let scratch = Scratch::open(&bench.backend, &run, "backlog").await?;
        let b = bench.backlog;
        let t0 = Instant::now();
        let mut last = 0;
        let mut k = 0;
        while k < b {
            let mut tx = scratch.store.begin().await?;
            for _ in 0..bench.backlog_batch.max(1).min(b - k) {
                let order = Order::new(k as i64 + 1, "backlog", k);
                last = changes.created(&mut tx, &order).await?.unwrap_or(last);
                k += 1;
            }
            tx.commit().await?;
        }
        let t_write = t0.elapsed().as_secs_f64();
        let queue = "bench.drain";
        admin.bound_queue(queue, "orders.events").await?;
        // The message the relay sends for a record, for the broker's own rate.
        let sample = scratch
            .store
            .select_notifications(&NotificationQuery::after(0, 1))
            .await?;
        let message = sample
            .first()
            .and_then(|n| NamekoChanges::new().encode(n))
            .context("no change record to encode")?
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .message;
        let relay = Running::start(Arc::clone(&scratch.store), &vhost_url, bench.window)?;
        let t0 = Instant::now();
        let done = wait_position(
            &*scratch.store,
            last,
            bench.timeout,
            Duration::from_millis(5),
        )
        .await?;
        let metrics = relay.stop().await?;
        let in_queue = admin.count(queue).await?;
        admin.delete_queue(queue).await?;
        scratch.remove().await?;
        let Some(done) = done else {
            bail!("the relay did not drain {b} records in {:?}", bench.timeout);
        };
        let secs = (done - t0).as_secs_f64();
        let rate = b as f64 / secs;
        drain = Some(rate);
        line(format!(
            "[backlog    ] {b} change records written in {t_write:.2} s ({:.0}/s, {} per transaction, relay stopped); \
             relay drained them in {secs:.2} s: {rate:.0} events/s; queue holds {in_queue}; {} batches, {} published",
            b as f64 / t_write, bench.backlog_batch, metrics.batches, metrics.published
        ));
        let r = broker_confirmed_rate(
            &vhost_url,
            &message,
            bench.broker_messages,
            bench.window,
            bench.window,
        )
        .await?;
        broker = Some(r.per_second);
        line(format!(
            "[broker     ] {} persistent messages of {} bytes (the relay's message for a record), window {}, \
             batches of {}, one publisher, no store: {:.0} confirmed/s; drain = {:.3}x of it; \
             one message alone: confirm p50 {:.2} ms p99 {:.2} ms",
            r.confirmed, r.body_bytes, bench.window, bench.window, r.per_second, rate / r.per_second,
            r.confirm_rtt_p50_ms, r.confirm_rtt_p99_ms
        ));
        confirm_rtt = Some((r.confirm_rtt_p50_ms, r.confirm_rtt_p99_ms));
        results.insert(
            "backlog".into(),
            json!({
                "records": b,
                "write_records_per_s": sig4(b as f64 / t_write),
                "drain_events_per_s": sig4(rate),
                "drain_s": sig4(secs),
                "queue_messages": in_queue,
                "relay_batches": metrics.batches,
                "relay_published": metrics.published,
                "amqp_connections_opened": metrics.connections_opened,
                "broker_confirmed_per_s": sig4(r.per_second),
                "broker_confirm_rtt_p50_ms": sig4(r.confirm_rtt_p50_ms),
                "broker_confirm_rtt_p99_ms": sig4(r.confirm_rtt_p99_ms),
                "broker_messages": r.confirmed,
                "message_body_bytes": r.body_bytes,
                "window": bench.window,
            }),
        );
    }
    admin.close().await;
    drop(vhost);

    let mut bare = None;
    if has("bare") {
        let (rate, p50) = bare_commits(&bench.backend, &run, bench.bare_commits).await?;
        bare = Some(rate);
        line(format!(
            "[bare       ] {rate:.0} commits/s p50 {p50:.3} ms ({} single-row INSERT commits, no eventfold)",
            bench.bare_commits
        ));
    }

    let mut out = json!({ "results": results });
    let o = out.as_object_mut().expect("an object");
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| sig4(a / b));
    let with_relay = o["results"]
        .get("consumer")
        .and_then(|c| c["saves_per_s"].as_f64());
    o.insert("plain_saves_per_s".into(), json!(plain.map(sig4)));
    o.insert("saves_vs_plain".into(), json!(ratio(with_relay, plain)));
    o.insert(
        "no_consumer_saves_vs_plain".into(),
        json!(ratio(
            o["results"]
                .get("no_consumer")
                .and_then(|c| c["saves_per_s"].as_f64()),
            plain
        )),
    );
    o.insert("drain_events_per_s".into(), json!(drain.map(sig4)));
    o.insert("broker_confirmed_per_s".into(), json!(broker.map(sig4)));
    o.insert("drain_vs_broker".into(), json!(ratio(drain, broker)));
    o.insert("bare_commits_per_s".into(), json!(bare.map(sig4)));
    o.insert(
        "record_only_saves_per_s".into(),
        json!(record_only.map(sig4)),
    );
    o.insert(
        "record_only_vs_plain".into(),
        json!(ratio(record_only, plain)),
    );
    o.insert("floor_saves_per_s".into(), json!(floor.map(sig4)));
    o.insert("floor_vs_plain".into(), json!(ratio(floor, plain)));
    o.insert(
        "record_only_vs_floor".into(),
        json!(ratio(record_only, floor)),
    );
    o.insert(
        "saves_vs_record_only".into(),
        json!(ratio(with_relay, record_only)),
    );
    o.insert(
        "broker_confirm_rtt_p50_ms".into(),
        json!(confirm_rtt.map(|r| sig4(r.0))),
    );
    o.insert(
        "broker_confirm_rtt_p99_ms".into(),
        json!(confirm_rtt.map(|r| sig4(r.1))),
    );
    o.insert("plain_vs_bare".into(), json!(ratio(plain, bare)));
    o.insert("saves_vs_bare".into(), json!(ratio(with_relay, bare)));
    if let Some(c) = o["results"].get("consumer_paced") {
        line(format!(
            "[goals      ] paced at {} saves/s: lag p50 {} ms p99 {} ms (goal <= 20), lost {}",
            bench.paced_saves_per_s, c["event_lag_p50_ms"], c["event_lag_p99_ms"], c["events_lost"]
        ));
    }
    if let Some(c) = o["results"].get("consumer") {
        line(format!(
            "[goals      ] saves with relay = {}x plain (goal >= 0.8); drain = {}x broker (goal >= 0.8); \
             lag p99 {} ms (goal <= 20; one confirm round trip alone: p99 {} ms); lost {}; \
             relay connections {} (goal 1); saves with relay = {}x record-only (row + record, no relay)",
            o["saves_vs_plain"], o["drain_vs_broker"], c["event_lag_p99_ms"], o["broker_confirm_rtt_p99_ms"], c["events_lost"],
            c["amqp_connections_opened"], o["saves_vs_record_only"]
        ));
    }
    Ok(out)
}
