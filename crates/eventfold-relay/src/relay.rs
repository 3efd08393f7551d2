//! The relay: a follower of the notification log whose commit is the broker's confirm.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_amqp::{
    AmqpConfig, AmqpError, ConfirmedPublisher, Outcome, OutgoingMessage, PublisherOptions,
};
use eventfold_core::{
    Conflict, Error as StoreError, Notification, NotificationQuery, Recording, Store, Tracking,
};

use crate::lock::{Lock, LockTarget};
use crate::records::{
    outage_record, ParkedMessage, ERROR_TOPIC, RECOVERED_TOPIC, RELAY_TOPIC_PREFIX,
};
use crate::route::{Route, Unroutable};
use crate::{scrub, RelayError, RelayStatus, RepublishReport};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The relay's counters since it was built (see [`Relay::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayMetrics {
    /// Messages handed to the broker (re-publications included).
    pub published: u64,
    /// Messages the broker confirmed.
    pub confirmed: u64,
    /// Messages the broker returned as unroutable.
    pub returned: u64,
    /// Messages parked (returned with [`Unroutable::Park`], or not encodable).
    pub parked: u64,
    /// Messages the broker nacked.
    pub nacked: u64,
    /// Notifications no route claimed (and the relay's own records).
    pub skipped: u64,
    /// Successful reconnects of the publisher after a lost connection.
    pub reconnects: u64,
    /// AMQP connections opened (publisher and lock, reconnects included).
    pub connections_opened: u64,
    /// Batches whose position move was committed.
    pub batches: u64,
    /// Whether the relay holds the leader lock now.
    pub leader: bool,
    /// Whether the relay is a standby now: another relay of the same name holds the lock.
    pub standby: bool,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    returned: AtomicU64,
    parked: AtomicU64,
    nacked: AtomicU64,
    skipped: AtomicU64,
    reconnects: AtomicU64,
    connections_opened: AtomicU64,
    batches: AtomicU64,
    leader: AtomicBool,
    standby: AtomicBool,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Settings of a [`Relay`], with their defaults.
#[derive(Debug, Clone)]
struct Options {
    batch_size: usize,
    poll_interval: Duration,
    lock_retry: Duration,
    window: usize,
}

/// Builds a [`Relay`] ([`Relay::builder`]).
pub struct RelayBuilder {
    relay: Relay,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.relay.fmt(f)
    }
}

impl RelayBuilder {
    /// Adds a route; routes are asked in the order they were added.
    pub fn route(mut self, route: impl Route) -> Self {
        self.relay.routes.push(Arc::new(route));
        self
    }

    /// Notifications read (and published) per batch (default 256).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.relay.options.batch_size = n.max(1);
        self
    }

    /// How often the log is polled when no wake-up comes (default 100 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.relay.options.poll_interval = interval;
        self
    }

    /// How often a standby tries to take the leader lock (default 1 s).
    pub fn lock_retry(mut self, interval: Duration) -> Self {
        self.relay.options.lock_retry = interval;
        self
    }

    /// Publishes unconfirmed at a time (default 256).
    pub fn window(mut self, window: usize) -> Self {
        self.relay.options.window = window.max(1);
        self
    }

    /// The connection name prefix (default `eventfold-relay-<name>`): the publisher's
    /// connection is `<prefix>/relay`, the lock's `<prefix>/relay-lock`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.relay.lock.connection_name = format!("{name}/relay-lock");
        self.relay.amqp = self.relay.amqp.with_connection_name(name);
        self
    }

    /// The relay.
    pub fn build(self) -> Relay {
        self.relay
    }
}

