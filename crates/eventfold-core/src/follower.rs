//! Followers: read the notification log from a tracked position and feed a projection,
//! whose writes commit together with the new position.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use crate::error::{BoxError, Error, Result};
use crate::store::{
    Notification, NotificationQuery, NotificationReader, ProjectionStore, Tracking,
};

/// A read model built from the notification log.
///
/// One projection may fold events of several aggregate types: it sees every topic unless
/// [`Projection::topics`] narrows it. It writes through the store's transaction, which
/// commits together with the follower's new position, so each notification takes effect
/// exactly once even across crashes and restarts.
#[async_trait]
pub trait Projection<S: ProjectionStore>: Send {
    /// A unique, stable name: it keys the tracked position.
    fn name(&self) -> &str;

    /// The topics this projection wants; empty (the default) means all.
    fn topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// Applies one notification inside `tx`.
    async fn process(
        &mut self,
        tx: &mut S::Transaction,
        notification: &Notification,
    ) -> std::result::Result<(), BoxError>;
}

/// Runs a projection: catches up from its tracked position, then follows new notifications.
pub struct Follower<S: ProjectionStore, P: Projection<S>> {
    log: Arc<dyn NotificationReader>,
    store: S,
    projection: P,
    batch_size: usize,
    poll_interval: Duration,
}

/// Builds a [`Follower`].
pub struct FollowerBuilder<S: ProjectionStore, P: Projection<S>> {
    follower: Follower<S, P>,
}

impl<S: ProjectionStore, P: Projection<S>> FollowerBuilder<S, P> {
    /// Notifications per transaction (default 500).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.follower.batch_size = batch_size.max(1);
        self
    }

    /// How often to look for new notifications when the log gives no wake-ups, or one was
    /// missed (default 100 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.follower.poll_interval = interval;
        self
    }

    /// Builds the follower.
    pub fn build(self) -> Follower<S, P> {
        self.follower
    }
}

impl<S: ProjectionStore, P: Projection<S>> Follower<S, P> {
    /// A follower of `log` that writes `projection` into `store`.
    pub fn builder(
        log: Arc<dyn NotificationReader>,
        store: S,
        projection: P,
    ) -> FollowerBuilder<S, P> {
        FollowerBuilder {
            follower: Follower {
                log,
                store,
                projection,
                batch_size: 500,
                poll_interval: Duration::from_millis(100),
            },
        }
    }

    /// The projection, to read its in-memory state.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Processes every notification available now. Returns how many it processed.
    pub async fn catch_up(&mut self) -> Result<u64> {
        let name = self.projection.name().to_owned();
        let mut position = self.store.position(&name).await?.unwrap_or(0);
        let query = NotificationQuery {
            after: position,
            limit: self.batch_size,
            topics: self.projection.topics(),
        };
        let mut processed = 0;
        loop {
            let batch = self
                .log
                .select_notifications(&NotificationQuery {
                    after: position,
                    ..query.clone()
                })
                .await?;
            let Some(last) = batch.last().map(|n| n.id) else {
                return Ok(processed);
            };
            let span = tracing::debug_span!(
                "eventfold.follower.batch",
                follower = %name,
                from = position,
                to = last,
                notifications = batch.len()
            );
            self.apply_batch(&name, &batch, last)
                .instrument(span)
                .await?;
            processed += batch.len() as u64;
            position = last;
        }
    }

    /// Processes one batch in one transaction and commits the new position with it.
    async fn apply_batch(&mut self, name: &str, batch: &[Notification], last: u64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        for notification in batch {
            self.projection
                .process(&mut tx, notification)
                .await
                .map_err(|source| Error::Projection {
                    follower: name.to_owned(),
                    notification_id: notification.id,
                    source,
                })?;
        }
        self.store
            .commit(
                tx,
                &Tracking {
                    follower: name.to_owned(),
                    position: last,
                },
            )
            .await
    }

    /// Catches up, then keeps following until `shutdown` resolves. Wakes on the log's
    /// wake-ups when it has them and polls anyway, so a lost wake-up never stalls it.
    ///
    /// Outages do not stop it: a [transient](Error::is_transient) error (the database is
    /// down, restarting, or dropped a connection) rolls back the batch in hand, and the
    /// follower tries again with backoff (50 ms doubling to 5 s), resuming from its
    /// committed position, so nothing is lost or applied twice. Any other error (a
    /// projection bug, an undecodable record, another runner moving the same position)
    /// ends the run with that error.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        const FIRST_RETRY: Duration = Duration::from_millis(50);
        const LAST_RETRY: Duration = Duration::from_secs(5);
        tokio::pin!(shutdown);
        let wakeups = self.log.wakeups();
        let mut retry = FIRST_RETRY;
        loop {
            // Register for the wake-up before reading, so a commit that lands between the
            // read and the wait still wakes us.
            let notified = wakeups.as_ref().map(|w| w.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let pause = match self.catch_up().await {
                Ok(_) => {
                    retry = FIRST_RETRY;
                    self.poll_interval
                }
                Err(err) if err.is_transient() => {
                    tracing::warn!(
                        follower = self.projection.name(),
                        error = %err,
                        retry_in_ms = retry.as_millis() as u64,
                        "follower waits out a store error"
                    );
                    let pause = retry;
                    retry = (retry * 2).min(LAST_RETRY);
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
                Err(err) => return Err(err),
            };
            let wake = async {
                match notified.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = wake => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
