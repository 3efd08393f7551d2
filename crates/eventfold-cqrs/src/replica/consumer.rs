//! The replica consumer: django-cqrs's topology, revision rules, retries and dead letters,
//! over eventfold-amqp's batch consumer (per-key workers, multiple-acks).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventfold_amqp::{
    AmqpConfig, AmqpError, BatchHandler, BatchOptions, Consumer, ConsumerStats, DeadLetter,
    Disposition, ExchangeKind, IncomingMessage, OrderKey, QueueDeclaration, Topology,
};
use eventfold_core::Store;
use serde::Deserialize;

use super::apply::{apply_batch, apply_message, Applied, ApplyError};
use super::model::ReplicaModels;
use crate::wire::{
    dead_letter_queue, iso_seconds, queue_routing_key, replica_bindings, CqrsMessage,
    DEFAULT_DEAD_MESSAGE_TTL, DEFAULT_EXCHANGE,
};

/// The queue argument of failover mode.
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";

/// Settings of a [`ReplicaConsumer`]; [`ReplicaOptions::new`] gives django-cqrs's defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicaOptions {
    /// The replica's queue (`CQRS['queue']`); its dead letters go to `dead_letter_<queue>`.
    pub queue: String,
    /// The exchange (`CQRS['exchange']`, default `cqrs`).
    pub exchange: String,
    /// Worker tasks (default 4). Messages of one instance (`cqrs_id`, `instance_pk`) always
    /// go to the same worker, in queue order.
    pub workers: usize,
    /// At most this many messages applied in one replica transaction (default 200).
    pub batch_size: usize,
    /// How long a worker waits for a batch to fill (default 0: a batch is what has
    /// arrived, so it grows with the backlog and a lone message is applied at once).
    pub linger: Duration,
    /// Unacked messages the broker sends ahead (default 1000).
    pub prefetch: u16,
    /// Re-publishes of a failing message before it is dead-lettered (`CQRS_MAX_RETRIES`,
    /// default 30).
    pub max_retries: u32,
    /// The delay before a failing message is re-published (`CQRS_RETRY_DELAY`, default 2 s).
    pub retry_delay: Duration,
    /// The TTL of a dead letter in its queue (`dead_message_ttl`, default 10 days; `None`:
    /// kept until purged).
    pub dead_message_ttl: Option<Duration>,
    /// Bodies larger than this are dead-lettered unread (default 4 MiB).
    pub max_body_bytes: usize,
    /// Failover mode: the queue is declared with `x-single-active-consumer`, so of
    /// several consumers only one gets messages and another takes over when it goes
    /// (default off: django-cqrs's plain declaration).
    pub failover: bool,
    /// The role in the AMQP connection name (default `replica`).
    pub role: String,
}

impl ReplicaOptions {
    /// django-cqrs's defaults for `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        ReplicaOptions {
            queue: queue.into(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            workers: 4,
            batch_size: 200,
            linger: Duration::ZERO,
            prefetch: 1000,
            max_retries: 30,
            retry_delay: Duration::from_secs(2),
            dead_message_ttl: Some(DEFAULT_DEAD_MESSAGE_TTL),
            max_body_bytes: 4 * 1024 * 1024,
            failover: false,
            role: "replica".to_owned(),
        }
    }
}

/// What the queues and bindings of a replica are, as django-cqrs declares them: the
/// exchange (topic, durable); `<queue>` bound with `<cqrs_id>` and
/// `cqrs.<queue>.<cqrs_id>`; `dead_letter_<queue>` bound with
/// `cqrs.dead_letter_<queue>.<cqrs_id>`; both durable, not exclusive, no arguments.
/// In failover mode `<queue>` also has `x-single-active-consumer`.
pub fn replica_topology(options: &ReplicaOptions, cqrs_ids: &[String]) -> Topology {
    let dlq = dead_letter_queue(&options.queue);
    let mut queue = QueueDeclaration::new(&options.queue);
    let mut dead = QueueDeclaration::new(&dlq);
    for id in cqrs_ids {
        for (name, routing_key) in replica_bindings(&options.queue, id) {
            if name == dlq {
                dead = dead.bind(routing_key);
            } else {
                queue = queue.bind(routing_key);
            }
        }
    }
    if options.failover {
        queue = queue.argument(SINGLE_ACTIVE_CONSUMER, true);
    }
    Topology {
        exchange: options.exchange.clone(),
        exchange_kind: ExchangeKind::Topic,
        queues: vec![queue, dead],
    }
}

