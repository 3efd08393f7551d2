//! Live followers: a projection writes its rows and position in one transaction, wakes on
//! LISTEN/NOTIFY, and survives a killed LISTEN connection without losing or repeating
//! anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    config, event, events_only, fresh, record_one_by_one, wait_for, CopyProjection, FreezingProxy,
};
use eventfold_core::{EventWriter, Follower, NotificationReader, Store, TrackingReader};
use eventfold_postgres::{PostgresStore, LISTENER_APPLICATION_NAME};

async fn terminate_listener(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND rtrim(query, ';') = $2",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .bind(format!("LISTEN \"{}\"", store.channel()))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_survives_a_killed_listen_connection() {
    let (store, _guard) = fresh("listen").await;
    // Another "process": its own store (own pool, own NOTIFY sender) on the same tables.
    let writer = PostgresStore::connect(&config(&store.config().schema))
        .await
        .unwrap();
    let table = format!("\"{}\".copies", store.config().schema);
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let processed = Arc::new(Mutex::new(Vec::new()));
    let log: Arc<dyn Store> = Arc::new(store.clone());
    let mut follower = Follower::builder(
        log,
        CopyProjection {
            table: table.clone(),
            processed: processed.clone(),
        },
    )
    .batch_size(3)
    // No polling to speak of: only wake-ups can move this follower.
    .poll_interval(Duration::from_secs(3600))
    .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        follower
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let count = || processed.lock().unwrap().len();

    wait_for("the LISTEN connection", Duration::from_secs(10), || {
        store.listener_connections() >= 1
    })
    .await;
    let mut all_ids = Vec::new();
    all_ids.extend(record_one_by_one(&writer, "s", 1..=5, "Before").await);
    wait_for("5 events through NOTIFY", Duration::from_secs(10), || {
        count() == 5
    })
    .await;

    // Kill the listening backend, then write at once: those NOTIFYs may well be lost.
    assert_eq!(terminate_listener(&store).await, 1, "one LISTEN backend");
    all_ids.extend(record_one_by_one(&writer, "s", 6..=10, "After").await);
    wait_for(
        "5 more events after the reconnection",
        Duration::from_secs(20),
        || count() == 10,
    )
    .await;
    assert!(
        store.listener_connections() >= 2,
        "the listener reconnected ({} connections)",
        store.listener_connections()
    );

    // Kill it once more and check that wake-ups keep coming.
    assert_eq!(terminate_listener(&store).await, 1);
    wait_for("a third LISTEN connection", Duration::from_secs(20), || {
        store.listener_connections() >= 3
    })
    .await;
    all_ids.extend(record_one_by_one(&writer, "s", 11..=12, "Later").await);
    wait_for("the last 2 events", Duration::from_secs(20), || {
        count() == 12
    })
    .await;

    let _ = stop.send(());
    running.await.unwrap().unwrap();

    // Nothing lost, nothing applied twice, position committed with the rows.
    assert_eq!(*processed.lock().unwrap(), all_ids);
    let copied: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        copied,
        all_ids.iter().map(|&id| id as i64).collect::<Vec<_>>()
    );
    assert_eq!(
        store.tracking_position("copy").await.unwrap(),
        all_ids.last().copied()
    );
}

/// A projection that fails rolls back its rows and leaves the position where it was; a
/// restarted follower resumes from the committed position and applies nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_rows_and_position_commit_together() {
    let (store, _guard) = fresh("proj").await;
    let table = format!("\"{}\".copies", store.config().schema);
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    record_one_by_one(&store, "p", 1..=4, "Happened").await;
    // Pre-insert the copy of notification 3: the projection's INSERT of it fails.
    sqlx::query(&format!("INSERT INTO {table} VALUES (3, 'p', 3)"))
        .execute(store.pool())
        .await
        .unwrap();
    let processed = Arc::new(Mutex::new(Vec::new()));
    let log: Arc<dyn Store> = Arc::new(store.clone());
    let mut follower = Follower::builder(
        log.clone(),
        CopyProjection {
            table: table.clone(),
            processed: processed.clone(),
        },
    )
    .batch_size(2)
    .build();
    let err = follower.catch_up().await.unwrap_err();
    assert!(matches!(
        err,
        eventfold_core::Error::Projection {
            notification_id: 3,
            ..
        }
    ));
    assert_eq!(store.tracking_position("copy").await.unwrap(), Some(2));

    sqlx::query(&format!("DELETE FROM {table} WHERE id = 3"))
        .execute(store.pool())
        .await
        .unwrap();
    let mut restarted = Follower::builder(
        log,
        CopyProjection {
            table: table.clone(),
            processed: Arc::new(Mutex::new(Vec::new())),
        },
    )
    .build();
    assert_eq!(restarted.catch_up().await.unwrap(), 2);
    let copied: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(copied, vec![1, 2, 3, 4]);
    assert_eq!(store.tracking_position("copy").await.unwrap(), Some(4));
}

/// A LISTEN connection whose peer vanishes without closing it (a network partition) is
/// found by the heartbeat and replaced, and wake-ups flow again; with the heartbeat off
/// the listener would never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_listen_connection_is_replaced() {
    let (writer, _guard) = fresh("halfopen").await;
    let proxy = FreezingProxy::start().await;
    let (watched, unwatched) = proxy
        .stores_with_and_without(
            &writer.config().schema,
            |config, heartbeat| config.listener_heartbeat = heartbeat,
            Duration::from_millis(200),
        )
        .await;
    let wakeups = watched.wakeups().expect("PostgreSQL has wake-ups");
    let _ = unwatched.wakeups();
    wait_for("both LISTEN connections", Duration::from_secs(10), || {
        watched.listener_connections() == 1 && unwatched.listener_connections() == 1
    })
    .await;

    proxy.freeze_existing();
    wait_for(
        "the heartbeat to replace the frozen connection",
        Duration::from_secs(10),
        || watched.listener_connections() >= 2,
    )
    .await;
    // Let the wake-up that follows every new connection pass before watching for ours.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let notified = wakeups.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    writer
        .record(&events_only(vec![event("s", 1, "AfterThePartition")]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), notified)
        .await
        .expect("a NOTIFY through the new LISTEN connection");
    assert_eq!(
        unwatched.listener_connections(),
        1,
        "without a heartbeat the frozen connection looks alive"
    );
}
