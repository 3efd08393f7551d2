//! The wire format against the real django-cqrs 3.1.0, not against captures of it: a
//! `manage.py cqrs_consume` replica applies bodies eventfold's wire module writes (saves,
//! deletes, syncs, stale and skipped revisions), and the bodies a django-cqrs master
//! publishes (saves, deletes, `cqrs_sync`) read and write back byte for byte.
//! (`replication` runs eventfold's master, relay and replica against it.)
//! The projects are in `tests/django/`; the interpreter is
//! [`eventfold_testkit::interop_python`]: without it the tests fail, they do not skip.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_amqp::{
    AmqpConfig, ConfirmedPublisher, ExchangeKind, Outcome, OutgoingMessage, PublisherOptions,
};
use eventfold_cqrs::wire::{
    dead_letter_queue, parse_datetime, python_datetime, queue_routing_key, routing_key,
    CqrsMessage, SignalType, DEFAULT_EXCHANGE,
};
use eventfold_testkit::TestVhost;
use lapin::message::BasicGetMessage;
use serde_json::{json, Value};

use crate::django::{declare_replica_topology, wait_for, DjangoProject, Side, CQRS_ID, QUEUE};
use crate::items::{rows, stored_updated, Item, ReplicaRow};

pub fn vhost() -> TestVhost {
    // Fails now, before a vhost is made, without the venv.
    eventfold_testkit::interop_python();
    TestVhost::with_prefix("ef-cqrs-test")
}

/// Publishes `messages` through eventfold's publisher: every one confirmed (routed).
pub async fn publish_confirmed(vhost: &TestVhost, messages: &[OutgoingMessage]) {
    let config = AmqpConfig::from_url(&vhost.url())
        .unwrap()
        .with_connection_name("eventfold-cqrs-tests");
    let publisher = ConfirmedPublisher::connect(config, PublisherOptions::default())
        .await
        .unwrap();
    // django-cqrs declares it too: declaring it as eventfold does must agree (durable topic).
    publisher
        .declare_exchange(DEFAULT_EXCHANGE, ExchangeKind::Topic)
        .await
        .unwrap();
    for (i, outcome) in publisher
        .publish_all(messages)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(outcome, Ok(Outcome::Confirmed), "message {i}");
    }
    publisher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_replica_applies_our_saves_deletes_and_syncs() {
    let vhost = vhost();
    let raw = vhost.raw().await;
    let replica = DjangoProject::migrated(Side::Replica, &vhost).await;
    let mut consumer = replica.spawn(&["cqrs_consume", "--workers", "1"]);
    consumer.wait_consuming(&raw, QUEUE).await;

    let t0: DateTime<Utc> = "2026-12-01T09:00:00.250001Z".parse().unwrap();
    let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
    let names = [
        "plain",
        "caf\u{e9}/cr\u{e8}me \u{2615} \u{1F980}",
        "\"quoted\"\n\\",
        "four",
        "five",
        "six",
    ];
    let mut items: Vec<Item> = (1..=6)
        .map(|id| Item::new(id, names[id as usize - 1], at(id)))
        .collect();
    // (message, routing key) in publishing order, and what the replica must end with.
    let mut sent: Vec<(CqrsMessage, String)> = Vec::new();
    let to_all = routing_key(CQRS_ID);
    let to_replica = queue_routing_key(QUEUE, CQRS_ID);
    for item in &items {
        sent.push((item.message(SignalType::Save), to_all.clone()));
    }
    // A whole second, which `str(datetime)` writes without microseconds.
    let whole_second: DateTime<Utc> = "2026-12-01T09:00:05Z".parse().unwrap();
    for item in &mut items {
        item.revision = 1;
        item.qty *= 10;
        item.price = format!("1{}.50", item.id);
        item.updated = if item.id == 1 {
            whole_second
        } else {
            at(100 + item.id)
        };
        sent.push((item.message(SignalType::Save), to_all.clone()));
    }
    // Deletes.
    for id in [2, 5] {
        sent.push((items[id - 1].delete(at(200)), to_all.clone()));
    }
    // A SYNC at the stored revision, aimed at this replica: applied all the same.
    items[2].name = "synced".into();
    items[2].updated = at(300);
    sent.push((items[2].message(SignalType::Sync), to_replica.clone()));
    // A stale SAVE (revision 0 after 1): acked, not applied.
    let mut stale = items[3].clone();
    stale.revision = 0;
    stale.name = "stale".into();
    sent.push((stale.message(SignalType::Save), to_all.clone()));
    // A SAVE two revisions ahead (one lost or filtered out on the master): applied.
    items[5].revision = 3;
    items[5].qty = 6000;
    items[5].updated = at(400);
    sent.push((items[5].message(SignalType::Save), to_all.clone()));
    // Last: the replica consumes in order with one worker, so once this row is there the
    // replica has handled every message before it.
    let sentinel = Item::new(100, "sentinel", at(500));
    sent.push((sentinel.message(SignalType::Save), to_all.clone()));

    let messages: Vec<_> = sent
        .iter()
        .map(|(m, key)| m.to_message(DEFAULT_EXCHANGE, key))
        .collect();
    publish_confirmed(&vhost, &messages).await;

    let database = replica.database();
    let rows = wait_for(
        "the sentinel row",
        Duration::from_secs(30),
        || {
            let rows = rows(&database, "replica_item");
            rows.contains_key(&sentinel.id).then_some(rows)
        },
        || {
            format!(
                "{:?}\n{}",
                rows(&database, "replica_item"),
                consumer.output()
            )
        },
    )
    .await;
    let expected: BTreeMap<i64, ReplicaRow> = items
        .iter()
        .filter(|i| ![2, 5].contains(&i.id))
        .chain([&sentinel])
        .map(|i| (i.id, i.replica_row()))
        .collect();
    assert_eq!(rows, expected, "{}", consumer.output());
    // Python's str() of a whole second has no fraction.
    assert_eq!(
        stored_updated(&database, "replica_item", 1),
        "2026-12-01 09:00:05"
    );
    consumer.assert_running();
    drop(consumer);
    // Nothing was retried or dead-lettered.
    assert_eq!(raw.settled_count(QUEUE).await, 0);
    assert_eq!(raw.settled_count(&dead_letter_queue(QUEUE)).await, 0);
}

