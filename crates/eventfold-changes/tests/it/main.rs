//! Change records: names, bodies byte for byte as django-events-sourcing, the caller's
//! transaction, per-instance order, the dispatch switch.

use chrono::{DateTime, TimeZone, Utc};
use eventfold_changes::{event_type, Change, ChangeRecord, Changes, Error, Model, ModelOptions};
use eventfold_core::{
    EventReader, Metadata, NotificationQuery, NotificationReader, Store, StreamQuery,
};
use eventfold_sqlite::{SqliteStore, SqliteTransactionExt};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
struct Order {
    id: i64,
    customer: String,
    qty: i32,
    amount: String,
    note: String,
    #[serde(with = "eventfold_changes::drf::datetime")]
    created: DateTime<Utc>,
    #[serde(skip)]
    status: Option<String>,
}

impl Model for Order {
    const NAME: &'static str = "order";
    fn key(&self) -> String {
        self.id.to_string()
    }
    fn status(&self) -> Option<String> {
        self.status.clone()
    }
}

fn sample() -> Order {
    Order {
        id: 1,
        customer: "sample".into(),
        qty: 3,
        amount: "99.90".into(),
        note: "captured on the wire".into(),
        created: Utc.timestamp_opt(1_795_394_515, 850_687_000).unwrap(),
        status: None,
    }
}

fn store() -> SqliteStore {
    SqliteStore::open_in_memory().unwrap()
}

async fn create_table(store: &SqliteStore) {
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, qty INTEGER NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[test]
fn event_types_follow_django_events_sourcing() {
    assert_eq!(event_type("order", Change::Created, None), "order__created");
    assert_eq!(event_type("order", Change::Updated, None), "order__updated");
    assert_eq!(event_type("order", Change::Deleted, None), "order__deleted");
    assert_eq!(
        event_type("order", Change::Updated, Some("paid")),
        "order__paid"
    );
    assert_eq!(
        event_type("order", Change::Created, Some("new")),
        "order__new"
    );
    assert_eq!(
        event_type("order", Change::Deleted, Some("paid")),
        "order__deleted"
    );
}

#[tokio::test]
async fn the_body_is_byte_for_byte_what_drf_and_kombu_sent() {
    let capture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/nameko_event.json")).unwrap();
    let store = store();
    let changes = Changes::new("orders").register::<Order>();
    let mut tx = store.begin().await.unwrap();
    changes.created(&mut tx, &sample()).await.unwrap();
    tx.commit().await.unwrap();
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    let change = ChangeRecord::of(&log[0]).expect("a change record");
    assert_eq!(
        std::str::from_utf8(change.body).unwrap(),
        capture["body_raw"].as_str().unwrap()
    );
    assert_eq!(
        format!("{}.events", change.service),
        capture["exchange"].as_str().unwrap()
    );
    assert_eq!(change.event_type, capture["routing_key"].as_str().unwrap());
    assert_eq!(change.key, "1");
    assert_eq!(change.model, "order");
}

#[test]
fn python_json_escapes_like_json_dumps() {
    let text = eventfold_amqp::nameko::python_json(&serde_json::json!([
        "café", "😀", "tab\t", 1.5, null, true
    ]))
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&text).unwrap(),
        r#"["caf\u00e9", "\ud83d\ude00", "tab\t", 1.5, null, true]"#
    );
}

#[test]
fn drf_datetimes_drop_zero_microseconds() {
    let whole = Utc.timestamp_opt(1_795_394_515, 0).unwrap();
    assert_eq!(
        eventfold_changes::drf::datetime::render(&whole),
        "2026-11-23T00:41:55Z"
    );
}

#[tokio::test]
async fn a_custom_serializer_and_name_and_status_field() {
    let store = store();
    let changes = Changes::new("shop").register_with(
        ModelOptions::<Order>::new()
            .name("purchase")
            .serializer(|o| serde_json::json!({"total": o.amount, "id": o.id})),
    );
    let mut order = sample();
    order.status = Some("paid".into());
    let mut tx = store.begin().await.unwrap();
    changes.updated(&mut tx, &order).await.unwrap();
    changes.deleted(&mut tx, &order).await.unwrap();
    tx.commit().await.unwrap();
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    let names: Vec<_> = log
        .iter()
        .map(|n| ChangeRecord::of(n).unwrap().event_type.to_owned())
        .collect();
    assert_eq!(names, vec!["purchase__paid", "purchase__deleted"]);
    assert_eq!(
        log[0].event.state, br#"{"total": "99.90", "id": 1}"#,
        "keys in the order the serializer built them"
    );
    assert_eq!(log[0].event.topic, "shop.purchase__paid");
}

