//! The SQLite transaction (own rows, records, savepoints, portable SQL), appends,
//! metadata and its schema migration, descending paging, followers, transient errors.

use std::time::Duration;

use eventfold_core::{
    error_chain, BoxError, Conflict, Error, EventReader, EventWriter, ExpectedVersion,
    InMemoryStore, Metadata, NotificationQuery, NotificationReader, RecordKind, Recording,
    SqlValue, Store, StreamQuery, Tracking, TrackingReader,
};
use eventfold_sqlite::{rusqlite, SqliteConfig, SqliteStore, SqliteTransactionExt, SCHEMA_VERSION};

use crate::sqlite::{event, events, open, stream_conflict};

const CREATE_NOTES: &str = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT)";

fn notes(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT text FROM notes ORDER BY id").unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// A store on a file with the notes table, in its own folder.
fn store_with_notes() -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tx.db");
    let store = open(&path);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(CREATE_NOTES)
        .unwrap();
    (dir, path, store)
}

#[tokio::test]
async fn own_rows_and_records_roll_back_together() {
    let (_dir, path, store) = store_with_notes();

    // Explicit rollback.
    let mut tx = store.begin().await.unwrap();
    tx.sqlite()
        .unwrap()
        .execute("INSERT INTO notes (text) VALUES ('native')", [])
        .unwrap();
    tx.execute(
        "INSERT INTO notes (text) VALUES ($1)",
        &[SqlValue::from("portable")],
    )
    .await
    .unwrap();
    assert_eq!(
        tx.record(&events(vec![event("s", 1, "A")])).await.unwrap(),
        vec![1]
    );
    // Inside the transaction, its own writes are visible.
    let rows = tx.query("SELECT COUNT(*) FROM notes", &[]).await.unwrap();
    assert_eq!(rows, vec![vec![SqlValue::Integer(2)]]);
    tx.rollback().await.unwrap();
    assert!(notes(&path).is_empty());
    assert_eq!(store.max_notification_id().await.unwrap(), 0);

    // Dropped: the same.
    let mut tx = store.begin().await.unwrap();
    tx.execute("INSERT INTO notes (text) VALUES ($1)", &["dropped".into()])
        .await
        .unwrap();
    tx.record(&events(vec![event("s", 1, "A")])).await.unwrap();
    drop(tx);
    assert!(notes(&path).is_empty());
    assert!(store
        .select_events("s", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_rows_and_records_commit_together_and_wake_followers() {
    let (_dir, path, store) = store_with_notes();
    let wakeups = store.wakeups().unwrap();
    let woken = wakeups.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();

    let mut tx = store.begin().await.unwrap();
    tx.sqlite()
        .unwrap()
        .execute("INSERT INTO notes (text) VALUES ('native')", [])
        .unwrap();
    assert_eq!(
        tx.execute(
            "INSERT INTO notes (text) VALUES ($1), ($2)",
            &["one".into(), "two".into()]
        )
        .await
        .unwrap(),
        2
    );
    let ids = tx
        .record(
            &Recording::new()
                .event(event("s", 1, "A"))
                .tracking(Tracking::new("f", 7)),
        )
        .await
        .unwrap();
    assert_eq!(ids, vec![1]);
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = committed.clone();
    tx.on_commit(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    tx.commit().await.unwrap();
    assert!(committed.load(std::sync::atomic::Ordering::SeqCst));
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("followers are woken after a commit that recorded events");

    assert_eq!(notes(&path), vec!["native", "one", "two"]);
    assert_eq!(store.load("s", None).await.unwrap().events.len(), 1);
    assert_eq!(store.tracking_position("f").await.unwrap(), Some(7));
    // The write connection is free again.
    store
        .record(&events(vec![event("s", 2, "A")]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_conflicting_record_leaves_the_earlier_writes_committable() {
    let (_dir, path, store) = store_with_notes();
    store
        .record(&events(vec![event("taken", 1, "A")]))
        .await
        .unwrap();

    let mut tx = store.begin().await.unwrap();
    tx.execute("INSERT INTO notes (text) VALUES ('before')", &[])
        .await
        .unwrap();
    tx.record(&events(vec![event("s", 1, "A")])).await.unwrap();
    // Its first event would be written before the second one conflicts: the savepoint
    // takes it back.
    let err = tx
        .record(&events(vec![event("half", 1, "A"), event("taken", 1, "A")]))
        .await
        .unwrap_err();
    assert_eq!(
        stream_conflict(err),
        vec![
            ExpectedVersion::new("half", 0),
            ExpectedVersion::new("taken", 0)
        ]
    );
    // A stale tracking position too.
    tx.track(Tracking::new("f", 5)).await.unwrap();
    let err = tx.track(Tracking::new("f", 5)).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::Tracking { current: 5, .. })),
        "{err:?}"
    );
    // The transaction goes on.
    assert_eq!(
        tx.record(&events(vec![event("s", 2, "A")])).await.unwrap(),
        vec![3]
    );
    tx.execute("INSERT INTO notes (text) VALUES ('after')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(notes(&path), vec!["before", "after"]);
    assert!(store
        .select_events("half", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    let written: Vec<_> = log
        .iter()
        .map(|n| (n.id, n.event.stream_id.as_str(), n.event.version))
        .collect();
    assert_eq!(written, vec![(1, "taken", 1), (2, "s", 1), (3, "s", 2)]);
    assert_eq!(store.tracking_position("f").await.unwrap(), Some(5));
}

#[tokio::test]
async fn portable_sql_binds_by_name_and_reads_every_type() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)",
        &[],
    )
    .await
    .unwrap();
    // `$2` before `$1`, and `$1` twice.
    assert_eq!(
        tx.execute(
            "INSERT INTO t (s, i, r, b, n) VALUES ($2, $1, $3, $4, $5), ($2, $1 + 1, $3, $4, $5)",
            &[
                7i64.into(),
                "text".into(),
                1.5f64.into(),
                vec![0u8, 1, 2].into(),
                SqlValue::Null,
            ],
        )
        .await
        .unwrap(),
        2
    );
    let rows = tx
        .query(
            "SELECT i, r, s, b, n FROM t WHERE i >= $1 ORDER BY i",
            &[7i64.into()],
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![
                SqlValue::Integer(7),
                SqlValue::Real(1.5),
                SqlValue::Text("text".into()),
                SqlValue::Blob(vec![0, 1, 2]),
                SqlValue::Null,
            ],
            vec![
                SqlValue::Integer(8),
                SqlValue::Real(1.5),
                SqlValue::Text("text".into()),
                SqlValue::Blob(vec![0, 1, 2]),
                SqlValue::Null,
            ],
        ]
    );
    // DDL and statements that change nothing report 0; RETURNING works in execute.
    assert_eq!(
        tx.execute("CREATE INDEX t_i ON t (i)", &[]).await.unwrap(),
        0
    );
    assert_eq!(
        tx.execute("UPDATE t SET i = 0 WHERE i < 0", &[])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        tx.execute("DELETE FROM t WHERE i = $1 RETURNING i", &[8i64.into()])
            .await
            .unwrap(),
        1
    );
    // Values and placeholders must match.
    for (sql, params) in [
        ("SELECT $1, $2", vec![SqlValue::from(1i64)]),
        ("SELECT $1", vec![1i64.into(), 2i64.into()]),
        ("SELECT ?1", vec![1i64.into()]),
        ("SELECT $1, $3", vec![1i64.into(), 2i64.into()]),
    ] {
        let err = tx.query(sql, &params).await.unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{sql}: {err:?}");
    }
    // A bad statement is an error, and the transaction goes on.
    assert!(tx
        .execute("INSERT INTO nope VALUES (1)", &[])
        .await
        .is_err());
    assert_eq!(
        tx.query("SELECT COUNT(*) FROM t", &[]).await.unwrap(),
        vec![vec![SqlValue::Integer(1)]]
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn the_connection_of_another_backend_is_unsupported() {
    let memory = InMemoryStore::new();
    let mut tx = memory.begin().await.unwrap();
    let err = tx.sqlite().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                backend: "memory",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_two_tasks_get_consecutive_versions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("appends.db"));
    store
        .record(&events(vec![event("changes", 1, "Created")]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..2)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let mut change = event("changes", 0, "Changed");
                    change.state = format!("task {task} change {i}").into_bytes();
                    ids.extend(
                        store
                            .record(&Recording::new().append(change))
                            .await
                            .unwrap(),
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (2..=51).collect::<Vec<_>>());
    let stream = store
        .select_events("changes", StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(
        stream.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=51).collect::<Vec<_>>()
    );
    // Versions follow the log: each task's changes in the order it made them.
    let log = store
        .select_notifications(&NotificationQuery::after(0, 100))
        .await
        .unwrap();
    assert!(log.iter().all(|n| n.id == n.event.version));
    for task in 0..2 {
        let own: Vec<String> = log
            .iter()
            .map(|n| String::from_utf8(n.event.state.clone()).unwrap())
            .filter(|s| s.starts_with(&format!("task {task} ")))
            .collect();
        let expected: Vec<String> = (0..25).map(|i| format!("task {task} change {i}")).collect();
        assert_eq!(own, expected);
    }
}

#[tokio::test]
async fn appends_follow_the_events_of_their_recording() {
    let store = SqliteStore::open_in_memory().unwrap();
    let ids = store
        .record(
            &Recording::new()
                .append(event("s", 99, "Appended"))
                .event(event("s", 1, "A"))
                .event(event("t", 1, "A"))
                .append(event("t", 0, "Appended"))
                .append(event("new", 0, "Appended")),
        )
        .await
        .unwrap();
    // Ids: the events, then the appends.
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    let versions = |events: Vec<eventfold_core::StoredEvent>| {
        events
            .into_iter()
            .map(|e| (e.version, e.topic))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        versions(store.select_events("s", StreamQuery::all()).await.unwrap()),
        vec![(1, "A".to_owned()), (2, "Appended".to_owned())]
    );
    assert_eq!(
        versions(store.select_events("t", StreamQuery::all()).await.unwrap()),
        vec![(1, "A".to_owned()), (2, "Appended".to_owned())]
    );
    assert_eq!(
        versions(
            store
                .select_events("new", StreamQuery::all())
                .await
                .unwrap()
        ),
        vec![(1, "Appended".to_owned())]
    );
    // In a transaction too, and an appended stream still checks versions for events.
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.record(&Recording::new().append(event("s", 0, "Appended")))
            .await
            .unwrap(),
        vec![6]
    );
    let err = tx
        .record(&events(vec![event("s", 3, "A")]))
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    tx.record(&events(vec![event("s", 4, "A")])).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store
            .select_events("s", StreamQuery::all())
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn metadata_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = open(&path);
    let metadata = Metadata::new()
        .with_correlation_id("req-1")
        .with_causation_id("cmd-9")
        .with(
            "headers",
            serde_json::json!({"x-tenant": "acme", "retries": 2}),
        );
    let with = event("s", 1, "A").with_metadata(metadata.clone());
    store
        .record(
            &Recording::new()
                .event(with.clone())
                .event(event("s", 2, "A"))
                .append(event("s", 0, "B").with_metadata(metadata.clone()))
                .snapshot(event("s", 1, "Snap")),
        )
        .await
        .unwrap();
    let stored: Option<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT metadata FROM events WHERE version = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, None, "empty metadata is stored as NULL");

    let selected = store.select_events("s", StreamQuery::all()).await.unwrap();
    assert_eq!(selected[0], with);
    assert_eq!(selected[0].metadata.correlation_id(), Some("req-1"));
    assert!(selected[1].metadata.is_empty());
    assert_eq!(selected[2].metadata, metadata);
    let loaded = store.load("s", None).await.unwrap();
    assert!(loaded.snapshot.unwrap().metadata.is_empty());
    assert!(loaded.events[0].metadata.is_empty());
    assert_eq!(loaded.events[1].metadata, metadata);
    assert_eq!(
        store
            .select_snapshots("s", StreamQuery::all())
            .await
            .unwrap()[0]
            .metadata,
        Metadata::new()
    );
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log[0].event.metadata, metadata);
    assert_eq!(log[2].event.metadata, metadata);

    // A value that is not a JSON object is a decode error naming the record.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE events SET metadata = '[1' WHERE version = 2", [])
        .unwrap();
    for err in [
        store
            .select_events("s", StreamQuery::all())
            .await
            .unwrap_err(),
        store.load("s", Some(2)).await.unwrap_err(),
        store
            .select_notifications(&NotificationQuery::after(0, 10))
            .await
            .unwrap_err(),
    ] {
        match err {
            Error::Decode {
                kind: RecordKind::Metadata,
                stream_id,
                version,
                ..
            } => assert_eq!((stream_id.as_str(), version), ("s", 2)),
            other => panic!("not a metadata decode error: {other:?}"),
        }
    }
}

/// The schema of version 1, as released: no metadata column.
const SCHEMA_1: &str = "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        state BLOB NOT NULL,
        UNIQUE (stream_id, version)
    );
    CREATE INDEX events_topic_id ON events (topic, id);
    CREATE TRIGGER events_keep_newest BEFORE DELETE ON events
    WHEN old.id = (SELECT MAX(id) FROM events)
    BEGIN
        SELECT RAISE(ABORT, 'the newest event cannot be deleted: its id would be reused');
    END;
    CREATE TABLE snapshots (
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (stream_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE tracking (
        follower TEXT NOT NULL PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID;
    PRAGMA user_version = 1;";

#[tokio::test]
async fn a_database_of_schema_1_migrates_and_still_loads() {
    assert_eq!(SCHEMA_VERSION, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_1).unwrap();
        conn.execute_batch(
            "INSERT INTO events (stream_id, version, topic, timestamp, state) VALUES
                 ('s', 1, 'A', 1700000000000001, CAST('s@1' AS BLOB)),
                 ('s', 2, 'A', 1700000000000002, CAST('s@2' AS BLOB));
             INSERT INTO snapshots VALUES ('s', 1, 'Snap', 1700000000000001, x'00');
             INSERT INTO tracking VALUES ('f', 2);",
        )
        .unwrap();
    }
    // Without create_tables, the old file is refused with a hint to migrate.
    let mut config = SqliteConfig::new(&path);
    config.create_tables = false;
    match SqliteStore::open(&config) {
        Err(Error::SchemaVersion {
            found: 1,
            expected: 2,
            hint,
            ..
        }) => assert!(hint.contains("migrate"), "{hint}"),
        other => panic!("expected a schema version error, got {other:?}"),
    }
    let report = SqliteStore::migrate_with(&SqliteConfig::new(&path)).unwrap();
    assert_eq!((report.from, report.to), (1, 2));

    config.create_tables = false;
    let store = SqliteStore::open(&config).unwrap();
    assert_eq!(store.schema_version().unwrap(), 2);
    let stream = store.select_events("s", StreamQuery::all()).await.unwrap();
    assert_eq!(stream, vec![event("s", 1, "A"), event("s", 2, "A")]);
    assert!(stream.iter().all(|e| e.metadata.is_empty()));
    let loaded = store.load("s", None).await.unwrap();
    assert_eq!(loaded.snapshot.map(|s| s.version), Some(1));
    assert_eq!(loaded.events, vec![event("s", 2, "A")]);
    assert_eq!(store.tracking_position("f").await.unwrap(), Some(2));
    // New records carry metadata beside the old ones.
    let metadata = Metadata::new().with_correlation_id("after-migration");
    store
        .record(&Recording::new().event(event("s", 3, "A").with_metadata(metadata.clone())))
        .await
        .unwrap();
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].event.metadata, metadata);
}

#[tokio::test]
async fn notifications_page_newest_first() {
    let store = SqliteStore::open_in_memory().unwrap();
    for v in 1..=7 {
        let topic = if v % 2 == 0 { "Even" } else { "Odd" };
        store
            .record(&events(vec![event("s", v, topic)]))
            .await
            .unwrap();
    }
    let ids = |query: NotificationQuery| {
        let store = store.clone();
        async move {
            store
                .select_notifications(&query)
                .await
                .unwrap()
                .iter()
                .map(|n| n.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(NotificationQuery::newest(3)).await, vec![7, 6, 5]);
    assert_eq!(
        ids(NotificationQuery::newest(3).before(5)).await,
        vec![4, 3, 2]
    );
    assert_eq!(ids(NotificationQuery::newest(3).before(2)).await, vec![1]);
    assert_eq!(
        ids(NotificationQuery::newest(3).before(1)).await,
        Vec::<u64>::new()
    );
    // With topics, and with a lower bound.
    assert_eq!(
        ids(NotificationQuery::newest(2).topics(["Odd"])).await,
        vec![7, 5]
    );
    assert_eq!(
        ids(NotificationQuery::newest(2).topics(["Odd"]).before(5)).await,
        vec![3, 1]
    );
    let mut query = NotificationQuery::newest(10).topics(["Even"]);
    query.after = 2;
    assert_eq!(ids(query).await, vec![6, 4]);
    // Ascending with an upper bound.
    assert_eq!(
        ids(NotificationQuery::after(2, 10).before(6)).await,
        vec![3, 4, 5]
    );
    assert_eq!(
        ids(NotificationQuery::after(0, 10).topics(["Even"]).before(6)).await,
        vec![2, 4]
    );
}

#[tokio::test]
async fn followers_are_listed_by_name() {
    let store = SqliteStore::open_in_memory().unwrap();
    assert!(store.followers().await.unwrap().is_empty());
    for (name, position) in [("zeta", 3), ("alpha", 1), ("mid", 2)] {
        store
            .record(&Recording::new().tracking(Tracking::new(name, position)))
            .await
            .unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    tx.track(Tracking::new("alpha", 9)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store.followers().await.unwrap(),
        vec![
            Tracking::new("alpha", 9),
            Tracking::new("mid", 2),
            Tracking::new("zeta", 3),
        ]
    );
}

#[tokio::test]
async fn a_busy_database_is_a_transient_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let mut config = SqliteConfig::new(&path);
    config.busy_timeout = Duration::from_millis(20);
    let store = SqliteStore::open(&config).unwrap();

    // Another process (here: another connection) holds the write lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let err = store
        .record(&events(vec![event("s", 1, "A")]))
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
    assert!(store.is_transient_error(&err));
    let err = store.begin().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // The driver's own error, as a projection would return it, alone or wrapped.
    let third = rusqlite::Connection::open(&path).unwrap();
    third.busy_timeout(Duration::ZERO).unwrap();
    let driver_error = third
        .execute("INSERT INTO tracking VALUES ('x', 1)", [])
        .unwrap_err();
    assert!(store.is_transient_error(&driver_error));
    let boxed: BoxError = Box::new(Error::backend("sqlite", driver_error));
    assert!(error_chain(&*boxed).any(|e| store.is_transient_error(e)));

    // Not transient: a missing table, an error of another kind.
    let missing = third
        .execute("INSERT INTO nope VALUES (1)", [])
        .unwrap_err();
    assert!(!store.is_transient_error(&missing));
    let io = std::io::Error::other("nope");
    assert!(!store.is_transient_error(&io));
    // Once the lock is released, everything works.
    other.execute_batch("ROLLBACK").unwrap();
    store
        .record(&events(vec![event("s", 1, "A")]))
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    let err = tx
        .execute("INSERT INTO nope VALUES (1)", &[])
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(!store.is_transient_error(&err));
}

#[tokio::test]
async fn a_transaction_ended_from_inside_refuses_further_statements() {
    let (_dir, path, store) = store_with_notes();
    let mut tx = store.begin().await.unwrap();
    tx.execute("INSERT INTO notes (text) VALUES ('kept out')", &[])
        .await
        .unwrap();
    // What SQLite does by itself after a full disk: the transaction is gone.
    tx.execute("ROLLBACK", &[]).await.unwrap();
    for err in [
        tx.execute("INSERT INTO notes (text) VALUES ('autocommit')", &[])
            .await
            .unwrap_err(),
        tx.query("SELECT 1", &[]).await.unwrap_err(),
        tx.record(&events(vec![event("s", 1, "A")]))
            .await
            .unwrap_err(),
        tx.sqlite().unwrap_err(),
    ] {
        assert!(err.to_string().contains("no longer open"), "{err}");
    }
    assert!(tx.commit().await.is_err());
    assert!(notes(&path).is_empty());
    assert_eq!(store.max_notification_id().await.unwrap(), 0);
    // The write connection is free and sound.
    store
        .record(&events(vec![event("s", 1, "A")]))
        .await
        .unwrap();
}
