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

use std::sync::Arc;

use async_trait::async_trait;
use eventfold_core::{
    Error, EventReader, EventWriter, Loaded, Notification, NotificationQuery, NotificationReader,
    ProjectionStore, Recording, Result, Store, StoredEvent, StreamQuery, Timestamp, Tracking,
    TrackingReader,
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
}

impl<S: Store, G: Send + Sync> Store for Guarded<S, G> {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
}

#[async_trait]
impl<S: ProjectionStore, G: Send + Sync + 'static> ProjectionStore for Guarded<S, G> {
    type Transaction = S::Transaction;

    async fn begin(&self) -> Result<S::Transaction> {
        self.store.begin().await
    }
    async fn commit(&self, tx: S::Transaction, tracking: &Tracking) -> Result<()> {
        self.store.commit(tx, tracking).await
    }
    async fn position(&self, follower: &str) -> Result<Option<u64>> {
        self.store.position(follower).await
    }
}

/// What a store under test must be.
pub trait ConformingStore: Store + ProjectionStore + Clone + 'static {}
impl<T: Store + ProjectionStore + Clone + 'static> ConformingStore for T {}

/// An event record for tests: `topic` `Test.<name>`, state `"<stream>@<version>"`.
pub fn event(stream_id: &str, version: u64, name: &str) -> StoredEvent {
    StoredEvent {
        stream_id: stream_id.to_owned(),
        version,
        topic: format!("Test.{name}"),
        timestamp: Timestamp::from_micros(1_700_000_000_000_000 + version as i64),
        state: format!("{stream_id}@{version}").into_bytes(),
    }
}

fn snapshot(stream_id: &str, version: u64) -> StoredEvent {
    StoredEvent {
        topic: "Test".to_owned(),
        state: format!("snapshot {stream_id}@{version}").into_bytes(),
        ..event(stream_id, version, "Snapshot")
    }
}

fn events_only(events: Vec<StoredEvent>) -> Recording {
    Recording {
        events,
        ..Recording::default()
    }
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

    let q = |after, up_to, descending, limit| StreamQuery {
        after,
        up_to,
        descending,
        limit,
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
    assert!(matches!(err, Error::Conflict(_)), "got {err:?}");
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
        .record(&Recording {
            events: vec![event("fresh", 1, "A"), event("taken", 1, "B")],
            snapshots: vec![snapshot("fresh", 1)],
            tracking: Some(Tracking {
                follower: "f".into(),
                position: 9,
            }),
        })
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
                Err(e) if e.is_conflict() => conflicts += 1,
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
        .select_notifications(&NotificationQuery {
            after: 0,
            limit: 100,
            topics: vec!["Test.Odd".into()],
        })
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
        .record(&Recording {
            events: events[..5].to_vec(),
            snapshots: vec![snapshot("w", 5)],
            tracking: None,
        })
        .await
        .unwrap();
    store
        .record(&Recording {
            events: events[5..10].to_vec(),
            snapshots: vec![snapshot("w", 10)],
            tracking: None,
        })
        .await
        .unwrap();
    store
        .record(&events_only(events[10..].to_vec()))
        .await
        .unwrap();
    // Writing a snapshot of an existing version again is harmless.
    store
        .record(&Recording {
            events: vec![event("other", 1, "X")],
            snapshots: vec![snapshot("w", 10)],
            tracking: None,
        })
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
    let with_tracking = |stream: &str, position| Recording {
        events: vec![event(stream, 1, "Processed")],
        snapshots: vec![],
        tracking: Some(Tracking {
            follower: "proc".into(),
            position,
        }),
    };
    store.record(&with_tracking("p1", 3)).await.unwrap();
    assert_eq!(store.tracking_position("proc").await.unwrap(), Some(3));
    let err = store.record(&with_tracking("p2", 3)).await.unwrap_err();
    assert!(err.is_conflict(), "same position again: {err:?}");
    assert!(store
        .select_events("p2", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    store.record(&with_tracking("p3", 7)).await.unwrap();
    assert_eq!(store.tracking_position("proc").await.unwrap(), Some(7));
}

/// A projection transaction commits the position; an uncommitted one changes nothing;
/// a position that does not move forward is a conflict.
pub async fn projection_positions<S: ConformingStore>(store: S) {
    assert_eq!(store.position("view").await.unwrap(), None);
    let tx = store.begin().await.unwrap();
    store
        .commit(
            tx,
            &Tracking {
                follower: "view".into(),
                position: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.position("view").await.unwrap(), Some(5));
    drop(store.begin().await.unwrap());
    assert_eq!(store.position("view").await.unwrap(), Some(5));
    let tx = store.begin().await.unwrap();
    let err = store
        .commit(
            tx,
            &Tracking {
                follower: "view".into(),
                position: 4,
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "got {err:?}");
    assert_eq!(store.position("view").await.unwrap(), Some(5));
    assert_eq!(store.tracking_position("view").await.unwrap(), Some(5));
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
            wakeups_fire_on_record
        );
    };
    (@each $make:path; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            $crate::$check($make().await).await;
        }
    )*};
}
