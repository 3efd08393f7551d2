//! Followers: read the notification log from a tracked position and feed a projection,
//! whose writes commit together with the new position.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use crate::application::decode_event;
use crate::domain::{Aggregate, AggregateId, Timestamp};
use crate::error::{BoxError, Error, Result};
use crate::mapper::JsonMapper;
use crate::store::{Metadata, Notification, NotificationQuery, Store, Tracking, Transaction};

/// A read model built from the raw notification log (for relays and tools; most read
/// models are [`View`]s, which get decoded events).
///
/// One projection may fold events of several aggregate types: it sees every topic unless
/// [`Projection::topics`] narrows it. It writes through the store's [`Transaction`], which
/// commits together with the follower's new position, so each notification takes effect
/// exactly once even across crashes and restarts. State a projection keeps in memory must
/// change through [`Transaction::on_commit`] for the same to hold.
#[async_trait]
pub trait Projection: Send {
    /// A unique, stable name: it keys the tracked position.
    fn name(&self) -> &str;

    /// The topics this projection wants; empty (the default) means all.
    fn topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// Creates what the projection writes into (its tables), once per follower run,
    /// in a transaction of its own. The default does nothing.
    async fn setup(&mut self, tx: &mut Transaction) -> std::result::Result<(), BoxError> {
        let _ = tx;
        Ok(())
    }

    /// Applies one notification inside `tx`.
    async fn process(
        &mut self,
        tx: &mut Transaction,
        notification: &Notification,
    ) -> std::result::Result<(), BoxError>;
}

/// A decoded event of aggregate type `A`, as a [`View`] receives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope<A: Aggregate> {
    /// The aggregate's id.
    pub id: A::Id,
    /// The aggregate's version after this event.
    pub version: u64,
    /// When the event happened.
    pub timestamp: Timestamp,
    /// The event.
    pub event: A::Event,
    /// What was stored beside it.
    pub metadata: Metadata,
    /// Its position in the notification log.
    pub notification_id: u64,
}

/// A view handles the decoded events of aggregate type `A`. Implement it once per type
/// the view folds, and list those types in [`View::subscribe`].
#[async_trait]
pub trait Handles<A: Aggregate>: Send {
    /// Applies one event inside `tx`.
    async fn handle(
        &mut self,
        tx: &mut Transaction,
        event: Envelope<A>,
    ) -> std::result::Result<(), BoxError>;
}

/// A read model over the decoded events of one or more aggregate types: no topic strings,
/// no decoding by hand. Run it with [`Follower::view`].
///
/// ```
/// # use eventfold_core::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Default, Serialize, Deserialize)] struct Account { balance: i64 }
/// # #[derive(Debug, Clone, Serialize, Deserialize)] enum AccountEvent { Opened, Deposited { amount: i64 } }
/// # impl Aggregate for Account { const TYPE: &'static str = "Account"; type Id = uuid::Uuid;
/// #   type Event = AccountEvent; fn apply(&mut self, _: &AccountEvent) {} }
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Default)]
/// struct Deposits { total: Arc<Mutex<i64>> }
///
/// impl View for Deposits {
///     fn subscribe(to: &mut Subscriptions<Self>) {
///         to.aggregate::<Account>();
///     }
/// }
///
/// #[async_trait]
/// impl Handles<Account> for Deposits {
///     async fn handle(&mut self, tx: &mut Transaction, e: Envelope<Account>) -> Result<(), BoxError> {
///         if let AccountEvent::Deposited { amount } = e.event {
///             let total = self.total.clone();
///             tx.on_commit(move || *total.lock().unwrap() += amount);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait View: Send + Sized + 'static {
    /// The aggregate types this view handles ([`Subscriptions::aggregate`] for each).
    fn subscribe(to: &mut Subscriptions<Self>);

    /// Creates the view's tables, once per follower run, in a transaction of its own
    /// (`CREATE TABLE IF NOT EXISTS ...`). The default does nothing.
    async fn setup(&mut self, tx: &mut Transaction) -> std::result::Result<(), BoxError> {
        let _ = tx;
        Ok(())
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

type Route<V> = for<'a> fn(
    &'a mut V,
    &'a mut Transaction,
    &'a Notification,
    &'a JsonMapper,
) -> BoxFuture<'a, std::result::Result<(), BoxError>>;

/// The aggregate types a [`View`] handles, each with its decoder.
pub struct Subscriptions<V: View> {
    routes: HashMap<&'static str, Route<V>>,
}

impl<V: View> Subscriptions<V> {
    /// Routes the events of aggregate type `A` to `V`'s [`Handles<A>`].
    pub fn aggregate<A: Aggregate>(&mut self) -> &mut Self
    where
        V: Handles<A>,
    {
        self.routes.insert(A::TYPE, dispatch::<A, V>);
        self
    }
}

fn dispatch<'a, A: Aggregate, V: Handles<A>>(
    view: &'a mut V,
    tx: &'a mut Transaction,
    notification: &'a Notification,
    mapper: &'a JsonMapper,
) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
    Box::pin(async move {
        let stored = &notification.event;
        let event = decode_event::<A, JsonMapper>(mapper, stored)?;
        let id = A::Id::parse_id(&stored.stream_id).ok_or_else(|| {
            format!(
                "stream id {:?} is not a valid {} id",
                stored.stream_id,
                A::TYPE
            )
        })?;
        let envelope = Envelope {
            id,
            version: stored.version,
            timestamp: stored.timestamp,
            event,
            metadata: stored.metadata.clone(),
            notification_id: notification.id,
        };
        view.handle(tx, envelope).await
    })
}

