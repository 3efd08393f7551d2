//! The inbox: an exactly-once **effect** on the consumer side.
//!
//! A broker delivers at least once: the relay re-publishes what it has no confirm for,
//! and a consumer that crashes between its commit and its ack gets the message again.
//! An [`Inbox`] makes a handler's own writes happen once per message id anyway: for each
//! message it opens a transaction on the store ([`Store::begin`]), marks the message id
//! as processed **in that transaction**, runs the handler with it, and commits. The mark
//! and the handler's writes commit together or not at all, so:
//!
//! * a duplicate (the same `message_id` again, redelivered or re-published) finds the
//!   mark, is rolled back before the handler runs, acked, and counted
//!   ([`InboxStats::duplicates`]);
//! * a handler that fails leaves no mark and no write: the error goes back to the
//!   [`eventfold_amqp::Consumer`], whose retries and dead letters apply as usual;
//! * a crash after the commit and before the ack is a redelivery that is a duplicate.
//!
//! A message without a `message_id` cannot be deduplicated: it is dead-lettered at once
//! ([`HandlerError::permanent`], reason [`NO_MESSAGE_ID`]). The relay gives every
//! message one (`<relay>:<notification id>`).
//!
//! # The mark
//!
//! The mark is a follower position of the store (the `tracking` table on SQLite and
//! PostgreSQL): the follower named `eventfold.inbox/<consumer>/<message_id>`
//! ([`Inbox::follower_name`]) moved to position 1 with [`Transaction::track`]. A second
//! move is a [`Conflict::Tracking`], which the inbox reads as "already applied". This
//! needs nothing but the core API, works on every store (the memory store included), and
//! on PostgreSQL a concurrent duplicate (another consumer process) waits on the row of
//! the first, then sees it: never two effects.
//!
//! The handler's effect must go through the transaction: rows through
//! [`Transaction::execute`] or the backend's connection, events through
//! [`Transaction::record`], in-memory state through [`Transaction::on_commit`]. An effect
//! outside it (an HTTP call, a write to another database) is at least once, as without
//! the inbox. Keep handlers short: on SQLite and in memory the transaction holds the
//! store's single writer turn while the handler runs, and the handler must not save
//! through the store itself (outside `tx`), which would wait for that turn.
//!
//! ## Marks among followers
//!
//! The marks are followers: [`TrackingReader::followers`] lists one per message ever
//! applied. Tools that show followers should leave out the names starting with
//! [`INBOX_PREFIX`] ([`is_inbox_follower`]); the marks of one consumer are the names
//! starting with [`Inbox::prefix`].
//!
//! ## Pruning
//!
//! Marks are never deleted by eventfold (a mark holds no time; the core API has no
//! delete of a follower). A mark is only needed while its message can still arrive
//! again: once a consumer's queue has been drained and no publisher re-publishes old
//! messages, its marks can go. Delete them with SQL, by name range (no `LIKE`, so a `_`
//! or `%` in a consumer name is no wildcard; `0` is the character after `/`):
//!
//! ```sql
//! -- SQLite
//! DELETE FROM tracking
//!  WHERE follower >= 'eventfold.inbox/projector/' AND follower < 'eventfold.inbox/projector0';
//! -- PostgreSQL (default schema and table prefix)
//! DELETE FROM public.eventfold_tracking
//!  WHERE follower >= 'eventfold.inbox/projector/' AND follower < 'eventfold.inbox/projector0';
//! ```
//!
//! Messages of the relay have ids `<relay>:<notification id>`, so the marks of one relay
//! older than some notification id can be told apart too, by parsing the name.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use eventfold_amqp::{AmqpConfig, Consumer, ConsumerOptions, HandlerError, Subscription};
//! use eventfold_core::{SqlValue, Store};
//! use eventfold_relay::inbox::Inbox;
//!
//! # async fn run(store: Arc<dyn Store>) -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = Inbox::new(store, "projector")?;
//! let handler = inbox.handler(|tx, message| {
//!     Box::pin(async move {
//!         let order: serde_json::Value = message.json().map_err(HandlerError::permanent)?;
//!         // Commits with the inbox's mark, or not at all.
//!         tx.execute(
//!             "INSERT INTO orders_seen (id, body) VALUES ($1, $2)",
//!             &[SqlValue::from(order["id"].as_i64()), SqlValue::from(order.to_string())],
//!         )
//!         .await
//!         .map_err(HandlerError::new)?;
//!         Ok(())
//!     })
//! });
//! let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! let subscription = Subscription::new("orders.events", "order__created", "projector.orders");
//! let consumer = Consumer::start(config, subscription, ConsumerOptions::default(), handler).await?;
//! // ...
//! consumer.shutdown().await?;
//! println!("{:?}", inbox.stats());
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventfold_amqp::{Handler, HandlerError, IncomingMessage};
use eventfold_core::{Conflict, Error, Store, Tracking, TrackingReader, Transaction};

