//! Plain tables as master and replica models, with no Rust code: a tables file
//! ([`TablesConfig`]) says which table holds each `cqrs_id` and how its columns map to
//! `instance_data`, and [`Table`] reads and writes its rows through the portable SQL of
//! eventfold's [`Transaction`], the same statements on SQLite and PostgreSQL.
//!
//! # The tables file
//!
//! ```toml
//! # eventfold-cqrs.toml
//! [replica.author]            # a cqrs_id this service replicates
//! table = "authors"           # required
//! schema = "replica"          # optional: PostgreSQL schema / SQLite attached database
//! pk = "id"                   # default "id"
//! revision = "cqrs_revision"  # default "cqrs_revision"
//! updated = "cqrs_updated"    # default "cqrs_updated"
//! ignore = ["internal_note"]  # instance_data keys not written
//! [replica.author.rename]     # instance_data key = column
//! name = "full_name"
//!
//! [master.book]               # a cqrs_id this service publishes (sync, dumps, diffs)
//! table = "books"
//! fields = ["id", "title", "author"]  # default: every column
//! rename = { author = "author_id" }   # instance_data key = column
//! ```
//!
//! A replica writes each key of `instance_data` into the column of the same name (or its
//! rename) and drops keys that have no column, as django-cqrs drops fields its model does
//! not have; `cqrs_revision`, `cqrs_updated` and the primary key must be there. A master
//! row becomes `instance_data` with its columns in table order, `cqrs_revision` an integer
//! and `cqrs_updated` in Python's `str(datetime)` form, as django-cqrs serialises a model.
//!
//! # Column types
//!
//! The table is looked up when it is opened (`pragma_table_info`, `pg_attribute`), and
//! each value is converted by its column's type: integers, reals, booleans (JSON `true`),
//! text, decimals (JSON numbers, as django-cqrs's `ujson` writes a `Decimal` it read
//! from the database: `9.99`, `10.0`; strings are accepted and stored exactly),
//! timestamps with time zone (Python's
//! `str(datetime)` in UTC), naive timestamps, dates, JSON columns (any JSON value) and
//! anything else by its text form (uuid, time, enums). On PostgreSQL each parameter is
//! cast to its column's type, and values SQLite and PostgreSQL do not share are read as
//! text, so one statement shape serves both.

pub(crate) mod column;
mod config;
mod filter;
mod replica;

use std::collections::HashMap;

use eventfold_core::{SqlValue, Transaction};
use serde_json::{Map, Value};

use crate::replica::{padded_len, statement_chunks, FieldMapping};
use crate::wire::{CqrsMessage, SignalType};
use column::{quote, Column, Dialect, Kind};

pub use column::pk_key;
pub use config::{Role, TableSpec, TablesConfig, DEFAULT_CONFIG_FILE};
pub use filter::Filter;
pub use replica::TableReplica;

/// At most this many primary keys in one `IN (...)` list.
pub(crate) const PK_CHUNK: usize = 500;

/// At most this many values in one multi-row statement or `IN` list on PostgreSQL
/// ([`Table::upsert_many`], [`Table::stored_revisions`], [`Table::delete_many`]): a
/// consumer batch of 200 rows of 10 columns in two statements.
pub const MAX_PARAMS: usize = 2000;

/// The same on SQLite: it finds each `$n` by a scan of the statement's parameter names,
/// so binding a statement costs its value count squared (a 1,280-value upsert made
/// `bulk-load` slower than one statement per row); small statements, cached, cost
/// little there, where there is no round trip to save.
pub const SQLITE_MAX_PARAMS: usize = 128;

/// The `instance_data` key of the revision.
pub const REVISION_KEY: &str = "cqrs_revision";
/// The `instance_data` key of the last update's time.
pub const UPDATED_KEY: &str = "cqrs_updated";

