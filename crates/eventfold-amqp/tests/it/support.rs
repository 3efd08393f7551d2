//! A virtual host per test, and a raw lapin channel to inspect queues.

use std::process::Command;
use std::time::Duration;

use eventfold_amqp::AmqpConfig;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// The broker (without vhost) the tests use.
pub fn base_url() -> String {
    std::env::var("EVENTFOLD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

fn rabbitmqctl_stdin(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rabbitmqctl runs (scripts/services.sh installs and starts RabbitMQ)");
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

/// A fresh virtual host `ef-test-<random>`, with all permissions for guest; deleted on drop
/// (even when the test panics), which also closes its connections and queues.
pub struct TestVhost {
    pub name: String,
}

impl TestVhost {
    pub fn new() -> Self {
        let name = format!(
            "ef-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        // One rabbitmqctl run (each boots an Erlang VM) for the vhost and its permissions.
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

    pub fn url(&self) -> String {
        format!("{}/{}", base_url(), self.name)
    }

    pub fn config(&self) -> AmqpConfig {
        AmqpConfig::from_url(&self.url())
            .unwrap()
            .with_connection_name("eventfold-tests")
    }

    /// A plain lapin channel on this vhost, for setting up and inspecting.
    pub async fn raw(&self) -> Raw {
        let conn = lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        Raw { conn, channel }
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
    conn: lapin::Connection,
    pub channel: lapin::Channel,
}

impl Raw {
    /// Declares a durable queue bound to `exchange` with `routing_key`.
    pub async fn bound_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
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

    /// The consumers of `queue` now, `None` while it does not exist. A passive declare on a
    /// channel of its own (the broker closes the channel of a passive declare that fails).
    pub async fn consumers(&self, queue: &str) -> Option<u32> {
        let channel = self.conn.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "probed".into()).await;
        declared.ok().map(|q| q.consumer_count())
    }

    /// Messages in `queue` now.
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

    /// Takes (and acks) every message in `queue`, in queue order.
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

    /// Ready messages in `queue` once the count is stable (two reads 100 ms apart agree):
    /// the broker enqueues, acks and requeues asynchronously to other connections.
    pub async fn settled_count(&self, queue: &str) -> u32 {
        let mut last = self.count(queue).await;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.count(queue).await;
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Waits until `queue` holds `n` messages (or panics after `timeout`).
    pub async fn wait_count(&self, queue: &str, n: u32, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            let c = self.count(queue).await;
            if c == n {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{queue}: {c} messages, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
