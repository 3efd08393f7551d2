use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use eventfold_core::{
    Application, BoxError, Error, Follower, InMemoryStore, InMemoryTransaction, Notification,
    Projection, Root,
};

use crate::support::{Tally, TallyEvent};

/// Counts events per stream; the counts outlive the follower (like a table would).
#[derive(Clone, Default)]
struct CountPerStream {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    seen: Arc<Mutex<Vec<u64>>>,
    fail_at: Option<u64>,
}

#[async_trait]
impl Projection<InMemoryStore> for CountPerStream {
    fn name(&self) -> &str {
        "count-per-stream"
    }

    async fn process(
        &mut self,
        _tx: &mut InMemoryTransaction,
        notification: &Notification,
    ) -> Result<(), BoxError> {
        if self.fail_at == Some(notification.id) {
            return Err("projection refused this one".into());
        }
        self.seen.lock().unwrap().push(notification.id);
        *self
            .counts
            .lock()
            .unwrap()
            .entry(notification.event.stream_id.clone())
            .or_default() += 1;
        Ok(())
    }
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
    let mut follower = Follower::builder(app.store().clone(), store.clone(), projection.clone())
        .batch_size(4)
        .build();
    assert_eq!(follower.catch_up().await.unwrap(), 15);
    drop(follower);

    // Restart: a new follower resumes from the stored position.
    write(&app, 2, 1).await;
    let mut follower = Follower::builder(app.store().clone(), store.clone(), projection.clone())
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
    let mut follower = Follower::builder(app.store().clone(), store.clone(), failing)
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
    use eventfold_core::ProjectionStore;
    assert_eq!(store.position("count-per-stream").await.unwrap(), Some(2));
}

#[tokio::test]
async fn running_follower_wakes_on_new_events_and_stops_on_shutdown() {
    let store = InMemoryStore::new();
    let app = Arc::new(Application::builder(store.clone()).build());
    let projection = CountPerStream::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut follower = Follower::builder(app.store().clone(), store.clone(), projection.clone())
        .poll_interval(std::time::Duration::from_secs(3600))
        .build();
    let runner = tokio::spawn(async move {
        follower
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    write(&app, 2, 2).await;
    // The poll interval is an hour: only the wake-up can deliver these in time.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while projection.seen.lock().unwrap().len() < 6 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("follower woke up for new events");
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
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
    let mut follower = Follower::builder(log, store.clone(), projection.clone())
        .poll_interval(std::time::Duration::from_millis(20))
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        follower
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while projection.seen.lock().unwrap().len() < 8 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the follower recovered after three failed reads");
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
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
    let mut follower = Follower::builder(log, store.clone(), CountPerStream::default()).build();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        follower.run(std::future::pending()),
    )
    .await
    .expect("a permanent error ends the run")
    .unwrap_err();
    assert!(matches!(err, Error::SchemaVersion { .. }), "{err:?}");
}
