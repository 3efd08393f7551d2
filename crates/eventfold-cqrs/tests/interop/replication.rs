//! Replication between eventfold and the real django-cqrs 3.1.0, both ways, each side
//! the real thing: eventfold's `Master` (saves in the caller's SQLite transactions) and
//! `Relay` feed a `manage.py cqrs_consume` replica; a django-cqrs master (`manage.py`
//! saves, deletes and `cqrs_sync`) feeds eventfold's `ReplicaConsumer`; and django-cqrs's
//! `cqrs_dead_letters` dumps, purges and retries what that consumer dead-lettered.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_amqp::AmqpConfig;
use eventfold_core::{async_trait, BoxError, SqlValue, Store, Transaction};
use eventfold_cqrs::master::{datetime_param, Master, ModelOptions, Save, SyncTarget};
use eventfold_cqrs::replica::{
    Change, ReplicaConsumer, ReplicaModels, ReplicaOptions, ReplicaStats, Typed, TypedReplicaModel,
};
use eventfold_cqrs::wire::{dead_letter_queue, CqrsMessage, SignalType, DEFAULT_EXCHANGE};
use eventfold_relay::Relay;
use eventfold_sqlite::{SqliteConfig, SqliteStore};
use eventfold_testkit::TestVhost;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::django::{wait_for, DjangoProject, Side, CQRS_ID, QUEUE};
use crate::django_interop::{publish_confirmed, vhost};
use crate::items::{rows, Item};

/// The columns of `master_item` / `replica_item` in both Django projects.
const COLUMNS: &str = "id INTEGER PRIMARY KEY, cqrs_revision INTEGER NOT NULL, \
     cqrs_updated TEXT NOT NULL, name TEXT NOT NULL, qty INTEGER NOT NULL, price TEXT NOT NULL, \
     description TEXT NOT NULL, created TEXT NOT NULL";

/// An eventfold SQLite file store holding an empty `table` of [`COLUMNS`].
async fn store_with_table(path: &Path, table: &str) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&SqliteConfig::new(path)).unwrap());
    let mut tx = store.begin().await.unwrap();
    tx.execute(&format!("CREATE TABLE {table} ({COLUMNS})"), &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store
}

/// Now, to the microsecond (what Python and both databases keep).
fn now_micros() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

/// The row's values in column order, the datetimes as eventfold's master binds them.
fn item_values(backend: &str, item: &Item) -> Vec<SqlValue> {
    vec![
        item.id.into(),
        item.revision.into(),
        datetime_param(backend, &item.updated),
        item.name.as_str().into(),
        item.qty.into(),
        item.price.as_str().into(),
        item.description.as_str().into(),
        datetime_param(backend, &item.created),
    ]
}

/// The caller's own SQL on the master's table.
async fn insert(tx: &mut Transaction, item: &Item) {
    tx.execute(
        "INSERT INTO master_item (id, cqrs_revision, cqrs_updated, name, qty, price, \
         description, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &item_values(tx.backend(), item),
    )
    .await
    .unwrap();
}

