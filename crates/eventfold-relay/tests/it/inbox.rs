//! The inbox: one effect per message id, on SQLite (a row through portable SQL) and in
//! memory (an `on_commit` counter), against a real broker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_amqp::{
    ConfirmedPublisher, Consumer, ConsumerOptions, ExchangeKind, Handler, HandlerError,
    IncomingMessage, OrderKey, Outcome, OutgoingMessage, PublisherOptions, RetryPolicy,
    Subscription, HEADER_ERROR,
};
use eventfold_core::{InMemoryStore, SqlValue, Store, TrackingReader};
use eventfold_relay::inbox::{is_inbox_follower, Inbox, InboxFuture, Processed, NO_MESSAGE_ID};
use eventfold_relay::InboxStats;
use eventfold_sqlite::{SqliteConfig, SqliteStore};

use crate::support::*;

const T: Duration = Duration::from_secs(15);
const EXCHANGE: &str = "inbox.events";
const QUEUE: &str = "inbox-tests.things";

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("inbox.db"))).unwrap();
    (dir, Arc::new(store))
}

async fn create_effects_table(store: &dyn Store) {
    let mut tx = store.begin().await.unwrap();
    // No unique key: a second application would be a second row.
    tx.execute(
        "CREATE TABLE effects (message_id TEXT NOT NULL, body TEXT NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Rows of `effects` per message id.
async fn effects(store: &dyn Store) -> BTreeMap<String, i64> {
    let mut tx = store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT message_id, COUNT(*) FROM effects GROUP BY message_id ORDER BY message_id",
            &[],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.into_iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap()))
        .collect()
}

/// The handler of the SQLite tests: one row per application.
fn insert_row(
    tx: &mut eventfold_core::Transaction,
    message: Arc<IncomingMessage>,
) -> InboxFuture<'_> {
    Box::pin(async move {
        tx.execute(
            "INSERT INTO effects (message_id, body) VALUES ($1, $2)",
            &[
                SqlValue::from(message.message_id.clone()),
                SqlValue::from(String::from_utf8_lossy(&message.body).into_owned()),
            ],
        )
        .await
        .map_err(HandlerError::new)?;
        Ok(())
    })
}

fn message(id: Option<&str>, n: i64) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(EXCHANGE, "thing", serde_json::json!({ "n": n }).to_string())
        .with_content_type("application/json");
    m.message_id = id.map(str::to_owned);
    m
}

async fn publish(vhost: &TestVhost, messages: &[OutgoingMessage]) {
    let publisher = ConfirmedPublisher::connect(vhost.config(), PublisherOptions::default())
        .await
        .unwrap();
    publisher
        .declare_exchange(EXCHANGE, ExchangeKind::Topic)
        .await
        .unwrap();
    for outcome in publisher.publish_all(messages).await {
        assert_eq!(outcome.unwrap(), Outcome::Confirmed);
    }
    publisher.close().await.unwrap();
}

fn options() -> ConsumerOptions {
    ConsumerOptions {
        workers: 2,
        key: OrderKey::None,
        retry: RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        },
        ..Default::default()
    }
}

