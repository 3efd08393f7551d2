use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use eventfold_core::{
    Application, BoxError, Error, EventReader, EventWriter, Follower, InMemoryStore, Loaded,
    Notification, Projection, Recording, Root, Store, StoredEvent, StreamQuery, Tracking,
    TrackingReader, Transaction,
};

use crate::support::{Tally, TallyEvent};

/// Counts events per stream; the counts outlive the follower (like a table would) and
/// change only when a batch commits.
#[derive(Clone, Default)]
struct CountPerStream {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    seen: Arc<Mutex<Vec<u64>>>,
    fail_at: Option<u64>,
}

#[async_trait]
impl Projection for CountPerStream {
    fn name(&self) -> &str {
        "count-per-stream"
    }

    async fn process(
        &mut self,
        tx: &mut Transaction,
        notification: &Notification,
    ) -> Result<(), BoxError> {
        if self.fail_at == Some(notification.id) {
            return Err("projection refused this one".into());
        }
        let (seen, counts) = (self.seen.clone(), self.counts.clone());
        let (id, stream) = (notification.id, notification.event.stream_id.clone());
        tx.on_commit(move || {
            seen.lock().unwrap().push(id);
            *counts.lock().unwrap().entry(stream).or_default() += 1;
        });
        Ok(())
    }
}

/// Runs `follower` in a task, then `meanwhile`, waits (10 s at most) until `seen` holds
/// `count` ids, and stops the follower, which must end without an error.
async fn run_until_seen<P: Projection + 'static>(
    mut follower: Follower<P>,
    seen: &Arc<Mutex<Vec<u64>>>,
    count: usize,
    meanwhile: impl std::future::Future<Output = ()>,
    what: &str,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        follower
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    meanwhile.await;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while seen.lock().unwrap().len() < count {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect(what);
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
}

async fn write(app: &Application, tallies: usize, adds: i64) {
    for _ in 0..tallies {
        let mut tally = Root::<Tally>::new(TallyEvent::Opened { label: "f".into() });
        for amount in 0..adds {
            tally.trigger(TallyEvent::Added { amount });
        }
        app.save(&mut tally).await.unwrap();
    }
}

#[tokio::test]
async fn follower_sees_every_event_once_in_order_across_restarts() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone()).build();
    let projection = CountPerStream::default();

    write(&app, 3, 4).await;
    let mut follower = Follower::builder(app.store().clone(), projection.clone())
        .batch_size(4)
        .build();
    assert_eq!(follower.catch_up().await.unwrap(), 15);
    drop(follower);

    // Restart: a new follower resumes from the stored position.
    write(&app, 2, 1).await;
    let mut follower = Follower::builder(app.store().clone(), projection.clone())
        .batch_size(4)
        .build();
    assert_eq!(follower.catch_up().await.unwrap(), 4);
    assert_eq!(follower.catch_up().await.unwrap(), 0);

    let seen = projection.seen.lock().unwrap().clone();
    assert_eq!(seen, (1..=19).collect::<Vec<_>>(), "each id once, in order");
    let counts = projection.counts.lock().unwrap();
    assert_eq!(counts.len(), 5);
    assert_eq!(counts.values().sum::<u64>(), 19);
}

#[tokio::test]
async fn a_failing_projection_does_not_move_its_position() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone()).build();
    write(&app, 1, 5).await;
    let failing = CountPerStream {
        fail_at: Some(4),
        ..CountPerStream::default()
    };
    let failing_seen = failing.seen.clone();
    let mut follower = Follower::builder(app.store().clone(), failing)
        .batch_size(2)
        .build();
    let err = follower.catch_up().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Projection {
                notification_id: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.tracking_position("count-per-stream").await.unwrap(),
        Some(2)
    );
    assert_eq!(
        *failing_seen.lock().unwrap(),
        vec![1, 2],
        "the failed batch's effects were never applied"
    );
}

#[tokio::test]
async fn running_follower_wakes_on_new_events_and_stops_on_shutdown() {
    let store = InMemoryStore::new();
    let app = Arc::new(Application::builder(store.clone()).build());
    let projection = CountPerStream::default();
    let follower = Follower::builder(app.store().clone(), projection.clone())
        .poll_interval(std::time::Duration::from_secs(3600))
        .build();
    // The poll interval is an hour: only the wake-up can deliver these in time.
    run_until_seen(
        follower,
        &projection.seen,
        6,
        write(&app, 2, 2),
        "follower woke up for new events",
    )
    .await;
}

/// A log that is unreachable for its first `failures` reads (a database restarting).
struct FlakyLog {
    inner: InMemoryStore,
    failures: std::sync::atomic::AtomicUsize,
    fatal: bool,
}