/// A [`View`] as a [`Projection`]: decodes each notification of a subscribed aggregate
/// type with the application's mapper and hands it to the view; skips other topics.
pub struct ViewProjection<V: View> {
    name: String,
    view: V,
    mapper: Arc<JsonMapper>,
    subscriptions: Subscriptions<V>,
}

impl<V: View> ViewProjection<V> {
    /// `view` under the follower name `name`, decoding with `mapper`.
    pub fn new(name: impl Into<String>, view: V, mapper: Arc<JsonMapper>) -> Self {
        let mut subscriptions = Subscriptions {
            routes: HashMap::new(),
        };
        V::subscribe(&mut subscriptions);
        ViewProjection {
            name: name.into(),
            view,
            mapper,
            subscriptions,
        }
    }

    /// The view, to read its state.
    pub fn view(&self) -> &V {
        &self.view
    }
}

#[async_trait]
impl<V: View> Projection for ViewProjection<V> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn setup(&mut self, tx: &mut Transaction) -> std::result::Result<(), BoxError> {
        self.view.setup(tx).await
    }

    async fn process(
        &mut self,
        tx: &mut Transaction,
        notification: &Notification,
    ) -> std::result::Result<(), BoxError> {
        let topic = &notification.event.topic;
        let aggregate = topic.split_once('.').map_or(topic.as_str(), |(a, _)| a);
        match self.subscriptions.routes.get(aggregate) {
            Some(route) => route(&mut self.view, tx, notification, &self.mapper).await,
            None => Ok(()),
        }
    }
}

/// Runs a projection: catches up from its tracked position, then follows new notifications.
pub struct Follower<P: Projection> {
    store: Arc<dyn Store>,
    projection: P,
    batch_size: usize,
    poll_interval: Duration,
    set_up: bool,
}

/// Builds a [`Follower`].
pub struct FollowerBuilder<P: Projection> {
    follower: Follower<P>,
}

impl<P: Projection> FollowerBuilder<P> {
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
    pub fn build(self) -> Follower<P> {
        self.follower
    }
}

impl<V: View> Follower<ViewProjection<V>> {
    /// A follower that runs `view` under the name `name` on `app`'s store, decoding with
    /// `app`'s mapper.
    pub fn view(
        app: &crate::Application<JsonMapper>,
        name: impl Into<String>,
        view: V,
    ) -> FollowerBuilder<ViewProjection<V>> {
        let projection = ViewProjection::new(name, view, app.repository().shared_mapper());
        Follower::builder(app.store().clone(), projection)
    }
}

impl<P: Projection> Follower<P> {
    /// A follower that feeds `projection` from `store`'s log and writes through `store`'s
    /// transactions.
    pub fn builder(store: Arc<dyn Store>, projection: P) -> FollowerBuilder<P> {
        FollowerBuilder {
            follower: Follower {
                store,
                projection,
                batch_size: 500,
                poll_interval: Duration::from_millis(100),
                set_up: false,
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
        if !self.set_up {
            let mut tx = self.store.begin().await?;
            self.projection
                .setup(&mut tx)
                .await
                .map_err(|source| Error::Projection {
                    follower: name.clone(),
                    notification_id: 0,
                    source,
                })?;
            tx.commit().await?;
            self.set_up = true;
        }
        let mut position = self.store.tracking_position(&name).await?.unwrap_or(0);
        let query =
            NotificationQuery::after(position, self.batch_size).topics(self.projection.topics());
        let mut processed = 0;
        loop {
            let batch = self
                .store
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
        tx.track(Tracking::new(name, last)).await?;
        tx.commit().await
    }

    /// Whether `error` is worth waiting out: transient by itself, or a projection error
    /// that the store recognises as its driver's transient error.
    fn is_transient(&self, error: &Error) -> bool {
        error.is_transient()
            || matches!(error, Error::Projection { source, .. }
                if crate::store::error_chain(&**source).any(|e| self.store.is_transient_error(e)))
    }

    /// Catches up, then keeps following until `shutdown` resolves. Wakes on the log's
    /// wake-ups when it has them and polls anyway, so a lost wake-up never stalls it.
    ///
    /// Outages do not stop it: a [transient](Error::is_transient) error (the database is
    /// down, restarting, or dropped a connection), also when the projection's own driver
    /// call met it ([`Store::is_transient_error`]), rolls back the batch in hand, and the
    /// follower tries again with backoff (50 ms doubling to 5 s), resuming from its
    /// committed position, so nothing is lost or applied twice. Any other error (a
    /// projection bug, an undecodable record, another runner moving the same position)
    /// ends the run with that error.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        const FIRST_RETRY: Duration = Duration::from_millis(50);
        const LAST_RETRY: Duration = Duration::from_secs(5);
        tokio::pin!(shutdown);
        let wakeups = self.store.wakeups();
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
                Err(err) if self.is_transient(&err) => {
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
