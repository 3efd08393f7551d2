//! Saves and deletes on SQLite and PostgreSQL: the captured bodies byte for byte, revisions
//! from the caller's row, rollbacks, tracked fields, meta, correlation, the produce switch,
//! syncs, misuse.

use std::sync::Arc;

use eventfold_core::{Metadata, Store};
use eventfold_cqrs::master::{
    record_stream, CqrsRecord, Error, Master, ModelOptions, Save, SyncTarget,
};
use eventfold_cqrs::wire::CqrsMessage;
use eventfold_relay::Route;
use serde_json::{json, Value};

use crate::support::{body, captured, log, postgres, sample, sqlite, Clock, Item, Table};

fn item_master(clock: &Clock, table: &Table) -> Master {
    clock
        .master()
        .register_with(ModelOptions::<Item>::new().table(&table.name))
}

/// Create, update, delete of the captured item, as the capture was made; checks each
/// recorded body against the capture, byte for byte, and the revisions in the row.
async fn captured_round_trip(store: Arc<dyn Store>, table: Table) {
    let clock = Clock::new("2026-11-23 00:41:49.191666+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();

    let mut tx = store.begin().await.unwrap();
    let saved = master.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();
    assert_eq!(saved.revision, 0);
    assert_eq!(table.revision(&*store, 2).await, Some(0));

    clock.set("2026-11-23 00:41:49.193683+00:00");
    item.qty = 2;
    let mut tx = store.begin().await.unwrap();
    let saved = master.updated(&mut tx, &mut item).await.unwrap();
    table.update(&mut tx, &item).await;
    tx.commit().await.unwrap();
    assert_eq!((saved.revision, item.cqrs_revision), (1, 1));
    assert_eq!(table.revision(&*store, 2).await, Some(1));

    clock.set("2026-11-23 00:41:49.197072+00:00");
    let mut tx = store.begin().await.unwrap();
    let saved = master.deleted(&mut tx, &mut item).await.unwrap();
    table.delete(&mut tx, 2).await;
    tx.commit().await.unwrap();
    assert_eq!(saved.revision, 2);
    assert_eq!(table.revision(&*store, 2).await, None);

    let log = log(&*store).await;
    assert_eq!(log.len(), 3);
    let route = master.route();
    for (n, envelope) in log.iter().zip(captured()) {
        assert_eq!(body(n), envelope["body_raw"].as_str().unwrap());
        assert_eq!(n.event.stream_id, record_stream("item", "2"));
        let routed = route.encode(n).unwrap().unwrap().message;
        assert_eq!(routed.exchange, envelope["exchange"].as_str().unwrap());
        assert_eq!(
            routed.routing_key,
            envelope["routing_key"].as_str().unwrap()
        );
        assert_eq!(
            routed.content_type.as_deref(),
            envelope["properties"]["content_type"].as_str()
        );
        assert_eq!(
            u64::from(routed.delivery_mode),
            envelope["properties"]["delivery_mode"].as_u64().unwrap()
        );
        assert!(routed.headers.is_empty());
    }
    let versions: Vec<u64> = log.iter().map(|n| n.event.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
}

#[tokio::test]
async fn sqlite_saves_produce_the_captured_bodies() {
    let (store, table) = sqlite().await;
    captured_round_trip(store, table).await;
}

#[tokio::test]
async fn postgres_saves_produce_the_captured_bodies() {
    let (store, table, _guard) = postgres("captured").await;
    captured_round_trip(store, table).await;
}

/// A row migrated from django-cqrs keeps counting from its own revision.
async fn revisions_come_from_the_row(store: Arc<dyn Store>, table: Table) {
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();
    item.cqrs_revision = 41;
    let mut tx = store.begin().await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();

    // A stale in-memory revision does not matter: the row's is bumped.
    item.cqrs_revision = 3;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        master.updated(&mut tx, &mut item).await.unwrap().revision,
        42
    );
    table.update(&mut tx, &item).await;
    tx.commit().await.unwrap();
    assert_eq!(table.revision(&*store, 2).await, Some(42));

    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        master.deleted(&mut tx, &mut item).await.unwrap().revision,
        43
    );
    table.delete(&mut tx, 2).await;
    tx.commit().await.unwrap();

    let revisions: Vec<Option<i64>> = log(&*store)
        .await
        .iter()
        .map(|n| CqrsMessage::from_body(&n.event.state).unwrap().revision())
        .collect();
    assert_eq!(revisions, [Some(42), Some(43)]);
    let delete = CqrsMessage::from_body(&log(&*store).await[1].event.state).unwrap();
    assert_eq!(
        Value::Object(delete.instance_data),
        json!({"id": 2, "cqrs_revision": 43, "cqrs_updated": "2026-11-23 00:41:49+00:00"})
    );
}

