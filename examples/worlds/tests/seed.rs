//! The seed scenario and the view, on a SQLite file.

use eventfold::{Config, EventReader, Follower, StreamQuery};
use worlds_example::{EventsPerWorld, World, Worlds};

async fn open(path: &std::path::Path) -> Worlds {
    let config = Config::sqlite(path).zlib().snapshot_every::<World>(5);
    Worlds::new(config.application().await.unwrap())
}

#[tokio::test]
async fn seed_scenario_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let worlds = open(&dir.path().join("worlds.sqlite3")).await;
    let store = worlds.app().store();
    let id = worlds.create_world().await.unwrap();
    for what in ["dinosaurs", "trucks", "internet", "covid"] {
        worlds.make_it_so(id, what).await.unwrap();
    }
    assert_eq!(
        worlds.get_world_history(id).await.unwrap(),
        ["dinosaurs", "trucks", "internet", "covid"]
    );
    let snapshots = store
        .select_snapshots(&id.to_string(), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 1, "exactly one snapshot");
    assert_eq!(snapshots[0].version, 5);
    let events = store
        .select_events(&id.to_string(), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[1].topic, "World.SomethingHappened");
    // zlib stream header: the stored payload is compressed.
    assert_eq!(events[1].state[0], 0x78);
}

#[tokio::test]
async fn view_counts_events_per_world_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worlds.sqlite3");
    let worlds = open(&path).await;
    let a = worlds.create_world().await.unwrap();
    let b = worlds.create_world().await.unwrap();
    for what in ["x", "y", "z"] {
        worlds.make_it_so(a, what).await.unwrap();
    }
    assert_eq!(
        EventsPerWorld::count(worlds.app().store(), a)
            .await
            .unwrap(),
        0,
        "nothing counted before the view runs"
    );
    let mut follower = Follower::view(worlds.app(), EventsPerWorld::NAME, EventsPerWorld)
        .batch_size(2)
        .build();
    assert_eq!(follower.catch_up().await.unwrap(), 5);
    drop((follower, worlds));

    // A new process: reopen the file; the view resumes where it stopped.
    let worlds = open(&path).await;
    worlds.make_it_so(b, "w").await.unwrap();
    let mut follower = Follower::view(worlds.app(), EventsPerWorld::NAME, EventsPerWorld).build();
    assert_eq!(follower.catch_up().await.unwrap(), 1);
    assert_eq!(follower.catch_up().await.unwrap(), 0);
    let store = worlds.app().store();
    assert_eq!(EventsPerWorld::count(store, a).await.unwrap(), 4);
    assert_eq!(EventsPerWorld::count(store, b).await.unwrap(), 2);
}

/// The view is no SQLite code: on the memory store, which runs no SQL, its setup fails
/// with the store's `Unsupported` error rather than with anything SQLite-specific.
#[tokio::test]
async fn view_on_a_store_without_sql_says_so() {
    let worlds = Worlds::new(Config::memory().application().await.unwrap());
    worlds.create_world().await.unwrap();
    let mut follower = Follower::view(worlds.app(), EventsPerWorld::NAME, EventsPerWorld).build();
    let err = follower.catch_up().await.unwrap_err();
    assert!(err.to_string().contains("does not support"), "{err}");
}
