//! django-cqrs 3.1's wire format: the message body, its routing keys and queue names, its
//! AMQP properties, and the two timestamp forms it uses.
//!
//! The body is written as django-cqrs writes it (`ujson.dumps(payload.to_dict())`): keys in
//! `to_dict`'s order, no spaces, non-ASCII as `\uXXXX`, `/` as `\/`. The captures in
//! `tests/fixtures/` are matched byte for byte.

use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_amqp::OutgoingMessage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The exchange django-cqrs publishes to unless configured otherwise (`CQRS['exchange']`).
pub const DEFAULT_EXCHANGE: &str = "cqrs";
/// How long a master's message lives (`CQRS['master']['CQRS_MESSAGE_TTL']`): one day.
pub const DEFAULT_MESSAGE_TTL: Duration = Duration::from_secs(86_400);
/// How long a dead letter stays in its queue (`dead_message_ttl`): ten days.
pub const DEFAULT_DEAD_MESSAGE_TTL: Duration = Duration::from_secs(864_000);
/// The content type django-cqrs sets (its bodies are JSON all the same).
pub const CONTENT_TYPE: &str = "text/plain";

/// What a message asks the replica to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignalType {
    /// Create or update; applied only when its revision is newer than the stored one.
    #[serde(rename = "SAVE")]
    Save,
    /// Delete by primary key.
    #[serde(rename = "DELETE")]
    Delete,
    /// Create or update whatever the stored revision (a re-sync).
    #[serde(rename = "SYNC")]
    Sync,
}

impl SignalType {
    /// The name on the wire (`SAVE`, `DELETE`, `SYNC`).
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Save => "SAVE",
            SignalType::Delete => "DELETE",
            SignalType::Sync => "SYNC",
        }
    }
}

/// One django-cqrs message (`TransportPayload`), fields in the order of its `to_dict`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CqrsMessage {
    /// SAVE, DELETE or SYNC.
    pub signal_type: SignalType,
    /// The model's `CQRS_ID`, shared by master and replica.
    pub cqrs_id: String,
    /// The instance's fields, with `cqrs_revision` and `cqrs_updated`.
    pub instance_data: Map<String, Value>,
    /// Old values of the master's tracked fields, when it tracks any.
    pub previous_data: Option<Map<String, Value>>,
    /// The primary key (as JSON: a number or a string).
    pub instance_pk: Value,
    /// The correlation id of the work that made the message.
    pub correlation_id: Option<Value>,
    /// How many times a replica has re-published it after a failure.
    pub retries: u32,
    /// When it expires (`None`: never), written without microseconds.
    #[serde(serialize_with = "serialize_expires")]
    pub expires: Option<DateTime<Utc>>,
    /// The master's metadata for it.
    pub meta: Option<Value>,
}

/// Why a body is not a django-cqrs message. The text is the reason a dead letter carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedMessage {
    /// The body is not JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// A required key is absent (or `null`).
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// A key has a value of the wrong type.
    #[error("`{key}` must be {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `signal_type` is not SAVE, DELETE or SYNC.
    #[error("unknown signal_type {0:?}")]
    UnknownSignal(String),
    /// `expires` is not a datetime.
    #[error("`expires` is not a datetime: {0:?}")]
    BadExpires(String),
}

impl CqrsMessage {
    /// A message with no previous data, correlation id or meta, `retries` 0, expiring
    /// [`DEFAULT_MESSAGE_TTL`] from now.
    pub fn new(
        signal_type: SignalType,
        cqrs_id: impl Into<String>,
        instance_pk: Value,
        instance_data: Map<String, Value>,
    ) -> Self {
        CqrsMessage {
            signal_type,
            cqrs_id: cqrs_id.into(),
            instance_data,
            previous_data: None,
            instance_pk,
            correlation_id: None,
            retries: 0,
            expires: expires_after(Utc::now(), Some(DEFAULT_MESSAGE_TTL)),
            meta: None,
        }
    }

    /// The body, byte for byte as django-cqrs writes it.
    pub fn to_body(&self) -> Vec<u8> {
        ujson(self).expect("a CqrsMessage holds only JSON values, which always serialize")
    }

