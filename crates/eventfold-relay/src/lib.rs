//! The outbox relay of eventfold: a follower of the notification log whose "commit" is
//! the broker's publisher confirm.
//!
//! The application only writes to its store (events, change records of
//! `eventfold-changes`); a broker outage never slows a save. The [`Relay`] reads a batch
//! after its tracked position, turns each notification into a message through its
//! [`Route`]s, publishes the batch with many messages in flight on one connection
//! ([`eventfold_amqp::ConfirmedPublisher::publish_all`]), and then moves its position
//! **only over the prefix of the batch that the broker confirmed** (or that was parked or
//! skipped). Whatever follows the first message without a confirm is published again
//! later: a consumer may see a duplicate, never a gap.
//!
//! * **Message ids**: every message carries `message_id = "<relay name>:<notification id>"`,
//!   so a re-publication (after a crash, a lost connection, a nack) has the id of the first
//!   publication and consumers drop duplicates by it.
//! * **Routes**: [`NamekoChanges`] (change records as nameko events, body verbatim),
//!   [`NamekoDomainEvents`] (domain events of an event-sourced application as nameko events
//!   of a service), or any [`Route`]. A notification no route claims is skipped. The relay
//!   never publishes its own records (topics starting with `eventfold.relay.`).
//! * **Exchanges** are declared (durable) before the first publish to them, so nothing is
//!   lost because no consumer declared the exchange yet. Right after an exchange, the
//!   queues a route binds to it ([`Route::topology`]) are declared (unless they exist) and
//!   bound, so a consumer that starts later finds every message waiting.
//! * **Unroutable** messages (no queue bound) are **parked** ([`Unroutable::Park`], the
//!   default): appended to the log, in the same transaction as the position move, as a
//!   [`PARKED_TOPIC`] record of stream `eventfold.relay.parked:<relay>` holding the
//!   notification id, exchange, routing key, reason, properties, headers and body
//!   ([`ParkedMessage`]). [`republish_parked`] publishes them again later, best effort.
//!   A route may choose [`Unroutable::Hold`] instead: the position stays, the message is
//!   retried with backoff.
//! * **Nacks** are retried with backoff (100 ms doubling to 5 s), the position held at
//!   the nacked message.
//! * **Broker down**: retried with backoff (100 ms doubling to 5 s), reconnecting; logged
//!   at warn once per outage and at info when it is over, and recorded once per outage as
//!   an [`ERROR_TOPIC`] record (then a [`RECOVERED_TOPIC`] one) in stream
//!   `eventfold.relay.status:<relay>`, so [`Relay::status`] shows it from any process.
//! * **One publisher per log**: a relay publishes only while it holds the exclusive queue
//!   `eventfold.relay.lock.<name>` on a connection of its own; the others are standbys
//!   that try every second, and take over when the leader's connection dies (the broker
//!   deletes an exclusive queue with its connection).
//! * **Shutdown**: when the shutdown future resolves, the batch in flight is finished
//!   (confirms awaited, position moved), then the connections are closed.
//! * The AMQP password never appears in a log line or an error.
//!
//! On the consumer side, [`inbox::Inbox`] makes a handler's writes happen once per message
//! id: the handler's transaction also marks the id, so a duplicate finds the mark and is
//! dropped.
//!
//! See `ARCHITECTURE-relay.md` for the reasoning.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use eventfold_core::Store;
//! use eventfold_relay::{NamekoChanges, NamekoDomainEvents, Relay};
//!
//! # async fn run(store: Arc<dyn Store>) -> Result<(), eventfold_relay::RelayError> {
//! let relay = Relay::builder(store.clone(), "amqp://guest:guest@127.0.0.1:5672/%2f", "orders")?
//!     .route(NamekoChanges::new())
//!     .route(NamekoDomainEvents::new("worlds").aggregate("World"))
//!     .build();
//!
//! // Runs until `stop` fires, then finishes the batch in flight.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! # drop(stop);
//! relay
//!     .run(async {
//!         let _ = stopped.await;
//!     })
//!     .await?;
//!
//! let status = Relay::status(&*store, "orders").await?;
//! println!("at {} of {}, {} parked", status.position, status.head, status.parked);
//! # Ok(()) }
//! ```

pub mod inbox;
mod lock;
mod records;
mod relay;
mod route;

pub use inbox::{Inbox, InboxStats};
pub use records::{
    parked_messages, parked_stream, republish_parked, status_stream, LastError, ParkedMessage,
    RelayStatus, RepublishReport, ERROR_TOPIC, PARKED_TOPIC, RECOVERED_TOPIC, RELAY_TOPIC_PREFIX,
    REPUBLISHED_TOPIC,
};
pub use relay::{Relay, RelayBuilder, RelayMetrics};
pub use route::{
    decode_plain_json, EncodeError, NamekoChanges, NamekoDomainEvents, QueueBinding, Route, Routed,
    Topology, Unroutable,
};

/// What can stop the relay or its tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The store failed (and the failure is not one to wait out).
    #[error(transparent)]
    Store(#[from] eventfold_core::Error),
    /// The broker failed (already scrubbed of the password).
    #[error(transparent)]
    Amqp(#[from] eventfold_amqp::AmqpError),
    /// The relay is misconfigured.
    #[error("invalid relay configuration: {0}")]
    Config(String),
    /// A record the relay wrote cannot be read back.
    #[error("unreadable relay record: {0}")]
    Record(String),
}

/// Replaces `password` in `text` (for texts that come from lapin directly).
pub(crate) fn scrub(text: &str, password: &str) -> String {
    if password.is_empty() {
        text.to_owned()
    } else {
        text.replace(password, "***")
    }
}
