//! One transaction for the caller's rows and eventfold's records ([`Store::begin`]),
//! portable SQL in it, appends, metadata, the log newest first, and the follower list.

use std::time::Duration;

use eventfold_core::{
    Aggregate, Application, Conflict, Error, EventReader, EventWriter, ExpectedVersion, Metadata,
    NotificationQuery, NotificationReader, RecordKind, Recording, Root, SqlValue, Store,
    StoredEvent, StreamQuery, Timestamp, Tracking, TrackingReader,
};
use eventfold_postgres::PostgresTransactionExt;
use serde::{Deserialize, Serialize};

use crate::support::{event, events_only, fresh};

fn change(stream: &str, name: &str) -> StoredEvent {
    // The version of an append is the store's to choose; 0 here is ignored.
    StoredEvent::new(
        stream,
        0,
        format!("Change.{name}"),
        Timestamp::now(),
        name.as_bytes().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_rows_and_records_commit_or_roll_back_together() {
    let (store, _guard) = fresh("txboth").await;
    let notes = format!("\"{}\".notes", store.config().schema);
    sqlx::query(&format!(
        "CREATE TABLE {notes} (id bigint PRIMARY KEY, note text, n integer)"
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let mut tx = store.begin().await.unwrap();
    let insert = format!("INSERT INTO {notes} (id, note, n) VALUES ($1, $2, $3)");
    let changed = tx
        .execute(
            &insert,
            &[1_i64.into(), "rolled back".into(), SqlValue::Null],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    tx.record(&events_only(vec![event("r", 1, "RolledBack")]))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {notes}"))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(count, 0, "the own row rolled back");
    assert!(
        store.load("r", None).await.unwrap().events.is_empty(),
        "so did the event"
    );

    // Dropped without a commit: the same.
    let mut tx = store.begin().await.unwrap();
    tx.execute(&insert, &[2_i64.into(), "dropped".into(), 7_i64.into()])
        .await
        .unwrap();
    tx.record(&events_only(vec![event("d", 1, "Dropped")]))
        .await
        .unwrap();
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    tx.execute(&insert, &[3_i64.into(), "committed".into(), 5_i64.into()])
        .await
        .unwrap();
    // The driver's own connection works in the same transaction.
    sqlx::query(&format!("UPDATE {notes} SET n = n + 1 WHERE id = 3"))
        .execute(tx.postgres().unwrap())
        .await
        .unwrap();
    let ids = tx
        .record(&events_only(vec![event("c", 1, "Committed")]))
        .await
        .unwrap();
    let seen = tx
        .query(
            &format!("SELECT id, note, n FROM {notes} WHERE id = $1"),
            &[3_i64.into()],
        )
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![vec![
            SqlValue::Integer(3),
            "committed".into(),
            SqlValue::Integer(6)
        ]]
    );
    tx.commit().await.unwrap();
    let rows: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM {notes} ORDER BY id"))
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, vec![3]);
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log.iter().map(|n| n.id).collect::<Vec<_>>(), ids);
    assert_eq!(log[0].event.stream_id, "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_sql_reads_every_shared_type() {
    let (store, _guard) = fresh("sqltypes").await;
    let mut tx = store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT 1::int2, 2::int4, $1::bigint, 1.5::float4, $2::float8, 'x'::text, \
                    'y'::varchar, 'z'::char(2), 'n'::name, 12.340::numeric, -0.05::numeric, \
                    123456789.5::numeric, true, false, $3::bytea, NULL, $4::text, $5::integer",
            &[
                3_i64.into(),
                2.5_f64.into(),
                SqlValue::Blob(vec![1, 2]),
                SqlValue::Text("t".into()),
                SqlValue::Null,
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            SqlValue::Integer(1),
            SqlValue::Integer(2),
            SqlValue::Integer(3),
            SqlValue::Real(1.5),
            SqlValue::Real(2.5),
            "x".into(),
            "y".into(),
            "z ".into(),
            "n".into(),
            "12.340".into(),
            "-0.05".into(),
            "123456789.5".into(),
            SqlValue::Integer(1),
            SqlValue::Integer(0),
            SqlValue::Blob(vec![1, 2]),
            SqlValue::Null,
            "t".into(),
            SqlValue::Null,
        ]]
    );
    let err = tx.query("SELECT now()", &[]).await.unwrap_err();
    assert!(err.to_string().contains("TIMESTAMPTZ"), "{err}");
    tx.rollback().await.unwrap();
}

/// The stream's versions and topics, oldest first.
async fn versions_and_topics(store: &impl EventReader, stream: &str) -> Vec<(u64, String)> {
    store
        .select_events(stream, StreamQuery::all())
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.version, e.topic))
        .collect()
}