fn subscription() -> Subscription {
    Subscription::new(EXCHANGE, "thing", QUEUE)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(applied: u64, duplicates: u64, failed: u64) -> InboxStats {
    let mut s = InboxStats::default();
    s.applied = applied;
    s.duplicates = duplicates;
    s.failed = failed;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_same_message_id_twice_is_applied_once_and_no_id_is_dead_lettered() {
    let vhost = TestVhost::new();
    let (_dir, store) = sqlite();
    create_effects_table(&*store).await;
    let inbox = Inbox::new(store.clone(), "things").unwrap();
    let consumer = Consumer::start(
        vhost.config(),
        subscription(),
        options(),
        inbox.handler(insert_row),
    )
    .await
    .unwrap();
    publish(
        &vhost,
        &[
            message(Some("m-1"), 1),
            message(Some("m-2"), 2),
            message(Some("m-1"), 1),
            message(None, 3),
            message(Some("m-1"), 1),
        ],
    )
    .await;
    wait_for("5 messages", || {
        let s = consumer.stats();
        s.handled + s.dead_lettered == 5
    })
    .await;
    let s = consumer.shutdown().await.unwrap();
    assert_eq!((s.handled, s.dead_lettered, s.retries), (4, 1, 0));
    assert_eq!(
        effects(&*store).await,
        BTreeMap::from([("m-1".to_owned(), 1), ("m-2".to_owned(), 1)])
    );
    assert_eq!(inbox.stats(), stats(2, 2, 1));
    assert!(inbox.is_applied("m-1").await.unwrap());
    assert!(!inbox.is_applied("m-3").await.unwrap());

    let dead = vhost
        .raw()
        .await
        .drain(&subscription().dead_letter_queue())
        .await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers
            .inner()
            .get(HEADER_ERROR)
            .unwrap()
            .as_long_string()
            .unwrap()
            .to_string(),
        NO_MESSAGE_ID
    );

    // The marks are followers a tool can tell apart.
    let followers = store.followers().await.unwrap();
    let names: Vec<_> = followers.iter().map(|t| t.follower.as_str()).collect();
    assert_eq!(
        names,
        ["eventfold.inbox/things/m-1", "eventfold.inbox/things/m-2"]
    );
    assert!(names
        .iter()
        .all(|n| is_inbox_follower(n) && n.starts_with(inbox.prefix())));
    assert!(!is_inbox_follower("r1"));

    // Pruning by name range, as the module docs show.
    let mut tx = store.begin().await.unwrap();
    let pruned = tx
        .execute(
            "DELETE FROM tracking WHERE follower >= $1 AND follower < $2",
            &[
                SqlValue::from("eventfold.inbox/things/"),
                SqlValue::from("eventfold.inbox/things0"),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pruned, 2);
    assert!(store.followers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_handler_failing_once_then_succeeding_is_applied_once() {
    let vhost = TestVhost::new();
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let inbox = Inbox::new(store.clone(), "counter").unwrap();
    let applied: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let runs = Arc::new(AtomicU64::new(0));
    let handler = {
        let applied = applied.clone();
        let runs = runs.clone();
        inbox.handler(move |tx, message| {
            let applied = applied.clone();
            let run = runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let id = message.message_id.clone().unwrap();
                // Staged, then dropped with the failed transaction: never counted.
                tx.on_commit(move || *applied.lock().unwrap().entry(id).or_default() += 1);
                if run == 0 {
                    return Err(HandlerError::new("the first run fails"));
                }
                Ok(())
            })
        })
    };
    // One worker: the failing message is the first run, and its retry comes before the
    // duplicate.
    let consumer = Consumer::start(
        vhost.config(),
        subscription(),
        ConsumerOptions {
            workers: 1,
            ..options()
        },
        handler,
    )
    .await
    .unwrap();
    publish(
        &vhost,
        &[
            message(Some("a"), 1),
            message(Some("a"), 1),
            message(Some("b"), 2),
        ],
    )
    .await;
    wait_for("3 messages", || consumer.stats().handled == 3).await;
    let s = consumer.shutdown().await.unwrap();
    assert_eq!((s.handled, s.retries, s.dead_lettered), (3, 1, 0));
    assert_eq!(
        *applied.lock().unwrap(),
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)])
    );
    // a: failed, applied; a again: duplicate (the handler did not run); b: applied.
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(inbox.stats(), stats(2, 1, 1));
}

fn incoming(id: &str, redelivered: bool) -> Arc<IncomingMessage> {
    Arc::new(IncomingMessage {
        exchange: EXCHANGE.to_owned(),
        routing_key: "thing".to_owned(),
        redelivered,
        message_id: Some(id.to_owned()),
        correlation_id: None,
        content_type: Some("application/json".to_owned()),
        content_encoding: None,
        kind: None,
        timestamp: None,
        headers: Default::default(),
        body: br#"{"n":1}"#.to_vec(),
    })
}