/// What a replica consumer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Messages applied and committed (created + updated + deleted).
    pub applied: u64,
    /// Rows created.
    pub created: u64,
    /// Rows updated (SAVE or SYNC).
    pub updated: u64,
    /// DELETEs applied.
    pub deleted: u64,
    /// SAVEs older than the stored revision, acked and not applied: messages that came
    /// out of order (first deliveries only; see [`Self::redelivered_skipped`]).
    pub stale: u64,
    /// SAVEs of the stored revision, acked and not applied (first deliveries only).
    pub duplicates: u64,
    /// Redelivered SAVEs that were stale or duplicates: applied before, but their ack was
    /// lost with a connection (expected after a failover or a crash; not an ordering
    /// error).
    pub redelivered_skipped: u64,
    /// Applied SAVEs that skipped revisions (the "Lost or filtered out" warning).
    pub lost_gaps: u64,
    /// SYNCs that took a row back to an older revision (applied).
    pub sync_downgrades: u64,
    /// Failing messages re-published with `retries + 1`.
    pub retries: u64,
    /// Messages dead-lettered because they were malformed (or oversized), of an unknown
    /// `cqrs_id`, or rejected by their model.
    pub malformed: u64,
    /// Messages dead-lettered because they had expired.
    pub expired: u64,
    /// Messages dead-lettered because their retries were exhausted.
    pub exhausted: u64,
    /// Dead letters the broker confirmed (all reasons).
    pub dead_letters: u64,
    /// Replica transactions committed.
    pub commits: u64,
    /// Batches rolled back and re-applied one message per transaction after a failure.
    pub batch_fallbacks: u64,
    /// Messages acked after they were handled (applied or skipped by the revision rules,
    /// and retries whose copy was confirmed); dead letters are counted apart.
    pub acked: u64,
    /// Messages left unacked for redelivery (at shutdown, or after a failed ack).
    pub left_unacked: u64,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    updated: AtomicU64,
    deleted: AtomicU64,
    stale: AtomicU64,
    duplicates: AtomicU64,
    redelivered_skipped: AtomicU64,
    lost_gaps: AtomicU64,
    sync_downgrades: AtomicU64,
    retries: AtomicU64,
    malformed: AtomicU64,
    expired: AtomicU64,
    exhausted: AtomicU64,
    commits: AtomicU64,
    batch_fallbacks: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, amqp: ConsumerStats) -> ReplicaStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (created, updated, deleted) =
            (get(&self.created), get(&self.updated), get(&self.deleted));
        ReplicaStats {
            applied: created + updated + deleted,
            created,
            updated,
            deleted,
            stale: get(&self.stale),
            duplicates: get(&self.duplicates),
            redelivered_skipped: get(&self.redelivered_skipped),
            lost_gaps: get(&self.lost_gaps),
            sync_downgrades: get(&self.sync_downgrades),
            retries: get(&self.retries),
            malformed: get(&self.malformed),
            expired: get(&self.expired),
            exhausted: get(&self.exhausted),
            dead_letters: amqp.dead_lettered,
            commits: get(&self.commits),
            batch_fallbacks: get(&self.batch_fallbacks),
            acked: amqp.handled,
            left_unacked: amqp.left_unacked,
        }
    }
}

/// Why a replica consumer could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The settings are unusable (no models, a model the consumer was asked for is
    /// missing, zero workers...).
    #[error("invalid replica configuration: {0}")]
    Config(String),
    /// The broker refused or lost the connection, or a declaration did not match.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// A running replica consumer: one AMQP connection consuming `<queue>`, N workers each
