//! The tooling against real databases and a real broker (a vhost per test): dump and
//! load between SQLite and PostgreSQL, the diff pipeline, sync and dead letters.

use chrono::Utc;
use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, ExchangeKind, PublisherOptions};
use eventfold_cqrs::replica::{apply_message, ReplicaModels};
use eventfold_cqrs::table::{Filter, Role, Table, TableReplica, TablesConfig};
use eventfold_cqrs::tooling::{self, NoProgress, SyncTarget};
use eventfold_cqrs::wire::{parse_datetime, CqrsMessage, SignalType};
use eventfold_testkit::{Raw, TestVhost};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Map, Value};

use crate::support::Db;

/// A tables file with `item` on both sides, in `db`'s schema.
fn config(db: &Db) -> TablesConfig {
    let schema = db
        .schema
        .as_ref()
        .map(|s| format!("schema = \"{s}\"\n"))
        .unwrap_or_default();
    TablesConfig::from_toml(&format!(
        "[master.item]\ntable = \"items\"\n{schema}[replica.item]\ntable = \"items\"\n{schema}"
    ))
    .unwrap()
}

async fn items(db: &Db) -> (TablesConfig, Table) {
    db.create_items("items").await;
    let config = config(db);
    let table = tooling::open_table(&*db.store, &config, Role::Master, "item")
        .await
        .unwrap();
    (config, table)
}

fn row(id: i64, revision: i64, title: &str) -> Map<String, Value> {
    match json!({
        "id": id, "title": title, "active": id % 2 == 1, "price": format!("{id}.25"),
        "born": null, "tags": {"n": id}, "seen": null, "ratio": 0.5,
        "cqrs_revision": revision,
        "cqrs_updated": format!("2026-11-23 00:41:0{id}.191666+00:00"),
    }) {
        Value::Object(o) => o,
        _ => unreachable!(),
    }
}

