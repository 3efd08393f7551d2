//! Interop with the real nameko 2.14.1, not with captures of it: a `nameko run` service
//! consumes what eventfold publishes, and nameko's own `event_dispatcher` (and py-amqp)
//! publish to eventfold's consumer. The Python files are in `tests/python/`; the
//! interpreter is `EVENTFOLD_INTEROP_PYTHON`, else `target/interop-venv/bin/python` (both
//! made by `scripts/interop-venv.sh`, which `scripts/test.sh` runs). Without either the
//! tests fail: they do not skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventfold_amqp::nameko::{self, HandlerType};
use eventfold_amqp::{
    ConfirmedPublisher, Consumer, ConsumerOptions, ExchangeKind, HandlerError, HeaderValue,
    Headers, IncomingMessage, OrderKey, Outcome, PublisherOptions, Subscription, HEADER_ATTEMPTS,
    HEADER_ERROR, HEADER_ORIGINAL_QUEUE, HEADER_ORIGINAL_ROUTING_KEY,
};
use eventfold_changes::{ChangeRecord, Changes, Model};
use eventfold_core::{InMemoryStore, NotificationQuery, NotificationReader, Store};
use lapin::types::AMQPValue;
use serde::{Deserialize, Serialize};

use crate::support::TestVhost;