async fn update(tx: &mut Transaction, item: &Item) {
    let changed = tx
        .execute(
            "UPDATE master_item SET cqrs_revision = $2, cqrs_updated = $3, name = $4, qty = $5, \
             price = $6, description = $7, created = $8 WHERE id = $1",
            &item_values(tx.backend(), item),
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_master_and_relay_feed_a_django_replica_that_starts_late() {
    let vhost = vhost();
    let raw = vhost.raw().await;
    let dir = tempfile::tempdir().unwrap();
    let master_db = dir.path().join("master.db");
    let store = store_with_table(&master_db, "master_item").await;
    let master = Master::new()
        .meta_function(|ctx| json!({"origin": "eventfold", "signal": ctx.signal_type.as_str()}))
        .register_with(
            ModelOptions::<Item>::new()
                .table("master_item")
                .tracked_fields(["qty"]),
        );

    // Everything is written before the replica has ever run: its queue does not exist.
    const N: i64 = 12;
    let names = ["caf\u{e9}/cr\u{e8}me \u{2615} \u{1F980}", "\"quoted\"\n\\"];
    let mut items: Vec<Item> = (1..=N)
        .map(|id| {
            Item::new(
                id,
                names.get(id as usize - 1).unwrap_or(&"plain"),
                now_micros(),
            )
        })
        .collect();
    let mut messages = 0;
    for item in &mut items {
        let mut tx = store.begin().await.unwrap();
        master.created(&mut tx, item).await.unwrap();
        insert(&mut tx, item).await;
        tx.commit().await.unwrap();
        messages += 1;
    }
    // Updates, two items per transaction.
    for pair in items.chunks_mut(2) {
        let mut tx = store.begin().await.unwrap();
        for item in pair {
            let before = item.clone();
            item.qty *= 10;
            item.price = format!("1{}.50", item.id);
            master
                .save(&mut tx, Save::update(item).previous(&before))
                .await
                .unwrap();
            update(&mut tx, item).await;
            messages += 1;
        }
        tx.commit().await.unwrap();
    }
    let mut deleted = HashSet::new();
    for item in items.iter_mut().filter(|i| i.id % 4 == 0) {
        let mut tx = store.begin().await.unwrap();
        master.deleted(&mut tx, item).await.unwrap();
        tx.execute("DELETE FROM master_item WHERE id = $1", &[item.id.into()])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        deleted.insert(item.id);
        messages += 1;
    }
    // A second update of some, and syncs: to this replica's queue, and to every replica.
    for item in items
        .iter_mut()
        .filter(|i| i.id % 3 == 1 && !deleted.contains(&i.id))
    {
        let before = item.clone();
        item.name = format!("{} (renamed)", item.name);
        let mut tx = store.begin().await.unwrap();
        master
            .save(&mut tx, Save::update(item).previous(&before))
            .await
            .unwrap();
        update(&mut tx, item).await;
        tx.commit().await.unwrap();
        messages += 1;
    }
    let mut tx = store.begin().await.unwrap();
    master
        .sync(&mut tx, &items[2], SyncTarget::queue(QUEUE))
        .await
        .unwrap();
    master
        .sync(&mut tx, &items[5], SyncTarget::All)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    messages += 2;
    // Last: once the replica (one worker, in queue order) has this row, it has handled
    // everything before it.
    let mut sentinel = Item::new(100, "sentinel", now_micros());
    let mut tx = store.begin().await.unwrap();
    master.created(&mut tx, &mut sentinel).await.unwrap();
    insert(&mut tx, &sentinel).await;
    tx.commit().await.unwrap();
    messages += 1;

    // The relay declares the replica's queue (django-cqrs's topology) before publishing.
    let relay = Arc::new(
        Relay::builder(store.clone(), &vhost.url(), "interop-master")
            .unwrap()
            .route(master.route().replica_queue(QUEUE, [CQRS_ID]))
            .poll_interval(Duration::from_millis(50))
            .build(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let running = {
        let relay = relay.clone();
        tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let start = std::time::Instant::now();
    while raw.consumers(QUEUE).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no queue {QUEUE}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    raw.wait_at_least(QUEUE, messages, Duration::from_secs(20))
        .await;
    assert_eq!(raw.count(QUEUE).await, messages, "each message once");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the relay stops")
        .unwrap()
        .unwrap();

    let replica = DjangoProject::migrated(Side::Replica, &vhost).await;
    let mut consumer = replica.spawn(&["cqrs_consume", "--workers", "1"]);
    let replica_db = replica.database();
    let replicated = wait_for(
        "the sentinel row",
        Duration::from_secs(30),
        || {
            let rows = rows(&replica_db, "replica_item");
            rows.contains_key(&sentinel.id).then_some(rows)
        },
        || {
            format!(
                "{:?}\n{}",
                rows(&replica_db, "replica_item"),
                consumer.output()
            )
        },
    )
    .await;
    consumer.assert_running();
    let log = consumer.output();
    drop(consumer);

    // Every row of the master, at its revision, and nothing else.
    let expected: BTreeMap<_, _> = items
        .iter()
        .filter(|i| !deleted.contains(&i.id))
        .chain([&sentinel])
        .map(|i| (i.id, i.replica_row()))
        .collect();
    assert_eq!(replicated, expected, "{log}");
    assert_eq!(rows(&master_db, "master_item"), expected);
    assert_eq!(expected[&1].revision, 2);
    assert_eq!(expected[&2].revision, 1);
    // Revisions came one by one, in order: no "Wrong CQRS sync order", duplicate or
    // "Lost or filtered out" from django-cqrs.
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!log.contains("Lost or filtered"), "{log}");
    assert_eq!(raw.settled_count(QUEUE).await, 0);
    assert_eq!(raw.settled_count(&dead_letter_queue(QUEUE)).await, 0);
}

/// `instance_data` of an item, as eventfold's replica reads it.
#[derive(Debug, Deserialize)]
struct ItemData {
    id: i64,
    cqrs_revision: i64,
    cqrs_updated: String,
    name: String,
    qty: i64,
    /// A DecimalField: django-cqrs sends it as the caller set it (a string) until the row
    /// is read back from the database (an update of a fetched row, a `cqrs_sync`): then
    /// as a JSON number (ujson writes a `Decimal` as a float).
    price: Value,
    description: String,
    created: String,
}

/// eventfold's replica of `item`: rows of `replica_item` through the replica store's
/// transactions. Hooks for the pks in `failing` fail.
#[derive(Clone, Default)]
struct ItemReplica {
    failing: Arc<Mutex<HashSet<i64>>>,
}

fn pk_of(pk: &Value) -> Result<i64, BoxError> {
    pk.as_i64()
        .ok_or_else(|| format!("pk {pk} is not an integer").into())
}

impl ItemReplica {
    fn check(&self, id: i64) -> Result<(), BoxError> {
        if self.failing.lock().unwrap().contains(&id) {
            return Err(format!("item {id}: the replica's database is away").into());
        }
        Ok(())
    }

    async fn write(&self, tx: &mut Transaction, sql: &str, item: ItemData) -> Result<(), BoxError> {
        self.check(item.id)?;
        tx.execute(
            sql,
            &[
                item.id.into(),
                item.cqrs_revision.into(),
                item.cqrs_updated.into(),
                item.name.into(),
                item.qty.into(),
                match item.price {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
                .into(),
                item.description.into(),
                item.created.into(),
            ],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl TypedReplicaModel for ItemReplica {
    type Instance = ItemData;

    fn cqrs_id(&self) -> &str {
        CQRS_ID
    }

    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        let rows = tx
            .query(
                "SELECT cqrs_revision FROM replica_item WHERE id = $1",
                &[pk_of(pk)?.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r[0].as_i64()))
    }

    async fn create(
        &self,
        tx: &mut Transaction,
        item: ItemData,
        _: &Change<'_>,
    ) -> Result<(), BoxError> {
        let sql = "INSERT INTO replica_item (id, cqrs_revision, cqrs_updated, name, qty, price, \
                   description, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        self.write(tx, sql, item).await
    }

    async fn update(
        &self,
        tx: &mut Transaction,
        item: ItemData,
        _: &Change<'_>,
    ) -> Result<(), BoxError> {
        let sql = "UPDATE replica_item SET cqrs_revision = $2, cqrs_updated = $3, name = $4, \
                   qty = $5, price = $6, description = $7, created = $8 WHERE id = $1";
        self.write(tx, sql, item).await
    }

    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            "DELETE FROM replica_item WHERE id = $1",
            &[pk_of(change.pk)?.into()],
        )
        .await?;
        Ok(())
    }
}

async fn start_replica(
    vhost: &TestVhost,
    store: &Arc<dyn Store>,
    model: &ItemReplica,
    options: ReplicaOptions,
) -> ReplicaConsumer {
    let config = AmqpConfig::from_url(&vhost.url())
        .unwrap()
        .with_connection_name("eventfold-cqrs-tests");
    ReplicaConsumer::start(
        config,
        store.clone(),
        ReplicaModels::new().with(Typed(model.clone())),
        options,
    )
    .await
    .unwrap()
}

async fn wait_stats(
    consumer: &ReplicaConsumer,
    what: &str,
    done: impl Fn(&ReplicaStats) -> bool,
) -> ReplicaStats {
    wait_for(
        what,
        Duration::from_secs(60),
        || Some(consumer.stats()).filter(&done),
        || format!("{:?}", consumer.stats()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_django_master_feeds_our_replica_consumer() {
    let vhost = vhost();
    let dir = tempfile::tempdir().unwrap();
    let replica_db = dir.path().join("replica.db");
    let store = store_with_table(&replica_db, "replica_item").await;
    // Started first: it declares the queue django-cqrs's master needs (it publishes
    // without confirms, so a message with no queue is lost).
    let consumer = start_replica(
        &vhost,
        &store,
        &ItemReplica::default(),
        ReplicaOptions::new(QUEUE),
    )
    .await;
    let master = DjangoProject::migrated(Side::Master, &vhost).await;

    const N: usize = 20;
    let creates: Vec<Value> = (1..=N)
        .map(|i| {
            json!({"create": {"name": format!("item {i} \u{e9}/\u{1F980}"), "qty": i,
                              "price": format!("{i}.25"), "description": "from django"}})
        })
        .collect();
    let pks = master.interop_writes(Value::Array(creates)).await;
    assert_eq!(pks.len(), N);
    // Two rounds of updates over every item (so one item's messages are interleaved with
    // the others', over four workers), then deletes.
    let mut changes = Vec::new();
    for round in 1..=2 {
        for (i, pk) in pks.iter().enumerate() {
            changes.push(json!({"update": pk, "set": {"qty": 100 * round + i as i64}}));
        }
    }
    let deleted: Vec<i64> = pks.iter().copied().filter(|pk| pk % 4 == 0).collect();
    changes.extend(deleted.iter().map(|pk| json!({"delete": pk})));
    master.interop_writes(Value::Array(changes)).await;
    // cqrs_sync of every remaining row to every replica, then of three to this one.
    let all = json!({"id__in": pks}).to_string();
    let out = master
        .manage(&["cqrs_sync", "--cqrs-id", CQRS_ID, "--filter", &all])
        .await;
    let remaining = N - deleted.len();
    assert!(
        out.contains(&format!("{remaining} instance(s) synced")),
        "{out}"
    );
    let some = json!({"id__in": &pks[..3]}).to_string();
    master
        .manage(&[
            "cqrs_sync",
            "--cqrs-id",
            CQRS_ID,
            "--filter",
            &some,
            "--queue",
            QUEUE,
        ])
        .await;

    let total = (N + 2 * N + deleted.len() + remaining + 3) as u64;
    wait_stats(&consumer, "every message handled", |s| s.acked >= total).await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.acked, total, "{stats:?}");
    assert_eq!(
        (stats.created, stats.updated, stats.deleted),
        (
            N as u64,
            (2 * N + remaining + 3) as u64,
            deleted.len() as u64
        ),
        "{stats:?}"
    );
    assert_eq!(
        (
            stats.stale,
            stats.duplicates,
            stats.lost_gaps,
            stats.retries,
            stats.dead_letters
        ),
        (0, 0, 0, 0, 0),
        "{stats:?}"
    );

    // The same rows as the django-cqrs master's table, at the same revisions.
    let replicated = rows(&replica_db, "replica_item");
    let on_master = rows(&master.database(), "master_item");
    assert_eq!(replicated.len(), remaining);
    assert_eq!(replicated, on_master);
    assert!(replicated.values().all(|r| r.revision == 2));
}

/// What eventfold's replica dead-letters at once: an expired SAVE, a body that is not JSON,
/// an unknown `cqrs_id`, instance data that does not fit the model.
fn undeliverable() -> Vec<Vec<u8>> {
    let mut expired = Item::new(1, "expired", now_micros()).message(SignalType::Save);
    expired.expires = Some(now_micros() - chrono::Duration::minutes(5));
    let mut unknown = Item::new(2, "an order", now_micros()).message(SignalType::Save);
    unknown.cqrs_id = "order".into();
    let mut unfit = Item::new(3, "unfit", now_micros()).message(SignalType::Save);
    unfit.instance_data.insert("qty".into(), json!("many"));
    vec![
        expired.to_body(),
        b"{\"signal_type\": \"SAVE\", oops".to_vec(),
        unknown.to_body(),
        unfit.to_body(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_dead_letters_dump_and_purge_what_our_replica_dead_lettered() {
    let vhost = vhost();
    let raw = vhost.raw().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(&dir.path().join("replica.db"), "replica_item").await;
    let consumer = start_replica(
        &vhost,
        &store,
        &ItemReplica::default(),
        ReplicaOptions::new(QUEUE),
    )
    .await;
    let bodies = undeliverable();
    let messages: Vec<_> = bodies
        .iter()
        .map(|b| eventfold_amqp::OutgoingMessage::new(DEFAULT_EXCHANGE, CQRS_ID, b.clone()))
        .collect();
    publish_confirmed(&vhost, &messages).await;
    wait_stats(&consumer, "four dead letters", |s| s.dead_letters == 4).await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(
        (stats.expired, stats.malformed, stats.applied),
        (1, 3, 0),
        "{stats:?}"
    );
    let dead = dead_letter_queue(QUEUE);
    assert_eq!(raw.settled_count(&dead).await, 4);

    let replica = DjangoProject::migrated(Side::Replica, &vhost).await;
    let out = replica.manage(&["cqrs_dead_letters", "dump"]).await;
    // Each body as it came (workers may have dead-lettered them in any order).
    let mut dumped: Vec<&str> = out.lines().collect();
    dumped.sort();
    let mut want: Vec<String> = bodies
        .iter()
        .map(|b| String::from_utf8(b.clone()).unwrap())
        .collect();
    want.sort();
    assert_eq!(dumped, want);
    // A dump leaves them where they are.
    assert_eq!(raw.settled_count(&dead).await, 4);

    let out = replica.manage(&["cqrs_dead_letters", "purge"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["Total dead letters: 4", "Purged"]
    );
    assert_eq!(raw.settled_count(&dead).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_dead_letters_retry_gives_our_replica_its_exhausted_messages_again() {
    let vhost = vhost();
    let raw = vhost.raw().await;
    let dir = tempfile::tempdir().unwrap();
    let replica_db = dir.path().join("replica.db");
    let store = store_with_table(&replica_db, "replica_item").await;
    let model = ItemReplica::default();
    model.failing.lock().unwrap().extend([1, 2]);
    let mut options = ReplicaOptions::new(QUEUE);
    options.max_retries = 1;
    options.retry_delay = Duration::from_millis(100);
    let consumer = start_replica(&vhost, &store, &model, options).await;
    let items: Vec<Item> = (1..=3)
        .map(|id| Item::new(id, "retried", now_micros()))
        .collect();
    let messages: Vec<_> = items
        .iter()
        .map(|i| {
            i.message(SignalType::Save)
                .to_message(DEFAULT_EXCHANGE, CQRS_ID)
        })
        .collect();
    publish_confirmed(&vhost, &messages).await;
    // 1 and 2 fail, are retried once, then dead-lettered; 3 is applied.
    let stats = wait_stats(&consumer, "two exhausted", |s| {
        s.exhausted == 2 && s.dead_letters == 2 && s.applied == 1
    })
    .await;
    assert_eq!(stats.retries, 2, "{stats:?}");
    consumer.shutdown().await.unwrap();
    let dead = dead_letter_queue(QUEUE);
    assert_eq!(raw.settled_count(&dead).await, 2);
    assert_eq!(
        rows(&replica_db, "replica_item").keys().collect::<Vec<_>>(),
        [&3]
    );

    // django-cqrs's retry re-publishes them to this replica's queue with retries 0.
    let replica = DjangoProject::migrated(Side::Replica, &vhost).await;
    let out = replica.manage(&["cqrs_dead_letters", "retry"]).await;
    assert!(out.starts_with("Total dead letters: 2\n"), "{out}");
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let m = CqrsMessage::from_body(line.as_bytes()).unwrap();
        assert_eq!(m.retries, 0, "{line}");
    }
    assert_eq!(raw.settled_count(&dead).await, 0);

    // The database is back: the replica applies them.
    model.failing.lock().unwrap().clear();
    let consumer = start_replica(&vhost, &store, &model, ReplicaOptions::new(QUEUE)).await;
    wait_stats(&consumer, "both applied", |s| s.applied == 2).await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!((stats.retries, stats.dead_letters), (0, 0), "{stats:?}");
    let expected: BTreeMap<_, _> = items.iter().map(|i| (i.id, i.replica_row())).collect();
    assert_eq!(rows(&replica_db, "replica_item"), expected);
}
