//! What the relay writes into the log itself: parked messages and outage records; and what
//! is read back from it (status, re-publishing parked messages).

use std::collections::BTreeSet;

use base64::Engine as _;
use eventfold_amqp::{
    AmqpConfig, ConfirmedPublisher, ExchangeKind, HeaderValue, Outcome, OutgoingMessage,
    PublisherOptions,
};
use eventfold_core::{
    Notification, NotificationQuery, Recording, Store, StoredEvent, StreamQuery, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::route::header_value;
use crate::RelayError;

/// Topics the relay writes start with this; the relay never publishes them.
pub const RELAY_TOPIC_PREFIX: &str = "eventfold.relay.";
/// The topic of a parked (unroutable or unencodable) message.
pub const PARKED_TOPIC: &str = "eventfold.relay.parked";
/// The topic of the record [`republish_parked`] appends once a parked message is confirmed.
pub const REPUBLISHED_TOPIC: &str = "eventfold.relay.republished";
/// The topic of the record appended once per outage (broker down, nacks, a held message).
pub const ERROR_TOPIC: &str = "eventfold.relay.error";
/// The topic of the record appended when the relay makes progress again after an outage.
pub const RECOVERED_TOPIC: &str = "eventfold.relay.recovered";

/// The stream of `relay`'s parked messages (and their re-publications).
pub fn parked_stream(relay: &str) -> String {
    format!("eventfold.relay.parked:{relay}")
}

/// The stream of `relay`'s outage and recovery records.
pub fn status_stream(relay: &str) -> String {
    format!("eventfold.relay.status:{relay}")
}

/// A message the relay parked instead of publishing: everything needed to publish it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// The notification it was made of.
    pub notification_id: u64,
    /// The notification's topic.
    pub topic: String,
    /// The notification's stream.
    pub stream_id: String,
    /// Why it was parked (`"312 NO_ROUTE"`, an encoding error).
    pub reason: String,
    /// The exchange (empty when it could not be encoded).
    pub exchange: String,
    /// The exchange's kind (`"topic"`, `"direct"`, `"fanout"`, `"headers"`).
    #[serde(default = "topic_kind")]
    pub exchange_kind: String,
    /// The routing key.
    pub routing_key: String,
    /// The message id it was published with (`"<relay>:<notification id>"`).
    pub message_id: String,
    /// `content_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `content_encoding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `delivery_mode`.
    pub delivery_mode: u8,
    /// `priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `correlation_id` (the AMQP property).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The headers, as JSON.
    #[serde(default)]
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// The body, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

fn topic_kind() -> String {
    "topic".to_owned()
}

fn kind_name(kind: &ExchangeKind) -> String {
    match kind {
        ExchangeKind::Direct => "direct".to_owned(),
        ExchangeKind::Fanout => "fanout".to_owned(),
        ExchangeKind::Headers => "headers".to_owned(),
        ExchangeKind::Topic => "topic".to_owned(),
        ExchangeKind::Custom(s) => s.clone(),
        #[allow(unreachable_patterns)]
        _ => "topic".to_owned(),
    }
}

fn kind_of(name: &str) -> ExchangeKind {
    match name {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        "topic" => ExchangeKind::Topic,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

fn header_json(v: &HeaderValue) -> serde_json::Value {
    match v {
        HeaderValue::Str(s) => s.clone().into(),
        HeaderValue::Int(i) => (*i).into(),
        HeaderValue::Bool(b) => (*b).into(),
        HeaderValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        HeaderValue::List(items) => items.iter().map(header_json).collect(),
        HeaderValue::Other(s) => s.clone().into(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}").into(),
    }
}

impl ParkedMessage {
    /// A parked copy of `message`, made of `n`.
    pub(crate) fn of_message(
        n: &Notification,
        message: &OutgoingMessage,
        kind: &ExchangeKind,
        reason: String,
    ) -> Self {
        let (body, body_base64) = match std::str::from_utf8(&message.body) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&message.body)),
            ),
        };
        ParkedMessage {
            notification_id: n.id,
            topic: n.event.topic.clone(),
            stream_id: n.event.stream_id.clone(),
            reason,
            exchange: message.exchange.clone(),
            exchange_kind: kind_name(kind),
            routing_key: message.routing_key.clone(),
            message_id: message.message_id.clone().unwrap_or_default(),
            content_type: message.content_type.clone(),
            content_encoding: message.content_encoding.clone(),
            delivery_mode: message.delivery_mode,
            priority: message.priority,
            correlation_id: message.correlation_id.clone(),
            headers: message
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), header_json(v)))
                .collect(),
            body,
            body_base64,
        }
    }

    /// A notification that could not be encoded: its stored bytes, no exchange.
    pub(crate) fn unencodable(n: &Notification, message_id: String, reason: String) -> Self {
        let mut m = OutgoingMessage::new("", "", n.event.state.clone());
        m.message_id = Some(message_id);
        Self::of_message(n, &m, &ExchangeKind::Topic, reason)
    }

    /// The message to publish again (same message id, properties, headers and body).
    pub fn to_message(&self) -> Result<OutgoingMessage, RelayError> {
        let body = match (&self.body, &self.body_base64) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| RelayError::Record(format!("parked body is not base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        let mut m = OutgoingMessage::new(&self.exchange, &self.routing_key, body);
        m.message_id = Some(self.message_id.clone());
        m.content_type = self.content_type.clone();
        m.content_encoding = self.content_encoding.clone();
        m.delivery_mode = self.delivery_mode;
        m.priority = self.priority;
        m.correlation_id = self.correlation_id.clone();
        m.headers = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), header_value(v)))
            .collect();
        Ok(m)
    }

    /// The record to append for it.
    pub(crate) fn record(&self, relay: &str) -> StoredEvent {
        StoredEvent::new(
            parked_stream(relay),
            0,
            PARKED_TOPIC,
            Timestamp::now(),
            serde_json::to_vec(self).expect("a parked message is JSON"),
        )
    }
}

