//! How fast the tooling moves rows: bulk dump, bulk load (into an empty table, then the
//! same dump again, all skipped as duplicates), diff-master and diff-replica, and sync
//! with publisher confirms, on SQLite and on PostgreSQL (a schema of its own), against
//! the broker at EVENTFOLD_TEST_AMQP_URL or guest@127.0.0.1 (a vhost of its own).
//!
//! `cargo run --release -p eventfold-cqrs --example tooling_rates [rows]` (default 20000).
//! Prints figures, then one JSON line.

use std::sync::Arc;
use std::time::Instant;

use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, ExchangeKind, PublisherOptions};
use eventfold_core::Store;
use eventfold_cqrs::table::{Filter, Role, TablesConfig};
use eventfold_cqrs::tooling::{self, NoProgress, SyncTarget};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use eventfold_sqlite::{SqliteConfig, SqliteStore};
use eventfold_testkit::TestVhost;
use serde_json::{json, Value};

const BATCH: usize = 10_000;

fn per_s(n: usize, since: Instant) -> f64 {
    (n as f64 / since.elapsed().as_secs_f64()).round()
}

async fn measure(
    name: &str,
    store: Arc<dyn Store>,
    schema: Option<&str>,
    rows: usize,
    publisher: &ConfirmedPublisher,
) -> anyhow::Result<Value> {
    let (ddl_types, q) = match schema {
        Some(s) => (
            ("BIGINT", "NUMERIC(10,2)", "JSONB", "TIMESTAMPTZ"),
            format!("\"{s}\"."),
        ),
        None => (
            ("INTEGER", "DECIMAL(10,2)", "JSON", "DATETIME"),
            String::new(),
        ),
    };
    let (int, num, js, ts) = ddl_types;
    let mut tx = store.begin().await?;
    for table in ["items", "copies"] {
        tx.execute(
            &format!(
                "CREATE TABLE {q}{table} (id {int} PRIMARY KEY, title TEXT NOT NULL, \
                 price {num}, tags {js}, cqrs_revision INTEGER NOT NULL, cqrs_updated {ts} NOT NULL)"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    let schema_line = schema
        .map(|s| format!("schema = \"{s}\"\n"))
        .unwrap_or_default();
    let master = TablesConfig::from_toml(&format!(
        "[master.item]\ntable = \"items\"\n{schema_line}[replica.item]\ntable = \"items\"\n{schema_line}"
    ))?;
    let copies = TablesConfig::from_toml(&format!(
        "[master.item]\ntable = \"copies\"\n{schema_line}[replica.item]\ntable = \"copies\"\n{schema_line}"
    ))?;
    let writer = tooling::open_table(&*store, &master, Role::Replica, "item").await?;
    let mut tx = store.begin().await?;
    for id in 1..=rows as i64 {
        let data = json!({"id": id, "title": format!("item {id}"), "price": "9.99",
            "tags": {"n": id}, "cqrs_revision": id % 7,
            "cqrs_updated": "2026-11-23 00:41:49.191666+00:00"});
        writer.upsert(&mut tx, data.as_object().unwrap()).await?;
    }
    tx.commit().await?;
    let table = tooling::open_table(&*store, &master, Role::Master, "item").await?;

    let t = Instant::now();
    let mut dump = Vec::new();
    tooling::bulk_dump(&*store, &table, &mut dump, BATCH, &mut NoProgress).await?;
    let dump_rate = per_s(rows, t);

    let t = Instant::now();
    let first = load(&*store, &copies, &dump).await?;
    let load_rate = per_s(rows, t);
    let t = Instant::now();
    let again = load(&*store, &copies, &dump).await?;
    let reload_rate = per_s(rows, t);
    assert_eq!((first.loaded, again.skipped), (rows as u64, rows as u64));

    let t = Instant::now();
    let mut diff = Vec::new();
    tooling::diff_master(&*store, &table, &Filter::all(), &mut diff, BATCH).await?;
    let diff_master_rate = per_s(rows, t);
    let t = Instant::now();
    let differing = tooling::diff_replica(
        &*store,
        &copies,
        &mut diff.as_slice(),
        &mut std::io::sink(),
        None,
        &mut std::io::sink(),
    )
    .await?;
    let diff_replica_rate = per_s(rows, t);
    assert_eq!(differing, 0);

    let t = Instant::now();
    let target = SyncTarget {
        exchange: "cqrs",
        queue: Some("rates"),
    };
    let report = tooling::sync(
        &*store,
        &table,
        &Filter::all(),
        publisher,
        target,
        BATCH,
        &mut NoProgress,
    )
    .await?;
    let sync_rate = per_s(rows, t);
    assert_eq!(report.confirmed, rows as u64);

    println!(
        "{name}: dump {dump_rate} rows/s, load {load_rate} rows/s (again, all skipped: \
         {reload_rate}), diff-master {diff_master_rate} rows/s, diff-replica \
         {diff_replica_rate} rows/s, sync {sync_rate} rows/s confirmed"
    );
    Ok(json!({
        "dump_rows_per_s": dump_rate,
        "load_rows_per_s": load_rate,
        "reload_skipped_rows_per_s": reload_rate,
        "diff_master_rows_per_s": diff_master_rate,
        "diff_replica_rows_per_s": diff_replica_rate,
        "sync_rows_per_s": sync_rate,
    }))
}

async fn load(
    store: &dyn Store,
    config: &TablesConfig,
    mut dump: &[u8],
) -> Result<tooling::LoadReport, tooling::ToolError> {
    tooling::bulk_load(
        store,
        config,
        &mut dump,
        false,
        BATCH,
        &mut NoProgress,
        &mut std::io::sink(),
    )
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20_000);
    let vhost = TestVhost::with_prefix("ef-cqrs-rates");
    let publisher = ConfirmedPublisher::connect(
        AmqpConfig::from_url(&vhost.url())?,
        PublisherOptions::default(),
    )
    .await?;
    publisher
        .declare_exchange("cqrs", ExchangeKind::Topic)
        .await?;
    vhost
        .raw()
        .await
        .bound_queue("rates", "cqrs", "cqrs.rates.item")
        .await;

    let dir = tempfile::tempdir()?;
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&SqliteConfig::new(
        dir.path().join("rates.sqlite3"),
    ))?);
    let sqlite_figures = measure("sqlite", sqlite, None, rows, &publisher).await?;

    let schema = format!(
        "eventfold_rates_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut config = PostgresConfig::new(
        std::env::var("EVENTFOLD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
    );
    config.schema = schema.clone();
    let postgres = Arc::new(PostgresStore::connect(&config).await?);
    let figures = measure(
        "postgres",
        postgres.clone(),
        Some(&schema),
        rows,
        &publisher,
    )
    .await;
    let mut tx = postgres.begin().await?;
    tx.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
        .await?;
    tx.commit().await?;
    let postgres_figures = figures?;
    publisher.close().await?;
    println!(
        "{}",
        json!({"rows": rows, "sqlite": sqlite_figures, "postgres": postgres_figures})
    );
    Ok(())
}
