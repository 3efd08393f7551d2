//! Plain tables: the tables file, the replica model, master reads and filters, on SQLite
//! and PostgreSQL alike.

use eventfold_cqrs::replica::{Change, Rejected, ReplicaModel};
use eventfold_cqrs::table::{
    Filter, Role, Table, TableError, TableReplica, TableSpec, TablesConfig,
};
use eventfold_cqrs::wire::{CqrsMessage, SignalType};
use serde_json::{json, Map, Value};

use crate::on_both;
use crate::support::Db;

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn spec(db: &Db, table: &str) -> TableSpec {
    let spec = TableSpec::new(table);
    match &db.schema {
        Some(s) => spec.in_schema(s.clone()),
        None => spec,
    }
}

#[test]
fn a_bad_tables_file_says_what_and_where() {
    let err = |text: &str| TablesConfig::from_toml(text).unwrap_err().to_string();
    let syntax = err("[replica.item]\ntable = \"items\"\npk = \n");
    assert!(
        syntax.starts_with("bad tables file:") && syntax.contains("line 3"),
        "{syntax}"
    );
    let unknown = err("[replica.item]\ntable = \"items\"\nprimary = \"id\"\n");
    assert!(unknown.contains("unknown field `primary`"), "{unknown}");
    let no_table = err("[replica.item]\npk = \"id\"\n");
    assert!(no_table.contains("missing field `table`"), "{no_table}");
    let fields = err("[replica.item]\ntable = \"items\"\nfields = [\"id\"]\n");
    assert!(
        fields.contains("[replica.item]: `fields` is for master tables"),
        "{fields}"
    );
    let collide = err("[master.item]\ntable = \"t\"\nrename = { a = \"c\", b = \"c\" }\n");
    assert!(collide.contains("both go to the column \"c\""), "{collide}");
    let revision = err("[master.item]\ntable = \"t\"\nignore = [\"cqrs_revision\"]\n");
    assert!(revision.contains("cannot be ignored"), "{revision}");
    let unreadable = TablesConfig::load(std::path::Path::new("/nonexistent/t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        unreadable.contains("cannot read /nonexistent/t.toml"),
        "{unreadable}"
    );

    let config = TablesConfig::from_toml("[replica.item]\ntable = \"items\"\n").unwrap();
    let unknown_id = config.replica("itme").unwrap_err().to_string();
    assert_eq!(
        unknown_id,
        "unknown cqrs_id \"itme\": the tables file has no [replica.itme] (it has item)"
    );
    let no_master = config.master("item").unwrap_err().to_string();
    assert!(
        no_master.contains("(it has no [master.*] table)"),
        "{no_master}"
    );
}

async fn schema_errors_name_the_missing_part(db: Db) {
    db.create_items("items").await;
    let mut tx = db.begin().await;
    let err = Table::open(&mut tx, "item", &spec(&db, "nope"), Role::Replica)
        .await
        .unwrap_err();
    assert!(matches!(err, TableError::Schema { .. }), "{err}");
    assert!(err.to_string().contains("no table"), "{err}");
    let mut bad_pk = spec(&db, "items");
    bad_pk.pk = "uid".into();
    let err = Table::open(&mut tx, "item", &bad_pk, Role::Replica)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the pk column \"uid\" is not a column") && err.contains("title"),
        "{err}"
    );
    let mut bad_field = spec(&db, "items");
    bad_field.fields = Some(vec!["id".into(), "colour".into()]);
    let err = Table::open(&mut tx, "item", &bad_field, Role::Master)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("field \"colour\""), "{err}");
}
on_both!(schema_errors, schema_errors_name_the_missing_part);

fn save(pk: i64, data: Value) -> CqrsMessage {
    CqrsMessage::new(SignalType::Save, "item", Value::from(pk), object(data))
}