/// An outage or recovery record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutageRecord {
    reason: String,
    #[serde(default)]
    position: u64,
}

pub(crate) fn outage_record(relay: &str, topic: &str, reason: &str, position: u64) -> StoredEvent {
    StoredEvent::new(
        status_stream(relay),
        0,
        topic,
        Timestamp::now(),
        serde_json::to_vec(&OutageRecord {
            reason: reason.to_owned(),
            position,
        })
        .expect("JSON"),
    )
}

/// The last error a relay recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// When it began.
    pub at: Timestamp,
    /// What it was (the broker unreachable, a nack, a held unroutable message).
    pub reason: String,
    /// Whether it is still going on (no recovery recorded after it).
    pub ongoing: bool,
}

/// Where a relay is, as the log tells it: readable from any process on the store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Its position: every notification up to it is published, parked or skipped.
    pub position: u64,
    /// The highest notification id in the log.
    pub head: u64,
    /// `head - position`: an upper bound of the notifications still to publish (ids may
    /// have gaps, and the relay's own records count).
    pub lag_records: u64,
    /// The age of the oldest notification after the position, in seconds (0 when none).
    pub lag_seconds: f64,
    /// Parked messages not re-published yet.
    pub parked: u64,
    /// The last outage the relay recorded (one record per outage, not per message).
    pub last_error: Option<LastError>,
}

