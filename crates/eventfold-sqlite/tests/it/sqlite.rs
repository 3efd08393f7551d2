//! What only the SQLite store has: files, several stores on one file, schema versions,
//! projection transactions.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use eventfold_core::{
    BoxError, Conflict, Error, EventReader, EventWriter, ExpectedVersion, Follower, Notification,
    NotificationQuery, NotificationReader, Projection, Recording, Store, StoredEvent, StreamQuery,
    Timestamp, Tracking, TrackingReader, Transaction,
};
use eventfold_sqlite::{
    rusqlite, SqliteConfig, SqliteStore, SqliteTransactionExt, Synchronous, SCHEMA_VERSION,
};

pub(crate) fn event(stream_id: &str, version: u64, topic: &str) -> StoredEvent {
    StoredEvent::new(
        stream_id,
        version,
        topic,
        Timestamp::from_micros(1_700_000_000_000_000 + version as i64),
        format!("{stream_id}@{version}").into_bytes(),
    )
}

pub(crate) fn events(events: Vec<StoredEvent>) -> Recording {
    events.into_iter().fold(Recording::new(), Recording::event)
}

/// The expected versions of a stream conflict, or a panic.
pub(crate) fn stream_conflict(err: Error) -> Vec<ExpectedVersion> {
    match err {
        Error::Conflict(Conflict::Streams(expected)) => expected,
        other => panic!("not a stream conflict: {other:?}"),
    }
}

