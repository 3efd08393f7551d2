//! Per-instance order over four workers: create then update of each item at once,
//! interleaved (django-cqrs's `-w 2 --interleave` reorders them), and a backlog applied
//! in batches.

use std::sync::Arc;

use eventfold_core::Store;

use crate::support::*;

const ITEMS: i64 = 600;

async fn interleaved_burst(store: Arc<dyn Store>) {
    let vhost = TestVhost::with_prefix("ef-cqrs-burst");
    let faults = Arc::default();
    let mut opts = options();
    opts.workers = 4;
    let consumer = start(&vhost, &store, &faults, opts).await;
    // Published while the consumer runs, in small confirmed batches as a master's relay
    // would: create i, update i, create i+1, update i+1...
    let messages: Vec<_> = (1..=ITEMS)
        .flat_map(|pk| [save(pk, 0), save(pk, 1)])
        .collect();
    for chunk in messages.chunks(50) {
        publish(&vhost, chunk).await;
    }
    let total = 2 * ITEMS as u64;
    wait_stats(&consumer, "the burst", |s| s.acked == total).await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(
        (stats.created, stats.updated, stats.applied),
        (ITEMS as u64, ITEMS as u64, total),
        "{stats:?}"
    );
    // Ordering errors (stale), duplicates, gaps and retries: none.
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
    let rows = rows(&store).await;
    assert_eq!(rows.len(), ITEMS as usize);
    for (pk, (id, name, qty, revision)) in (1..=ITEMS).zip(rows) {
        assert_eq!(
            (id, name, qty, revision),
            (pk, format!("item {pk} r1"), 10, 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_burst_four_workers_sqlite() {
    let (_db, store) = Db::sqlite().await;
    interleaved_burst(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_burst_four_workers_postgres() {
    let (_db, store) = Db::postgres("burst").await;
    interleaved_burst(store).await;
}

/// A backlog already in the queue is applied in batches: fewer commits than messages,
/// every message applied once, in order per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_applied_in_batches() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-backlog");
    let faults = Arc::default();
    // Declare the topology, then stop, so the backlog waits in the queue.
    start(&vhost, &store, &faults, options())
        .await
        .shutdown()
        .await
        .unwrap();
    let messages: Vec<_> = (1..=ITEMS)
        .flat_map(|pk| [save(pk, 0), save(pk, 1), save(pk, 2)])
        .collect();
    publish(&vhost, &messages).await;
    let total = messages.len() as u64;
    let mut opts = options();
    opts.batch_size = 100;
    let consumer = start(&vhost, &store, &faults, opts).await;
    wait_stats(&consumer, "the backlog", |s| s.acked == total).await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.applied, total, "{stats:?}");
    assert_eq!((stats.stale, stats.duplicates, stats.retries), (0, 0, 0));
    assert!(
        stats.commits < total / 5,
        "{} commits for {total} messages: not batched",
        stats.commits
    );
    let rows = rows(&store).await;
    assert_eq!(rows.len(), ITEMS as usize);
    assert!(rows.iter().all(|r| r.3 == 2));
    assert_eq!(vhost.raw().await.count(QUEUE).await, 0);
}
