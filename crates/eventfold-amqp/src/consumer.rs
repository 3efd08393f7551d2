//! Consuming with manual acks, N workers with per-key order, retries and dead letters.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, ExchangeKind};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::config::{short, AmqpConfig};
use crate::error::{AmqpError, Result};
use crate::message::{HeaderValue, Headers, IncomingMessage, OutgoingMessage};
use crate::nameko::{self, HandlerType};
use crate::publisher::{ConfirmedPublisher, Outcome};

/// Header of a dead letter: why it was dead-lettered.
pub const HEADER_ERROR: &str = "x-eventfold-error";
/// Header of a dead letter: how many times the handler ran (0: rejected before it ran).
pub const HEADER_ATTEMPTS: &str = "x-eventfold-attempts";
/// Header of a dead letter: the exchange the message was published to.
pub const HEADER_ORIGINAL_EXCHANGE: &str = "x-eventfold-original-exchange";
/// Header of a dead letter: the message's routing key.
pub const HEADER_ORIGINAL_ROUTING_KEY: &str = "x-eventfold-original-routing-key";
/// Header of a dead letter: the queue it was consumed from.
pub const HEADER_ORIGINAL_QUEUE: &str = "x-eventfold-original-queue";

/// Where the consumer's messages come from: a durable queue bound to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The exchange, declared durable (as nameko's consumers declare `<service>.events`).
    pub exchange: String,
    /// Its kind (topic for nameko).
    pub exchange_kind: ExchangeKind,
    /// The binding's routing key (a topic pattern for a topic exchange).
    pub routing_key: String,
    /// The queue, declared durable, not exclusive, not auto-delete.
    pub queue: String,
}

impl Subscription {
    /// A durable queue bound to a durable topic exchange.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        queue: impl Into<String>,
    ) -> Self {
        Subscription {
            exchange: exchange.into(),
            exchange_kind: ExchangeKind::Topic,
            routing_key: routing_key.into(),
            queue: queue.into(),
        }
    }

    /// The queue and binding nameko's `@event_handler(source_service, event_type)` on
    /// `consumer_service.method` uses, so this consumer can take its place (or share it).
    pub fn nameko(
        source_service: &str,
        event_type: &str,
        consumer_service: &str,
        method: &str,
        handler_type: &HandlerType,
    ) -> Self {
        Subscription::new(
            nameko::exchange_name(source_service),
            event_type,
            nameko::handler_queue_name(
                source_service,
                event_type,
                consumer_service,
                method,
                handler_type,
            ),
        )
    }

    /// The dead-letter queue: `<queue>.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

/// A function giving a message's ordering key ([`OrderKey::Custom`]).
pub type KeyFn = Arc<dyn Fn(&IncomingMessage) -> Option<String> + Send + Sync>;

/// What a message's ordering key is. Messages with the same key are handled one at a time,
/// in queue order, by the same worker; different keys run on different workers in parallel.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum OrderKey {
    /// The routing key (the default: per event type, as one nameko queue per type gives).
    #[default]
    RoutingKey,
    /// The value of this header (as a string; integers in decimal).
    Header(String),
    /// The JSON value at this JSON pointer in the body (`/id`, `/instance/pk`).
    JsonField(String),
    /// No order: round robin over the workers.
    None,
    /// A function of the message.
    Custom(KeyFn),
}

impl std::fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderKey::RoutingKey => f.write_str("RoutingKey"),
            OrderKey::Header(h) => f.debug_tuple("Header").field(h).finish(),
            OrderKey::JsonField(p) => f.debug_tuple("JsonField").field(p).finish(),
            OrderKey::None => f.write_str("None"),
            OrderKey::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl OrderKey {
    /// The key of `message`; `None` when it has none (such messages go round robin).
    pub fn key_of(&self, message: &IncomingMessage) -> Option<String> {
        match self {
            OrderKey::RoutingKey => Some(message.routing_key.clone()),
            OrderKey::Header(h) => match message.headers.get(h)? {
                HeaderValue::Str(s) => Some(s.clone()),
                HeaderValue::Int(i) => Some(i.to_string()),
                other => Some(format!("{other:?}")),
            },
            OrderKey::JsonField(pointer) => {
                let v: serde_json::Value = serde_json::from_slice(&message.body).ok()?;
                match v.pointer(pointer)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }
            }
            OrderKey::None => None,
            OrderKey::Custom(f) => f(message),
        }
    }
}

/// How often and how patiently a failing handler is retried, in process (the message stays
/// unacked meanwhile, and later messages of its key wait).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Runs of the handler in all, the first included (default 3; at least 1).
    pub attempts: u32,
    /// The delay before the second run (default 100 ms); each next delay doubles...
    pub initial_delay: Duration,
    /// ...up to this (default 5 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Unacked messages the broker sends ahead (`basic.qos`, default 64).
    pub prefetch: u16,
    /// Worker tasks (default 4).
    pub workers: usize,
    /// The ordering key (default: the routing key).
    pub key: OrderKey,
    /// Retries of a failing handler.
    pub retry: RetryPolicy,
    /// Bodies larger than this are dead-lettered unread (default 4 MiB).
    pub max_body_bytes: usize,
    /// The role in the connection name `<name>/<role>` (default `consumer`).
    pub role: String,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            prefetch: 64,
            workers: 4,
            key: OrderKey::default(),
            retry: RetryPolicy::default(),
            max_body_bytes: 4 * 1024 * 1024,
            role: "consumer".to_owned(),
        }
    }
}

/// Why a handler did not handle a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The reason, recorded in the dead letter's `x-eventfold-error` header.
    pub reason: String,
    /// `true`: dead-letter now, retrying cannot help (a message the handler cannot decode).
    pub permanent: bool,
}

impl HandlerError {
    /// A failure that may pass (retried).
    pub fn new(reason: impl std::fmt::Display) -> Self {
        HandlerError {
            reason: reason.to_string(),
            permanent: false,
        }
    }

