//! The seed scenario and the projection, on a SQLite file.

use eventfold::sqlite::SqliteStore;
use eventfold::{Config, EventReader, Follower, StoreHandle, StreamQuery};
use worlds_example::{EventsPerWorld, World, Worlds};

async fn open(path: &std::path::Path) -> (Worlds, SqliteStore) {
    let config = Config::sqlite(path).zlib().snapshot_every::<World>(5);
    let store = config.open_store().await.unwrap();
    let worlds = Worlds::new(config.application_on(&store).unwrap());
    let StoreHandle::Sqlite(sqlite) = store else {
        panic!("configured as SQLite")
    };
    (worlds, sqlite)
}

#[tokio::test]
async fn seed_scenario_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (worlds, sqlite) = open(&dir.path().join("worlds.sqlite3")).await;
    let id = worlds.create_world().await.unwrap();
    for what in ["dinosaurs", "trucks", "internet", "covid"] {
        worlds.make_it_so(id, what).await.unwrap();
    }
    assert_eq!(
        worlds.get_world_history(id).await.unwrap(),
        ["dinosaurs", "trucks", "internet", "covid"]
    );
    let snapshots = sqlite
        .select_snapshots(&id.to_string(), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 1, "exactly one snapshot");
    assert_eq!(snapshots[0].version, 5);
    let events = sqlite
        .select_events(&id.to_string(), StreamQuery::all())
        .await
        .unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[1].topic, "World.SomethingHappened");
    // zlib stream header: the stored payload is compressed.
    assert_eq!(events[1].state[0], 0x78);
}

#[tokio::test]
async fn projection_counts_events_per_world_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worlds.sqlite3");
    let (worlds, sqlite) = open(&path).await;
    let a = worlds.create_world().await.unwrap();
    let b = worlds.create_world().await.unwrap();
    for what in ["x", "y", "z"] {
        worlds.make_it_so(a, what).await.unwrap();
    }
    let mut follower = Follower::builder(
        worlds.app().store().clone(),
        sqlite.clone(),
        EventsPerWorld::default(),
    )
    .batch_size(2)
    .build();
    assert_eq!(follower.catch_up().await.unwrap(), 5);
    drop((follower, worlds, sqlite));

    // A new process: reopen the file; the projection resumes where it stopped.
    let (worlds, sqlite) = open(&path).await;
    worlds.make_it_so(b, "w").await.unwrap();
    let mut follower = Follower::builder(
        worlds.app().store().clone(),
        sqlite.clone(),
        EventsPerWorld::default(),
    )
    .build();
    assert_eq!(follower.catch_up().await.unwrap(), 1);
    assert_eq!(follower.catch_up().await.unwrap(), 0);
    assert_eq!(EventsPerWorld::count(&sqlite, a).await.unwrap(), 4);
    assert_eq!(EventsPerWorld::count(&sqlite, b).await.unwrap(), 2);
}