#[async_trait]
impl eventfold_core::NotificationReader for FlakyLog {
    async fn select_notifications(
        &self,
        query: &eventfold_core::NotificationQuery,
    ) -> eventfold_core::Result<Vec<Notification>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .failures
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(if self.fatal {
                Error::SchemaVersion {
                    backend: "flaky",
                    found: 9,
                    expected: 1,
                    hint: "not transient".into(),
                }
            } else {
                Error::Unavailable {
                    backend: "flaky",
                    target: "nowhere".into(),
                    source: "connection refused".into(),
                }
            });
        }
        self.inner.select_notifications(query).await
    }

    async fn max_notification_id(&self) -> eventfold_core::Result<u64> {
        self.inner.max_notification_id().await
    }

    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.inner.wakeups()
    }
}

#[async_trait]
impl EventReader for FlakyLog {
    async fn select_events(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> eventfold_core::Result<Vec<StoredEvent>> {
        self.inner.select_events(stream_id, query).await
    }
    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> eventfold_core::Result<Vec<StoredEvent>> {
        self.inner.select_snapshots(stream_id, query).await
    }
    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> eventfold_core::Result<Loaded> {
        self.inner.load(stream_id, up_to).await
    }
}

#[async_trait]
impl EventWriter for FlakyLog {
    async fn record(&self, recording: &Recording) -> eventfold_core::Result<Vec<u64>> {
        self.inner.record(recording).await
    }
}

#[async_trait]
impl TrackingReader for FlakyLog {
    async fn tracking_position(&self, follower: &str) -> eventfold_core::Result<Option<u64>> {
        self.inner.tracking_position(follower).await
    }
    async fn followers(&self) -> eventfold_core::Result<Vec<Tracking>> {
        self.inner.followers().await
    }
}

#[async_trait]
impl Store for FlakyLog {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn begin(&self) -> eventfold_core::Result<Transaction> {
        self.inner.begin().await
    }
    fn is_transient_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        error.to_string().contains("connection reset")
    }
}

/// A projection whose first attempt meets its driver's transient error.
struct DriverHiccup {
    failures: usize,
    inner: CountPerStream,
}

#[async_trait]
impl Projection for DriverHiccup {
    fn name(&self) -> &str {
        "hiccup"
    }
    async fn process(&mut self, tx: &mut Transaction, n: &Notification) -> Result<(), BoxError> {
        if self.failures > 0 {
            self.failures -= 1;
            let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
            return Err(Box::new(io));
        }
        self.inner.process(tx, n).await
    }
}

#[tokio::test]
async fn running_follower_retries_a_projection_error_its_store_calls_transient() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone()).build();
    write(&app, 1, 2).await;
    let log = Arc::new(FlakyLog {
        inner: store.clone(),
        failures: 0.into(),
        fatal: false,
    });
    let counts = CountPerStream::default();
    let projection = DriverHiccup {
        failures: 2,
        inner: counts.clone(),
    };
    let follower = Follower::builder(log, projection)
        .poll_interval(std::time::Duration::from_millis(10))
        .build();
    run_until_seen(
        follower,
        &counts.seen,
        3,
        async {},
        "the follower waited out the driver's transient error",
    )
    .await;
    assert_eq!(*counts.seen.lock().unwrap(), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_projection_error_its_store_does_not_call_transient_ends_the_run() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone()).build();
    write(&app, 1, 0).await;
    let projection = DriverHiccup {
        failures: 1,
        inner: CountPerStream::default(),
    };
    // The plain memory store knows no driver: the same error is not worth waiting out.
    let mut follower = Follower::builder(app.store().clone(), projection).build();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        follower.run(std::future::pending()),
    )
    .await
    .expect("a permanent error ends the run")
    .unwrap_err();
    assert!(matches!(err, Error::Projection { .. }), "{err:?}");
}

#[tokio::test]
async fn running_follower_waits_out_an_unavailable_store() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone()).build();
    write(&app, 2, 3).await;
    let projection = CountPerStream::default();
    let log = Arc::new(FlakyLog {
        inner: store.clone(),
        failures: 3.into(),
        fatal: false,
    });
    let follower = Follower::builder(log, projection.clone())
        .poll_interval(std::time::Duration::from_millis(20))
        .build();
    run_until_seen(
        follower,
        &projection.seen,
        8,
        async {},
        "the follower recovered after three failed reads",
    )
    .await;
    assert_eq!(
        *projection.seen.lock().unwrap(),
        (1..=8).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn running_follower_stops_on_a_permanent_error() {
    let store = InMemoryStore::new();
    let log = Arc::new(FlakyLog {
        inner: store.clone(),
        failures: 1.into(),
        fatal: true,
    });
    let mut follower = Follower::builder(log, CountPerStream::default()).build();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        follower.run(std::future::pending()),
    )
    .await
    .expect("a permanent error ends the run")
    .unwrap_err();
    assert!(matches!(err, Error::SchemaVersion { .. }), "{err:?}");
}
