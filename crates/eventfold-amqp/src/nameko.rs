//! nameko's wire format: events as `nameko.events.event_dispatcher` (and
//! django-events-sourcing, which mimics it) publish them, and the queue names nameko's
//! `@event_handler` consumes from.
//!
//! What nameko 2.14.1 sends, checked against captures of real messages:
//! * exchange `<service>.events`, topic, durable; routing key = the event type;
//! * body: the payload as Python's `json.dumps` writes it (separators `", "` and `": "`,
//!   non-ASCII as `\uXXXX`), `content_type` `application/json`, `content_encoding`
//!   `utf-8`, `delivery_mode` 2, `priority` 0;
//! * headers `nameko.<key>` for each worker-context value (`call_id_stack` as a list of
//!   `"service.method.uuid"` strings, `correlation_id`, `auth_token`, `language`,
//!   `user_id`, `user_agent`); the standalone dispatcher sends none.

use serde::Serialize;

use crate::error::{AmqpError, Result};
use crate::message::{HeaderValue, Headers, OutgoingMessage};

/// An event in nameko's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct NamekoEvent {
    /// The source service (`orders`): the exchange is `<service>.events`.
    pub service: String,
    /// The event type (`order__created`): the routing key.
    pub event_type: String,
    /// The payload. Object keys are written in the map's order (serde_json's `Map` is
    /// sorted unless its `preserve_order` feature is on); to match a Python dict's
    /// insertion order, encode a struct with [`event_message`].
    pub payload: serde_json::Value,
    /// Worker-context values, without the `nameko.` prefix (`call_id_stack`, ...).
    pub headers: Headers,
}

impl NamekoEvent {
    /// An event with no headers (as the standalone dispatcher sends).
    pub fn new(
        service: impl Into<String>,
        event_type: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        NamekoEvent {
            service: service.into(),
            event_type: event_type.into(),
            payload,
            headers: Headers::new(),
        }
    }

    /// Adds a worker-context header (`key` without the `nameko.` prefix).
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// The message nameko would publish for this event.
    pub fn to_message(&self) -> Result<OutgoingMessage> {
        event_message(
            &self.service,
            &self.event_type,
            &self.payload,
            &self.headers,
        )
    }
}

/// The exchange nameko's services publish their events to: `<service>.events`.
pub fn exchange_name(service: &str) -> String {
    format!("{service}.events")
}

/// The message nameko would publish for `payload` (any `Serialize`: a struct keeps its field
/// order, as a Python dict keeps its insertion order).
pub fn event_message<T: Serialize + ?Sized>(
    service: &str,
    event_type: &str,
    payload: &T,
    context: &Headers,
) -> Result<OutgoingMessage> {
    let body = python_json(payload)
        .map_err(|e| AmqpError::config(format!("payload is not JSON-serialisable: {e}")))?;
    Ok(encoded_event_message(service, event_type, body, context))
}

/// The message nameko would publish for a payload already encoded as Python writes it
/// ([`python_json`]): a change record's body, published as it is stored, not re-encoded.
/// The body is not checked.
pub fn encoded_event_message(
    service: &str,
    event_type: &str,
    body: impl Into<Vec<u8>>,
    context: &Headers,
) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(exchange_name(service), event_type, body);
    m.content_type = Some("application/json".to_owned());
    m.content_encoding = Some("utf-8".to_owned());
    m.delivery_mode = 2;
    m.priority = Some(0);
    m.headers = context
        .iter()
        .map(|(k, v)| (format!("nameko.{k}"), v.clone()))
        .collect();
    m
}

/// The worker-context values of a received nameko event (its `nameko.*` headers, without
/// the prefix).
pub fn context_of(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("nameko.")?.to_owned(), v.clone())))
        .collect()
}

/// How a nameko `@event_handler` shares the events it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerType {
    /// One queue per (service, method): every instance of the service competes for it, each
    /// event is handled once per service (nameko's default).
    ServicePool,
    /// One queue for every handler of the event, across services: each event is handled once.
    Singleton,
    /// One queue per instance: every instance handles every event. The id tells the
    /// instances apart (nameko's `broadcast_identifier`, a uuid by default).
    Broadcast {
        /// The instance's broadcast identifier.
        broadcast_id: String,
    },
}

/// The queue nameko's `@event_handler(source_service, event_type, handler_type=...)` on
/// `consumer_service.method` consumes from: `evt-<source>-<type>--<service>.<method>`
/// (SERVICE_POOL), `evt-<source>-<type>` (SINGLETON),
/// `evt-<source>-<type>--<service>.<method>-<broadcast id>` (BROADCAST).
/// It is durable and bound to `<source>.events` with the event type as routing key.
pub fn handler_queue_name(
    source_service: &str,
    event_type: &str,
    consumer_service: &str,
    method: &str,
    handler_type: &HandlerType,
) -> String {
    let base = format!("evt-{source_service}-{event_type}");
    match handler_type {
        HandlerType::Singleton => base,
        HandlerType::ServicePool => format!("{base}--{consumer_service}.{method}"),
        HandlerType::Broadcast { broadcast_id } => {
            format!("{base}--{consumer_service}.{method}-{broadcast_id}")
        }
    }
}

/// Serialises `value` as Python's `json.dumps(value)` does with its defaults: `", "` and
/// `": "` separators, `ensure_ascii` (everything outside printable ASCII as `\uXXXX`,
/// astral characters as surrogate pairs), floats as Python's `repr` (`1e-05`, `1e+16`).
pub fn python_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

struct PythonFormatter;

/// Python's `", "` between the items of an array or an object, none before the first.
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f32,
    ) -> std::io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional when the decimal
/// exponent is in [-4, 16), else scientific with a signed two-digit exponent.
fn python_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else if exp + 1 >= n {
            format!("{sign}{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let m = if n == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_python_repr() {
        for (v, py) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
            (99.9, "99.9"),
        ] {
            assert_eq!(python_float_repr(v), py, "{v}");
        }
    }

    #[test]
    fn strings_as_python_ensure_ascii() {
        let s = "é\u{1F600}\"\\\n\t\u{7f}\u{1}a";
        assert_eq!(
            String::from_utf8(python_json(s).unwrap()).unwrap(),
            r#""\u00e9\ud83d\ude00\"\\\n\t\u007f\u0001a""#
        );
        assert_eq!(
            String::from_utf8(
                python_json(&serde_json::json!({"a": [1, {}, []], "b": null, "c": true})).unwrap()
            )
            .unwrap(),
            r#"{"a": [1, {}, []], "b": null, "c": true}"#
        );
    }
}