/// Publishes the notification log to RabbitMQ, moving its position only over what the
/// broker confirmed (or what it parked or skipped). See the crate docs.
pub struct Relay {
    store: Arc<dyn Store>,
    amqp: AmqpConfig,
    lock: LockTarget,
    name: String,
    routes: Vec<Arc<dyn Route>>,
    options: Options,
    counters: Arc<Counters>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("amqp", &self.amqp)
            .field(
                "routes",
                &self.routes.iter().map(|r| r.name()).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

/// Parses an AMQP URL for the lock connection, with the password scrubbed from errors.
fn lock_target(url: &str, name: &str) -> Result<(AmqpConfig, LockTarget), RelayError> {
    let amqp = AmqpConfig::from_url(url)?;
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|_| RelayError::Config("not an AMQP URL".to_owned()))?;
    if uri.vhost.is_empty() {
        uri.vhost = "/".to_owned();
    }
    uri.query.heartbeat.get_or_insert(amqp.heartbeat());
    uri.query
        .connection_timeout
        .get_or_insert(AmqpConfig::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64);
    let connection_name = format!("eventfold-relay-{name}");
    let target = LockTarget {
        password: uri.authority.userinfo.password.clone(),
        uri,
        endpoint: amqp.redacted_url(),
        connection_name: format!("{connection_name}/relay-lock"),
        queue: format!("eventfold.relay.lock.{name}"),
    };
    Ok((amqp.with_connection_name(connection_name), target))
}

/// Where a relay's outage stands: logged and recorded once, when it begins and ends.
#[derive(Default)]
struct Outage {
    since: Option<(Instant, String)>,
}

enum LeadEnd {
    Shutdown,
    LockLost,
}

/// What a step did.
struct Step {
    /// Notifications the position moved over.
    advanced: usize,
    /// The notification the relay is stuck at, and why.
    stall: Option<Stall>,
}

struct Stall {
    at: u64,
    reason: String,
    unavailable: bool,
}

enum Item {
    Skip,
    Park(Box<ParkedMessage>),
    Publish {
        index: usize,
        unroutable: Unroutable,
        kind: eventfold_amqp::ExchangeKind,
    },
}

impl Relay {
    /// A relay named `name` (its tracked position, its lock queue
    /// `eventfold.relay.lock.<name>`, its message ids `<name>:<notification id>`), following
    /// `store` and publishing to the broker at `amqp_url`
    /// (`amqp://user:password@host:port/vhost`; the password never appears in a log or
    /// error).
    ///
    /// It takes a URL rather than an [`AmqpConfig`] because the leader lock needs a plain
    /// lapin connection, and `AmqpConfig` does not give its credentials out.
    pub fn builder(
        store: Arc<dyn Store>,
        amqp_url: &str,
        name: impl Into<String>,
    ) -> Result<RelayBuilder, RelayError> {
        let name = name.into();
        if name.is_empty() || name.len() > 200 {
            return Err(RelayError::Config(
                "the relay name must be 1 to 200 bytes".to_owned(),
            ));
        }
        let (amqp, lock) = lock_target(amqp_url, &name)?;
        Ok(RelayBuilder {
            relay: Relay {
                store,
                amqp,
                lock,
                name,
                routes: Vec::new(),
                options: Options {
                    batch_size: 256,
                    poll_interval: Duration::from_millis(100),
                    lock_retry: Duration::from_secs(1),
                    window: 256,
                },
                counters: Arc::default(),
                last_error: Arc::default(),
            },
        })
    }

    /// The relay's name (its follower name in the store).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters so far.
    pub fn metrics(&self) -> RelayMetrics {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayMetrics {
            published: l(&c.published),
            confirmed: l(&c.confirmed),
            returned: l(&c.returned),
            parked: l(&c.parked),
            nacked: l(&c.nacked),
            skipped: l(&c.skipped),
            reconnects: l(&c.reconnects),
            connections_opened: l(&c.connections_opened),
            batches: l(&c.batches),
            leader: c.leader.load(Ordering::Relaxed),
            standby: c.standby.load(Ordering::Relaxed),
        }
    }

    /// The outage going on now, in this process (also recorded in the log: see
    /// [`Relay::status`]).
    pub fn current_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `relay`'s status, read from the store (any process can ask).
    pub async fn status(store: &dyn Store, relay: &str) -> Result<RelayStatus, RelayError> {
        crate::records::status(store, relay).await
    }

