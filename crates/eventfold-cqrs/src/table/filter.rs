//! The row filter of `sync`, `bulk-dump` and `diff-master`: the subset of Django's
//! `filter(**kwargs)` JSON that plain tables need.

use eventfold_core::SqlValue;
use serde_json::Value;

use super::column::{quote, Column, Dialect};
use super::{Table, TableError};

/// Which master rows a command works on, parsed from a Django-style filter object.
///
/// Each key is `<field>` or `<field>__<lookup>`; all conditions must hold (AND). A field
/// is an `instance_data` key (as renamed in the tables file), a column name, or `pk`.
///
/// | lookup | value | SQL |
/// |---|---|---|
/// | (none), `exact` | a scalar | `= value` (`null`: `IS NULL`) |
/// | `in` | an array of scalars | `IN (...)` (empty: no row) |
/// | `gt`, `gte`, `lt`, `lte` | a scalar | `>`, `>=`, `<`, `<=` |
/// | `isnull` | `true` / `false` | `IS NULL` / `IS NOT NULL` |
///
/// `{}` selects every row. Values are converted to the column's type as messages are
/// (`{"cqrs_updated__gte": "2026-11-23 00:00:00+00:00"}` works on a timestamp column;
/// SQLite stores timestamps as text, so there they compare as text: write them in the
/// form the column holds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    column: usize,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(&'static str, Value),
    In(Vec<Value>),
    IsNull(bool),
}

impl Filter {
    /// Every row.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Rows whose primary key is one of `pks` (what `diff-sync` asks for).
    pub fn pk_in(table: &Table, pks: Vec<Value>) -> Self {
        Filter {
            conditions: vec![Condition {
                column: table.pk,
                test: Test::In(pks),
            }],
        }
    }

    /// Parses a filter object (its JSON text) for `table`; a filter that is not an
    /// object, names no column of the table, or uses an unknown lookup is
    /// [`TableError::BadFilter`].
    pub fn parse(table: &Table, text: &str) -> Result<Self, TableError> {
        let bad = |message: String| TableError::BadFilter { message };
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e}): {text}")))?;
        let Value::Object(object) = value else {
            return Err(bad(format!(
                "must be a JSON object such as {{\"id__in\": [1, 2]}}, not {text}"
            )));
        };
        let mut conditions = Vec::with_capacity(object.len());
        for (key, value) in object {
            let (field, lookup) = match key.rsplit_once("__") {
                Some((field, lookup)) if LOOKUPS.contains(&lookup) => (field, lookup),
                _ => (key.as_str(), "exact"),
            };
            let column = table.field_column(field).ok_or_else(|| {
                bad(format!(
                    "{key:?}: {field:?} is not a field of {} (fields: pk, {}; lookups: {})",
                    table.cqrs_id(),
                    table.field_names().join(", "),
                    LOOKUPS.join(", ")
                ))
            })?;
            let scalar = |value: &Value| {
                if value.is_array() || value.is_object() {
                    Err(bad(format!("{key:?} takes a single value, not {value}")))
                } else {
                    Ok(())
                }
            };
            let test = match lookup {
                "in" => {
                    let Value::Array(values) = value else {
                        return Err(bad(format!("{key:?} takes an array, not {value}")));
                    };
                    values.iter().try_for_each(scalar)?;
                    Test::In(values)
                }
                "isnull" => match value {
                    Value::Bool(b) => Test::IsNull(b),
                    other => return Err(bad(format!("{key:?} takes true or false, not {other}"))),
                },
                "exact" if value.is_null() => Test::IsNull(true),
                op => {
                    scalar(&value)?;
                    let sql = match op {
                        "exact" => "=",
                        "gt" => ">",
                        "gte" => ">=",
                        "lt" => "<",
                        _ => "<=",
                    };
                    Test::Compare(sql, value)
                }
            };
            conditions.push(Condition { column, test });
        }
        Ok(Filter { conditions })
    }

    /// `true` when it selects every row.
    pub fn is_all(&self) -> bool {
        self.conditions.is_empty()
    }

    /// The SQL condition (`1 = 1` when there is none); its parameters are appended to
    /// `params` and numbered after the ones already there.
    pub(crate) fn sql(
        &self,
        columns: &[Column],
        dialect: Dialect,
        params: &mut Vec<SqlValue>,
    ) -> Result<String, TableError> {
        if self.conditions.is_empty() {
            return Ok("1 = 1".to_owned());
        }
        let mut parts = Vec::with_capacity(self.conditions.len());
        for c in &self.conditions {
            let column = &columns[c.column];
            let name = quote(&column.name);
            let bind = |value: &Value, params: &mut Vec<SqlValue>| {
                let v = column
                    .to_sql(dialect, value)
                    .map_err(|message| TableError::BadFilter {
                        message: format!("{}: {message}", column.name),
                    })?;
                params.push(v);
                Ok::<_, TableError>(column.param(dialect, params.len()))
            };
            parts.push(match &c.test {
                Test::IsNull(true) => format!("{name} IS NULL"),
                Test::IsNull(false) => format!("{name} IS NOT NULL"),
                Test::Compare(op, value) => format!("{name} {op} {}", bind(value, params)?),
                Test::In(values) if values.is_empty() => "1 = 0".to_owned(),
                Test::In(values) => {
                    let mut list = Vec::with_capacity(values.len());
                    for v in values {
                        list.push(bind(v, params)?);
                    }
                    format!("{name} IN ({})", list.join(", "))
                }
            });
        }
        Ok(parts.join(" AND "))
    }
}

const LOOKUPS: &[&str] = &["exact", "in", "gt", "gte", "lt", "lte", "isnull"];