/// What went wrong with a table, its configuration or its data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The tables file cannot be read, is not TOML, or says something inconsistent.
    #[error("bad tables file: {message}")]
    Config {
        /// What is wrong, with the file's line when TOML knows it.
        message: String,
    },
    /// The tables file has no table for this `cqrs_id` on this side.
    #[error("unknown cqrs_id {cqrs_id:?}: the tables file has no [{role}.{cqrs_id}] (it has {})", known_list(.role, .known))]
    UnknownCqrsId {
        /// The id asked for.
        cqrs_id: String,
        /// The side it was looked for on.
        role: Role,
        /// The ids there are on that side.
        known: Vec<String>,
    },
    /// The table, or a column the tables file names, is not in the database.
    #[error("{cqrs_id}: {message}")]
    Schema {
        /// The `cqrs_id` of the table.
        cqrs_id: String,
        /// What is missing.
        message: String,
    },
    /// A `--filter` that cannot be used.
    #[error("bad filter: {message}")]
    BadFilter {
        /// Why.
        message: String,
    },
    /// `instance_data` that cannot be written: a required key is missing, or a value
    /// does not fit its column.
    #[error("{cqrs_id}: {message}")]
    BadData {
        /// The `cqrs_id` of the table.
        cqrs_id: String,
        /// Why.
        message: String,
    },
    /// The store refused a statement (or has no SQL: the memory store).
    #[error(transparent)]
    Store(#[from] eventfold_core::Error),
}

fn known_list(role: &Role, known: &[String]) -> String {
    if known.is_empty() {
        format!("no [{role}.*] table")
    } else {
        known.join(", ")
    }
}

/// One master row: its primary key, revision and `instance_data`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MasterRow {
    /// The primary key, as JSON.
    pub pk: Value,
    /// `cqrs_revision`.
    pub revision: i64,
    /// The published fields, as django-cqrs's `to_cqrs_dict`.
    pub data: Map<String, Value>,
}

impl MasterRow {
    /// This row as the SYNC message django-cqrs's `cqrs_sync` sends (no previous data,
    /// no correlation id, empty meta, the default TTL).
    pub fn sync_message(&self, cqrs_id: &str) -> CqrsMessage {
        let mut message = CqrsMessage::new(
            SignalType::Sync,
            cqrs_id,
            self.pk.clone(),
            self.data.clone(),
        );
        message.meta = Some(Value::Object(Map::new()));
        message
    }
}

/// A plain table of the database, opened against its [`TableSpec`]: its columns and
/// their types are known, and each statement is built from them.
#[derive(Debug, Clone)]
pub struct Table {
    cqrs_id: String,
    spec: TableSpec,
    dialect: Dialect,
    qualified: String,
    columns: Vec<Column>,
    pk: usize,
    revision: usize,
    updated: usize,
    /// Master: the columns published, with their `instance_data` keys, in table order.
    published: Vec<(usize, String)>,
    mapping: FieldMapping,
}