use crate::RelayError;

/// The start of every inbox mark's follower name.
pub const INBOX_PREFIX: &str = "eventfold.inbox/";

/// The reason a message without `message_id` is dead-lettered with.
pub const NO_MESSAGE_ID: &str = "no message id: cannot deduplicate";

/// The position a mark is moved to.
const MARK_POSITION: u64 = 1;

/// Whether `follower` (a name [`TrackingReader::followers`] lists) is an inbox mark rather
/// than a follower of the notification log.
pub fn is_inbox_follower(follower: &str) -> bool {
    follower.starts_with(INBOX_PREFIX)
}

/// The future an inbox handler returns: it may borrow the transaction.
pub type InboxFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// What an inbox has done so far (since it was created; every clone and handler of one
/// inbox adds to the same figures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Messages whose handler ran and whose transaction committed.
    pub applied: u64,
    /// Messages found already applied: rolled back without running the handler.
    pub duplicates: u64,
    /// Runs that failed (the handler, the store, or a message without id): rolled back,
    /// the error returned to the consumer, which retries or dead-letters (a message
    /// retried twice counts up to three times here).
    pub failed: u64,
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The handler ran and its writes committed with the mark.
    Applied,
    /// The message id was marked already: nothing ran, nothing was written.
    Duplicate,
}

#[derive(Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
}

