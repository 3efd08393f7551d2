//! Column types, and the JSON ↔ SQL value mapping of each, on SQLite and PostgreSQL.

use eventfold_core::SqlValue;
use serde_json::{Number, Value};

use crate::wire::{parse_datetime, python_datetime};

/// The backends whose SQL the tables speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// What a column holds, as far as the mapping to and from JSON cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Integer,
    Real,
    /// Decimals: JSON numbers, as `ujson` writes a `Decimal` read from the database
    /// (a float); strings are taken too, and written exactly.
    Numeric,
    Boolean,
    Text,
    /// An aware timestamp, sent as Python's `str(datetime)` in UTC.
    Timestamp,
    /// A naive timestamp.
    LocalTimestamp,
    Date,
    Json,
    /// Anything else (uuid, time, enums, ...): its text form.
    Other,
}

impl Kind {
    /// The kind of a PostgreSQL type as `format_type` writes it.
    pub(crate) fn of_postgres(ty: &str) -> Kind {
        match ty.split('(').next().unwrap_or(ty).trim() {
            "smallint" | "integer" | "bigint" => Kind::Integer,
            "real" | "double precision" => Kind::Real,
            "numeric" => Kind::Numeric,
            "boolean" => Kind::Boolean,
            "text" | "character varying" | "character" | "name" => Kind::Text,
            "timestamp with time zone" => Kind::Timestamp,
            "timestamp without time zone" => Kind::LocalTimestamp,
            "date" => Kind::Date,
            "json" | "jsonb" => Kind::Json,
            _ => Kind::Other,
        }
    }

