//! The conformance suite every eventfold store passes: one set of checks, run against
//! memory, SQLite and PostgreSQL alike.
//!
//! A backend's integration tests invoke [`conformance_tests!`] with an `async fn` that
//! returns a fresh, empty, isolated store; each check becomes its own `#[tokio::test]`:
//!
//! ```
//! async fn fresh_store() -> eventfold_core::InMemoryStore {
//!     eventfold_core::InMemoryStore::new()
//! }
//! # #[cfg(any())] // the macro expands to #[tokio::test] items, which doctests do not run
//! eventfold_conformance::conformance_tests!(fresh_store);
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! eventfold_conformance::records_and_selects_events(fresh_store().await).await;
//! # });
//! ```

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use eventfold_core::{
    Aggregate, Application, BoxError, Conflict, Envelope, Error, EventReader, EventWriter,
    ExpectedVersion, Follower, Handles, Loaded, Metadata, Notification, NotificationQuery,
    NotificationReader, Projection, Recording, Result, Root, SqlValue, Store, StoredEvent,
    StreamQuery, Subscriptions, Timestamp, Tracking, TrackingReader, Transaction, View,
};

/// A store under test that keeps `guard` (a temporary folder, a schema to drop) alive for
/// as long as any clone of it exists, so the suite can hand clones to tasks freely.
#[derive(Debug)]
pub struct Guarded<S, G> {
    /// The store itself.
    pub store: S,
    guard: Arc<G>,
}

impl<S: Clone, G> Clone for Guarded<S, G> {
    fn clone(&self) -> Self {
        Guarded {
            store: self.store.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<S, G> Guarded<S, G> {
    /// `store`, with `guard` dropped after its last clone.
    pub fn new(store: S, guard: G) -> Self {
        Guarded {
            store,
            guard: Arc::new(guard),
        }
    }
}

#[async_trait]
impl<S: EventReader, G: Send + Sync> EventReader for Guarded<S, G> {
    async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
        self.store.select_events(stream_id, query).await
    }
    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        self.store.select_snapshots(stream_id, query).await
    }
    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
        self.store.load(stream_id, up_to).await
    }
}

#[async_trait]
impl<S: EventWriter, G: Send + Sync> EventWriter for Guarded<S, G> {
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
        self.store.record(recording).await
    }
}

#[async_trait]
impl<S: NotificationReader, G: Send + Sync> NotificationReader for Guarded<S, G> {
    async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>> {
        self.store.select_notifications(query).await
    }
    async fn max_notification_id(&self) -> Result<u64> {
        self.store.max_notification_id().await
    }
    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.store.wakeups()
    }
}

#[async_trait]
impl<S: TrackingReader, G: Send + Sync> TrackingReader for Guarded<S, G> {
    async fn tracking_position(&self, follower: &str) -> Result<Option<u64>> {
        self.store.tracking_position(follower).await
    }
    async fn followers(&self) -> Result<Vec<Tracking>> {
        self.store.followers().await
    }
}

#[async_trait]
impl<S: Store, G: Send + Sync> Store for Guarded<S, G> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
    async fn begin(&self) -> Result<Transaction> {
        self.store.begin().await
    }
    fn is_transient_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        self.store.is_transient_error(error)
    }
}

/// What a store under test must be.
pub trait ConformingStore: Store + Clone + 'static {}
impl<T: Store + Clone + 'static> ConformingStore for T {}

/// An event record for tests: `topic` `Test.<name>`, state `"<stream>@<version>"`.
pub fn event(stream_id: &str, version: u64, name: &str) -> StoredEvent {
    StoredEvent::new(
        stream_id,
        version,
        format!("Test.{name}"),
        Timestamp::from_micros(1_700_000_000_000_000 + version as i64),
        format!("{stream_id}@{version}").into_bytes(),
    )
}

fn snapshot(stream_id: &str, version: u64) -> StoredEvent {
    StoredEvent::new(
        stream_id,
        version,
        "Test",
        Timestamp::from_micros(1_700_000_000_000_000 + version as i64),
        format!("snapshot {stream_id}@{version}").into_bytes(),
    )
}

