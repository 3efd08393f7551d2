//! How fast the replica consumer applies a backlog, against the broker's own
//! consume-and-ack rate in the same run: N django-cqrs messages (N/2 items, create then
//! update) wait in the queue; a plain lapin consumer (prefetch 1000) takes and acks a
//! copy of them, one ack per message and then one multiple-ack per 100; then the replica
//! consumer applies them into SQLite (or PostgreSQL, `--backend postgres`). Runs in a
//! temporary virtual host. Prints readable lines, then one JSON line.
//!
//! ```sh
//! cargo run --release -p eventfold-cqrs --example replica_backlog -- -n 100000 --workers 4 --batch 200
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, Outcome, OutgoingMessage, PublisherOptions};
use eventfold_core::{async_trait, BoxError, Store, Transaction};
use eventfold_cqrs::replica::{
    Change, ReplicaConsumer, ReplicaModels, ReplicaOptions, Typed, TypedReplicaModel,
};
use eventfold_cqrs::wire::{CqrsMessage, SignalType};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};

#[derive(serde::Deserialize)]
struct Item {
    id: i64,
    name: String,
    qty: i64,
    cqrs_revision: i64,
    cqrs_updated: String,
}

struct Items;

#[async_trait]
impl TypedReplicaModel for Items {
    type Instance = Item;
    fn cqrs_id(&self) -> &str {
        "item"
    }
    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        let rows = tx
            .query(
                "SELECT cqrs_revision FROM items WHERE id = $1",
                &[pk.as_i64().into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r[0].as_i64()))
    }
    async fn create(&self, tx: &mut Transaction, i: Item, _: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO items (id, name, qty, cqrs_revision, cqrs_updated) VALUES ($1, $2, $3, $4, $5)",
            &[i.id.into(), i.name.into(), i.qty.into(), i.cqrs_revision.into(), i.cqrs_updated.into()],
        )
        .await?;
        Ok(())
    }
    async fn update(&self, tx: &mut Transaction, i: Item, _: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            "UPDATE items SET name = $2, qty = $3, cqrs_revision = $4, cqrs_updated = $5 WHERE id = $1",
            &[i.id.into(), i.name.into(), i.qty.into(), i.cqrs_revision.into(), i.cqrs_updated.into()],
        )
        .await?;
        Ok(())
    }
    async fn delete(&self, tx: &mut Transaction, c: &Change<'_>) -> Result<(), BoxError> {
        tx.execute("DELETE FROM items WHERE id = $1", &[c.pk.as_i64().into()])
            .await?;
        Ok(())
    }
}