    /// The kind of a SQLite declared type, by the names Django and people use for it
    /// (SQLite itself only knows affinities).
    pub(crate) fn of_sqlite(ty: &str) -> Kind {
        let ty = ty.to_ascii_lowercase();
        if ty.contains("bool") {
            Kind::Boolean
        } else if ty.contains("int") {
            Kind::Integer
        } else if ty.contains("timestamp") && ty.contains("without") {
            Kind::LocalTimestamp
        } else if ty.contains("timestamp") || ty.contains("datetime") {
            Kind::Timestamp
        } else if ty.contains("date") {
            Kind::Date
        } else if ty.contains("json") {
            Kind::Json
        } else if ty.contains("decimal") || ty.contains("numeric") {
            Kind::Numeric
        } else if ty.contains("real") || ty.contains("floa") || ty.contains("doub") {
            Kind::Real
        } else if ty.contains("char") || ty.contains("text") || ty.contains("clob") {
            Kind::Text
        } else {
            Kind::Other
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// The declared type (PostgreSQL: `format_type`, safe to use in a cast).
    pub(crate) ty: String,
    pub(crate) kind: Kind,
}

/// `name` as a quoted SQL identifier (both backends quote with `"` and double it).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Column {
    /// The expression that binds parameter `$n` to this column: PostgreSQL gets a cast
    /// to the column's type (a `text` parameter does not go into a `timestamptz` column
    /// by itself), SQLite takes the value as it is. Text columns get no cast: an explicit
    /// cast to `varchar(n)` would cut a longer value silently, where assigning the text
    /// refuses it.
    pub(crate) fn param(&self, dialect: Dialect, n: usize) -> String {
        match (dialect, self.kind) {
            (Dialect::Sqlite, _) | (Dialect::Postgres, Kind::Text) => format!("${n}"),
            (Dialect::Postgres, _) => format!("CAST(${n} AS {})", self.ty),
        }
    }

    /// The expression that selects this column as a value [`Self::to_json`] reads.
    pub(crate) fn select(&self, dialect: Dialect) -> String {
        let q = quote(&self.name);
        match (dialect, self.kind) {
            (Dialect::Sqlite, _) => q,
            (
                Dialect::Postgres,
                Kind::Integer | Kind::Real | Kind::Numeric | Kind::Boolean | Kind::Text,
            ) => q,
            (Dialect::Postgres, Kind::Timestamp) => {
                format!("to_char({q} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            }
            (Dialect::Postgres, Kind::LocalTimestamp) => {
                format!("to_char({q}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
            }
            (Dialect::Postgres, Kind::Date) => format!("to_char({q}, 'YYYY-MM-DD')"),
            (Dialect::Postgres, Kind::Json | Kind::Other) => format!("CAST({q} AS text)"),
        }
    }

    /// The SQL value of a JSON value for this column.
    pub(crate) fn to_sql(&self, dialect: Dialect, value: &Value) -> Result<SqlValue, String> {
        Ok(match (self.kind, value) {
            (_, Value::Null) => SqlValue::Null,
            (Kind::Json, v) => SqlValue::Text(v.to_string()),
            (_, Value::Array(_) | Value::Object(_)) => {
                return Err(format!("{value} is not a single value"))
            }
            (Kind::Boolean, Value::Bool(b)) => match dialect {
                Dialect::Sqlite => SqlValue::Integer((*b).into()),
                Dialect::Postgres => SqlValue::Text(b.to_string()),
            },
            (Kind::Boolean, Value::Number(n)) if dialect == Dialect::Postgres => {
                SqlValue::Text(n.to_string())
            }
            (Kind::Integer | Kind::Real, Value::Bool(b)) => SqlValue::Integer((*b).into()),
            (Kind::Integer | Kind::Real | Kind::Boolean, Value::Number(n)) => number(n),
            // Exact on both sides: PostgreSQL casts the text, SQLite's affinity converts it.
            (Kind::Numeric, Value::Number(n)) => SqlValue::Text(n.to_string()),
            (_, Value::String(s)) => SqlValue::Text(s.clone()),
            (_, other) => SqlValue::Text(other.to_string()),
        })
    }

    /// The JSON value of what [`Self::select`] read.
    pub(crate) fn to_json(&self, value: SqlValue) -> Value {
        match (self.kind, value) {
            (_, SqlValue::Null) => Value::Null,
            (Kind::Boolean, SqlValue::Integer(i)) => Value::Bool(i != 0),
            (Kind::Json, SqlValue::Text(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            (Kind::Timestamp, SqlValue::Text(s)) => {
                Value::String(parse_datetime(&s).map_or(s, |t| python_datetime(&t)))
            }
            (Kind::LocalTimestamp, SqlValue::Text(s)) => Value::String(python_naive(&s)),
            (Kind::Numeric, SqlValue::Integer(i)) => float(i as f64),
            (Kind::Numeric, SqlValue::Real(f)) => float(f),
            (Kind::Numeric, SqlValue::Text(s)) => match s.parse::<f64>() {
                Ok(f) if f.is_finite() => float(f),
                _ => Value::String(s),
            },
            (_, SqlValue::Integer(i)) => Value::from(i),
            (_, SqlValue::Real(f)) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            (_, SqlValue::Text(s)) => Value::String(s),
            (_, SqlValue::Blob(b)) => Value::String(String::from_utf8_lossy(&b).into_owned()),
            (_, other) => Value::String(format!("{other:?}")),
        }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn number(n: &Number) -> SqlValue {
    match n.as_i64() {
        Some(i) => SqlValue::Integer(i),
        None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// A naive timestamp as Python's `str(datetime)` writes it (microseconds only when there
/// are any); text that is not one stays as it is.
fn python_naive(text: &str) -> String {
    match chrono::NaiveDateTime::parse_from_str(&text.replacen(' ', "T", 1), "%Y-%m-%dT%H:%M:%S%.f")
    {
        Ok(t) if t.and_utc().timestamp_subsec_micros() == 0 => {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        }
        Ok(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Err(_) => text.to_owned(),
    }
}

/// The text that identifies a primary-key value whatever its JSON type (`2` and `"2"`
/// are one row), for matching rows of two databases.
pub fn pk_key(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(kind: Kind) -> Column {
        Column {
            name: "c".into(),
            ty: "t".into(),
            kind,
        }
    }

    #[test]
    fn kinds_of_declared_types() {
        assert_eq!(Kind::of_postgres("character varying(100)"), Kind::Text);
        assert_eq!(Kind::of_postgres("numeric(10,2)"), Kind::Numeric);
        assert_eq!(
            Kind::of_postgres("timestamp with time zone"),
            Kind::Timestamp
        );
        assert_eq!(Kind::of_postgres("uuid"), Kind::Other);
        assert_eq!(Kind::of_sqlite("bool"), Kind::Boolean);
        assert_eq!(Kind::of_sqlite("BIGINT"), Kind::Integer);
        assert_eq!(Kind::of_sqlite("datetime"), Kind::Timestamp);
        assert_eq!(Kind::of_sqlite("decimal(10, 2)"), Kind::Numeric);
        assert_eq!(Kind::of_sqlite("varchar(20)"), Kind::Text);
    }

    #[test]
    fn values_go_in_and_come_back() {
        let ts = column(Kind::Timestamp);
        assert_eq!(
            ts.to_json(SqlValue::Text("2026-11-23T00:41:49.191666Z".into())),
            Value::from("2026-11-23 00:41:49.191666+00:00")
        );
        let local = column(Kind::LocalTimestamp);
        assert_eq!(
            local.to_json(SqlValue::Text("2026-11-23T00:41:49.000000".into())),
            Value::from("2026-11-23 00:41:49")
        );
        let flag = column(Kind::Boolean);
        assert_eq!(
            flag.to_sql(Dialect::Postgres, &Value::Bool(true)).unwrap(),
            SqlValue::Text("true".into())
        );
        assert_eq!(
            flag.to_sql(Dialect::Sqlite, &Value::Bool(true)).unwrap(),
            SqlValue::Integer(1)
        );
        assert_eq!(flag.to_json(SqlValue::Integer(0)), Value::Bool(false));
        let json = column(Kind::Json);
        let nested = serde_json::json!({"a": [1, 2]});
        let SqlValue::Text(text) = json.to_sql(Dialect::Sqlite, &nested).unwrap() else {
            panic!("JSON goes in as text")
        };
        assert_eq!(json.to_json(SqlValue::Text(text)), nested);
        assert!(column(Kind::Text)
            .to_sql(Dialect::Sqlite, &serde_json::json!([1]))
            .is_err());
        // As ujson writes Decimal('9.99') and Decimal('10.00').
        let numeric = column(Kind::Numeric);
        assert_eq!(numeric.to_json(SqlValue::Real(9.99)).to_string(), "9.99");
        assert_eq!(
            numeric.to_json(SqlValue::Text("10.00".into())).to_string(),
            "10.0"
        );
        assert_eq!(numeric.to_json(SqlValue::Integer(10)).to_string(), "10.0");
        assert_eq!(pk_key(&Value::from(2)), pk_key(&Value::from("2")));
    }
}