    /// A failure retrying cannot fix: the message is dead-lettered at once.
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        HandlerError {
            reason: reason.to_string(),
            permanent: true,
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for HandlerError {}

/// Handles one message. Implemented for every
/// `Fn(Arc<IncomingMessage>) -> impl Future<Output = Result<(), HandlerError>>`.
///
/// A message is acked only after its handler returned `Ok` (or after it was
/// dead-lettered), so it may be handled more than once (a crash before the ack): handlers
/// must be idempotent, e.g. by dropping `message_id`s they have seen.
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`. A panic counts as a (retried) failure.
    fn handle(
        &self,
        message: Arc<IncomingMessage>,
    ) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Arc<IncomingMessage>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        message: Arc<IncomingMessage>,
    ) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send {
        self(message)
    }
}

/// A [`Handler`] that decodes the body as JSON into `T` before calling `handler` with it
/// (and the message, for its id, headers and routing key).
///
/// A body that does not decode into `T` (JSON of another shape: a missing field, a string
/// where a number belongs) is a [`HandlerError::permanent`] failure: retrying cannot fix
/// it, so the message is dead-lettered at once, with the type and serde's reason in its
/// `x-eventfold-error` header, and the consumer goes on. (A body that is not JSON at all
/// never reaches a handler: the consumer dead-letters it first.)
///
/// ```no_run
/// # use std::sync::Arc;
/// # use eventfold_amqp::{json_handler, HandlerError, IncomingMessage};
/// #[derive(serde::Deserialize)]
/// struct OrderCreated {
///     id: i64,
///     amount: String,
/// }
///
/// let handler = json_handler(|order: OrderCreated, m: Arc<IncomingMessage>| async move {
///     println!("order {} for {} ({:?})", order.id, order.amount, m.message_id);
///     Ok::<(), HandlerError>(())
/// });
/// # let _ = handler;
/// ```
pub fn json_handler<T, F, Fut>(handler: F) -> JsonHandler<T, F>
where
    T: serde::de::DeserializeOwned + 'static,
    F: Fn(T, Arc<IncomingMessage>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send,
{
    JsonHandler {
        handler,
        decoded: std::marker::PhantomData,
    }
}

/// The handler [`json_handler`] makes.
pub struct JsonHandler<T, F> {
    handler: F,
    decoded: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for JsonHandler<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonHandler")
            .field("decodes", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T, F, Fut> Handler for JsonHandler<T, F>
where
    T: serde::de::DeserializeOwned + 'static,
    F: Fn(T, Arc<IncomingMessage>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        message: Arc<IncomingMessage>,
    ) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send {
        let run = message
            .json::<T>()
            .map(|decoded| (self.handler)(decoded, Arc::clone(&message)))
            .map_err(|e| {
                HandlerError::permanent(format!(
                    "body does not decode as {}: {e}",
                    std::any::type_name::<T>()
                ))
            });
        async move { run?.await }
    }
}

/// What a consumer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages handled and acked.
    pub handled: u64,
    /// Handler runs that failed and were retried.
    pub retries: u64,
    /// Messages dead-lettered (and then acked).
    pub dead_lettered: u64,
    /// Messages a worker received and left unacked: not started or in a retry delay at
    /// shutdown, or whose ack failed (the broker redelivers them).
    pub left_unacked: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    left_unacked: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            handled: self.handled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            left_unacked: self.left_unacked.load(Ordering::Relaxed),
        }
    }
}

struct Job {
    message: Arc<IncomingMessage>,
    acker: Acker,
}

struct Shared<H> {
    handler: H,
    options: ConsumerOptions,
    subscription: Subscription,
    dead_letters: ConfirmedPublisher,
    counters: Counters,
    config: AmqpConfig,
    /// `true` once shutdown started: workers take no new message and stop waiting on
    /// retry delays (the message in hand stays unacked).
    stop: watch::Receiver<bool>,
}

/// A running consumer: one connection, one channel consuming a durable queue with manual
/// acks and a prefetch, and [`ConsumerOptions::workers`] worker tasks.
///
/// Each message goes to the worker its key ([`OrderKey`]) hashes to, so messages of one key
/// are handled in order, one at a time, while other keys proceed on other workers. A failing
/// handler is retried ([`RetryPolicy`]) while the message stays unacked, then the message is
/// dead-lettered with its reason. A body over [`ConsumerOptions::max_body_bytes`] or not
/// valid JSON is dead-lettered at once. Dead letters go to the durable queue
/// `<queue>.dead` (through the default exchange, with publisher confirms), and only once the
/// broker confirmed one is the original acked.
pub struct Consumer {
    channel: lapin::Channel,
    conn: Arc<lapin::Connection>,
    tag: String,
    stop: watch::Sender<bool>,
    dispatcher: Mutex<Option<JoinHandle<Option<AmqpError>>>>,
    counters: Arc<dyn Fn() -> ConsumerStats + Send + Sync>,
    config: AmqpConfig,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("tag", &self.tag)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Consumer {
    /// Declares the exchange, the queue, its binding and its dead-letter queue, and starts
    /// consuming.
    pub async fn start<H: Handler>(
        config: AmqpConfig,
        subscription: Subscription,
        options: ConsumerOptions,
        handler: H,
    ) -> Result<Consumer> {
        if options.workers == 0 {
            return Err(AmqpError::config("a consumer needs at least one worker"));
        }
        if options.retry.attempts == 0 {
            return Err(AmqpError::config(
                "retry.attempts counts the first run: at least 1",
            ));
        }
        let exchange = short("exchange", &subscription.exchange)?;
        let queue = short("queue", &subscription.queue)?;
        let dlq = short("dead-letter queue", &subscription.dead_letter_queue())?;
        let routing_key = short("routing key", &subscription.routing_key)?;
        let err = |e: lapin::Error| config.error(&e);

        let conn = Arc::new(config.connect(&options.role).await?);
        let channel = conn.create_channel().await.map_err(err)?;
        channel
            .exchange_declare(
                exchange.clone(),
                subscription.exchange_kind.clone(),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        for q in [&queue, &dlq] {
            channel
                .queue_declare(
                    q.clone(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
        }
        channel
            .queue_bind(
                queue.clone(),
                exchange,
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        let dead_letters =
            ConfirmedPublisher::on_connection(config.clone(), Arc::clone(&conn), 64).await?;
        let tag = format!("{}/{}", config.connection_name(), options.role);
        let stream = start_consuming(&config, &channel, queue, options.prefetch, &tag).await?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            handler,
            options,
            subscription,
            dead_letters,
            counters: Counters::default(),
            config: config.clone(),
            stop: stop_rx,
        });
        let stats = {
            let shared = Arc::clone(&shared);
            Arc::new(move || shared.counters.snapshot())
        };
        let dispatcher = tokio::spawn(dispatch(shared, stream));
        Ok(Consumer {
            channel,
            conn,
            tag,
            stop: stop_tx,
            dispatcher: Mutex::new(Some(dispatcher)),
            counters: stats,
            config,
        })
    }

    /// What the consumer has done so far.
    pub fn stats(&self) -> ConsumerStats {
        (self.counters)()
    }

    /// Stops consuming (`basic.cancel`), lets every worker finish the message in hand and
    /// ack it (or dead-letter it), leaves the messages not started unacked (the broker
    /// redelivers them), then closes the channel and the connection.
    ///
    /// A message in its retry delay is left unacked. Returns the final figures, or the error
    /// that stopped the consumer before (a lost connection: [`AmqpError::Unavailable`]).
    pub async fn shutdown(self) -> Result<ConsumerStats> {
        let _ = self.stop.send(true);
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let failure = match self.dispatcher.lock().await.take() {
            Some(handle) => handle.await.unwrap_or(None),
            None => None,
        };
        let _ = self.channel.close(200, "shutdown".into()).await;
        let _ = self.conn.close(200, "shutdown".into()).await;
        match failure {
            Some(e) => Err(e),
            None => Ok(self.stats()),
        }
    }

    /// Waits until the consumer stops by itself and returns why: the error for a lost
    /// connection ([`AmqpError::Unavailable`]), `None` when the broker cancelled the
    /// consumer (its queue was deleted). Use [`Self::shutdown`] afterwards to close what is
    /// left.
    pub async fn stopped(&self) -> Option<AmqpError> {
        let handle = self.dispatcher.lock().await.take();
        match handle {
            Some(handle) => handle.await.unwrap_or(None),
            None => None,
        }
    }
}

fn worker_index(key: Option<&str>, workers: usize, round_robin: &AtomicUsize) -> usize {
    match key {
        Some(key) => {
            let mut h = std::hash::DefaultHasher::new();
            key.hash(&mut h);
            (h.finish() % workers as u64) as usize
        }
        None => round_robin.fetch_add(1, Ordering::Relaxed) % workers,
    }
}

/// Reads deliveries and hands each to the worker of its key; ends when the stream ends
/// (cancelled, connection lost) or shutdown starts; then waits for the workers.
async fn dispatch<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: lapin::Consumer,
) -> Option<AmqpError> {
    let workers = shared.options.workers;
    let mut senders = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        senders.push(tx);
        handles.push(tokio::spawn(work(Arc::clone(&shared), rx)));
    }
    let failure = route_deliveries(
        stream,
        senders,
        &shared.options.key,
        shared.options.max_body_bytes,
        shared.stop.clone(),
        &shared.config,
        |message, acker, _| Job {
            message: Arc::new(message),
            acker,
        },
    )
    .await;
    for h in handles {
        let _ = h.await;
    }
    if let Some(e) = &failure {
        tracing::warn!(error = %e, "consumer stopped");
    }
    failure
}

/// The one consume loop of both consumers: reads deliveries and hands each, as the job
/// `make_job` builds, to the worker its key hashes to; ends when the stream ends
/// (cancelled, connection lost) or shutdown starts, and drops the senders so the workers
/// drain and stop.
async fn route_deliveries<J>(
    mut stream: lapin::Consumer,
    senders: Vec<mpsc::UnboundedSender<J>>,
    key: &OrderKey,
    max_body_bytes: usize,
    mut stop: watch::Receiver<bool>,
    config: &AmqpConfig,
    mut make_job: impl FnMut(IncomingMessage, Acker, u64) -> J,
) -> Option<AmqpError> {
    let workers = senders.len();
    let round_robin = AtomicUsize::new(0);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match next {
            Some(Ok(mut delivery)) => {
                let message = IncomingMessage::from_delivery(&mut delivery);
                // An oversized body is dead-lettered unread: do not parse it for its key.
                let key = if message.body.len() > max_body_bytes {
                    None
                } else {
                    key.key_of(&message)
                };
                let i = worker_index(key.as_deref(), workers, &round_robin);
                let job = make_job(message, delivery.acker, delivery.delivery_tag);
                if senders[i].send(job).is_err() {
                    return None;
                }
            }
            Some(Err(e)) => return Some(config.error(&e)),
            None => return None,
        }
    }
}

async fn work<H: Handler>(shared: Arc<Shared<H>>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        if *shared.stop.borrow() {
            shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        process(&shared, job).await;
    }
}

async fn process<H: Handler>(shared: &Shared<H>, job: Job) {
    let Job { message, acker } = job;
    let limit = shared.options.max_body_bytes;
    if message.body.len() > limit {
        let reason = format!(
            "body of {} bytes exceeds the limit of {limit} bytes",
            message.body.len()
        );
        return dead_letter(shared, &message, &acker, &reason, 0).await;
    }
    // JSON is UTF-8 (RFC 8259), but serde_json skips the bytes of a string it ignores
    // without checking them: check the text first.
    let text = match std::str::from_utf8(&message.body) {
        Ok(text) => text,
        Err(e) => {
            let reason = format!("body is not valid JSON: not UTF-8 ({e})");
            return dead_letter(shared, &message, &acker, &reason, 0).await;
        }
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let reason = format!("body is not valid JSON: {e}");
        return dead_letter(shared, &message, &acker, &reason, 0).await;
    }
    let retry = &shared.options.retry;
    let mut stop = shared.stop.clone();
    for attempt in 1..=retry.attempts {
        let run = AssertUnwindSafe(shared.handler.handle(Arc::clone(&message)))
            .catch_unwind()
            .await;
        let error = match run {
            Ok(Ok(())) => {
                match acker.ack(BasicAckOptions::default()).await {
                    Ok(_) => {
                        shared.counters.handled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // The channel is gone: the broker redelivers the message.
                        tracing::warn!(error = %shared.config.error(&e), "ack failed");
                        shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return;
            }
            Ok(Err(e)) => e,
            Err(panic) => HandlerError::new(format!(
                "handler panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned())
            )),
        };
        if error.permanent || attempt == retry.attempts {
            return dead_letter(shared, &message, &acker, &error.reason, attempt).await;
        }
        shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(attempt, reason = %error.reason, "handler failed, retrying");
        tokio::select! {
            _ = tokio::time::sleep(retry.delay_after(attempt)) => {}
            _ = stop.wait_for(|s| *s) => {
                shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Publishes a copy of `message` to `<queue>.dead` with the reason, waits for the broker's
/// confirmation, then acks the original. If the dead letter is not confirmed, the original
/// is nacked back to the queue (after a pause), never acked.
async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    message: &IncomingMessage,
    acker: &Acker,
    reason: &str,
    attempts: u32,
) {
    let reason: String = reason.chars().take(4000).collect();
    let dl = dead_letter_copy(
        message,
        &reason,
        attempts,
        &shared.subscription.queue,
        "",
        &shared.subscription.dead_letter_queue(),
    );
    match shared.dead_letters.publish_one(&dl).await {
        Ok(Outcome::Confirmed) => {
            tracing::warn!(%reason, attempts, routing_key = %message.routing_key, "message dead-lettered");
            match acker.ack(BasicAckOptions::default()).await {
                Ok(_) => {
                    shared
                        .counters
                        .dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %shared.config.error(&e), "ack after dead letter failed");
                    shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        other => {
            tracing::error!(?other, %reason, "dead letter not confirmed; message goes back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
            shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The dead letter of `message`: its body and properties, the reason and origin in
/// headers, published to `exchange` with `routing_key`.
fn dead_letter_copy(
    message: &IncomingMessage,
    reason: &str,
    attempts: u32,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> OutgoingMessage {
    let mut dl = OutgoingMessage::new(exchange, routing_key, message.body.clone());
    dl.content_type = message.content_type.clone();
    dl.content_encoding = message.content_encoding.clone();
    dl.message_id = message.message_id.clone();
    dl.correlation_id = message.correlation_id.clone();
    dl.kind = message.kind.clone();
    dl.timestamp = message.timestamp;
    dl.headers = message.headers.clone();
    dl.headers.insert(HEADER_ERROR.into(), reason.into());
    dl.headers
        .insert(HEADER_ATTEMPTS.into(), i64::from(attempts).into());
    dl.headers.insert(
        HEADER_ORIGINAL_EXCHANGE.into(),
        message.exchange.clone().into(),
    );
    dl.headers.insert(
        HEADER_ORIGINAL_ROUTING_KEY.into(),
        message.routing_key.clone().into(),
    );
    dl.headers
        .insert(HEADER_ORIGINAL_QUEUE.into(), queue.into());
    dl
}

// ---------------------------------------------------------------------------------------
// Batches: a declared topology, a handler that settles many messages at once, and acks
// that leave as multiple-acks where the channel's order allows.
// ---------------------------------------------------------------------------------------

/// A queue a batch consumer declares: durable, not exclusive, not auto-delete, bound to
/// the topology's exchange with each of `bindings`.
///
/// A declaration without arguments takes an existing queue as it is, whatever arguments
/// it was declared with (RabbitMQ refuses a re-declaration that differs: the consumer
/// then uses the queue passively). A declaration with arguments (`x-single-active-consumer`)
/// must match the existing queue: a mismatch is [`AmqpError::Channel`] (406), since
/// consuming a queue without the arguments asked for would silently lose what they give.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDeclaration {
    /// The queue name.
    pub name: String,
    /// Its `x-` arguments (none by default).
    pub arguments: Headers,
    /// The routing keys it is bound with.
    pub bindings: Vec<String>,
}

impl QueueDeclaration {
    /// A plain durable queue with no bindings yet.
    pub fn new(name: impl Into<String>) -> Self {
        QueueDeclaration {
            name: name.into(),
            arguments: Headers::new(),
            bindings: Vec::new(),
        }
    }

    /// Adds a binding.
    pub fn bind(mut self, routing_key: impl Into<String>) -> Self {
        self.bindings.push(routing_key.into());
        self
    }

    /// Adds an argument (`x-single-active-consumer`, `true`).
    pub fn argument(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.arguments.insert(name.into(), value.into());
        self
    }
}

/// What a batch consumer declares before it consumes: a durable exchange and queues bound
/// to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The exchange, declared durable.
    pub exchange: String,
    /// Its kind.
    pub exchange_kind: ExchangeKind,
    /// The queues, declared in this order.
    pub queues: Vec<QueueDeclaration>,
}

/// Declares `topology` on `conn`. A declaration the broker refuses closes the channel, so
/// each fallback runs on a new one.
async fn declare(config: &AmqpConfig, conn: &lapin::Connection, topology: &Topology) -> Result<()> {
    let err = |e: lapin::Error| config.error(&e);
    let mut channel = conn.create_channel().await.map_err(err)?;
    let exchange = short("exchange", &topology.exchange)?;
    channel
        .exchange_declare(
            exchange.clone(),
            topology.exchange_kind.clone(),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    for queue in &topology.queues {
        let name = short("queue", &queue.name)?;
        let arguments = crate::message::headers_to_table(&queue.arguments)?;
        let declared = channel
            .queue_declare(name.clone(), QueueDeclareOptions::durable(), arguments)
            .await;
        if let Err(e) = declared {
            let e = config.error(&e);
            let mismatch = matches!(e, AmqpError::Channel { code: 406, .. });
            if !(mismatch && queue.arguments.is_empty()) {
                return Err(e);
            }
            tracing::info!(queue = %queue.name, "queue exists with other arguments; using it as it is");
            channel = conn.create_channel().await.map_err(err)?;
            channel
                .queue_declare(
                    name.clone(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
        }
        for key in &queue.bindings {
            channel
                .queue_bind(
                    name.clone(),
                    exchange.clone(),
                    short("routing key", key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// A message to dead-letter, as a [`BatchHandler`] asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Why (the `x-eventfold-error` header).
    pub reason: String,
    /// How many times it was tried (the `x-eventfold-attempts` header; 0: never).
    pub attempts: u32,
    /// Where to publish it, `(exchange, routing_key)`; `None`, or a route that turns out
    /// unroutable: straight to [`BatchOptions::dead_letter_queue`].
    pub route: Option<(String, String)>,
    /// A per-message TTL in its dead-letter queue (`expiration`).
    pub ttl: Option<Duration>,
}

impl DeadLetter {
    /// A dead letter to the consumer's dead-letter queue, with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        DeadLetter {
            reason: reason.into(),
            attempts: 0,
            route: None,
            ttl: None,
        }
    }
}

/// What to do with one message of a batch. Whatever it is, the message is acked only once
/// it is done.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Disposition {
    /// Handled: ack it.
    Ack,
    /// Publish a copy to a dead-letter queue (body verbatim, the reason in a header), ack
    /// the original once the broker confirmed the copy.
    DeadLetter(DeadLetter),
    /// Publish `message` (a retry) once `delay` has passed, ack the original once the
    /// broker confirmed it. The original stays unacked meanwhile, and is left unacked
    /// (redelivered later) if the consumer shuts down first. The worker does not wait:
    /// it goes on with its next batch.
    Republish {
        /// What to publish.
        message: OutgoingMessage,
        /// How long to wait first.
        delay: Duration,
    },
    /// Give it back to the queue now (`nack` with requeue).
    Requeue,
    /// Leave it unacked: the broker redelivers it when this consumer's connection closes.
    Leave,
}

/// Handles a batch of messages at once (one database transaction for all, say). Returns
/// one [`Disposition`] per message, in order. Implemented for every
/// `Fn(Vec<Arc<IncomingMessage>>) -> impl Future<Output = Vec<Disposition>>`.
///
/// A batch holds messages of one worker, in queue order: messages of one key are never
/// split over two batches in flight at once.
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `batch`. A panic requeues the whole batch after a pause.
    fn handle_batch(
        &self,
        batch: Vec<Arc<IncomingMessage>>,
    ) -> impl Future<Output = Vec<Disposition>> + Send;
}

impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<Arc<IncomingMessage>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send,
{
    fn handle_batch(
        &self,
        batch: Vec<Arc<IncomingMessage>>,
    ) -> impl Future<Output = Vec<Disposition>> + Send {
        self(batch)
    }
}

/// Settings of a batch consumer ([`Consumer::start_batches`]).
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Unacked messages the broker sends ahead (default 1000); at least
    /// `workers × batch_size` keeps every worker's batches full under a backlog.
    pub prefetch: u16,
    /// Worker tasks (default 4).
    pub workers: usize,
    /// The ordering key (default: the routing key).
    pub key: OrderKey,
    /// At most this many messages per batch (default 200; at least 1).
    pub batch_size: usize,
    /// How long a worker waits for more messages once it has one and fewer than
    /// `batch_size` are queued (default 0: a batch is what is already there, so batches
    /// grow with the backlog and a lone message is not delayed).
    pub linger: Duration,
    /// Bodies larger than this are dead-lettered unread (default 4 MiB).
    pub max_body_bytes: usize,
    /// The queue dead letters go to when they have no route of their own (default
    /// `<queue>.dead`).
    pub dead_letter_queue: Option<String>,
    /// The role in the connection name `<name>/<role>` (default `consumer`).
    pub role: String,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            prefetch: 1000,
            workers: 4,
            key: OrderKey::default(),
            batch_size: 200,
            linger: Duration::ZERO,
            max_body_bytes: 4 * 1024 * 1024,
            dead_letter_queue: None,
            role: "consumer".to_owned(),
        }
    }
}

/// What a settled delivery was, for the figures once its ack is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Handled,
    DeadLettered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Delivered, its worker has it.
    Open,
    /// Waiting (a delayed republish) or left unacked for good.
    Held,
    /// Done: to be acked.
    Done(Settled),
}

/// Acks to send now, taken from the book.
struct AckRun<A = Acker> {
    /// The top of the done prefix, to multiple-ack.
    multiple: Option<A>,
    /// Done deliveries behind a held one, to ack one by one.
    singles: Vec<A>,
    /// What the run covers, for the figures.
    handled: u64,
    dead_lettered: u64,
}

impl<A> Default for AckRun<A> {
    fn default() -> Self {
        AckRun {
            multiple: None,
            singles: Vec::new(),
            handled: 0,
            dead_lettered: 0,
        }
    }
}

impl<A> AckRun<A> {
    fn count(&mut self, settled: Settled) {
        match settled {
            Settled::Handled => self.handled += 1,
            Settled::DeadLettered => self.dead_lettered += 1,
        }
    }
}

/// The channel's unacked deliveries in tag order. A multiple-ack acks every unacked tag
/// up to its own, so one is sent only over a prefix that is all done; done tags behind a
/// held one are acked one by one (a held tag must never be covered). Done tags behind an
/// open one wait for it (its worker is on it), or for [`AckBook::rest`] at the end.
struct AckBook<A = Acker> {
    entries: std::collections::BTreeMap<u64, (Mark, A)>,
}

impl<A> Default for AckBook<A> {
    fn default() -> Self {
        AckBook {
            entries: Default::default(),
        }
    }
}

impl<A> AckBook<A> {
    fn settle(&mut self, tags: &[u64], settled: Settled) -> AckRun<A> {
        for tag in tags {
            if let Some(entry) = self.entries.get_mut(tag) {
                entry.0 = Mark::Done(settled);
            }
        }
        let mut run = AckRun::default();
        while let Some(entry) = self.entries.first_entry() {
            let Mark::Done(settled) = entry.get().0 else {
                break;
            };
            run.count(settled);
            run.multiple = Some(entry.remove().1);
        }
        if self
            .entries
            .first_key_value()
            .is_some_and(|(_, (m, _))| *m == Mark::Held)
        {
            let done: Vec<u64> = self
                .entries
                .iter()
                .take_while(|(_, (m, _))| *m != Mark::Open)
                .filter(|(_, (m, _))| matches!(m, Mark::Done(_)))
                .map(|(t, _)| *t)
                .collect();
            run.singles = self.take(&done, &mut run);
        }
        run
    }

    /// Every done delivery left, one by one (the workers are gone: no open one will be
    /// settled any more).
    fn rest(&mut self) -> AckRun<A> {
        let mut run = AckRun::default();
        let done: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, (m, _))| matches!(m, Mark::Done(_)))
            .map(|(t, _)| *t)
            .collect();
        run.singles = self.take(&done, &mut run);
        run
    }

    fn take(&mut self, tags: &[u64], run: &mut AckRun<A>) -> Vec<A> {
        let mut ackers = Vec::with_capacity(tags.len());
        for tag in tags {
            if let Some((Mark::Done(settled), acker)) = self.entries.remove(tag) {
                run.count(settled);
                ackers.push(acker);
            }
        }
        ackers
    }
}

struct Acks {
    book: std::sync::Mutex<AckBook>,
    /// Held while acks are sent: a multiple-ack must not overtake an earlier one, or it
    /// would cover that one's tag first (406 unknown delivery tag).
    sending: Mutex<()>,
}

impl Acks {
    fn open(&self, tag: u64, acker: Acker) {
        let mut book = self.book.lock().expect("ack book lock");
        book.entries.insert(tag, (Mark::Open, acker));
    }

    fn hold(&self, tags: &[u64]) {
        let mut book = self.book.lock().expect("ack book lock");
        for tag in tags {
            if let Some(entry) = book.entries.get_mut(tag) {
                entry.0 = Mark::Held;
            }
        }
    }

    /// Settles `tags` and sends the acks that makes possible (see [`AckBook`]); counts
    /// what the sent acks covered.
    async fn ack(&self, tags: &[u64], settled: Settled, counters: &Counters, config: &AmqpConfig) {
        if tags.is_empty() {
            return;
        }
        let _turn = self.sending.lock().await;
        let run = self
            .book
            .lock()
            .expect("ack book lock")
            .settle(tags, settled);
        send_acks(run, counters, config).await;
    }

    /// Acks every settled delivery still waiting, once the workers are gone.
    async fn ack_rest(&self, counters: &Counters, config: &AmqpConfig) {
        let _turn = self.sending.lock().await;
        let run = self.book.lock().expect("ack book lock").rest();
        send_acks(run, counters, config).await;
    }

    /// Nacks `tag` back to the queue.
    async fn requeue(&self, tag: u64, config: &AmqpConfig) -> bool {
        let _turn = self.sending.lock().await;
        let acker = self
            .book
            .lock()
            .expect("ack book lock")
            .entries
            .remove(&tag);
        let Some((_, acker)) = acker else {
            return false;
        };
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        match tokio::time::timeout(ACK_TIMEOUT, acker.nack(requeue)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %config.error(&e), "nack failed");
                false
            }
            Err(_) => false,
        }
    }
}

/// How long an ack may take to reach lapin's I/O loop. A connection that died under an
/// ack can leave its promise unresolved; the delivery is then redelivered by the broker,
/// and the worker must not wait for ever.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

async fn ack_within(acker: &Acker, options: BasicAckOptions, config: &AmqpConfig) -> bool {
    match tokio::time::timeout(ACK_TIMEOUT, acker.ack(options)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %config.error(&e), "ack failed");
            false
        }
        Err(_) => {
            tracing::warn!("ack not sent within {ACK_TIMEOUT:?}; the connection is gone");
            false
        }
    }
}

async fn send_acks(run: AckRun, counters: &Counters, config: &AmqpConfig) {
    let mut ok = true;
    if let Some(acker) = run.multiple {
        ok &= ack_within(&acker, BasicAckOptions { multiple: true }, config).await;
    }
    for acker in run.singles {
        ok &= ack_within(&acker, BasicAckOptions::default(), config).await;
    }
    if ok {
        counters.handled.fetch_add(run.handled, Ordering::Relaxed);
        counters
            .dead_lettered
            .fetch_add(run.dead_lettered, Ordering::Relaxed);
    } else {
        // The channel is gone: the broker redelivers them.
        counters
            .left_unacked
            .fetch_add(run.handled + run.dead_lettered, Ordering::Relaxed);
    }
}

struct BatchJob {
    message: Arc<IncomingMessage>,
    tag: u64,
}

struct BatchShared<H> {
    handler: H,
    options: BatchOptions,
    queue: String,
    dead_letter_queue: String,
    publisher: ConfirmedPublisher,
    acks: Acks,
    counters: Counters,
    config: AmqpConfig,
    stop: watch::Receiver<bool>,
    /// Set when the deliveries ended without a shutdown (the connection is lost): the
    /// broker is giving the messages still queued here to another consumer, so they are
    /// left, not applied a second time out of turn.
    abandoned: std::sync::atomic::AtomicBool,
}

impl Consumer {
    /// Declares `topology`, then consumes `queue` in batches: each worker hands up to
    /// [`BatchOptions::batch_size`] messages of its keys, in queue order, to `handler` at
    /// once and settles each as its [`Disposition`] says. A body over
    /// [`BatchOptions::max_body_bytes`] is dead-lettered without reaching the handler.
    ///
    /// Acks leave as one multiple-ack per run of settled deliveries where no unsettled one
    /// lies before them (the common case), one by one behind a held message. Dead letters
    /// and republished retries go out on the consumer's connection with publisher
    /// confirms, and a message is acked only once its copy is confirmed. The
    /// [`Consumer::shutdown`] of a batch consumer lets every batch in hand finish and be
    /// settled; messages not started, and retries still waiting, are left unacked.
    pub async fn start_batches<H: BatchHandler>(
        config: AmqpConfig,
        topology: Topology,
        queue: &str,
        options: BatchOptions,
        handler: H,
    ) -> Result<Consumer> {
        if options.workers == 0 {
            return Err(AmqpError::config("a consumer needs at least one worker"));
        }
        if options.batch_size == 0 {
            return Err(AmqpError::config("a batch holds at least one message"));
        }
        let err = |e: lapin::Error| config.error(&e);
        let queue_name = short("queue", queue)?;
        let dead_letter_queue = options
            .dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{queue}.dead"));
        short("dead-letter queue", &dead_letter_queue)?;

        let conn = Arc::new(config.connect(&options.role).await?);
        declare(&config, &conn, &topology).await?;
        let channel = conn.create_channel().await.map_err(err)?;
        let publisher =
            ConfirmedPublisher::on_connection(config.clone(), Arc::clone(&conn), 256).await?;
        let tag = format!("{}/{}", config.connection_name(), options.role);
        let stream = start_consuming(&config, &channel, queue_name, options.prefetch, &tag).await?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(BatchShared {
            handler,
            options,
            queue: queue.to_owned(),
            dead_letter_queue,
            publisher,
            acks: Acks {
                book: Default::default(),
                sending: Mutex::new(()),
            },
            counters: Counters::default(),
            config: config.clone(),
            stop: stop_rx,
            abandoned: Default::default(),
        });
        let stats = {
            let shared = Arc::clone(&shared);
            Arc::new(move || shared.counters.snapshot())
        };
        let dispatcher = tokio::spawn(dispatch_batches(shared, stream));
        Ok(Consumer {
            channel,
            conn,
            tag,
            stop: stop_tx,
            dispatcher: Mutex::new(Some(dispatcher)),
            counters: stats,
            config,
        })
    }
}

impl Consumer {
    /// Whether the consumer has stopped by itself (a lost connection, a deleted queue),
    /// without waiting: a supervisor polls this, then calls [`Self::shutdown`] (which
    /// returns the error) and starts again.
    pub fn has_stopped(&self) -> bool {
        self.dispatcher
            .try_lock()
            .map(|d| d.as_ref().is_none_or(|h| h.is_finished()))
            .unwrap_or(false)
    }
}

async fn dispatch_batches<H: BatchHandler>(
    shared: Arc<BatchShared<H>>,
    stream: lapin::Consumer,
) -> Option<AmqpError> {
    let workers = shared.options.workers;
    let mut senders = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel::<BatchJob>();
        senders.push(tx);
        handles.push(tokio::spawn(work_batches(Arc::clone(&shared), rx)));
    }
    let failure = route_deliveries(
        stream,
        senders,
        &shared.options.key,
        shared.options.max_body_bytes,
        shared.stop.clone(),
        &shared.config,
        |message, acker, tag| {
            shared.acks.open(tag, acker);
            BatchJob {
                message: Arc::new(message),
                tag,
            }
        },
    )
    .await;
    if !*shared.stop.borrow() {
        shared.abandoned.store(true, Ordering::Relaxed);
    }
    for h in handles {
        let _ = h.await;
    }
    shared.acks.ack_rest(&shared.counters, &shared.config).await;
    if let Some(e) = &failure {
        tracing::warn!(error = %e, "consumer stopped");
    }
    failure
}

async fn work_batches<H: BatchHandler>(
    shared: Arc<BatchShared<H>>,
    mut rx: mpsc::UnboundedReceiver<BatchJob>,
) {
    let mut waiting = tokio::task::JoinSet::new();
    let size = shared.options.batch_size;
    while let Some(first) = rx.recv().await {
        if *shared.stop.borrow() || shared.abandoned.load(Ordering::Relaxed) {
            // Held, not open: the batches other workers finish may still be acked.
            shared.acks.hold(&[first.tag]);
            shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < size {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() < size && !shared.options.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + shared.options.linger;
            while batch.len() < size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    _ => break,
                }
            }
        }
        run_batch(&shared, batch, &mut waiting).await;
        while waiting.try_join_next().is_some() {}
    }
    while waiting.join_next().await.is_some() {}
}

async fn run_batch<H: BatchHandler>(
    shared: &Arc<BatchShared<H>>,
    batch: Vec<BatchJob>,
    waiting: &mut tokio::task::JoinSet<()>,
) {
    let limit = shared.options.max_body_bytes;
    let mut settled: Vec<(u64, Arc<IncomingMessage>, Disposition)> = Vec::new();
    let mut handed = Vec::with_capacity(batch.len());
    for job in batch {
        if job.message.body.len() > limit {
            let reason = format!(
                "body of {} bytes exceeds the limit of {limit} bytes",
                job.message.body.len()
            );
            settled.push((
                job.tag,
                job.message,
                Disposition::DeadLetter(DeadLetter::new(reason)),
            ));
        } else {
            handed.push(job);
        }
    }
    if !handed.is_empty() {
        let messages: Vec<_> = handed.iter().map(|j| Arc::clone(&j.message)).collect();
        let run = AssertUnwindSafe(shared.handler.handle_batch(messages))
            .catch_unwind()
            .await;
        let mut dispositions = match run {
            Ok(d) => d,
            Err(_) => {
                tracing::error!(
                    messages = handed.len(),
                    "batch handler panicked; requeueing the batch"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                vec![Disposition::Requeue; handed.len()]
            }
        };
        if dispositions.len() != handed.len() {
            tracing::error!(
                messages = handed.len(),
                dispositions = dispositions.len(),
                "batch handler settled a different number of messages; the rest stay unacked"
            );
        }
        dispositions.resize(handed.len(), Disposition::Leave);
        for (job, d) in handed.into_iter().zip(dispositions) {
            settled.push((job.tag, job.message, d));
        }
    }
    settled.sort_by_key(|(tag, _, _)| *tag);

    let mut acks = Vec::new();
    let mut dead = Vec::new();
    for (tag, message, d) in settled {
        match d {
            Disposition::Ack => acks.push(tag),
            Disposition::DeadLetter(dl) => dead.push((tag, message, dl)),
            Disposition::Republish {
                message: copy,
                delay,
            } => {
                shared.acks.hold(&[tag]);
                let shared = Arc::clone(shared);
                waiting.spawn(async move { republish_later(&shared, tag, copy, delay).await });
            }
            Disposition::Requeue => {
                shared.acks.hold(&[tag]);
                if !shared.acks.requeue(tag, &shared.config).await {
                    shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Disposition::Leave => {
                shared.acks.hold(&[tag]);
                shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if !dead.is_empty() {
        let confirmed = publish_dead_letters(shared, &dead).await;
        let mut dead_lettered = Vec::new();
        let mut unconfirmed = Vec::new();
        for ((tag, _, _), ok) in dead.iter().zip(confirmed) {
            if ok {
                dead_lettered.push(*tag);
            } else {
                unconfirmed.push(*tag);
            }
        }
        shared
            .acks
            .ack(
                &dead_lettered,
                Settled::DeadLettered,
                &shared.counters,
                &shared.config,
            )
            .await;
        if !unconfirmed.is_empty() {
            tracing::error!(
                messages = unconfirmed.len(),
                "dead letters not confirmed; messages go back to the queue"
            );
            shared.acks.hold(&unconfirmed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            for tag in unconfirmed {
                if !shared.acks.requeue(tag, &shared.config).await {
                    shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    shared
        .acks
        .ack(&acks, Settled::Handled, &shared.counters, &shared.config)
        .await;
}

/// Publishes the dead letters of a batch (confirmed together); an unroutable one is sent
/// again straight to the dead-letter queue. Returns which were confirmed.
async fn publish_dead_letters<H>(
    shared: &BatchShared<H>,
    dead: &[(u64, Arc<IncomingMessage>, DeadLetter)],
) -> Vec<bool> {
    let copy = |message: &IncomingMessage, dl: &DeadLetter, direct: bool| {
        let reason: String = dl.reason.chars().take(4000).collect();
        let (exchange, routing_key) = match (&dl.route, direct) {
            (Some((e, k)), false) => (e.as_str(), k.as_str()),
            _ => ("", shared.dead_letter_queue.as_str()),
        };
        let mut out = dead_letter_copy(
            message,
            &reason,
            dl.attempts,
            &shared.queue,
            exchange,
            routing_key,
        );
        out.expiration_ms = dl.ttl.map(|t| t.as_millis() as u64);
        out
    };
    let messages: Vec<_> = dead.iter().map(|(_, m, dl)| copy(m, dl, false)).collect();
    let outcomes = shared.publisher.publish_all(&messages).await;
    let mut confirmed = Vec::with_capacity(dead.len());
    for ((_, message, dl), outcome) in dead.iter().zip(outcomes) {
        let ok = match outcome {
            Ok(Outcome::Confirmed) => true,
            Ok(Outcome::Returned { .. }) if dl.route.is_some() => matches!(
                shared.publisher.publish_one(&copy(message, dl, true)).await,
                Ok(Outcome::Confirmed)
            ),
            other => {
                tracing::warn!(?other, "dead letter not confirmed");
                false
            }
        };
        if ok {
            tracing::warn!(reason = %dl.reason, attempts = dl.attempts, routing_key = %message.routing_key, "message dead-lettered");
        }
        confirmed.push(ok);
    }
    confirmed
}

/// Waits `delay`, publishes `copy`, and acks `tag` once the broker confirmed it; gives the
/// message back to the queue if it did not. Shutdown ends the wait and leaves the message
/// unacked.
async fn republish_later<H>(
    shared: &BatchShared<H>,
    tag: u64,
    copy: OutgoingMessage,
    delay: Duration,
) {
    let mut stop = shared.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.wait_for(|s| *s) => {
            shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    match shared.publisher.publish_one(&copy).await {
        Ok(Outcome::Confirmed) => {
            shared
                .acks
                .ack(&[tag], Settled::Handled, &shared.counters, &shared.config)
                .await;
        }
        other => {
            tracing::warn!(?other, routing_key = %copy.routing_key, "retry not confirmed; the message goes back to the queue");
            if !shared.acks.requeue(tag, &shared.config).await {
                shared.counters.left_unacked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sets `channel`'s prefetch, then consumes `queue` with manual acks under `tag`.
async fn start_consuming(
    config: &AmqpConfig,
    channel: &lapin::Channel,
    queue: lapin::types::ShortString,
    prefetch: u16,
    tag: &str,
) -> Result<lapin::Consumer> {
    let err = |e: lapin::Error| config.error(&e);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(err)?;
    channel
        .basic_consume(
            queue,
            short("consumer tag", tag)?,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)
}

#[cfg(test)]
mod ack_book_tests {
    use super::{AckBook, Mark, Settled};

    /// A book of tags `1..=n`, all open; the "acker" of a tag is the tag itself.
    fn book(n: u64) -> AckBook<u64> {
        let mut book = AckBook::default();
        for tag in 1..=n {
            book.entries.insert(tag, (Mark::Open, tag));
        }
        book
    }

    fn hold(book: &mut AckBook<u64>, tag: u64) {
        book.entries.get_mut(&tag).unwrap().0 = Mark::Held;
    }

    #[test]
    fn a_done_prefix_is_one_multiple_ack_at_its_top() {
        let mut b = book(5);
        let run = b.settle(&[1, 2, 3], Settled::Handled);
        assert_eq!(
            (run.multiple, run.singles, run.handled),
            (Some(3), vec![], 3)
        );
        assert_eq!(b.entries.keys().copied().collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn done_tags_behind_an_open_one_wait_for_it() {
        let mut b = book(4);
        let run = b.settle(&[2, 4], Settled::Handled);
        assert_eq!((run.multiple, run.singles.len()), (None, 0));
        let run = b.settle(&[1], Settled::DeadLettered);
        assert_eq!(
            (run.multiple, run.handled, run.dead_lettered),
            (Some(2), 1, 1)
        );
        let run = b.settle(&[3], Settled::Handled);
        assert_eq!((run.multiple, run.handled), (Some(4), 2));
        assert!(b.entries.is_empty());
    }

    #[test]
    fn a_held_tag_is_never_covered_and_what_follows_goes_one_by_one() {
        let mut b = book(6);
        hold(&mut b, 2);
        let run = b.settle(&[1, 3, 4, 6], Settled::Handled);
        // 1 by a multiple-ack; 3 and 4 singly (behind held 2, before open 5); 6 waits for 5.
        assert_eq!(
            (run.multiple, run.singles, run.handled),
            (Some(1), vec![3, 4], 3)
        );
        assert_eq!(b.entries.keys().copied().collect::<Vec<_>>(), [2, 5, 6]);
        let run = b.settle(&[5], Settled::Handled);
        assert_eq!((run.multiple, run.singles), (None, vec![5, 6]));
        // The held one settles at last: it is the prefix now.
        let run = b.settle(&[2], Settled::Handled);
        assert_eq!((run.multiple, run.singles), (Some(2), vec![]));
    }

    #[test]
    fn the_rest_is_every_done_tag_one_by_one() {
        let mut b = book(4);
        b.settle(&[2, 4], Settled::Handled);
        let run = b.rest();
        assert_eq!(
            (run.multiple, run.singles, run.handled),
            (None, vec![2, 4], 2)
        );
        assert_eq!(b.entries.keys().copied().collect::<Vec<_>>(), [1, 3]);
    }
}