struct Args {
    n: usize,
    workers: usize,
    batch: usize,
    backend: String,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        n: 100_000,
        workers: 4,
        batch: 200,
        backend: "sqlite".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-n" | "--messages" => a.n = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--backend" => a.backend = value()?,
            "-h" | "--help" => {
                println!(
                    "replica_backlog [-n N] [--workers W] [--batch B] [--backend sqlite|postgres]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn messages(n: usize) -> Vec<CqrsMessage> {
    (0..n as i64 / 2)
        .flat_map(|pk| {
            [0, 1].map(|revision| {
                let data = json!({
                    "id": pk, "name": format!("item {pk}"), "qty": revision,
                    "description": "a description of some length, as the peers' bench has",
                    "created": "2026-11-23 00:41:49.193683+00:00",
                    "cqrs_revision": revision, "cqrs_updated": "2026-11-23 00:41:49.193683+00:00",
                });
                let Value::Object(data) = data else {
                    unreachable!()
                };
                CqrsMessage::new(SignalType::Save, "item", json!(pk), data)
            })
        })
        .collect()
}

async fn publish(config: &AmqpConfig, out: &[OutgoingMessage]) -> anyhow::Result<()> {
    let p = ConfirmedPublisher::connect(config.clone(), PublisherOptions::default()).await?;
    for chunk in out.chunks(2000) {
        for o in p.publish_all(chunk).await {
            if o? != Outcome::Confirmed {
                bail!("a publish was not confirmed");
            }
        }
    }
    p.close().await?;
    Ok(())
}

/// Takes `n` messages from `queue` and acks them (every one, or one multiple-ack per
/// `every`); messages per second.
async fn raw_consume(url: &str, queue: &str, n: usize, every: u64) -> anyhow::Result<f64> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut stream = ch
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let mut seen = 0usize;
    while seen < n {
        let d = stream.next().await.context("stream ended")??;
        seen += 1;
        if every == 1 {
            d.acker.ack(BasicAckOptions::default()).await?;
        } else if d.delivery_tag % every == 0 || seen == n {
            d.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    conn.close(200, "done".into()).await?;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let vhost = eventfold_testkit::TestVhost::with_prefix("ef-replica-backlog");
    let config = AmqpConfig::from_url(&vhost.url())?.with_connection_name("replica-backlog");
    let batch = messages(args.n);

    // The broker alone: the same bodies in plain queues.
    let raw = vhost.raw().await;
    for q in ["raw1", "raw100"] {
        raw.channel
            .queue_declare(
                q.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    for q in ["raw1", "raw100"] {
        let out: Vec<_> = batch.iter().map(|m| m.to_message("", q)).collect();
        publish(&config, &out).await?;
    }
    let broker_single = raw_consume(&vhost.url(), "raw1", args.n, 1).await?;
    let broker_multiple = raw_consume(&vhost.url(), "raw100", args.n, 100).await?;
    println!("broker consume+ack: {broker_single:.0} msgs/s (ack each), {broker_multiple:.0} msgs/s (multiple-ack per 100)");

    let dir = tempfile::tempdir()?;
    let (store, _schema): (Arc<dyn Store>, Option<String>) = match args.backend.as_str() {
        "sqlite" => {
            let s = eventfold_sqlite::SqliteStore::open(&eventfold_sqlite::SqliteConfig::new(
                dir.path().join("replica.db"),
            ))?;
            (Arc::new(s), None)
        }
        "postgres" => {
            let schema = format!("replica_backlog_{}", std::process::id());
            let mut c = eventfold_postgres::PostgresConfig::new(
                std::env::var("EVENTFOLD_TEST_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            );
            c.schema = schema.clone();
            (
                Arc::new(eventfold_postgres::PostgresStore::connect(&c).await?),
                Some(schema),
            )
        }
        other => bail!("unknown backend {other}"),
    };
    let mut tx = store.begin().await?;
    tx.execute("DROP TABLE IF EXISTS items", &[]).await?;
    tx.execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty BIGINT NOT NULL, \
         cqrs_revision BIGINT NOT NULL, cqrs_updated TEXT NOT NULL)",
        &[],
    )
    .await?;
    tx.commit().await?;

    let models = || ReplicaModels::new().with(Typed(Items));
    let mut options = ReplicaOptions::new("replica");
    options.workers = args.workers;
    options.batch_size = args.batch;
    ReplicaConsumer::start(
        config.clone(),
        Arc::clone(&store),
        models(),
        options.clone(),
    )
    .await?
    .shutdown()
    .await?;
    let out: Vec<_> = batch.iter().map(|m| m.to_message("cqrs", "item")).collect();
    publish(&config, &out).await?;

    let start = Instant::now();
    let consumer = ReplicaConsumer::start(config, Arc::clone(&store), models(), options).await?;
    while consumer.stats().acked < args.n as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = consumer.shutdown().await?;
    let backlog = args.n as f64 / elapsed;
    println!(
        "replica ({}, {} workers, batch {}): {backlog:.0} msgs/s, {} commits, stale {}, duplicates {}, retries {}",
        args.backend, args.workers, args.batch, stats.commits, stats.stale, stats.duplicates, stats.retries
    );
    println!(
        "ratio to the broker: {:.2} (ack each), {:.2} (multiple-ack)",
        backlog / broker_single,
        backlog / broker_multiple
    );
    if let Some(schema) = _schema {
        let mut tx = store.begin().await?;
        tx.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
            .await?;
        tx.commit().await?;
    }
    println!(
        "{}",
        json!({
            "backend": args.backend, "messages": args.n, "workers": args.workers, "batch": args.batch,
            "backlog_msgs_per_s": backlog.round(),
            "broker_consume_per_s": broker_single.round(),
            "broker_consume_multiple_ack_per_s": broker_multiple.round(),
            "commits": stats.commits, "ordering_errors": stats.stale,
            "duplicates_applied": 0, "retries": stats.retries, "dead_letters": stats.dead_letters,
        })
    );
    Ok(())
}
