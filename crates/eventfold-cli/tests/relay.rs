//! `eventfold relay` run as a process against a real broker: status, kill -9 mid-burst,
//! SIGTERM, and a password that never shows. Each test has its own virtual host and its
//! own SQLite file.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold::sqlite::{SqliteConfig, SqliteStore};
use eventfold::{NotificationReader, Store, TrackingReader};
use eventfold_changes::{Changes, Model};
use eventfold_testkit::{Raw, TestVhost, HOST};
use serde::Serialize;

const Q: &str = "evt-orders-order__created--tests.on_created";
const T: Duration = Duration::from_secs(60);

// ---- a virtual host per test (eventfold-testkit) ----

/// A fresh virtual host `ef-cli-relay-test-<random>`, deleted on drop.
fn test_vhost() -> TestVhost {
    TestVhost::with_prefix("ef-cli-relay-test")
}

/// How long the count of a queue must stay the same to count as settled.
const SETTLE: Duration = Duration::from_millis(500);

// ---- change records in a SQLite file ----

#[derive(Serialize)]
struct Order {
    id: i64,
    customer: String,
    qty: i32,
}

impl Model for Order {
    const NAME: &'static str = "order";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: SqliteStore,
}

impl Db {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite3");
        let store = SqliteStore::open(&SqliteConfig::new(&path)).unwrap();
        Db {
            _dir: dir,
            path,
            store,
        }
    }

    /// Records `n` order creations, `per_tx` per transaction; their notification ids and
    /// bodies, in log order.
    async fn orders(&self, n: i64, per_tx: i64) -> Vec<(u64, Vec<u8>)> {
        let changes = Changes::new("orders").register::<Order>();
        let mut ids = Vec::new();
        let mut id = 0;
        while id < n {
            let mut tx = self.store.begin().await.unwrap();
            for _ in 0..per_tx.min(n - id) {
                id += 1;
                let order = Order {
                    id,
                    customer: format!("c\u{e9}-{id}"),
                    qty: (id % 7) as i32,
                };
                ids.push(changes.created(&mut tx, &order).await.unwrap().unwrap());
            }
            tx.commit().await.unwrap();
        }
        let bodies: HashMap<u64, Vec<u8>> = self
            .store
            .select_notifications(&eventfold::NotificationQuery::after(0, 100_000))
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.id, n.event.state))
            .collect();
        ids.into_iter()
            .map(|id| (id, bodies[&id].clone()))
            .collect()
    }

    async fn position(&self, relay: &str) -> u64 {
        self.store
            .tracking_position(relay)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    async fn wait_position(&self, relay: &str, position: u64) {
        let start = Instant::now();
        loop {
            let p = self.position(relay).await;
            if p >= position {
                return;
            }
            assert!(start.elapsed() < T, "{relay} at {p}, expected {position}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---- the binary ----

fn eventfold(db: &Path, args: &[&str]) -> Output {
    command(db).args(args).output().expect("eventfold runs")
}

fn command(db: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventfold"));
    c.env_remove("EVENTFOLD_STORE")
        .env_remove("EVENTFOLD_AMQP_URL")
        .env_remove("EVENTFOLD_CIPHER_KEY")
        .env("EVENTFOLD_SQLITE_PATH", db);
    c
}

fn text(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `eventfold relay` running as a child process, its output collected by threads.
struct RelayProcess {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl RelayProcess {
    fn start(db: &Path, url: &str, name: &str) -> Self {
        Self::start_with(db, url, name, &[])
    }

    fn start_with(db: &Path, url: &str, name: &str, extra: &[&str]) -> Self {
        let mut child = command(db)
            .args([
                "relay",
                "--amqp-url",
                url,
                "--name",
                name,
                "--batch-size",
                "100",
                "--window",
                "100",
            ])
            .args(extra)
            .env("EVENTFOLD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("eventfold relay starts");
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines: Arc<Mutex<Vec<String>>> = Arc::default();
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        RelayProcess {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    async fn wait_stdout(&self, needle: &str) {
        let start = Instant::now();
        while !self
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(start.elapsed() < T, "no {needle:?} line: {}", self.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit status (within `timeout`).
    async fn terminate(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads reach the end of the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return (status, self.output());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("no exit {timeout:?} after SIGTERM: {}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_count(raw: &Raw, n: u32) -> u32 {
    let start = Instant::now();
    loop {
        let c = raw.count(Q).await;
        if c >= n {
            return c;
        }
        assert!(start.elapsed() < T, "{c} messages, expected {n}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn notification_of(message_id: &str, relay: &str) -> u64 {
    message_id
        .strip_prefix(&format!("{relay}:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("message id {message_id:?}"))
}

fn status_json(db: &Path, relay: &str) -> serde_json::Value {
    let out = text(&eventfold(
        db,
        &["relay", "status", "--name", relay, "--json"],
    ));
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

// ---- the tests ----

#[test]
fn relay_commands_have_help() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.sqlite3");
    for args in [
        vec!["relay", "--help"],
        vec!["relay", "status", "--help"],
        vec!["relay", "parked", "--help"],
        vec!["relay", "republish", "--help"],
    ] {
        let out = text(&eventfold(&db, &args));
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[test]
fn status_of_a_missing_sqlite_file_is_an_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.sqlite3");
    for what in ["status", "parked"] {
        let out = eventfold(&db, &["relay", what]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no SQLite database at"), "{err}");
        assert!(!db.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_is_standby_and_takes_over_when_the_leader_dies() {
    let vhost = test_vhost();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let db = Db::new();
    let records = db.orders(20, 10).await;
    let leader = RelayProcess::start(&db.path, &vhost.url(), "r");
    leader.wait_stdout("leader").await;
    db.wait_position("r", records.last().unwrap().0).await;
    let standby = RelayProcess::start(&db.path, &vhost.url(), "r");
    standby.wait_stdout("standby").await;
    leader.kill();
    standby.wait_stdout("leader").await;
    let more = db.orders(10, 10).await;
    db.wait_position("r", more.last().unwrap().0).await;
    let (status, output) = standby.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {output}");
    assert_eq!(raw.settled_count_every(Q, SETTLE).await, 30, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_fresh_store_shows_position_0_and_the_lag() {
    let db = Db::new();
    let records = db.orders(7, 7).await;
    let head = records.last().unwrap().0;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let out = text(&eventfold(&db.path, &["relay", "status"]));
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} line: {out}"))
            .to_owned()
    };
    assert!(line("relay:").ends_with(" relay"), "{out}");
    assert!(line("position:").ends_with(" 0"), "{out}");
    assert!(line("head:").ends_with(&format!(" {head}")), "{out}");
    assert!(line("lag:").contains(&format!("{head} records")), "{out}");
    assert!(line("lag seconds:").len() > "lag seconds:".len(), "{out}");
    assert!(line("parked:").ends_with(" 0"), "{out}");
    assert!(line("last error:").ends_with(" none"), "{out}");

    let json = status_json(&db.path, "relay");
    assert_eq!(json["relay"], "relay");
    assert_eq!(json["position"], 0);
    assert_eq!(json["head"], head);
    assert_eq!(json["lag_records"], head);
    assert!(json["lag_seconds"].as_f64().unwrap() > 0.0, "{json}");
    assert_eq!(json["parked"], 0);
    assert!(json["last_error"].is_null(), "{json}");

    let parked = eventfold(&db.path, &["relay", "parked"]);
    assert!(text(&parked).is_empty());
    assert!(String::from_utf8_lossy(&parked.stderr).contains("0 parked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_nothing_and_duplicates_keep_their_ids() {
    const N: i64 = 3000;
    let vhost = test_vhost();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let db = Db::new();
    let records = db.orders(N, 50).await;
    let head = records.last().unwrap().0;

    let first = RelayProcess::start(&db.path, &vhost.url(), "r");
    first.wait_stdout("leader").await;
    let before_kill = wait_count(&raw, 300).await;
    first.kill();
    let position_at_kill = db.position("r").await;
    assert!(
        (before_kill as i64) < N,
        "the relay published all {N} before the kill; nothing was cut"
    );
    let arrived_before_restart = raw.settled_count_every(Q, SETTLE).await;
    assert!(
        arrived_before_restart < N as u32,
        "{arrived_before_restart}"
    );

    let second = RelayProcess::start(&db.path, &vhost.url(), "r");
    db.wait_position("r", head).await;
    let total = raw.settled_count_every(Q, SETTLE).await;
    let (status, output) = second.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {output}");

    let got = raw.drain_bodies(Q).await;
    assert_eq!(got.len(), total as usize);
    let bodies: BTreeMap<u64, &Vec<u8>> = records.iter().map(|(id, b)| (*id, b)).collect();
    let mut first_copies: Vec<u64> = Vec::new();
    let mut seen: HashMap<u64, &Vec<u8>> = HashMap::new();
    let mut duplicates = 0;
    for (message_id, body) in &got {
        let id = notification_of(message_id, "r");
        assert_eq!(
            bodies.get(&id),
            Some(&body),
            "{message_id}: the record's body"
        );
        match seen.get(&id) {
            Some(earlier) => {
                duplicates += 1;
                assert_eq!(
                    *earlier, body,
                    "{message_id}: a duplicate is the same message"
                );
            }
            None => {
                seen.insert(id, body);
                first_copies.push(id);
            }
        }
    }
    let expected: Vec<u64> = records.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        first_copies, expected,
        "every record once, first copies in log order"
    );
    let json = status_json(&db.path, "r");
    assert_eq!(json["position"], json["head"], "{json}");
    assert_eq!(json["lag_records"], 0, "{json}");
    eprintln!(
        "kill -9 after {before_kill} messages seen ({arrived_before_restart} arrived, \
         position {position_at_kill} of {head}); {} messages in all, {duplicates} duplicates",
        got.len()
    );
    assert_eq!(got.len(), N as usize + duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_records_its_position_and_exits_0() {
    const N: i64 = 3000;
    let vhost = test_vhost();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let db = Db::new();
    let records = db.orders(N, 50).await;
    let head = records.last().unwrap().0;

    let first = RelayProcess::start(&db.path, &vhost.url(), "r");
    first.wait_stdout("leader").await;
    wait_count(&raw, 200).await;
    let started = Instant::now();
    let (status, output) = first.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {output}");
    assert!(started.elapsed() < Duration::from_secs(5), "{output}");
    assert!(output.contains("SIGTERM"), "{output}");
    assert!(output.contains("stopped at position"), "{output}");

    let position = db.position("r").await;
    raw.settled_count_every(Q, SETTLE).await;
    let published: Vec<u64> = raw
        .drain_bodies(Q)
        .await
        .iter()
        .map(|(m, _)| notification_of(m, "r"))
        .collect();
    assert!(!published.is_empty());
    // Everything it published (and so got confirmed) is behind its position.
    assert_eq!(published.iter().max(), Some(&position), "{output}");
    let expected: Vec<u64> = records.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        published,
        expected[..published.len()],
        "log order, no duplicate"
    );

    // A restart publishes only what comes after the position: no duplicate.
    let second = RelayProcess::start(&db.path, &vhost.url(), "r");
    db.wait_position("r", head).await;
    raw.settled_count_every(Q, SETTLE).await;
    let (status, output) = second.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {output}");
    let rest: Vec<u64> = raw
        .drain_bodies(Q)
        .await
        .iter()
        .map(|(m, _)| notification_of(m, "r"))
        .collect();
    assert_eq!(rest, expected[published.len()..], "{output}");
    eprintln!(
        "SIGTERM at position {position} after {} messages; restart published {}",
        published.len(),
        rest.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_when_the_broker_refuses_or_is_unreachable() {
    const PASSWORD: &str = "Zq8-s3cr3t-pw";
    let vhost = test_vhost();
    let db = Db::new();
    db.orders(3, 3).await;
    let free_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let wrong = format!("amqp://guest:{PASSWORD}@{HOST}/{}", vhost.name);
    let unreachable = format!("amqp://guest:{PASSWORD}@127.0.0.1:{free_port}/%2f");
    for (url, expected) in [(&wrong, "access refused"), (&unreachable, "unavailable")] {
        for args in [
            vec!["relay", "--amqp-url", url],
            vec!["relay", "republish", "--amqp-url", url],
        ] {
            let start = Instant::now();
            let out = command(&db.path)
                .args(&args)
                .env("EVENTFOLD_LOG", "debug")
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{args:?}: {all}");
            assert!(start.elapsed() < Duration::from_secs(20), "{args:?}");
            assert!(
                !all.contains(PASSWORD),
                "{args:?} shows the password: {all}"
            );
            assert!(all.contains("guest:***@"), "{args:?}: {all}");
            assert!(
                all.contains("cannot connect to the broker"),
                "{args:?}: {all}"
            );
            assert!(all.contains(expected), "{args:?}: {all}");
        }
        // Through the environment as well.
        let out = command(&db.path)
            .arg("relay")
            .env("EVENTFOLD_AMQP_URL", url)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{all}");
        assert!(!all.contains(PASSWORD), "{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_events_without_a_queue_are_parked_listed_and_republished() {
    let vhost = test_vhost();
    let raw = vhost.raw().await;
    let db = Db::new();
    // The Worlds scenario: 5 World events, stored with zlib.
    text(&eventfold(&db.path, &["demo"]));
    let head = db
        .store
        .select_notifications(&eventfold::NotificationQuery::after(0, 1000))
        .await
        .unwrap()
        .len() as u64;

    let relay = RelayProcess::start_with(
        &db.path,
        &vhost.url(),
        "w",
        &["--domain-events", "worlds", "--aggregate", "World"],
    );
    relay.wait_stdout("leader").await;
    db.wait_position("w", head).await;
    let (status, output) = relay.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {output}");

    let listed = text(&eventfold(&db.path, &["relay", "parked", "--name", "w"]));
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(
        listed.lines().all(|l| l.contains("exchange=worlds.events")
            && l.contains("routing_key=World.")
            && l.contains("NO_ROUTE")),
        "{listed}"
    );
    assert_eq!(status_json(&db.path, "w")["parked"], 5);

    raw.topic_bound_queue("worlds-q", "worlds.events", "World.#")
        .await;
    let url = vhost.url();
    let out = text(&eventfold(
        &db.path,
        &["relay", "republish", "--name", "w", "--amqp-url", &url],
    ));
    assert!(out.contains("republished:  5"), "{out}");
    assert!(out.contains("still parked: 0"), "{out}");
    raw.settled_count_every("worlds-q", SETTLE).await;
    let got = raw.drain_bodies("worlds-q").await;
    assert_eq!(got.len(), 5);
    for (id, body) in &got {
        assert!(id.starts_with("w:"), "{id}");
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(json.is_object(), "{json}");
    }
    assert_eq!(status_json(&db.path, "w")["parked"], 0);
}

/// `eventfold relay status` (text and JSON) until its last error is `ongoing`; the text.
async fn wait_last_error(db: &Path, relay: &str, ongoing: bool) -> (String, serde_json::Value) {
    let start = Instant::now();
    loop {
        let json = status_json(db, relay);
        if json["last_error"]["ongoing"] == ongoing {
            let out = text(&eventfold(db, &["relay", "status", "--name", relay]));
            return (out, json);
        }
        assert!(
            start.elapsed() < T,
            "no last error ongoing={ongoing}: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn last_error_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("last error:"))
        .unwrap_or_else(|| panic!("no last error line: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_why_the_relay_is_stuck_nacked_or_held_and_when_it_recovered() {
    let db = Db::new();
    let records = db.orders(10, 10).await;
    let head = records.last().unwrap().0;

    // Nacks: a queue with room for 2 that refuses the rest.
    let vhost = test_vhost();
    vhost.set_queue_policy(
        "room-for-2",
        &format!("^{}$", Q.replace('.', "\\.")),
        &serde_json::json!({"max-length": 2, "overflow": "reject-publish"}),
    );
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let relay = RelayProcess::start(&db.path, &vhost.url(), "stuck");
    let (out, json) = wait_last_error(&db.path, "stuck", true).await;
    let line = last_error_line(&out);
    let nacked = format!("notification {} nacked by the broker", records[2].0);
    assert!(line.contains(&nacked), "{out}");
    assert!(line.contains("reject-publish"), "{out}");
    assert!(line.ends_with("(ongoing)"), "{out}");
    assert!(json["last_error"]["reason"]
        .as_str()
        .unwrap()
        .contains(&nacked));
    assert_eq!(json["position"], records[1].0);
    vhost.clear_policy("room-for-2");
    db.wait_position("stuck", head).await;
    let (out, _) = wait_last_error(&db.path, "stuck", false).await;
    assert!(last_error_line(&out).ends_with("(recovered)"), "{out}");
    let (status, output) = relay.terminate(T).await;
    assert!(status.success(), "{output}");
    assert_eq!(raw.drain(Q).await.len(), 10);

    // A hold (a route with Unroutable::Hold, run in process on the same store): no queue.
    let bare = test_vhost();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&SqliteConfig::new(&db.path)).unwrap());
    let held = eventfold_relay::Relay::builder(store, &bare.url(), "held")
        .unwrap()
        .route(eventfold_relay::NamekoChanges::new().unroutable(eventfold_relay::Unroutable::Hold))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        held.run(async {
            let _ = stopped.await;
        })
        .await
    });
    let (out, json) = wait_last_error(&db.path, "held", true).await;
    let line = last_error_line(&out);
    let reason = format!(
        "held at notification {}: unroutable (312 NO_ROUTE)",
        records[0].0
    );
    assert!(line.contains(&reason), "{out}");
    assert!(line.ends_with("(ongoing)"), "{out}");
    assert_eq!(json["position"], 0);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