pub(crate) fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(&SqliteConfig::new(path)).unwrap()
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let store = open(&path);
        assert_eq!(store.path(), Some(path.as_path()));
        store
            .record(
                &Recording::new()
                    .event(event("s", 1, "Thing.A"))
                    .event(event("s", 2, "Thing.B"))
                    .snapshot(event("s", 2, "Thing"))
                    .tracking(Tracking::new("f", 2)),
            )
            .await
            .unwrap();
    }
    let store = open(&path);
    let loaded = store.load("s", None).await.unwrap();
    assert_eq!(loaded.snapshot.map(|s| s.version), Some(2));
    assert!(loaded.events.is_empty());
    assert_eq!(
        store.select_events("s", StreamQuery::all()).await.unwrap(),
        vec![event("s", 1, "Thing.A"), event("s", 2, "Thing.B")]
    );
    assert_eq!(store.tracking_position("f").await.unwrap(), Some(2));
    assert_eq!(store.max_notification_id().await.unwrap(), 2);
    // Ids continue after the reopen.
    assert_eq!(
        store
            .record(&events(vec![event("s", 3, "Thing.C")]))
            .await
            .unwrap(),
        vec![3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_race_and_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let a = open(&path);
    let b = open(&path);
    a.record(&events(vec![event("race", 1, "Created")]))
        .await
        .unwrap();
    for version in 2..=21 {
        let racers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(writer, store)| {
                tokio::spawn(async move {
                    let mut e = event("race", version, "Raced");
                    e.state = format!("writer {writer}").into_bytes();
                    store.record(&events(vec![e])).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for racer in racers {
            outcomes.push(racer.await.unwrap());
        }
        let conflicts = outcomes
            .iter()
            .filter(|r| matches!(r, Err(e) if e.is_conflict()))
            .count();
        let wins = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!((wins, conflicts), (1, 1), "version {version}: {outcomes:?}");
        let err = outcomes.into_iter().find_map(|r| r.err()).unwrap();
        assert_eq!(
            stream_conflict(err),
            vec![ExpectedVersion::new("race", version - 1)]
        );
    }
    for store in [&a, &b] {
        let stream = store
            .select_events("race", StreamQuery::all())
            .await
            .unwrap();
        assert_eq!(versions(&stream), (1..=21).collect::<Vec<_>>());
        let log = store
            .select_notifications(&NotificationQuery::after(0, 100))
            .await
            .unwrap();
        assert_eq!(
            log.iter().map(|n| n.id).collect::<Vec<_>>(),
            (1..=21).collect::<Vec<_>>(),
            "one notification per recorded event, no ids for the losers"
        );
    }
}

#[tokio::test]
async fn a_gap_in_versions_is_a_conflict() {
    let store = SqliteStore::open_in_memory().unwrap();
    store
        .record(&events(vec![event("s", 1, "A")]))
        .await
        .unwrap();
    for recording in [
        vec![event("s", 3, "A")],
        vec![event("s", 2, "A"), event("s", 4, "A")],
        vec![event("t", 0, "A")],
        vec![event("t", 2, "A")],
    ] {
        let err = store.record(&events(recording)).await.unwrap_err();
        assert!(err.is_conflict(), "got {err:?}");
    }
    assert_eq!(store.max_notification_id().await.unwrap(), 1);
}

#[tokio::test]
async fn a_conflict_names_every_stream_of_the_recording() {
    let store = SqliteStore::open_in_memory().unwrap();
    store
        .record(&events(vec![event("b", 1, "A"), event("b", 2, "A")]))
        .await
        .unwrap();
    let err = store
        .record(&events(vec![
            event("a", 1, "A"),
            event("b", 2, "A"),
            event("b", 3, "A"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(
        stream_conflict(err),
        vec![ExpectedVersion::new("a", 0), ExpectedVersion::new("b", 1)]
    );
    // The writer connection is usable again: the failed transaction was rolled back.
    store
        .record(&events(vec![event("b", 3, "A")]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .unwrap();
    drop(conn);
    for create_tables in [true, false] {
        let mut config = SqliteConfig::new(&path);
        config.create_tables = create_tables;
        match SqliteStore::open(&config) {
            Err(Error::SchemaVersion {
                backend,
                found,
                expected,
                hint,
            }) => {
                assert_eq!(backend, "sqlite");
                assert_eq!(found, SCHEMA_VERSION + 1);
                assert_eq!(expected, SCHEMA_VERSION);
                assert!(hint.contains("newer"), "{hint}");
            }
            other => panic!("expected a schema version error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn tables_that_do_not_match_their_version_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.db");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE snapshots").unwrap();
    drop(conn);
    match SqliteStore::open(&SqliteConfig::new(&path)) {
        Err(Error::SchemaVersion { found, hint, .. }) => {
            assert_eq!(found, SCHEMA_VERSION);
            assert!(hint.contains("snapshots"), "{hint}");
        }
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

#[tokio::test]
async fn without_create_tables_an_empty_or_missing_file_asks_for_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.db");
    for path in [&empty, &missing] {
        let mut config = SqliteConfig::new(path);
        config.create_tables = false;
        match SqliteStore::open(&config) {
            Err(Error::SchemaVersion {
                found,
                expected,
                hint,
                ..
            }) => {
                assert_eq!((found, expected), (0, SCHEMA_VERSION));
                assert!(hint.contains("run `eventfold migrate`"), "{hint}");
            }
            other => panic!("expected a schema version error, got {other:?}"),
        }
    }
    assert!(!missing.exists(), "a refused open creates no file");

    // After migrating, the same config opens.
    let mut config = SqliteConfig::new(&empty);
    config.create_tables = true;
    let report = SqliteStore::open(&config).unwrap().migrate().unwrap();
    assert_eq!((report.from, report.to), (SCHEMA_VERSION, SCHEMA_VERSION));
    assert!(!report.changed());
    config.create_tables = false;
    let store = SqliteStore::open(&config).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[tokio::test]
async fn migrate_reports_what_it_did_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    // A file with no tables yet.
    drop(rusqlite::Connection::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0
    );
    drop(conn);
    let store = open(&path);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let report = store.migrate().unwrap();
    assert_eq!((report.from, report.to), (SCHEMA_VERSION, SCHEMA_VERSION));
    assert_eq!(
        report.to_string(),
        format!("sqlite schema already at version {SCHEMA_VERSION}")
    );
    let journal: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[tokio::test]
async fn an_unopenable_path_is_a_backend_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder").join("app.db");
    let err = SqliteStore::open(&SqliteConfig::new(&path)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "sqlite",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-folder"), "{err}");

    let not_a_db = dir.path().join("text.db");
    std::fs::write(&not_a_db, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&SqliteConfig::new(&not_a_db)).unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("text.db"), "{err}");
}

#[tokio::test]
async fn bad_stored_values_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.db");
    let store = open(&path);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO events (stream_id, version, topic, timestamp, state) \
             VALUES ('neg', -3, 't', 0, x'00');
         INSERT INTO events (stream_id, version, topic, timestamp, state) \
             VALUES ('nul', 1, 't', 0, x'00');
         UPDATE events SET state = 12 WHERE stream_id = 'nul';
         INSERT INTO tracking (follower, position) VALUES ('f', -1);",
    )
    .unwrap();
    drop(conn);
    // Versions start at 1: a negative one is outside every stream query...
    assert!(store
        .select_events("neg", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    // ... and a state that is not bytes is an error.
    let err = store
        .select_events("nul", StreamQuery::all())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    let err = store.load("nul", None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    // The log holds the negative version, which does not fit a u64.
    assert!(store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .is_err());
    assert!(store.tracking_position("f").await.is_err());
}

#[tokio::test]
async fn in_memory_stores_are_isolated() {
    let a = SqliteStore::open_in_memory().unwrap();
    let b = SqliteStore::open_in_memory().unwrap();
    assert_eq!(a.path(), None);
    a.record(&events(vec![event("s", 1, "A")])).await.unwrap();
    assert_eq!(a.max_notification_id().await.unwrap(), 1);
    assert_eq!(b.max_notification_id().await.unwrap(), 0);
    assert_eq!(a.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(a.backend(), "sqlite");
}

#[tokio::test]
async fn synchronous_levels_all_open() {
    let dir = tempfile::tempdir().unwrap();
    for (i, level) in [Synchronous::Off, Synchronous::Normal, Synchronous::Full]
        .into_iter()
        .enumerate()
    {
        let mut config = SqliteConfig::new(dir.path().join(format!("{i}.db")));
        config.synchronous = level;
        let store = SqliteStore::open(&config).unwrap();
        store
            .record(&events(vec![event("s", 1, "A")]))
            .await
            .unwrap();
    }
    assert_eq!(SqliteConfig::new("x").synchronous, Synchronous::Normal);
}

#[tokio::test]
async fn topic_filters_select_only_those_topics() {
    let store = SqliteStore::open_in_memory().unwrap();
    for v in 1..=6 {
        let topic = ["A.One", "A.Two", "B.Three"][(v as usize - 1) % 3];
        store
            .record(&events(vec![event("s", v, topic)]))
            .await
            .unwrap();
    }
    let select = |topics: Vec<&str>, after, limit| {
        let store = store.clone();
        let query = NotificationQuery::after(after, limit).topics(topics);
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
    assert_eq!(
        select(vec!["A.One", "B.Three"], 0, 10).await,
        vec![1, 3, 4, 6]
    );
    assert_eq!(select(vec!["A.One", "B.Three"], 1, 2).await, vec![3, 4]);
    assert_eq!(select(vec!["Nope"], 0, 10).await, Vec::<u64>::new());
    assert_eq!(select(vec![], 4, 10).await, vec![5, 6]);
    assert_eq!(select(vec![], 0, 0).await, Vec::<u64>::new());
}

const CREATE_VIEW: &str = "CREATE TABLE IF NOT EXISTS seen (stream_id TEXT, version INTEGER)";

pub(crate) fn seen(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM seen", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_dropped_projection_transaction_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proj.db");
    let store = open(&path);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.backend(), "sqlite");
    tx.execute(CREATE_VIEW, &[]).await.unwrap();
    tx.execute("INSERT INTO seen VALUES ('s', 1)", &[])
        .await
        .unwrap();
    tx.track(Tracking::new("view", 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seen(&path), 1);

    // Written, then dropped: rolled back.
    let mut tx = store.begin().await.unwrap();
    tx.execute("INSERT INTO seen VALUES ('s', 2)", &[])
        .await
        .unwrap();
    tx.sqlite()
        .unwrap()
        .execute("INSERT INTO seen VALUES ('s', 3)", [])
        .unwrap();
    // Other readers do not see uncommitted rows, and are not blocked.
    assert_eq!(store.tracking_position("view").await.unwrap(), Some(1));
    drop(tx);
    assert_eq!(seen(&path), 1);
    assert_eq!(store.tracking_position("view").await.unwrap(), Some(1));

    // A stale position: a tracking conflict; dropping the transaction drops the rows too.
    let mut tx = store.begin().await.unwrap();
    tx.execute("INSERT INTO seen VALUES ('s', 4)", &[])
        .await
        .unwrap();
    let err = tx.track(Tracking::new("view", 1)).await.unwrap_err();
    match err {
        Error::Conflict(Conflict::Tracking {
            follower,
            position,
            current,
        }) => assert_eq!((follower.as_str(), position, current), ("view", 1, 1)),
        other => panic!("not a tracking conflict: {other:?}"),
    }
    drop(tx);
    assert_eq!(seen(&path), 1);

    // The store writes normally afterwards.
    store
        .record(&events(vec![event("s", 1, "A")]))
        .await
        .unwrap();
}

/// Counts events into a table of the store's own file: through the connection itself
/// (`tx.sqlite()`) or through portable SQL.
struct Counter {
    portable: bool,
}

#[async_trait]
impl Projection for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn topics(&self) -> Vec<String> {
        vec!["Counted".into()]
    }

    async fn setup(&mut self, tx: &mut Transaction) -> Result<(), BoxError> {
        tx.execute(CREATE_VIEW, &[]).await?;
        Ok(())
    }

    async fn process(
        &mut self,
        tx: &mut Transaction,
        notification: &Notification,
    ) -> Result<(), BoxError> {
        let stream_id = notification.event.stream_id.as_str();
        let version = notification.event.version as i64;
        if self.portable {
            tx.execute(
                "INSERT INTO seen (stream_id, version) VALUES ($1, $2)",
                &[stream_id.into(), version.into()],
            )
            .await?;
        } else {
            tx.sqlite()?
                .prepare_cached("INSERT INTO seen (stream_id, version) VALUES (?1, ?2)")?
                .execute(rusqlite::params![stream_id, version])?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_writes_its_rows_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("follow.db");
    let store = open(&path);
    for v in 1..=10 {
        let topic = if v % 2 == 0 { "Counted" } else { "Ignored" };
        store
            .record(&events(vec![event("s", v, topic)]))
            .await
            .unwrap();
    }
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mut follower = Follower::builder(shared.clone(), Counter { portable: false })
        .batch_size(2)
        .build();
    assert_eq!(follower.catch_up().await.unwrap(), 5);
    assert_eq!(seen(&path), 5);
    assert_eq!(store.tracking_position("counter").await.unwrap(), Some(10));

    // Following: a new event wakes it.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut follower = Follower::builder(shared, Counter { portable: true })
        .poll_interval(std::time::Duration::from_secs(60))
        .build();
    let running = tokio::spawn(async move {
        follower
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    store
        .record(&events(vec![
            event("s", 11, "Ignored"),
            event("s", 12, "Counted"),
        ]))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.tracking_position("counter").await.unwrap() != Some(12) {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never woke"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(seen(&path), 6);
    assert_eq!(
        store.followers().await.unwrap(),
        vec![Tracking::new("counter", 12)]
    );
}

#[tokio::test]
async fn the_store_is_usable_as_a_trait_object() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    store
        .record(&events(vec![event("s", 1, "A")]))
        .await
        .unwrap();
    assert_eq!(store.load("s", None).await.unwrap().events.len(), 1);
    assert!(store.wakeups().is_some());
}

#[tokio::test]
async fn the_log_is_copied_into_the_database_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.db");
    let store = open(&path);
    let before = std::fs::metadata(&path).unwrap().len();
    for v in 1..=50 {
        store
            .record(&events(vec![event("s", v, "A")]))
            .await
            .unwrap();
    }
    // SQLite alone would leave these commits in the log until 10,000 pages.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(store.max_notification_id().await.unwrap(), 50);
}

#[tokio::test]
async fn notification_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.db");
    let store = open(&path);
    store
        .record(&events(vec![event("a", 1, "A"), event("b", 1, "B")]))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let newest = conn.execute("DELETE FROM events WHERE id = 2", []);
    assert!(newest.is_err(), "the newest event must stay");
    conn.execute("DELETE FROM events WHERE id = 1", []).unwrap();
    drop(conn);
    assert_eq!(
        store
            .record(&events(vec![event("c", 1, "C")]))
            .await
            .unwrap(),
        vec![3]
    );
}