/// Appends `append` in `tx` on a task of its own, then runs one more statement and commits
/// (so the transaction is still alive after the append). Asserts that the append is still
/// waiting 300 ms later, for a transaction the caller ends next.
async fn append_and_commit(
    mut tx: eventfold_core::Transaction,
    append: StoredEvent,
) -> tokio::task::JoinHandle<Result<Vec<u64>, Error>> {
    let waiting = tokio::spawn(async move {
        let ids = tx.record(&Recording::new().append(append)).await?;
        tx.query("SELECT 1", &[]).await?;
        tx.commit().await?;
        Ok(ids)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the append waits for the other transaction"
    );
    waiting
}

/// Two transactions append to one stream while both are open: the second waits for the
/// first's commit, then appends after it. Both commit, with versions 1 and 2 in that order,
/// and neither transaction is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_stream_both_succeed() {
    let (store, _guard) = fresh("appends").await;
    let mut first = store.begin().await.unwrap();
    let second = store.begin().await.unwrap();
    let first_ids = first
        .record(&Recording::new().append(change("feed", "First")))
        .await
        .unwrap();
    let waiting = append_and_commit(second, change("feed", "Second")).await;
    first.query("SELECT 1", &[]).await.unwrap();
    first.commit().await.unwrap();
    let second_ids = waiting.await.unwrap().unwrap();
    assert!(first_ids[0] < second_ids[0]);

    assert_eq!(
        versions_and_topics(&store, "feed").await,
        [
            (1, "Change.First".to_owned()),
            (2, "Change.Second".to_owned())
        ]
    );

    // Many writers appending through the store's own transactions at once, some with an
    // event of the same stream at a known version first in a mixed recording elsewhere.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .record(
                        &Recording::new()
                            .append(change("feed", &format!("Task{i}")))
                            .append(change("other", &format!("Task{i}"))),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().len(), 2);
    }
    for (stream, count) in [("feed", 10), ("other", 8)] {
        let versions: Vec<u64> = store
            .select_events(stream, StreamQuery::all())
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=count).collect::<Vec<_>>(), "{stream}");
    }
    // An event at a known version and appends after it, in one recording.
    let ids = store
        .record(
            &Recording::new()
                .event(event("mixed", 1, "Known"))
                .append(change("mixed", "After")),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let mixed = store.load("mixed", None).await.unwrap();
    assert_eq!(
        mixed
            .events
            .iter()
            .map(|e| (e.version, e.topic.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "Test.Known"), (2, "Change.After")]
    );
}

