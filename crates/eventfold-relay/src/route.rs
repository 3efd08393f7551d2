//! Routes: how a notification becomes a message (or is not this route's).

use eventfold_amqp::nameko::{exchange_name, python_json};
use eventfold_amqp::{ExchangeKind, HeaderValue, OutgoingMessage};
use eventfold_core::Notification;

/// What the relay does with a message the broker returned as unroutable (no queue bound
/// for its routing key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unroutable {
    /// Append it to the log as a parked record (stream `eventfold.relay.parked:<relay>`,
    /// topic [`crate::PARKED_TOPIC`]) and move on. Nothing is lost; re-publish it later
    /// with [`crate::republish_parked`]. The default, right for nameko events that nobody
    /// subscribes to yet.
    #[default]
    Park,
    /// Keep the position at the message and retry with backoff until a queue is bound
    /// (the relay's status shows the hold as its `last_error`). For consumers that must
    /// see every message in order (replicas).
    Hold,
}

/// A message a route made of a notification.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Routed {
    /// The message. Its `message_id` is replaced by the relay's (`"<relay>:<notification id>"`).
    pub message: OutgoingMessage,
    /// The kind of its exchange, declared (durable) by the relay before the first publish.
    pub exchange_kind: ExchangeKind,
    /// What to do when the broker returns it.
    pub unroutable: Unroutable,
}

impl Routed {
    /// `message` to a topic exchange, parked when unroutable.
    pub fn new(message: OutgoingMessage) -> Self {
        Routed {
            message,
            exchange_kind: ExchangeKind::Topic,
            unroutable: Unroutable::Park,
        }
    }

    /// Sets the exchange kind.
    pub fn exchange_kind(mut self, kind: ExchangeKind) -> Self {
        self.exchange_kind = kind;
        self
    }

    /// Sets what happens when it is unroutable.
    pub fn unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }
}

/// A notification a route claimed but cannot encode (a body that does not decode).
/// Encoding is deterministic, so the relay does not retry it: it parks the notification
/// with this reason and moves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// A queue a route needs bound before its messages are published, so that messages
/// written before any consumer started wait in it instead of being unroutable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueBinding {
    /// The queue: kept as it is when it exists (whatever its arguments), else declared
    /// durable, not exclusive, not auto-delete, without arguments.
    pub queue: String,
    /// The exchange it is bound to.
    pub exchange: String,
    /// The binding's routing key.
    pub routing_key: String,
}

/// The queues and bindings a route needs ([`Route::topology`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// The bindings, in the order they are made.
    pub bindings: Vec<QueueBinding>,
}

impl Topology {
    /// No queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a binding of `queue` to `exchange` with `routing_key`.
    pub fn bind(
        mut self,
        queue: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.bindings.push(QueueBinding {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        });
        self
    }
}

/// A codec for one kind of notification.
///
/// The relay asks its routes in order; the first that returns `Some` owns the notification.
/// A notification that no route claims is skipped (it counts as done: the position moves
/// over it).
pub trait Route: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// The message for `notification`, `None` when it is not this route's, or an
    /// [`EncodeError`] when it is this route's but cannot be encoded (it is parked).
    fn encode(&self, notification: &Notification) -> Option<Result<Routed, EncodeError>>;

    /// The queues to bind before the first publish to their exchange (on every
    /// connection, right after the exchange is declared). None by default.
    fn topology(&self) -> Topology {
        Topology::new()
    }
}

/// The properties nameko's `event_dispatcher` sets, on `body` verbatim.
fn nameko_message(service: &str, event_type: &str, body: Vec<u8>) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(exchange_name(service), event_type, body);
    m.content_type = Some("application/json".to_owned());
    m.content_encoding = Some("utf-8".to_owned());
    m.delivery_mode = 2;
    m.priority = Some(0);
    m
}