fn header_names(m: &BasicGetMessage) -> Vec<String> {
    m.delivery
        .properties
        .headers()
        .as_ref()
        .map(|t| t.inner().keys().map(|k| k.to_string()).collect())
        .unwrap_or_default()
}

/// What the master must have published, in order.
struct Published {
    signal: SignalType,
    pk: i64,
    revision: i64,
    key: String,
    /// The name, where the test set one (the first item's is checked on its own).
    name: Option<&'static str>,
    /// The tracked field's value (none in a DELETE).
    qty: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_master_bodies_read_and_write_back_byte_for_byte() {
    let vhost = vhost();
    let raw = vhost.raw().await;
    // django-cqrs publishes without confirms: the queue must exist first, as eventfold's
    // replica consumer declares it.
    declare_replica_topology(&raw).await;
    let master = DjangoProject::migrated(Side::Master, &vhost).await;

    let created = master
        .interop_writes(json!([
            {"create": {"name": "caf\u{e9}/cr\u{e8}me \u{2615} \u{1F980}", "qty": 1,
                        "price": "9.99", "description": "first\n\"quoted\" \\ </tag>"}},
            {"create": {"name": "second", "qty": 2, "price": "20.00"}},
            {"create": {"name": "third", "qty": 3}},
        ]))
        .await;
    let [a, b, c] = created[..] else {
        panic!("{created:?}")
    };
    master
        .interop_writes(json!([
            {"update": a, "set": {"qty": 11}},
            {"update": a, "set": {"qty": 12, "description": "twice"}},
            {"update": b, "set": {"name": "second, renamed"}},
            {"delete": c},
        ]))
        .await;
    let filter = json!({"id__in": [a, b]}).to_string();
    let out = master
        .manage(&["cqrs_sync", "--cqrs-id", CQRS_ID, "--filter", &filter])
        .await;
    assert!(out.contains("2 instance(s) synced"), "{out}");
    let filter = json!({"id": a}).to_string();
    let out = master
        .manage(&[
            "cqrs_sync",
            "--cqrs-id",
            CQRS_ID,
            "--filter",
            &filter,
            "--queue",
            QUEUE,
        ])
        .await;
    assert!(out.contains("1 instance(s) synced"), "{out}");

    let to_all = routing_key(CQRS_ID);
    let to_replica = queue_routing_key(QUEUE, CQRS_ID);
    let expect = |signal, pk, revision, key: &str, name: Option<&'static str>, qty| Published {
        signal,
        pk,
        revision,
        key: key.to_owned(),
        name,
        qty,
    };
    use SignalType::{Delete, Save, Sync};
    let expected = [
        expect(Save, a, 0, &to_all, None, Some(1)),
        expect(Save, b, 0, &to_all, Some("second"), Some(2)),
        expect(Save, c, 0, &to_all, Some("third"), Some(3)),
        expect(Save, a, 1, &to_all, None, Some(11)),
        expect(Save, a, 2, &to_all, None, Some(12)),
        expect(Save, b, 1, &to_all, Some("second, renamed"), Some(2)),
        expect(Delete, c, 1, &to_all, None, None),
        expect(Sync, a, 2, &to_all, None, Some(12)),
        expect(Sync, b, 1, &to_all, Some("second, renamed"), Some(2)),
        expect(Sync, a, 2, &to_replica, None, Some(12)),
    ];
    raw.wait_count(QUEUE, expected.len() as u32, Duration::from_secs(10))
        .await;
    let received = raw.drain(QUEUE).await;
    assert_eq!(received.len(), expected.len());

