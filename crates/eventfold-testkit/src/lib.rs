//! Test helpers shared by eventfold's suites that run against a real RabbitMQ
//! (127.0.0.1:5672, guest/guest, or `EVENTFOLD_TEST_AMQP_URL`):
//!
//! - [`TestVhost`]: a fresh virtual host per test, made and deleted with `rabbitmqctl`;
//! - [`Raw`]: a plain lapin channel on it, to declare, count, drain and wait for queues;
//! - [`Proxy`]: a TCP proxy to the broker whose connections a test can cut at once, and
//!   that can refuse new ones for a while;
//! - [`message_id`]: the message id of a message taken from a queue;
//! - [`interop_python`]: the Python of the interop tests (nameko, django-cqrs);
//! - [`nameko`]: the real nameko 2.14.1 (a `nameko run` service, scripts) for the
//!   interop tests;
//! - [`django`]: the real django-cqrs 3.1.0 as a peer (a master and a replica project);
//! - [`browser`]: headless Chromium over WebDriver, with screenshots kept as artifacts.
//!
//! Everything here panics on failure: it is for tests only.

pub mod browser;
pub mod django;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub mod nameko;

/// The broker (host and port) the tests use, and that [`Proxy`] forwards to.
pub const HOST: &str = "127.0.0.1:5672";

/// The broker (without vhost) the tests use: `EVENTFOLD_TEST_AMQP_URL`, else guest/guest at
/// [`HOST`].
pub fn base_url() -> String {
    std::env::var("EVENTFOLD_TEST_AMQP_URL")
        .unwrap_or_else(|_| format!("amqp://guest:guest@{HOST}"))
}