#[tokio::test]
async fn sqlite_revisions_come_from_the_row() {
    let (store, table) = sqlite().await;
    revisions_come_from_the_row(store, table).await;
}

#[tokio::test]
async fn postgres_revisions_come_from_the_row() {
    let (store, table, _guard) = postgres("row").await;
    revisions_come_from_the_row(store, table).await;
}

/// A rolled-back save records nothing and leaves the row's revision alone.
async fn rollback_records_nothing(store: Arc<dyn Store>, table: Table) {
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    master.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.rollback().await.unwrap();
    assert!(log(&*store).await.is_empty());
    assert_eq!(table.revision(&*store, 2).await, None);

    let mut tx = store.begin().await.unwrap();
    master.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    master.updated(&mut tx, &mut item).await.unwrap();
    drop(tx);
    assert_eq!(log(&*store).await.len(), 1);
    assert_eq!(table.revision(&*store, 2).await, Some(0));
}

#[tokio::test]
async fn sqlite_rollback_records_nothing() {
    let (store, table) = sqlite().await;
    rollback_records_nothing(store, table).await;
}

#[tokio::test]
async fn postgres_rollback_records_nothing() {
    let (store, table, _guard) = postgres("rollback").await;
    rollback_records_nothing(store, table).await;
}

/// Concurrent updates of one row on PostgreSQL: the row lock of the bump makes them wait
/// for each other, so every one gets its own revision, and the log has them in order.
#[tokio::test]
async fn postgres_concurrent_updates_get_distinct_consecutive_revisions() {
    const WRITERS: usize = 8;
    let (store, table, _guard) = postgres("concurrent").await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    master.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();

    // Every writer opens its transaction first; then all bump at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (store, table, master, barrier) = (
            store.clone(),
            table.clone(),
            master.clone(),
            barrier.clone(),
        );
        let mut item = item.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            tx.query("SELECT 1", &[]).await.unwrap();
            barrier.wait().await;
            item.qty = writer as i64;
            let saved = master.updated(&mut tx, &mut item).await.unwrap();
            table.update(&mut tx, &item).await;
            tx.commit().await.unwrap();
            saved.revision
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=WRITERS as i64).collect::<Vec<_>>());
    assert_eq!(table.revision(&*store, 2).await, Some(WRITERS as i64));
    let logged: Vec<i64> = log(&*store)
        .await
        .iter()
        .map(|n| {
            CqrsMessage::from_body(&n.event.state)
                .unwrap()
                .revision()
                .unwrap()
        })
        .collect();
    assert_eq!(logged, (0..=WRITERS as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn tracked_fields_travel_as_previous_data() {
    let (store, table) = sqlite().await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = clock.master().register_with(
        ModelOptions::<Item>::new()
            .table(&table.name)
            .tracked_fields(["name", "qty", "price"]),
    );
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    master.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();

    let before = item.clone();
    item.qty = 5;
    item.name = "renamed".into();
    let mut tx = store.begin().await.unwrap();
    // An update of a model with tracked fields needs its previous instance.
    assert!(matches!(
        master.updated(&mut tx, &mut item.clone()).await,
        Err(Error::PreviousRequired(id)) if id == "item"
    ));
    master
        .save(&mut tx, Save::update(&mut item).previous(&before))
        .await
        .unwrap();
    table.update(&mut tx, &item).await;
    tx.commit().await.unwrap();

    let previous: Vec<Value> = log(&*store)
        .await
        .iter()
        .map(|n| {
            let m = CqrsMessage::from_body(&n.event.state).unwrap();
            m.previous_data.map(Value::Object).unwrap_or(Value::Null)
        })
        .collect();
    // Create: `null` for each tracked field set (django-cqrs's `changed_initial`);
    // update: the old values of the tracked fields that changed, in field order.
    assert_eq!(
        previous,
        [
            json!({"name": null, "qty": null, "price": null}),
            json!({"name": "sample", "qty": 1}),
        ]
    );
    let update = body(&log(&*store).await[1]);
    assert!(
        update.contains(r#""previous_data":{"name":"sample","qty":1}"#),
        "{update}"
    );
}

#[tokio::test]
async fn meta_and_correlation_ids_travel_in_the_body() {
    let (store, table) = sqlite().await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = clock
        .master()
        .meta_function(|cx| json!({"from": "all", "signal": cx.signal_type.as_str()}))
        .correlation_function(|signal, cqrs_id, pk, queue| {
            Some(json!(format!(
                "{}-{cqrs_id}-{pk}-{queue:?}",
                signal.as_str()
            )))
        })
        .register_with(ModelOptions::<Item>::new().table(&table.name).meta(
            |item: &Item, cx| json!({"qty": item.qty, "rev": cx.instance_data["cqrs_revision"]}),
        ));
    let generic_only = clock
        .master()
        .meta_function(|cx| json!({"pk": cx.instance_pk}));
    let generic_only = generic_only.register_with(ModelOptions::<Item>::new().table(&table.name));

    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    master
        .save(&mut tx, Save::create(&mut item).correlation_id("req-1"))
        .await
        .unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    master.updated(&mut tx, &mut item).await.unwrap();
    generic_only.updated(&mut tx, &mut item).await.unwrap();
    tx.commit().await.unwrap();

    let log = log(&*store).await;
    let messages: Vec<CqrsMessage> = log
        .iter()
        .map(|n| CqrsMessage::from_body(&n.event.state).unwrap())
        .collect();
    assert_eq!(messages[0].correlation_id, Some(json!("req-1")));
    assert_eq!(log[0].event.metadata.correlation_id(), Some("req-1"));
    assert_eq!(messages[0].meta, Some(json!({"qty": 1, "rev": 0})));
    assert_eq!(messages[1].correlation_id, Some(json!("SAVE-item-2-None")));
    assert_eq!(messages[1].meta, Some(json!({"qty": 1, "rev": 1})));
    assert_eq!(messages[2].meta, Some(json!({"pk": 2})));
    assert_eq!(messages[2].correlation_id, None);
}

#[tokio::test]
async fn production_can_be_switched_off_per_save_per_model_and_by_a_guard() {
    let (store, table) = sqlite().await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    let saved = master
        .save(&mut tx, Save::create(&mut item).produce(false))
        .await
        .unwrap();
    assert_eq!(saved.notification, None);
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    {
        let _off = master.disable();
        assert_eq!(
            master
                .updated(&mut tx, &mut item)
                .await
                .unwrap()
                .notification,
            None
        );
        assert_eq!(
            master.sync(&mut tx, &item, SyncTarget::All).await.unwrap(),
            None
        );
    }
    {
        let _off = master.disable_models(&["item"]);
        assert_eq!(
            master
                .updated(&mut tx, &mut item)
                .await
                .unwrap()
                .notification,
            None
        );
    }
    {
        let _off = master.disable_models(&["order"]);
        assert!(master
            .updated(&mut tx, &mut item)
            .await
            .unwrap()
            .notification
            .is_some());
    }
    let silent = clock.master().register_with(
        ModelOptions::<Item>::new()
            .table(&table.name)
            .produce(false),
    );
    assert_eq!(
        silent
            .updated(&mut tx, &mut item)
            .await
            .unwrap()
            .notification,
        None
    );
    // Back on once the guards are gone; the revision counted every save.
    let saved = master.updated(&mut tx, &mut item).await.unwrap();
    assert!(saved.notification.is_some());
    assert_eq!(saved.revision, 5);
    tx.commit().await.unwrap();
    let revisions: Vec<i64> = log(&*store)
        .await
        .iter()
        .map(|n| {
            CqrsMessage::from_body(&n.event.state)
                .unwrap()
                .revision()
                .unwrap()
        })
        .collect();
    assert_eq!(revisions, [3, 5]);
}

#[tokio::test]
async fn syncs_go_to_every_replica_or_to_one_queue() {
    let (store, table) = sqlite().await;
    let clock = Clock::new("2026-11-23 00:41:49.191666+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    master.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    tx.commit().await.unwrap();

    clock.set("2026-11-23 05:00:00+00:00");
    let mut tx = store.begin().await.unwrap();
    master
        .sync(&mut tx, &item, SyncTarget::queue("replica"))
        .await
        .unwrap()
        .unwrap();
    master
        .sync(&mut tx, &item, SyncTarget::All)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        table.revision(&*store, 2).await,
        Some(0),
        "a sync bumps nothing"
    );

    let log = log(&*store).await;
    let routing: Vec<(&str, &str)> = log[1..]
        .iter()
        .map(|n| {
            let r = CqrsRecord::of(n).unwrap();
            (r.routing_key, r.signal_type)
        })
        .collect();
    assert_eq!(routing, [("cqrs.replica.item", "SYNC"), ("item", "SYNC")]);
    // The instance as saved, a fresh expiry: the create's body but for signal and expiry.
    let create = body(&log[0]);
    let expected = create
        .replace(r#""signal_type":"SAVE""#, r#""signal_type":"SYNC""#)
        .replace("2026-11-24T00:41:49+00:00", "2026-11-24T05:00:00+00:00");
    assert_eq!(body(&log[1]), expected);
    assert!(log.iter().all(|n| n.event.stream_id == "cqrs.item:2"));
}

#[tokio::test]
async fn misuse_is_a_typed_error_and_records_nothing() {
    let (store, table) = sqlite().await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let master = item_master(&clock, &table);
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    let err = master.updated(&mut tx, &mut item).await.unwrap_err();
    assert!(
        matches!(&err, Error::RowNotFound { cqrs_id, pk, table } if cqrs_id == "item" && pk == "2" && table == "item"),
        "{err}"
    );
    assert!(matches!(
        master.deleted(&mut tx, &mut item).await,
        Err(Error::RowNotFound { .. })
    ));
    assert!(matches!(
        Master::new().created(&mut tx, &mut item).await,
        Err(Error::NotRegistered("item"))
    ));
    let bad = clock
        .master()
        .register_with(ModelOptions::<Item>::new().table("shop."));
    assert!(matches!(
        bad.created(&mut tx, &mut item).await,
        Err(Error::Options { .. })
    ));
    let not_object = clock.master().register_with(
        ModelOptions::<Item>::new()
            .table(&table.name)
            .serializer(|_| json!([1])),
    );
    assert!(matches!(
        not_object.created(&mut tx, &mut item).await,
        Err(Error::Serialize { .. })
    ));
    tx.commit().await.unwrap();
    assert!(log(&*store).await.is_empty());
}

#[tokio::test]
async fn published_fields_a_list_or_a_serializer() {
    let (store, table) = sqlite().await;
    let clock = Clock::new("2026-11-23 00:41:49+00:00");
    let listed = clock.master().register_with(
        ModelOptions::<Item>::new()
            .table(&table.name)
            .fields(["id", "qty"]),
    );
    let serialized =
        clock
            .master()
            .register_with(ModelOptions::<Item>::new().table(&table.name).serializer(
            |item: &Item| json!({"id": item.id, "label": format!("{} x{}", item.name, item.qty)}),
        ));
    let custom_delete = clock.master().register_with(
        ModelOptions::<Item>::new()
            .table(&table.name)
            .delete_data(|item: &Item| Some(json!({"name": item.name}))),
    );
    let mut item = sample();
    let mut tx = store.begin().await.unwrap();
    listed.created(&mut tx, &mut item).await.unwrap();
    serialized.created(&mut tx, &mut item).await.unwrap();
    table.insert(&mut tx, &item).await;
    custom_delete.deleted(&mut tx, &mut item).await.unwrap();
    tx.commit().await.unwrap();
    let data: Vec<String> = log(&*store)
        .await
        .iter()
        .map(|n| {
            serde_json::to_string(
                &CqrsMessage::from_body(&n.event.state)
                    .unwrap()
                    .instance_data,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(
        data,
        [
            r#"{"id":2,"qty":1,"cqrs_revision":0,"cqrs_updated":"2026-11-23 00:41:49+00:00"}"#,
            r#"{"id":2,"label":"sample x1","cqrs_revision":0,"cqrs_updated":"2026-11-23 00:41:49+00:00"}"#,
            r#"{"id":2,"cqrs_revision":1,"cqrs_updated":"2026-11-23 00:41:49+00:00","custom":{"name":"sample"}}"#,
        ]
    );
}

#[tokio::test]
async fn a_message_built_by_the_caller_is_recorded_as_it_is() {
    let (store, _table) = sqlite().await;
    let master = Master::new().exchange("cqrs_other");
    let envelope = &captured()[1];
    let message =
        CqrsMessage::from_body(envelope["body_raw"].as_str().unwrap().as_bytes()).unwrap();
    let mut tx = store.begin().await.unwrap();
    master
        .record(&mut tx, &message, "cqrs.replica.item", Metadata::new())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let log = log(&*store).await;
    assert_eq!(body(&log[0]), envelope["body_raw"].as_str().unwrap());
    let record = CqrsRecord::of(&log[0]).unwrap();
    assert_eq!(
        (record.exchange, record.routing_key, record.pk),
        ("cqrs_other", "cqrs.replica.item", "2")
    );
}