#[tokio::test]
async fn memory_the_adapter_called_twice_with_one_message_applies_it_once() {
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let inbox = Inbox::new(store.clone(), "direct").unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let f = counting(count.clone());
    assert_eq!(
        inbox.apply(incoming("x", false), &f).await,
        Ok(Processed::Applied)
    );
    // The delivery again (the consumer crashed before its ack), through the Handler.
    let handler = inbox.handler(f);
    Handler::handle(&handler, incoming("x", true))
        .await
        .unwrap();
    assert_eq!(
        inbox.apply(incoming("x", true), &f_noop()).await,
        Ok(Processed::Duplicate)
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(inbox.stats(), stats(1, 2, 0));

    // Another consumer's inbox is another scope.
    let other = Inbox::new(store.clone(), "other").unwrap();
    assert_eq!(
        other.apply(incoming("x", false), &f_noop()).await,
        Ok(Processed::Applied)
    );

    // No message id, an empty one: permanent failures, nothing marked.
    let mut no_id = (*incoming("x", false)).clone();
    no_id.message_id = None;
    let e = inbox
        .apply(Arc::new(no_id.clone()), &f_noop())
        .await
        .unwrap_err();
    assert!(e.permanent);
    assert_eq!(e.reason, NO_MESSAGE_ID);
    no_id.message_id = Some(String::new());
    assert!(
        inbox
            .apply(Arc::new(no_id), &f_noop())
            .await
            .unwrap_err()
            .permanent
    );
    assert_eq!(store.followers().await.unwrap().len(), 2);

    assert!(Inbox::new(store.clone(), "a/b").is_err());
    assert!(Inbox::new(store, "").is_err());
}

fn f_noop(
) -> impl for<'a> Fn(&'a mut eventfold_core::Transaction, Arc<IncomingMessage>) -> InboxFuture<'a> {
    |_tx, _m| Box::pin(async { Ok(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_between_commit_and_ack_redelivers_and_is_not_applied_again() {
    let vhost = TestVhost::new();
    let (_dir, store) = sqlite();
    create_effects_table(&*store).await;
    let inbox = Inbox::new(store.clone(), "crashy").unwrap();

    // The first consumer connects through a proxy; its handler commits, then hangs before
    // returning (so before the ack) until its connection is cut: a crash after the commit.
    let proxy = Proxy::start().await;
    let committed = Arc::new(AtomicU64::new(0));
    let crashing = {
        let inner = Arc::new(inbox.handler(insert_row));
        let committed = committed.clone();
        move |m: Arc<IncomingMessage>| {
            let inner = inner.clone();
            let committed = committed.clone();
            async move {
                inner.handle(m).await?;
                committed.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    };
    let config = eventfold_amqp::AmqpConfig::from_url(&vhost.url_via(&proxy.addr)).unwrap();
    let first = Consumer::start(config, subscription(), options(), crashing)
        .await
        .unwrap();
    publish(&vhost, &[message(Some("m-1"), 1)]).await;
    wait_for("the commit", || committed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(first.stats().handled, 0, "not acked");
    proxy.sever();

    // The broker redelivers it to the next consumer: a duplicate, acked, not applied.
    let redelivered = Arc::new(Mutex::new(Vec::new()));
    let second = {
        let inner = Arc::new(inbox.handler(insert_row));
        let redelivered = redelivered.clone();
        move |m: Arc<IncomingMessage>| {
            let inner = inner.clone();
            redelivered.lock().unwrap().push(m.redelivered);
            async move { inner.handle(m).await }
        }
    };
    let second = Consumer::start(vhost.config(), subscription(), options(), second)
        .await
        .unwrap();
    wait_for("the redelivery", || second.stats().handled == 1).await;
    let s = second.shutdown().await.unwrap();
    assert_eq!((s.handled, s.retries, s.dead_lettered), (1, 0, 0));
    assert_eq!(*redelivered.lock().unwrap(), [true]);
    assert_eq!(
        effects(&*store).await,
        BTreeMap::from([("m-1".to_owned(), 1)])
    );
    assert_eq!(inbox.stats(), stats(1, 1, 0));
    assert_eq!(vhost.raw().await.count(QUEUE).await, 0);
    // The first consumer's worker hangs for ever: leave it to the runtime's shutdown.
    drop(first);
}

/// A handler counting its applications with an `on_commit` effect.
fn counting(
    count: Arc<AtomicU64>,
) -> impl for<'a> Fn(&'a mut eventfold_core::Transaction, Arc<IncomingMessage>) -> InboxFuture<'a>
       + Send
       + Sync
       + 'static {
    move |tx, _m| {
        let count = count.clone();
        Box::pin(async move {
            tx.on_commit(move || {
                count.fetch_add(1, Ordering::SeqCst);
            });
            Ok(())
        })
    }
}