    let now = Utc::now();
    let mut previous_qty: BTreeMap<i64, i64> = BTreeMap::new();
    for (i, (m, want)) in received.iter().zip(&expected).enumerate() {
        let Published {
            signal,
            pk,
            revision,
            key,
            name,
            qty,
        } = want;
        let body = &m.delivery.data;
        let text = String::from_utf8_lossy(body);
        let message = CqrsMessage::from_body(body).unwrap_or_else(|e| panic!("#{i}: {e}: {text}"));
        assert_eq!(message.to_body(), *body, "#{i}: written back byte for byte");
        assert_eq!(m.delivery.exchange.as_str(), DEFAULT_EXCHANGE, "#{i}");
        assert_eq!(m.delivery.routing_key.as_str(), key, "#{i}");
        let properties = &m.delivery.properties;
        assert_eq!(
            properties.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain"),
            "#{i}"
        );
        assert_eq!(*properties.delivery_mode(), Some(2), "#{i}");
        assert!(header_names(m).is_empty(), "#{i}: no headers");

        assert_eq!(
            (message.signal_type, message.instance_pk.as_i64()),
            (*signal, Some(*pk)),
            "#{i}: {text}"
        );
        assert_eq!(message.revision(), Some(*revision), "#{i}: {text}");
        assert_eq!(message.cqrs_id, CQRS_ID);
        assert_eq!(message.retries, 0);
        // Stamped now + CQRS_MESSAGE_TTL (one day), to the second.
        let ttl = message.expires.unwrap() - now;
        assert!(
            (ttl - chrono::Duration::days(1)).num_seconds().abs() < 300,
            "#{i}: {text}"
        );
        let updated = message.instance_data["cqrs_updated"].as_str().unwrap();
        assert_eq!(
            python_datetime(&parse_datetime(updated).unwrap()),
            updated,
            "#{i}"
        );
        assert_eq!(
            message.meta,
            Some(json!({"origin": "interop-master", "signal": signal.as_str()})),
            "#{i}"
        );
        match signal {
            SignalType::Delete => {
                let keys: Vec<&str> = message.instance_data.keys().map(|k| k.as_str()).collect();
                assert_eq!(keys, ["id", "cqrs_revision", "cqrs_updated"], "#{i}");
                assert_eq!(message.previous_data, None, "#{i}");
            }
            _ => {
                let data = &message.instance_data;
                let keys: Vec<&str> = data.keys().map(|k| k.as_str()).collect();
                assert_eq!(
                    keys,
                    [
                        "id",
                        "cqrs_revision",
                        "cqrs_updated",
                        "name",
                        "qty",
                        "price",
                        "description",
                        "created"
                    ],
                    "#{i}"
                );
                assert_eq!(data["id"], json!(pk), "#{i}");
                if let Some(name) = name {
                    assert_eq!(data["name"], json!(name), "#{i}");
                }
                assert_eq!(data["qty"], json!(qty.unwrap()), "#{i}");
                // The tracked field's value before this save (a sync saves nothing).
                let before = previous_qty.insert(*pk, qty.unwrap());
                if *signal == SignalType::Save {
                    let previous = message.previous_data.as_ref().unwrap_or_else(|| {
                        panic!("#{i}: a save of a tracked model has previous_data: {text}")
                    });
                    match before {
                        None => assert_eq!(previous.get("qty"), Some(&Value::Null), "#{i}"),
                        Some(b) if b != qty.unwrap() => {
                            assert_eq!(previous.get("qty"), Some(&json!(b)), "#{i}")
                        }
                        Some(_) => assert_eq!(previous.get("qty"), None, "#{i}: unchanged"),
                    }
                }
            }
        }
    }
    // The first item's strings went through ujson's escapes and back.
    let first = CqrsMessage::from_body(&received[0].delivery.data).unwrap();
    assert_eq!(
        first.instance_data["name"],
        json!("caf\u{e9}/cr\u{e8}me \u{2615} \u{1F980}")
    );
    assert_eq!(
        first.instance_data["description"],
        json!("first\n\"quoted\" \\ </tag>")
    );
    // A DecimalField travels as the caller set it (a string) on the create, and as a JSON
    // number once the row was read back from the database (the update of a fetched row).
    assert_eq!(first.instance_data["price"], json!("9.99"));
    let update = CqrsMessage::from_body(&received[3].delivery.data).unwrap();
    assert_eq!(update.instance_data["price"], json!(9.99));
    let raw_first = String::from_utf8(received[0].delivery.data.clone()).unwrap();
    assert!(raw_first.is_ascii(), "{raw_first}");
    assert!(raw_first.contains(r"<\/tag>"), "{raw_first}");
}
