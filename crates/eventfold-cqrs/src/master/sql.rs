//! The statement a save or delete runs on the caller's row: the revision bump.

use chrono::{DateTime, Utc};
use eventfold_core::{SqlValue, Transaction};

use super::{Error, Pk};

/// `name` as a quoted SQL identifier; a dot separates a schema from a table
/// (`shop.item` → `"shop"."item"`). Quotes inside a part are doubled, so no name can end
/// the identifier early.
pub(crate) fn quote_identifier(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("an empty identifier".to_owned());
    }
    name.split('.')
        .map(|part| {
            if part.is_empty() || part.contains('\0') {
                Err(format!("{name:?} is not an identifier"))
            } else {
                Ok(crate::table::column::quote(part))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|parts| parts.join("."))
}

/// The bump statement of one model, built once at registration, for each backend.
#[derive(Debug, Clone)]
pub(crate) struct Bump {
    postgres: String,
    sqlite: String,
    /// SQLite reads the bumped revision back with its own SELECT: see [`Bump::run`].
    sqlite_revision: String,
}

impl Bump {
    /// `UPDATE <table> SET <rev> = <rev> + 1, <updated> = $1 WHERE <pk> = $2 RETURNING <rev>`
    /// (on SQLite without `RETURNING`, and a SELECT of `<rev>`).
    /// On PostgreSQL the timestamp is cast to `timestamptz` (Django's `DateTimeField`
    /// there), and the key to `pk_type` when the model names one (a `uuid` column).
    pub(crate) fn new(
        table: &str,
        pk: &str,
        revision: &str,
        updated: &str,
        pk_type: Option<&str>,
    ) -> Result<Self, String> {
        let table = quote_identifier(table)?;
        let pk = quote_identifier(pk)?;
        let revision = quote_identifier(revision)?;
        let updated = quote_identifier(updated)?;
        let pg_key = match pk_type {
            Some(ty) => {
                if !ty
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ')
                {
                    return Err(format!("{ty:?} is not a type name"));
                }
                format!("CAST($2 AS {ty})")
            }
            None => "$2".to_owned(),
        };
        Ok(Bump {
            postgres: format!(
                "UPDATE {table} SET {revision} = {revision} + 1, \
                 {updated} = CAST($1 AS TIMESTAMPTZ) WHERE {pk} = {pg_key} RETURNING {revision}"
            ),
            sqlite: format!(
                "UPDATE {table} SET {revision} = {revision} + 1, {updated} = $1 WHERE {pk} = $2"
            ),
            sqlite_revision: format!("SELECT {revision} FROM {table} WHERE {pk} = $1"),
        })
    }

    /// Bumps the row of `pk` in `tx` and returns its new revision; `None` when there is
    /// no such row. On PostgreSQL the row stays locked until `tx` ends, so a concurrent
    /// save of the same instance waits and then bumps the revision this one committed.
    ///
    /// On SQLite the UPDATE has no `RETURNING`: SQLite buffers the rows a `RETURNING`
    /// returns in a temporary b-tree it opens and closes per statement, which made the
    /// bump cost more than the caller's whole UPDATE: about 32,000 instructions, against
    /// 18,000 for this UPDATE and the SELECT that reads the revision back (callgrind,
    /// `eventfold bench replication --phases record_only`). The transaction holds
    /// SQLite's one write lock from its `BEGIN IMMEDIATE`, so nothing can change the row
    /// between the two.
    pub(crate) async fn run(
        &self,
        tx: &mut Transaction,
        pk: &Pk,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, Error> {
        let params = [datetime_param(tx.backend(), &now), pk.to_sql()];
        let rows = if tx.backend() == "postgres" {
            tx.query(&self.postgres, &params).await?
        } else {
            if tx.execute(&self.sqlite, &params).await? == 0 {
                return Ok(None);
            }
            let [_, key] = params;
            tx.query(&self.sqlite_revision, &[key]).await?
        };
        match rows.first().and_then(|row| row.first()) {
            None => Ok(None),
            Some(SqlValue::Integer(revision)) => Ok(Some(*revision)),
            Some(other) => Err(Error::Revision(format!(
                "the revision column holds {other:?}, not an integer"
            ))),
        }
    }
}

/// A datetime as eventfold binds it for a `cqrs_updated` column on `backend`
/// ([`eventfold_core::Transaction::backend`]), for the caller's own writes of the same
/// column: on PostgreSQL RFC 3339 text (cast it: `CAST($n AS TIMESTAMPTZ)`), elsewhere
/// what Django writes into SQLite, naive UTC text with microseconds only when there are any
/// (`2026-11-23 00:41:49.191666`).
pub fn datetime_param(backend: &str, value: &DateTime<Utc>) -> SqlValue {
    let text = if backend == "postgres" {
        value.to_rfc3339()
    } else {
        crate::wire::civil_datetime(value, ' ', true, "")
    };
    SqlValue::Text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_cannot_break_out() {
        assert_eq!(quote_identifier("item").unwrap(), "\"item\"");
        assert_eq!(quote_identifier("shop.item").unwrap(), "\"shop\".\"item\"");
        assert_eq!(
            quote_identifier("a\"; DROP TABLE x; --").unwrap(),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert!(quote_identifier("").is_err());
        assert!(quote_identifier("shop.").is_err());
        assert!(quote_identifier("a\0b").is_err());
    }

    #[test]
    fn datetimes_bind_as_each_backend_stores_them() {
        let at = crate::wire::parse_datetime("2026-11-23 00:41:49.191666+00:00").unwrap();
        let whole = crate::wire::parse_datetime("2026-11-23 00:41:49+00:00").unwrap();
        let text = |backend, t| datetime_param(backend, t).as_str().unwrap().to_owned();
        assert_eq!(text("sqlite", &at), "2026-11-23 00:41:49.191666");
        assert_eq!(text("sqlite", &whole), "2026-11-23 00:41:49");
        assert_eq!(text("postgres", &at), "2026-11-23T00:41:49.191666+00:00");
    }

    #[test]
    fn one_statement_per_backend() {
        let bump = Bump::new("app_item", "id", "cqrs_revision", "cqrs_updated", None).unwrap();
        assert_eq!(
            bump.sqlite,
            "UPDATE \"app_item\" SET \"cqrs_revision\" = \"cqrs_revision\" + 1, \
             \"cqrs_updated\" = $1 WHERE \"id\" = $2"
        );
        assert_eq!(
            bump.sqlite_revision,
            "SELECT \"cqrs_revision\" FROM \"app_item\" WHERE \"id\" = $1"
        );
        assert!(bump
            .postgres
            .contains("\"cqrs_updated\" = CAST($1 AS TIMESTAMPTZ) WHERE \"id\" = $2"));
        let uuid = Bump::new("t", "id", "r", "u", Some("uuid")).unwrap();
        assert!(uuid.postgres.contains("WHERE \"id\" = CAST($2 AS uuid)"));
        assert!(Bump::new("t", "id", "r", "u", Some("uuid); --")).is_err());
    }
}
