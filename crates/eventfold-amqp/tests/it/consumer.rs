//! Consumer against the broker: per-key order over parallel workers, retries, dead letters,
//! graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_amqp::{
    json_handler, ConfirmedPublisher, Consumer, ConsumerOptions, ConsumerStats, HandlerError,
    IncomingMessage, OrderKey, Outcome, OutgoingMessage, PublisherOptions, RetryPolicy,
    Subscription, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
};
use lapin::types::AMQPValue;

use crate::support::TestVhost;

async fn publish(vhost: &TestVhost, messages: &[OutgoingMessage]) {
    let p = ConfirmedPublisher::connect(vhost.config(), PublisherOptions::default())
        .await
        .unwrap();
    for o in p.publish_all(messages).await {
        assert_eq!(o, Ok(Outcome::Confirmed));
    }
    p.close().await.unwrap();
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    }
}

fn header_str(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    match m
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

fn header_int(m: &lapin::message::BasicGetMessage, name: &str) -> Option<i64> {
    match m
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        AMQPValue::LongInt(i) => Some((*i).into()),
        AMQPValue::LongLongInt(i) => Some(*i),
        _ => None,
    }
}

async fn start<F, Fut>(
    vhost: &TestVhost,
    sub: &Subscription,
    options: ConsumerOptions,
    handler: F,
) -> Consumer
where
    F: Fn(Arc<IncomingMessage>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send,
{
    Consumer::start(vhost.config(), sub.clone(), options, handler)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_while_four_workers_run_keys_in_parallel() {
    let vhost = TestVhost::new();
    let sub = Subscription::new("orders.events", "order.#", "projector");
    let keys = 41; // not a multiple of the workers: round robin would not keep keys together
    let per_key = 60;
    let arrivals: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let options = ConsumerOptions {
        workers: 4,
        prefetch: 100,
        key: OrderKey::JsonField("/pk".into()),
        ..Default::default()
    };
    let consumer = {
        let (arrivals, running, max_running) =
            (arrivals.clone(), running.clone(), max_running.clone());
        start(&vhost, &sub, options, move |m| {
            let (arrivals, running, max_running) =
                (arrivals.clone(), running.clone(), max_running.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                let v: serde_json::Value = m.json().unwrap();
                let (pk, seq) = (v["pk"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
                // Uneven handler times (0-1 ms, 10% 10 ms), so workers drift apart: without
                // per-key routing, a key's later message would overtake an earlier one.
                let r = uuid::Uuid::new_v4().as_bytes()[0];
                let ms = if r < 26 { 10 } else { u64::from(r % 2) };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                arrivals.lock().unwrap().push((pk, seq));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
    };
    // Interleaved: seq 0 of every key, then seq 1 of every key...
    let messages: Vec<_> = (0..per_key)
        .flat_map(|seq| {
            (0..keys).map(move |pk| {
                OutgoingMessage::new(
                    "orders.events",
                    "order.updated",
                    format!(r#"{{"pk": {pk}, "seq": {seq}}}"#),
                )
            })
        })
        .collect();
    publish(&vhost, &messages).await;
    wait_for("every message", Duration::from_secs(20), || {
        arrivals.lock().unwrap().len() == (keys * per_key) as usize
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.handled, keys * per_key);

    let arrivals = arrivals.lock().unwrap().clone();
    let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for (pk, seq) in &arrivals {
        by_key.entry(*pk).or_default().push(*seq);
    }
    assert_eq!(by_key.len(), keys as usize);
    for (pk, seqs) in &by_key {
        assert_eq!(
            seqs,
            &(0..per_key).collect::<Vec<_>>(),
            "key {pk} out of order"
        );
    }
    let switches = arrivals.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(
        switches > keys as usize * 8,
        "keys did not interleave: {switches} switches"
    );
    let max = max_running.load(Ordering::SeqCst);
    assert!(
        max >= 2,
        "handlers never ran in parallel (max {max} at once)"
    );
    assert!(max <= 4, "more handlers at once than workers: {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_does_not_block_other_keys() {
    let vhost = TestVhost::new();
    let sub = Subscription::new("e", "#", "q");
    let handled_during_slow: Arc<Mutex<Vec<String>>> = Arc::default();
    let slow_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = ConsumerOptions {
        workers: 4,
        key: OrderKey::Header("key".into()),
        ..Default::default()
    };
    let consumer = {
        let (during, slow_running) = (handled_during_slow.clone(), slow_running.clone());
        start(&vhost, &sub, options, move |m| {
            let (during, slow_running) = (during.clone(), slow_running.clone());
            async move {
                let key = m.headers["key"].as_str().unwrap().to_owned();
                if key == "slow" {
                    slow_running.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    slow_running.store(false, Ordering::SeqCst);
                } else if slow_running.load(Ordering::SeqCst) {
                    during.lock().unwrap().push(key);
                }
                Ok(())
            }
        })
        .await
    };
    let mut messages = vec![OutgoingMessage::new("e", "k", "{}").with_header("key", "slow")];
    for i in 0..200 {
        messages
            .push(OutgoingMessage::new("e", "k", "{}").with_header("key", format!("k{}", i % 20)));
    }
    publish(&vhost, &messages).await;
    wait_for("all handled", Duration::from_secs(10), || {
        consumer.stats().handled == 201
    })
    .await;
    let during = handled_during_slow.lock().unwrap().len();
    // About 3/4 of the 20 keys hash to another worker than "slow".
    assert!(
        during >= 50,
        "only {during} messages of other keys ran while the slow one did"
    );
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_then_dead_lettered_and_the_consumer_goes_on() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let sub = Subscription::new("orders.events", "order__created", "svc");
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let panicked_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = ConsumerOptions {
        workers: 2,
        retry: fast_retry(3),
        ..Default::default()
    };
    let consumer = {
        let (calls, panicked_once) = (calls.clone(), panicked_once.clone());
        start(&vhost, &sub, options, move |m| {
            let (calls, panicked_once) = (calls.clone(), panicked_once.clone());
            async move {
                let id = m.message_id.clone().unwrap();
                calls.lock().unwrap().push(id.clone());
                match id.as_str() {
                    "bad" => Err(HandlerError::new("projection table is locked")),
                    "hopeless" => Err(HandlerError::permanent("unknown order kind")),
                    "flaky" if !panicked_once.swap(true, Ordering::SeqCst) => {
                        panic!("first try explodes")
                    }
                    _ => Ok(()),
                }
            }
        })
        .await
    };
    let msg = |id: &str| {
        OutgoingMessage::new("orders.events", "order__created", r#"{"id": 1}"#)
            .with_message_id(id)
            .with_header("nameko.correlation_id", "c-1")
    };
    publish(
        &vhost,
        &[
            msg("bad"),
            msg("next"),
            msg("hopeless"),
            msg("flaky"),
            msg("last"),
        ],
    )
    .await;
    wait_for("the rest handled", Duration::from_secs(10), || {
        let s = consumer.stats();
        s.handled == 3 && s.dead_lettered == 2
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.retries, 2 + 1, "two retries of bad, one of flaky");

    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        ["bad", "bad", "bad", "next", "hopeless", "flaky", "flaky", "last"]
    );
    let dead = raw.drain(&sub.dead_letter_queue()).await;
    assert_eq!(dead.len(), 2);
    let bad = &dead[0];
    assert_eq!(
        bad.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "bad"
    );
    assert_eq!(
        header_str(bad, HEADER_ERROR).as_deref(),
        Some("projection table is locked")
    );
    assert_eq!(header_int(bad, HEADER_ATTEMPTS), Some(3));
    assert_eq!(
        header_str(bad, HEADER_ORIGINAL_EXCHANGE).as_deref(),
        Some("orders.events")
    );
    assert_eq!(
        header_str(bad, HEADER_ORIGINAL_ROUTING_KEY).as_deref(),
        Some("order__created")
    );
    assert_eq!(
        header_str(bad, HEADER_ORIGINAL_QUEUE).as_deref(),
        Some("svc")
    );
    assert_eq!(
        header_str(bad, "nameko.correlation_id").as_deref(),
        Some("c-1")
    );
    assert_eq!(bad.delivery.data, br#"{"id": 1}"#);
    let hopeless = &dead[1];
    assert_eq!(
        header_str(hopeless, HEADER_ERROR).as_deref(),
        Some("unknown order kind")
    );
    assert_eq!(header_int(hopeless, HEADER_ATTEMPTS), Some(1));
    assert_eq!(raw.settled_count("svc").await, 0, "everything was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_are_dead_lettered_at_once() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let sub = Subscription::new("e", "#", "q");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let options = ConsumerOptions {
        max_body_bytes: 1024,
        retry: fast_retry(5),
        ..Default::default()
    };
    let consumer = {
        let seen = seen.clone();
        start(&vhost, &sub, options, move |m| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(m.message_id.clone().unwrap());
                Ok(())
            }
        })
        .await
    };
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(2000));
    publish(
        &vhost,
        &[
            OutgoingMessage::new("e", "k", "{\"id\": 1, oops").with_message_id("malformed"),
            OutgoingMessage::new("e", "k", big).with_message_id("oversized"),
            OutgoingMessage::new("e", "k", vec![0xff, 0xfe]).with_message_id("binary"),
            OutgoingMessage::new("e", "k", r#"{"id": 2}"#).with_message_id("fine"),
        ],
    )
    .await;
    wait_for("all settled", Duration::from_secs(10), || {
        let s = consumer.stats();
        s.handled == 1 && s.dead_lettered == 3
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.retries, 0);
    assert_eq!(seen.lock().unwrap().clone(), ["fine"]);
    let dead = raw.drain(&sub.dead_letter_queue()).await;
    let reasons: HashMap<String, (String, Option<i64>)> = dead
        .iter()
        .map(|m| {
            (
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string(),
                (
                    header_str(m, HEADER_ERROR).unwrap(),
                    header_int(m, HEADER_ATTEMPTS),
                ),
            )
        })
        .collect();
    assert!(
        reasons["malformed"].0.contains("not valid JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons["binary"].0.contains("not valid JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons["oversized"]
            .0
            .contains("exceeds the limit of 1024 bytes"),
        "{reasons:?}"
    );
    assert!(reasons.values().all(|(_, attempts)| *attempts == Some(0)));
    assert_eq!(raw.settled_count("q").await, 0, "everything was acked");
}

/// What a typed handler expects.
#[derive(serde::Deserialize, Debug, PartialEq)]
struct OrderCreated {
    id: i64,
    customer: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typed_bodies_are_dead_lettered_with_the_reason_and_the_next_good_one_is_handled() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let sub = Subscription::new("e", "#", "q");
    let seen: Arc<Mutex<Vec<(OrderCreated, String)>>> = Arc::default();
    let options = ConsumerOptions {
        max_body_bytes: 1024,
        retry: fast_retry(5),
        ..Default::default()
    };
    let consumer = {
        let seen = seen.clone();
        Consumer::start(
            vhost.config(),
            sub.clone(),
            options,
            json_handler(move |order: OrderCreated, m: Arc<IncomingMessage>| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push((order, m.message_id.clone().unwrap()));
                    Ok(())
                }
            }),
        )
        .await
        .unwrap()
    };
    let big = format!(r#"{{"id": 3, "customer": "{}"}}"#, "x".repeat(2000));
    // One routing key: one worker, in queue order.
    let bodies: [(&str, Vec<u8>); 8] = [
        ("good-1", br#"{"id": 1, "customer": "a"}"#.to_vec()),
        ("string-id", br#"{"id": "one", "customer": "a"}"#.to_vec()),
        ("missing-field", br#"{"id": 2}"#.to_vec()),
        ("null", b"null".to_vec()),
        // Inside a string, where serde_json alone would not look at the bytes.
        ("not-utf8", vec![b'"', 0xff, 0xfe, b'"']),
        ("not-json", b"id=1&customer=a".to_vec()),
        ("oversized", big.into_bytes()),
        ("good-2", br#"{"id": 2, "customer": "b"}"#.to_vec()),
    ];
    let messages: Vec<_> = bodies
        .iter()
        .map(|(id, body)| OutgoingMessage::new("e", "k", body.clone()).with_message_id(*id))
        .collect();
    publish(&vhost, &messages).await;
    wait_for("all settled", Duration::from_secs(10), || {
        let s = consumer.stats();
        s.handled == 2 && s.dead_lettered == 6
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.retries, 0, "a decode error is permanent");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                OrderCreated {
                    id: 1,
                    customer: "a".into()
                },
                "good-1".to_owned()
            ),
            (
                OrderCreated {
                    id: 2,
                    customer: "b".into()
                },
                "good-2".to_owned()
            ),
        ]
    );
    let dead: HashMap<String, (String, Option<i64>, Vec<u8>)> = raw
        .drain(&sub.dead_letter_queue())
        .await
        .iter()
        .map(|m| {
            (
                eventfold_testkit::message_id(m),
                (
                    header_str(m, HEADER_ERROR).unwrap(),
                    header_int(m, HEADER_ATTEMPTS),
                    m.delivery.data.clone(),
                ),
            )
        })
        .collect();
    assert_eq!(dead.len(), 6, "{dead:?}");
    for (id, body) in &bodies[1..7] {
        let (reason, attempts, kept) = &dead[*id];
        assert_eq!(kept, body, "{id}: the body is kept as it came");
        let (want, want_attempts) = match *id {
            "string-id" => ("invalid type: string \"one\", expected i64", 1),
            "missing-field" => ("missing field `customer`", 1),
            "null" => ("invalid type: null, expected struct OrderCreated", 1),
            "not-utf8" => ("body is not valid JSON: not UTF-8", 0),
            "not-json" => ("body is not valid JSON", 0),
            "oversized" => ("exceeds the limit of 1024 bytes", 0),
            other => unreachable!("{other}"),
        };
        assert!(reason.contains(want), "{id}: {reason}");
        assert_eq!(*attempts, Some(want_attempts), "{id}: {reason}");
        if want_attempts == 1 {
            assert!(
                reason.contains("body does not decode as") && reason.contains("OrderCreated"),
                "{id}: {reason}"
            );
        }
    }
    assert_eq!(raw.settled_count("q").await, 0, "everything was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acks_what_was_handled_and_leaves_the_rest_queued() {
    let vhost = TestVhost::new();
    let sub = Subscription::new("e", "#", "q");
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let options = ConsumerOptions {
        workers: 2,
        prefetch: 20,
        key: OrderKey::None,
        ..Default::default()
    };
    let consumer = {
        let handled = handled.clone();
        start(&vhost, &sub, options, move |m| {
            let handled = handled.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                handled
                    .lock()
                    .unwrap()
                    .insert(m.message_id.clone().unwrap());
                Ok(())
            }
        })
        .await
    };
    let total = 300;
    let messages: Vec<_> = (0..total)
        .map(|i| OutgoingMessage::new("e", "k", "{}").with_message_id(i.to_string()))
        .collect();
    publish(&vhost, &messages).await;
    wait_for("some handled", Duration::from_secs(10), || {
        handled.lock().unwrap().len() >= 40
    })
    .await;
    let stats: ConsumerStats = consumer.shutdown().await.unwrap();
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        stats.handled as usize,
        handled.len(),
        "every handled message was acked"
    );
    assert!(
        handled.len() < total,
        "shutdown came too late to test anything"
    );

    let raw = vhost.raw().await;
    let rest = raw.drain("q").await;
    assert_eq!(
        rest.len() + handled.len(),
        total,
        "nothing lost, nothing acked twice"
    );
    for m in &rest {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        assert!(
            !handled.contains(&id),
            "message {id} was handled but left unacked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_stops_the_consumer_with_unavailable() {
    let vhost = TestVhost::new();
    let sub = Subscription::new("e", "#", "q");
    let consumer = start(&vhost, &sub, ConsumerOptions::default(), |_m| async {
        Ok(())
    })
    .await;
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "close_all_connections",
            "-p",
            &vhost.name,
            "test: broker gone",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let why = tokio::time::timeout(Duration::from_secs(10), consumer.stopped())
        .await
        .expect("the consumer noticed the lost connection");
    match why {
        Some(e) => assert!(e.is_unavailable(), "{e:?}"),
        None => panic!("the consumer stopped without an error"),
    }
    assert!(consumer.shutdown().await.is_ok());
}