    /// Reads a body as django-cqrs's consumer does, but strictly: `signal_type`,
    /// `cqrs_id`, `instance_data` and `instance_pk` must be there. A body without
    /// `expires` (older masters) expires [`DEFAULT_MESSAGE_TTL`] from now, as in
    /// django-cqrs.
    pub fn from_body(body: &[u8]) -> Result<Self, MalformedMessage> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| MalformedMessage::NotJson(e.to_string()))?;
        let Value::Object(mut object) = value else {
            return Err(MalformedMessage::NotAnObject);
        };
        let mut take = |key: &'static str| match object.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        let signal_type =
            match take("signal_type").ok_or(MalformedMessage::Missing("signal_type"))? {
                Value::String(s) => match s.as_str() {
                    "SAVE" => SignalType::Save,
                    "DELETE" => SignalType::Delete,
                    "SYNC" => SignalType::Sync,
                    _ => return Err(MalformedMessage::UnknownSignal(s)),
                },
                _ => return Err(wrong("signal_type", "a string")),
            };
        let cqrs_id = match take("cqrs_id").ok_or(MalformedMessage::Missing("cqrs_id"))? {
            Value::String(s) => s,
            _ => return Err(wrong("cqrs_id", "a string")),
        };
        let instance_data =
            match take("instance_data").ok_or(MalformedMessage::Missing("instance_data"))? {
                Value::Object(o) => o,
                _ => return Err(wrong("instance_data", "an object")),
            };
        let instance_pk = take("instance_pk").ok_or(MalformedMessage::Missing("instance_pk"))?;
        if instance_pk.is_object() || instance_pk.is_array() {
            return Err(wrong("instance_pk", "a number or a string"));
        }
        let previous_data = match take("previous_data") {
            None => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => return Err(wrong("previous_data", "an object or null")),
        };
        let retries = match take("retries") {
            None => 0,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(wrong("retries", "a non-negative integer"))?,
            Some(_) => return Err(wrong("retries", "a non-negative integer")),
        };
        let correlation_id = take("correlation_id");
        let meta = take("meta");
        let expires = match object.remove("expires") {
            None => expires_after(Utc::now(), Some(DEFAULT_MESSAGE_TTL)),
            Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(parse_datetime(&s).ok_or(MalformedMessage::BadExpires(s))?)
            }
            Some(other) => return Err(MalformedMessage::BadExpires(other.to_string())),
        };
        Ok(CqrsMessage {
            signal_type,
            cqrs_id,
            instance_data,
            previous_data,
            instance_pk,
            correlation_id,
            retries,
            expires,
            meta,
        })
    }

    /// Whether it has expired at `now` (`expires <= now`, as django-cqrs).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The instance's `cqrs_revision`, when `instance_data` has an integer one.
    pub fn revision(&self) -> Option<i64> {
        self.instance_data.get("cqrs_revision")?.as_i64()
    }

    /// The primary key as text (a string as it is, a number in decimal), for ordering
    /// keys and logs.
    pub fn pk_text(&self) -> String {
        match &self.instance_pk {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// This message as django-cqrs publishes it: `text/plain`, `delivery_mode` 2, no
    /// headers, to `exchange` with `routing_key`.
    pub fn to_message(&self, exchange: &str, routing_key: &str) -> OutgoingMessage {
        outgoing_message(exchange, routing_key, self.to_body())
    }
}

/// `body` (already a django-cqrs body) as django-cqrs publishes it: `text/plain`,
/// `delivery_mode` 2, no headers.
pub fn outgoing_message(exchange: &str, routing_key: &str, body: Vec<u8>) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(exchange, routing_key, body);
    m.content_type = Some(CONTENT_TYPE.to_owned());
    m.delivery_mode = 2;
    m
}

fn wrong(key: &'static str, expected: &'static str) -> MalformedMessage {
    MalformedMessage::WrongType { key, expected }
}

/// The routing key of a message for every replica of `cqrs_id`: the id itself.
pub fn routing_key(cqrs_id: &str) -> String {
    cqrs_id.to_owned()
}

/// The routing key of a message aimed at one queue (a sync to one replica, a retry, a dead
/// letter): `cqrs.<queue>.<cqrs_id>`.
pub fn queue_routing_key(queue: &str, cqrs_id: &str) -> String {
    format!("cqrs.{queue}.{cqrs_id}")
}

/// The dead-letter queue of a replica queue: `dead_letter_<queue>`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("dead_letter_{queue}")
}

/// The bindings django-cqrs's consumer declares for one replica queue and one `cqrs_id`,
/// as `(queue, routing key)`: `<queue>` with `<cqrs_id>` and `cqrs.<queue>.<cqrs_id>`,
/// `dead_letter_<queue>` with `cqrs.dead_letter_<queue>.<cqrs_id>`. The master's relay
/// (declaring a replica's queues for a cold start) and the replica consumer both use it.
pub fn replica_bindings(queue: &str, cqrs_id: &str) -> [(String, String); 3] {
    let dead_letters = dead_letter_queue(queue);
    [
        (queue.to_owned(), routing_key(cqrs_id)),
        (queue.to_owned(), queue_routing_key(queue, cqrs_id)),
        (
            dead_letters.clone(),
            queue_routing_key(&dead_letters, cqrs_id),
        ),
    ]
}

