use eventfold_core::{
    retry_on_conflict, Aggregate, Application, Conflict, Error, EventReader, InMemoryStore,
    JsonMapper, Root, StreamQuery, Zlib,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::support::{runtime, Tally, TallyEvent};

fn opened() -> TallyEvent {
    TallyEvent::Opened { label: "t".into() }
}

/// Folds every stored event from the start, with no snapshot: the reference state.
async fn full_replay(app: &Application, id: &uuid::Uuid, up_to: Option<u64>) -> (Tally, u64) {
    let events = app
        .store()
        .select_events(
            &id.to_string(),
            match up_to {
                Some(v) => StreamQuery::all().up_to(v),
                None => StreamQuery::all(),
            },
        )
        .await
        .unwrap();
    let mut state = Tally::default();
    for stored in &events {
        state.apply(&app.repository().decode_event::<Tally>(stored).unwrap());
    }
    (state, events.len() as u64)
}

#[derive(Debug, Clone)]
enum Step {
    Add(i64),
    Reset,
    Save,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (-50i64..50).prop_map(Step::Add),
        1 => Just(Step::Reset),
        3 => Just(Step::Save),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Loading = latest snapshot + later events gives exactly the state and version of a
    /// full replay, at the head and at every earlier version, whatever the interval and
    /// however events were batched into saves.
    #[test]
    fn snapshot_plus_later_events_equals_full_replay(
        interval in 1u64..8,
        steps in proptest::collection::vec(step(), 1..60),
        cache in any::<bool>(),
    ) {
        runtime().block_on(async {
            let app = Application::builder(InMemoryStore::new())
                .mapper(JsonMapper::new().with_compressor(Zlib::default()))
                .snapshot_every::<Tally>(interval)
                .cache(if cache { 16 } else { 0 })
                .build();
            let mut tally = Root::<Tally>::new(opened());
            let id = *tally.id();
            for step in &steps {
                match step {
                    Step::Add(amount) => tally.trigger(TallyEvent::Added { amount: *amount }),
                    Step::Reset => tally.trigger(TallyEvent::Reset),
                    Step::Save => {
                        app.save(&mut tally).await.unwrap();
                        tally = app.repository().get::<Tally>(&id).await.unwrap();
                    }
                }
            }
            app.save(&mut tally).await.unwrap();

            let loaded = app.repository().get::<Tally>(&id).await.unwrap();
            let (replayed, version) = full_replay(&app, &id, None).await;
            prop_assert_eq!(loaded.state(), &replayed);
            prop_assert_eq!(loaded.version(), version);
            prop_assert_eq!(loaded.state(), tally.state());

            for v in 1..=version {
                let at = app.repository().get_at::<Tally>(&id, v).await.unwrap();
                let (replayed, _) = full_replay(&app, &id, Some(v)).await;
                prop_assert_eq!(at.version(), v);
                prop_assert_eq!(at.state(), &replayed);
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn snapshot_holds_state_after_events_applied_once() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone())
        .snapshot_every::<Tally>(5)
        .build();
    let mut tally = Root::<Tally>::new(opened());
    for amount in 1..=4 {
        tally.trigger(TallyEvent::Added { amount });
    }
    app.save(&mut tally).await.unwrap();
    let snapshots = store
        .select_snapshots(&tally.id().to_string(), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].version, 5);
    let body: serde_json::Value = serde_json::from_slice(&snapshots[0].state).unwrap();
    assert_eq!(body["state"]["entries"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(body["state"]["total"], 10);
}

#[tokio::test]
async fn two_writers_one_conflict_and_retry_succeeds() {
    let app = Application::builder(InMemoryStore::new()).build();
    let mut tally = Root::<Tally>::new(opened());
    app.save(&mut tally).await.unwrap();
    let id = *tally.id();

    let mut first = app.repository().get::<Tally>(&id).await.unwrap();
    let mut second = app.repository().get::<Tally>(&id).await.unwrap();
    first.trigger(TallyEvent::Added { amount: 1 });
    second.trigger(TallyEvent::Added { amount: 2 });
    app.save(&mut first).await.unwrap();
    let err = app.save(&mut second).await.unwrap_err();
    let Error::Conflict(conflict) = &err else {
        panic!("expected a conflict, got {err:?}");
    };
    assert_eq!(conflict, &Conflict::streams([(id.to_string(), 1)]));
    assert_eq!(
        second.pending_events().len(),
        1,
        "pending events survive a conflict"
    );

    let loaded = app.repository().get::<Tally>(&id).await.unwrap();
    assert_eq!(loaded.entries, vec![1], "the stream is intact");

    let mut attempts = 0;
    retry_on_conflict(3, || {
        attempts += 1;
        let app = &app;
        async move {
            let mut tally = app.repository().get::<Tally>(&id).await?;
            tally.trigger(TallyEvent::Added { amount: 2 });
            app.save(&mut tally).await
        }
    })
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert_eq!(
        app.repository().get::<Tally>(&id).await.unwrap().entries,
        vec![1, 2]
    );
}

#[tokio::test]
async fn cache_never_hides_a_conflicting_write() {
    let store = InMemoryStore::new();
    let cached = Application::builder(store.clone())
        .cache(10)
        .cache_fastforward(false)
        .build();
    let other = Application::builder(store.clone()).build();

    let mut tally = Root::<Tally>::new(opened());
    cached.save(&mut tally).await.unwrap();
    let id = *tally.id();

    let mut elsewhere = other.repository().get::<Tally>(&id).await.unwrap();
    elsewhere.trigger(TallyEvent::Added { amount: 7 });
    other.save(&mut elsewhere).await.unwrap();

    // The stale cached copy cannot overwrite the other writer's event...
    let mut stale = cached.repository().get::<Tally>(&id).await.unwrap();
    assert_eq!(stale.version(), 1);
    stale.trigger(TallyEvent::Added { amount: 1 });
    assert!(cached.save(&mut stale).await.unwrap_err().is_conflict());
    // ...and the conflict evicted it, so the retry sees the other write.
    let fresh = cached.repository().get::<Tally>(&id).await.unwrap();
    assert_eq!(fresh.entries, vec![7]);

    // With fast-forward (the default) a cache hit catches up by itself.
    let forwarding = Application::builder(store.clone()).cache(10).build();
    assert_eq!(
        forwarding
            .repository()
            .get::<Tally>(&id)
            .await
            .unwrap()
            .version(),
        2
    );
    let mut more = other.repository().get::<Tally>(&id).await.unwrap();
    more.trigger(TallyEvent::Added { amount: 8 });
    other.save(&mut more).await.unwrap();
    let hit = forwarding.repository().get::<Tally>(&id).await.unwrap();
    assert_eq!(hit.entries, vec![7, 8]);
}

#[tokio::test]
async fn save_all_is_atomic_across_aggregates() {
    let app = Application::builder(InMemoryStore::new()).build();
    let mut a = Root::<Tally>::new(opened());
    let mut b = Root::<Tally>::new(opened());
    app.save_all(&mut [&mut a, &mut b]).await.unwrap();

    let mut b_elsewhere = app.repository().get::<Tally>(b.id()).await.unwrap();
    b_elsewhere.trigger(TallyEvent::Reset);
    app.save(&mut b_elsewhere).await.unwrap();

    a.trigger(TallyEvent::Added { amount: 1 });
    b.trigger(TallyEvent::Added { amount: 1 });
    assert!(app
        .save_all(&mut [&mut a, &mut b])
        .await
        .unwrap_err()
        .is_conflict());
    assert_eq!(
        app.repository()
            .get::<Tally>(a.id())
            .await
            .unwrap()
            .version(),
        1,
        "a's event was not written either"
    );
}

#[tokio::test]
async fn missing_aggregate_is_a_typed_error() {
    let app = Application::builder(InMemoryStore::new()).build();
    let err = app
        .repository()
        .get::<Tally>(&uuid::Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::AggregateNotFound {
            aggregate: "Tally",
            ..
        }
    ));
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Shelf {
    books: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ShelfEvent {
    Built,
    Shelved { title: String },
}

impl Aggregate for Shelf {
    const TYPE: &'static str = "Shelf";
    type Id = String;
    type Event = ShelfEvent;

    fn apply(&mut self, event: &ShelfEvent) {
        if let ShelfEvent::Shelved { title } = event {
            self.books.push(title.clone());
        }
    }
}

/// Version 2 of the same aggregate: `Shelved` gained an author; old events get "unknown".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ShelfV2 {
    books: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ShelfEventV2 {
    Built,
    Shelved { title: String, author: String },
}

impl Aggregate for ShelfV2 {
    const TYPE: &'static str = "Shelf";
    const SCHEMA_VERSION: u32 = 2;
    type Id = String;
    type Event = ShelfEventV2;

    fn apply(&mut self, event: &ShelfEventV2) {
        if let ShelfEventV2::Shelved { title, author } = event {
            self.books.push((title.clone(), author.clone()));
        }
    }

    fn upcast_event(from: u32, event: &mut serde_json::Value) -> Result<(), String> {
        assert_eq!(from, 1);
        if let Some(shelved) = event.get_mut("Shelved") {
            shelved["author"] = "unknown".into();
        }
        Ok(())
    }

    fn upcast_state(from: u32, state: &mut serde_json::Value) -> Result<(), String> {
        assert_eq!(from, 1);
        let books = state["state"]["books"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        state["state"]["books"] = books
            .into_iter()
            .map(|title| serde_json::json!([title, "unknown"]))
            .collect();
        Ok(())
    }
}

#[tokio::test]
async fn string_ids_and_upcasting_old_events_and_snapshots() {
    let store = InMemoryStore::new();
    let v1 = Application::builder(store.clone())
        .snapshot_every::<Shelf>(2)
        .build();
    let mut shelf = Root::<Shelf>::with_id("kitchen".to_owned(), ShelfEvent::Built);
    shelf.trigger(ShelfEvent::Shelved {
        title: "Dune".into(),
    });
    shelf.trigger(ShelfEvent::Shelved {
        title: "Emma".into(),
    });
    v1.save(&mut shelf).await.unwrap();
    let again = Root::<Shelf>::with_id("kitchen".to_owned(), ShelfEvent::Built);
    assert!(
        v1.save(&mut again.clone()).await.unwrap_err().is_conflict(),
        "a second aggregate with a taken id is a conflict"
    );

    let v2 = Application::builder(store.clone())
        .snapshot_every::<ShelfV2>(2)
        .build();
    let id = "kitchen".to_owned();
    // The one save of versions 1-3 crossed the interval: a version-1 snapshot at 3.
    let mut shelf = v2.repository().get::<ShelfV2>(&id).await.unwrap();
    assert_eq!(
        shelf.books,
        vec![
            ("Dune".to_owned(), "unknown".to_owned()),
            ("Emma".to_owned(), "unknown".to_owned())
        ]
    );
    shelf.trigger(ShelfEventV2::Shelved {
        title: "Ulysses".into(),
        author: "Joyce".into(),
    });
    v2.save(&mut shelf).await.unwrap();
    let latest = v2.repository().get::<ShelfV2>(&id).await.unwrap();
    assert_eq!(latest.books.len(), 3);
    assert_eq!(latest.books[2], ("Ulysses".into(), "Joyce".into()));
    // Below the first snapshot, old events are replayed and upcast one by one.
    let early = v2.repository().get_at::<ShelfV2>(&id, 2).await.unwrap();
    assert_eq!(early.books, vec![("Dune".to_owned(), "unknown".to_owned())]);
    let stored = store.select_events(&id, StreamQuery::all()).await.unwrap();
    assert!(stored[3].state.starts_with(br#"{"_v":2,"data":{"Shelved""#));
    assert_eq!(stored[3].topic, "Shelf.Shelved");
}

#[tokio::test]
async fn created_on_is_the_same_from_a_snapshot_and_from_a_full_replay() {
    let store = InMemoryStore::new();
    let snapshotting = Application::builder(store.clone())
        .snapshot_every::<Tally>(2)
        .build();
    let mut tally = Root::<Tally>::new(opened());
    tally.trigger(TallyEvent::Added { amount: 1 });
    snapshotting.save(&mut tally).await.unwrap();
    let from_snapshot = snapshotting
        .repository()
        .get::<Tally>(tally.id())
        .await
        .unwrap();
    let replaying = Application::builder(store).build();
    let replayed = replaying
        .repository()
        .get::<Tally>(tally.id())
        .await
        .unwrap();
    assert_eq!(from_snapshot.created_on(), replayed.created_on());
    assert_eq!(from_snapshot.created_on(), tally.created_on());
    assert_eq!(from_snapshot.modified_on(), replayed.modified_on());
}
