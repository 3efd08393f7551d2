//! Schema versions, migrations, an unreachable server, and connections killed mid-command.

use std::time::Duration;

use eventfold_core::{
    Error, EventReader, EventWriter, Metadata, NotificationQuery, NotificationReader, Store,
    StreamQuery, Tracking, TrackingReader,
};
use eventfold_postgres::{PostgresConfig, PostgresStore, SCHEMA_VERSION};

use crate::support::{
    config, event, events_only, fresh, unique_schema, FreezingProxy, SchemaGuard,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_server_is_unavailable_without_password() {
    let mut cfg = PostgresConfig::new("postgres://app:s3cret@127.0.0.1:1/orders");
    cfg.connect_timeout = Duration::from_secs(2);
    let err = PostgresStore::connect(&cfg).await.unwrap_err();
    match &err {
        Error::Unavailable {
            backend, target, ..
        } => {
            assert_eq!(*backend, "postgres");
            assert_eq!(target, "postgres://app:***@127.0.0.1:1/orders");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_config_errors() {
    let mut cfg = config("bad\"schema");
    assert!(matches!(
        PostgresStore::connect(&cfg).await.unwrap_err(),
        Error::Config { .. }
    ));
    cfg = config("ok");
    cfg.table_prefix = "drop table;".into();
    assert!(matches!(
        PostgresStore::connect(&cfg).await.unwrap_err(),
        Error::Config { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_and_migrate() {
    let schema = unique_schema("version");
    let _guard = SchemaGuard::new(&schema);
    let mut cfg = config(&schema);

    // No tables and create_tables off: a clear error pointing at `eventfold migrate`.
    cfg.create_tables = false;
    match PostgresStore::connect(&cfg).await.unwrap_err() {
        Error::SchemaVersion {
            found,
            expected,
            hint,
            ..
        } => {
            assert_eq!((found, expected), (0, SCHEMA_VERSION));
            assert!(hint.contains("eventfold migrate"), "{hint}");
        }
        other => panic!("expected SchemaVersion, got {other:?}"),
    }

    // `eventfold migrate`, twice: the second run has nothing to do.
    let first = PostgresStore::migrate_with(&cfg).await.unwrap();
    assert_eq!((first.from_version, first.to_version), (0, SCHEMA_VERSION));
    assert_eq!(first.applied.len() as i64, SCHEMA_VERSION);
    let store = PostgresStore::connect(&cfg).await.unwrap();
    assert_topic_index(&store, &cfg).await;
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again}");
    assert!(again.to_string().contains("up to date"));

    // A version 4 database, with events written by that version: refused without
    // create_tables, then upgraded, its log intact and its streams continuing.
    let mut old = cfg.clone();
    old.table_prefix = "v4_".into();
    let built = PostgresStore::migrate_up_to(&old, 4).await.unwrap();
    assert_eq!(built.to_version, 4);
    // Events as version 4 wrote them (no metadata column yet).
    let old_record = format!(
        "INSERT INTO \"{schema}\".v4_events (id, stream_id, version, topic, occurred_at, state) \
         SELECT nextval('\"{schema}\".v4_notification_id_seq'), 'up', v, t, now(), s \
         FROM (VALUES (1, 'A', '\\x01'::bytea), (2, 'B', '\\x02'::bytea)) AS r(v, t, s)",
        schema = old.schema
    );
    sqlx::query(&old_record)
        .execute(store.pool())
        .await
        .unwrap();
    match PostgresStore::connect(&old).await.unwrap_err() {
        Error::SchemaVersion { found, hint, .. } => {
            assert_eq!(found, 4);
            assert!(hint.contains("eventfold migrate"), "{hint}");
        }
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
    let upgrade = PostgresStore::migrate_with(&old).await.unwrap();
    assert_eq!(
        (upgrade.from_version, upgrade.applied.len() as i64),
        (4, SCHEMA_VERSION - 4)
    );
    let upgraded = PostgresStore::connect(&old).await.unwrap();
    assert_topic_index(&upgraded, &old).await;
    let before: Vec<_> = upgraded
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.event.stream_id, n.event.version))
        .collect();
    assert_eq!(before, vec![(1, "up".into(), 1), (2, "up".into(), 2)]);
    let loaded = upgraded.load("up", None).await.unwrap();
    assert_eq!(
        loaded.events.len(),
        2,
        "the v4 events load after the upgrade"
    );
    assert!(loaded.events.iter().all(|e| e.metadata.is_empty()));
    assert_eq!(loaded.events[1].state, vec![2]);
    let tagged = Metadata::new().with_correlation_id("after-upgrade");
    let ids = upgraded
        .record(&events_only(vec![
            event("up", 3, "C").with_metadata(tagged.clone()),
            event("up", 4, "D"),
        ]))
        .await
        .unwrap();
    assert_eq!(ids, vec![3, 4]);
    let loaded = upgraded.load("up", None).await.unwrap();
    assert_eq!(loaded.events[2].metadata, tagged);
    assert_eq!(upgraded.max_notification_id().await.unwrap(), 4);
    assert!(matches!(
        upgraded
            .record(&events_only(vec![event("up", 6, "F")]))
            .await,
        Err(Error::Conflict(_))
    ));
    upgraded.close().await;

    // Concurrent migrations of a fresh prefix take turns.
    let mut other = cfg.clone();
    other.table_prefix = "other_".into();
    let (o1, o2) = (other.clone(), other.clone());
    let runs = futures_join(
        async move { PostgresStore::migrate_with(&o1).await },
        async move { PostgresStore::migrate_with(&o2).await },
    )
    .await;
    let applied: usize = runs.iter().map(|r| r.as_ref().unwrap().applied.len()).sum();
    assert_eq!(
        applied as i64, SCHEMA_VERSION,
        "exactly one of two concurrent migrations applies each version"
    );

    // A database migrated by a newer build.
    sqlx::query(&format!(
        "INSERT INTO {} (version, description) VALUES (99, 'from the future')",
        store.table_name("schema_version")
    ))
    .execute(store.pool())
    .await
    .unwrap();
    cfg.create_tables = true;
    match PostgresStore::connect(&cfg).await.unwrap_err() {
        Error::SchemaVersion { found, hint, .. } => {
            assert_eq!(found, 99);
            assert!(hint.contains("upgrade"), "{hint}");
        }
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
}

/// The events table has the v6 `(topic, id)` index, named with the table prefix.
async fn assert_topic_index(store: &PostgresStore, cfg: &PostgresConfig) {
    let definition: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
    )
    .bind(&cfg.schema)
    .bind(format!("{}events_topic_id", cfg.table_prefix))
    .fetch_optional(store.pool())
    .await
    .unwrap();
    let definition = definition.expect("the events_topic_id index exists");
    assert!(
        definition.ends_with(&format!(
            "ON {} USING btree (topic, id)",
            store.table_name("events").replace('"', "")
        )),
        "{definition}"
    );
}

/// A version 5 log upgraded to version 6: every topic-filtered read (one topic, several,
/// repeated, unknown; both orders; bounded; short and long pages) returns exactly the
/// records of the unfiltered log that the query admits, in order, up to its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_filtered_reads_after_the_v6_upgrade() {
    let schema = unique_schema("topics");
    let _guard = SchemaGuard::new(&schema);
    let mut old = config(&schema);
    old.table_prefix = "v5_".into();
    old.create_tables = false;
    PostgresStore::migrate_up_to(&old, 5).await.unwrap();
    let sibling = PostgresStore::connect(&config(&schema)).await.unwrap();
    // Written as version 5 writes: one rare topic, one of half the log, one of the rest.
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".v5_events (id, stream_id, version, topic, occurred_at, state) \
         SELECT nextval('\"{schema}\".v5_notification_id_seq'), 's' || (g % 7), g / 7 + 1, \
                CASE WHEN g % 50 = 0 THEN 'Test.Rare' WHEN g % 2 = 0 THEN 'Test.Half' \
                     ELSE 'Test.Rest' END, now(), int8send(g) \
         FROM generate_series(0, 299) AS g ORDER BY g"
    ))
    .execute(sibling.pool())
    .await
    .unwrap();
    sibling.close().await;
    let upgrade = PostgresStore::migrate_with(&old).await.unwrap();
    assert_eq!(
        upgrade.applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![6]
    );
    let store = PostgresStore::connect(&old).await.unwrap();
    assert_topic_index(&store, &old).await;
    // And some written after the upgrade, through the index.
    store
        .record(&events_only(vec![
            event("after", 1, "Rare"),
            event("after", 2, "Half"),
            event("after", 3, "Rest"),
        ]))
        .await
        .unwrap();
    let log = store
        .select_notifications(&NotificationQuery::after(0, 1000))
        .await
        .unwrap();
    assert_eq!(log.len(), 303);
    let topic_sets: [&[&str]; 6] = [
        &["Test.Rare"],
        &["Test.Half"],
        &["Test.Rare", "Test.Rest"],
        &["Test.Rest", "Test.Rare", "Test.Half"],
        &["Test.Rare", "Test.Rare"],
        &["Test.Missing"],
    ];
    for topics in topic_sets {
        for descending in [false, true] {
            for (after, before) in [(0, None), (40, Some(261))] {
                for limit in [3, 1000] {
                    let mut query = NotificationQuery::after(after, limit).topics(topics.to_vec());
                    query.descending = descending;
                    if let Some(before) = before {
                        query = query.before(before);
                    }
                    let mut expected: Vec<_> = log
                        .iter()
                        .filter(|n| query.admits(n.id, &n.event.topic))
                        .cloned()
                        .collect();
                    if descending {
                        expected.reverse();
                    }
                    expected.truncate(limit);
                    let got = store.select_notifications(&query).await.unwrap();
                    assert_eq!(got, expected, "{query:?}");
                }
            }
        }
    }
    store.close().await;
}

async fn futures_join<A, B>(a: A, b: B) -> Vec<A::Output>
where
    A: std::future::Future + Send + 'static,
    B: std::future::Future<Output = A::Output> + Send + 'static,
    A::Output: Send + 'static,
{
    let a = tokio::spawn(a);
    let b = tokio::spawn(b);
    vec![a.await.unwrap(), b.await.unwrap()]
}

/// Two applications share one schema under different prefixes and see nothing of each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_isolate_applications() {
    let schema = unique_schema("prefix");
    let _guard = SchemaGuard::new(&schema);
    let mut a = config(&schema);
    a.table_prefix = "billing_".into();
    let mut b = config(&schema);
    b.table_prefix = "shipping_".into();
    let a = PostgresStore::connect(&a).await.unwrap();
    let b = PostgresStore::connect(&b).await.unwrap();
    assert_ne!(a.channel(), b.channel());
    a.record(&events_only(vec![event("x", 1, "A")]))
        .await
        .unwrap();
    b.record(&events_only(vec![event("x", 1, "B"), event("x", 2, "B")]))
        .await
        .unwrap();
    assert_eq!(a.max_notification_id().await.unwrap(), 1);
    assert_eq!(b.max_notification_id().await.unwrap(), 2);
    assert_eq!(
        a.select_events("x", StreamQuery::all()).await.unwrap()[0].topic,
        "Test.A"
    );
}

/// The server ends a command's connection while the command waits: the command fails
/// with a typed error, nothing of it is written, and the store carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_command_is_typed_and_writes_nothing() {
    let (store, _guard) = fresh("killed").await;
    let schema = store.config().schema.clone();

    // A host transaction holds version 1 of "s" uncommitted, so a second writer of it
    // waits on the unique index.
    let mut holder = store.pool().begin().await.unwrap();
    store
        .record_in(&mut holder, &events_only(vec![event("s", 1, "Holder")]))
        .await
        .unwrap();
    let blocked = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .record(&events_only(vec![
                    event("s", 1, "Blocked"),
                    event("t", 1, "Blocked"),
                ]))
                .await
        })
    };
    let mut killed = 0i64;
    for _ in 0..200 {
        killed = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND state = 'active' AND position($1 in query) > 0",
        )
        .bind(format!("\"{schema}\""))
        .fetch_one(store.pool())
        .await
        .unwrap();
        if killed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(killed, 1, "found the waiting backend");
    let err = blocked.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }),
        "a killed session is Unavailable, got {err:?}"
    );
    holder.rollback().await.unwrap();
    assert!(store
        .select_events("t", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .select_events("s", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());

    // A host transaction whose connection dies before COMMIT leaves nothing either.
    let mut host = store.pool().begin().await.unwrap();
    store
        .record_in(&mut host, &events_only(vec![event("u", 1, "Lost")]))
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *host)
        .await
        .unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(host.commit().await.is_err());
    assert!(store
        .select_events("u", StreamQuery::all())
        .await
        .unwrap()
        .is_empty());

    // The pool replaces dead connections: the store keeps working (a command may meet
    // one dead connection first, and says so with a typed error).
    let mut recorded = None;
    for _ in 0..5 {
        match store
            .record(&events_only(vec![event("s", 1, "After")]))
            .await
        {
            Ok(ids) => {
                recorded = Some(ids);
                break;
            }
            Err(Error::Unavailable { .. }) => continue,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let ids = recorded.expect("the store recovers");
    let log = store
        .select_notifications(&NotificationQuery::after(0, 10))
        .await
        .unwrap();
    assert_eq!(log.iter().map(|n| n.id).collect::<Vec<_>>(), ids);
}

/// A connection that dies without closing (a network partition: the peer stops
/// answering, the socket stays open) fails the command with `Unavailable` after
/// `reply_timeout` instead of hanging it, and so does the commit of a projection
/// transaction open at the time; the swallowed recording wrote nothing, and the next
/// command runs on a fresh connection. Without the timeout the command hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_fails_the_command_in_time() {
    let (direct, _guard) = fresh("replytimeout").await;
    let proxy = FreezingProxy::start().await;
    let (bounded, unbounded) = proxy
        .stores_with_and_without(
            &direct.config().schema,
            |config, timeout| config.reply_timeout = timeout,
            Duration::from_millis(300),
        )
        .await;
    for store in [&bounded, &unbounded] {
        store.load("warm", None).await.unwrap();
    }
    bounded
        .record(&events_only(vec![event("s", 1, "BeforeThePartition")]))
        .await
        .unwrap();
    // A projection's transaction, open when the partition comes.
    let mut projection = Store::begin(&bounded).await.unwrap();

    proxy.freeze_existing();
    let moved = async {
        projection.track(Tracking::new("projection", 1)).await?;
        projection.commit().await
    };
    let err = tokio::time::timeout(Duration::from_secs(20), moved)
        .await
        .expect("the projection's commit fails instead of hanging")
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(direct.tracking_position("projection").await.unwrap(), None);

    let swallowed = events_only(vec![event("s", 2, "Swallowed")]);
    let err = tokio::time::timeout(Duration::from_secs(20), bounded.record(&swallowed))
        .await
        .expect("the command fails instead of hanging")
        .unwrap_err();
    match &err {
        Error::Unavailable { target, .. } => assert!(target.contains("127.0.0.1"), "{target}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(err.to_string().contains("reply_timeout"), "{err}");
    let stored = direct.select_events("s", StreamQuery::all()).await.unwrap();
    assert_eq!(stored.len(), 1, "the swallowed recording wrote nothing");

    // The dead connection was dropped, not kept: the same recording now goes through.
    bounded.record(&swallowed).await.unwrap();
    let loaded = bounded.load("s", None).await.unwrap();
    assert_eq!(loaded.events.len(), 2);

    let hung = tokio::time::timeout(Duration::from_secs(2), unbounded.load("s", None)).await;
    assert!(
        hung.is_err(),
        "without reply_timeout the load waits on the dead connection"
    );
}

/// The last clone of a store may be dropped outside any Tokio runtime.
#[test]
fn dropping_outside_a_runtime_is_fine() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (store, guard) = runtime.block_on(async {
        let (store, guard) = fresh("dropout").await;
        store
            .record(&events_only(vec![event("s", 1, "A")]))
            .await
            .unwrap();
        store.select_events("s", StreamQuery::all()).await.unwrap();
        let _ = store.wakeups();
        (store, guard)
    });
    drop(runtime);
    drop(store);
    drop(guard);
}

/// `close` returns promptly even though the store keeps connections out of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_hang() {
    let (store, _guard) = fresh("close").await;
    store
        .record(&events_only(vec![event("s", 1, "A")]))
        .await
        .unwrap();
    store.select_events("s", StreamQuery::all()).await.unwrap();
    let _ = store.wakeups();
    tokio::time::timeout(Duration::from_secs(10), store.close())
        .await
        .expect("close finishes");
    assert!(store.pool().is_closed());
    let err = store
        .record(&events_only(vec![event("s", 2, "B")]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

/// Copies notifications into a table through the transaction it is handed, and kills its
/// own backend (from another connection) once, in the middle of a batch, before a write:
/// the projection's write then fails with sqlx's own error, which it returns as it is.
struct KilledMidBatch {
    table: String,
    kill_at: u64,
    admin: sqlx::PgPool,
    killed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[eventfold_core::async_trait]
impl eventfold_core::Projection for KilledMidBatch {
    fn name(&self) -> &str {
        "killed"
    }

    async fn process(
        &mut self,
        tx: &mut eventfold_core::Transaction,
        notification: &eventfold_core::Notification,
    ) -> Result<(), eventfold_core::BoxError> {
        use eventfold_postgres::PostgresTransactionExt;
        use std::sync::atomic::Ordering;
        if notification.id == self.kill_at && !self.killed.swap(true, Ordering::SeqCst) {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(tx.postgres()?)
                .await?;
            let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(pid)
                .fetch_one(&self.admin)
                .await?;
        }
        sqlx::query(&format!("INSERT INTO {} (id) VALUES ($1)", self.table))
            .bind(notification.id as i64)
            .execute(tx.postgres()?)
            .await?;
        Ok(())
    }
}

/// The fault of the issue: PostgreSQL restarts, or the connection is killed, while a
/// projection writes through the transaction it was handed. The projection's own sqlx
/// error is transient for this store (`Store::is_transient_error`), so the follower waits
/// it out instead of stopping for good, and ends with every row applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_outlives_its_projection_connection_being_killed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (store, _guard) = fresh("projkill").await;
    let table = format!("\"{}\".applied", store.config().schema);
    sqlx::query(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY)"))
        .execute(store.pool())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for version in 1..=7 {
        ids.extend(
            store
                .record(&events_only(vec![event("s", version, "Happened")]))
                .await
                .unwrap(),
        );
    }
    let admin = sqlx::PgPool::connect(&crate::support::database_url())
        .await
        .unwrap();
    let killed = Arc::new(AtomicBool::new(false));
    let projection = KilledMidBatch {
        table: table.clone(),
        kill_at: ids[4],
        admin,
        killed: killed.clone(),
    };
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mut follower = eventfold_core::Follower::builder(shared, projection)
        .batch_size(3)
        .poll_interval(Duration::from_millis(20))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        follower
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let last = *ids.last().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.tracking_position("killed").await.ok().flatten() != Some(last) {
        assert!(
            !running.is_finished(),
            "the follower stopped: {:?}",
            running.await.unwrap()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    running
        .await
        .unwrap()
        .expect("the run ended only because it was told to");
    assert!(
        killed.load(Ordering::SeqCst),
        "the backend was killed mid-batch"
    );
    let applied: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(applied, ids.iter().map(|&id| id as i64).collect::<Vec<_>>());
}