#[tokio::test]
async fn row_and_change_commit_or_roll_back_together() {
    let store = store();
    create_table(&store).await;
    let changes = Changes::new("orders").register::<Order>();
    for commit in [false, true] {
        let order = Order {
            id: if commit { 2 } else { 1 },
            ..sample()
        };
        let mut tx = store.begin().await.unwrap();
        tx.sqlite()
            .unwrap()
            .execute(
                "INSERT INTO orders (id, customer, qty) VALUES (?1, ?2, ?3)",
                eventfold_sqlite::rusqlite::params![order.id, order.customer, order.qty],
            )
            .unwrap();
        changes.created(&mut tx, &order).await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
    }
    let mut tx = store.begin().await.unwrap();
    let rows = tx.query("SELECT id FROM orders", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_i64(), Some(2));
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log.len(), 1, "no change record of the rolled-back row");
    assert_eq!(ChangeRecord::of(&log[0]).unwrap().key, "2");
}

#[tokio::test]
async fn changes_of_one_instance_keep_their_order_with_concurrent_writers() {
    let store = store();
    let changes = Changes::new("orders").register::<Order>();
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let (store, changes) = (store.clone(), changes.clone());
            tokio::spawn(async move {
                for n in 0..5 {
                    let order = Order {
                        qty: writer * 100 + n,
                        ..sample()
                    };
                    let mut tx = store.begin().await.unwrap();
                    changes.updated(&mut tx, &order).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let stream = store
        .select_events("orders.order:1", StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(
        stream.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    for writer in 0..2 {
        let qtys: Vec<i64> = stream
            .iter()
            .map(|e| {
                serde_json::from_slice::<serde_json::Value>(&e.state).unwrap()["qty"]
                    .as_i64()
                    .unwrap()
            })
            .filter(|q| q / 100 == writer)
            .collect();
        assert_eq!(qtys, (0..5).map(|n| writer * 100 + n).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn dispatch_can_be_switched_off_for_all_or_some_models_while_a_guard_lives() {
    #[derive(Serialize)]
    struct Invoice {
        id: i64,
    }
    impl Model for Invoice {
        const NAME: &'static str = "invoice";
        fn key(&self) -> String {
            self.id.to_string()
        }
    }
    let store = store();
    let changes = Changes::new("orders")
        .register::<Order>()
        .register::<Invoice>();
    let count = |store: SqliteStore| async move {
        store
            .select_notifications(&NotificationQuery::after(0, 100))
            .await
            .unwrap()
            .len()
    };
    let mut tx = store.begin().await.unwrap();
    {
        let _off = changes.disable();
        assert_eq!(changes.created(&mut tx, &sample()).await.unwrap(), None);
        assert_eq!(
            changes.created(&mut tx, &Invoice { id: 1 }).await.unwrap(),
            None
        );
    }
    {
        let _off = changes.clone().disable_models(&["invoice"]);
        assert!(changes.created(&mut tx, &sample()).await.unwrap().is_some());
        assert_eq!(
            changes.created(&mut tx, &Invoice { id: 1 }).await.unwrap(),
            None
        );
    }
    assert!(changes
        .created(&mut tx, &Invoice { id: 2 })
        .await
        .unwrap()
        .is_some());
    tx.commit().await.unwrap();
    assert_eq!(count(store.clone()).await, 2);
}

#[tokio::test]
async fn an_unregistered_model_is_an_error_and_metadata_passes_through() {
    let store = store();
    let changes = Changes::new("orders");
    let mut tx = store.begin().await.unwrap();
    let err = changes.created(&mut tx, &sample()).await.unwrap_err();
    assert!(matches!(err, Error::NotRegistered("order")), "{err:?}");
    let changes = changes.register::<Order>();
    changes
        .record(
            &mut tx,
            Change::Updated,
            &sample(),
            &Metadata::new().with_correlation_id("req-1"),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log[0].event.metadata.correlation_id(), Some("req-1"));
    assert!(ChangeRecord::of(&log[0]).is_some());
}
