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
use crate::message::{HeaderValue, IncomingMessage, OutgoingMessage};
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
        channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;

        let dead_letters =
            ConfirmedPublisher::on_connection(config.clone(), Arc::clone(&conn), 64).await?;
        let tag = format!("{}/{}", config.connection_name(), options.role);
        let stream = channel
            .basic_consume(
                queue,
                short("consumer tag", &tag)?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;

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
    mut stream: lapin::Consumer,
) -> Option<AmqpError> {
    let workers = shared.options.workers;
    let mut senders = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        senders.push(tx);
        handles.push(tokio::spawn(work(Arc::clone(&shared), rx)));
    }
    let round_robin = AtomicUsize::new(0);
    let mut stop = shared.stop.clone();
    let mut failure = None;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = stop.wait_for(|s| *s) => break,
        };
        match next {
            Some(Ok(mut delivery)) => {
                let message = IncomingMessage::from_delivery(&mut delivery);
                // An oversized body is dead-lettered unread: do not parse it for its key.
                let key = if message.body.len() > shared.options.max_body_bytes {
                    None
                } else {
                    shared.options.key.key_of(&message)
                };
                let i = worker_index(key.as_deref(), workers, &round_robin);
                let job = Job {
                    message: Arc::new(message),
                    acker: delivery.acker,
                };
                if senders[i].send(job).is_err() {
                    break;
                }
            }
            Some(Err(e)) => {
                failure = Some(shared.config.error(&e));
                break;
            }
            None => break,
        }
    }
    drop(senders);
    for h in handles {
        let _ = h.await;
    }
    if let Some(e) = &failure {
        tracing::warn!(error = %e, "consumer stopped");
    }
    failure
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
    let mut dl = OutgoingMessage::new(
        "",
        shared.subscription.dead_letter_queue(),
        message.body.clone(),
    );
    dl.content_type = message.content_type.clone();
    dl.content_encoding = message.content_encoding.clone();
    dl.message_id = message.message_id.clone();
    dl.correlation_id = message.correlation_id.clone();
    dl.kind = message.kind.clone();
    dl.timestamp = message.timestamp;
    dl.headers = message.headers.clone();
    dl.headers
        .insert(HEADER_ERROR.into(), reason.clone().into());
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
    dl.headers.insert(
        HEADER_ORIGINAL_QUEUE.into(),
        shared.subscription.queue.clone().into(),
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