fn events_only(events: Vec<StoredEvent>) -> Recording {
    events.into_iter().fold(Recording::new(), Recording::event)
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

fn ids(notifications: &[Notification]) -> Vec<u64> {
    notifications.iter().map(|n| n.id).collect()
}

/// A stream comes back exactly as recorded, and every range query selects the right part.
pub async fn records_and_selects_events<S: ConformingStore>(store: S) {
    let written: Vec<_> = (1..=5).map(|v| event("s-1", v, "Happened")).collect();
    store.record(&events_only(written.clone())).await.unwrap();
    store
        .record(&events_only(vec![event("s-2", 1, "Other")]))
        .await
        .unwrap();

    let all = store
        .select_events("s-1", StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(
        all, written,
        "records come back byte for byte, oldest first"
    );

    let q = |after: Option<u64>, up_to: Option<u64>, descending: bool, limit: Option<usize>| {
        let mut query = StreamQuery::all();
        if let Some(after) = after {
            query = query.after(after);
        }
        if let Some(up_to) = up_to {
            query = query.up_to(up_to);
        }
        if descending {
            query = query.descending();
        }
        if let Some(limit) = limit {
            query = query.limit(limit);
        }
        query
    };
    let sel = |query| {
        let store = store.clone();
        async move { versions(&store.select_events("s-1", query).await.unwrap()) }
    };
    assert_eq!(sel(q(Some(2), None, false, None)).await, vec![3, 4, 5]);
    assert_eq!(sel(q(None, Some(3), false, None)).await, vec![1, 2, 3]);
    assert_eq!(sel(q(Some(1), Some(4), false, Some(2))).await, vec![2, 3]);
    assert_eq!(sel(q(None, None, true, Some(2))).await, vec![5, 4]);
    assert_eq!(sel(q(None, Some(4), true, Some(1))).await, vec![4]);
    assert!(store
        .select_events("missing", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
}

/// A second write of an existing version is a typed conflict and leaves the stream as it was.
pub async fn duplicate_version_is_a_conflict<S: ConformingStore>(store: S) {
    store
        .record(&events_only(vec![event("s", 1, "A"), event("s", 2, "B")]))
        .await
        .unwrap();
    let err = store
        .record(&events_only(vec![
            event("s", 2, "Late"),
            event("s", 3, "Late"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(
        err_conflict(err),
        Conflict::streams([("s".to_owned(), 1)]),
        "the conflict names the stream and the version the writer expected"
    );
    let stream = store.select_events("s", StreamQuery::all()).await.unwrap();
    assert_eq!(versions(&stream), vec![1, 2]);
    assert_eq!(
        stream[1].topic, "Test.B",
        "the first writer's event is intact"
    );
    assert_eq!(
        store.max_notification_id().await.unwrap(),
        ids_of(&store).await.last().copied().unwrap()
    );
}

async fn ids_of<S: ConformingStore>(store: &S) -> Vec<u64> {
    ids(&store
        .select_notifications(&NotificationQuery::after(0, 1000))
        .await
        .unwrap())
}

/// A recording that conflicts on one stream writes nothing on any stream.
pub async fn recording_is_atomic_across_streams<S: ConformingStore>(store: S) {
    store
        .record(&events_only(vec![event("taken", 1, "A")]))
        .await
        .unwrap();
    let err = store
        .record(
            &Recording::new()
                .event(event("fresh", 1, "A"))
                .event(event("taken", 1, "B"))
                .snapshot(snapshot("fresh", 1))
                .tracking(Tracking::new("f", 9)),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "got {err:?}");
    assert!(store
        .select_events("fresh", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .select_snapshots("fresh", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.tracking_position("f").await.unwrap(), None);
    assert_eq!(ids_of(&store).await.len(), 1);
}

/// Two writers racing for the same next version: exactly one wins, the other gets a conflict.
pub async fn racing_writers_one_conflict<S: ConformingStore>(store: S) {
    store
        .record(&events_only(vec![event("race", 1, "Created")]))
        .await
        .unwrap();
    for round in 2..12u64 {
        let tasks: Vec<_> = (0..2)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut e = event("race", round, "Raced");
                    e.state = format!("writer {writer}").into_bytes();
                    store.record(&events_only(vec![e])).await
                })
            })
            .collect();
        let mut wins = 0;
        let mut conflicts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(Error::Conflict(Conflict::Streams(expected))) => {
                    assert_eq!(expected, vec![ExpectedVersion::new("race", round - 1)]);
                    conflicts += 1
                }
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 1), "round {round}");
    }
    let stream = store
        .select_events("race", StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(versions(&stream), (1..12).collect::<Vec<_>>());
}

/// Notification ids ascend in recording order; `after`, `limit` and topic filters work;
/// `max_notification_id` is the last id.
pub async fn notification_log_is_ordered_and_filtered<S: ConformingStore>(store: S) {
    assert_eq!(store.max_notification_id().await.unwrap(), 0);
    let mut returned = Vec::new();
    for v in 1..=4 {
        returned.extend(
            store
                .record(&events_only(vec![
                    event("a", v, "Even"),
                    event("b", v, if v % 2 == 0 { "Even" } else { "Odd" }),
                ]))
                .await
                .unwrap(),
        );
    }
    let all = store
        .select_notifications(&NotificationQuery::after(0, 100))
        .await
        .unwrap();
    assert_eq!(ids(&all), returned, "record returns the ids the log shows");
    assert!(ids(&all).windows(2).all(|w| w[0] < w[1]), "ascending ids");
    let order: Vec<_> = all
        .iter()
        .map(|n| (n.event.stream_id.as_str(), n.event.version))
        .collect();
    assert_eq!(
        order,
        vec![
            ("a", 1),
            ("b", 1),
            ("a", 2),
            ("b", 2),
            ("a", 3),
            ("b", 3),
            ("a", 4),
            ("b", 4)
        ]
    );
    assert_eq!(all[3].event, event("b", 2, "Even"));
    assert_eq!(
        store.max_notification_id().await.unwrap(),
        *returned.last().unwrap()
    );

    let page = store
        .select_notifications(&NotificationQuery::after(returned[2], 3))
        .await
        .unwrap();
    assert_eq!(ids(&page), returned[3..6].to_vec());

    let odd = store
        .select_notifications(&NotificationQuery::after(0, 100).topics(["Test.Odd"]))
        .await
        .unwrap();
    assert_eq!(
        odd.iter().map(|n| n.event.version).collect::<Vec<_>>(),
        vec![1, 3]
    );
    let none = store
        .select_notifications(&NotificationQuery::after(*returned.last().unwrap(), 10))
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// Snapshots: latest at or below a version; `load` = that snapshot + later events only.
pub async fn snapshots_and_load<S: ConformingStore>(store: S) {
    let empty = store.load("nobody", None).await.unwrap();
    assert!(empty.snapshot.is_none() && empty.events.is_empty());

    let events: Vec<_> = (1..=12).map(|v| event("w", v, "Happened")).collect();
    store
        .record(&events_only(events[..5].to_vec()).snapshot(snapshot("w", 5)))
        .await
        .unwrap();
    store
        .record(&events_only(events[5..10].to_vec()).snapshot(snapshot("w", 10)))
        .await
        .unwrap();
    store
        .record(&events_only(events[10..].to_vec()))
        .await
        .unwrap();
    // Writing a snapshot of an existing version again is harmless.
    store
        .record(&events_only(vec![event("other", 1, "X")]).snapshot(snapshot("w", 10)))
        .await
        .unwrap();

    let snaps = store
        .select_snapshots("w", StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(versions(&snaps), vec![5, 10]);
    assert_eq!(snaps[0], snapshot("w", 5));

    let latest = store.load("w", None).await.unwrap();
    assert_eq!(latest.snapshot.as_ref().map(|s| s.version), Some(10));
    assert_eq!(versions(&latest.events), vec![11, 12]);

    let at_7 = store.load("w", Some(7)).await.unwrap();
    assert_eq!(at_7.snapshot.as_ref().map(|s| s.version), Some(5));
    assert_eq!(versions(&at_7.events), vec![6, 7]);

    let at_3 = store.load("w", Some(3)).await.unwrap();
    assert!(at_3.snapshot.is_none());
    assert_eq!(versions(&at_3.events), vec![1, 2, 3]);
    assert_eq!(at_3.events, events[..3].to_vec());
}

/// A recording can move a follower position, only forwards, atomically with its events.
pub async fn tracking_moves_forward_only<S: ConformingStore>(store: S) {
    assert_eq!(store.tracking_position("proc").await.unwrap(), None);
    let with_tracking = |stream: &str, position| {
        Recording::new()
            .event(event(stream, 1, "Processed"))
            .tracking(Tracking::new("proc", position))
    };
    store.record(&with_tracking("p1", 3)).await.unwrap();
    assert_eq!(store.tracking_position("proc").await.unwrap(), Some(3));
    let err = store.record(&with_tracking("p2", 3)).await.unwrap_err();
    assert_eq!(
        err_conflict(err),
        Conflict::tracking("proc", 3, 3),
        "same position again: a tracking conflict naming the follower"
    );
    assert!(store
        .select_events("p2", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    store.record(&with_tracking("p3", 7)).await.unwrap();
    assert_eq!(store.tracking_position("proc").await.unwrap(), Some(7));
}

fn err_conflict(err: Error) -> Conflict {
    match err {
        Error::Conflict(conflict) => conflict,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A transaction commits the position; an uncommitted one changes nothing; a position that
/// does not move forward is a conflict naming the follower; `followers` lists them all.
pub async fn projection_positions<S: ConformingStore>(store: S) {
    assert_eq!(store.tracking_position("view").await.unwrap(), None);
    let mut tx = store.begin().await.unwrap();
    tx.track(Tracking::new("view", 5)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.tracking_position("view").await.unwrap(), Some(5));
    let mut tx = store.begin().await.unwrap();
    tx.track(Tracking::new("view", 9)).await.unwrap();
    drop(tx);
    assert_eq!(store.tracking_position("view").await.unwrap(), Some(5));
    let mut tx = store.begin().await.unwrap();
    let err = tx.track(Tracking::new("view", 4)).await.unwrap_err();
    assert_eq!(err_conflict(err), Conflict::tracking("view", 4, 5));
    tx.rollback().await.unwrap();
    assert_eq!(store.tracking_position("view").await.unwrap(), Some(5));

    store
        .record(&Recording::new().tracking(Tracking::new("another", 2)))
        .await
        .unwrap();
    assert_eq!(
        store.followers().await.unwrap(),
        vec![Tracking::new("another", 2), Tracking::new("view", 5)]
    );
}

/// A table of this check's own (dropped by the caller), or `None` on a store without SQL.
async fn scratch_table(store: &impl Store) -> Option<String> {
    let table = format!("conformance_{}", uuid_like());
    let mut tx = store.begin().await.unwrap();
    let created = tx
        .execute(
            &format!("CREATE TABLE {table} (k TEXT PRIMARY KEY, n BIGINT NOT NULL)"),
            &[],
        )
        .await;
    match created {
        Ok(_) => {
            tx.commit().await.unwrap();
            Some(table)
        }
        Err(Error::Unsupported { .. }) => None,
        Err(other) => panic!("cannot create a table: {other:?}"),
    }
}

async fn drop_table(store: &impl Store, table: Option<String>) {
    if let Some(table) = table {
        let mut tx = store.begin().await.unwrap();
        tx.execute(&format!("DROP TABLE {table}"), &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}_{:x}_{}",
        std::process::id(),
        Timestamp::now().as_micros(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn rows(store: &impl Store, table: &str) -> Vec<(String, i64)> {
    let mut tx = store.begin().await.unwrap();
    let rows = tx
        .query(&format!("SELECT k, n FROM {table} ORDER BY k"), &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.into_iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The caller's own row (portable SQL where the store has SQL, a staged effect everywhere)
/// and an aggregate save in one transaction: rolled back, neither is visible and the
/// application's cache does not hold the aggregate; committed, both are.
pub async fn own_row_and_save_in_one_transaction<S: ConformingStore>(store: S) {
    let table = scratch_table(&store).await;
    let app = Application::builder(store.clone()).cache(100).build();
    let effects = Arc::new(Mutex::new(Vec::<String>::new()));

    for commit in [false, true] {
        let mut account = Root::<Account>::with_id(format!("acct-{commit}"), AccountEvent::Opened);
        account.trigger(AccountEvent::Deposited { amount: 7 });
        let mut tx = app.begin().await.unwrap();
        if let Some(table) = &table {
            tx.execute(
                &format!("INSERT INTO {table} (k, n) VALUES ($1, $2)"),
                &[
                    SqlValue::from(format!("row-{commit}")),
                    SqlValue::from(7i64),
                ],
            )
            .await
            .unwrap();
        }
        let staged = effects.clone();
        tx.on_commit(move || staged.lock().unwrap().push(format!("effect-{commit}")));
        let ids = app.save_in(&mut tx, &mut account).await.unwrap();
        assert_eq!(ids.len(), 2);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let loaded = app.repository().get::<Account>(account.id().as_str()).await;
        if commit {
            assert_eq!(loaded.unwrap().balance, 7);
        } else {
            assert!(
                matches!(loaded, Err(Error::AggregateNotFound { .. })),
                "a rolled-back save is neither stored nor cached: {loaded:?}"
            );
        }
    }
    assert_eq!(*effects.lock().unwrap(), vec!["effect-true".to_owned()]);
    if let Some(table) = &table {
        assert_eq!(rows(&store, table).await, vec![("row-true".to_owned(), 7)]);
    }
    let log = store
        .select_notifications(&NotificationQuery::after(0, 100))
        .await
        .unwrap();
    assert!(
        log.iter().all(|n| n.event.stream_id == "acct-true"),
        "{log:?}"
    );
    assert_eq!(log.len(), 2);
    drop_table(&store, table).await;
}

/// A conflicting save inside a transaction is a typed conflict; rolling back leaves
/// nothing of the transaction.
pub async fn conflict_inside_a_transaction<S: ConformingStore>(store: S) {
    store
        .record(&events_only(vec![event("c", 1, "A")]))
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.record(&events_only(vec![event("c-other", 1, "A")]))
        .await
        .unwrap();
    let err = tx
        .record(&events_only(vec![event("c", 1, "Again")]))
        .await
        .unwrap_err();
    assert_eq!(err_conflict(err), Conflict::streams([("c".to_owned(), 0)]));
    tx.rollback().await.unwrap();
    assert!(
        err_display_says_taken(&store).await,
        "a first save of a taken id says so"
    );
    assert!(store
        .select_events("c-other", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
}

async fn err_display_says_taken(store: &impl Store) -> bool {
    let err = store
        .record(&events_only(vec![event("c", 1, "Again")]))
        .await
        .unwrap_err();
    err.to_string().contains("already exists")
}

/// Appends without a known version, from concurrent writers, on one stream: every record
/// is stored with its own consecutive version, each writer's in its own order.
pub async fn concurrent_appends_keep_per_stream_order<S: ConformingStore>(store: S) {
    store
        .record(&events_only(vec![event("row-1", 1, "Created")]))
        .await
        .unwrap();
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    let mut change = event("row-1", 0, "Changed");
                    change.state = format!("{writer}:{n}").into_bytes();
                    let recording = Recording::new().append(change);
                    if n % 2 == 0 {
                        store.record(&recording).await.unwrap();
                    } else {
                        let mut tx = store.begin().await.unwrap();
                        tx.record(&recording).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let stream = store
        .select_events("row-1", StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(versions(&stream), (1..=21).collect::<Vec<_>>());
    for writer in 0..2 {
        let mine: Vec<String> = stream
            .iter()
            .map(|e| String::from_utf8(e.state.clone()).unwrap())
            .filter(|s| s.starts_with(&format!("{writer}:")))
            .collect();
        let expected: Vec<String> = (0..10).map(|n| format!("{writer}:{n}")).collect();
        assert_eq!(mine, expected, "writer {writer} keeps its order");
    }
    let log = store
        .select_notifications(&NotificationQuery::after(0, 100))
        .await
        .unwrap();
    assert_eq!(log.len(), 21);
    let in_log: Vec<u64> = log.iter().map(|n| n.event.version).collect();
    assert_eq!(
        in_log,
        (1..=21).collect::<Vec<_>>(),
        "log order is stream order"
    );
}

/// Metadata comes back through the stream and the log; records without any have none.
pub async fn metadata_round_trip<S: ConformingStore>(store: S) {
    let metadata = Metadata::new()
        .with_correlation_id("req-42")
        .with_causation_id("msg-7")
        .with(
            "headers",
            serde_json::json!({"user_id": 3, "tags": ["a", "b"]}),
        );
    let ids = store
        .record(
            &Recording::new()
                .event(event("m", 1, "A").with_metadata(metadata.clone()))
                .event(event("m", 2, "B"))
                .append(event("m", 0, "C").with_metadata(metadata.clone())),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let stream = store.select_events("m", StreamQuery::all()).await.unwrap();
    assert_eq!(stream[0].metadata, metadata);
    assert!(stream[1].metadata.is_empty());
    assert_eq!(stream[2].metadata, metadata);
    assert_eq!(stream[2].version, 3);
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log[0].event.metadata.correlation_id(), Some("req-42"));
    assert_eq!(log[2].event.metadata, metadata);
    let loaded = store.load("m", None).await.unwrap();
    assert_eq!(loaded.events[0].metadata, metadata);
}

/// The log read newest first, a page at a time, with and without a topic filter.
pub async fn log_newest_first_in_pages<S: ConformingStore>(store: S) {
    for v in 1..=7 {
        store
            .record(&events_only(vec![event(
                "p",
                v,
                if v % 2 == 0 { "Even" } else { "Odd" },
            )]))
            .await
            .unwrap();
    }
    let all = ids_of(&store).await;
    let first = store
        .select_notifications(&NotificationQuery::newest(3))
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![all[6], all[5], all[4]]);
    let second = store
        .select_notifications(&NotificationQuery::newest(3).before(all[4]))
        .await
        .unwrap();
    assert_eq!(ids(&second), vec![all[3], all[2], all[1]]);
    let last = store
        .select_notifications(&NotificationQuery::newest(3).before(all[1]))
        .await
        .unwrap();
    assert_eq!(ids(&last), vec![all[0]]);
    let odd = store
        .select_notifications(&NotificationQuery::newest(10).topics(["Test.Odd"]))
        .await
        .unwrap();
    assert_eq!(
        versions(&odd.into_iter().map(|n| n.event).collect::<Vec<_>>()),
        vec![7, 5, 3, 1]
    );
    let window = store
        .select_notifications(&NotificationQuery::after(all[1], 10).before(all[4]))
        .await
        .unwrap();
    assert_eq!(ids(&window), vec![all[2], all[3]]);
}

/// A projection batch that fails halfway, then is retried, applies every notification
/// exactly once (its SQL rows where the store has SQL, its staged effects everywhere).
pub async fn failed_batch_applies_nothing<S: ConformingStore>(store: S) {
    let table = scratch_table(&store).await;
    for v in 1..=6 {
        store
            .record(&events_only(vec![event("b", v, "Happened")]))
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let projection = Flaky {
        table: table.clone(),
        fail_at: Some(4),
        seen: seen.clone(),
    };
    let mut follower = Follower::builder(Arc::new(store.clone()), projection)
        .batch_size(100)
        .build();
    let err = follower.catch_up().await.unwrap_err();
    assert!(matches!(err, Error::Projection { .. }), "{err:?}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "no staged effect of the failed batch"
    );
    assert_eq!(store.tracking_position("flaky").await.unwrap(), None);
    if let Some(table) = &table {
        assert!(
            rows(&store, table).await.is_empty(),
            "no row of the failed batch"
        );
    }
    assert_eq!(follower.catch_up().await.unwrap(), 6);
    assert_eq!(*seen.lock().unwrap(), (1..=6).collect::<Vec<u64>>());
    if let Some(table) = &table {
        let applied = rows(&store, table).await;
        assert_eq!(applied.len(), 6);
        assert!(applied.iter().all(|(_, n)| *n == 1), "{applied:?}");
    }
    assert_eq!(follower.catch_up().await.unwrap(), 0);
    drop(follower);
    drop_table(&store, table).await;
}

struct Flaky {
    table: Option<String>,
    fail_at: Option<u64>,
    seen: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl Projection for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn process(
        &mut self,
        tx: &mut Transaction,
        n: &Notification,
    ) -> std::result::Result<(), BoxError> {
        if let Some(table) = &self.table {
            tx.execute(
                &format!(
                    "INSERT INTO {table} (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = {table}.n + 1"
                ),
                &[SqlValue::from(format!("v{}", n.event.version))],
            )
            .await?;
        }
        if self.fail_at == Some(n.event.version) {
            self.fail_at = None;
            return Err("the projection failed once".into());
        }
        let seen = self.seen.clone();
        let version = n.event.version;
        tx.on_commit(move || seen.lock().unwrap().push(version));
        Ok(())
    }
}

/// A view over two aggregate types, stopped halfway and restarted, ends equal to a view
/// built by one fresh replay; it sees decoded events, ids and metadata.
pub async fn view_over_two_types_restarts<S: ConformingStore>(store: S) {
    let app = Application::builder(store.clone()).build();
    let mut accounts = Vec::new();
    for i in 0..3 {
        let mut account = Root::<Account>::with_id(format!("a{i}"), AccountEvent::Opened);
        account.trigger(AccountEvent::Deposited {
            amount: 10 * (i + 1),
        });
        app.save_all_with(
            &mut [&mut account],
            &Metadata::new().with_correlation_id(format!("c{i}")),
        )
        .await
        .unwrap();
        accounts.push(account);
    }
    let mut transfer =
        Root::<Transfer>::with_id("t1".to_owned(), TransferEvent::Sent { amount: 5 });
    app.save(&mut transfer).await.unwrap();

    let first = Totals::default();
    let mut follower = Follower::view(&app, "totals", first.clone())
        .batch_size(2)
        .build();
    assert_eq!(follower.catch_up().await.unwrap(), 7);
    drop(follower);

    accounts[0].trigger(AccountEvent::Deposited { amount: 1 });
    app.save(&mut accounts[0]).await.unwrap();
    transfer.trigger(TransferEvent::Sent { amount: 2 });
    app.save(&mut transfer).await.unwrap();

    let mut restarted = Follower::view(&app, "totals", first.clone())
        .batch_size(2)
        .build();
    assert_eq!(
        restarted.catch_up().await.unwrap(),
        2,
        "only what came after the stop"
    );

    let fresh = Totals::default();
    let mut replay = Follower::view(&app, "fresh", fresh.clone()).build();
    assert_eq!(replay.catch_up().await.unwrap(), 9);
    let (a, b) = (first.snapshot(), fresh.snapshot());
    assert_eq!(a, b);
    assert_eq!(a.deposits.get("a0"), Some(&11));
    assert_eq!(a.sent, 7);
    assert_eq!(a.correlations, vec!["c0", "c1", "c2"]);
}

/// A test aggregate: a bank account with a `String` id.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Account {
    balance: i64,
}

/// Events of [`Account`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AccountEvent {
    /// Opened.
    Opened,
    /// Money came in.
    Deposited {
        /// How much.
        amount: i64,
    },
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Id = String;
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Deposited { amount } = event {
            self.balance += amount;
        }
    }
}

/// A second test aggregate type.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    sent: i64,
}

/// Events of [`Transfer`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum TransferEvent {
    /// Money went out.
    Sent {
        /// How much.
        amount: i64,
    },
}

impl Aggregate for Transfer {
    const TYPE: &'static str = "Transfer";
    type Id = String;
    type Event = TransferEvent;
    fn apply(&mut self, event: &TransferEvent) {
        let TransferEvent::Sent { amount } = event;
        self.sent += amount;
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct TotalsState {
    deposits: std::collections::BTreeMap<String, i64>,
    sent: i64,
    correlations: Vec<String>,
}

/// A view whose state lives in memory and changes only through committed effects.
#[derive(Clone, Default)]
struct Totals(Arc<Mutex<TotalsState>>);

impl Totals {
    fn snapshot(&self) -> TotalsState {
        self.0.lock().unwrap().clone()
    }

    fn stage(&self, tx: &mut Transaction, change: impl FnOnce(&mut TotalsState) + Send + 'static) {
        let state = self.0.clone();
        tx.on_commit(move || change(&mut state.lock().unwrap()));
    }
}

impl View for Totals {
    fn subscribe(to: &mut Subscriptions<Self>) {
        to.aggregate::<Account>().aggregate::<Transfer>();
    }
}

#[async_trait]
impl Handles<Account> for Totals {
    async fn handle(
        &mut self,
        tx: &mut Transaction,
        e: Envelope<Account>,
    ) -> std::result::Result<(), BoxError> {
        let correlation = e.metadata.correlation_id().map(str::to_owned);
        let deposit = match e.event {
            AccountEvent::Deposited { amount } => amount,
            AccountEvent::Opened => 0,
        };
        self.stage(tx, move |s| {
            *s.deposits.entry(e.id).or_default() += deposit;
            s.correlations
                .extend(correlation.filter(|c| !s.correlations.contains(c)));
        });
        Ok(())
    }
}

#[async_trait]
impl Handles<Transfer> for Totals {
    async fn handle(
        &mut self,
        tx: &mut Transaction,
        e: Envelope<Transfer>,
    ) -> std::result::Result<(), BoxError> {
        let TransferEvent::Sent { amount } = e.event;
        self.stage(tx, move |s| s.sent += amount);
        Ok(())
    }
}

/// Loading one aggregate type from a stream of another type is a clear error.
pub async fn wrong_aggregate_type_is_refused<S: ConformingStore>(store: S) {
    let app = Application::builder(store.clone())
        .snapshot_every::<Transfer>(1)
        .build();
    let mut account = Root::<Account>::with_id("shared".to_owned(), AccountEvent::Opened);
    app.save(&mut account).await.unwrap();
    let err = app
        .repository()
        .get::<Transfer>("shared")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::WrongAggregateType { expected: "Transfer", found, .. } if found == "Account.Opened"),
        "{err:?}"
    );
    let mut transfer =
        Root::<Transfer>::with_id("shared".to_owned(), TransferEvent::Sent { amount: 1 });
    let err = app.save(&mut transfer).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

/// A store that offers wake-ups fires them when events are recorded.
pub async fn wakeups_fire_on_record<S: ConformingStore>(store: S) {
    let Some(wakeups) = store.wakeups() else {
        return;
    };
    let notified = wakeups.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let writer = store.clone();
    tokio::spawn(async move {
        writer
            .record(&events_only(vec![event("wake", 1, "Up")]))
            .await
            .unwrap();
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), notified)
        .await
        .expect("a wake-up after recording");
}

/// Expands to one `#[tokio::test]` per conformance check, each on a store from `$make`
/// (an `async fn() -> S` giving a fresh, isolated, empty store).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            records_and_selects_events,
            duplicate_version_is_a_conflict,
            recording_is_atomic_across_streams,
            racing_writers_one_conflict,
            notification_log_is_ordered_and_filtered,
            snapshots_and_load,
            tracking_moves_forward_only,
            projection_positions,
            wakeups_fire_on_record,
            own_row_and_save_in_one_transaction,
            conflict_inside_a_transaction,
            concurrent_appends_keep_per_stream_order,
            metadata_round_trip,
            log_newest_first_in_pages,
            failed_batch_applies_nothing,
            view_over_two_types_restarts,
            wrong_aggregate_type_is_refused
        );
    };
    (@each $make:path; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            $crate::$check($make().await).await;
        }
    )*};
}
