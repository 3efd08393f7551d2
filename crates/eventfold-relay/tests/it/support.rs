//! A virtual host per test, a raw lapin channel to inspect queues and a TCP proxy that can
//! be severed (from eventfold-testkit); here, change records to relay, and a relay running
//! in a task.

#![allow(dead_code)]

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_changes::{Changes, Model};
use eventfold_core::Store;
use eventfold_relay::{NamekoChanges, Relay, RelayBuilder, RelayStatus, Route};
use serde::Serialize;
use tokio::task::JoinHandle;

pub use eventfold_testkit::{message_id, Proxy, HOST};

/// A fresh virtual host `ef-relay-test-<random>` ([`eventfold_testkit::TestVhost`]),
/// deleted on drop.
pub struct TestVhost(eventfold_testkit::TestVhost);

impl TestVhost {
    pub fn new() -> Self {
        TestVhost(eventfold_testkit::TestVhost::with_prefix("ef-relay-test"))
    }

    pub fn config(&self) -> eventfold_amqp::AmqpConfig {
        eventfold_amqp::AmqpConfig::from_url(&self.url()).unwrap()
    }
}

impl Deref for TestVhost {
    type Target = eventfold_testkit::TestVhost;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[derive(Serialize)]
pub struct Order {
    pub id: i64,
    pub customer: String,
    pub qty: i32,
    pub amount: String,
}

impl Model for Order {
    const NAME: &'static str = "order";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

pub fn changes() -> Changes {
    Changes::new("orders").register::<Order>()
}

/// Saves orders `ids` (one transaction each, as an application would); returns their
/// notification ids.
pub async fn save_orders(store: &dyn Store, ids: std::ops::Range<i64>) -> Vec<u64> {
    let changes = changes();
    let mut out = Vec::new();
    for id in ids {
        let order = Order {
            id,
            customer: format!("c\u{e9}-{id}"),
            qty: (id % 7) as i32,
            amount: format!("{id}.50"),
        };
        let mut tx = store.begin().await.unwrap();
        out.push(changes.created(&mut tx, &order).await.unwrap().unwrap());
        tx.commit().await.unwrap();
    }
    out
}

pub fn relay(store: Arc<dyn Store>, url: &str, name: &str) -> RelayBuilder {
    relay_with(store, url, name, NamekoChanges::new())
}

/// A relay with one route, polling every 50 ms, a standby trying every 200 ms.
pub fn relay_with(store: Arc<dyn Store>, url: &str, name: &str, route: impl Route) -> RelayBuilder {
    Relay::builder(store, url, name)
        .unwrap()
        .route(route)
        .poll_interval(Duration::from_millis(50))
        .lock_retry(Duration::from_millis(200))
}

/// The relay's lock queue.
pub fn lock_queue(name: &str) -> String {
    format!("eventfold.relay.lock.{name}")
}

/// The names of the connections the relay `name` has open on `vhost` now.
pub fn relay_connections(vhost: &TestVhost, name: &str) -> Vec<String> {
    let prefix = format!("eventfold-relay-{name}/");
    vhost
        .connection_names()
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
        .collect()
}

/// Waits until `done` holds (checked every 20 ms), or panics after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `relay`'s recorded status satisfies `done`; that status.
pub async fn wait_status(
    store: &dyn Store,
    relay: &str,
    timeout: Duration,
    mut done: impl FnMut(&RelayStatus) -> bool,
) -> RelayStatus {
    let start = Instant::now();
    loop {
        let status = Relay::status(store, relay).await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "{relay}: status never came: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relay running in a task, stopped gracefully by `stop`, or killed by `abort`.
pub struct Running {
    pub relay: Arc<Relay>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), eventfold_relay::RelayError>>,
}

impl Running {
    pub fn start(relay: Relay) -> Self {
        let relay = Arc::new(relay);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let r = relay.clone();
        let task = tokio::spawn(async move {
            r.run(async {
                let _ = stopped.await;
            })
            .await
        });
        Running {
            relay,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the relay stops")
            .unwrap()
            .unwrap();
    }

    pub async fn wait_leader(&self, timeout: Duration) {
        let start = Instant::now();
        while !self.relay.metrics().leader {
            assert!(start.elapsed() < timeout, "not leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn wait_position(store: &dyn Store, name: &str, position: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let p = store.tracking_position(name).await.unwrap().unwrap_or(0);
        if p >= position {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{name} at {p}, expected {position}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
