//! The projection: orders and their totals per status, a typed [`View`] over the order
//! events, in the service's own store.

use async_trait::async_trait;
use eventfold::{BoxError, Envelope, Handles, Store, Subscriptions, Transaction, View};
use serde::Serialize;

use crate::order::{Order, OrderEvent, Status};

const CREATE_TOTALS: &str = "CREATE TABLE IF NOT EXISTS order_totals \
    (status TEXT PRIMARY KEY, orders BIGINT NOT NULL, total_cents BIGINT NOT NULL)";
// Where each order stands, so that a payment or a cancellation knows what to move from
// which status (the events say what happened, not what the order held).
const CREATE_STANDING: &str = "CREATE TABLE IF NOT EXISTS order_totals_standing \
    (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_cents BIGINT NOT NULL)";

/// One row of the projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusTotal {
    /// `placed`, `paid` or `cancelled`.
    pub status: String,
    /// Orders in that status now.
    pub orders: i64,
    /// The sum of their totals, in cents.
    pub total_cents: i64,
}

/// A view into the table `order_totals(status, orders, total_cents)`. Its rows commit
/// with its tracked position, so each event counts once, across restarts; its SQL is
/// portable, so it runs on SQLite and PostgreSQL alike.
///
/// Run it with `Follower::view(&app, OrderTotals::NAME, OrderTotals)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderTotals;

impl OrderTotals {
    /// The view's follower name, which keys its tracked position.
    pub const NAME: &'static str = "order-totals";

    /// The projection's rows, by status (none before the view handled an event).
    pub async fn read(store: &dyn Store) -> eventfold::Result<Vec<StatusTotal>> {
        // In a transaction that is then rolled back: the table is created for the read if
        // the view never ran, and left as it was.
        let mut tx = store.begin().await?;
        tx.execute(CREATE_TOTALS, &[]).await?;
        let rows = tx
            .query(
                "SELECT status, orders, total_cents FROM order_totals ORDER BY status",
                &[],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(|row| StatusTotal {
                status: row[0].as_str().unwrap_or_default().to_owned(),
                orders: row[1].as_i64().unwrap_or_default(),
                total_cents: row[2].as_i64().unwrap_or_default(),
            })
            .collect())
    }

    async fn add(
        tx: &mut Transaction,
        status: &str,
        orders: i64,
        cents: i64,
    ) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO order_totals (status, orders, total_cents) VALUES ($1, $2, $3) \
             ON CONFLICT (status) DO UPDATE SET orders = order_totals.orders + $2, \
             total_cents = order_totals.total_cents + $3",
            &[status.into(), orders.into(), cents.into()],
        )
        .await?;
        Ok(())
    }

    /// Moves the order from the status it stands in to `to`, with its total.
    async fn move_to(tx: &mut Transaction, order_id: &str, to: Status) -> Result<(), BoxError> {
        let rows = tx
            .query(
                "SELECT status, total_cents FROM order_totals_standing WHERE order_id = $1",
                &[order_id.into()],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| format!("order {order_id} changed status before it was placed"))?;
        let from = row[0].as_str().unwrap_or_default().to_owned();
        let cents = row[1].as_i64().unwrap_or_default();
        Self::add(tx, &from, -1, -cents).await?;
        Self::add(tx, to.as_str(), 1, cents).await?;
        tx.execute(
            "UPDATE order_totals_standing SET status = $2 WHERE order_id = $1",
            &[order_id.into(), to.as_str().into()],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl View for OrderTotals {
    fn subscribe(to: &mut Subscriptions<Self>) {
        to.aggregate::<Order>();
    }

    async fn setup(&mut self, tx: &mut Transaction) -> Result<(), BoxError> {
        tx.execute(CREATE_TOTALS, &[]).await?;
        tx.execute(CREATE_STANDING, &[]).await?;
        Ok(())
    }
}

#[async_trait]
impl Handles<Order> for OrderTotals {
    async fn handle(&mut self, tx: &mut Transaction, e: Envelope<Order>) -> Result<(), BoxError> {
        let order_id = e.id.to_string();
        match e.event {
            OrderEvent::Placed { .. } => {
                tx.execute(
                    "INSERT INTO order_totals_standing (order_id, status, total_cents) \
                     VALUES ($1, $2, 0)",
                    &[order_id.into(), Status::Placed.as_str().into()],
                )
                .await?;
                Self::add(tx, Status::Placed.as_str(), 1, 0).await?;
            }
            OrderEvent::LineAdded(line) => {
                let cents = line.amount_cents();
                tx.execute(
                    "UPDATE order_totals_standing SET total_cents = total_cents + $2 \
                     WHERE order_id = $1",
                    &[order_id.into(), cents.into()],
                )
                .await?;
                // Lines are only added to placed orders.
                Self::add(tx, Status::Placed.as_str(), 0, cents).await?;
            }
            OrderEvent::Paid { .. } => Self::move_to(tx, &order_id, Status::Paid).await?,
            OrderEvent::Cancelled { .. } => Self::move_to(tx, &order_id, Status::Cancelled).await?,
        }
        Ok(())
    }
}
