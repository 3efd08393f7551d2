//! The test replica (`item` rows in portable SQL), its fault switch, the databases, and
//! publishing django-cqrs messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, Outcome, PublisherOptions};
use eventfold_core::{async_trait, BoxError, SqlValue, Store, Transaction};
use eventfold_cqrs::replica::{
    Change, ReplicaConsumer, ReplicaModels, ReplicaOptions, ReplicaStats, Typed, TypedReplicaModel,
};
use eventfold_cqrs::wire::{CqrsMessage, SignalType};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use eventfold_sqlite::{SqliteConfig, SqliteStore};
pub use eventfold_testkit::TestVhost;
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub const QUEUE: &str = "replica";
pub const DLQ: &str = "dead_letter_replica";

/// The replica row: `qty` is renamed by serde, `description` is ignored.
#[derive(Debug, Deserialize)]
pub struct Item {
    pub id: i64,
    pub name: String,
    #[serde(rename = "qty")]
    pub quantity: i64,
    pub cqrs_revision: i64,
    pub cqrs_updated: String,
}

/// Makes the hooks of chosen pks fail while the message's `retries` is below a bound.
#[derive(Default)]
pub struct Faults {
    fail_below_retries: Mutex<HashMap<i64, u32>>,
}

impl Faults {
    /// `pk` fails until it is delivered with `retries >= retries` (`u32::MAX`: always).
    pub fn fail(&self, pk: i64, retries: u32) {
        self.fail_below_retries.lock().unwrap().insert(pk, retries);
    }

    fn check(&self, pk: i64, change: &Change<'_>) -> Result<(), BoxError> {
        match self.fail_below_retries.lock().unwrap().get(&pk) {
            Some(bound) if change.retries < *bound => {
                Err(format!("injected failure for item {pk}").into())
            }
            _ => Ok(()),
        }
    }
}

pub struct ItemReplica {
    pub faults: Arc<Faults>,
}

fn pk_of(pk: &Value) -> Result<i64, BoxError> {
    match pk {
        Value::Number(n) => n.as_i64().ok_or_else(|| "pk out of range".into()),
        Value::String(s) => Ok(s.parse()?),
        _ => Err("pk is not a number".into()),
    }
}

#[async_trait]
impl TypedReplicaModel for ItemReplica {
    type Instance = Item;

    fn cqrs_id(&self) -> &str {
        "item"
    }

    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        let rows = tx
            .query(
                "SELECT cqrs_revision FROM items WHERE id = $1",
                &[pk_of(pk)?.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r[0].as_i64()))
    }

    async fn create(
        &self,
        tx: &mut Transaction,
        item: Item,
        change: &Change<'_>,
    ) -> Result<(), BoxError> {
        self.faults.check(item.id, change)?;
        tx.execute(
            "INSERT INTO items (id, name, qty, cqrs_revision, cqrs_updated) VALUES ($1, $2, $3, $4, $5)",
            &[item.id.into(), item.name.into(), item.quantity.into(), item.cqrs_revision.into(), item.cqrs_updated.into()],
        )
        .await?;
        Ok(())
    }

    async fn update(
        &self,
        tx: &mut Transaction,
        item: Item,
        change: &Change<'_>,
    ) -> Result<(), BoxError> {
        self.faults.check(item.id, change)?;
        tx.execute(
            "UPDATE items SET name = $2, qty = $3, cqrs_revision = $4, cqrs_updated = $5 WHERE id = $1",
            &[item.id.into(), item.name.into(), item.quantity.into(), item.cqrs_revision.into(), item.cqrs_updated.into()],
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            "DELETE FROM items WHERE id = $1",
            &[pk_of(change.pk)?.into()],
        )
        .await?;
        Ok(())
    }
}

pub fn models(faults: &Arc<Faults>) -> ReplicaModels {
    ReplicaModels::new().with(Typed(ItemReplica {
        faults: Arc::clone(faults),
    }))
}

