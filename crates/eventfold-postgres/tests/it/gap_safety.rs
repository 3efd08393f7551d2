//! The notification log under concurrent writers: nothing skipped, nothing twice, streams
//! in order, and no table lock.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_core::{
    EventReader, EventWriter, NotificationQuery, NotificationReader, StreamQuery,
};
use eventfold_postgres::{Ordering, PostgresStore};
use sqlx::Row;

use crate::support::{
    config, event, events_only, fresh, record_one_by_one, unique_schema, visible_ids, SchemaGuard,
};

/// Small deterministic pseudo-random numbers (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

const STREAMS: u64 = 12;

/// One save on a shared stream: read the latest version, then write 1-3 events after it,
/// either through `record` or inside a host transaction that wrote an application row
/// first (so its transaction id is older than its notification ids) and lingers before
/// committing. Retries on conflict. Returns the number of events written.
async fn save_once(store: &PostgresStore, rng: &mut Lcg, writer: usize) -> u64 {
    let app_rows = format!("\"{}\".app_rows", store.config().schema);
    loop {
        let stream = format!("stream-{}", rng.next(STREAMS));
        let count = 1 + rng.next(3);
        let host = rng.next(2) == 0;
        let pause = Duration::from_micros(rng.next(3000));
        let latest = store
            .select_events(&stream, StreamQuery::latest(None))
            .await
            .unwrap()
            .first()
            .map_or(0, |e| e.version);
        let recording = events_only(
            (1..=count)
                .map(|i| {
                    let mut e = event(&stream, latest + i, "Happened");
                    e.state = format!("writer {writer}").into_bytes();
                    e
                })
                .collect(),
        );
        let outcome = if host {
            let mut tx = store.pool().begin().await.unwrap();
            sqlx::query(&format!("INSERT INTO {app_rows} (writer) VALUES ($1)"))
                .bind(writer as i64)
                .execute(&mut *tx)
                .await
                .unwrap();
            tokio::time::sleep(pause).await;
            match store.record_in(&mut tx, &recording).await {
                Ok(ids) => {
                    tokio::time::sleep(pause).await;
                    tx.commit().await.unwrap();
                    Ok(ids)
                }
                Err(e) => {
                    tx.rollback().await.unwrap();
                    Err(e)
                }
            }
        } else {
            store.record(&recording).await
        };
        match outcome {
            Ok(ids) => {
                assert_eq!(ids.len() as u64, count);
                return count;
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("writer {writer}: {e:?}"),
        }
    }
}

async fn concurrent_writers_one_follower(ordering: Ordering, writers: usize, saves: usize) {
    let schema = unique_schema("gap");
    let _guard = SchemaGuard::new(&schema);
    let mut cfg = config(&schema);
    cfg.ordering = ordering;
    cfg.max_connections = writers as u32 + 4;
    let store = PostgresStore::connect(&cfg).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".app_rows (id bigserial PRIMARY KEY, writer bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));

    // The follower reads the log as fast as it can while the writers run.
    let follower = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut position = 0;
            let mut seen = Vec::new();
            let mut polls = 0u64;
            let mut idle_after_done = 0;
            loop {
                let finished = done.load(AtomicOrdering::SeqCst);
                let batch = store
                    .select_notifications(&NotificationQuery::after(position, 37))
                    .await
                    .unwrap();
                polls += 1;
                if let Some(last) = batch.last() {
                    position = last.id;
                }
                let empty = batch.is_empty();
                seen.extend(batch);
                if finished && empty {
                    idle_after_done += 1;
                    if idle_after_done > 2 {
                        return (seen, polls);
                    }
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    // A naive reader, for comparison only: reads by id alone, as if commit order were id
    // order, and counts the events it would have skipped.
    let naive = {
        let store = store.clone();
        let done = done.clone();
        let events = store.table_name("events");
        tokio::spawn(async move {
            let mut position = 0i64;
            let mut seen = HashSet::new();
            while !done.load(AtomicOrdering::SeqCst) {
                let rows = sqlx::query(&format!(
                    "SELECT id FROM {events} WHERE id > $1 ORDER BY id LIMIT 37"
                ))
                .bind(position)
                .fetch_all(store.pool())
                .await
                .unwrap();
                for row in rows {
                    let id: i64 = row.get(0);
                    seen.insert(id);
                    position = id;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        })
    };

    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let mut rng = Lcg(w as u64 * 7919 + 17);
                for _ in 0..saves {
                    let n = save_once(&store, &mut rng, w).await;
                    written.fetch_add(n, AtomicOrdering::SeqCst);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let write_time = started.elapsed();
    done.store(true, AtomicOrdering::SeqCst);
    let (seen, polls) = follower.await.unwrap();
    let naive_seen = naive.await.unwrap();

    // Ground truth: the table itself.
    let rows = sqlx::query(&format!(
        "SELECT id, stream_id, version FROM {} ORDER BY id",
        store.table_name("events")
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let truth: Vec<(u64, String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>(0) as u64,
                r.get::<String, _>(1),
                r.get::<i64, _>(2) as u64,
            )
        })
        .collect();
    assert_eq!(truth.len() as u64, written.load(AtomicOrdering::SeqCst));

    // Every event exactly once, in id order.
    let seen_ids: Vec<u64> = seen.iter().map(|n| n.id).collect();
    assert!(
        seen_ids.windows(2).all(|w| w[0] < w[1]),
        "the follower saw ids in ascending order, each once"
    );
    let truth_ids: Vec<u64> = truth.iter().map(|t| t.0).collect();
    assert_eq!(
        seen_ids.len(),
        truth_ids.len(),
        "the follower saw every event (no gap skipped)"
    );
    assert_eq!(seen_ids, truth_ids);
    for (n, (id, stream, version)) in seen.iter().zip(&truth) {
        assert_eq!(
            (n.id, &n.event.stream_id, n.event.version),
            (*id, stream, *version)
        );
    }

    // Per stream, versions arrive 1, 2, 3, ... with nothing missing.
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for n in &seen {
        per_stream
            .entry(n.event.stream_id.as_str())
            .or_default()
            .push(n.event.version);
    }
    for (stream, versions) in &per_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "stream {stream} in version order");
    }
    assert_eq!(
        store.max_notification_id().await.unwrap(),
        *truth_ids.last().unwrap()
    );

    let naive_missed = truth_ids
        .iter()
        .filter(|id| **id as i64 <= naive_seen.iter().copied().max().unwrap_or(0))
        .filter(|id| !naive_seen.contains(&(**id as i64)))
        .count();
    eprintln!(
        "{ordering}: {writers} writers x {saves} saves = {} events in {write_time:?}; \
         follower polls {polls}; a naive id-order reader would have skipped {naive_missed}",
        truth.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_one_follower_concurrent() {
    concurrent_writers_one_follower(Ordering::Concurrent, 16, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_writers_one_follower_table_lock() {
    concurrent_writers_one_follower(Ordering::TableLock, 4, 20).await;
}

/// The case that defeats "return rows whose own transaction id is below xmin": a host
/// transaction that got its transaction id early commits a higher notification id while
/// a younger transaction still holds a lower one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transaction_cannot_hide_a_lower_id() {
    let (store, _guard) = fresh("early").await;
    let schema = store.config().schema.clone();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".orders (id int PRIMARY KEY)"
    ))
    .execute(store.pool())
    .await
    .unwrap();

    // H takes its transaction id first, by writing an application row.
    let mut host = store.pool().begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO \"{schema}\".orders VALUES (1)"))
        .execute(&mut *host)
        .await
        .unwrap();
    let host_xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *host)
        .await
        .unwrap();

    // A, younger, records first and stays open.
    let mut younger = store.pool().begin().await.unwrap();
    let a_ids = store
        .record_in(&mut younger, &events_only(vec![event("a", 1, "First")]))
        .await
        .unwrap();
    let younger_xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *younger)
        .await
        .unwrap();
    assert!(host_xid.parse::<u64>().unwrap() < younger_xid.parse::<u64>().unwrap());

    // H records after A (so a higher id) and commits.
    let h_ids = store
        .record_in(&mut host, &events_only(vec![event("h", 1, "Second")]))
        .await
        .unwrap();
    host.commit().await.unwrap();
    assert!(a_ids[0] < h_ids[0]);

    // H's row is committed and its transaction id is below every transaction in flight,
    // but A still holds a lower id: the log must not show H's event yet.
    assert_eq!(visible_ids(&store).await, Vec::<u64>::new());
    assert_eq!(store.max_notification_id().await.unwrap(), 0);

    younger.commit().await.unwrap();
    assert_eq!(visible_ids(&store).await, vec![a_ids[0], h_ids[0]]);
    assert_eq!(store.max_notification_id().await.unwrap(), h_ids[0]);
}

/// Transactions that never write these tables do not hold the log back, however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_open_transactions_do_not_delay_the_log() {
    let (store, _guard) = fresh("unrelated").await;
    let mut other = store.pool().begin().await.unwrap();
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    let ids = store
        .record(&events_only(vec![event("s", 1, "A"), event("s", 2, "B")]))
        .await
        .unwrap();
    assert_eq!(visible_ids(&store).await, ids);
    assert_eq!(store.max_notification_id().await.unwrap(), ids[1]);
    other.rollback().await.unwrap();
}

