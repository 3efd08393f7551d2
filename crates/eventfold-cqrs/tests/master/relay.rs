//! The relay route against a real RabbitMQ (a vhost per test): a cold start loses nothing,
//! and without declared queues the relay holds until a replica binds.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_core::Store;
use eventfold_cqrs::master::{CqrsRecord, Master, ModelOptions, SyncTarget};
use eventfold_relay::Relay;
use eventfold_sqlite::{SqliteConfig, SqliteStore};
use eventfold_testkit::TestVhost;
use tokio::task::JoinHandle;

use crate::support::{body, log, sample, Clock, Item, Table};

struct Running {
    relay: Arc<Relay>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Result<(), eventfold_relay::RelayError>>,
}

impl Running {
    fn start(relay: Relay) -> Self {
        let relay = Arc::new(relay);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let r = relay.clone();
        let task = tokio::spawn(async move {
            r.run(async {
                let _ = stopped.await;
            })
            .await
        });
        Running { relay, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the relay stops")
            .unwrap()
            .unwrap();
    }
}

/// An SQLite file store (the relay reads it from other connections) with the item table.
async fn file_store(dir: &tempfile::TempDir) -> (Arc<dyn Store>, Table) {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&SqliteConfig::new(dir.path().join("master.db"))).unwrap());
    let table = Table::sqlite();
    let mut tx = store.begin().await.unwrap();
    table.create(&mut tx).await;
    tx.commit().await.unwrap();
    (store, table)
}

