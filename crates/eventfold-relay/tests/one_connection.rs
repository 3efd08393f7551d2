//! A relay that runs without outage opens one AMQP connection, as eventfold-amqp's
//! process-wide counter sees it. A test binary of its own: no other test opens connections
//! in this process.

#[allow(unused_imports)]
#[path = "it/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use eventfold_core::{InMemoryStore, Store};

use support::*;

const Q: &str = "evt-orders-order__created--tests.on_created";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_is_one_connection_for_its_lock_and_its_publishes() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await; // eventfold-testkit's own lapin connection: not counted
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let before = eventfold_amqp::connections_opened();
    let ids = save_orders(&*store, 1..301).await;
    let running = Running::start(relay(store.clone(), &vhost.url(), "one").build());
    wait_position(
        &*store,
        "one",
        *ids.last().unwrap(),
        Duration::from_secs(15),
    )
    .await;
    let more = save_orders(&*store, 301..311).await;
    wait_position(
        &*store,
        "one",
        *more.last().unwrap(),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        raw.wait_at_least(Q, 310, Duration::from_secs(15)).await,
        310
    );
    let metrics = running.relay.metrics();
    running.stop().await;
    assert_eq!(metrics.connections_opened, 1, "{metrics:?}");
    assert_eq!(eventfold_amqp::connections_opened() - before, 1);
}
