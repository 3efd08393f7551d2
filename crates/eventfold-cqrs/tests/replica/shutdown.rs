//! Graceful shutdown: the batches in hand are committed and acked, the rest stays in the
//! queue for the next consumer; nothing is lost and nothing is applied twice.

use std::sync::Arc;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acks_what_it_applied_and_leaves_the_rest() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-shutdown");
    let faults = Arc::default();
    start(&vhost, &store, &faults, options())
        .await
        .shutdown()
        .await
        .unwrap();
    const N: u64 = 3000;
    let messages: Vec<_> = (1..=N as i64).map(|pk| save(pk, 0)).collect();
    publish(&vhost, &messages).await;

    let mut opts = options();
    opts.batch_size = 20;
    opts.workers = 2;
    let first = start(&vhost, &store, &faults, opts.clone()).await;
    wait_stats(&first, "a start", |s| s.acked >= 100).await;
    let stopped = first.shutdown().await.unwrap();
    assert!(
        stopped.acked < N,
        "the whole backlog went before the shutdown: {stopped:?}"
    );
    let raw = vhost.raw().await;
    // Everything acked was applied (all creates), everything else is back in the queue.
    assert_eq!(rows(&store).await.len() as u64, stopped.applied);
    assert_eq!(stopped.applied, stopped.acked);
    assert_eq!(u64::from(raw.settled_count(QUEUE).await), N - stopped.acked);

    let second = start(&vhost, &store, &faults, opts).await;
    wait_stats(&second, "the rest", |s| s.acked == N - stopped.acked).await;
    let rest = second.shutdown().await.unwrap();
    assert_eq!(stopped.applied + rest.applied, N);
    assert_eq!(
        (rest.redelivered_skipped, rest.duplicates, rest.stale),
        (0, 0, 0),
        "{rest:?}"
    );
    assert_eq!(rows(&store).await.len() as u64, N);
}
