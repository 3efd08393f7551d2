//! eventfold's RabbitMQ transport: what a relay needs to publish events without losing them,
//! and what a projector needs to consume them in order.
//!
//! * [`ConfirmedPublisher`]: one connection, one channel in confirm mode. Every publish is
//!   `mandatory` and has an [`Outcome`] from the broker ([`Outcome::Confirmed`],
//!   [`Outcome::Returned`] when no queue is bound, [`Outcome::Nacked`]); a publish to a
//!   missing exchange is [`AmqpError::NotFound`], a lost connection
//!   [`AmqpError::Unavailable`] (then [`ConfirmedPublisher::reconnect`]). Up to a window of
//!   publishes (256) are in flight: not one round trip per message.
//! * [`nameko`]: the wire format of nameko's `event_dispatcher` (exchange
//!   `<service>.events`, routing key = event type, the body as Python's `json.dumps` writes
//!   it, `nameko.*` headers) and the queue names of its `@event_handler`s.
//! * [`Consumer`]: a durable queue, manual acks, a prefetch, and N workers. A message's key
//!   ([`OrderKey`]) picks its worker, so one key's messages are handled in order while other
//!   keys run in parallel. A failing handler is retried in process, then the message is
//!   dead-lettered to `<queue>.dead` with its reason; a body that is not JSON or too large
//!   is dead-lettered at once. Nothing is acked before it was handled or dead-lettered.
//! * [`AmqpConfig`]: the broker URL, a connection name, the heartbeat. Its `Debug` and
//!   `Display`, and every [`AmqpError`], show the URL with the password as `***`.
//!
//! Design decisions (see `ARCHITECTURE-amqp.md` for the evidence):
//! * lapin, because its publish returns a confirmation future that carries returns, and it
//!   is maintained. But lapin attaches a returned message to whichever confirmation of a
//!   multiple-ack it resolves first (a `HashMap` walk), which is often not the message that
//!   came back: [`ConfirmedPublisher::publish_all`] re-matches each return to its message
//!   (exchange, routing key, `message_id`, body), so give messages distinct `message_id`s.
//! * No automatic recovery: a lost connection is an error the caller sees, so the relay
//!   decides what to re-publish (everything not confirmed) instead of guessing what lapin
//!   replayed.
//! * The crate does not depend on eventfold-core: it moves bytes and headers. Mapping
//!   notifications to messages is the relay's job.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use eventfold_amqp::nameko::{HandlerType, NamekoEvent};
//! use eventfold_amqp::{
//!     AmqpConfig, ConfirmedPublisher, Consumer, ConsumerOptions, ExchangeKind, HandlerError,
//!     IncomingMessage, OrderKey, Outcome, PublisherOptions, Subscription,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?
//!     .with_connection_name("orders-relay");
//!
//! // Consume as nameko's `@event_handler("orders", "order__created")` on
//! // `projector.on_created` would, one order at a time per order id.
//! let subscription =
//!     Subscription::nameko("orders", "order__created", "projector", "on_created", &HandlerType::ServicePool);
//! let options = ConsumerOptions { key: OrderKey::JsonField("/id".into()), ..Default::default() };
//! let consumer = Consumer::start(config.clone(), subscription, options, |m: Arc<IncomingMessage>| async move {
//!     let order: serde_json::Value = m.json().map_err(HandlerError::permanent)?;
//!     println!("order {} (redelivered: {})", order["id"], m.redelivered);
//!     Ok(())
//! })
//! .await?;
//!
//! // Publish as nameko's event_dispatcher does, with confirms.
//! let publisher = ConfirmedPublisher::connect(config, PublisherOptions::default()).await?;
//! publisher.declare_exchange("orders.events", ExchangeKind::Topic).await?;
//! let events: Vec<_> = (1..=3)
//!     .map(|id| {
//!         let mut m = NamekoEvent::new("orders", "order__created", serde_json::json!({ "id": id }))
//!             .to_message()?;
//!         m.message_id = Some(format!("order-{id}"));
//!         Ok(m)
//!     })
//!     .collect::<Result<_, eventfold_amqp::AmqpError>>()?;
//! for outcome in publisher.publish_all(&events).await {
//!     assert_eq!(outcome?, Outcome::Confirmed);
//! }
//! publisher.close().await?;
//! let stats = consumer.shutdown().await?;
//! println!("handled {}", stats.handled);
//! # Ok(()) }
//! ```

mod config;
mod consumer;
mod error;
mod message;
pub mod nameko;
mod publisher;

pub use config::{connections_opened, AmqpConfig};
pub use consumer::{
    BatchHandler, BatchOptions, DeadLetter, Disposition, QueueDeclaration, Topology,
};
pub use consumer::{
    Consumer, ConsumerOptions, ConsumerStats, Handler, HandlerError, KeyFn, OrderKey, RetryPolicy,
    Subscription, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
};
pub use error::{AmqpError, Result};
pub use lapin::ExchangeKind;
pub use message::{HeaderValue, Headers, IncomingMessage, OutgoingMessage};
pub use publisher::{ConfirmedPublisher, Outcome, PublisherOptions};
