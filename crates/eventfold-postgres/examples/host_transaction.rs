//! Saving an aggregate in the application's own transaction.
//!
//! An order service keeps an ordinary `orders` table (for its own queries) and an
//! event-sourced `Order` aggregate. Both are written in one PostgreSQL transaction:
//! committed, both exist; rolled back, neither does. The first order goes through a sqlx
//! transaction the service opened itself ([`PostgresStore::join`]), the second through one
//! the application opened ([`Application::begin`]).
//!
//! ```sh
//! EVENTFOLD_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run -p eventfold-postgres --example host_transaction
//! ```
//!
//! It works in a schema of its own (`eventfold_example_<random>`) and drops it at the end.

use anyhow::{ensure, Context};
use eventfold_core::{Aggregate, Application, EventReader, Root, StreamQuery};
use eventfold_postgres::{PostgresConfig, PostgresStore, PostgresTransactionExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    lines: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum OrderEvent {
    Placed { customer: String },
    LineAdded { item: String },
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Id = uuid::Uuid;
    type Event = OrderEvent;

    fn apply(&mut self, event: &OrderEvent) {
        if let OrderEvent::LineAdded { item } = event {
            self.lines.push(item.clone());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("EVENTFOLD_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut config = PostgresConfig::new(url);
    config.schema = format!(
        "eventfold_example_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let store = PostgresStore::connect(&config)
        .await
        .context("connecting to PostgreSQL")?;
    let outcome = run(&store).await;
    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema))
        .execute(store.pool())
        .await?;
    outcome
}

async fn run(store: &PostgresStore) -> anyhow::Result<()> {
    let schema = &store.config().schema;
    let orders = format!("\"{schema}\".orders");
    sqlx::query(&format!(
        "CREATE TABLE {orders} (id uuid PRIMARY KEY, customer text NOT NULL, lines int NOT NULL)"
    ))
    .execute(store.pool())
    .await?;
    let app = Application::builder(store.clone()).build();

    // 1. Commit: the order row and the order's events land together.
    let mut order = Root::<Order>::new(OrderEvent::Placed {
        customer: "ada".into(),
    });
    order.trigger(OrderEvent::LineAdded {
        item: "teapot".into(),
    });
    let mut tx = store.join(store.pool().begin().await?);
    sqlx::query(&format!("INSERT INTO {orders} VALUES ($1, $2, $3)"))
        .bind(order.id())
        .bind("ada")
        .bind(order.lines.len() as i32)
        .execute(tx.postgres()?)
        .await?;
    let ids = app.save_in(&mut tx, &mut order).await?;
    tx.commit().await?;
    println!(
        "committed order {} with notification ids {ids:?}",
        order.id()
    );

    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {orders}"))
        .fetch_one(store.pool())
        .await?;
    let loaded = app.repository().get::<Order>(order.id()).await?;
    ensure!(rows == 1 && loaded.lines == ["teapot"] && loaded.version() == 2);
    println!(
        "  orders table: {rows} row; aggregate at version {} with lines {:?}",
        loaded.version(),
        loaded.lines
    );

    // 2. Roll back: neither the row nor the events exist afterwards.
    let mut second = Root::<Order>::new(OrderEvent::Placed {
        customer: "grace".into(),
    });
    let mut tx = app.begin().await?;
    sqlx::query(&format!("INSERT INTO {orders} VALUES ($1, $2, 0)"))
        .bind(second.id())
        .bind("grace")
        .execute(tx.postgres()?)
        .await?;
    app.save_in(&mut tx, &mut second).await?;
    tx.rollback().await?;
    // `second` now believes it was saved; after a rollback, reload instead of reusing it.
    drop(second);

    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {orders}"))
        .fetch_one(store.pool())
        .await?;
    let streams: i64 = sqlx::query_scalar(&format!(
        "SELECT count(DISTINCT stream_id) FROM {}",
        store.table_name("events")
    ))
    .fetch_one(store.pool())
    .await?;
    ensure!(
        rows == 1 && streams == 1,
        "the rollback left something behind"
    );
    println!("rolled back a second order: still {rows} order row and {streams} event stream");
    let events = store
        .select_events(&order.id().to_string(), StreamQuery::all())
        .await?;
    println!(
        "  the committed order's events: {:?}",
        events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>()
    );
    Ok(())
}