/// An append racing an uncommitted event at a known version of the same stream (which
/// takes no append lock) waits for it, then follows it: its one-statement insert finds
/// that version taken and does nothing, and the append runs again under the lock, after
/// the commit. Neither transaction is aborted, and the log lists both in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_racing_a_known_version_follows_it_without_aborting() {
    let (store, _guard) = fresh("appendrace").await;
    let mut known = store.begin().await.unwrap();
    known
        .record(&events_only(vec![event("row", 1, "Known")]))
        .await
        .unwrap();
    let appender = store.begin().await.unwrap();
    let waiting = append_and_commit(appender, change("row", "Appended")).await;
    known.commit().await.unwrap();
    let appended = waiting.await.unwrap().unwrap();
    assert_eq!(appended.len(), 1);

    assert_eq!(
        versions_and_topics(&store, "row").await,
        [
            (1, "Test.Known".to_owned()),
            (2, "Change.Appended".to_owned())
        ]
    );
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(
        log.iter().map(|n| n.event.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(log[1].id, appended[0]);
}

/// Many transactions appending change records to two streams at once (each first writes
/// a row of its own, so the append waits with the transaction open): every append
/// commits, each stream's versions run 1..=n without a gap or a duplicate, each writer's
/// records keep its order, and the log lists each stream in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_appends_in_transactions_never_abort_or_duplicate() {
    let (store, _guard) = fresh("appendmany").await;
    let rows = format!("\"{}\".rows", store.config().schema);
    sqlx::query(&format!("CREATE TABLE {rows} (writer bigint, n bigint)"))
        .execute(store.pool())
        .await
        .unwrap();
    const WRITERS: i64 = 6;
    const EACH: i64 = 8;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, rows) = (store.clone(), rows.clone());
            tokio::spawn(async move {
                for n in 0..EACH {
                    let mut tx = store.begin().await?;
                    tx.execute(
                        &format!("INSERT INTO {rows} (writer, n) VALUES ($1, $2)"),
                        &[writer.into(), n.into()],
                    )
                    .await?;
                    let stream = if (writer + n) % 2 == 0 { "a" } else { "b" };
                    tx.record(&Recording::new().append(change(stream, &format!("{writer}:{n}"))))
                        .await?;
                    tx.commit().await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let log = store
        .select_notifications(&NotificationQuery::after(0, 1000))
        .await
        .unwrap();
    assert_eq!(log.len() as i64, WRITERS * EACH);
    for stream in ["a", "b"] {
        let stored = versions_and_topics(&store, stream).await;
        let versions: Vec<u64> = stored.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            versions,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "{stream}"
        );
        let in_log: Vec<u64> = log
            .iter()
            .filter(|n| n.event.stream_id == stream)
            .map(|n| n.event.version)
            .collect();
        assert_eq!(in_log, versions, "the log lists {stream} in version order");
        for writer in 0..WRITERS {
            let mine: Vec<i64> = stored
                .iter()
                .filter_map(|(_, topic)| topic.strip_prefix(&format!("Change.{writer}:")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "writer {writer} keeps its order"
            );
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Opened,
    Added(i64),
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Id = uuid::Uuid;
    type Event = CounterEvent;
    fn apply(&mut self, event: &CounterEvent) {
        if let CounterEvent::Added(n) = event {
            self.value += n;
        }
    }
}

/// Two transactions save the same version of one aggregate while both are open: one
/// commits, the other gets one typed conflict naming the stream and the version it
/// expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_of_one_aggregate_conflict() {
    let (store, _guard) = fresh("saves").await;
    let app = std::sync::Arc::new(Application::builder(store.clone()).build());
    let mut counter = Root::<Counter>::new(CounterEvent::Opened);
    app.save(&mut counter).await.unwrap();
    let id = *counter.id();

    let mut a = app.repository().get::<Counter>(&id).await.unwrap();
    let mut b = app.repository().get::<Counter>(&id).await.unwrap();
    a.trigger(CounterEvent::Added(1));
    b.trigger(CounterEvent::Added(2));
    let mut tx_a = app.begin().await.unwrap();
    let mut tx_b = app.begin().await.unwrap();
    app.save_in(&mut tx_a, &mut a).await.unwrap();
    let racing = {
        let app = app.clone();
        tokio::spawn(async move {
            let saved = app.save_in(&mut tx_b, &mut b).await;
            (saved, tx_b.rollback().await)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx_a.commit().await.unwrap();
    let (saved, _) = racing.await.unwrap();
    match saved.unwrap_err() {
        Error::Conflict(Conflict::Streams(expected)) => {
            assert_eq!(expected, vec![ExpectedVersion::new(id.to_string(), 1)]);
        }
        other => panic!("expected a stream conflict, got {other:?}"),
    }
    let loaded = app.repository().get::<Counter>(&id).await.unwrap();
    assert_eq!((loaded.value, loaded.version()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_round_trips_and_bad_metadata_is_a_decode_error() {
    let (store, _guard) = fresh("metadata").await;
    let metadata = Metadata::new()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with("headers", serde_json::json!({"x-unicode": "é✓", "n": 1}));
    store
        .record(&events_only(vec![
            event("m", 1, "Tagged").with_metadata(metadata.clone())
        ]))
        .await
        .unwrap();
    store
        .record(
            &Recording::new()
                .event(event("m", 2, "Plain"))
                .event(event("n", 1, "Tagged").with_metadata(metadata.clone()))
                .append(change("m", "Appended").with_metadata(metadata.clone())),
        )
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(&events_only(vec![
        event("n", 2, "InTx").with_metadata(metadata.clone())
    ]))
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let events = store.select_events("m", StreamQuery::all()).await.unwrap();
    let tags: Vec<_> = events.iter().map(|e| e.metadata.clone()).collect();
    assert_eq!(
        tags,
        vec![metadata.clone(), Metadata::new(), metadata.clone()]
    );
    assert_eq!(
        store.load("n", None).await.unwrap().events[1].metadata,
        metadata
    );
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log.len(), 5);
    assert_eq!(log[0].event.metadata.correlation_id(), Some("corr-1"));
    assert!(log[1].event.metadata.is_empty());
    let text: Option<String> = sqlx::query_scalar(&format!(
        "SELECT metadata FROM {} WHERE stream_id = 'm' AND version = 2",
        store.table_name("events")
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(text, None, "empty metadata is stored as NULL");

    sqlx::query(&format!(
        "UPDATE {} SET metadata = '{{not json' WHERE stream_id = 'm' AND version = 1",
        store.table_name("events")
    ))
    .execute(store.pool())
    .await
    .unwrap();
    match store.load("m", None).await.unwrap_err() {
        Error::Decode {
            kind: RecordKind::Metadata,
            stream_id,
            version,
            ..
        } => assert_eq!((stream_id.as_str(), version), ("m", 1)),
        other => panic!("expected a metadata decode error, got {other:?}"),
    }
}

/// A negative version in the table (written by hand, not by eventfold) is a decode error,
/// not a version near `u64::MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_values_are_decode_errors() {
    let (store, _guard) = fresh("range").await;
    sqlx::query(&format!(
        "INSERT INTO {} (id, stream_id, version, topic, occurred_at, state) \
         VALUES (nextval('{}'), 'neg', -1, 'Test.Negative', now(), '\\x00')",
        store.table_name("events"),
        store.table_name("notification_id_seq"),
    ))
    .execute(store.pool())
    .await
    .unwrap();
    for result in [
        store.load("neg", None).await.map(drop),
        store
            .select_events("neg", StreamQuery::all())
            .await
            .map(drop),
        store
            .select_notifications(&NotificationQuery::after(0, 10))
            .await
            .map(drop),
    ] {
        match result.unwrap_err() {
            Error::Decode {
                kind: RecordKind::Event,
                stream_id,
                source,
                ..
            } => {
                assert_eq!(stream_id, "neg");
                assert!(source.to_string().contains("-1"), "{source}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
    sqlx::query(&format!(
        "INSERT INTO {} (follower, position) VALUES ('broken', -5)",
        store.table_name("tracking")
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let err = store.tracking_position("broken").await.unwrap_err();
    assert!(err.to_string().contains("-5"), "{err}");
    assert!(store.followers().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_pages_newest_first_and_stays_gap_safe() {
    let (store, _guard) = fresh("desc").await;
    let mut ids = Vec::new();
    for (version, topic) in [(1, "A"), (2, "B"), (3, "A"), (4, "B"), (5, "A")] {
        ids.extend(
            store
                .record(&events_only(vec![event("s", version, topic)]))
                .await
                .unwrap(),
        );
    }
    let page = |q: NotificationQuery| {
        let store = store.clone();
        async move {
            store
                .select_notifications(&q)
                .await
                .unwrap()
                .iter()
                .map(|n| n.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        page(NotificationQuery::newest(2)).await,
        vec![ids[4], ids[3]]
    );
    assert_eq!(
        page(NotificationQuery::newest(2).before(ids[3])).await,
        vec![ids[2], ids[1]]
    );
    assert_eq!(
        page(NotificationQuery::newest(2).before(ids[1])).await,
        vec![ids[0]]
    );
    assert_eq!(
        page(NotificationQuery::newest(10).before(ids[0])).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        page(NotificationQuery::newest(10).topics(["Test.A"])).await,
        vec![ids[4], ids[2], ids[0]]
    );
    assert_eq!(
        page(NotificationQuery::after(ids[0], 10).before(ids[3])).await,
        vec![ids[1], ids[2]],
        "before bounds the ascending read too"
    );

    // A writer still in flight holds back everything above its announcement, newest
    // first as well.
    let mut open = store.begin().await.unwrap();
    open.record(&events_only(vec![event("open", 1, "Open")]))
        .await
        .unwrap();
    let later = store
        .record(&events_only(vec![event("later", 1, "Later")]))
        .await
        .unwrap();
    assert_eq!(
        page(NotificationQuery::newest(3)).await,
        vec![ids[4], ids[3], ids[2]]
    );
    open.commit().await.unwrap();
    assert_eq!(page(NotificationQuery::newest(1)).await, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_are_listed_by_name_and_positions_only_move_forwards() {
    let (store, _guard) = fresh("followers").await;
    assert!(store.followers().await.unwrap().is_empty());
    for (name, position) in [("b", 4), ("a", 2)] {
        let mut tx = store.begin().await.unwrap();
        tx.track(Tracking::new(name, position)).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        store.followers().await.unwrap(),
        vec![Tracking::new("a", 2), Tracking::new("b", 4)]
    );
    let mut tx = store.begin().await.unwrap();
    match tx.track(Tracking::new("b", 3)).await.unwrap_err() {
        Error::Conflict(Conflict::Tracking {
            follower,
            position,
            current,
        }) => assert_eq!((follower.as_str(), position, current), ("b", 3, 4)),
        other => panic!("expected a tracking conflict, got {other:?}"),
    }
    // The conflict did not abort the transaction.
    tx.track(Tracking::new("b", 5)).await.unwrap();
    tx.commit().await.unwrap();
    match store
        .record(&Recording::new().tracking(Tracking::new("a", 1)))
        .await
        .unwrap_err()
    {
        Error::Conflict(Conflict::Tracking { current, .. }) => assert_eq!(current, 2),
        other => panic!("expected a tracking conflict, got {other:?}"),
    }
    assert_eq!(store.tracking_position("b").await.unwrap(), Some(5));
}

/// A lock that is not available now is a transient backend error, both as the store
/// reports it from portable SQL and as `is_transient_error` judges the driver's own error;
/// a syntax error is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_server_errors_are_transient() {
    let (store, _guard) = fresh("transient").await;
    let tracking = store.table_name("tracking");
    let mut tx = store.begin().await.unwrap();
    tx.track(Tracking::new("held", 1)).await.unwrap();
    tx.commit().await.unwrap();
    // Moving the position locks its row until the holder ends.
    let mut holder = store.begin().await.unwrap();
    holder.track(Tracking::new("held", 2)).await.unwrap();
    let mut waiter = store.begin().await.unwrap();
    let err = waiter
        .query(
            &format!("SELECT position FROM {tracking} FOR UPDATE NOWAIT"),
            &[],
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(
            err,
            Error::Backend {
                transient: true,
                ..
            }
        ),
        "{err:?}"
    );
    drop(waiter);

    let mut raw = store.pool().begin().await.unwrap();
    let driver_error = sqlx::query(&format!(
        "SELECT position FROM {tracking} FOR UPDATE NOWAIT"
    ))
    .execute(&mut *raw)
    .await
    .unwrap_err();
    assert!(store.is_transient_error(&driver_error));
    let boxed: eventfold_core::BoxError = Box::new(driver_error);
    assert!(store.is_transient_error(&*boxed));
    drop(raw);
    holder.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let err = tx.execute("SELEC 1", &[]).await.unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    let driver_error = sqlx::query("SELEC 1")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(!store.is_transient_error(&driver_error));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_tables_of_portable_sql_live_in_the_store_schema() {
    let (store, _guard) = fresh("txpath").await;
    let mut tx = store.begin().await.unwrap();
    tx.execute("CREATE TABLE view_rows (k text PRIMARY KEY)", &[])
        .await
        .unwrap();
    tx.execute("INSERT INTO view_rows (k) VALUES ($1)", &["a".into()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'view_rows'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(schemas, vec![store.config().schema.clone()]);
}