/// A recording whose stream does not continue from the stored latest version (a stale
/// copy after a host rollback, say) is a conflict, not a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_gaps_are_conflicts() {
    let (store, _guard) = fresh("gaps").await;
    store
        .record(&events_only(vec![event("s", 1, "A")]))
        .await
        .unwrap();
    let err = store
        .record(&events_only(vec![event("s", 3, "C")]))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let err = store
        .record(&events_only(vec![event("s", 2, "B"), event("s", 4, "D")]))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let err = store
        .record(&events_only(vec![event("t", 0, "Zero")]))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    // Several events of one stream that start past its latest version.
    let err = store
        .record(&events_only(vec![event("s", 3, "C"), event("s", 4, "D")]))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    // Several streams in one recording take the general check (one stream, the fast one).
    let err = store
        .record(&events_only(vec![event("s", 2, "B"), event("u", 2, "B")]))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    store
        .record(&events_only(vec![event("s", 2, "B"), event("u", 1, "A")]))
        .await
        .unwrap();
    let versions: Vec<u64> = store
        .select_events("s", StreamQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
}

/// A host transaction announces itself once, however many recordings it makes, and a
/// savepoint rolled back takes its announcement with it without leaving the next
/// recording of the transaction unannounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_transaction_announces_once_and_savepoints_stay_safe() {
    let (store, _guard) = fresh("announce").await;
    let mut host = store.pool().begin().await.unwrap();
    sqlx::query("SAVEPOINT before_first")
        .execute(&mut *host)
        .await
        .unwrap();
    store
        .record_in(&mut host, &events_only(vec![event("h", 1, "Dropped")]))
        .await
        .unwrap();
    sqlx::query("ROLLBACK TO SAVEPOINT before_first")
        .execute(&mut *host)
        .await
        .unwrap();
    let mut host_ids = Vec::new();
    for version in 1..=20 {
        host_ids.extend(
            store
                .record_in(&mut host, &events_only(vec![event("h", version, "Kept")]))
                .await
                .unwrap(),
        );
    }
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(&mut *host)
    .await
    .unwrap();
    assert_eq!(held, 1, "one announcement for twenty recordings");

    // Another writer commits higher ids while the host transaction is open.
    let later = store
        .record(&events_only(vec![event("other", 1, "Later")]))
        .await
        .unwrap();
    assert!(later[0] > host_ids[19]);
    assert_eq!(visible_ids(&store).await, Vec::<u64>::new());
    assert_eq!(store.max_notification_id().await.unwrap(), 0);

    host.commit().await.unwrap();
    let mut expected = host_ids.clone();
    expected.extend(&later);
    assert_eq!(visible_ids(&store).await, expected);
}