    /// Publishes `relay`'s parked messages again: see [`crate::republish_parked`].
    pub async fn republish_parked(
        store: &dyn Store,
        amqp: AmqpConfig,
        relay: &str,
    ) -> Result<RepublishReport, RelayError> {
        crate::records::republish_parked(store, amqp, relay).await
    }

    /// Runs until `shutdown` resolves: takes the leader lock (or waits as a standby,
    /// trying every second), then publishes from its position, waking on the store's
    /// wake-ups and polling. Broker outages are waited out (100 ms doubling to 5 s), logged
    /// once each. On `shutdown`, the batch in flight is finished (its confirms awaited,
    /// its position moved), then the connections close.
    ///
    /// Returns an error only for a store error that is not transient.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        tokio::pin!(shutdown);
        let mut lock = Lock::new(self.lock.clone());
        let mut outage = Outage::default();
        let mut retry = FIRST_RETRY;
        let mut standby = false;
        let result = 'outer: loop {
            match lock.try_acquire().await {
                Ok((held, opened)) => {
                    if opened {
                        add(&self.counters.connections_opened, 1);
                    }
                    if !held {
                        if !standby {
                            tracing::info!(relay = %self.name, "relay is standby: another relay holds the lock");
                            standby = true;
                            self.counters.standby.store(true, Ordering::Relaxed);
                        }
                        self.recovered(&mut outage).await;
                        tokio::select! {
                            () = &mut shutdown => break 'outer Ok(()),
                            () = tokio::time::sleep(self.options.lock_retry) => continue,
                        }
                    }
                }
                Err(e) => {
                    self.stalled(&mut outage, &e.to_string(), 0).await;
                    if Self::pause(&mut shutdown, &mut retry).await {
                        break 'outer Ok(());
                    }
                    continue;
                }
            }
            standby = false;
            self.counters.standby.store(false, Ordering::Relaxed);
            tracing::info!(relay = %self.name, "relay is leader");
            self.counters.leader.store(true, Ordering::Relaxed);
            let publisher = loop {
                add(&self.counters.connections_opened, 1);
                let options = PublisherOptions {
                    window: self.options.window,
                    role: "relay".to_owned(),
                };
                match ConfirmedPublisher::connect(self.amqp.clone(), options).await {
                    Ok(p) => break Some(p),
                    Err(e) => {
                        self.stalled(&mut outage, &e.to_string(), 0).await;
                        if Self::pause(&mut shutdown, &mut retry).await {
                            break None;
                        }
                        if !lock.held() {
                            break None;
                        }
                    }
                }
            };
            let end = match &publisher {
                Some(p) => {
                    retry = FIRST_RETRY;
                    self.lead(p, &lock, &mut shutdown, &mut outage).await
                }
                None => Ok(LeadEnd::LockLost),
            };
            if let Some(p) = publisher {
                let _ = p.close().await;
            }
            self.counters.leader.store(false, Ordering::Relaxed);
            lock.release().await;
            match end {
                Ok(LeadEnd::Shutdown) => break Ok(()),
                Ok(LeadEnd::LockLost) => {
                    self.stalled(
                        &mut outage,
                        "lost the leader lock (its connection closed)",
                        0,
                    )
                    .await;
                    if Self::pause(&mut shutdown, &mut retry).await {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        lock.release().await;
        self.counters.leader.store(false, Ordering::Relaxed);
        self.counters.standby.store(false, Ordering::Relaxed);
        result
    }

    /// Sleeps `retry` (then doubles it, up to 5 s); true when `shutdown` came first.
    async fn pause(
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        retry: &mut Duration,
    ) -> bool {
        let pause = *retry;
        *retry = (*retry * 2).min(LAST_RETRY);
        tokio::select! {
            () = shutdown => true,
            () = tokio::time::sleep(pause) => false,
        }
    }

    /// Publishes while the lock is held.
    async fn lead(
        &self,
        publisher: &ConfirmedPublisher,
        lock: &Lock,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        outage: &mut Outage,
    ) -> Result<LeadEnd, RelayError> {
        let wakeups = self.store.wakeups();
        let mut declared = HashSet::new();
        let mut retry = FIRST_RETRY;
        let mut until: Option<u64> = None;
        loop {
            if !lock.held() {
                tracing::warn!(relay = %self.name, "relay lost the leader lock (its connection closed)");
                return Ok(LeadEnd::LockLost);
            }
            let notified = wakeups.as_ref().map(|w| w.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let step = match self.step(publisher, &mut declared, until).await {
                Ok(step) => step,
                Err(RelayError::Store(e)) if e.is_transient() => {
                    self.stalled(outage, &format!("store: {e}"), 0).await;
                    if Self::pause(shutdown, &mut retry).await {
                        return Ok(LeadEnd::Shutdown);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if step.advanced > 0 {
                until = None;
                retry = FIRST_RETRY;
                if step.stall.is_none() {
                    self.recovered(outage).await;
                }
            }
            if let Some(stall) = step.stall {
                self.stalled(outage, &stall.reason, stall.at).await;
                if !stall.unavailable {
                    // Retry only up to the stuck message, not the rest of the batch.
                    until = Some(stall.at);
                }
                if Self::pause(shutdown, &mut retry).await {
                    return Ok(LeadEnd::Shutdown);
                }
                if stall.unavailable {
                    loop {
                        if !lock.held() {
                            return Ok(LeadEnd::LockLost);
                        }
                        add(&self.counters.connections_opened, 1);
                        match publisher.reconnect().await {
                            Ok(()) => {
                                add(&self.counters.reconnects, 1);
                                declared.clear();
                                break;
                            }
                            Err(e) => {
                                self.stalled(outage, &e.to_string(), stall.at).await;
                                if Self::pause(shutdown, &mut retry).await {
                                    return Ok(LeadEnd::Shutdown);
                                }
                            }
                        }
                    }
                }
                continue;
            }
            if step.advanced > 0 {
                // More may be waiting: read again at once (unless asked to stop).
                tokio::select! {
                    biased;
                    () = &mut *shutdown => return Ok(LeadEnd::Shutdown),
                    () = std::future::ready(()) => continue,
                }
            }
            self.recovered(outage).await;
            let wake = async {
                match notified.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut *shutdown => return Ok(LeadEnd::Shutdown),
                () = wake => {}
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
    }

    fn message_id(&self, n: &Notification) -> String {
        format!("{}:{}", self.name, n.id)
    }

    /// One batch: read after the position (up to `until`), encode, declare, publish, and
    /// move the position over the prefix that is confirmed, parked or skipped.
    async fn step(
        &self,
        publisher: &ConfirmedPublisher,
        declared: &mut HashSet<String>,
        until: Option<u64>,
    ) -> Result<Step, RelayError> {
        let position = self.store.tracking_position(&self.name).await?.unwrap_or(0);
        let mut query = NotificationQuery::after(position, self.options.batch_size);
        if let Some(until) = until {
            query = query.before(until.saturating_add(1));
        }
        let batch = self.store.select_notifications(&query).await?;
        if batch.is_empty() {
            return Ok(Step {
                advanced: 0,
                stall: None,
            });
        }
        let mut messages: Vec<OutgoingMessage> = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        for n in &batch {
            if n.event.topic.starts_with(RELAY_TOPIC_PREFIX) {
                items.push(Item::Skip);
                continue;
            }
            match self.routes.iter().find_map(|r| r.encode(n)) {
                None => items.push(Item::Skip),
                Some(Err(e)) => items.push(Item::Park(Box::new(ParkedMessage::unencodable(
                    n,
                    self.message_id(n),
                    format!("cannot encode: {e}"),
                )))),
                Some(Ok(routed)) => {
                    let mut message = routed.message;
                    message.message_id = Some(self.message_id(n));
                    items.push(Item::Publish {
                        index: messages.len(),
                        unroutable: routed.unroutable,
                        kind: routed.exchange_kind,
                    });
                    messages.push(message);
                }
            }
        }
        // Declare each exchange before its first publish, so nothing is lost for want of
        // an exchange that only a consumer would have declared.
        for item in &items {
            if let Item::Publish { index, kind, .. } = item {
                let exchange = &messages[*index].exchange;
                if !exchange.is_empty() && !declared.contains(exchange) {
                    let declare = async {
                        publisher.declare_exchange(exchange, kind.clone()).await?;
                        self.declare_topology(publisher, exchange).await
                    };
                    if let Err(e) = declare.await {
                        let at = batch[items
                            .iter()
                            .position(|i| matches!(i, Item::Publish { index: j, .. } if j == index))
                            .expect("the item is in the batch")]
                        .id;
                        let prefix = items
                            .iter()
                            .position(|i| matches!(i, Item::Publish { .. }))
                            .unwrap_or(items.len());
                        return self
                            .settle_prefix(&batch, &items, &[], &[], prefix, Some(stall_of(at, &e)))
                            .await;
                    }
                    declared.insert(exchange.clone());
                }
            }
        }
        let outcomes = if messages.is_empty() {
            Vec::new()
        } else {
            add(&self.counters.published, messages.len() as u64);
            publisher.publish_all(&messages).await
        };
        for o in &outcomes {
            match o {
                Ok(Outcome::Confirmed) => add(&self.counters.confirmed, 1),
                Ok(Outcome::Returned { .. }) => add(&self.counters.returned, 1),
                Ok(Outcome::Nacked) => add(&self.counters.nacked, 1),
                _ => {}
            }
        }
        let mut stall = None;
        let mut prefix = 0;
        for (n, item) in batch.iter().zip(&items) {
            if let Item::Publish {
                index, unroutable, ..
            } = item
            {
                let stuck = |reason: String| Stall {
                    at: n.id,
                    reason,
                    unavailable: false,
                };
                match &outcomes[*index] {
                    Ok(Outcome::Confirmed) => {}
                    Ok(Outcome::Returned {
                        reply_code,
                        reply_text,
                    }) => {
                        if *unroutable == Unroutable::Hold {
                            stall = Some(stuck(format!(
                                "held at notification {}: unroutable ({reply_code} {reply_text})",
                                n.id
                            )));
                            break;
                        }
                    }
                    Ok(Outcome::Nacked) => {
                        stall = Some(stuck(format!("notification {} nacked by the broker", n.id)));
                        break;
                    }
                    Ok(other) => {
                        stall = Some(stuck(format!("unexpected outcome {other:?}")));
                        break;
                    }
                    Err(e) => {
                        stall = Some(stall_of(n.id, e));
                        break;
                    }
                }
            }
            prefix += 1;
        }
        self.settle_prefix(&batch, &items, &messages, &outcomes, prefix, stall)
            .await
    }

    /// Declares (unless they exist) and binds the queues the routes bind to `exchange`.
    async fn declare_topology(
        &self,
        publisher: &ConfirmedPublisher,
        exchange: &str,
    ) -> eventfold_amqp::Result<()> {
        let mut queues = HashSet::new();
        for route in &self.routes {
            for binding in route.topology().bindings {
                if binding.exchange != exchange {
                    continue;
                }
                if queues.insert(binding.queue.clone()) {
                    publisher.ensure_queue(&binding.queue).await?;
                }
                publisher
                    .bind_queue(&binding.queue, exchange, &binding.routing_key)
                    .await?;
            }
        }
        Ok(())
    }

    /// Commits the position at the end of `batch[..prefix]`, with the parked records of
    /// that prefix in the same transaction.
    async fn settle_prefix(
        &self,
        batch: &[Notification],
        items: &[Item],
        messages: &[OutgoingMessage],
        outcomes: &[eventfold_amqp::Result<Outcome>],
        prefix: usize,
        stall: Option<Stall>,
    ) -> Result<Step, RelayError> {
        if prefix == 0 {
            return Ok(Step { advanced: 0, stall });
        }
        let mut recording = Recording::new();
        let mut parked = 0;
        let mut skipped = 0;
        for (n, item) in batch[..prefix].iter().zip(items) {
            match item {
                Item::Skip => skipped += 1,
                Item::Park(p) => {
                    tracing::warn!(relay = %self.name, notification = n.id, reason = %p.reason, "relay parks a notification it cannot encode");
                    recording = recording.append(p.record(&self.name));
                    parked += 1;
                }
                Item::Publish { index, kind, .. } => {
                    if let Some(Ok(Outcome::Returned {
                        reply_code,
                        reply_text,
                    })) = outcomes.get(*index)
                    {
                        let m = &messages[*index];
                        tracing::info!(
                            relay = %self.name,
                            notification = n.id,
                            exchange = %m.exchange,
                            routing_key = %m.routing_key,
                            "relay parks an unroutable message (no queue bound)"
                        );
                        let p = ParkedMessage::of_message(
                            n,
                            m,
                            kind,
                            format!("unroutable: {reply_code} {reply_text}"),
                        );
                        recording = recording.append(p.record(&self.name));
                        parked += 1;
                    }
                }
            }
        }
        let last = batch[prefix - 1].id;
        recording = recording.tracking(Tracking::new(&self.name, last));
        match self.store.record(&recording).await {
            Ok(_) => {}
            Err(StoreError::Conflict(Conflict::Tracking { .. })) => {
                // Another relay moved the position (two leaders for a moment): re-read it.
                return Ok(Step {
                    advanced: 0,
                    stall: Some(Stall {
                        at: last,
                        reason: "the position was moved by another relay".to_owned(),
                        unavailable: false,
                    }),
                });
            }
            Err(e) => return Err(e.into()),
        }
        add(&self.counters.parked, parked);
        add(&self.counters.skipped, skipped);
        add(&self.counters.batches, 1);
        Ok(Step {
            advanced: prefix,
            stall,
        })
    }

    /// An outage begins (or goes on): logged at warn and recorded in the log once.
    async fn stalled(&self, outage: &mut Outage, reason: &str, position: u64) {
        if outage.since.is_some() {
            tracing::debug!(relay = %self.name, reason, "relay still stalled");
            return;
        }
        let reason = scrub(reason, &self.lock.password);
        tracing::warn!(relay = %self.name, reason = %reason, "relay stalled; retrying with backoff");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        let record = outage_record(&self.name, ERROR_TOPIC, &reason, position);
        if let Err(e) = self.store.record(&Recording::new().append(record)).await {
            tracing::debug!(relay = %self.name, error = %e, "could not record the outage");
        }
        outage.since = Some((Instant::now(), reason));
    }

    /// The relay made progress again: the outage (if any) ends, logged and recorded.
    async fn recovered(&self, outage: &mut Outage) {
        let Some((since, reason)) = outage.since.take() else {
            return;
        };
        let secs = since.elapsed().as_secs_f64();
        tracing::info!(relay = %self.name, outage_seconds = secs, "relay is publishing again");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let position = self
            .store
            .tracking_position(&self.name)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        let record = outage_record(
            &self.name,
            RECOVERED_TOPIC,
            &format!("recovered after {secs:.1} s from: {reason}"),
            position,
        );
        if let Err(e) = self.store.record(&Recording::new().append(record)).await {
            tracing::debug!(relay = %self.name, error = %e, "could not record the recovery");
        }
    }
}

fn stall_of(at: u64, e: &AmqpError) -> Stall {
    Stall {
        at,
        reason: e.to_string(),
        unavailable: e.is_unavailable() || matches!(e, AmqpError::Closed { .. }),
    }
}