/// 50 messages: 20 items created, 20 updated, 5 deleted, 5 synced to the replica's queue.
async fn fifty_saves(store: &dyn Store, table: &Table, master: &Master) {
    for id in 1..=20 {
        let mut item = sample();
        item.id = id;
        let mut tx = store.begin().await.unwrap();
        master.created(&mut tx, &mut item).await.unwrap();
        table.insert(&mut tx, &item).await;
        tx.commit().await.unwrap();
        item.qty = id * 10;
        let mut tx = store.begin().await.unwrap();
        master.updated(&mut tx, &mut item).await.unwrap();
        table.update(&mut tx, &item).await;
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        if id % 4 == 0 {
            master.deleted(&mut tx, &mut item).await.unwrap();
            table.delete(&mut tx, id).await;
        } else if id % 4 == 1 {
            master
                .sync(&mut tx, &item, SyncTarget::queue("replica"))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `cqrs` exchange's bindings as `rabbitmqctl list_bindings` prints them, sorted.
fn cqrs_bindings(vhost: &str) -> Vec<String> {
    let out = rabbitmqctl(&[
        "list_bindings",
        "-p",
        vhost,
        "--no-table-headers",
        "source_name",
        "source_kind",
        "destination_name",
        "destination_kind",
        "routing_key",
        "arguments",
    ]);
    let mut lines: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("cqrs\t"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_cold_start_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, table) = file_store(&dir).await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = clock
        .master()
        .register_with(ModelOptions::<Item>::new().table(&table.name));
    // Everything is written before any broker object exists.
    fifty_saves(&*store, &table, &master).await;
    let recorded = log(&*store).await;
    assert_eq!(recorded.len(), 50);

    let vhost = TestVhost::with_prefix("ef-cqrs-test");
    let relay = Relay::builder(store.clone(), &vhost.url(), "cqrs-master")
        .unwrap()
        .route(master.route().replica_queue("replica", ["item"]))
        .batch_size(16)
        .poll_interval(Duration::from_millis(50))
        .lock_retry(Duration::from_millis(200))
        .build();
    let running = Running::start(relay);
    let raw = vhost.raw().await;
    let start = Instant::now();
    while raw.consumers("replica").await.is_none() || raw.count("replica").await < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not all 50 arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(raw.settled_count("replica").await, 50);
    assert_eq!(raw.count("dead_letter_replica").await, 0);
    let metrics = running.relay.metrics();
    running.stop().await;
    assert_eq!((metrics.returned, metrics.parked), (0, 0));

    let delivered = raw.drain("replica").await;
    assert_eq!(delivered.len(), 50);
    for (n, m) in recorded.iter().zip(&delivered) {
        let record = CqrsRecord::of(n).unwrap();
        assert_eq!(m.delivery.exchange.as_str(), "cqrs");
        assert_eq!(m.delivery.routing_key.as_str(), record.routing_key);
        assert_eq!(String::from_utf8(m.delivery.data.clone()).unwrap(), body(n));
        let p = &m.delivery.properties;
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert!(p.headers().as_ref().is_none_or(|h| h.inner().is_empty()));
    }
    let syncs = delivered
        .iter()
        .filter(|m| m.delivery.routing_key.as_str() == "cqrs.replica.item")
        .count();
    assert_eq!(syncs, 5);

    // django-cqrs's own topology, as captured (tests/fixtures/django_cqrs_topology.txt).
    let fixture = include_str!("../fixtures/django_cqrs_topology.txt");
    let mut expected: Vec<String> = fixture
        .lines()
        .filter(|l| l.starts_with("cqrs\texchange"))
        .map(str::to_owned)
        .collect();
    expected.sort();
    assert_eq!(cqrs_bindings(&vhost.name), expected);
    let queues = rabbitmqctl(&[
        "list_queues",
        "-p",
        &vhost.name,
        "--no-table-headers",
        "name",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
    ]);
    let mut queues: Vec<&str> = queues
        .lines()
        .filter(|l| !l.starts_with("eventfold.relay.lock"))
        .collect();
    queues.sort_unstable();
    assert_eq!(
        queues,
        [
            "dead_letter_replica\ttrue\tfalse\tfalse\t[]",
            "replica\ttrue\tfalse\tfalse\t[]"
        ]
    );
}

#[tokio::test]
async fn without_declared_queues_the_relay_holds_until_a_replica_binds() {
    let dir = tempfile::tempdir().unwrap();
    let (store, table) = file_store(&dir).await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = clock
        .master()
        .register_with(ModelOptions::<Item>::new().table(&table.name));
    let mut item = sample();
    for _ in 0..3 {
        let mut tx = store.begin().await.unwrap();
        if item.cqrs_revision < 0 {
            master.created(&mut tx, &mut item).await.unwrap();
            table.insert(&mut tx, &item).await;
        } else {
            master.updated(&mut tx, &mut item).await.unwrap();
            table.update(&mut tx, &item).await;
        }
        tx.commit().await.unwrap();
    }

    let vhost = TestVhost::with_prefix("ef-cqrs-test");
    let relay = Relay::builder(store.clone(), &vhost.url(), "cqrs-master")
        .unwrap()
        .route(master.route())
        .poll_interval(Duration::from_millis(50))
        .lock_retry(Duration::from_millis(200))
        .build();
    let running = Running::start(relay);
    let start = Instant::now();
    while running.relay.current_error().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = running.relay.current_error().unwrap();
    assert!(held.contains("unroutable"), "{held}");
    let status = Relay::status(&*store, "cqrs-master").await.unwrap();
    assert_eq!(status.position, 0, "held at the first message");
    assert_eq!(status.parked, 0);
    assert!(status.last_error.is_some());

    // A replica binds its queue (as django-cqrs's consumer does): everything arrives.
    let raw = vhost.raw().await;
    raw.bound_queue("replica", "cqrs", "item").await;
    raw.wait_count("replica", 3, Duration::from_secs(20)).await;
    running.stop().await;
    let revisions: Vec<Option<i64>> = raw
        .drain("replica")
        .await
        .iter()
        .map(|m| {
            eventfold_cqrs::wire::CqrsMessage::from_body(&m.delivery.data)
                .unwrap()
                .revision()
        })
        .collect();
    assert_eq!(revisions, [Some(0), Some(1), Some(2)]);
}