/// Announcements are advisory-lock keys of 32 bits: a writer in flight holds the log back
/// when the ids after it cross a multiple of 2^32, and one announced above 2^32 holds back
/// only the ids above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_hold_across_the_32_bit_boundary() {
    let (store, _guard) = fresh("wrap").await;
    let boundary: u64 = 1 << 32;
    let sequence = store.table_name("notification_id_seq");
    sqlx::query(&format!(
        "SELECT setval('{}', $1)",
        sequence.replace('\'', "''")
    ))
    .bind((boundary - 3) as i64)
    .execute(store.pool())
    .await
    .unwrap();

    // Announced below the boundary, ids committed after it cross it.
    let mut host = store.pool().begin().await.unwrap();
    let host_ids = store
        .record_in(&mut host, &events_only(vec![event("h", 1, "Open")]))
        .await
        .unwrap();
    assert_eq!(host_ids, vec![boundary - 2]);
    let later = record_one_by_one(&store, "w", 1..=4, "Later").await;
    assert!(*later.last().unwrap() > boundary);
    assert_eq!(visible_ids(&store).await, Vec::<u64>::new());
    assert_eq!(store.max_notification_id().await.unwrap(), 0);
    host.commit().await.unwrap();
    let mut expected = host_ids;
    expected.extend(&later);
    assert_eq!(visible_ids(&store).await, expected);

    // Announced above the boundary: what committed before it stays readable.
    let mut host = store.pool().begin().await.unwrap();
    let open_ids = store
        .record_in(&mut host, &events_only(vec![event("h", 2, "Open")]))
        .await
        .unwrap();
    let after = store
        .record(&events_only(vec![event("w", 5, "After")]))
        .await
        .unwrap();
    assert_eq!(visible_ids(&store).await, expected);
    assert_eq!(
        store.max_notification_id().await.unwrap(),
        *expected.last().unwrap()
    );
    host.commit().await.unwrap();
    expected.extend(open_ids.iter().chain(&after));
    assert_eq!(visible_ids(&store).await, expected);
}