/// `now + ttl` to the second, as django-cqrs stamps `expires`; `None` for no TTL.
pub fn expires_after(now: DateTime<Utc>, ttl: Option<Duration>) -> Option<DateTime<Utc>> {
    let ttl = chrono::Duration::from_std(ttl?).ok()?;
    let at = now.checked_add_signed(ttl)?;
    at.with_nanosecond_zero()
}

trait WithNanosecondZero: Sized {
    fn with_nanosecond_zero(self) -> Option<Self>;
}

impl WithNanosecondZero for DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Option<Self> {
        chrono::Timelike::with_nanosecond(&self, 0)
    }
}

/// A datetime as Python's `str(datetime)` writes an aware UTC one, the form of
/// `cqrs_updated`: `2026-11-23 00:41:49.193683+00:00`, microseconds only when there are
/// any.
pub fn python_datetime(value: &DateTime<Utc>) -> String {
    civil_datetime(value, ' ', true, "+00:00")
}

/// `expires` as `to_dict` writes it: ISO 8601 without microseconds,
/// `2026-11-24T00:41:49+00:00`.
pub fn iso_seconds(value: &DateTime<Utc>) -> String {
    civil_datetime(value, 'T', false, "+00:00")
}

/// `YYYY-MM-DD`, `separator`, `HH:MM:SS`, then (with `fraction`) `.ffffff` when there are
/// microseconds, then `suffix`: the datetime forms of messages and of the SQLite columns.
///
/// Written digit by digit, not through chrono's format strings: parsing the format on
/// every call cost about 4,000 instructions, and a master save writes three or four of
/// these (callgrind, `eventfold bench replication --phases record_only`). Years outside
/// 0..=9999 and leap seconds, which a format string writes its own way, go through it.
pub(crate) fn civil_datetime(
    value: &DateTime<Utc>,
    separator: char,
    fraction: bool,
    suffix: &str,
) -> String {
    use chrono::{Datelike, Timelike};
    let year = value.year();
    if !(0..=9999).contains(&year) || value.nanosecond() >= 1_000_000_000 {
        let time = if fraction && value.timestamp_subsec_micros() != 0 {
            "%H:%M:%S%.6f"
        } else {
            "%H:%M:%S"
        };
        return format!(
            "{}{separator}{}{suffix}",
            value.format("%Y-%m-%d"),
            value.format(time)
        );
    }
    let mut out = String::with_capacity(32);
    push_digits(&mut out, year as u32, 4);
    out.push('-');
    push_digits(&mut out, value.month(), 2);
    out.push('-');
    push_digits(&mut out, value.day(), 2);
    out.push(separator);
    push_digits(&mut out, value.hour(), 2);
    out.push(':');
    push_digits(&mut out, value.minute(), 2);
    out.push(':');
    push_digits(&mut out, value.second(), 2);
    let micros = value.timestamp_subsec_micros();
    if fraction && micros != 0 {
        out.push('.');
        push_digits(&mut out, micros, 6);
    }
    out.push_str(suffix);
    out
}

/// The last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut rest = value;
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend(digits[..width].iter().map(|&d| char::from(d)));
}

/// Reads a datetime in either of django-cqrs's forms (ISO 8601 with `T` or Python's
/// `str` with a space), with an offset; one without an offset is taken as UTC.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let with_t = text.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&with_t) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

fn serialize_expires<S: serde::Serializer>(
    value: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(t) => serializer.serialize_str(&iso_seconds(t)),
        None => serializer.serialize_none(),
    }
}

/// `value` as `ujson.dumps` writes it by default (compact, non-ASCII as `\uXXXX`, `/` as
/// `\/`): message bodies, and the lines of django-cqrs's dump and diff formats.
pub fn ujson<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, UjsonFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// JSON as `ujson.dumps` writes it by default: compact, `ensure_ascii`, `/` escaped.
struct UjsonFormatter;