/// applying batches of messages in one transaction of the replica's store.
///
/// How a message goes:
/// - **not a django-cqrs message** (not JSON, a required key missing or mistyped, an
///   unknown `signal_type` or `cqrs_id`, over the size limit, a SAVE or SYNC without an
///   integer `cqrs_revision`): dead-lettered at once with the reason in
///   `x-eventfold-error` (a body that is not JSON goes there verbatim, straight to
///   `dead_letter_<queue>`), acked, and the consumer goes on;
/// - **expired** (`expires <= now`): dead-lettered to `cqrs.dead_letter_<queue>.<cqrs_id>`
///   without being applied, as django-cqrs does;
/// - otherwise **applied** by django-cqrs's revision rules ([`super::apply_batch`]) in
///   the worker's batch transaction; after
///   the commit the messages are acked (multiple-acks where possible), never before;
/// - a **failing hook** (or a failing [`super::ReplicaModel::write_batch`]) makes the
///   worker roll the batch back and apply its messages one per transaction through the
///   per-message hooks, so only the failing one fails. That one is re-published with
///   `retries + 1` to `cqrs.<queue>.<cqrs_id>` after [`ReplicaOptions::retry_delay`]
///   (the original is acked once the broker confirmed the copy; the worker does not wait
///   meanwhile), or dead-lettered once `retries` reached [`ReplicaOptions::max_retries`].
///   A hook that returns [`super::Rejected`] is dead-lettered at once.
///
/// **Retries and order.** A re-published message goes to the back of the queue, so by
/// the time it comes back a newer revision of the same instance may have been applied:
/// the retried one is then stale by the revision rules and is dropped ("Wrong CQRS sync
/// order"), exactly as with django-cqrs. Per-instance order is therefore kept for
/// everything that applies the first time; a message that failed is applied later only if
/// nothing newer came in between (the newer revision carries the full row anyway).
pub struct ReplicaConsumer {
    consumer: Consumer,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ReplicaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConsumer")
            .field("consumer", &self.consumer)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ReplicaConsumer {
    /// Declares the replica's topology for every model of `models` and starts consuming.
    /// Messages are applied through transactions of `store`, the replica's own database.
    pub async fn start(
        config: AmqpConfig,
        store: Arc<dyn Store>,
        models: ReplicaModels,
        options: ReplicaOptions,
    ) -> Result<ReplicaConsumer, ReplicaError> {
        Self::start_counting(config, store, models, options, Arc::default()).await
    }

    /// Runs a consumer until `shutdown` resolves, then shuts it down gracefully; when the
    /// connection is lost (or the broker cannot be reached), starts again after a pause
    /// (1 s, doubling up to 30 s). What `eventfold cqrs consume` runs. The figures add up
    /// over the restarts; `on_progress` gets them about every `every` (a progress bar).
    /// Returns them at the end, or the first error that is not a lost connection (a
    /// refused login, a queue declared with other arguments...).
    pub async fn run_until(
        config: AmqpConfig,
        store: Arc<dyn Store>,
        models: ReplicaModels,
        options: ReplicaOptions,
        shutdown: impl std::future::Future<Output = ()> + Send,
        every: Duration,
        mut on_progress: impl FnMut(&ReplicaStats) + Send,
    ) -> Result<ReplicaStats, ReplicaError> {
        const FIRST_PAUSE: Duration = Duration::from_secs(1);
        let counters: Arc<Counters> = Arc::default();
        let mut before = ConsumerStats::default();
        let add = |a: ConsumerStats, b: ConsumerStats| ConsumerStats {
            handled: a.handled + b.handled,
            retries: a.retries + b.retries,
            dead_lettered: a.dead_lettered + b.dead_lettered,
            left_unacked: a.left_unacked + b.left_unacked,
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = FIRST_PAUSE;
        let every = every.max(Duration::from_millis(10));
        loop {
            let started = Self::start_counting(
                config.clone(),
                Arc::clone(&store),
                models.clone(),
                options.clone(),
                Arc::clone(&counters),
            )
            .await;
            match started {
                Ok(consumer) => {
                    pause = FIRST_PAUSE;
                    let asked = loop {
                        tokio::select! {
                            _ = &mut shutdown => break true,
                            _ = tokio::time::sleep(every) => {}
                        }
                        on_progress(&counters.snapshot(add(before, consumer.consumer.stats())));
                        if consumer.consumer.has_stopped() {
                            break false;
                        }
                    };
                    let last = consumer.consumer.stats();
                    match consumer.consumer.shutdown().await {
                        Ok(last) if asked => return Ok(counters.snapshot(add(before, last))),
                        Ok(last) => before = add(before, last),
                        Err(e) if e.is_unavailable() => {
                            tracing::warn!(error = %e, "replica consumer lost its connection; starting again");
                            before = add(before, last);
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if asked {
                        return Ok(counters.snapshot(before));
                    }
                }
                Err(ReplicaError::Amqp(e)) if e.is_unavailable() => {
                    tracing::warn!(error = %e, pause_s = pause.as_secs(), "broker unavailable; trying again");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(counters.snapshot(before)),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    async fn start_counting(
        config: AmqpConfig,
        store: Arc<dyn Store>,
        models: ReplicaModels,
        options: ReplicaOptions,
        counters: Arc<Counters>,
    ) -> Result<ReplicaConsumer, ReplicaError> {
        if models.is_empty() {
            return Err(ReplicaError::Config(
                "a replica needs at least one model".into(),
            ));
        }
        if options.queue.is_empty() {
            return Err(ReplicaError::Config("the queue name is empty".into()));
        }
        let topology = replica_topology(&options, &models.cqrs_ids());
        let batch = BatchOptions {
            prefetch: options.prefetch,
            workers: options.workers,
            key: {
                let limit = options.max_body_bytes;
                OrderKey::Custom(Arc::new(move |m| instance_key(m, limit)))
            },
            batch_size: options.batch_size,
            linger: options.linger,
            // Checked by the handler, so an oversized body counts as malformed.
            max_body_bytes: usize::MAX,
            dead_letter_queue: Some(dead_letter_queue(&options.queue)),
            role: options.role.clone(),
        };
        let queue = options.queue.clone();
        let handler = ReplicaHandler {
            store,
            models,
            options,
            counters: Arc::clone(&counters),
        };
        let consumer = Consumer::start_batches(config, topology, &queue, batch, handler).await?;
        Ok(ReplicaConsumer { consumer, counters })
    }

    /// What the consumer has done so far.
    pub fn stats(&self) -> ReplicaStats {
        self.counters.snapshot(self.consumer.stats())
    }

    /// Stops consuming: the batches in hand are finished, committed and acked; messages
    /// not started and retries still waiting their delay are left unacked (the broker
    /// redelivers them). Returns the final figures, or the error that had stopped the
    /// consumer before (a lost connection).
    pub async fn shutdown(self) -> Result<ReplicaStats, ReplicaError> {
        let counters = self.counters;
        let amqp = self.consumer.shutdown().await?;
        Ok(counters.snapshot(amqp))
    }

    /// Waits until the consumer stops by itself (a lost connection: the error; the queue
    /// deleted: `None`). Call [`Self::shutdown`] afterwards.
    pub async fn stopped(&self) -> Option<AmqpError> {
        self.consumer.stopped().await
    }
}

/// The ordering key of a delivery: its instance, `<cqrs_id> <pk>`. A body that does not
/// say, or is over the size limit (not parsed), has none (it is dead-lettered by
/// whichever worker gets it).
fn instance_key(message: &IncomingMessage, max_body_bytes: usize) -> Option<String> {
    if message.body.len() > max_body_bytes {
        return None;
    }
    #[derive(Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        cqrs_id: Option<Cow<'a, str>>,
        instance_pk: Option<serde_json::Value>,
    }
    let key: Key<'_> = serde_json::from_slice(&message.body).ok()?;
    let pk = match key.instance_pk? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    Some(format!("{} {pk}", key.cqrs_id?))
}

struct ReplicaHandler {
    store: Arc<dyn Store>,
    models: ReplicaModels,
    options: ReplicaOptions,
    counters: Arc<Counters>,
}

impl BatchHandler for ReplicaHandler {
    fn handle_batch(
        &self,
        batch: Vec<Arc<IncomingMessage>>,
    ) -> impl std::future::Future<Output = Vec<Disposition>> + Send {
        self.handle(batch)
    }
}

impl ReplicaHandler {
    async fn handle(&self, batch: Vec<Arc<IncomingMessage>>) -> Vec<Disposition> {
        let now = Utc::now();
        let mut out = vec![Disposition::Ack; batch.len()];
        let mut todo: Vec<(usize, CqrsMessage)> = Vec::with_capacity(batch.len());
        let redelivered: Vec<bool> = batch.iter().map(|d| d.redelivered).collect();
        for (i, delivery) in batch.iter().enumerate() {
            match self.admit(delivery, now) {
                Ok(message) => todo.push((i, message)),
                Err(dead) => out[i] = Disposition::DeadLetter(dead),
            }
        }
        if todo.is_empty() {
            return out;
        }
        let messages: Vec<&CqrsMessage> = todo.iter().map(|(_, m)| m).collect();
        match self.apply_in_one_transaction(&messages, true).await {
            Ok(applied) => {
                for ((i, message), applied) in todo.iter().zip(&applied) {
                    self.count(message, redelivered[*i], applied);
                }
            }
            Err(e) => {
                // Also for a lone message: its batch write may fail where its own hook
                // would not (a model's multi-row statement), so the hook has the last word.
                if todo.len() > 1 {
                    Counters::add(&self.counters.batch_fallbacks);
                }
                tracing::debug!(error = %e, messages = todo.len(), "batch rolled back; applying its messages one by one");
                for (i, message) in &todo {
                    match self.apply_in_one_transaction(&[message], false).await {
                        Ok(applied) => self.count(message, redelivered[*i], &applied[0]),
                        Err(e) => out[*i] = self.failed(message, e),
                    }
                }
            }
        }
        out
    }

    /// Reads a delivery; what cannot be applied is the dead letter to send instead.
    fn admit(
        &self,
        delivery: &IncomingMessage,
        now: chrono::DateTime<Utc>,
    ) -> Result<CqrsMessage, DeadLetter> {
        let limit = self.options.max_body_bytes;
        if delivery.body.len() > limit {
            Counters::add(&self.counters.malformed);
            let reason = format!(
                "body of {} bytes exceeds the limit of {limit} bytes",
                delivery.body.len()
            );
            return Err(self.dead_letter(None, reason, 0));
        }
        let message = CqrsMessage::from_body(&delivery.body).map_err(|e| {
            Counters::add(&self.counters.malformed);
            self.dead_letter(None, format!("malformed message: {e}"), 0)
        })?;
        if self.models.get(&message.cqrs_id).is_none() {
            Counters::add(&self.counters.malformed);
            let reason = ApplyError::UnknownCqrsId(message.cqrs_id.clone()).to_string();
            return Err(self.dead_letter(None, reason, 0));
        }
        if message.is_expired(now) {
            Counters::add(&self.counters.expired);
            let expires = message
                .expires
                .as_ref()
                .map(iso_seconds)
                .unwrap_or_default();
            let reason = format!("expired at {expires}");
            return Err(self.dead_letter(Some(&message.cqrs_id), reason, 0));
        }
        Ok(message)
    }

    fn dead_letter(&self, cqrs_id: Option<&str>, reason: String, attempts: u32) -> DeadLetter {
        let mut dead = DeadLetter::new(reason);
        dead.attempts = attempts;
        dead.ttl = self.options.dead_message_ttl;
        dead.route = cqrs_id.map(|id| {
            let dlq = dead_letter_queue(&self.options.queue);
            (self.options.exchange.clone(), queue_routing_key(&dlq, id))
        });
        dead
    }

    /// Applies `messages` in one transaction of the replica store and commits it:
    /// several at once with [`apply_batch`] (`batched`), or one with [`apply_message`]
    /// through the model's per-message hooks (the path that finds a failing message).
    async fn apply_in_one_transaction(
        &self,
        messages: &[&CqrsMessage],
        batched: bool,
    ) -> Result<Vec<Applied>, BatchFailure> {
        let mut tx = self
            .store
            .begin()
            .await
            .map_err(|e| BatchFailure::Store(e.to_string()))?;
        let applied = if batched {
            apply_batch(&self.models, &mut tx, messages).await
        } else {
            let mut applied = Vec::with_capacity(messages.len());
            let mut failed = None;
            for message in messages {
                match apply_message(&self.models, &mut tx, message).await {
                    Ok(a) => applied.push(a),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            failed.map_or(Ok(applied), Err)
        };
        let applied = match applied {
            Ok(applied) => applied,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(BatchFailure::Apply(e));
            }
        };
        tx.commit()
            .await
            .map_err(|e| BatchFailure::Store(e.to_string()))?;
        Counters::add(&self.counters.commits);
        Ok(applied)
    }

    /// Counts and logs what a committed transaction applied, with django-cqrs's texts.
    fn count(&self, message: &CqrsMessage, redelivered: bool, applied: &Applied) {
        let c = &self.counters;
        let (pk, id) = (message.pk_text(), &message.cqrs_id);
        match *applied {
            Applied::Created { .. } => Counters::add(&c.created),
            Applied::Updated { .. } => Counters::add(&c.updated),
            Applied::Deleted => Counters::add(&c.deleted),
            Applied::Stale { .. } | Applied::Duplicate { .. } if redelivered => {
                Counters::add(&c.redelivered_skipped);
                tracing::info!(pk = %pk, cqrs_id = %id, ?applied, "redelivered CQRS message already applied");
            }
            Applied::Stale { stored, received } => {
                Counters::add(&c.stale);
                tracing::error!("Wrong CQRS sync order: pk = {pk}, cqrs_revision = new {received} / existing {stored} ({id}).");
            }
            Applied::Duplicate { revision } => {
                Counters::add(&c.duplicates);
                tracing::error!(
                    "Received duplicate CQRS data: pk = {pk}, cqrs_revision = {revision} ({id})."
                );
            }
        }
        let lost = applied.lost();
        if lost > 0 {
            Counters::add(&c.lost_gaps);
            let revision = message.revision().unwrap_or_default();
            tracing::warn!("Lost or filtered out {lost} CQRS packages: pk = {pk}, cqrs_revision = {revision} ({id})");
        }
        if applied.is_sync_downgrade() {
            Counters::add(&c.sync_downgrades);
            tracing::warn!(pk = %pk, cqrs_id = %id, "CQRS revision downgrade on sync");
        }
    }

    /// What to do with a message that failed alone in its transaction.
    fn failed(&self, message: &CqrsMessage, failure: BatchFailure) -> Disposition {
        let id = &message.cqrs_id;
        let permanent = matches!(&failure, BatchFailure::Apply(e) if e.is_permanent());
        if permanent {
            Counters::add(&self.counters.malformed);
            return Disposition::DeadLetter(self.dead_letter(Some(id), failure.to_string(), 1));
        }
        if message.retries >= self.options.max_retries {
            Counters::add(&self.counters.exhausted);
            let reason = format!("failed after {} retries: {failure}", message.retries);
            return Disposition::DeadLetter(self.dead_letter(
                Some(id),
                reason,
                message.retries + 1,
            ));
        }
        Counters::add(&self.counters.retries);
        tracing::warn!(pk = %message.pk_text(), cqrs_id = %id, retries = message.retries, error = %failure, "CQRS message failed; re-publishing it after the retry delay");
        let mut retry = message.clone();
        retry.retries += 1;
        Disposition::Republish {
            message: retry.to_message(
                &self.options.exchange,
                &queue_routing_key(&self.options.queue, id),
            ),
            delay: self.options.retry_delay,
        }
    }
}

/// Why a transaction of messages did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchFailure {
    #[error("{0}")]
    Apply(ApplyError),
    #[error("replica store: {0}")]
    Store(String),
}
