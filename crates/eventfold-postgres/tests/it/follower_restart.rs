//! A running follower outlives its database connections: every backend of its database is
//! killed twice (as a PostgreSQL restart does), writes go on meanwhile, and the follower
//! ends up with every event applied exactly once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventfold_core::{Follower, Store, TrackingReader};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use sqlx::{Connection, PgConnection};

use crate::support::{database_url, record_one_by_one, wait_for, CopyProjection};

const DEADLINE: Duration = Duration::from_secs(30);

/// Its own database, so killing every backend in it touches no other test.
struct DatabaseGuard {
    name: String,
}

impl DatabaseGuard {
    async fn create() -> Self {
        let name = format!(
            "eventfold_test_restart_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect(&database_url()).await.unwrap();
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        DatabaseGuard { name }
    }

    fn url(&self) -> String {
        let base = database_url();
        let (server, _db) = base.rsplit_once('/').expect("a URL with a database");
        format!("{server}/{}", self.name)
    }

    /// What a server restart does to this database's clients: every backend ends.
    async fn kill_every_backend(&self) -> i64 {
        let mut admin = PgConnection::connect(&database_url()).await.unwrap();
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    }
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut admin = PgConnection::connect(&database_url()).await?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Writes `versions` of stream `s` through a store opened for the purpose (the previous
/// writer's connections were killed with everything else).
async fn write(database: &DatabaseGuard, versions: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    let writer = PostgresStore::connect(&PostgresConfig::new(database.url()))
        .await
        .unwrap();
    let ids = record_one_by_one(&writer, "s", versions, "Written").await;
    writer.close().await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_follower_survives_every_connection_being_killed() {
    let database = DatabaseGuard::create().await;
    let store = PostgresStore::connect(&PostgresConfig::new(database.url()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE copies (id bigint PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL)",
    )
        .execute(store.pool())
        .await
        .unwrap();

    let processed = Arc::new(Mutex::new(Vec::new()));
    let log: Arc<dyn Store> = Arc::new(store.clone());
    let mut follower = Follower::builder(
        log,
        CopyProjection {
            table: "copies".into(),
            processed: processed.clone(),
        },
    )
    .poll_interval(Duration::from_millis(50))
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

    let mut ids = write(&database, 1..=5).await;
    wait_for("the first 5 events", DEADLINE, || count() == 5).await;

    assert!(database.kill_every_backend().await >= 1);
    ids.extend(write(&database, 6..=10).await);
    wait_for("5 events after the first kill", DEADLINE, || count() == 10).await;

    assert!(database.kill_every_backend().await >= 1);
    ids.extend(write(&database, 11..=15).await);
    wait_for("5 events after the second kill", DEADLINE, || count() == 15).await;

    let _ = stop.send(());
    running
        .await
        .unwrap()
        .expect("the run ended only because it was told to");

    assert_eq!(*processed.lock().unwrap(), ids, "each event once, in order");
    let copied: Vec<i64> = sqlx::query_scalar("SELECT id FROM copies ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(copied, ids.iter().map(|&id| id as i64).collect::<Vec<_>>());
    assert_eq!(
        store.tracking_position("copy").await.unwrap(),
        ids.last().copied()
    );
    store.close().await;
}