/// A replica database: a SQLite file in a temporary directory, or a PostgreSQL schema of
/// its own (dropped at the end).
pub enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(String),
}

fn database_url() -> String {
    std::env::var("EVENTFOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl Db {
    pub async fn sqlite() -> (Db, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("replica.db"))).unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        create_items(&store).await;
        (Db::Sqlite(dir), store)
    }

    pub async fn postgres(tag: &str) -> (Db, Arc<dyn Store>) {
        let schema = format!(
            "eventfold_test_cqrs_{tag}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let db = Db::Postgres(schema.clone());
        let mut config = PostgresConfig::new(database_url());
        config.schema = schema;
        let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&config).await.unwrap());
        create_items(&store).await;
        (db, store)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Db::Postgres(schema) = self else { return };
        let (url, schema) = (database_url(), schema.clone());
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
    }
}

async fn create_items(store: &Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty BIGINT NOT NULL, \
         cqrs_revision BIGINT NOT NULL, cqrs_updated TEXT NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every row: `(id, name, qty, cqrs_revision)`.
pub async fn rows(store: &Arc<dyn Store>) -> Vec<(i64, String, i64, i64)> {
    let mut tx = store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT id, name, qty, cqrs_revision FROM items ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.into_iter()
        .map(|r| {
            let text = |v: &SqlValue| v.as_str().unwrap().to_owned();
            (
                r[0].as_i64().unwrap(),
                text(&r[1]),
                r[2].as_i64().unwrap(),
                r[3].as_i64().unwrap(),
            )
        })
        .collect()
}

/// A django-cqrs message for item `pk` at `revision`, as the master's capture has them.
pub fn item(signal: SignalType, pk: i64, revision: i64) -> CqrsMessage {
    let data: Map<String, Value> = match json!({
        "id": pk,
        "name": format!("item {pk} r{revision}"),
        "qty": revision * 10,
        "description": "ignored by the replica",
        "cqrs_revision": revision,
        "cqrs_updated": "2026-11-23 00:41:49.193683+00:00",
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    CqrsMessage::new(signal, "item", json!(pk), data)
}

pub fn save(pk: i64, revision: i64) -> CqrsMessage {
    item(SignalType::Save, pk, revision)
}

pub fn config(vhost: &TestVhost) -> AmqpConfig {
    AmqpConfig::from_url(&vhost.url()).unwrap()
}

pub fn options() -> ReplicaOptions {
    let mut options = ReplicaOptions::new(QUEUE);
    options.retry_delay = Duration::from_millis(50);
    options
}

/// Publishes django-cqrs messages (routing key `item`) and asserts each was confirmed.
pub async fn publish(vhost: &TestVhost, messages: &[CqrsMessage]) {
    let out: Vec<_> = messages
        .iter()
        .map(|m| m.to_message("cqrs", "item"))
        .collect();
    publish_raw(vhost, &out).await;
}

pub async fn publish_raw(vhost: &TestVhost, messages: &[eventfold_amqp::OutgoingMessage]) {
    let p = ConfirmedPublisher::connect(config(vhost), PublisherOptions::default())
        .await
        .unwrap();
    for outcome in p.publish_all(messages).await {
        assert_eq!(outcome.unwrap(), Outcome::Confirmed);
    }
    p.close().await.unwrap();
}

pub async fn start(
    vhost: &TestVhost,
    store: &Arc<dyn Store>,
    faults: &Arc<Faults>,
    options: ReplicaOptions,
) -> ReplicaConsumer {
    ReplicaConsumer::start(config(vhost), Arc::clone(store), models(faults), options)
        .await
        .unwrap()
}

/// Waits until `done(stats)` (a deadline for hangs, not a speed check).
pub async fn wait_stats(
    consumer: &ReplicaConsumer,
    what: &str,
    done: impl Fn(&ReplicaStats) -> bool,
) -> ReplicaStats {
    let start = Instant::now();
    loop {
        let stats = consumer.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The header `name` of a drained message, as text.
pub fn header(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    match m
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}
