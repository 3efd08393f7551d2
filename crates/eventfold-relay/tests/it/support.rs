//! A virtual host per test, a raw lapin channel to inspect queues, a TCP proxy that can
//! be severed, change records to relay, and a relay running in a task.

#![allow(dead_code)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_changes::{Changes, Model};
use eventfold_core::Store;
use eventfold_relay::{NamekoChanges, Relay, RelayBuilder};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const HOST: &str = "127.0.0.1:5672";

fn rabbitmqctl_stdin(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rabbitmqctl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh virtual host, deleted on drop.
pub struct TestVhost {
    pub name: String,
}

impl TestVhost {
    pub fn new() -> Self {
        let name = format!(
            "ef-relay-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let definitions = serde_json::json!({
            "vhosts": [{ "name": name }],
            "permissions": [{
                "user": "guest", "vhost": name,
                "configure": ".*", "write": ".*", "read": ".*",
            }],
        });
        rabbitmqctl_stdin(&["import_definitions"], &definitions.to_string());
        TestVhost { name }
    }

    /// The URL of this vhost through `host` (the broker or a proxy).
    pub fn url_via(&self, host: &str) -> String {
        format!("amqp://guest:guest@{host}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_via(HOST)
    }

    pub fn config(&self) -> eventfold_amqp::AmqpConfig {
        eventfold_amqp::AmqpConfig::from_url(&self.url()).unwrap()
    }

    pub async fn raw(&self) -> Raw {
        let conn = lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        Raw {
            _conn: conn,
            channel,
        }
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

pub struct Raw {
    _conn: lapin::Connection,
    pub channel: lapin::Channel,
}

impl Raw {
    /// Declares the exchange (durable topic, as nameko) and a durable queue bound to it.
    pub async fn bound_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    pub async fn count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push(m);
        }
        out
    }

    /// Waits until `queue` holds at least `n` messages, then until the count is stable.
    pub async fn wait_at_least(&self, queue: &str, n: u32, timeout: Duration) -> u32 {
        let start = Instant::now();
        loop {
            let c = self.count(queue).await;
            if c >= n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let again = self.count(queue).await;
                if again == c {
                    return c;
                }
                continue;
            }
            assert!(
                start.elapsed() < timeout,
                "{queue}: {c} messages, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn message_id(m: &lapin::message::BasicGetMessage) -> String {
    m.delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// A TCP proxy to the broker whose connections can be cut at once.
pub struct Proxy {
    pub addr: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(HOST).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                list.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every connection through the proxy (new ones still work).
    pub fn sever(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
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
    Relay::builder(store, url, name)
        .unwrap()
        .route(NamekoChanges::new())
        .poll_interval(Duration::from_millis(50))
        .lock_retry(Duration::from_millis(200))
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