/// A JSON metadata value as an AMQP header value (objects, and `null`, as their JSON text).
pub(crate) fn header_value(v: &serde_json::Value) -> HeaderValue {
    match v {
        serde_json::Value::String(s) => HeaderValue::Str(s.clone()),
        serde_json::Value::Bool(b) => HeaderValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => HeaderValue::Int(i),
            None => HeaderValue::Float(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::Array(items) => {
            HeaderValue::List(items.iter().map(header_value).collect())
        }
        other => HeaderValue::Str(other.to_string()),
    }
}

/// The nameko headers of a notification: its `nameko.*` metadata keys as they are, and
/// its correlation id as `nameko.correlation_id` when that key is not set already.
fn nameko_headers(n: &Notification, m: &mut OutgoingMessage) {
    for (k, v) in n.event.metadata.iter() {
        if k.starts_with("nameko.") {
            m.headers.insert(k.clone(), header_value(v));
        }
    }
    if let Some(id) = n.event.metadata.correlation_id() {
        m.headers
            .entry("nameko.correlation_id".to_owned())
            .or_insert_with(|| HeaderValue::Str(id.to_owned()));
    }
}

/// The change records of `eventfold-changes` as nameko events (what django-events-sourcing
/// publishes): exchange `<service>.events` (topic, durable), routing key = the event type
/// (`order__created`), body = the record's bytes verbatim (already written as Python's
/// `json.dumps` writes them), `application/json`, `utf-8`, `delivery_mode` 2,
/// `priority` 0. The record's `nameko.*` metadata keys become headers as they are, and its
/// correlation id ([`eventfold_core::Metadata::correlation_id`]) becomes the
/// `nameko.correlation_id` header unless that key is set. Unroutable events are parked by
/// default.
///
/// A change record is recognised by its metadata (`eventfold_changes::CHANGE_KEY`:
/// `service`, `event_type` strings), read here without depending on that crate.
#[derive(Debug, Clone, Default)]
pub struct NamekoChanges {
    services: Vec<String>,
    unroutable: Unroutable,
}

/// The metadata key of change records (`eventfold_changes::CHANGE_KEY`).
const CHANGE_KEY: &str = "eventfold.change";

impl NamekoChanges {
    /// Every change record, of any service.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the change records of these services.
    pub fn services(mut self, services: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.services = services.into_iter().map(Into::into).collect();
        self
    }

    /// What to do with unroutable events (default [`Unroutable::Park`]).
    pub fn unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }
}

impl Route for NamekoChanges {
    fn name(&self) -> &str {
        "nameko-changes"
    }

    fn encode(&self, n: &Notification) -> Option<Result<Routed, EncodeError>> {
        let facts = n.event.metadata.get(CHANGE_KEY)?;
        let service = facts.get("service")?.as_str()?;
        let event_type = facts.get("event_type")?.as_str()?;
        if !self.services.is_empty() && !self.services.iter().any(|s| s == service) {
            return None;
        }
        let mut m = nameko_message(service, event_type, n.event.state.clone());
        nameko_headers(n, &mut m);
        Some(Ok(Routed::new(m).unroutable(self.unroutable)))
    }
}

type DecodeFn = dyn Fn(&Notification) -> Result<serde_json::Value, EncodeError> + Send + Sync;

/// The domain events of an event-sourced application, published as nameko events of
/// `service`: exchange `<service>.events`, routing key = the notification's topic
/// (`World.SomethingHappened`), body = the event as JSON written the way Python's
/// `json.dumps` writes it, nameko's properties and headers (as [`NamekoChanges`]).
///
/// The relay sees stored bytes, not events. The default decoder expects
/// [`eventfold_core::JsonMapper`] **without compression or cipher**: it parses the JSON,
/// unwraps a schema-version envelope (`{"_v":N,"data":...}`) and the enum's variant
/// (`{"SomethingHappened": {...}}` gives `{...}`; a unit variant `"Stopped"` gives
/// `{}`). For another mapper, pass [`NamekoDomainEvents::decoder`]. A record that does not
/// decode is parked with the reason.
pub struct NamekoDomainEvents {
    service: String,
    aggregates: Vec<String>,
    topics: Vec<String>,
    unroutable: Unroutable,
    decode: Box<DecodeFn>,
}

impl std::fmt::Debug for NamekoDomainEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamekoDomainEvents")
            .field("service", &self.service)
            .field("aggregates", &self.aggregates)
            .field("topics", &self.topics)
            .field("unroutable", &self.unroutable)
            .finish()
    }
}

/// The default decoder of [`NamekoDomainEvents`] (plain [`eventfold_core::JsonMapper`]).
pub fn decode_plain_json(n: &Notification) -> Result<serde_json::Value, EncodeError> {
    let mut value: serde_json::Value = serde_json::from_slice(&n.event.state).map_err(|e| {
        EncodeError(format!(
            "not plain JSON (a compressed or encrypted mapper needs a decoder): {e}"
        ))
    })?;
    if let Some(obj) = value.as_object() {
        if obj.len() == 2 && obj.get("_v").is_some_and(|v| v.is_u64()) && obj.contains_key("data") {
            value = value["data"].take();
        }
    }
    let variant = n.event.topic.rsplit('.').next().unwrap_or_default();
    match value {
        serde_json::Value::Object(mut obj) if obj.len() == 1 && obj.contains_key(variant) => {
            Ok(obj.remove(variant).expect("checked"))
        }
        serde_json::Value::String(s) if s == variant => Ok(serde_json::json!({})),
        other => Ok(other),
    }
}