/// Reads `relay`'s status from `store`.
pub async fn status(store: &dyn Store, relay: &str) -> Result<RelayStatus, RelayError> {
    let position = store.tracking_position(relay).await?.unwrap_or(0);
    let head = store.max_notification_id().await?;
    let next = store
        .select_notifications(&NotificationQuery::after(position, 1))
        .await?;
    let lag_seconds = next.first().map_or(0.0, |n| {
        let age = Timestamp::now().as_micros() - n.event.timestamp.as_micros();
        age.max(0) as f64 / 1e6
    });
    let parked = unresolved_parked(store, relay).await?.len() as u64;
    let last = store
        .select_events(&status_stream(relay), StreamQuery::all().descending())
        .await?;
    let last_error = last.iter().position(|e| e.topic == ERROR_TOPIC).map(|i| {
        let e = &last[i];
        let reason = serde_json::from_slice::<OutageRecord>(&e.state)
            .map(|r| r.reason)
            .unwrap_or_default();
        LastError {
            at: e.timestamp,
            reason,
            ongoing: i == 0,
        }
    });
    Ok(RelayStatus {
        position,
        head,
        lag_records: head.saturating_sub(position),
        lag_seconds,
        parked,
        last_error,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Republished {
    parked_version: u64,
    notification_id: u64,
}

/// `relay`'s parked messages that were not re-published, with their versions in the
/// parked stream, oldest first.
pub async fn parked_messages(
    store: &dyn Store,
    relay: &str,
) -> Result<Vec<(u64, ParkedMessage)>, RelayError> {
    unresolved_parked(store, relay).await
}

async fn unresolved_parked(
    store: &dyn Store,
    relay: &str,
) -> Result<Vec<(u64, ParkedMessage)>, RelayError> {
    let records = store
        .select_events(&parked_stream(relay), StreamQuery::all())
        .await?;
    let resolved: BTreeSet<u64> = records
        .iter()
        .filter(|e| e.topic == REPUBLISHED_TOPIC)
        .filter_map(|e| serde_json::from_slice::<Republished>(&e.state).ok())
        .map(|r| r.parked_version)
        .collect();
    records
        .iter()
        .filter(|e| e.topic == PARKED_TOPIC && !resolved.contains(&e.version))
        .map(|e| {
            serde_json::from_slice(&e.state)
                .map(|p| (e.version, p))
                .map_err(|err| RelayError::Record(format!("parked record {}: {err}", e.version)))
        })
        .collect()
}

/// What [`republish_parked`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepublishReport {
    /// Confirmed by the broker, and marked re-published in the log.
    pub republished: u64,
    /// Still unroutable (or not encodable): left parked.
    pub still_parked: u64,
    /// Failed otherwise (nacked, broker errors): left parked.
    pub failed: u64,
}

/// Publishes `relay`'s parked messages again, best effort: each with its original
/// exchange (declared first), routing key, properties, headers, body and message id.
/// Each one the broker confirms is marked re-published (a [`REPUBLISHED_TOPIC`] record
/// in the parked stream), so it no longer counts as parked; one that comes back
/// unroutable again, or fails, stays parked. They are published in the order they were
/// parked, after whatever the relay published since: consumers that need order must use
/// [`crate::Unroutable::Hold`] instead. Run it while or after the relay runs; running two
/// at once may publish a message twice (same message id).
pub async fn republish_parked(
    store: &dyn Store,
    amqp: AmqpConfig,
    relay: &str,
) -> Result<RepublishReport, RelayError> {
    let parked = unresolved_parked(store, relay).await?;
    let mut report = RepublishReport::default();
    if parked.is_empty() {
        return Ok(report);
    }
    let publisher = ConfirmedPublisher::connect(
        amqp,
        PublisherOptions {
            role: "relay-republish".to_owned(),
            ..PublisherOptions::default()
        },
    )
    .await?;
    let mut declared = BTreeSet::new();
    let mut sendable = Vec::new();
    let mut messages = Vec::new();
    for (version, p) in &parked {
        if p.exchange.is_empty() {
            report.still_parked += 1;
            continue;
        }
        if declared.insert(p.exchange.clone()) {
            publisher
                .declare_exchange(&p.exchange, kind_of(&p.exchange_kind))
                .await?;
        }
        messages.push(p.to_message()?);
        sendable.push((*version, p));
    }
    let outcomes = publisher.publish_all(&messages).await;
    let mut recording = Recording::new();
    for ((version, p), outcome) in sendable.into_iter().zip(outcomes) {
        match outcome {
            Ok(Outcome::Confirmed) => {
                report.republished += 1;
                recording = recording.append(StoredEvent::new(
                    parked_stream(relay),
                    0,
                    REPUBLISHED_TOPIC,
                    Timestamp::now(),
                    serde_json::to_vec(&Republished {
                        parked_version: version,
                        notification_id: p.notification_id,
                    })
                    .expect("JSON"),
                ));
            }
            Ok(Outcome::Returned { .. }) => report.still_parked += 1,
            _ => report.failed += 1,
        }
    }
    if !recording.is_empty() {
        store.record(&recording).await?;
    }
    let _ = publisher.close().await;
    Ok(report)
}