/// The Python with nameko ([`eventfold_testkit::interop_python`]): a failure, not a
/// skip, without it.
fn python() -> PathBuf {
    eventfold_testkit::interop_python()
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// `python <script> <args>` in tests/python, to completion; panics with its output on failure.
async fn run_script(script: &str, args: Vec<String>) -> String {
    let script = python_dir().join(script);
    let python = python();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python)
            .arg(&script)
            .args(&args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}\n{}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// A `nameko run` process, killed when dropped (also when the test panics).
struct NamekoRun {
    child: Child,
    log: PathBuf,
}

impl NamekoRun {
    /// `nameko run --config <dir>/nameko.yaml <module>` with AMQP_URI = `amqp_uri`; its output
    /// goes to `<dir>/nameko.log`.
    fn start(dir: &Path, amqp_uri: &str, module: &str, env: &[(&str, &Path)]) -> Self {
        let config = dir.join("nameko.yaml");
        // JSON is YAML: a quoted string whatever the URI holds.
        std::fs::write(
            &config,
            format!(
                "AMQP_URI: {}\nmax_workers: 10\n",
                serde_json::to_string(amqp_uri).unwrap()
            ),
        )
        .unwrap();
        let log = dir.join("nameko.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(python());
        command
            .args(["-m", "nameko", "run", "--config"])
            .arg(&config)
            .arg(module)
            .current_dir(python_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            command.env(k, v);
        }
        NamekoRun {
            child: command.spawn().unwrap(),
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with nameko's output) if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("nameko run exited ({status}):\n{}", self.output());
        }
    }
}

impl Drop for NamekoRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every queue exists and has a consumer (nameko declares, binds, then consumes).
async fn wait_for_consumers(vhost: &TestVhost, nameko: &mut NamekoRun, queues: &[String]) {
    let raw = vhost.raw().await;
    for queue in queues {
        raw.wait_consumer(queue, || nameko.assert_running()).await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The Order of the captures (tests/fixtures/nameko_event.json), fields in the model's
/// order and rendered as DRF renders them.
#[derive(Serialize, Clone)]
struct Order {
    id: i64,
    customer: String,
    qty: i64,
    /// A DecimalField(decimal_places=2): DRF writes a string.
    amount: String,
    note: String,
    #[serde(with = "eventfold_changes::drf::datetime")]
    created: DateTime<Utc>,
}

impl Model for Order {
    const NAME: &'static str = "order";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

/// What orders_consumer.py wrote for one event.
#[derive(Deserialize, Debug)]
struct Received {
    #[serde(rename = "type")]
    event_type: String,
    payload: serde_json::Value,
    /// `json.dumps(payload)` in Python, keys in the order nameko decoded them.
    dumped: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameko_receives_our_change_events_unchanged() {
    python(); // fails now, before a vhost is made, without the venv
    let vhost = TestVhost::new();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("received.jsonl");
    let mut nameko = NamekoRun::start(
        dir.path(),
        &vhost.url(),
        "orders_consumer",
        &[("INTEROP_SINK", &sink)],
    );
    let started = Instant::now();
    let queues: Vec<String> = ["created", "updated", "deleted"]
        .iter()
        .map(|t| {
            nameko::handler_queue_name(
                "orders",
                &format!("order__{t}"),
                "orders_consumer",
                &format!("on_{t}"),
                &HandlerType::ServicePool,
            )
        })
        .collect();
    wait_for_consumers(&vhost, &mut nameko, &queues).await;
    eprintln!("nameko consuming after {:?}", started.elapsed());

    // The rows, and their changes recorded as a model's save would, transaction by
    // transaction, interleaving instances.
    let capture = fixture("nameko_event.json");
    let created: DateTime<Utc> = "2026-11-23T00:41:55.850687Z".parse().unwrap();
    let mut orders: Vec<Order> = (1..=4)
        .map(|id| Order {
            id,
            customer: if id == 1 {
                "sample".into()
            } else {
                format!("customer {id}")
            },
            qty: 3,
            amount: "99.90".into(),
            note: match id {
                1 => "captured on the wire".into(),
                2 => "cr\u{e8}me br\u{fb}l\u{e9}e \u{2615} \u{1F600} \"quoted\"\n\\".into(),
                _ => format!("note {id}"),
            },
            created: if id == 4 {
                // No microseconds: DRF leaves them out.
                "2026-11-23T00:41:55Z".parse().unwrap()
            } else {
                created
            },
        })
        .collect();
    let store = InMemoryStore::new();
    let changes = Changes::new("orders").register::<Order>();
    // (event type, DRF's rendering of the row then) in log order.
    let mut expected: Vec<(String, serde_json::Value)> = Vec::new();
    let render = |o: &Order| serde_json::to_value(o).unwrap();

    let mut tx = store.begin().await.unwrap();
    for o in &orders {
        changes.created(&mut tx, o).await.unwrap().unwrap();
        expected.push(("order__created".into(), render(o)));
    }
    tx.commit().await.unwrap();
    for round in 1..=5 {
        let mut tx = store.begin().await.unwrap();
        for o in orders.iter_mut().filter(|o| o.id as usize <= 1 + round % 4) {
            o.qty += 1;
            o.amount = format!("{}.{:02}", 99 + round, o.id);
            changes.updated(&mut tx, &*o).await.unwrap().unwrap();
            expected.push(("order__updated".into(), render(o)));
        }
        tx.commit().await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    for o in orders.iter().filter(|o| o.id % 2 == 0) {
        changes.deleted(&mut tx, o).await.unwrap().unwrap();
        expected.push(("order__deleted".into(), render(o)));
    }
    tx.commit().await.unwrap();
    // The first row is the captured one: DRF's rendering is the captured body.
    assert_eq!(expected[0].1, capture["body"]);

    // What the relay will do: read the log, a nameko message per change record, publish.
    let log = store
        .select_notifications(&NotificationQuery::after(0, 1000))
        .await
        .unwrap();
    assert_eq!(log.len(), expected.len());
    let mut bodies = Vec::new();
    let messages: Vec<_> = log
        .iter()
        .map(|n| {
            let change = ChangeRecord::of(n).expect("a change record");
            bodies.push(String::from_utf8(change.body.to_vec()).unwrap());
            nameko::encoded_event_message(
                change.service,
                change.event_type,
                change.body,
                &Headers::new(),
            )
            .with_message_id(format!("{}-{}", change.service, n.id))
        })
        .collect();
    assert_eq!(bodies[0], capture["body_raw"].as_str().unwrap());
    let publisher = ConfirmedPublisher::connect(vhost.config(), PublisherOptions::default())
        .await
        .unwrap();
    // nameko declared it: declaring it again as a relay does must agree (durable topic).
    publisher
        .declare_exchange("orders.events", ExchangeKind::Topic)
        .await
        .unwrap();
    for (i, outcome) in publisher
        .publish_all(&messages)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(outcome, Ok(Outcome::Confirmed), "message {i}");
    }
    publisher.close().await.unwrap();

    let lines = || {
        std::fs::read_to_string(&sink)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let start = Instant::now();
    while lines() < expected.len() {
        nameko.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nameko handled {} of {} events:\n{}",
            lines(),
            expected.len(),
            nameko.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more comes (no duplicates).
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(nameko);
    let received: Vec<Received> = std::fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(received.len(), expected.len());

    // Every event, of its type, with DRF's rendering as payload, and Python writes back the
    // very bytes we sent (key order, separators, \u escapes). Per instance and event type,
    // in log order. (Across types there is no order to check: nameko consumes each event type
    // from its own queue, concurrently.)
    type Stream = (String, i64);
    let group = |items: Vec<(String, serde_json::Value, String)>| {
        let mut by: HashMap<Stream, Vec<(serde_json::Value, String)>> = HashMap::new();
        for (t, payload, raw) in items {
            let id = payload["id"].as_i64().unwrap();
            by.entry((t, id)).or_default().push((payload, raw));
        }
        by
    };
    let want = group(
        expected
            .into_iter()
            .zip(bodies)
            .map(|((t, v), raw)| (t, v, raw))
            .collect(),
    );
    let got = group(
        received
            .into_iter()
            .map(|r| (r.event_type, r.payload, r.dumped))
            .collect(),
    );
    assert_eq!(got.len(), want.len());
    for (stream, want) in &want {
        let got = got
            .get(stream)
            .unwrap_or_else(|| panic!("nothing for {stream:?}"));
        assert_eq!(got.len(), want.len(), "{stream:?}");
        for (i, ((got_v, got_raw), (want_v, want_raw))) in got.iter().zip(want).enumerate() {
            assert_eq!(got_v, want_v, "{stream:?} #{i}: payload");
            assert_eq!(
                got_raw, want_raw,
                "{stream:?} #{i}: json.dumps of the payload"
            );
        }
    }
}

/// What nameko's dispatch_events.py sends.
#[derive(Deserialize, Serialize, Debug, PartialEq)]
struct Dispatched {
    id: i64,
    customer: String,
    seq: u32,
    amount: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_consumer_receives_what_nameko_event_dispatcher_sends() {
    python(); // fails now, before a vhost is made, without the venv
    const N: usize = 150;
    const INSTANCES: usize = 7;
    let vhost = TestVhost::new();
    let subscription = Subscription::nameko(
        "orders",
        "order__updated",
        "projector",
        "on_updated",
        &HandlerType::ServicePool,
    );
    assert_eq!(
        subscription.queue,
        "evt-orders-order__updated--projector.on_updated"
    );
    type Seen = Vec<(Dispatched, Arc<IncomingMessage>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let options = ConsumerOptions {
        workers: 4,
        key: OrderKey::JsonField("/id".into()),
        ..Default::default()
    };
    // The queue exists before nameko publishes (it publishes without `mandatory`: an
    // unroutable event would vanish).
    let consumer = {
        let seen = seen.clone();
        Consumer::start(
            vhost.config(),
            subscription.clone(),
            options,
            move |m: Arc<IncomingMessage>| {
                let seen = seen.clone();
                async move {
                    let event: Dispatched = m.json().map_err(HandlerError::permanent)?;
                    // Uneven handling times, so workers overtake each other.
                    tokio::time::sleep(Duration::from_millis(event.id as u64 % 3)).await;
                    seen.lock().unwrap().push((event, m));
                    Ok(())
                }
            },
        )
        .await
        .unwrap()
    };
    let started = Instant::now();
    let out = run_script(
        "dispatch_events.py",
        vec![vhost.url(), N.to_string(), INSTANCES.to_string()],
    )
    .await;
    assert!(out.contains(&format!("dispatched {N}")), "{out}");
    eprintln!("nameko dispatched {N} in {:?}", started.elapsed());
    wait_until("every event handled", Duration::from_secs(15), || {
        consumer.stats().handled == N as u64
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (N as u64, 0));

    let seen = seen.lock().unwrap();
    let mut last_seq: HashMap<i64, u32> = HashMap::new();
    for (event, m) in seen.iter() {
        let last = last_seq.entry(event.id).or_default();
        assert_eq!(event.seq, *last + 1, "order {} out of order", event.id);
        *last = event.seq;
        assert_eq!(m.exchange, "orders.events");
        assert_eq!(m.routing_key, "order__updated");
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
        // nameko's body is what our codec writes for the same dict.
        assert_eq!(
            String::from_utf8(m.body.clone()).unwrap(),
            String::from_utf8(nameko::python_json(event).unwrap()).unwrap()
        );
        assert!(
            event.customer.starts_with("cust\u{e9} "),
            "{}",
            event.customer
        );
        assert_eq!(
            nameko::context_of(&m.headers).get("call_id_stack"),
            Some(&HeaderValue::List(vec![HeaderValue::Str(
                "interop.dispatch.0".into()
            )]))
        );
    }
    assert_eq!(last_seq.len(), INSTANCES);
    assert_eq!(last_seq.values().map(|&s| s as usize).sum::<usize>(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_from_python_are_dead_lettered_and_the_consumer_goes_on() {
    python(); // fails now, before a vhost is made, without the venv
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let subscription = Subscription::nameko(
        "orders",
        "order__updated",
        "projector",
        "on_updated",
        &HandlerType::ServicePool,
    );
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        Consumer::start(
            vhost.config(),
            subscription.clone(),
            ConsumerOptions::default(),
            move |m: Arc<IncomingMessage>| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(m.json().map_err(HandlerError::permanent)?);
                    Ok(())
                }
            },
        )
        .await
        .unwrap()
    };
    let bodies = [
        r#"{"id": 1, oops"#,
        "not json at all",
        r#"{"id": 1, "seq": 1}"#,
    ];
    let mut args = vec![
        vhost.url(),
        "orders.events".to_owned(),
        "order__updated".to_owned(),
    ];
    args.extend(bodies.iter().map(|b| b.to_string()));
    let out = run_script("publish_raw.py", args).await;
    assert!(out.contains("published 3"), "{out}");
    wait_until("all settled", Duration::from_secs(10), || {
        let s = consumer.stats();
        s.handled == 1 && s.dead_lettered == 2
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.retries, 0);
    assert_eq!(
        seen.lock().unwrap().clone(),
        [serde_json::json!({"id": 1, "seq": 1})]
    );

    let dead = raw.drain(&subscription.dead_letter_queue()).await;
    assert_eq!(dead.len(), 2);
    let header = |m: &lapin::message::BasicGetMessage, name: &str| -> String {
        match m
            .delivery
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get(name)
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::LongInt(i)) => i.to_string(),
            Some(AMQPValue::LongLongInt(i)) => i.to_string(),
            Some(other) => format!("{other:?}"),
            None => panic!("no {name} header"),
        }
    };
    for (m, body) in dead.iter().zip(&bodies) {
        assert_eq!(
            m.delivery.data,
            body.as_bytes(),
            "the body as Python sent it"
        );
        assert!(
            header(m, HEADER_ERROR).contains("not valid JSON"),
            "{}",
            header(m, HEADER_ERROR)
        );
        assert_eq!(header(m, HEADER_ORIGINAL_ROUTING_KEY), "order__updated");
        assert_eq!(header(m, HEADER_ORIGINAL_QUEUE), subscription.queue);
        assert_eq!(
            header(m, HEADER_ATTEMPTS),
            "0",
            "rejected before the handler ran"
        );
    }
    assert_eq!(raw.settled_count(&subscription.queue).await, 0);
}
