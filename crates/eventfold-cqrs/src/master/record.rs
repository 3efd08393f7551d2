//! Master messages in the log: where they are recorded and how the relay reads them back.

use eventfold_core::Notification;
use serde_json::Value;

/// The metadata key under which a recorded message keeps its routing facts
/// ([`CqrsRecord`]).
pub const CQRS_KEY: &str = "eventfold.cqrs";

/// The log stream of an instance's messages: `cqrs.<cqrs_id>:<pk>`, so they keep their
/// order from the log to the replica.
pub fn record_stream(cqrs_id: &str, pk: &str) -> String {
    format!("cqrs.{cqrs_id}:{pk}")
}

/// A recorded django-cqrs message in the log, as the relay reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CqrsRecord<'a> {
    /// The exchange to publish to.
    pub exchange: &'a str,
    /// The routing key (`<cqrs_id>` or `cqrs.<queue>.<cqrs_id>`).
    pub routing_key: &'a str,
    /// The model's `CQRS_ID`.
    pub cqrs_id: &'a str,
    /// `SAVE`, `DELETE` or `SYNC`.
    pub signal_type: &'a str,
    /// The primary key, as text.
    pub pk: &'a str,
    /// The body to publish, byte for byte.
    pub body: &'a [u8],
}

impl<'a> CqrsRecord<'a> {
    /// The message in `notification`, or `None` if it is not one.
    pub fn of(notification: &'a Notification) -> Option<Self> {
        let facts = notification.event.metadata.get(CQRS_KEY)?;
        let field = |name: &str| facts.get(name).and_then(Value::as_str);
        Some(CqrsRecord {
            exchange: field("exchange")?,
            routing_key: field("routing_key")?,
            cqrs_id: field("cqrs_id")?,
            signal_type: field("signal_type")?,
            pk: field("pk")?,
            body: &notification.event.state,
        })
    }
}