async fn the_replica_model_upserts_and_deletes_by_pk(db: Db) {
    db.create_items("items").await;
    let mut spec = spec(&db, "items");
    spec.rename.insert("name".into(), "title".into());
    spec.ignore.push("secret".into());
    let mut tx = db.begin().await;
    let table = Table::open(&mut tx, "item", &spec, Role::Replica)
        .await
        .unwrap();
    let model = TableReplica::new(table);
    assert_eq!(model.cqrs_id(), "item");

    let created = save(
        1,
        json!({"id": 1, "name": "Café", "secret": "x", "unknown": 5, "active": true,
               "price": "9.99", "born": "2020-01-31", "tags": {"a": [1, 2]},
               "seen": "2026-11-23 00:41:49", "ratio": 0.5, "cqrs_revision": 0,
               "cqrs_updated": "2026-11-23 00:41:49.191666+00:00"}),
    );
    let pk = Value::from(1);
    assert_eq!(model.stored_revision(&mut tx, &pk).await.unwrap(), None);
    let mapped = model.map_fields(&created.instance_data);
    assert!(mapped.contains_key("title") && !mapped.contains_key("secret"));
    model
        .create(&mut tx, &Change::new(&created, &mapped, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin().await;
    assert_eq!(model.stored_revision(&mut tx, &pk).await.unwrap(), Some(0));
    let updated = save(
        1,
        json!({"id": 1, "name": "Tea", "cqrs_revision": 1,
               "cqrs_updated": "2026-11-23 00:41:50+00:00"}),
    );
    let mapped = model.map_fields(&updated.instance_data);
    model
        .update(&mut tx, &Change::new(&updated, &mapped, Some(0)))
        .await
        .unwrap();
    assert_eq!(model.stored_revision(&mut tx, &pk).await.unwrap(), Some(1));

    // What a master reading the same table would publish: every column, in table order,
    // typed as django-cqrs sends them; the update kept the columns it did not name.
    let master = Table::open(&mut tx, "item", &spec, Role::Master)
        .await
        .unwrap();
    let rows = master
        .rows(&mut tx, &Filter::all(), None, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].pk.clone(), rows[0].revision), (pk.clone(), 1));
    assert_eq!(
        serde_json::to_string(&rows[0].data).unwrap(),
        r#"{"id":1,"name":"Tea","active":true,"price":9.99,"born":"2020-01-31","tags":{"a":[1,2]},"seen":"2026-11-23 00:41:49","ratio":0.5,"cqrs_revision":1,"cqrs_updated":"2026-11-23 00:41:50+00:00"}"#
    );

    // Data that cannot fit is rejected (dead-lettered at once), not retried.
    for bad in [
        json!({"name": "no pk", "cqrs_revision": 0, "cqrs_updated": "2026-11-23 00:41:49+00:00"}),
        json!({"id": 2, "name": "no revision", "cqrs_updated": "2026-11-23 00:41:49+00:00"}),
        json!({"id": 2, "name": ["a list"], "cqrs_revision": 0, "cqrs_updated": "2026-11-23 00:41:49+00:00"}),
    ] {
        let message = save(2, bad);
        let mapped = model.map_fields(&message.instance_data);
        let err = model
            .create(&mut tx, &Change::new(&message, &mapped, None))
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<Rejected>().is_some(), "{err}");
    }

    let delete = CqrsMessage::new(
        SignalType::Delete,
        "item",
        pk.clone(),
        object(json!({"id": 1, "cqrs_revision": 2, "cqrs_updated": "2026-11-23 00:41:51+00:00"})),
    );
    model
        .delete(
            &mut tx,
            &Change::new(&delete, &delete.instance_data, Some(1)),
        )
        .await
        .unwrap();
    assert_eq!(model.stored_revision(&mut tx, &pk).await.unwrap(), None);
    // Deleting a row that is not there is not an error.
    model
        .delete(&mut tx, &Change::new(&delete, &delete.instance_data, None))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // PostgreSQL refuses a title longer than its varchar(100): never cut silently.
    if db.is_postgres() {
        let mut tx = db.begin().await;
        let long = save(
            3,
            json!({"id": 3, "name": "x".repeat(101), "cqrs_revision": 0,
                   "cqrs_updated": "2026-11-23 00:41:49+00:00"}),
        );
        let mapped = model.map_fields(&long.instance_data);
        let err = model
            .create(&mut tx, &Change::new(&long, &mapped, None))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        tx.rollback().await.unwrap();
    }
}
on_both!(replica_model, the_replica_model_upserts_and_deletes_by_pk);

