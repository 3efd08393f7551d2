//! Field renderings as django-cqrs publishes them, for `#[serde(with = ...)]` on model
//! fields: `_common_serialization` sends a date, datetime or UUID as its Python `str()`.
//!
//! Decimals travel as strings (`"9.99"`): keep such fields as `String` (or a decimal type
//! that serializes as that string); a UUID's serde form is already its `str()`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serializer;

use crate::wire::python_datetime;

/// A UTC datetime as Python's `str(datetime)`: `2026-11-23 00:41:49.191759+00:00`,
/// microseconds only when there are any (the form of `cqrs_updated`).
pub mod datetime {
    use super::*;

    /// Renders `value`.
    pub fn serialize<S: Serializer>(
        value: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&python_datetime(value))
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
            Some(value) => serializer.serialize_str(&python_datetime(value)),
            None => serializer.serialize_none(),
        }
    }
}

/// A date as Python's `str(date)`: `2026-11-23`.
pub mod date {
    use super::*;

    /// Renders `value`.
    pub fn serialize<S: Serializer>(value: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.format("%Y-%m-%d").to_string())
    }
}
