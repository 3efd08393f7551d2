//! Messages going out and coming in, and their headers.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;

use crate::config::short;
use crate::error::Result;

/// A header value: the JSON-ish subset that AMQP tables and Python peers (kombu, py-amqp)
/// agree on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// A string (AMQP long string `S`).
    Str(String),
    /// An integer: sent as a 32-bit `I` when it fits, else 64-bit `l` (as py-amqp does).
    Int(i64),
    /// A boolean (`t`).
    Bool(bool),
    /// A double (`d`).
    Float(f64),
    /// A list (`A`), e.g. nameko's `call_id_stack` of strings.
    List(Vec<HeaderValue>),
    /// A value received that has no equivalent above (a nested table, bytes, a timestamp,
    /// a decimal, void), in lapin's debug form. Sent as a string.
    Other(String),
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_owned())
    }
}
impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}
impl From<i64> for HeaderValue {
    fn from(i: i64) -> Self {
        HeaderValue::Int(i)
    }
}
impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}
impl From<Vec<String>> for HeaderValue {
    fn from(v: Vec<String>) -> Self {
        HeaderValue::List(v.into_iter().map(HeaderValue::Str).collect())
    }
}

impl HeaderValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    fn to_amqp(&self) -> AMQPValue {
        match self {
            HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            HeaderValue::Int(i) => match i32::try_from(*i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(*i),
            },
            HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
            HeaderValue::Float(f) => AMQPValue::Double(*f),
            HeaderValue::List(items) => AMQPValue::FieldArray(FieldArray::from(
                items.iter().map(HeaderValue::to_amqp).collect::<Vec<_>>(),
            )),
            HeaderValue::Other(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        }
    }

    fn from_amqp(value: &AMQPValue) -> Self {
        match value {
            AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
            AMQPValue::ShortShortInt(i) => HeaderValue::Int((*i).into()),
            AMQPValue::ShortShortUInt(i) => HeaderValue::Int((*i).into()),
            AMQPValue::ShortInt(i) => HeaderValue::Int((*i).into()),
            AMQPValue::ShortUInt(i) => HeaderValue::Int((*i).into()),
            AMQPValue::LongInt(i) => HeaderValue::Int((*i).into()),
            AMQPValue::LongUInt(i) => HeaderValue::Int((*i).into()),
            AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
            AMQPValue::Float(f) => HeaderValue::Float((*f).into()),
            AMQPValue::Double(f) => HeaderValue::Float(*f),
            AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
            AMQPValue::LongString(s) => {
                HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            AMQPValue::FieldArray(a) => {
                HeaderValue::List(a.as_slice().iter().map(HeaderValue::from_amqp).collect())
            }
            other => HeaderValue::Other(format!("{other:?}")),
        }
    }
}

/// Message headers by name, in name order.
pub type Headers = BTreeMap<String, HeaderValue>;

pub(crate) fn headers_to_table(headers: &Headers) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(short("header name", k)?, v.to_amqp());
    }
    Ok(table)
}

pub(crate) fn table_to_headers(table: Option<&FieldTable>) -> Headers {
    table
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), HeaderValue::from_amqp(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// A message to publish. Always published `mandatory` and, unless changed,
/// persistent (`delivery_mode` 2).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The exchange (`""` is the default exchange, which routes by queue name).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// `content_type` (e.g. `application/json`).
    pub content_type: Option<String>,
    /// `content_encoding` (e.g. `utf-8`).
    pub content_encoding: Option<String>,
    /// 2 = persistent (the default), 1 = transient.
    pub delivery_mode: u8,
    /// `priority` (kombu sends 0).
    pub priority: Option<u8>,
    /// `message_id`: what a consumer drops duplicates by.
    pub message_id: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// `app_id`.
    pub app_id: Option<String>,
    /// `timestamp`, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// `expiration`, a per-message TTL in milliseconds.
    pub expiration_ms: Option<u64>,
    /// Application headers.
    pub headers: Headers,
}

impl OutgoingMessage {
    /// A persistent message with no other properties.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            content_type: None,
            content_encoding: None,
            delivery_mode: 2,
            priority: None,
            message_id: None,
            correlation_id: None,
            kind: None,
            app_id: None,
            timestamp: None,
            expiration_ms: None,
            headers: Headers::new(),
        }
    }

    /// Sets `message_id`.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets `content_type`.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The AMQP basic properties (fails on a property longer than 255 bytes).
    pub(crate) fn properties(&self) -> Result<BasicProperties> {
        let mut p = BasicProperties::default().with_delivery_mode(self.delivery_mode);
        if let Some(v) = &self.content_type {
            p = p.with_content_type(short("content_type", v)?);
        }
        if let Some(v) = &self.content_encoding {
            p = p.with_content_encoding(short("content_encoding", v)?);
        }
        if let Some(v) = self.priority {
            p = p.with_priority(v);
        }
        if let Some(v) = &self.message_id {
            p = p.with_message_id(short("message_id", v)?);
        }
        if let Some(v) = &self.correlation_id {
            p = p.with_correlation_id(short("correlation_id", v)?);
        }
        if let Some(v) = &self.kind {
            p = p.with_type(short("type", v)?);
        }
        if let Some(v) = &self.app_id {
            p = p.with_app_id(short("app_id", v)?);
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        if let Some(v) = self.expiration_ms {
            p = p.with_expiration(short("expiration", &v.to_string())?);
        }
        if !self.headers.is_empty() {
            p = p.with_headers(headers_to_table(&self.headers)?);
        }
        Ok(p)
    }
}

/// A message as a consumer's handler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingMessage {
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether the broker delivered it before (to this or another consumer) without an ack:
    /// it may have been handled already.
    pub redelivered: bool,
    /// `message_id`, if the publisher set one.
    pub message_id: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `content_type`.
    pub content_type: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// `timestamp`, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Application headers.
    pub headers: Headers,
    /// The body (valid JSON: the consumer dead-letters anything else before a handler sees it).
    pub body: Vec<u8>,
}

impl IncomingMessage {
    pub(crate) fn from_delivery(d: &mut lapin::message::Delivery) -> Self {
        let p = &d.properties;
        let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
        IncomingMessage {
            exchange: d.exchange.to_string(),
            routing_key: d.routing_key.to_string(),
            redelivered: d.redelivered,
            message_id: s(p.message_id()),
            correlation_id: s(p.correlation_id()),
            content_type: s(p.content_type()),
            content_encoding: s(p.content_encoding()),
            kind: s(p.kind()),
            timestamp: *p.timestamp(),
            headers: table_to_headers(p.headers().as_ref()),
            body: std::mem::take(&mut d.data),
        }
    }

    /// The body parsed as JSON into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}