impl Table {
    /// Looks the table up in `tx`'s database and checks the spec against it: the table,
    /// its pk, revision and updated columns, every rename's column and (master) every
    /// field must exist. [`TableError::Schema`] says which does not.
    pub async fn open(
        tx: &mut Transaction,
        cqrs_id: &str,
        spec: &TableSpec,
        role: Role,
    ) -> Result<Table, TableError> {
        let dialect = match tx.backend() {
            "sqlite" => Dialect::Sqlite,
            "postgres" => Dialect::Postgres,
            other => {
                return Err(TableError::Schema {
                    cqrs_id: cqrs_id.to_owned(),
                    message: format!(
                    "plain tables need SQL: the {other} store has none (use SQLite or PostgreSQL)"
                ),
                })
            }
        };
        let qualified = match &spec.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&spec.table)),
            None => quote(&spec.table),
        };
        let rows = match dialect {
            Dialect::Sqlite => {
                let schema = spec.schema.as_deref().unwrap_or("main");
                tx.query(
                    "SELECT name, type FROM pragma_table_info($1, $2)",
                    &[spec.table.as_str().into(), schema.into()],
                )
                .await?
            }
            Dialect::Postgres => {
                tx.query(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    &[qualified.as_str().into()],
                )
                .await?
            }
        };
        let columns: Vec<Column> = rows
            .into_iter()
            .filter_map(|row| {
                let mut row = row.into_iter();
                let name = row.next()?.as_str()?.to_owned();
                let ty = row.next().and_then(|t| t.as_str().map(str::to_owned));
                let ty = ty.unwrap_or_default();
                let kind = match dialect {
                    Dialect::Sqlite => Kind::of_sqlite(&ty),
                    Dialect::Postgres => Kind::of_postgres(&ty),
                };
                Some(Column { name, ty, kind })
            })
            .collect();
        let schema_error = |message: String| TableError::Schema {
            cqrs_id: cqrs_id.to_owned(),
            message,
        };
        if columns.is_empty() {
            return Err(schema_error(format!(
                "no table {qualified} in the {} database",
                tx.backend()
            )));
        }
        let find = |what: &str, name: &str| {
            columns.iter().position(|c| c.name == name).ok_or_else(|| {
                schema_error(format!(
                    "{what} column {name:?} is not a column of {qualified} (columns: {})",
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        let pk = find("the pk", &spec.pk)?;
        let revision = find("the revision", &spec.revision)?;
        let updated = find("the updated", &spec.updated)?;
        for (key, column) in &spec.rename {
            find(&format!("the rename of {key:?}"), column)?;
        }
        let mut table = Table {
            cqrs_id: cqrs_id.to_owned(),
            spec: spec.clone(),
            dialect,
            qualified,
            columns,
            pk,
            revision,
            updated,
            published: Vec::new(),
            mapping: spec.rename.iter().fold(
                spec.ignore
                    .iter()
                    .fold(FieldMapping::new(), |m, key| m.ignore(key.clone())),
                |m, (key, column)| m.rename(key.clone(), column.clone()),
            ),
        };
        if role == Role::Master {
            table.published = table.published_columns()?;
        }
        Ok(table)
    }

    fn published_columns(&self) -> Result<Vec<(usize, String)>, TableError> {
        let all: Vec<(usize, String)> = (0..self.columns.len())
            .map(|i| (i, self.key_of(i)))
            .filter(|(_, key)| !self.spec.ignore.contains(key))
            .collect();
        let Some(fields) = &self.spec.fields else {
            return Ok(all);
        };
        if let Some(missing) = fields
            .iter()
            .find(|f| !all.iter().any(|(_, key)| key == *f))
        {
            return Err(TableError::Schema {
                cqrs_id: self.cqrs_id.clone(),
                message: format!(
                    "field {missing:?} is not a column of {} (nor a rename)",
                    self.qualified
                ),
            });
        }
        Ok(all
            .into_iter()
            .filter(|(i, key)| fields.contains(key) || *i == self.revision || *i == self.updated)
            .collect())
    }

    /// The `instance_data` key of column `i`.
    fn key_of(&self, i: usize) -> String {
        if i == self.revision {
            return REVISION_KEY.to_owned();
        }
        if i == self.updated {
            return UPDATED_KEY.to_owned();
        }
        let name = &self.columns[i].name;
        self.spec
            .rename
            .iter()
            .find(|(_, column)| *column == name)
            .map_or_else(|| name.clone(), |(key, _)| key.clone())
    }

    /// The column a filter's field names: `pk`, an `instance_data` key or a column.
    fn field_column(&self, field: &str) -> Option<usize> {
        if field == "pk" {
            return Some(self.pk);
        }
        let by_key = self.spec.column_of(field);
        self.columns
            .iter()
            .position(|c| c.name == by_key)
            .or_else(|| self.columns.iter().position(|c| c.name == field))
    }

    fn field_names(&self) -> Vec<String> {
        (0..self.columns.len()).map(|i| self.key_of(i)).collect()
    }

    /// The `cqrs_id` it holds.
    pub fn cqrs_id(&self) -> &str {
        &self.cqrs_id
    }

    /// The table's name as SQL (quoted, with its schema).
    pub fn sql_name(&self) -> &str {
        &self.qualified
    }

    fn bad_data(&self, message: String) -> TableError {
        TableError::BadData {
            cqrs_id: self.cqrs_id.clone(),
            message,
        }
    }

    fn pk_param(&self, value: &Value, params: &mut Vec<SqlValue>) -> Result<String, TableError> {
        let column = &self.columns[self.pk];
        params.push(
            column
                .to_sql(self.dialect, value)
                .map_err(|m| self.bad_data(format!("primary key: {m}")))?,
        );
        Ok(column.param(self.dialect, params.len()))
    }

    /// The parameters of an `IN (...)` list of `pks`, padded to [`padded_len`] by
    /// repeating the last one (the same rows), so a few statement shapes serve every
    /// batch size.
    fn pk_list(&self, pks: &[&Value], params: &mut Vec<SqlValue>) -> Result<String, TableError> {
        let mut list = Vec::with_capacity(padded_len(pks.len()));
        for pk in pks {
            list.push(self.pk_param(pk, params)?);
        }
        if let Some(last) = pks.last() {
            while list.len() < padded_len(pks.len()) {
                list.push(self.pk_param(last, params)?);
            }
        }
        Ok(list.join(", "))
    }

    /// At most this many values in one statement of this table's backend.
    fn max_params(&self) -> usize {
        match self.dialect {
            Dialect::Sqlite => SQLITE_MAX_PARAMS,
            Dialect::Postgres => MAX_PARAMS,
        }
    }

    // ---- replica side ----

    /// The field mapping of the tables file: renames, then ignored keys dropped. The
    /// mapped keys are column names, except `cqrs_revision` and `cqrs_updated`, which go
    /// to the revision and updated columns.
    pub fn mapping(&self) -> &FieldMapping {
        &self.mapping
    }

    /// The columns and values of mapped data: each key whose column exists (others are
    /// dropped, as django-cqrs drops fields its model lacks); `cqrs_revision`,
    /// `cqrs_updated` and the primary key are required.
    fn row_of(&self, mapped: &Map<String, Value>) -> Result<Vec<(usize, SqlValue)>, TableError> {
        let mut row = Vec::with_capacity(mapped.len());
        for (key, value) in mapped {
            let name = match key.as_str() {
                REVISION_KEY => &self.spec.revision,
                UPDATED_KEY => &self.spec.updated,
                other => other,
            };
            let Some(i) = self.columns.iter().position(|c| c.name == *name) else {
                continue;
            };
            let column = &self.columns[i];
            let value = column
                .to_sql(self.dialect, value)
                .map_err(|m| self.bad_data(format!("{key:?} (column {:?}): {m}", column.name)))?;
            row.push((i, value));
        }
        for (i, key) in [
            (self.pk, self.key_of(self.pk)),
            (self.revision, REVISION_KEY.to_owned()),
            (self.updated, UPDATED_KEY.to_owned()),
        ] {
            if !row.iter().any(|(c, _)| *c == i) {
                return Err(self.bad_data(format!("instance_data has no {key:?}")));
            }
        }
        Ok(row)
    }

    /// The primary key `instance_data` holds (the key of the pk column).
    pub fn pk_of(&self, data: &Map<String, Value>) -> Result<Value, TableError> {
        let key = self.key_of(self.pk);
        data.get(&key)
            .filter(|v| !v.is_null())
            .cloned()
            .ok_or_else(|| self.bad_data(format!("instance_data has no {key:?}")))
    }

    /// The stored revision of the row with primary key `pk`, `None` when there is none.
    pub async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, TableError> {
        let mut params = Vec::with_capacity(1);
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = {}",
            quote(&self.columns[self.revision].name),
            self.qualified,
            quote(&self.columns[self.pk].name),
            self.pk_param(pk, &mut params)?
        );
        let rows = tx.query(&sql, &params).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .and_then(|v| v.as_i64()))
    }

    /// The stored revisions of the rows among `pks` that exist, by [`pk_key`].
    pub async fn stored_revisions<P: std::borrow::Borrow<Value> + Sync>(
        &self,
        tx: &mut Transaction,
        pks: &[P],
    ) -> Result<HashMap<String, i64>, TableError> {
        let mut found = HashMap::with_capacity(pks.len());
        // SQLite looks each `$n` up by name, a scan of the statement's parameters, so a
        // long IN list costs its length squared: a few hundred at a time.
        for chunk in pks.chunks(self.max_params().min(PK_CHUNK)) {
            let mut params = Vec::with_capacity(padded_len(chunk.len()));
            let chunk: Vec<&Value> = chunk.iter().map(|pk| pk.borrow()).collect();
            let sql = format!(
                "SELECT {}, {} FROM {} WHERE {} IN ({})",
                self.columns[self.pk].select(self.dialect),
                quote(&self.columns[self.revision].name),
                self.qualified,
                quote(&self.columns[self.pk].name),
                self.pk_list(&chunk, &mut params)?
            );
            for row in tx.query(&sql, &params).await? {
                let mut row = row.into_iter();
                let (Some(pk), Some(revision)) = (row.next(), row.next()) else {
                    continue;
                };
                let pk = self.columns[self.pk].to_json(pk);
                found.insert(pk_key(&pk), revision.as_i64().unwrap_or(-1));
            }
        }
        Ok(found)
    }

    /// Inserts the row of `mapped` (instance data after [`Self::mapping`]), or updates
    /// the row with its primary key (the columns it has; others keep their values). No
    /// revision check: the replica's rules decide when to call it.
    pub async fn upsert(
        &self,
        tx: &mut Transaction,
        mapped: &Map<String, Value>,
    ) -> Result<(), TableError> {
        self.upsert_many(tx, &[mapped]).await
    }

    /// [`Self::upsert`] of many rows, in multi-row statements (`INSERT ... VALUES (...),
    /// (...) ON CONFLICT DO UPDATE`; rows with the same columns share them, in chunks of
    /// [`statement_chunks`] of up to [`MAX_PARAMS`] values, [`SQLITE_MAX_PARAMS`] on
    /// SQLite). The primary keys must
    /// differ: PostgreSQL refuses to
    /// update one row twice in a statement. Data that does not fit is
    /// [`TableError::BadData`] before anything is written.
    pub async fn upsert_many(
        &self,
        tx: &mut Transaction,
        mapped: &[&Map<String, Value>],
    ) -> Result<(), TableError> {
        // Rows by their columns, in order of first appearance (django-cqrs sends every
        // field each time, so a batch is nearly always one group).
        let mut groups: Vec<(Vec<usize>, Vec<Vec<SqlValue>>)> = Vec::new();
        for data in mapped {
            let (columns, values): (Vec<usize>, Vec<SqlValue>) =
                self.row_of(data)?.into_iter().unzip();
            match groups.iter_mut().find(|(c, _)| *c == columns) {
                Some((_, rows)) => rows.push(values),
                None => groups.push((columns, vec![values])),
            }
        }
        for (columns, rows) in groups {
            let names: Vec<String> = columns
                .iter()
                .map(|&i| quote(&self.columns[i].name))
                .collect();
            let updates: Vec<String> = columns
                .iter()
                .zip(&names)
                .filter(|(&i, _)| i != self.pk)
                .map(|(_, name)| format!("{name} = excluded.{name}"))
                .collect();
            for range in statement_chunks(rows.len(), self.max_params() / columns.len()) {
                let chunk = &rows[range];
                let mut params = Vec::with_capacity(chunk.len() * columns.len());
                let mut tuples = Vec::with_capacity(chunk.len());
                for row in chunk {
                    let mut tuple = Vec::with_capacity(columns.len());
                    for (&i, value) in columns.iter().zip(row) {
                        params.push(value.clone());
                        tuple.push(self.columns[i].param(self.dialect, params.len()));
                    }
                    tuples.push(format!("({})", tuple.join(", ")));
                }
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
                    self.qualified,
                    names.join(", "),
                    tuples.join(", "),
                    quote(&self.columns[self.pk].name),
                    updates.join(", ")
                );
                tx.execute(&sql, &params).await?;
            }
        }
        Ok(())
    }

    /// Deletes the row with primary key `pk`; returns how many rows went (0 or 1).
    pub async fn delete(&self, tx: &mut Transaction, pk: &Value) -> Result<u64, TableError> {
        self.delete_many(tx, &[pk]).await
    }

    /// Deletes the rows with these primary keys (`DELETE ... WHERE pk IN (...)`, a few
    /// hundred at a time); returns how many rows went.
    pub async fn delete_many(
        &self,
        tx: &mut Transaction,
        pks: &[&Value],
    ) -> Result<u64, TableError> {
        let mut deleted = 0;
        for chunk in pks.chunks(self.max_params().min(PK_CHUNK)) {
            let mut params = Vec::with_capacity(padded_len(chunk.len()));
            let sql = format!(
                "DELETE FROM {} WHERE {} IN ({})",
                self.qualified,
                quote(&self.columns[self.pk].name),
                self.pk_list(chunk, &mut params)?
            );
            deleted += tx.execute(&sql, &params).await?;
        }
        Ok(deleted)
    }

    /// Deletes every row (`bulk-load --clear`).
    pub async fn delete_all(&self, tx: &mut Transaction) -> Result<u64, TableError> {
        Ok(tx
            .execute(&format!("DELETE FROM {}", self.qualified), &[])
            .await?)
    }

    // ---- master side ----

    /// How many rows `filter` selects.
    pub async fn count(&self, tx: &mut Transaction, filter: &Filter) -> Result<u64, TableError> {
        let mut params = Vec::new();
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {}",
            self.qualified,
            filter.sql(&self.columns, self.dialect, &mut params)?
        );
        let rows = tx.query(&sql, &params).await?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::as_i64)
            .unwrap_or(0) as u64)
    }

    /// Up to `limit` rows that `filter` selects, in primary-key order, after the row
    /// `after` (keyset paging: pass the last pk of the previous page).
    pub async fn rows(
        &self,
        tx: &mut Transaction,
        filter: &Filter,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<MasterRow>, TableError> {
        let mut selected: Vec<usize> = vec![self.pk, self.revision];
        selected.extend(self.published.iter().map(|(i, _)| *i));
        let rows = self.page(tx, &selected, filter, after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut values = row.into_iter();
                let pk = self.columns[self.pk].to_json(values.next().unwrap_or(SqlValue::Null));
                let revision = values.next().and_then(|v| v.as_i64()).unwrap_or(0);
                let data = self
                    .published
                    .iter()
                    .zip(values)
                    .map(|((i, key), v)| (key.clone(), self.columns[*i].to_json(v)))
                    .collect();
                MasterRow { pk, revision, data }
            })
            .collect())
    }

    /// Like [`Self::rows`], only each row's primary key and revision (`diff-master`).
    pub async fn revisions(
        &self,
        tx: &mut Transaction,
        filter: &Filter,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<(Value, i64)>, TableError> {
        let rows = self
            .page(tx, &[self.pk, self.revision], filter, after, limit)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut values = row.into_iter();
                let pk = self.columns[self.pk].to_json(values.next().unwrap_or(SqlValue::Null));
                (pk, values.next().and_then(|v| v.as_i64()).unwrap_or(0))
            })
            .collect())
    }

    async fn page(
        &self,
        tx: &mut Transaction,
        selected: &[usize],
        filter: &Filter,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Vec<SqlValue>>, TableError> {
        let mut params = Vec::new();
        let mut condition = filter.sql(&self.columns, self.dialect, &mut params)?;
        let pk = quote(&self.columns[self.pk].name);
        if let Some(after) = after {
            let p = self.pk_param(after, &mut params)?;
            condition = format!("({condition}) AND {pk} > {p}");
        }
        params.push(SqlValue::Integer(limit.min(i64::MAX as usize) as i64));
        let sql = format!(
            "SELECT {} FROM {} WHERE {condition} ORDER BY {pk} LIMIT ${}",
            selected
                .iter()
                .map(|i| self.columns[*i].select(self.dialect))
                .collect::<Vec<_>>()
                .join(", "),
            self.qualified,
            params.len()
        );
        Ok(tx.query(&sql, &params).await?)
    }
}
