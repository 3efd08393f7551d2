//! Batch writes: the consumer hands a plain table the batch's net writes at once
//! (multi-row statements); the outcome is the one a message per batch gives, and a
//! batch whose write fails falls back to one message per transaction.

use std::sync::Arc;
use std::time::Duration;

use eventfold_amqp::HEADER_ERROR;
use eventfold_core::Store;
use eventfold_cqrs::replica::{ReplicaConsumer, ReplicaModels, ReplicaOptions, ReplicaStats};
use eventfold_cqrs::table::{Role, Table, TableReplica, TableSpec};
use eventfold_cqrs::wire::{CqrsMessage, SignalType};
use serde_json::{json, Value};

use crate::support::*;

/// The plain-table replica of the test's `items` table.
async fn table_models(db: &Db, store: &Arc<dyn Store>) -> ReplicaModels {
    let spec = match db {
        Db::Postgres(schema) => TableSpec::new("items").in_schema(schema.clone()),
        Db::Sqlite(_) => TableSpec::new("items"),
    };
    let mut tx = store.begin().await.unwrap();
    let table = Table::open(&mut tx, "item", &spec, Role::Replica)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    ReplicaModels::new().with(TableReplica::new(table))
}

async fn consume(
    vhost: &TestVhost,
    store: &Arc<dyn Store>,
    models: &ReplicaModels,
    options: &ReplicaOptions,
    messages: &[CqrsMessage],
    settled: impl Fn(&ReplicaStats) -> bool,
) -> ReplicaStats {
    publish(vhost, messages).await;
    let consumer = ReplicaConsumer::start(
        config(vhost),
        Arc::clone(store),
        models.clone(),
        options.clone(),
    )
    .await
    .unwrap();
    wait_stats(&consumer, "the batch", settled).await;
    consumer.shutdown().await.unwrap()
}

/// Rows and figures after the seed and the batch, consumed `batch_size` at a time.
async fn run(
    db: Db,
    store: Arc<dyn Store>,
    batch_size: usize,
) -> (ReplicaStats, Vec<(i64, String, i64, i64)>) {
    use SignalType::{Delete, Sync};
    let vhost = TestVhost::with_prefix("ef-cqrs-batch");
    let models = table_models(&db, &store).await;
    let mut opts = options();
    opts.workers = 1;
    opts.batch_size = batch_size;
    // The whole batch arrives before the worker starts on it.
    opts.linger = Duration::from_millis(300);
    ReplicaConsumer::start(
        config(&vhost),
        Arc::clone(&store),
        models.clone(),
        opts.clone(),
    )
    .await
    .unwrap()
    .shutdown()
    .await
    .unwrap();
    let seed = [save(1, 2), save(2, 5), save(3, 1)];
    consume(&vhost, &store, &models, &opts, &seed, |s| s.acked == 3).await;
    let batch = [
        save(1, 3),
        save(1, 4),
        save(1, 4),
        save(2, 4),
        save(2, 5),
        item(Sync, 2, 1),
        item(Delete, 3, 1),
        save(3, 0),
        save(10, 0),
        save(10, 1),
        save(10, 3),
        save(11, 0),
        item(Delete, 11, 0),
        item(Delete, 12, 0),
    ];
    let n = batch.len() as u64;
    let stats = consume(&vhost, &store, &models, &opts, &batch, |s| s.acked == n).await;
    let rows = rows(&store).await;
    drop(db);
    (stats, rows)
}

async fn batch_equals_message_by_message(backend: &str) {
    let open = || async {
        match backend {
            "sqlite" => Db::sqlite().await,
            _ => Db::postgres("batch").await,
        }
    };
    let (db, store) = open().await;
    let (batched, batched_rows) = run(db, store, 500).await;
    let (db, store) = open().await;
    let (single, single_rows) = run(db, store, 1).await;
    let figures = |s: &ReplicaStats| {
        (
            (s.applied, s.created, s.updated, s.deleted),
            (s.stale, s.duplicates, s.redelivered_skipped),
            (s.lost_gaps, s.sync_downgrades),
            (s.retries, s.dead_letters, s.batch_fallbacks),
        )
    };
    assert_eq!(
        figures(&batched),
        figures(&single),
        "{batched:?}\n{single:?}"
    );
    assert_eq!(
        figures(&batched),
        ((11, 3, 5, 3), (1, 2, 0), (1, 1), (0, 0, 0)),
        "{batched:?}"
    );
    assert_eq!(batched_rows, single_rows);
    assert_eq!(
        batched_rows.iter().map(|r| (r.0, r.3)).collect::<Vec<_>>(),
        [(1, 4), (2, 1), (3, 0), (10, 3)]
    );
    assert_eq!(batched_rows[0].1, "item 1 r4");
    // One transaction per message against a handful for the batches.
    assert_eq!(single.commits, 14);
    assert!(batched.commits < 14, "{batched:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_equals_message_by_message_sqlite() {
    batch_equals_message_by_message("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_equals_message_by_message_postgres() {
    batch_equals_message_by_message("postgres").await;
}

async fn failing_batch_write_falls_back(db: Db, store: Arc<dyn Store>) {
    let vhost = TestVhost::with_prefix("ef-cqrs-batchfail");
    let models = table_models(&db, &store).await;
    let mut opts = options();
    opts.workers = 1;
    opts.linger = Duration::from_millis(300);
    opts.max_retries = 0;
    ReplicaConsumer::start(
        config(&vhost),
        Arc::clone(&store),
        models.clone(),
        opts.clone(),
    )
    .await
    .unwrap()
    .shutdown()
    .await
    .unwrap();
    let mut messages: Vec<CqrsMessage> = (1..=5).map(|pk| save(pk, 0)).collect();
    // 3 does not fit the table (rejected: dead-lettered at once); the database refuses 4
    // (NOT NULL: a failure, dead-lettered as its retries are used up).
    messages[2]
        .instance_data
        .insert("qty".into(), json!([1, 2]));
    messages[3].instance_data.insert("name".into(), Value::Null);
    let stats = consume(&vhost, &store, &models, &opts, &messages, |s| {
        s.acked + s.dead_letters == 5
    })
    .await;
    assert_eq!(
        (
            stats.applied,
            stats.malformed,
            stats.exhausted,
            stats.dead_letters
        ),
        (3, 1, 1, 2),
        "{stats:?}"
    );
    assert_eq!((stats.batch_fallbacks, stats.retries), (1, 0), "{stats:?}");
    let ids: Vec<i64> = rows(&store).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, [1, 2, 5]);
    let dead = vhost.raw().await.drain(DLQ).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let body = CqrsMessage::from_body(&m.delivery.data).unwrap();
            (body.pk_text(), header(m, HEADER_ERROR).unwrap_or_default())
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "3");
    assert!(
        reasons[0].1.contains("is not a single value"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "4");
    assert!(
        reasons[1].1.starts_with("failed after 0 retries"),
        "{reasons:?}"
    );
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_batch_write_falls_back_sqlite() {
    let (db, store) = Db::sqlite().await;
    failing_batch_write_falls_back(db, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_batch_write_falls_back_postgres() {
    let (db, store) = Db::postgres("batchfail").await;
    failing_batch_write_falls_back(db, store).await;
}