/// Runs `rabbitmqctl -q <args>`; its standard output. Panics unless it succeeds.
fn rabbitmqctl_out(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (scripts/services.sh installs and starts RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `rabbitmqctl -q <args>` with `input` on its stdin; panics unless it succeeds.
fn rabbitmqctl_stdin(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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

/// A fresh virtual host `<prefix>-<random>`, with all permissions for guest; deleted on drop
/// (even when the test panics), which also closes its connections and queues.
pub struct TestVhost {
    /// The name of the virtual host.
    pub name: String,
}

impl TestVhost {
    /// Creates the virtual host `<prefix>-<12 random hex digits>` (e.g. `ef-test-…`).
    pub fn with_prefix(prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}",
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

    /// The URL of this vhost on the broker of [`base_url`].
    pub fn url(&self) -> String {
        format!("{}/{}", base_url(), self.name)
    }

    /// The URL of this vhost (as guest/guest) through `host` (the broker or a [`Proxy`]).
    pub fn url_via(&self, host: &str) -> String {
        format!("amqp://guest:guest@{host}/{}", self.name)
    }

    /// Sets the policy `name` on the queues of this vhost whose name matches `pattern` (a
    /// regular expression); `definition` is its JSON, e.g.
    /// `{"max-length": 5, "overflow": "reject-publish"}` (a queue that makes the broker nack
    /// what does not fit). Deleted with the vhost.
    pub fn set_queue_policy(&self, name: &str, pattern: &str, definition: &serde_json::Value) {
        rabbitmqctl_out(&[
            "set_policy",
            "-p",
            &self.name,
            "--apply-to",
            "queues",
            name,
            pattern,
            &definition.to_string(),
        ]);
    }

    /// Removes the policy `name`.
    pub fn clear_policy(&self, name: &str) {
        rabbitmqctl_out(&["clear_policy", "-p", &self.name, name]);
    }

    /// The `connection_name` client property of every connection open on this vhost now
    /// (`rabbitmqctl list_connections`), sorted; `"?"` for a connection without one.
    pub fn connection_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .connections()
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        names.sort();
        names
    }

    /// The `connection_name` of the connection that owns the exclusive queue `queue` now,
    /// `None` when there is no such queue.
    pub fn exclusive_owner(&self, queue: &str) -> Option<String> {
        let out = rabbitmqctl_out(&["list_queues", "-p", &self.name, "name", "owner_pid"]);
        let owner = out.lines().find_map(|l| {
            let (name, pid) = l.split_once('\t')?;
            (name == queue).then(|| pid.trim().to_owned())
        })?;
        let connections = self.connections();
        Some(
            connections
                .into_iter()
                .find(|(pid, _)| *pid == owner)
                .map(|(_, name)| name)
                .unwrap_or_else(|| format!("not a connection: {owner}")),
        )
    }

    /// (pid, connection name) of the connections open on this vhost.
    fn connections(&self) -> Vec<(String, String)> {
        let out = rabbitmqctl_out(&[
            "list_connections",
            "-p",
            &self.name,
            "pid",
            "client_properties",
        ]);
        out.lines()
            .filter_map(|l| {
                let (pid, props) = l.split_once('\t')?;
                if !pid.starts_with('<') {
                    return None; // the header line
                }
                // `{"connection_name","<name>"}` in the printed property list.
                let name = props
                    .split_once("{\"connection_name\",\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map_or("?", |(name, _)| name);
                Some((pid.trim().to_owned(), name.to_owned()))
            })
            .collect()
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

/// A lapin connection and channel on a [`TestVhost`], outside the code under test.
pub struct Raw {
    conn: lapin::Connection,
    /// The channel the helpers use; tests may use it directly.
    pub channel: lapin::Channel,
}

impl Raw {
    /// Declares `exchange` as a durable topic exchange (as nameko does).
    async fn topic_exchange(&self, exchange: &str) {
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
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

    /// Declares a durable queue bound to `exchange` (which must exist) with `routing_key`.
    pub async fn bound_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.bind(queue, exchange, routing_key).await;
    }

    /// Declares the exchange (durable topic, as nameko) and a durable queue bound to it.
    pub async fn topic_bound_queue(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.topic_exchange(exchange).await;
        self.bound_queue(queue, exchange, routing_key).await;
    }

    /// Tries to declare the exclusive queue `queue` on this connection, as a relay takes
    /// its lock: `true` if this connection holds it now, `false` if another one does.
    pub async fn try_exclusive(&self, queue: &str) -> bool {
        let channel = self.conn.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "declared".into()).await;
        declared.is_ok()
    }

    /// Closes the connection (an exclusive queue it holds is deleted).
    pub async fn close(self) {
        let _ = self.conn.close(200, "test done".into()).await;
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

    /// Waits until `queue` exists and has a consumer, calling `alive` between polls (it
    /// panics, with the process's output, when the process meant to consume has exited);
    /// panics after 30 s.
    pub async fn wait_consumer(&self, queue: &str, mut alive: impl FnMut()) {
        let start = Instant::now();
        loop {
            alive();
            if self.consumers(queue).await.unwrap_or(0) > 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nothing consumes {queue} after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// Takes (and acks) every message in `queue`, in queue order: (message id, body).
    pub async fn drain_bodies(&self, queue: &str) -> Vec<(String, Vec<u8>)> {
        self.drain(queue)
            .await
            .into_iter()
            .map(|m| (message_id(&m), m.delivery.data))
            .collect()
    }

    /// Ready messages in `queue` once the count is stable (two reads 100 ms apart agree):
    /// the broker enqueues, acks and requeues asynchronously to other connections.
    pub async fn settled_count(&self, queue: &str) -> u32 {
        self.settled_count_every(queue, Duration::from_millis(100))
            .await
    }

    /// Messages in `queue` once two reads `interval` apart agree.
    pub async fn settled_count_every(&self, queue: &str, interval: Duration) -> u32 {
        let mut last = self.count(queue).await;
        loop {
            tokio::time::sleep(interval).await;
            let now = self.count(queue).await;
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Waits until `queue` holds `n` messages (or panics after `timeout`).
    pub async fn wait_count(&self, queue: &str, n: u32, timeout: Duration) {
        let start = Instant::now();
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

    /// Waits until `queue` holds at least `n` messages, then until the count is stable (two
    /// reads 300 ms apart agree); that count. Panics after `timeout` below `n`.
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

/// The Python of the interop tests, with nameko 2.14.1 and django-cqrs 3.1.0:
/// `EVENTFOLD_INTEROP_PYTHON`, else the workspace's `target/interop-venv/bin/python` (both
/// made by `scripts/interop-venv.sh`, which `scripts/test.sh` runs). Without either it
/// panics: the interop tests fail, they do not skip.
pub fn interop_python() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir.parent().and_then(Path::parent).unwrap();
    let venv = workspace.join("target/interop-venv/bin/python");
    let from_env = std::env::var_os("EVENTFOLD_INTEROP_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(p) = from_env.as_ref().filter(|p| p.exists()) {
        return p.clone();
    }
    assert!(
        venv.exists(),
        "no interop Python: EVENTFOLD_INTEROP_PYTHON is {from_env:?} and {} does not \
         exist; run scripts/interop-venv.sh (scripts/test.sh does)",
        venv.display()
    );
    venv
}

/// The message id of `m`, empty when it has none.
pub fn message_id(m: &lapin::message::BasicGetMessage) -> String {
    m.delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// A TCP proxy to the broker ([`HOST`]) whose connections can be cut at once.
pub struct Proxy {
    /// The address (`127.0.0.1:<port>`) to connect to instead of the broker.
    pub addr: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refusing: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free local port and forwards every connection to the broker.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = conns.clone();
        let refusing: Arc<AtomicBool> = Arc::default();
        let refuse = refusing.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if refuse.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
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
            refusing,
            accept,
        }
    }

    /// While `true`, new connections are closed as soon as they are accepted, as a broker
    /// that is down would (the ones already open are not touched: see [`Proxy::sever`]).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
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