impl serde_json::ser::Formatter for UjsonFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // Most fragments need no escape: one byte scan, instead of decoding each char.
        if !fragment.bytes().any(|b| b >= 0x80 || b == b'/') {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && c != '/' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            if c == '/' {
                writer.write_all(b"\\/")?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelopes() -> Vec<Value> {
        let text = include_str!("../tests/fixtures/django_cqrs_envelopes.json");
        let v: Value = serde_json::from_str(text).unwrap();
        v["messages"].as_array().unwrap().clone()
    }

    #[test]
    fn captured_bodies_read_and_write_back_byte_for_byte() {
        for envelope in envelopes() {
            let raw = envelope["body_raw"].as_str().unwrap();
            let message = CqrsMessage::from_body(raw.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(message.to_body()).unwrap(), raw);
            let outgoing = message.to_message(
                envelope["exchange"].as_str().unwrap(),
                envelope["routing_key"].as_str().unwrap(),
            );
            assert_eq!(outgoing.content_type.as_deref(), Some("text/plain"));
            assert_eq!(outgoing.delivery_mode, 2);
            assert!(outgoing.headers.is_empty());
        }
    }

    #[test]
    fn captured_timestamps_round_trip_in_both_forms() {
        let save: Value =
            serde_json::from_str(include_str!("../tests/fixtures/django_cqrs_save.json")).unwrap();
        let updated = save["instance_data"]["cqrs_updated"].as_str().unwrap();
        assert_eq!(python_datetime(&parse_datetime(updated).unwrap()), updated);
        let expires = save["expires"].as_str().unwrap();
        assert_eq!(iso_seconds(&parse_datetime(expires).unwrap()), expires);
        let whole = parse_datetime("2026-11-23 00:41:49+00:00").unwrap();
        assert_eq!(python_datetime(&whole), "2026-11-23 00:41:49+00:00");
    }

    #[test]
    fn datetimes_are_written_as_chrono_formats_them() {
        // From year 1 to 9999, microseconds, whole seconds and single-digit fields.
        let mut micros = -62_135_596_800_000_000_i64;
        while micros < 253_402_300_799_000_000 {
            let at = DateTime::from_timestamp_micros(micros).unwrap();
            let python = if at.timestamp_subsec_micros() == 0 {
                at.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
            } else {
                at.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
            };
            assert_eq!(python_datetime(&at), python);
            let iso = at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
                .replace('Z', "+00:00");
            assert_eq!(iso_seconds(&at), iso);
            let whole = DateTime::from_timestamp(at.timestamp(), 0).unwrap();
            assert_eq!(
                python_datetime(&whole),
                whole.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
            );
            micros += 7_777_777_777_777;
        }
    }

    #[test]
    fn strings_as_ujson_writes_them() {
        let mut data = Map::new();
        data.insert("name".into(), Value::from("café/🦀\n\"q\""));
        let mut m = CqrsMessage::new(SignalType::Save, "item", Value::from(1), data);
        m.expires = None;
        let body = String::from_utf8(m.to_body()).unwrap();
        assert!(
            body.contains(r#""name":"caf\u00e9\/\ud83e\udd80\n\"q\"""#),
            "{body}"
        );
        assert_eq!(CqrsMessage::from_body(body.as_bytes()).unwrap(), m);
    }

    #[test]
    fn malformed_bodies_say_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "not valid JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"cqrs_id":"item","instance_data":{},"instance_pk":1}"#, "missing `signal_type`"),
            (br#"{"signal_type":"SAVE","instance_data":{},"instance_pk":1}"#, "missing `cqrs_id`"),
            (br#"{"signal_type":"SAVE","cqrs_id":"item","instance_pk":1}"#, "missing `instance_data`"),
            (br#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":{}}"#, "missing `instance_pk`"),
            (br#"{"signal_type":"PATCH","cqrs_id":"item","instance_data":{},"instance_pk":1}"#, "unknown signal_type \"PATCH\""),
            (br#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":[],"instance_pk":1}"#, "`instance_data` must be an object"),
            (br#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":{},"instance_pk":1,"retries":-1}"#, "`retries` must be"),
            (br#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":{},"instance_pk":1,"expires":"soon"}"#, "`expires` is not a datetime"),
        ];
        for (body, reason) in cases {
            let err = CqrsMessage::from_body(body).unwrap_err().to_string();
            assert!(err.starts_with(reason), "{err} should start with {reason}");
        }
    }

    #[test]
    fn expiry_is_to_the_second_and_inclusive() {
        let now = parse_datetime("2026-11-23 00:41:49.191666+00:00").unwrap();
        let expires = expires_after(now, Some(DEFAULT_MESSAGE_TTL)).unwrap();
        assert_eq!(iso_seconds(&expires), "2026-11-24T00:41:49+00:00");
        let mut m = CqrsMessage::new(SignalType::Delete, "item", Value::from(2), Map::new());
        m.expires = Some(expires);
        assert!(!m.is_expired(expires - chrono::Duration::seconds(1)));
        assert!(m.is_expired(expires));
        assert_eq!(expires_after(now, None), None);
    }

    #[test]
    fn routing_keys_and_queues_as_django_cqrs_names_them() {
        assert_eq!(routing_key("item"), "item");
        assert_eq!(queue_routing_key("replica", "item"), "cqrs.replica.item");
        assert_eq!(dead_letter_queue("replica"), "dead_letter_replica");
        assert_eq!(
            queue_routing_key(&dead_letter_queue("replica"), "item"),
            "cqrs.dead_letter_replica.item"
        );
    }
}
