//! Failover: two consumers on one queue with single active consumer. Killing the active
//! one's connection mid-burst hands the queue to the other, which loses nothing and keeps
//! each instance's order.

use std::sync::Arc;
use std::time::Duration;

use eventfold_amqp::{AmqpConfig, AmqpError};
use eventfold_cqrs::replica::{ReplicaConsumer, ReplicaError};
use eventfold_testkit::Proxy;

use crate::support::*;

const ITEMS: i64 = 800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_mid_burst_with_nothing_lost() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-failover");
    let faults = Arc::default();
    let mut opts = options();
    opts.failover = true;
    let proxy = Proxy::start().await;
    let via_proxy = AmqpConfig::from_url(&vhost.url_via(&proxy.addr)).unwrap();
    let active =
        ReplicaConsumer::start(via_proxy, Arc::clone(&store), models(&faults), opts.clone())
            .await
            .unwrap();
    let standby = start(&vhost, &store, &faults, opts).await;
    let raw = vhost.raw().await;
    assert_eq!(raw.consumers(QUEUE).await, Some(2));

    let messages: Vec<_> = (1..=ITEMS)
        .flat_map(|pk| [save(pk, 0), save(pk, 1)])
        .collect();
    let (before, after) = messages.split_at(messages.len() / 2);
    for chunk in before.chunks(50) {
        publish(&vhost, chunk).await;
    }
    wait_stats(&active, "the active consumer to work", |s| s.acked > 0).await;
    assert_eq!(
        standby.stats().acked,
        0,
        "the standby got messages while the active one ran"
    );
    proxy.sever();
    for chunk in after.chunks(50) {
        publish(&vhost, chunk).await;
    }
    let lost = tokio::time::timeout(Duration::from_secs(30), active.stopped())
        .await
        .unwrap();
    assert!(
        matches!(lost, Some(AmqpError::Unavailable { .. })),
        "{lost:?}"
    );

    let expected = (1..=ITEMS).map(|pk| (pk, format!("item {pk} r1"), 10, 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = rows(&store).await;
        if now.len() == ITEMS as usize && now.iter().all(|r| r.3 == 1) {
            assert!(now.into_iter().eq(expected));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = active.stats();
    let b = standby.shutdown().await.unwrap();
    assert!(b.applied > 0, "{b:?}");
    // Order kept: no first delivery was stale or a duplicate on either side; only what the
    // active one applied without getting to ack it came again.
    assert_eq!(
        (a.stale, a.duplicates, b.stale, b.duplicates),
        (0, 0, 0, 0),
        "{a:?} {b:?}"
    );
    assert_eq!(a.retries + b.retries, 0);
    assert_eq!(raw.settled_count(QUEUE).await, 0);
    let _ = active.shutdown().await;
}

/// Failover mode refuses a queue django-cqrs declared plainly (consuming it would give no
/// failover order); the plain mode uses a failover queue as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_plain_declarations_coexist_safely() {
    let (_db, store) = Db::sqlite().await;
    let faults = Arc::default();
    let vhost = TestVhost::with_prefix("ef-cqrs-declare");
    start(&vhost, &store, &faults, options())
        .await
        .shutdown()
        .await
        .unwrap();
    let mut failover = options();
    failover.failover = true;
    let refused = ReplicaConsumer::start(
        config(&vhost),
        Arc::clone(&store),
        models(&faults),
        failover.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            refused,
            ReplicaError::Amqp(AmqpError::Channel { code: 406, .. })
        ),
        "{refused}"
    );

    let other = TestVhost::with_prefix("ef-cqrs-declare");
    start(&other, &store, &faults, failover)
        .await
        .shutdown()
        .await
        .unwrap();
    let plain = start(&other, &store, &faults, options()).await;
    publish(&other, &[save(1, 0)]).await;
    wait_stats(&plain, "the message", |s| s.applied == 1).await;
    plain.shutdown().await.unwrap();
}
