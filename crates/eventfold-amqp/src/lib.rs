//! eventfold's RabbitMQ transport.
#![allow(missing_docs)]
mod config;
mod error;
mod message;
pub mod nameko;
mod publisher;

pub use config::{connections_opened, AmqpConfig};
pub use error::{AmqpError, Result};
pub use lapin::ExchangeKind;
pub use message::{HeaderValue, Headers, IncomingMessage, OutgoingMessage};
pub use publisher::{ConfirmedPublisher, Outcome, PublisherOptions};