async fn master_rows_are_filtered_and_paged_in_pk_order(db: Db) {
    db.create_items("items").await;
    let spec = spec(&db, "items");
    let mut tx = db.begin().await;
    let replica = Table::open(&mut tx, "item", &spec, Role::Replica)
        .await
        .unwrap();
    for id in [5, 3, 1, 4, 2] {
        let data = object(json!({
            "id": id, "title": format!("t{id}"), "price": format!("{id}.50"),
            "active": id % 2 == 0, "cqrs_revision": id * 10,
            "cqrs_updated": format!("2026-11-23 00:00:0{id}+00:00"),
        }));
        replica.upsert(&mut tx, &data).await.unwrap();
    }
    let master = Table::open(&mut tx, "item", &spec, Role::Master)
        .await
        .unwrap();
    let cases: &[(&str, &[i64])] = &[
        ("{}", &[1, 2, 3, 4, 5]),
        (r#"{"id__in": [4, 2, 9]}"#, &[2, 4]),
        (r#"{"pk__in": []}"#, &[]),
        (r#"{"id__gt": 3}"#, &[4, 5]),
        (r#"{"id__gte": 3, "id__lt": 5}"#, &[3, 4]),
        (r#"{"title": "t3"}"#, &[3]),
        (r#"{"active": true}"#, &[2, 4]),
        (r#"{"price__lte": "2.50"}"#, &[1, 2]),
        (r#"{"cqrs_revision__gt": 30}"#, &[4, 5]),
        (
            r#"{"cqrs_updated__gte": "2026-11-23 00:00:04+00:00"}"#,
            &[4, 5],
        ),
        (r#"{"born__isnull": true, "id__lte": 2}"#, &[1, 2]),
        (r#"{"born": null}"#, &[1, 2, 3, 4, 5]),
    ];
    for (text, want) in cases {
        let filter = Filter::parse(&master, text).unwrap();
        let got: Vec<i64> = master
            .revisions(&mut tx, &filter, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(pk, revision)| {
                assert_eq!(revision, pk.as_i64().unwrap() * 10);
                pk.as_i64().unwrap()
            })
            .collect();
        assert_eq!(&got, want, "{text}");
        assert_eq!(
            master.count(&mut tx, &filter).await.unwrap(),
            want.len() as u64
        );
    }
    // Keyset pages: after the last pk of the page before.
    let page = master
        .rows(&mut tx, &Filter::all(), Some(&Value::from(2)), 2)
        .await
        .unwrap();
    let pks: Vec<_> = page.iter().map(|r| r.pk.clone()).collect();
    assert_eq!(pks, [json!(3), json!(4)]);
    let sync = page[0].sync_message("item");
    assert_eq!(sync.signal_type, SignalType::Sync);
    assert_eq!(sync.instance_pk, json!(3));
    assert_eq!(
        sync.instance_data["cqrs_updated"],
        json!("2026-11-23 00:00:03+00:00")
    );

    for (text, says) in [
        ("[1]", "must be a JSON object"),
        ("{not json", "not JSON"),
        (r#"{"colour": 1}"#, "\"colour\" is not a field of item"),
        (r#"{"id__regex": "1"}"#, "\"id__regex\" is not a field"),
        (r#"{"id__in": 3}"#, "takes an array"),
        (r#"{"id__gt": [3]}"#, "takes a single value"),
        (r#"{"id__isnull": 1}"#, "takes true or false"),
    ] {
        let err = Filter::parse(&master, text).unwrap_err().to_string();
        assert!(
            err.starts_with("bad filter:") && err.contains(says),
            "{text}: {err}"
        );
    }
    tx.commit().await.unwrap();
}
on_both!(master_rows, master_rows_are_filtered_and_paged_in_pk_order);

/// A django-cqrs message for item `pk` at `revision` (a DELETE sends what the master
/// sends: id, revision, updated).
fn message(signal: SignalType, pk: i64, revision: i64) -> CqrsMessage {
    let data = match signal {
        SignalType::Delete => json!({"id": pk, "cqrs_revision": revision,
            "cqrs_updated": "2026-11-23 00:41:49+00:00"}),
        _ => json!({"id": pk, "title": format!("{pk} at r{revision}"), "ratio": 0.25,
            "cqrs_revision": revision,
            "cqrs_updated": format!("2026-11-23 00:41:{:02}+00:00", revision)}),
    };
    CqrsMessage::new(signal, "item", Value::from(pk), object(data))
}

/// Every row of `table`, as a master reading it publishes them.
async fn published(db: &Db, table: &str) -> Vec<(Value, i64, Map<String, Value>)> {
    let mut tx = db.begin().await;
    let master = Table::open(&mut tx, "item", &spec(db, table), Role::Master)
        .await
        .unwrap();
    let rows = master
        .rows(&mut tx, &Filter::all(), None, 1000)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.into_iter()
        .map(|r| (r.pk, r.revision, r.data))
        .collect()
}

/// The same messages through `apply_batch` (one read, multi-row writes) and through
/// `apply_message` one by one: the same outcomes, in order, and the same rows.
async fn a_batch_applies_as_message_by_message_does(db: Db) {
    use eventfold_cqrs::replica::{apply_batch, apply_message, Applied, ReplicaModels};
    use SignalType::{Delete, Save, Sync};
    let mut models = Vec::new();
    for table in ["batched", "one_by_one"] {
        db.create_items(table).await;
        let mut tx = db.begin().await;
        let replica = Table::open(&mut tx, "item", &spec(&db, table), Role::Replica)
            .await
            .unwrap();
        // What the replica holds before: 1 at r2, 2 at r5, 3 at r1.
        for (pk, revision) in [(1, 2), (2, 5), (3, 1)] {
            let seed = message(Save, pk, revision);
            replica.upsert(&mut tx, &seed.instance_data).await.unwrap();
        }
        tx.commit().await.unwrap();
        models.push(ReplicaModels::new().with(TableReplica::new(replica)));
    }
    let messages = [
        message(Save, 1, 3),    // update
        message(Save, 1, 4),    // update of the same pk: the last wins
        message(Save, 1, 4),    // duplicate of the one before, inside the batch
        message(Save, 2, 4),    // stale
        message(Save, 2, 5),    // duplicate of the stored row
        message(Sync, 2, 1),    // a SYNC downgrade is applied
        message(Delete, 3, 1),  // delete
        message(Save, 3, 0),    // created again after the delete of the same batch
        message(Save, 10, 0),   // create
        message(Save, 10, 1),   // then update
        message(Save, 10, 3),   // a gap of one lost revision
        message(Save, 11, 0),   // created, then
        message(Delete, 11, 0), // deleted in the same batch: no row
        message(Delete, 12, 0), // delete of a row that never was
    ];
    let refs: Vec<&CqrsMessage> = messages.iter().collect();
    let mut tx = db.begin().await;
    let batched = apply_batch(&models[0], &mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();
    let mut one_by_one = Vec::new();
    for m in &messages {
        let mut tx = db.begin().await;
        one_by_one.push(apply_message(&models[1], &mut tx, m).await.unwrap());
        tx.commit().await.unwrap();
    }
    assert_eq!(batched, one_by_one);
    let upd = |stored, received| Applied::Updated {
        sync: false,
        stored,
        received,
    };
    let created = Applied::Created { sync: false };
    assert_eq!(
        batched,
        [
            upd(2, 3),
            upd(3, 4),
            Applied::Duplicate { revision: 4 },
            Applied::Stale {
                stored: 5,
                received: 4
            },
            Applied::Duplicate { revision: 5 },
            Applied::Updated {
                sync: true,
                stored: 5,
                received: 1
            },
            Applied::Deleted,
            created,
            created,
            upd(0, 1),
            upd(1, 3),
            created,
            Applied::Deleted,
            Applied::Deleted,
        ]
    );
    assert_eq!(batched[10].lost(), 1);
    assert!(batched[5].is_sync_downgrade());
    let rows = published(&db, "batched").await;
    assert_eq!(rows, published(&db, "one_by_one").await);
    let revisions: Vec<(Value, i64)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(
        revisions,
        [(json!(1), 4), (json!(2), 1), (json!(3), 0), (json!(10), 3)]
    );
    assert_eq!(rows[0].2["title"], "1 at r4");
}
on_both!(
    batch_as_one_by_one,
    a_batch_applies_as_message_by_message_does
);

/// A batch on PostgreSQL plans its statements for the table as it is now (a custom plan),
/// not with a generic plan cached while the table was empty; the setting ends with the
/// batch's transaction.
#[tokio::test]
async fn a_postgres_batch_uses_custom_plans_for_its_transaction_only() {
    use eventfold_cqrs::replica::{apply_batch, ReplicaModels};
    let db = Db::postgres().await;
    db.create_items("planned").await;
    let mut tx = db.begin().await;
    let replica = Table::open(&mut tx, "item", &spec(&db, "planned"), Role::Replica)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let models = ReplicaModels::new().with(TableReplica::new(replica));
    let plan_mode = |rows: Vec<eventfold_core::SqlRow>| rows[0][0].as_str().unwrap().to_owned();
    let show = "SELECT current_setting('plan_cache_mode')";

    let messages = [
        message(SignalType::Save, 1, 0),
        message(SignalType::Save, 2, 0),
    ];
    let refs: Vec<&CqrsMessage> = messages.iter().collect();
    let mut tx = db.begin().await;
    apply_batch(&models, &mut tx, &refs).await.unwrap();
    assert_eq!(
        plan_mode(tx.query(show, &[]).await.unwrap()),
        "force_custom_plan"
    );
    tx.commit().await.unwrap();

    let mut tx = db.begin().await;
    assert_eq!(plan_mode(tx.query(show, &[]).await.unwrap()), "auto");
    tx.rollback().await.unwrap();
    assert_eq!(published(&db, "planned").await.len(), 2);
}