/// Deduplicates a consumer's messages by `message_id` in the store's transactions.
/// Cheap to clone: clones share the store and the figures. See the [module docs](self).
#[derive(Clone)]
pub struct Inbox {
    store: Arc<dyn Store>,
    consumer: String,
    prefix: String,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("backend", &self.store.backend())
            .field("consumer", &self.consumer)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inbox {
    /// The inbox of `consumer` on `store`. The consumer's name scopes its marks: two
    /// consumers that both must apply a message need two names. It must not be empty nor
    /// contain `/` (which separates it from the message id in the mark's name).
    pub fn new(store: Arc<dyn Store>, consumer: impl Into<String>) -> Result<Self, RelayError> {
        let consumer = consumer.into();
        if consumer.is_empty() || consumer.contains('/') {
            return Err(RelayError::Config(format!(
                "inbox consumer name {consumer:?}: must be non-empty and without '/'"
            )));
        }
        Ok(Inbox {
            store,
            prefix: format!("{INBOX_PREFIX}{consumer}/"),
            consumer,
            counters: Arc::default(),
        })
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The start of the follower names of this consumer's marks:
    /// `eventfold.inbox/<consumer>/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The follower name of the mark of `message_id`:
    /// `eventfold.inbox/<consumer>/<message_id>`.
    pub fn follower_name(&self, message_id: &str) -> String {
        format!("{}{message_id}", self.prefix)
    }

    /// Whether `message_id` has been applied (its mark is committed).
    pub async fn is_applied(&self, message_id: &str) -> Result<bool, Error> {
        Ok(self
            .store
            .tracking_position(&self.follower_name(message_id))
            .await?
            .is_some())
    }

    /// What the inbox has done so far.
    pub fn stats(&self) -> InboxStats {
        let c = &self.counters;
        InboxStats {
            applied: c.applied.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// A consumer [`Handler`] that runs `f` once per message id, in a transaction that
    /// also marks the id (see [`Inbox::apply`]).
    ///
    /// `f` gets the open transaction and the message and returns a boxed future that may
    /// borrow the transaction: `|tx, message| Box::pin(async move { ... })`. It must not
    /// commit or roll back (it cannot: it borrows the transaction); returning `Err` rolls
    /// everything back.
    pub fn handler<F>(&self, f: F) -> InboxHandler<F>
    where
        F: for<'a> Fn(&'a mut Transaction, Arc<IncomingMessage>) -> InboxFuture<'a>
            + Send
            + Sync
            + 'static,
    {
        InboxHandler {
            inbox: self.clone(),
            f,
        }
    }

    /// Handles one message: opens a transaction, marks the message id in it (if it is
    /// marked already: rolls back, [`Processed::Duplicate`]), runs `f` with it, commits.
    ///
    /// Fails, having rolled back, with `f`'s error, or with a retried [`HandlerError`]
    /// when the store fails, or with a permanent one ([`NO_MESSAGE_ID`]) when the message
    /// has no `message_id`.
    pub async fn apply<F>(
        &self,
        message: Arc<IncomingMessage>,
        f: &F,
    ) -> Result<Processed, HandlerError>
    where
        F: for<'a> Fn(&'a mut Transaction, Arc<IncomingMessage>) -> InboxFuture<'a>,
    {
        let outcome = self.apply_inner(message, f).await;
        let counter = match &outcome {
            Ok(Processed::Applied) => &self.counters.applied,
            Ok(Processed::Duplicate) => &self.counters.duplicates,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    async fn apply_inner<F>(
        &self,
        message: Arc<IncomingMessage>,
        f: &F,
    ) -> Result<Processed, HandlerError>
    where
        F: for<'a> Fn(&'a mut Transaction, Arc<IncomingMessage>) -> InboxFuture<'a>,
    {
        let Some(message_id) = message.message_id.as_deref().filter(|id| !id.is_empty()) else {
            return Err(HandlerError::permanent(NO_MESSAGE_ID));
        };
        let mark = self.follower_name(message_id);
        let store_error = |what: &str, e: Error| {
            HandlerError::new(format!("inbox {}: {what}: {e}", self.consumer))
        };
        let mut tx = self
            .store
            .begin()
            .await
            .map_err(|e| store_error("begin", e))?;
        // The mark first: a duplicate costs no handler run, and on PostgreSQL a concurrent
        // duplicate waits here for the first to commit or roll back.
        match tx.track(Tracking::new(mark.as_str(), MARK_POSITION)).await {
            Ok(()) => {}
            Err(e) if self.is_own_mark_conflict(&e, &mark) => {
                let _ = tx.rollback().await;
                tracing::debug!(consumer = %self.consumer, %message_id, "duplicate message dropped");
                return Ok(Processed::Duplicate);
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(store_error("marking the message", e));
            }
        }
        if let Err(e) = f(&mut tx, Arc::clone(&message)).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        match tx.commit().await {
            Ok(()) => Ok(Processed::Applied),
            // A backend that finds the race only at the commit: the other one applied it.
            Err(e) if self.is_own_mark_conflict(&e, &mark) => Ok(Processed::Duplicate),
            // Whether it committed is unknown: the retry finds the mark, or applies it.
            Err(e) => Err(store_error("commit", e)),
        }
    }

    fn is_own_mark_conflict(&self, error: &Error, mark: &str) -> bool {
        matches!(error, Error::Conflict(Conflict::Tracking { follower, .. }) if follower == mark)
    }
}

/// The consumer [`Handler`] of [`Inbox::handler`].
pub struct InboxHandler<F> {
    inbox: Inbox,
    f: F,
}

impl<F> std::fmt::Debug for InboxHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxHandler")
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl<F> InboxHandler<F> {
    /// The inbox it applies messages through.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }
}

impl<F> Handler for InboxHandler<F>
where
    F: for<'a> Fn(&'a mut Transaction, Arc<IncomingMessage>) -> InboxFuture<'a>
        + Send
        + Sync
        + 'static,
{
    async fn handle(&self, message: Arc<IncomingMessage>) -> Result<(), HandlerError> {
        self.inbox.apply(message, &self.f).await.map(drop)
    }
}
