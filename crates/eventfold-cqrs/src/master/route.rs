//! The relay route of master messages.

use eventfold_amqp::ExchangeKind;
use eventfold_core::Notification;
use eventfold_relay::{EncodeError, Route, Routed, Topology, Unroutable};

use super::CqrsRecord;
use crate::wire;

/// The recorded messages of [`super::Master`]s as django-cqrs publishes them: to the
/// record's exchange (topic, durable), with its routing key, the body verbatim,
/// `text/plain`, `delivery_mode` 2, no headers. (The relay also sets `message_id`;
/// django-cqrs's consumer reads only the body.)
///
/// An unroutable message is **held** by default ([`Unroutable::Hold`]): the relay retries
/// it, and everything after it, until a queue is bound, because a replica must see every
/// message of an instance, in order. The hold shows as the relay's `last_error` in
/// `eventfold relay status`.
///
/// With [`CqrsRoute::replica_queue`], the relay declares the replica's queues itself, as
/// django-cqrs's consumer would, before its first publish to the exchange: messages
/// written before the replica ever started wait in its queue (a cold start loses nothing).
///
/// A hold stops the whole log, so a model that no replica consumes (yet) must not be held:
/// give its `CQRS_ID`s a route of their own that parks, added before this one (routes are
/// asked in order), e.g. `CqrsRoute::new().cqrs_ids(["audit"]).unroutable(Unroutable::Park)`.
/// Do not just leave them out with [`CqrsRoute::cqrs_ids`]: a record no route claims is
/// skipped for good.
#[derive(Debug, Clone)]
pub struct CqrsRoute {
    exchange: String,
    cqrs_ids: Vec<String>,
    queues: Vec<(String, Vec<String>)>,
    unroutable: Unroutable,
}

impl Default for CqrsRoute {
    fn default() -> Self {
        CqrsRoute {
            exchange: wire::DEFAULT_EXCHANGE.to_owned(),
            cqrs_ids: Vec::new(),
            queues: Vec::new(),
            unroutable: Unroutable::Hold,
        }
    }
}

impl CqrsRoute {
    /// Every recorded message, of any `cqrs_id`; replica queues bound on exchange `cqrs`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The exchange the replica queues are bound to (default `cqrs`; the master's own,
    /// [`super::Master::exchange`], when made by [`super::Master::route`]). Messages go to
    /// the exchange recorded with them.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Only the messages of these `CQRS_ID`s (the others are left to other routes).
    pub fn cqrs_ids(mut self, ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.cqrs_ids = ids.into_iter().map(Into::into).collect();
        self
    }

    /// A replica queue this master serves, for these `CQRS_ID`s: the relay declares it
    /// (unless it exists) with django-cqrs's topology before publishing: queue `<queue>`
    /// bound with `<cqrs_id>` and `cqrs.<queue>.<cqrs_id>`, queue `dead_letter_<queue>`
    /// bound with `cqrs.dead_letter_<queue>.<cqrs_id>`, durable, without arguments.
    pub fn replica_queue(
        mut self,
        queue: impl Into<String>,
        cqrs_ids: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.queues
            .push((queue.into(), cqrs_ids.into_iter().map(Into::into).collect()));
        self
    }

    /// What to do with unroutable messages (default [`Unroutable::Hold`]).
    pub fn unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }
}

impl Route for CqrsRoute {
    fn name(&self) -> &str {
        "django-cqrs"
    }

    fn encode(&self, n: &Notification) -> Option<Result<Routed, EncodeError>> {
        let record = CqrsRecord::of(n)?;
        if !self.cqrs_ids.is_empty() && !self.cqrs_ids.iter().any(|id| id == record.cqrs_id) {
            return None;
        }
        let message =
            wire::outgoing_message(record.exchange, record.routing_key, record.body.to_vec());
        Some(Ok(Routed::new(message)
            .exchange_kind(ExchangeKind::Topic)
            .unroutable(self.unroutable)))
    }

    fn topology(&self) -> Topology {
        let mut topology = Topology::new();
        for (queue, cqrs_ids) in &self.queues {
            for id in cqrs_ids {
                for (name, routing_key) in wire::replica_bindings(queue, id) {
                    topology = topology.bind(&name, &self.exchange, routing_key);
                }
            }
        }
        topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_core::{Metadata, StoredEvent, Timestamp};

    fn record(cqrs_id: &str, routing_key: &str) -> Notification {
        let metadata = Metadata::new().with(
            super::super::CQRS_KEY,
            serde_json::json!({
                "exchange": "cqrs", "routing_key": routing_key, "cqrs_id": cqrs_id,
                "signal_type": "SAVE", "pk": "2",
            }),
        );
        Notification::new(
            9,
            StoredEvent::new(
                "cqrs.item:2",
                1,
                "cqrs.item.SAVE",
                Timestamp::now(),
                b"{\"a\":1}".to_vec(),
            )
            .with_metadata(metadata),
        )
    }

    #[test]
    fn records_become_django_cqrs_messages_and_hold_when_unroutable() {
        let routed = CqrsRoute::new()
            .encode(&record("item", "cqrs.replica.item"))
            .unwrap()
            .unwrap();
        let m = &routed.message;
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("cqrs", "cqrs.replica.item")
        );
        assert_eq!(m.body, b"{\"a\":1}");
        assert_eq!(m.content_type.as_deref(), Some("text/plain"));
        assert_eq!(m.delivery_mode, 2);
        assert!(m.headers.is_empty());
        assert_eq!(routed.unroutable, Unroutable::Hold);
        assert!(CqrsRoute::new()
            .cqrs_ids(["order"])
            .encode(&record("item", "item"))
            .is_none());
        let plain = Notification::new(
            1,
            StoredEvent::new("s", 1, "t", Timestamp::now(), b"{}".to_vec()),
        );
        assert!(CqrsRoute::new().encode(&plain).is_none());
    }

    #[test]
    fn replica_queues_get_django_cqrs_topology() {
        let topology = CqrsRoute::new()
            .replica_queue("replica", ["item"])
            .topology();
        let bindings: Vec<_> = topology
            .bindings
            .iter()
            .map(|b| {
                (
                    b.queue.as_str(),
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                )
            })
            .collect();
        // As tests/fixtures/django_cqrs_topology.txt lists them.
        assert_eq!(
            bindings,
            [
                ("replica", "cqrs", "item"),
                ("replica", "cqrs", "cqrs.replica.item"),
                (
                    "dead_letter_replica",
                    "cqrs",
                    "cqrs.dead_letter_replica.item"
                ),
            ]
        );
    }
}
