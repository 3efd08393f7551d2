//! Field renderings as Django REST framework writes them, for `#[serde(with = ...)]` on
//! model fields, so a body matches what `django-events-sourcing` published for the same row.
//!
//! Decimals: DRF renders a `DecimalField` as a string with its decimal places
//! (`"99.90"`); keep such fields as `String` (or a decimal type that serializes as that
//! string).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// A UTC datetime as DRF's `DateTimeField` renders it: ISO 8601 with `Z`, microseconds
/// only when there are any (`2026-11-23T00:41:55.850687Z`, `2026-11-23T00:41:55Z`).
pub mod datetime {
    use super::*;

    /// Renders `value`.
    pub fn serialize<S: Serializer>(
        value: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&render(value))
    }

    /// The text DRF writes for `value`.
    pub fn render(value: &DateTime<Utc>) -> String {
        let format = if value.timestamp_subsec_micros() == 0 {
            SecondsFormat::Secs
        } else {
            SecondsFormat::Micros
        };
        value.to_rfc3339_opts(format, true)
    }
}

/// [`datetime`] for an optional field (`null` when `None`).
pub mod optional_datetime {
    use super::*;

    /// Renders `value`.
    pub fn serialize<S: Serializer>(
        value: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(&datetime::render(value)),
            None => serializer.serialize_none(),
        }
    }
}
