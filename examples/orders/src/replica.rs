//! The replica service's side: the replicated `orders` table in its own database, the
//! django-cqrs replica model that writes it, and the HTTP routes that read it.

use async_trait::async_trait;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use eventfold::{BoxError, SqlRow, Store, Transaction};
use eventfold_cqrs::replica::{Change, TypedReplicaModel};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::row::{OrderRow, TABLE};
use crate::service::ServiceError;
use eventfold_cqrs::master::MasterModel;

const COLUMNS: &str = "id, customer, status, line_count, total_cents, cqrs_revision, cqrs_updated";

/// A replicated order: the master's `instance_data`, `cqrs_updated` kept as the text
/// the master sent (Python's `str(datetime)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaOrder {
    /// The order's id.
    pub id: String,
    /// Who placed it.
    pub customer: String,
    /// `placed`, `paid` or `cancelled`.
    pub status: String,
    /// How many lines it has.
    pub line_count: i64,
    /// The sum of its lines, in cents.
    pub total_cents: i64,
    /// The master's revision this row is at.
    pub cqrs_revision: i64,
    /// When the master saved it.
    pub cqrs_updated: String,
}

impl ReplicaOrder {
    fn from_row(row: &SqlRow) -> Self {
        let text = |i: usize| row[i].as_str().unwrap_or_default().to_owned();
        let int = |i: usize| row[i].as_i64().unwrap_or_default();
        ReplicaOrder {
            id: text(0),
            customer: text(1),
            status: text(2),
            line_count: int(3),
            total_cents: int(4),
            cqrs_revision: int(5),
            cqrs_updated: text(6),
        }
    }

    async fn write(&self, tx: &mut Transaction, sql: &str) -> Result<(), BoxError> {
        tx.execute(
            sql,
            &[
                self.id.as_str().into(),
                self.customer.as_str().into(),
                self.status.as_str().into(),
                self.line_count.into(),
                self.total_cents.into(),
                self.cqrs_revision.into(),
                self.cqrs_updated.as_str().into(),
            ],
        )
        .await?;
        Ok(())
    }
}

/// The replica model of `OrderRow` (`cqrs_id` `order`) over the replica's table
/// `orders`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplicaOrders;

impl ReplicaOrders {
    /// Creates the replica's `orders` table unless it exists.
    pub async fn create_table(store: &dyn Store) -> eventfold::Result<()> {
        let mut tx = store.begin().await?;
        tx.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
                 status TEXT NOT NULL, line_count BIGINT NOT NULL, \
                 total_cents BIGINT NOT NULL, cqrs_revision INTEGER NOT NULL, \
                 cqrs_updated TEXT NOT NULL)"
            ),
            &[],
        )
        .await?;
        tx.commit().await
    }

    /// The replicated order `id`, `None` when it has not arrived (yet).
    pub async fn get(store: &dyn Store, id: &str) -> eventfold::Result<Option<ReplicaOrder>> {
        Ok(Self::select(store, "WHERE id = $1", &[id.into()])
            .await?
            .into_iter()
            .next())
    }

    /// Every replicated order, by id.
    pub async fn all(store: &dyn Store) -> eventfold::Result<Vec<ReplicaOrder>> {
        Self::select(store, "ORDER BY id", &[]).await
    }

    async fn select(
        store: &dyn Store,
        clause: &str,
        params: &[eventfold::SqlValue],
    ) -> eventfold::Result<Vec<ReplicaOrder>> {
        let mut tx = store.begin().await?;
        let rows = tx
            .query(&format!("SELECT {COLUMNS} FROM {TABLE} {clause}"), params)
            .await?;
        tx.rollback().await?;
        Ok(rows.iter().map(ReplicaOrder::from_row).collect())
    }

    /// The routes of the replica service: `GET /orders` and `GET /orders/{id}`.
    pub fn router(store: Arc<dyn Store>) -> Router {
        Router::new()
            .route("/orders", get(list))
            .route("/orders/{id}", get(one))
            .with_state(store)
    }
}

#[async_trait]
impl TypedReplicaModel for ReplicaOrders {
    type Instance = ReplicaOrder;

    fn cqrs_id(&self) -> &str {
        OrderRow::CQRS_ID
    }

    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        let id = pk.as_str().ok_or("an order's pk is its id as text")?;
        Ok(OrderRow::revision(tx, id).await?)
    }

    async fn create(
        &self,
        tx: &mut Transaction,
        order: ReplicaOrder,
        _: &Change<'_>,
    ) -> Result<(), BoxError> {
        let sql = format!("INSERT INTO {TABLE} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        order.write(tx, &sql).await
    }

    async fn update(
        &self,
        tx: &mut Transaction,
        order: ReplicaOrder,
        _: &Change<'_>,
    ) -> Result<(), BoxError> {
        let sql = format!(
            "UPDATE {TABLE} SET customer = $2, status = $3, line_count = $4, total_cents = $5, \
             cqrs_revision = $6, cqrs_updated = $7 WHERE id = $1"
        );
        order.write(tx, &sql).await
    }

    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        let id = change
            .pk
            .as_str()
            .ok_or("an order's pk is its id as text")?;
        tx.execute(&format!("DELETE FROM {TABLE} WHERE id = $1"), &[id.into()])
            .await?;
        Ok(())
    }
}

async fn list(
    State(store): State<Arc<dyn Store>>,
) -> Result<Json<Vec<ReplicaOrder>>, ServiceError> {
    Ok(Json(ReplicaOrders::all(&*store).await?))
}

async fn one(
    State(store): State<Arc<dyn Store>>,
    id: Result<Path<uuid::Uuid>, PathRejection>,
) -> Result<Json<ReplicaOrder>, ServiceError> {
    let Path(id) = id?;
    ReplicaOrders::get(&*store, &id.to_string())
        .await?
        .map(Json)
        .ok_or(ServiceError::NotFound(id))
}
