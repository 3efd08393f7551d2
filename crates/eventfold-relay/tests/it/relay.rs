use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eventfold_core::{InMemoryStore, NotificationQuery, Store};
use eventfold_relay::{NamekoChanges, Relay, Unroutable, PARKED_TOPIC};
use eventfold_sqlite::{SqliteConfig, SqliteStore};

use crate::support::*;

const T: Duration = Duration::from_secs(15);
const Q: &str = "evt-orders-order__created--tests.on_created";

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("log.db"))).unwrap();
    (dir, Arc::new(store))
}

async fn bodies(store: &dyn Store) -> Vec<(u64, Vec<u8>)> {
    store
        .select_notifications(&NotificationQuery::after(0, 10_000))
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.event.topic == "orders.order__created")
        .map(|n| (n.id, n.event.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_records_are_published_in_log_order_byte_identical_with_ids_from_positions() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let (_dir, store) = sqlite();
    let ids = save_orders(&*store, 1..51).await;
    let running = Running::start(relay(store.clone(), &vhost.url(), "r1").build());
    // Saves while it runs are picked up by wake-ups.
    let more = save_orders(&*store, 51..61).await;
    assert_eq!(raw.wait_at_least(Q, 60, T).await, 60);
    wait_position(&*store, "r1", *more.last().unwrap(), T).await;
    let got = raw.drain(Q).await;
    let expected = bodies(&*store).await;
    assert_eq!(got.len(), expected.len());
    for (m, (id, body)) in got.iter().zip(&expected) {
        assert_eq!(message_id(m), format!("r1:{id}"));
        assert_eq!(&m.delivery.data, body, "byte-identical body");
        assert_eq!(m.delivery.routing_key.as_str(), "order__created");
        let p = &m.delivery.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "utf-8");
        assert_eq!(*p.delivery_mode(), Some(2));
    }
    assert!(ids
        .iter()
        .chain(&more)
        .eq(expected.iter().map(|(id, _)| id)));
    let metrics = running.relay.metrics();
    assert_eq!(metrics.confirmed, 60);
    assert!(metrics.leader);
    // One connection for the lock and the publishes, as the broker sees it too.
    assert_eq!(metrics.connections_opened, 1, "{metrics:?}");
    assert_eq!(
        relay_connections(&vhost, "r1"),
        ["eventfold-relay-r1/relay"]
    );
    assert_eq!(
        vhost.exclusive_owner(&lock_queue("r1")).as_deref(),
        Some("eventfold-relay-r1/relay")
    );
    running.stop().await;
    assert_eq!(vhost.exclusive_owner(&lock_queue("r1")), None, "released");
    let status = Relay::status(&*store, "r1").await.unwrap();
    assert_eq!(status.position, status.head);
    assert_eq!(status.lag_records, 0);
    assert_eq!(status.parked, 0);
    assert!(status.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_is_declared_unroutable_is_parked_and_republished_nothing_lost() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let parked_ids = save_orders(&*store, 1..21).await;
    let running = Running::start(relay(store.clone(), &vhost.url(), "r2").build());
    // No exchange, no queue: the relay declares the exchange, the broker returns all 20.
    let head = *parked_ids.last().unwrap();
    wait_position(&*store, "r2", head, T).await;
    let status = Relay::status(&*store, "r2").await.unwrap();
    assert_eq!(status.parked, 20);
    let parked = eventfold_relay::parked_messages(&*store, "r2")
        .await
        .unwrap();
    assert_eq!(
        parked
            .iter()
            .map(|(_, p)| p.notification_id)
            .collect::<Vec<_>>(),
        parked_ids
    );
    assert_eq!(parked[0].1.exchange, "orders.events");
    assert_eq!(parked[0].1.routing_key, "order__created");
    assert!(parked[0].1.reason.contains("312"), "{}", parked[0].1.reason);
    let log = store
        .select_notifications(&NotificationQuery::after(0, 1000).topics([PARKED_TOPIC]))
        .await
        .unwrap();
    assert_eq!(log.len(), 20, "parked records are in the log");
    assert_eq!(running.relay.metrics().parked, 20);

    // A consumer binds its queue (the exchange exists: the relay declared it): new saves
    // are delivered, and the parked ones are re-published on request.
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let new_ids = save_orders(&*store, 21..31).await;
    assert_eq!(raw.wait_at_least(Q, 10, T).await, 10);
    let report = Relay::republish_parked(&*store, vhost.config(), "r2")
        .await
        .unwrap();
    assert_eq!(report.republished, 20);
    assert_eq!(raw.wait_at_least(Q, 30, T).await, 30);
    let got: BTreeSet<String> = raw.drain(Q).await.iter().map(message_id).collect();
    let all: BTreeSet<String> = parked_ids
        .iter()
        .chain(&new_ids)
        .map(|id| format!("r2:{id}"))
        .collect();
    assert_eq!(got, all, "0 lost");
    running.stop().await;
    assert_eq!(Relay::status(&*store, "r2").await.unwrap().parked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_publishes_only_what_is_left() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let (_dir, store) = sqlite();
    let first = save_orders(&*store, 1..11).await;
    let running = Running::start(relay(store.clone(), &vhost.url(), "r3").build());
    wait_position(&*store, "r3", *first.last().unwrap(), T).await;
    running.stop().await;
    let second = save_orders(&*store, 11..21).await;
    let running = Running::start(relay(store.clone(), &vhost.url(), "r3").build());
    wait_position(&*store, "r3", *second.last().unwrap(), T).await;
    assert_eq!(raw.wait_at_least(Q, 20, T).await, 20);
    assert_eq!(running.relay.metrics().published, 10);
    running.stop().await;
    let got: Vec<String> = raw.drain(Q).await.iter().map(message_id).collect();
    let want: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|id| format!("r3:{id}"))
        .collect();
    assert_eq!(got, want);
}

/// Every id of `want` is in `got`, first occurrences in order; duplicates only re-send ids.
fn assert_all_once_in_order(got: &[String], want: &[String]) {
    let mut seen = BTreeSet::new();
    let firsts: Vec<&String> = got.iter().filter(|id| seen.insert((*id).clone())).collect();
    assert_eq!(firsts.len(), want.len(), "lost messages");
    assert!(
        firsts.iter().zip(want).all(|(a, b)| *a == b),
        "out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_batch_loses_nothing_and_duplicates_keep_their_ids() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let ids = save_orders(&*store, 1..2001).await;
    let proxy = Proxy::start().await;
    let running = Running::start(
        relay(store.clone(), &vhost.url_via(&proxy.addr), "r4")
            .batch_size(2000)
            .window(4)
            .build(),
    );
    // Cut the connections while the one batch of 2000 is being published.
    while raw.count(Q).await < 100 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.sever();
    let at_cut = raw.count(Q).await;
    assert!(at_cut < 2000, "the cut came after the batch ({at_cut})");
    // At most the confirmed prefix of the batch was recorded.
    let position = store.tracking_position("r4").await.unwrap().unwrap_or(0);
    assert!(position < *ids.last().unwrap(), "mid-batch: {position}");
    wait_position(&*store, "r4", *ids.last().unwrap(), Duration::from_secs(30)).await;
    raw.wait_at_least(Q, 2000, T).await;
    let got: Vec<String> = raw.drain(Q).await.iter().map(message_id).collect();
    let want: Vec<String> = ids.iter().map(|id| format!("r4:{id}")).collect();
    assert_all_once_in_order(&got, &want);
    let metrics = running.relay.metrics();
    eprintln!(
        "{} received for 2000 (cut at {at_cut}): {metrics:?}",
        got.len()
    );
    assert!(
        metrics.published > 2000,
        "the unconfirmed rest was published again: {metrics:?}"
    );
    assert!(metrics.reconnects >= 1, "{metrics:?}");
    assert!(metrics.connections_opened >= 2, "{metrics:?}");
    let status = Relay::status(&*store, "r4").await.unwrap();
    let err = status.last_error.expect("the outage is recorded");
    assert!(!err.ongoing, "{err:?}");
    // The new connection took the lock again, and it is the relay's only one.
    assert_eq!(
        relay_connections(&vhost, "r4"),
        ["eventfold-relay-r4/relay"]
    );
    assert_eq!(
        vhost.exclusive_owner(&lock_queue("r4")).as_deref(),
        Some("eventfold-relay-r4/relay")
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_relay_takes_the_lock_again_before_it_publishes() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let mut ids = save_orders(&*store, 1..51).await;
    let proxy = Proxy::start().await;
    let running = Running::start(relay(store.clone(), &vhost.url_via(&proxy.addr), "r7").build());
    wait_position(&*store, "r7", *ids.last().unwrap(), T).await;
    let before = running.relay.metrics();
    assert_eq!(before.connections_opened, 1, "{before:?}");

    // The relay's connection dies and the broker stays out of its reach; meanwhile another
    // process takes the lock.
    proxy.refuse(true);
    proxy.sever();
    let thief = vhost.raw().await;
    let start = std::time::Instant::now();
    while !thief.try_exclusive(&lock_queue("r7")).await {
        assert!(start.elapsed() < T, "the lock was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let later = save_orders(&*store, 51..81).await;
    ids.extend(&later);
    proxy.refuse(false);
    // The relay reconnects, finds the lock taken: standby, and publishes nothing.
    wait_until("standby", T, || running.relay.metrics().standby).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let standby = running.relay.metrics();
    assert!(!standby.leader, "{standby:?}");
    assert!(standby.reconnects >= 1, "{standby:?}");
    assert_eq!(
        standby.published, before.published,
        "published without the lock"
    );
    assert_eq!(raw.count(Q).await, 50);
    assert_eq!(store.tracking_position("r7").await.unwrap(), Some(ids[49]));

    // The other process goes: the relay takes the lock on its connection and goes on.
    thief.close().await;
    running.wait_leader(T).await;
    wait_position(&*store, "r7", *ids.last().unwrap(), T).await;
    raw.wait_at_least(Q, 80, T).await;
    let got: Vec<String> = raw.drain(Q).await.iter().map(message_id).collect();
    let want: Vec<String> = ids.iter().map(|id| format!("r7:{id}")).collect();
    assert_eq!(got, want);
    assert_eq!(
        relay_connections(&vhost, "r7"),
        ["eventfold-relay-r7/relay"]
    );
    assert_eq!(
        vhost.exclusive_owner(&lock_queue("r7")).as_deref(),
        Some("eventfold-relay-r7/relay")
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_unroutable_message_keeps_the_position_until_a_queue_is_bound() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let (_dir, store) = sqlite();
    let mut ids = save_orders(&*store, 1..11).await;
    let route = NamekoChanges::new().unroutable(Unroutable::Hold);
    let running = Running::start(relay_with(store.clone(), &vhost.url(), "r8", route).build());
    // No queue: the first message comes back, and again on each retry.
    let held = wait_status(&*store, "r8", T, |s| {
        s.last_error.as_ref().is_some_and(|e| e.ongoing)
    })
    .await;
    let reason = held.last_error.unwrap().reason;
    assert!(
        reason.contains(&format!("held at notification {}", ids[0])),
        "{reason}"
    );
    assert!(reason.contains("312 NO_ROUTE"), "{reason}");
    wait_until("retries", T, || running.relay.metrics().returned >= 12).await;
    assert_eq!(running.relay.current_error().as_deref(), Some(&*reason));
    assert_eq!(store.tracking_position("r8").await.unwrap(), None);
    ids.extend(save_orders(&*store, 11..21).await);
    let status = Relay::status(&*store, "r8").await.unwrap();
    assert_eq!(status.position, 0);
    assert!(status.lag_records >= 20, "{status:?}");
    assert_eq!(status.parked, 0, "held, not parked");

    // A queue is bound: the held message and everything after it arrive, in log order.
    raw.bound_queue(Q, "orders.events", "order__created").await;
    wait_position(&*store, "r8", *ids.last().unwrap(), T).await;
    raw.wait_at_least(Q, 20, T).await;
    let got: Vec<String> = raw.drain(Q).await.iter().map(message_id).collect();
    let want: Vec<String> = ids.iter().map(|id| format!("r8:{id}")).collect();
    assert_eq!(got, want);
    let metrics = running.relay.metrics();
    assert_eq!((metrics.confirmed, metrics.parked), (20, 0), "{metrics:?}");
    running.stop().await;
    let status = Relay::status(&*store, "r8").await.unwrap();
    let last = status.last_error.expect("the hold is recorded");
    assert!(!last.ongoing, "{last:?}");
    assert_eq!(last.reason, reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_are_retried_and_nothing_is_lost_or_reordered_once_there_is_room() {
    const FULL: &str = "orders-full";
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    // Room for 5: the broker nacks what comes after (overflow: reject-publish). A policy,
    // so that the test can lift it.
    vhost.set_queue_policy(
        "room-for-5",
        &format!("^{FULL}$"),
        &serde_json::json!({"max-length": 5, "overflow": "reject-publish"}),
    );
    raw.topic_bound_queue(FULL, "orders.events", "order__created")
        .await;
    let (_dir, store) = sqlite();
    let ids = save_orders(&*store, 1..31).await;
    let running = Running::start(relay(store.clone(), &vhost.url(), "r9").build());
    let stuck = wait_status(&*store, "r9", T, |s| {
        s.last_error.as_ref().is_some_and(|e| e.ongoing)
    })
    .await;
    let reason = stuck.last_error.unwrap().reason;
    assert!(
        reason.contains(&format!("notification {} nacked by the broker", ids[5])),
        "{reason}"
    );
    assert!(reason.contains("reject-publish"), "{reason}");
    // 25 nacked in the batch, then the first nacked one retried alone, with backoff.
    wait_until("retries", T, || running.relay.metrics().nacked >= 25 + 3).await;
    assert_eq!(running.relay.current_error().as_deref(), Some(&*reason));
    assert_eq!(store.tracking_position("r9").await.unwrap(), Some(ids[4]));
    assert_eq!(raw.count(FULL).await, 5);

    // A consumer makes room for 5, while the relay waits to retry: the retried message
    // and the four after it get in, the next one is nacked.
    let mut got: Vec<String> = raw.drain(FULL).await.iter().map(message_id).collect();
    wait_position(&*store, "r9", ids[9], T).await;
    assert_eq!(raw.settled_count(FULL).await, 5);
    assert_eq!(store.tracking_position("r9").await.unwrap(), Some(ids[9]));
    // The limit goes: the rest follows.
    vhost.clear_policy("room-for-5");
    wait_position(&*store, "r9", *ids.last().unwrap(), T).await;
    raw.wait_at_least(FULL, 25, T).await;
    got.extend(raw.drain(FULL).await.iter().map(message_id));
    let want: Vec<String> = ids.iter().map(|id| format!("r9:{id}")).collect();
    assert_eq!(got, want, "every message once, in log order");
    let metrics = running.relay.metrics();
    assert_eq!(metrics.confirmed, 30, "{metrics:?}");
    assert!(metrics.nacked >= 25 + 3 + 20, "{metrics:?}");
    running.stop().await;
    let last = Relay::status(&*store, "r9")
        .await
        .unwrap()
        .last_error
        .expect("the nacks are recorded");
    // One outage per episode of nacks (each ends when the position moves again).
    assert!(!last.ongoing, "{last:?}");
    assert!(
        last.reason
            .contains(&format!("notification {} nacked", ids[10])),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_leader_dies() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    raw.topic_bound_queue(Q, "orders.events", "order__created")
        .await;
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let proxy = Proxy::start().await;
    let leader = Running::start(relay(store.clone(), &vhost.url_via(&proxy.addr), "r5").build());
    leader.wait_leader(T).await;
    let standby = Running::start(relay(store.clone(), &vhost.url(), "r5").build());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!standby.relay.metrics().leader, "only one leader");
    assert!(standby.relay.metrics().standby);
    // Each relay is one connection: the standby retries the lock on its own.
    assert_eq!(standby.relay.metrics().connections_opened, 1);
    assert_eq!(relay_connections(&vhost, "r5").len(), 2);
    let mut ids = save_orders(&*store, 1..201).await;
    raw.wait_at_least(Q, 1, T).await;
    // Kill the leader: its task and its connections, as a crash would.
    leader.task.abort();
    proxy.sever();
    ids.extend(save_orders(&*store, 201..301).await);
    standby.wait_leader(T).await;
    wait_position(&*store, "r5", *ids.last().unwrap(), T).await;
    raw.wait_at_least(Q, 300, T).await;
    let got: Vec<String> = raw.drain(Q).await.iter().map(message_id).collect();
    let want: Vec<String> = ids.iter().map(|id| format!("r5:{id}")).collect();
    assert_all_once_in_order(&got, &want);
    assert!(standby.relay.metrics().published >= 100);
    standby.stop().await;
}

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_password_never_appears_in_a_log_line_or_an_error() {
    // tracing caches each callsite's interest process-wide, computed on the first thread
    // that hits it: a sibling test's thread without a subscriber would cache "never" for
    // the relay's callsites while this test's scoped one is the only dispatcher, and the
    // capture would stay empty. With a global (inert) subscriber too, every thread has one.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let vhost = TestVhost::new();
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    save_orders(&*store, 1..4).await;
    let password = "Sup3r-s3cret-pw";
    let url = format!("amqp://guest:{password}@{HOST}/{}", vhost.name);
    let relay = relay(store.clone(), &url, "r6").build();
    let debug = format!("{relay:?}");
    assert!(!debug.contains(password), "{debug}");
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        relay.run(tokio::time::sleep(Duration::from_millis(1500))),
    )
    .await;
    let err = relay.current_error().expect("access refused is an outage");
    assert!(!err.contains(password), "{err}");
    let status = Relay::status(&*store, "r6").await.unwrap();
    let recorded = status.last_error.expect("recorded in the log");
    assert!(!recorded.reason.contains(password), "{recorded:?}");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("relay stalled"), "{logs}");
    assert!(!logs.contains(password), "{logs}");
    // A bad URL's error does not echo it either.
    let bad = Relay::builder(store, &format!("amqp://guest:{password}@[nope/x"), "r6").unwrap_err();
    assert!(!bad.to_string().contains(password), "{bad}");
}
