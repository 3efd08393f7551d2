//! `OrderRow`: the django-cqrs master model of an order (`cqrs_id` `order`, table
//! `orders`), written in the same transaction as the order's events.

use chrono::{DateTime, Utc};
use eventfold::{Root, SqlValue, Transaction};
use eventfold_cqrs::master::{datetime_param, Master, MasterModel, ModelOptions, Pk};
use serde::Serialize;

use crate::order::Order;

/// The master's table.
pub const TABLE: &str = "orders";

/// An order as replicas see it: the current state, one row per order, with django-cqrs's
/// `cqrs_revision` and `cqrs_updated`. Its serde form is the message's `instance_data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderRow {
    /// The order's id (the aggregate id), as text.
    pub id: String,
    /// Who placed it.
    pub customer: String,
    /// `placed`, `paid` or `cancelled`.
    pub status: String,
    /// How many lines it has.
    pub line_count: i64,
    /// The sum of its lines, in cents.
    pub total_cents: i64,
    /// django-cqrs's revision: 0 when created, one more on every save (set by the master).
    pub cqrs_revision: i64,
    /// When it was last saved (set by the master), sent as Python's `str(datetime)`.
    #[serde(with = "eventfold_cqrs::master::datetime")]
    pub cqrs_updated: DateTime<Utc>,
}

impl MasterModel for OrderRow {
    const CQRS_ID: &'static str = "order";

    fn pk(&self) -> Pk {
        self.id.as_str().into()
    }

    fn cqrs_revision(&self) -> i64 {
        self.cqrs_revision
    }

    fn cqrs_updated(&self) -> DateTime<Utc> {
        self.cqrs_updated
    }

    fn set_cqrs(&mut self, revision: i64, updated: DateTime<Utc>) {
        self.cqrs_revision = revision;
        self.cqrs_updated = updated;
    }
}

impl OrderRow {
    /// The row of `order` as its events leave it; the master sets the revision and the
    /// save time when it records the save.
    pub fn of(order: &Root<Order>) -> Self {
        OrderRow {
            id: order.id().to_string(),
            customer: order.customer.clone(),
            status: order.status.as_str().to_owned(),
            line_count: order.lines.len() as i64,
            total_cents: order.total_cents(),
            cqrs_revision: 0,
            cqrs_updated: DateTime::UNIX_EPOCH,
        }
    }

    /// The django-cqrs master of this service: `OrderRow` in table [`TABLE`].
    pub fn master() -> Master {
        Master::new().register_with(ModelOptions::<OrderRow>::new().table(TABLE))
    }

    /// Creates [`TABLE`] unless it exists. `cqrs_updated` is `timestamptz` on PostgreSQL
    /// and Django's naive-UTC text on SQLite, as the master writes it.
    pub async fn create_table(tx: &mut Transaction) -> eventfold::Result<()> {
        let updated = if tx.backend() == "postgres" {
            "TIMESTAMPTZ"
        } else {
            "TEXT"
        };
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
             status TEXT NOT NULL, line_count BIGINT NOT NULL, total_cents BIGINT NOT NULL, \
             cqrs_revision INTEGER NOT NULL, cqrs_updated {updated} NOT NULL)"
        );
        tx.execute(&sql, &[]).await?;
        Ok(())
    }

    /// Records the create with `master`, then inserts the row, in `tx`.
    pub async fn insert(
        &mut self,
        master: &Master,
        tx: &mut Transaction,
    ) -> Result<i64, eventfold_cqrs::master::Error> {
        let saved = master.created(tx, self).await?;
        let sql = format!(
            "INSERT INTO {TABLE} (id, customer, status, line_count, total_cents, cqrs_revision, \
             cqrs_updated) VALUES ($1, $2, $3, $4, $5, $6, {})",
            timestamp_param(tx, "$7")
        );
        let mut params = self.fields();
        params.push(self.cqrs_revision.into());
        params.push(datetime_param(tx.backend(), &self.cqrs_updated));
        tx.execute(&sql, &params).await?;
        Ok(saved.revision)
    }

    /// Records the update with `master` (which bumps the row's revision), then writes the
    /// row's fields, in `tx`.
    pub async fn update(
        &mut self,
        master: &Master,
        tx: &mut Transaction,
    ) -> Result<i64, eventfold_cqrs::master::Error> {
        let saved = master.updated(tx, self).await?;
        let sql = format!(
            "UPDATE {TABLE} SET customer = $2, status = $3, line_count = $4, total_cents = $5 \
             WHERE id = $1"
        );
        tx.execute(&sql, &self.fields()).await?;
        Ok(saved.revision)
    }

    /// The order's own fields, as `$1` to `$5` of the row's statements.
    fn fields(&self) -> Vec<SqlValue> {
        vec![
            self.id.as_str().into(),
            self.customer.as_str().into(),
            self.status.as_str().into(),
            self.line_count.into(),
            self.total_cents.into(),
        ]
    }

    /// The revision of the row of `id`, `None` when there is none.
    pub async fn revision(tx: &mut Transaction, id: &str) -> eventfold::Result<Option<i64>> {
        let rows = tx
            .query(
                &format!("SELECT cqrs_revision FROM {TABLE} WHERE id = $1"),
                &[SqlValue::from(id)],
            )
            .await?;
        Ok(rows.first().and_then(|row| row.first()?.as_i64()))
    }
}

/// `param` as the master binds a `cqrs_updated` value: cast on PostgreSQL
/// ([`datetime_param`] gives its text).
fn timestamp_param(tx: &Transaction, param: &str) -> String {
    if tx.backend() == "postgres" {
        format!("CAST({param} AS TIMESTAMPTZ)")
    } else {
        param.to_owned()
    }
}
