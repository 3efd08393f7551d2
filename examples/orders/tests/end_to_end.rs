//! The orders service and its replica, run as a person runs them: the real binaries on
//! their own databases (SQLite files, or PostgreSQL schemas) and a RabbitMQ vhost of
//! their own, driven over HTTP, from a command to the replica's row.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode};
use eventfold_testkit::TestVhost;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use orders_example::DEFAULT_REPLICA_QUEUE;
use serde_json::{json, Value};

/// Long enough for a cold debug build on a busy machine; the waits end as soon as the
/// awaited state is there.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running binary, killed (and reaped) on drop, its output kept for failure messages.
struct Process {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<String>>,
    /// The threads copying its stdout and stderr into `output`.
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Its base URL, from the `listening on` line it prints.
    url: String,
}

impl Process {
    /// Starts `exe` with only `env` in its environment and `args`, and waits until it
    /// serves HTTP.
    fn start(name: &'static str, exe: &str, env: &[(String, String)], args: &[&str]) -> Self {
        let mut child = Command::new(exe)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("EVENTFOLD_LOG", "warn,lapin=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{exe} starts: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (lines, listening) = mpsc::channel();
        let readers = vec![
            keep(child.stdout.take().unwrap(), &output, Some(lines)),
            keep(child.stderr.take().unwrap(), &output, None),
        ];
        let mut process = Process {
            name,
            child,
            output,
            readers,
            url: String::new(),
        };
        let deadline = Instant::now() + PATIENCE;
        while process.url.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match listening.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix(&format!("{name}: listening on ")) {
                        process.url = url.trim().to_owned();
                    }
                }
                Err(_) => panic!("{name} did not start serving:\n{}", process.output()),
            }
        }
        process
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The URL of its part `part` (a `NAME PART: listening on URL` line), waiting for it.
    fn part_url(&self, part: &str) -> String {
        let prefix = format!("{} {part}: listening on ", self.name);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(url) = self.output().lines().find_map(|l| l.strip_prefix(&prefix)) {
                return url.trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve its {part}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as run.sh and Ctrl-C do (SIGTERM) and returns its output; panics unless
    /// it exits 0.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let Some(status) = wait_exit(&mut self.child) else {
            panic!("{} did not stop on SIGTERM:\n{}", self.name, self.output());
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let output = self.output();
        assert!(
            status.success(),
            "{} exited with {status}:\n{output}",
            self.name
        );
        output
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, up to [`PATIENCE`]; `None` if it is still running.
fn wait_exit(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Copies `pipe` into `output` on a thread, each line also to `lines` if given; the
/// thread ends when the pipe closes.
fn keep(
    pipe: impl Read + Send + 'static,
    output: &Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    let output = output.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            output.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

/// JSON over HTTP/1.1 with hyper's client.
struct Http(Client<HttpConnector, Full<Bytes>>);

impl Http {
    fn new() -> Self {
        Http(Client::builder(TokioExecutor::new()).build_http())
    }

    async fn send(&self, method: Method, url: &str, body: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(url);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let response = self
            .0
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{url}: {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, json)
    }

    async fn get(&self, url: &str) -> (StatusCode, Value) {
        self.send(Method::GET, url, None).await
    }

    async fn post(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        self.send(Method::POST, url, Some(&body.to_string())).await
    }

    /// POSTs a command that must succeed with `expected`; its response.
    async fn command(&self, url: &str, body: Value, expected: StatusCode) -> Value {
        let (status, response) = self.post(url, &body).await;
        assert_eq!(status, expected, "POST {url} {body}: {response}");
        response
    }

    /// GETs `url` until `done` accepts its 200 response (or panics with `processes`'
    /// output after [`PATIENCE`]).
    async fn wait_for(
        &self,
        url: &str,
        processes: &[&Process],
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.get(url).await;
            if status == StatusCode::OK && done(&body) {
                return body;
            }
            if Instant::now() > deadline {
                let outputs: Vec<String> = processes
                    .iter()
                    .map(|p| format!("--- {}:\n{}", p.name, p.output()))
                    .collect();
                panic!("GET {url} still {status} {body}\n{}", outputs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The scenario, on the store that `master` and `replica` (environments) configure.
async fn http_command_to_replica_row(
    master: Vec<(String, String)>,
    replica: Vec<(String, String)>,
) {
    let vhost = TestVhost::with_prefix("ef-orders");
    let amqp = ("EVENTFOLD_AMQP_URL".to_owned(), vhost.url());
    let master: Vec<_> = master.into_iter().chain([amqp.clone()]).collect();
    let replica: Vec<_> = replica.into_iter().chain([amqp]).collect();
    let http = Http::new();

    let orders = Process::start(
        "orders",
        env!("CARGO_BIN_EXE_orders"),
        &master,
        &["--inspect", "127.0.0.1:0"],
    );
    let api = orders.url.clone();
    let inspector = orders.part_url("inspector");

    // Placed, two lines, paid: one event and one master save per command.
    let placed = http
        .command(
            &format!("{api}/orders"),
            json!({"customer": "ada"}),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(
        (placed["version"].clone(), placed["cqrs_revision"].clone()),
        (json!(1), json!(0))
    );
    let id = placed["id"].as_str().unwrap().to_owned();
    let order = format!("{api}/orders/{id}");
    for (sku, quantity, price) in [("tea", 2, 350), ("cup", 1, 900)] {
        let line = json!({"sku": sku, "quantity": quantity, "unit_price_cents": price});
        http.command(&format!("{order}/lines"), line, StatusCode::OK)
            .await;
    }
    let paid = http
        .command(
            &format!("{order}/pay"),
            json!({"amount_cents": 1600}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (&paid["version"], &paid["cqrs_revision"], &paid["status"]),
        (&json!(4), &json!(3), &json!("paid"))
    );

    // Bad commands are 4xx with a JSON error and change nothing.
    let refused = [
        (
            format!("{order}/pay"),
            json!({"amount_cents": 1600}),
            422,
            "invalid_command",
        ),
        (
            format!("{order}/lines"),
            json!({"sku": "tea", "quantity": 1, "unit_price_cents": 1}),
            422,
            "invalid_command",
        ),
        (
            format!("{order}/cancel"),
            json!({"expected_version": 3}),
            409,
            "conflict",
        ),
        (
            format!("{order}/cancel"),
            json!({"expected_version": 9}),
            409,
            "conflict",
        ),
        (
            format!("{order}/pay"),
            json!({"amount_cents": "all of it"}),
            422,
            "bad_request",
        ),
        (
            format!("{api}/orders/not-an-id/pay"),
            json!({"amount_cents": 1}),
            400,
            "bad_request",
        ),
        (
            format!("{api}/orders/{}/pay", uuid::Uuid::new_v4()),
            json!({"amount_cents": 1}),
            404,
            "not_found",
        ),
    ];
    for (url, body, status, kind) in refused {
        let (got, error) = http.post(&url, &body).await;
        assert_eq!(
            (got.as_u16(), &error["error"]),
            (status, &json!(kind)),
            "POST {url} {body}: {error}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    let (status, text_body) = http
        .send(Method::POST, &format!("{order}/pay"), Some("{"))
        .await;
    assert_eq!(
        (status, &text_body["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (status, unchanged) = http.get(&order).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&unchanged["version"], &unchanged["status"]),
        (&json!(4), &json!("paid")),
        "{unchanged}"
    );

    // A second order, cancelled, before any replica ever ran.
    let bob = http
        .command(
            &format!("{api}/orders"),
            json!({"customer": "bob"}),
            StatusCode::CREATED,
        )
        .await;
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    let cancel = json!({"reason": "changed my mind", "expected_version": 1});
    http.command(
        &format!("{api}/orders/{bob_id}/cancel"),
        cancel,
        StatusCode::OK,
    )
    .await;

    // No replica has run yet: the relay declared its queue, and the six messages wait there.
    let raw = vhost.raw().await;
    raw.wait_count(DEFAULT_REPLICA_QUEUE, 6, PATIENCE).await;
    raw.close().await;

    // The replica starts cold and finds them.
    // One worker: the replica applies in log order, so a later row proves the earlier ones.
    let replica = Process::start(
        "orders-replica",
        env!("CARGO_BIN_EXE_orders-replica"),
        &replica,
        &["--workers", "1"],
    );
    let rows = replica.url.clone();
    let ada_row = http
        .wait_for(
            &format!("{rows}/orders/{id}"),
            &[&orders, &replica],
            |row| row["cqrs_revision"] == 3,
        )
        .await;
    assert_eq!(ada_row["customer"], "ada");
    assert_eq!(ada_row["status"], "paid");
    assert_eq!(ada_row["line_count"], 2);
    assert_eq!(ada_row["total_cents"], 1600);
    assert!(
        ada_row["cqrs_updated"]
            .as_str()
            .is_some_and(|t| t.ends_with("+00:00")),
        "{ada_row}"
    );

    // Live: another order while the replica runs; a refused command on ada's before it.
    let (status, _) = http.post(&format!("{order}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let carol = http
        .command(
            &format!("{api}/orders"),
            json!({"customer": "carol"}),
            StatusCode::CREATED,
        )
        .await;
    let carol_id = carol["id"].as_str().unwrap();
    http.wait_for(
        &format!("{rows}/orders/{carol_id}"),
        &[&orders, &replica],
        |row| row["customer"] == "carol" && row["cqrs_revision"] == 0,
    )
    .await;
    let (_, all) = http.get(&format!("{rows}/orders")).await;
    let mut replicated: Vec<(String, String, i64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap().to_owned();
            (
                text("customer"),
                text("status"),
                r["cqrs_revision"].as_i64().unwrap(),
            )
        })
        .collect();
    replicated.sort();
    assert_eq!(
        replicated,
        [
            ("ada".to_owned(), "paid".to_owned(), 3),
            ("bob".to_owned(), "cancelled".to_owned(), 1),
            ("carol".to_owned(), "placed".to_owned(), 0),
        ]
    );

    // The projection, in the service's store.
    let expected_totals = json!([
        {"status": "cancelled", "orders": 1, "total_cents": 0},
        {"status": "paid", "orders": 1, "total_cents": 1600},
        {"status": "placed", "orders": 1, "total_cents": 0},
    ]);
    http.wait_for(&format!("{api}/totals"), &[&orders], |totals| {
        *totals == expected_totals
    })
    .await;

    // The inspector inside the service sees the relay's own counters: every message the
    // relay published was confirmed, none returned or nacked.
    let relays = http
        .wait_for(&format!("{inspector}/api/relay"), &[&orders], |page| {
            let relay = &page["relays"][0];
            relay["metrics"]["confirmed"] == 7 && relay["pending"] == 0
        })
        .await;
    let relay = &relays["relays"][0];
    assert_eq!(relay["name"], "orders", "{relays}");
    assert_eq!(relay["metrics"]["published"], 7, "{relays}");
    assert_eq!(relay["metrics"]["returned"], 0, "{relays}");
    assert_eq!(relay["metrics"]["nacked"], 0, "{relays}");
    assert_eq!(relays["relays"].as_array().unwrap().len(), 1, "{relays}");

    let replica_out = replica.terminate();
    assert!(
        replica_out.contains("stopped (7 applied, 0 duplicates, 0 stale, 0 dead letters)"),
        "{replica_out}"
    );
    let orders_out = orders.terminate();
    assert!(
        orders_out.contains("stopped (7 published, 7 confirmed by the broker)"),
        "{orders_out}"
    );
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn sqlite_http_command_reaches_the_replica_row() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (master, replica) = (file("orders.sqlite3"), file("orders-replica.sqlite3"));
    http_command_to_replica_row(
        vars(&[
            ("EVENTFOLD_STORE", "sqlite"),
            ("EVENTFOLD_SQLITE_PATH", &master),
        ]),
        vars(&[
            ("EVENTFOLD_STORE", "sqlite"),
            ("ORDERS_REPLICA_SQLITE_PATH", &replica),
        ]),
    )
    .await;
}

/// Two schemas of their own on the test server, dropped on drop (even when the test
/// panics).
struct Schemas {
    url: String,
    names: [String; 2],
}

impl Schemas {
    fn new() -> Self {
        let url = std::env::var("EVENTFOLD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        Schemas {
            url,
            names: [
                format!("ef_orders_{tag}"),
                format!("ef_orders_replica_{tag}"),
            ],
        }
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), self.names.clone());
        // A runtime of its own on a thread of its own: drop may run inside the test's.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&url).await?;
                    for name in names {
                        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                            .execute(&mut conn)
                            .await?;
                    }
                    Ok::<_, sqlx::Error>(())
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!(
                "could not drop the test schemas {:?}: {dropped:?}",
                self.names
            );
        }
    }
}

#[tokio::test]
async fn postgres_http_command_reaches_the_replica_row() {
    let schemas = Schemas::new();
    let common = [
        ("EVENTFOLD_STORE", "postgres"),
        ("EVENTFOLD_DATABASE_URL", schemas.url.as_str()),
    ];
    let master = [("EVENTFOLD_POSTGRES_SCHEMA", schemas.names[0].as_str())];
    let replica = [("ORDERS_REPLICA_SCHEMA", schemas.names[1].as_str())];
    http_command_to_replica_row(
        vars(&[&common[..], &master[..]].concat()),
        vars(&[&common[..], &replica[..]].concat()),
    )
    .await;
}

/// A broker that refuses the login is an error at start, exit 1, the password hidden.
#[test]
fn a_refused_broker_login_stops_the_service_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.sqlite3");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["--listen", "127.0.0.1:0"])
        .env_clear()
        .env("EVENTFOLD_SQLITE_PATH", &path)
        .env(
            "EVENTFOLD_AMQP_URL",
            format!(
                "amqp://guest:not-the-password@{}/%2f",
                eventfold_testkit::HOST
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_exit(&mut child) else {
        let _ = child.kill();
        panic!("orders kept running with a refused login");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("orders: error: cannot connect to the broker at amqp://guest:***@"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}