impl NamekoDomainEvents {
    /// Events published as `service`'s; claims nothing until aggregates or topics are added.
    pub fn new(service: impl Into<String>) -> Self {
        NamekoDomainEvents {
            service: service.into(),
            aggregates: Vec::new(),
            topics: Vec::new(),
            unroutable: Unroutable::Park,
            decode: Box::new(decode_plain_json),
        }
    }

    /// Claims every event of the aggregate type (topics `<aggregate>.<Event>`).
    pub fn aggregate(mut self, aggregate: impl Into<String>) -> Self {
        self.aggregates.push(aggregate.into());
        self
    }

    /// Claims one topic exactly.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// What to do with unroutable events (default [`Unroutable::Park`]).
    pub fn unroutable(mut self, unroutable: Unroutable) -> Self {
        self.unroutable = unroutable;
        self
    }

    /// Replaces the decoder (for a mapper with compression or a cipher, or another shape).
    pub fn decoder(
        mut self,
        decode: impl Fn(&Notification) -> Result<serde_json::Value, EncodeError> + Send + Sync + 'static,
    ) -> Self {
        self.decode = Box::new(decode);
        self
    }

    fn claims(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            || self.aggregates.iter().any(|a| {
                topic
                    .strip_prefix(a.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

impl Route for NamekoDomainEvents {
    fn name(&self) -> &str {
        "nameko-domain-events"
    }

    fn encode(&self, n: &Notification) -> Option<Result<Routed, EncodeError>> {
        if !self.claims(&n.event.topic) {
            return None;
        }
        let encoded = (self.decode)(n).and_then(|value| {
            python_json(&value).map_err(|e| EncodeError(format!("not serialisable: {e}")))
        });
        Some(encoded.map(|body| {
            let mut m = nameko_message(&self.service, &n.event.topic, body);
            nameko_headers(n, &mut m);
            Routed::new(m).unroutable(self.unroutable)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_core::{Metadata, StoredEvent, Timestamp};

    fn notification(topic: &str, state: &[u8], metadata: Metadata) -> Notification {
        Notification::new(
            7,
            StoredEvent::new("s", 1, topic, Timestamp::now(), state.to_vec())
                .with_metadata(metadata),
        )
    }

    #[test]
    fn change_records_keep_their_body_and_carry_nameko_headers() {
        let md = Metadata::new()
            .with(
                CHANGE_KEY,
                serde_json::json!({"service": "orders", "event_type": "order__paid"}),
            )
            .with("nameko.call_id_stack", serde_json::json!(["a.b.c"]))
            .with_correlation_id("corr-1");
        let body = br#"{"id": 1, "amount": "\u00e9"}"#;
        let n = notification("orders.order__paid", body, md);
        let routed = NamekoChanges::new().encode(&n).unwrap().unwrap();
        let m = routed.message;
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("orders.events", "order__paid")
        );
        assert_eq!(m.body, body);
        assert_eq!(
            m.headers["nameko.correlation_id"],
            HeaderValue::Str("corr-1".into())
        );
        assert_eq!(
            m.headers["nameko.call_id_stack"],
            HeaderValue::List(vec![HeaderValue::Str("a.b.c".into())])
        );
        assert_eq!(routed.unroutable, Unroutable::Park);
        assert!(NamekoChanges::new()
            .services(["billing"])
            .encode(&n)
            .is_none());
        assert!(NamekoChanges::new()
            .encode(&notification("x", b"{}", Metadata::new()))
            .is_none());
    }

    #[test]
    fn domain_events_are_unwrapped_from_variant_and_version() {
        let route = NamekoDomainEvents::new("worlds").aggregate("World");
        let n = notification(
            "World.SomethingHappened",
            br#"{"SomethingHappened":{"what":"x","n":1}}"#,
            Metadata::new(),
        );
        let m = route.encode(&n).unwrap().unwrap().message;
        assert_eq!(m.exchange, "worlds.events");
        assert_eq!(m.routing_key, "World.SomethingHappened");
        assert_eq!(m.body, br#"{"what": "x", "n": 1}"#);
        let v2 = notification(
            "World.Stopped",
            br#"{"_v":2,"data":"Stopped"}"#,
            Metadata::new(),
        );
        assert_eq!(route.encode(&v2).unwrap().unwrap().message.body, b"{}");
        assert!(route
            .encode(&notification("Worlds.X", b"{}", Metadata::new()))
            .is_none());
        let sealed = notification("World.X", b"\x01\x02", Metadata::new());
        assert!(route.encode(&sealed).unwrap().is_err());
    }
}
