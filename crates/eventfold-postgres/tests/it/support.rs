//! Test helpers: every test works in its own schema, dropped by a guard even on failure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventfold_core::{
    BoxError, Notification, Projection, Recording, StoredEvent, Timestamp, Transaction,
};
use eventfold_postgres::{PostgresConfig, PostgresStore, PostgresTransactionExt};
use sqlx::{Connection, PgConnection};

/// `EVENTFOLD_TEST_DATABASE_URL`, or the local server.
pub fn database_url() -> String {
    std::env::var("EVENTFOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema name no other test uses: `eventfold_test_<tag>_<unix seconds, hex>_<random>`.
pub fn unique_schema(tag: &str) -> String {
    format!(
        "eventfold_test_{tag}_{:x}_{}",
        unix_seconds(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Drops test schemas more than an hour old: left behind by a test process that was
/// killed before its guards ran. Runs once per test process.
async fn sweep_stale_schemas() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let Ok(mut conn) = PgConnection::connect(&database_url()).await else {
                return;
            };
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'eventfold\\_test\\_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            let now = unix_seconds();
            for name in names {
                let mut parts = name.rsplitn(3, '_');
                let (Some(_random), Some(secs)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(secs) = u64::from_str_radix(secs, 16) else {
                    continue;
                };
                if now.saturating_sub(secs) > 3600 {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            }
        })
        .await;
}

pub fn config(schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.to_owned();
    config
}

/// Drops its schema (and everything in it) when dropped, also when the test panics.
#[derive(Debug)]
pub struct SchemaGuard {
    pub schema: String,
}

impl SchemaGuard {
    pub fn new(schema: &str) -> Self {
        SchemaGuard {
            schema: schema.to_owned(),
        }
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = database_url();
        let schema = self.schema.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::raw_sql(&format!(
                    "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                ))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(outcome, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {outcome:?}", self.schema);
        }
    }
}

/// A fresh store in its own schema, and the guard that drops the schema.
pub async fn fresh(tag: &str) -> (PostgresStore, SchemaGuard) {
    sweep_stale_schemas().await;
    let schema = unique_schema(tag);
    let guard = SchemaGuard::new(&schema);
    let store = PostgresStore::connect(&config(&schema))
        .await
        .expect("connect to the test database");
    (store, guard)
}

/// A test event: topic `Test.<name>`, state `<stream>@<version>`.
pub fn event(stream_id: &str, version: u64, name: &str) -> StoredEvent {
    StoredEvent::new(
        stream_id,
        version,
        format!("Test.{name}"),
        Timestamp::now(),
        format!("{stream_id}@{version}").into_bytes(),
    )
}

pub fn events_only(events: Vec<StoredEvent>) -> Recording {
    events.into_iter().fold(Recording::new(), Recording::event)
}

/// A [`PostgresStore`] that drops its schema when its last clone is dropped: what the
/// conformance suite gets from `make_store`.
pub type GuardedStore = eventfold_conformance::Guarded<PostgresStore, SchemaGuard>;

/// A fresh [`GuardedStore`].
pub async fn guarded(tag: &str) -> GuardedStore {
    let (store, guard) = fresh(tag).await;
    eventfold_conformance::Guarded::new(store, guard)
}

/// Copies every notification into a table, in the follower's transaction, and remembers
/// the ids it processed (including any it would process twice).
pub struct CopyProjection {
    pub table: String,
    pub processed: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl Projection for CopyProjection {
    fn name(&self) -> &str {
        "copy"
    }

    async fn process(
        &mut self,
        tx: &mut Transaction,
        notification: &Notification,
    ) -> Result<(), BoxError> {
        sqlx::query(&format!(
            "INSERT INTO {} (id, stream_id, version) VALUES ($1, $2, $3)",
            self.table
        ))
        .bind(notification.id as i64)
        .bind(&notification.event.stream_id)
        .bind(notification.event.version as i64)
        .execute(tx.postgres()?)
        .await?;
        self.processed.lock().unwrap().push(notification.id);
        Ok(())
    }
}

pub async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Records one event per recording on `stream`, for each of `versions`; the ids, in order.
pub async fn record_one_by_one(
    store: &PostgresStore,
    stream: &str,
    versions: impl IntoIterator<Item = u64>,
    topic: &str,
) -> Vec<u64> {
    use eventfold_core::EventWriter;
    let mut ids = Vec::new();
    for version in versions {
        ids.extend(
            store
                .record(&events_only(vec![event(stream, version, topic)]))
                .await
                .unwrap(),
        );
    }
    ids
}

/// The ids the log shows now, from the start (at most 100).
pub async fn visible_ids(store: &PostgresStore) -> Vec<u64> {
    use eventfold_core::{NotificationQuery, NotificationReader};
    store
        .select_notifications(&NotificationQuery::after(0, 100))
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect()
}

/// A TCP proxy in front of the test server whose connections can be frozen: bytes stop
/// flowing both ways while both sockets stay open, as in a network partition. Connections
/// made after a freeze flow normally.
pub struct FreezingProxy {
    /// The URL of the test database, through the proxy.
    pub url: String,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    pub async fn start() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let direct = database_url();
        let options: sqlx::postgres::PgConnectOptions = direct.parse().unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let through = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        assert!(
            direct.contains(&upstream),
            "the test database URL must name its host and port: {direct}"
        );
        let url = direct.replacen(&upstream, &through, 1);
        let accepted = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let (counter, frozen) = (accepted.clone(), frozen_below.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let (frozen, upstream) = (frozen.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, id, frozen.clone()),
                        pump(server_read, client_write, id, frozen),
                    );
                });
            }
        });
        FreezingProxy {
            url,
            accepted,
            frozen_below,
            accepting,
        }
    }

    /// Two stores on `schema` whose connections go through the proxy: one with a
    /// safeguard on (`set(config, on)`), one with it off (`set(config, ZERO)`), to show
    /// what the safeguard changes.
    pub async fn stores_with_and_without(
        &self,
        schema: &str,
        set: fn(&mut PostgresConfig, Duration),
        on: Duration,
    ) -> (PostgresStore, PostgresStore) {
        let connect = |duration: Duration| {
            let mut config = config(schema);
            config.url = self.url.clone();
            config.connect_timeout = Duration::from_secs(2);
            set(&mut config, duration);
            async move { PostgresStore::connect(&config).await.unwrap() }
        };
        (connect(on).await, connect(Duration::ZERO).await)
    }

    /// Freezes every connection made so far.
    pub fn freeze_existing(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < frozen_below.load(std::sync::atomic::Ordering::SeqCst) {
            // Swallow this and everything after, keeping both sockets open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