/// Writes rows straight into `db`'s items table.
async fn seed(db: &Db, config: &TablesConfig, rows: &[Map<String, Value>]) {
    let table = tooling::open_table(&*db.store, config, Role::Replica, "item")
        .await
        .unwrap();
    let mut tx = db.begin().await;
    for r in rows {
        table.upsert(&mut tx, r).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn dump(db: &Db, table: &Table, batch: usize) -> String {
    let mut out = Vec::new();
    let n = tooling::bulk_dump(&*db.store, table, &mut out, batch, &mut NoProgress)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n as usize, text.lines().count() - 1);
    text
}

async fn dump_then_load(master: Db, replica: Db) {
    let (master_config, master_table) = items(&master).await;
    let (replica_config, replica_table) = items(&replica).await;
    seed(
        &master,
        &master_config,
        &[row(2, 3, "Café/2"), row(1, 0, "one"), row(3, 7, "three")],
    )
    .await;
    let dumped = dump(&master, &master_table, 2).await;
    // django-cqrs's format: the id, then "\n" + ujson per row (pk order), no final newline.
    assert_eq!(
        dumped,
        "item\n\
         {\"id\":1,\"title\":\"one\",\"active\":true,\"price\":1.25,\"born\":null,\"tags\":{\"n\":1},\"seen\":null,\"ratio\":0.5,\"cqrs_revision\":0,\"cqrs_updated\":\"2026-11-23 00:41:01.191666+00:00\"}\n\
         {\"id\":2,\"title\":\"Caf\\u00e9\\/2\",\"active\":false,\"price\":2.25,\"born\":null,\"tags\":{\"n\":2},\"seen\":null,\"ratio\":0.5,\"cqrs_revision\":3,\"cqrs_updated\":\"2026-11-23 00:41:02.191666+00:00\"}\n\
         {\"id\":3,\"title\":\"three\",\"active\":true,\"price\":3.25,\"born\":null,\"tags\":{\"n\":3},\"seen\":null,\"ratio\":0.5,\"cqrs_revision\":7,\"cqrs_updated\":\"2026-11-23 00:41:03.191666+00:00\"}"
    );

    // The replica already holds pk 3 at a newer revision: that line is skipped.
    seed(&replica, &replica_config, &[row(3, 9, "newer")]).await;
    // Lines that are not JSON, have no pk, or that the database refuses (a NULL title)
    // fail alone, with their line numbers; the rest of their batch loads.
    let first_row = dumped.lines().nth(1).unwrap();
    let null_title =
        r#"{"id":9,"title":null,"cqrs_revision":0,"cqrs_updated":"2026-11-23 00:41:49+00:00"}"#;
    let with_bad_lines =
        format!("{dumped}\nnot json\n{null_title}\n{first_row}\n{{\"title\":\"no pk\"}}");
    let mut notes = Vec::new();
    let report = tooling::bulk_load(
        &*replica.store,
        &replica_config,
        &mut with_bad_lines.as_bytes(),
        false,
        2,
        &mut NoProgress,
        &mut notes,
    )
    .await
    .unwrap();
    let notes = String::from_utf8(notes).unwrap();
    assert_eq!(
        (report.loaded, report.skipped, report.failed),
        (2, 2, 3),
        "{notes}"
    );
    assert!(notes.contains("line 5: not JSON"), "{notes}");
    assert!(notes.contains("line 6: pk 9: "), "{notes}");
    assert!(
        notes.contains("line 8: item: instance_data has no \"id\""),
        "{notes}"
    );
    let reloaded = dump(&replica, &replica_table, 10).await;
    assert_eq!(
        reloaded
            .replace("\"title\":\"newer\"", "\"title\":\"three\"")
            .replace("\"cqrs_revision\":9", "\"cqrs_revision\":7"),
        dumped
    );

    // --clear: the dump is all there is afterwards.
    let report = tooling::bulk_load(
        &*replica.store,
        &replica_config,
        &mut dumped.as_bytes(),
        true,
        10_000,
        &mut NoProgress,
        &mut Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!((report.cleared, report.loaded, report.failed), (3, 3, 0));
    assert_eq!(dump(&replica, &replica_table, 1).await, dumped);

    // A dump of another id, or an empty one, is refused before anything is written.
    for (bad, says) in [
        ("", "it is empty"),
        ("author\n{}", "unknown cqrs_id \"author\""),
    ] {
        let err = tooling::bulk_load(
            &*replica.store,
            &replica_config,
            &mut bad.as_bytes(),
            true,
            10,
            &mut NoProgress,
            &mut Vec::new(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(says), "{err}");
    }
    assert_eq!(dump(&replica, &replica_table, 1).await, dumped);
}

#[tokio::test]
async fn a_dump_from_sqlite_loads_into_postgres() {
    dump_then_load(Db::sqlite(), Db::postgres().await).await;
}

#[tokio::test]
async fn a_dump_from_postgres_loads_into_sqlite() {
    dump_then_load(Db::postgres().await, Db::sqlite()).await;
}

/// A dump of many rows loads in batches (several multi-row statements each, of sizes
/// that are not powers of two) into exactly the master's rows; loading it again skips
/// every row; a dump holding one pk twice loads its later line.
async fn a_large_dump_loads_batch_by_batch_into_the_masters_rows(master: Db, replica: Db) {
    let (master_config, master_table) = items(&master).await;
    let (replica_config, replica_table) = items(&replica).await;
    let many_row = |id: i64, revision: i64, title: &str| {
        let mut r = row(id, revision, title);
        let updated = format!("2026-11-23 00:{:02}:{:02}.191666+00:00", id / 60, id % 60);
        r.insert("cqrs_updated".into(), updated.into());
        r
    };
    let rows: Vec<Map<String, Value>> = (1..=333)
        .map(|id| many_row(id, id % 5, &format!("row {id}")))
        .collect();
    seed(&master, &master_config, &rows).await;
    let dumped = dump(&master, &master_table, 100).await;
    let load = |text: String| {
        let (store, config) = (&replica.store, &replica_config);
        async move {
            let mut notes = Vec::new();
            let report = tooling::bulk_load(
                &**store,
                config,
                &mut text.as_bytes(),
                false,
                200,
                &mut NoProgress,
                &mut notes,
            )
            .await
            .unwrap();
            assert!(notes.is_empty(), "{}", String::from_utf8_lossy(&notes));
            (report.loaded, report.skipped, report.failed)
        }
    };
    assert_eq!(load(dumped.clone()).await, (333, 0, 0));
    assert_eq!(dump(&replica, &replica_table, 1000).await, dumped);
    assert_eq!(load(dumped.clone()).await, (0, 333, 0));
    let twice = format!(
        "item\n{}\n{}",
        serde_json::to_string(&many_row(400, 1, "first")).unwrap(),
        serde_json::to_string(&many_row(400, 2, "second")).unwrap()
    );
    assert_eq!(load(twice).await, (2, 0, 0));
    let mut tx = replica.begin().await;
    let revisions = replica_table
        .revisions(&mut tx, &Filter::all(), Some(&json!(333)), 10)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(revisions, [(json!(400), 2)]);
}

#[tokio::test]
async fn a_large_dump_loads_into_postgres() {
    a_large_dump_loads_batch_by_batch_into_the_masters_rows(Db::sqlite(), Db::postgres().await)
        .await;
}

#[tokio::test]
async fn a_large_dump_loads_into_sqlite() {
    a_large_dump_loads_batch_by_batch_into_the_masters_rows(Db::postgres().await, Db::sqlite())
        .await;
}

async fn publisher(vhost: &TestVhost) -> ConfirmedPublisher {
    let publisher = ConfirmedPublisher::connect(
        AmqpConfig::from_url(&vhost.url()).unwrap(),
        PublisherOptions::default(),
    )
    .await
    .unwrap();
    publisher
        .declare_exchange("cqrs", ExchangeKind::Topic)
        .await
        .unwrap();
    publisher
}

/// Applies every message of `queue` to `db`'s replica table, as the consumer would.
async fn apply_queue(raw: &Raw, queue: &str, db: &Db, config: &TablesConfig) -> Vec<CqrsMessage> {
    let table = tooling::open_table(&*db.store, config, Role::Replica, "item")
        .await
        .unwrap();
    let models = ReplicaModels::new().with(TableReplica::new(table));
    let mut tx = db.begin().await;
    let mut messages = Vec::new();
    for m in raw.drain(queue).await {
        assert_eq!(
            m.delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("text/plain")
        );
        assert_eq!(*m.delivery.properties.delivery_mode(), Some(2));
        let message = CqrsMessage::from_body(&m.delivery.data).unwrap();
        apply_message(&models, &mut tx, &message).await.unwrap();
        messages.push(message);
    }
    tx.commit().await.unwrap();
    messages
}

#[tokio::test]
async fn the_diff_pipeline_finds_and_syncs_missing_and_stale_rows() {
    let master = Db::sqlite();
    let replica = Db::postgres().await;
    let (master_config, master_table) = items(&master).await;
    let (replica_config, _) = items(&replica).await;
    let rows: Vec<_> = (1..=5).map(|id| row(id, id * 10, "m")).collect();
    seed(&master, &master_config, &rows).await;
    // The replica: 1 and 4 up to date, 2 stale, 3 and 5 missing.
    seed(
        &replica,
        &replica_config,
        &[row(1, 10, "m"), row(2, 11, "old"), row(4, 40, "m")],
    )
    .await;

    let before = Utc::now();
    let mut master_stream = Vec::new();
    let n = tooling::diff_master(
        &*master.store,
        &master_table,
        &Filter::all(),
        &mut master_stream,
        2,
    )
    .await
    .unwrap();
    assert_eq!(n, 5);
    let master_stream = String::from_utf8(master_stream).unwrap();
    let lines: Vec<&str> = master_stream.lines().collect();
    let (id, at) = lines[0].split_once(',').unwrap();
    assert_eq!(id, "item");
    // str(django.utils.timezone.now()): "2026-12-01 11:23:13.123456+00:00".
    assert_eq!(at.len(), "2026-12-01 11:23:13.123456+00:00".len(), "{at}");
    assert_eq!(&at[10..11], " ");
    assert!(parse_datetime(at).unwrap() >= before - chrono::Duration::milliseconds(1));
    assert_eq!(
        &lines[1..],
        ["[[1,10],[2,20]]", "[[3,30],[4,40]]", "[[5,50]]"]
    );
    assert!(master_stream.ends_with("]\n"));

    let mut replica_stream = Vec::new();
    let mut notes = Vec::new();
    let differing = tooling::diff_replica(
        &*replica.store,
        &replica_config,
        &mut master_stream.as_bytes(),
        &mut replica_stream,
        Some("replica"),
        &mut notes,
    )
    .await
    .unwrap();
    assert_eq!(differing, 3);
    let replica_stream = String::from_utf8(replica_stream).unwrap();
    assert_eq!(
        replica_stream,
        format!("{},replica\n[2]\n[3]\n[5]\n", lines[0])
    );

    let vhost = TestVhost::with_prefix("ef-cqrs-diff");
    let publisher = publisher(&vhost).await;
    let raw = vhost.raw().await;
    raw.bound_queue("replica", "cqrs", "cqrs.replica.item")
        .await;
    let report = tooling::diff_sync(
        &*master.store,
        &master_config,
        &mut replica_stream.as_bytes(),
        &publisher,
        "cqrs",
        10,
        &mut NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.processed, report.confirmed, report.returned),
        (3, 3, 0)
    );
    let synced = apply_queue(&raw, "replica", &replica, &replica_config).await;
    let pks: Vec<_> = synced.iter().map(|m| m.instance_pk.clone()).collect();
    assert_eq!(pks, [json!(2), json!(3), json!(5)]);
    assert!(synced.iter().all(|m| m.signal_type == SignalType::Sync));

    // Now nothing differs.
    let mut again = Vec::new();
    let differing = tooling::diff_replica(
        &*replica.store,
        &replica_config,
        &mut master_stream.as_bytes(),
        &mut again,
        None,
        &mut Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(differing, 0);
    assert_eq!(
        String::from_utf8(again).unwrap(),
        format!("{},None\n", lines[0])
    );

    // The deleted trio: rows the replica holds that the master no longer has.
    seed(
        &replica,
        &replica_config,
        &[row(6, 1, "gone"), row(7, 1, "gone")],
    )
    .await;
    let replica_table =
        tooling::open_table(&*replica.store, &replica_config, Role::Replica, "item")
            .await
            .unwrap();
    let mut listed = Vec::new();
    let n = tooling::deleted_diff_replica(
        &*replica.store,
        &replica_table,
        &Filter::all(),
        &mut listed,
        3,
    )
    .await
    .unwrap();
    assert_eq!(n, 7);
    let listed = String::from_utf8(listed).unwrap();
    let listed_lines: Vec<&str> = listed.lines().collect();
    assert!(listed_lines[0].starts_with("item,20"), "{listed}");
    assert_eq!(&listed_lines[1..], ["[1,2,3]", "[4,5,6]", "[7]"]);
    let mut gone = Vec::new();
    let mut notes = Vec::new();
    let n = tooling::deleted_diff_master(
        &*master.store,
        &master_config,
        &mut listed.as_bytes(),
        &mut gone,
        &mut notes,
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    let gone = String::from_utf8(gone).unwrap();
    assert_eq!(gone, format!("{}\n[6]\n[7]\n", listed_lines[0]));
    assert_eq!(
        String::from_utf8(notes).unwrap(),
        "PK to delete: [6]\nPK to delete: [7]\n"
    );
    let deleted =
        tooling::deleted_sync_replica(&*replica.store, &replica_config, &mut gone.as_bytes())
            .await
            .unwrap();
    assert_eq!(deleted, 2);
    let mut tx = replica.begin().await;
    let left = replica_table
        .revisions(&mut tx, &Filter::all(), None, 100)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let left: Vec<(i64, i64)> = left
        .iter()
        .map(|(pk, r)| (pk.as_i64().unwrap(), *r))
        .collect();
    assert_eq!(left, [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]);

    // Streams that are not the other side's output are errors.
    for (stream, says) in [
        ("", "it is empty"),
        (
            "item,2026-12-01 11:23:13+00:00,replica\n[[1,2]]\n[2]\n",
            "line 2: not a JSON list",
        ),
        ("item\n[1]\n", "is not <cqrs_id>,<time>,<queue>"),
    ] {
        let err = tooling::diff_sync(
            &*master.store,
            &master_config,
            &mut stream.as_bytes(),
            &publisher,
            "cqrs",
            10,
            &mut NoProgress,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(says), "{stream:?}: {err}");
    }
    let err = tooling::diff_replica(
        &*replica.store,
        &replica_config,
        &mut "item,now\n{\"1\": 2}\n".as_bytes(),
        &mut Vec::new(),
        None,
        &mut Vec::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("line 2: not a JSON list of [pk, revision] pairs"),
        "{err}"
    );
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn sync_publishes_sync_messages_to_every_replica_or_one_queue() {
    let master = Db::sqlite();
    let (config, table) = items(&master).await;
    seed(
        &master,
        &config,
        &[row(1, 4, "a"), row(2, 0, "b"), row(3, 1, "c")],
    )
    .await;
    let vhost = TestVhost::with_prefix("ef-cqrs-sync");
    let publisher = publisher(&vhost).await;
    let raw = vhost.raw().await;
    raw.bound_queue("all", "cqrs", "item").await;
    raw.bound_queue("one", "cqrs", "cqrs.one.item").await;
    let replica = Db::sqlite();
    let (replica_config, _) = items(&replica).await;

    let filter = Filter::parse(&table, r#"{"id__in": [1, 3]}"#).unwrap();
    let everyone = SyncTarget {
        exchange: "cqrs",
        queue: None,
    };
    let report = tooling::sync(
        &*master.store,
        &table,
        &filter,
        &publisher,
        everyone,
        1,
        &mut NoProgress,
    )
    .await
    .unwrap();
    assert_eq!((report.processed, report.confirmed), (2, 2));
    assert_eq!(raw.count("one").await, 0);
    let got = apply_queue(&raw, "all", &replica, &replica_config).await;
    assert_eq!(got.len(), 2);
    for (message, mut want) in got.iter().zip([row(1, 4, "a"), row(3, 1, "c")]) {
        // A decimal travels as a number, as django-cqrs's ujson writes a Decimal.
        let id = want["id"].as_i64().unwrap();
        want.insert("price".into(), json!(id as f64 + 0.25));
        assert_eq!(message.signal_type, SignalType::Sync);
        assert_eq!(message.cqrs_id, "item");
        assert_eq!(message.instance_pk, want["id"]);
        assert_eq!(message.instance_data, want);
        assert_eq!(message.retries, 0);
        assert!(message.expires.unwrap() > Utc::now() + chrono::Duration::hours(23));
    }

    let one = SyncTarget {
        exchange: "cqrs",
        queue: Some("one"),
    };
    let report = tooling::sync(
        &*master.store,
        &table,
        &Filter::all(),
        &publisher,
        one,
        2,
        &mut NoProgress,
    )
    .await
    .unwrap();
    assert_eq!((report.processed, report.confirmed), (3, 3));
    assert_eq!(raw.count("all").await, 0);
    assert_eq!(
        raw.wait_at_least("one", 3, std::time::Duration::from_secs(10))
            .await,
        3
    );

    // A queue nobody bound: the messages come back, and the report says so.
    let nobody = SyncTarget {
        exchange: "cqrs",
        queue: Some("absent"),
    };
    let report = tooling::sync(
        &*master.store,
        &table,
        &Filter::all(),
        &publisher,
        nobody,
        2,
        &mut NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.processed, report.confirmed, report.returned),
        (3, 0, 3)
    );
    publisher.close().await.unwrap();
}

async fn put(raw: &Raw, queue: &str, body: &[u8]) {
    raw.channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn dead(id: &str, pk: i64, retries: u32) -> Vec<u8> {
    let mut m = CqrsMessage::new(
        SignalType::Save,
        id,
        Value::from(pk),
        match json!({"id": pk, "cqrs_revision": 1, "cqrs_updated": "2026-11-23 00:41:49+00:00"}) {
            Value::Object(o) => o,
            _ => unreachable!(),
        },
    );
    m.retries = retries;
    m.expires = parse_datetime("2026-01-01T00:00:00+00:00");
    m.to_body()
}

#[tokio::test]
async fn dead_letters_are_dumped_retried_and_purged() {
    let vhost = TestVhost::with_prefix("ef-cqrs-dead");
    let amqp = AmqpConfig::from_url(&vhost.url()).unwrap();
    let raw = vhost.raw().await;
    raw.topic_bound_queue("replica", "cqrs", "cqrs.replica.item")
        .await;
    raw.bound_queue("replica", "cqrs", "cqrs.replica.author")
        .await;
    raw.bound_queue(
        "dead_letter_replica",
        "cqrs",
        "cqrs.dead_letter_replica.item",
    )
    .await;
    let bodies = [
        dead("item", 1, 30),
        dead("author", 7, 30),
        b"not json".to_vec(),
        dead("item", 2, 5),
    ];
    for body in &bodies {
        put(&raw, "dead_letter_replica", body).await;
    }
    let dlq = "dead_letter_replica";
    raw.wait_count(dlq, 4, std::time::Duration::from_secs(10))
        .await;

    // dump: every body, in order, and nothing leaves the queue.
    let mut out = Vec::new();
    let report = tooling::dead_letters_dump(&amqp, "replica", None, &mut out)
        .await
        .unwrap();
    assert_eq!((report.total, report.handled, report.left), (4, 4, 0));
    let want: Vec<u8> = bodies
        .iter()
        .flat_map(|b| [b.as_slice(), b"\n"].concat())
        .collect();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(want).unwrap()
    );
    assert_eq!(raw.settled_count(dlq).await, 4);
    let mut out = Vec::new();
    let report = tooling::dead_letters_dump(&amqp, "replica", Some("author"), &mut out)
        .await
        .unwrap();
    assert_eq!((report.handled, report.left), (1, 3));
    assert_eq!(out, [bodies[1].as_slice(), b"\n"].concat());

    // retry of one cqrs_id: its dead letters go back to the replica queue with retries 0
    // and a fresh expiry; the others stay, in order.
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let report =
        tooling::dead_letters_retry(&amqp, "replica", Some("item"), "cqrs", &mut out, &mut notes)
            .await
            .unwrap();
    assert_eq!((report.total, report.handled, report.left), (4, 2, 2));
    assert_eq!(raw.settled_count(dlq).await, 2);
    let retried: Vec<CqrsMessage> = raw
        .drain("replica")
        .await
        .iter()
        .map(|m| {
            assert_eq!(m.delivery.routing_key.as_str(), "cqrs.replica.item");
            CqrsMessage::from_body(&m.delivery.data).unwrap()
        })
        .collect();
    assert_eq!(retried.len(), 2);
    for (m, pk) in retried.iter().zip([1, 2]) {
        assert_eq!((m.instance_pk.clone(), m.retries), (json!(pk), 0));
        let expires = m.expires.unwrap();
        assert!(
            expires > Utc::now() + chrono::Duration::hours(23),
            "{expires}"
        );
    }
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);

    // retry of everything: the author's goes, the body that is no message stays.
    let mut notes = Vec::new();
    let report =
        tooling::dead_letters_retry(&amqp, "replica", None, "cqrs", &mut Vec::new(), &mut notes)
            .await
            .unwrap();
    assert_eq!((report.total, report.handled, report.left), (2, 1, 1));
    assert!(String::from_utf8(notes)
        .unwrap()
        .contains("not a django-cqrs message"));
    let left = raw.drain_bodies(dlq).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1, b"not json");
    put(&raw, dlq, &bodies[0]).await;
    put(&raw, dlq, &bodies[1]).await;
    raw.wait_count(dlq, 2, std::time::Duration::from_secs(10))
        .await;

    // purge of one cqrs_id, then of all.
    let report = tooling::dead_letters_purge(&amqp, "replica", Some("author"))
        .await
        .unwrap();
    assert_eq!((report.total, report.handled, report.left), (2, 1, 1));
    assert_eq!(raw.settled_count(dlq).await, 1);
    let report = tooling::dead_letters_purge(&amqp, "replica", None)
        .await
        .unwrap();
    assert_eq!((report.total, report.handled), (1, 1));
    assert_eq!(raw.settled_count(dlq).await, 0);
}
