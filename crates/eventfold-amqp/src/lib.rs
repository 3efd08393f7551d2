//! eventfold's RabbitMQ transport.
#![allow(missing_docs)]
mod config;
mod consumer;
mod error;
mod message;
pub mod nameko;
mod publisher;

pub use config::{connections_opened, AmqpConfig};
pub use consumer::{
    Consumer, ConsumerOptions, ConsumerStats, Handler, HandlerError, OrderKey, RetryPolicy,
    Subscription, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_QUEUE,
    HEADER_ORIGINAL_ROUTING_KEY,
};
pub use error::{AmqpError, Result};
pub use lapin::ExchangeKind;
pub use message::{HeaderValue, Headers, IncomingMessage, OutgoingMessage};
pub use publisher::{ConfirmedPublisher, Outcome, PublisherOptions};
