//! `eventfold bench replication`: the workload of the peers' `cqrs_bench.py` (django-cqrs
//! master → RabbitMQ → replica) on eventfold: each master save is the caller's own SQL
//! (INSERT or UPDATE of `items`) plus its django-cqrs message ([`Master`]) in ONE
//! transaction; the relay publishes the messages ([`eventfold_cqrs::master::CqrsRoute`],
//! declaring the replica's queue), and a [`ReplicaConsumer`] with W workers applies them
//! to `replica_items` in a second store, all in this process.
//!
//! Phases (N items, each created then updated once: 2N saves, 2N messages):
//! * `plain`: the same saves without eventfold (the row only, same transaction shape);
//! * `record_only`: the master's saves (row + message) with the relay and the replica not
//!   running, so the master's statements are measured without their CPU;
//! * `bumped`: as `record_only`, but each update is the caller's own `UPDATE ... SET
//!   cqrs_revision = cqrs_revision + 1 ... RETURNING cqrs_revision` and
//!   [`Save::bumped`]: no separate bump statement;
//! * `floor`: the row and one plain INSERT, by the caller's SQL, of a row as large as the
//!   message into a table shaped as the events table (the changes bench's floor): the
//!   least any transactional outbox adds to a save, which bounds `record_only` / `plain`;
//!
//!   these four take turns, in rounds of N / 8 items, so a noisy neighbour slows them
//!   alike;
//! * `replication`: relay and replica running: master saves/s, end-to-end msgs/s, lag
//!   after the last save, per-item lag (master commit of the update → replica commit of
//!   it), lost, ordering errors, duplicates applied, retries, dead letters;
//! * `cold_start`: K saves before any replica consumer exists, then the replica starts:
//!   how many arrive (django-cqrs: none);
//! * `backlog`: B messages recorded and relayed into the replica's queue with no consumer
//!   running, then the replica starts and applies them: `backlog_msgs_per_s`; in the same
//!   run the broker's own consume-and-ack rate of as many messages of the same size
//!   (`broker_consume_per_s`) and its confirmed-publish rate;
//! * `bare`: the store's bare commit rate;
//! * `floor_write` (not run by default): the backlog's row count written by the replica's
//!   multi-row upsert alone, in batches of the replica's size, with as many writers as
//!   workers and no broker: the ceiling of `backlog` on this store.
//!
//! A fresh virtual host per run, fresh SQLite files or PostgreSQL tables per phase, all
//! removed afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, OutgoingMessage, PublisherOptions};
use eventfold_core::{async_trait, BoxError, Metadata, SqlValue, Store, Transaction};
use eventfold_cqrs::master::{
    record_stream, Master, MasterModel, ModelOptions, Pk, Save, CQRS_KEY,
};
use eventfold_cqrs::replica::{
    padded_len, statement_chunks, Change, ReplicaConsumer, ReplicaModel, ReplicaModels,
    ReplicaOptions, ReplicaStats, RowWrite, WriteKind,
};
use eventfold_cqrs::wire::{
    expires_after, python_datetime, CqrsMessage, SignalType, DEFAULT_EXCHANGE, DEFAULT_MESSAGE_TTL,
};
use eventfold_relay::{Relay, RelayMetrics};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::changes::{
    bare_commits, broker_confirmed_rate, line, percentile, sig4, Admin, Backend, Floor, FloorRow,
    Scratch, TempVhost,
};

/// The relay's name.
const RELAY: &str = "cqrs-master";
/// The replica's queue (as the peer's `CQRS['queue']`).
const QUEUE: &str = "replica";

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct ReplicationBench {
    /// The stores (master and replica on the same backend, in separate stores).
    pub backend: Backend,
    /// The broker, without a virtual host (`amqp://guest:guest@127.0.0.1:5672`).
    pub amqp_url: String,
    /// N items (2N saves, 2N messages).
    pub items: usize,
    /// Replica worker tasks.
    pub workers: usize,
    /// Update each item right after its create (the peer's `--interleave`), instead of
    /// all creates then all updates.
    pub interleave: bool,
    /// K saves of the cold-start phase.
    pub cold_start: usize,
    /// B messages of the backlog phase.
    pub backlog: usize,
    /// Master saves per transaction while the backlog is written (not timed).
    pub backlog_batch: usize,
    /// Relay batch size and window.
    pub window: usize,
    /// Messages per replica transaction, at most.
    pub replica_batch: usize,
    /// Bare single-row commits.
    pub bare_commits: u64,
    /// Longest wait for the relay or the replica.
    pub timeout: Duration,
    /// Phases to run (`plain`, `record_only`, `bumped`, `floor`, `replication`,
    /// `cold_start`, `backlog`, `bare`).
    pub phases: Vec<String>,
}

/// The peer's `Item(MasterMixin)`.
#[derive(Debug, Clone, Serialize)]
struct Item {
    id: i64,
    cqrs_revision: i64,
    #[serde(serialize_with = "python_time")]
    cqrs_updated: DateTime<Utc>,
    name: String,
    qty: i32,
    price: String,
    description: String,
    created: String,
}

fn python_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&python_datetime(t))
}

impl MasterModel for Item {
    const CQRS_ID: &'static str = "item";
    fn pk(&self) -> Pk {
        Pk::Int(self.id)
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

impl Item {
    fn new(id: i64, tag: &str) -> Self {
        let now = Utc::now();
        Item {
            id,
            cqrs_revision: 0,
            cqrs_updated: now,
            name: format!("{tag}-{id}"),
            qty: 1,
            price: "9.99".to_owned(),
            description: "bench".to_owned(),
            created: python_datetime(&now),
        }
    }
}

const ITEM_COLUMNS: &str = "id BIGINT PRIMARY KEY, cqrs_revision BIGINT NOT NULL DEFAULT 0, \
     cqrs_updated TEXT NOT NULL, name VARCHAR(200) NOT NULL, qty INTEGER NOT NULL, \
     price TEXT NOT NULL, description TEXT NOT NULL, created TEXT NOT NULL";

async fn create_table(scratch: &Scratch, table: &str) -> anyhow::Result<()> {
    let mut tx = scratch.store.begin().await?;
    tx.execute(&format!("CREATE TABLE {table} ({ITEM_COLUMNS})"), &[])
        .await?;
    tx.commit().await?;
    Ok(())
}

fn item_params(item: &Item) -> [SqlValue; 8] {
    [
        SqlValue::from(item.id),
        item.cqrs_revision.into(),
        python_datetime(&item.cqrs_updated).into(),
        item.name.as_str().into(),
        item.qty.into(),
        item.price.as_str().into(),
        item.description.as_str().into(),
        item.created.as_str().into(),
    ]
}

/// A multi-row upsert of `rows` items into `table`, `item_params`' 8 values per row.
fn upsert_items_sql(table: &str, rows: usize) -> String {
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let p: Vec<String> = (r * 8 + 1..=r * 8 + 8).map(|i| format!("${i}")).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {table} (id, cqrs_revision, cqrs_updated, name, qty, price, description, created) \
         VALUES {} ON CONFLICT (id) DO UPDATE SET cqrs_revision = excluded.cqrs_revision, \
         cqrs_updated = excluded.cqrs_updated, name = excluded.name, qty = excluded.qty, \
         price = excluded.price, description = excluded.description, created = excluded.created",
        tuples.join(", ")
    )
}

/// At most this many rows (8 values each) per upsert statement: as eventfold-cqrs's
/// plain tables do (`MAX_PARAMS`, `SQLITE_MAX_PARAMS`), small statements on SQLite, whose
/// binding costs the value count squared.
fn rows_per_statement(backend: &str) -> usize {
    let values = match backend {
        "sqlite" => eventfold_cqrs::table::SQLITE_MAX_PARAMS,
        _ => eventfold_cqrs::table::MAX_PARAMS,
    };
    values / 8
}

/// The `floor_write` phase: `bench.backlog` rows written by the replica's multi-row upsert
/// alone, `replica_batch` rows per transaction, by `workers` tasks taking every
/// `workers`-th batch: no broker, no messages, no revision reads. Rows/s.
async fn floor_write(bench: &ReplicationBench, run: &str) -> anyhow::Result<f64> {
    let scratch = Scratch::open_empty(&bench.backend, "efbrf", run, "floor").await?;
    let table = scratch.table("replica_items");
    create_table(&scratch, &table).await?;
    let (rows, per, workers) = (
        bench.backlog,
        bench.replica_batch.max(1),
        bench.workers.max(1),
    );
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (store, table) = (Arc::clone(&scratch.store), table.clone());
        tasks.push(tokio::spawn(async move {
            let mut start = w * per;
            while start < rows {
                let end = (start + per).min(rows);
                let items: Vec<Item> = (start..end)
                    .map(|id| Item::new(id as i64 + 1, "floor"))
                    .collect();
                let mut tx = store.begin().await?;
                // In the statements the replica's write_batch uses.
                for range in statement_chunks(items.len(), rows_per_statement(tx.backend())) {
                    let params: Vec<SqlValue> =
                        items[range.clone()].iter().flat_map(item_params).collect();
                    tx.execute(&upsert_items_sql(&table, range.len()), &params)
                        .await?;
                }
                tx.commit().await?;
                start += per * workers;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = rows as f64 / t0.elapsed().as_secs_f64();
    scratch.remove().await?;
    Ok(rate)
}

/// The caller's own write of the row.
async fn write_row(
    tx: &mut Transaction,
    table: &str,
    item: &Item,
    create: bool,
) -> anyhow::Result<()> {
    let params = item_params(item);
    let sql = if create {
        format!(
            "INSERT INTO {table} (id, cqrs_revision, cqrs_updated, name, qty, price, description, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
    } else {
        format!(
            "UPDATE {table} SET cqrs_revision = $2, cqrs_updated = $3, name = $4, qty = $5, \
             price = $6, description = $7, created = $8 WHERE id = $1"
        )
    };
    tx.execute(&sql, &params).await?;
    Ok(())
}

/// How a save writes: what the phases compare.
#[derive(Clone, Copy)]
enum Writer<'a> {
    /// The row only, without eventfold (`plain`).
    Plain,
    /// The master's message first (it bumps the row and sets the revision and save time
    /// the row gets), then the row (`replication`, `record_only`).
    Master(&'a Master),
    /// Creates as [`Writer::Master`]; an update is the caller's own UPDATE that bumps the
    /// revision (`... RETURNING cqrs_revision`), then the message with
    /// [`Save::bumped`] (`bumped`).
    Bumped(&'a Master),
    /// The row and one plain INSERT of a row as large as the master's message (`floor`).
    Floor(&'a Floor),
}

/// One master save in one transaction, as `writer` writes it.
async fn save(
    store: &dyn Store,
    table: &str,
    writer: Writer<'_>,
    item: &mut Item,
    create: bool,
) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    match writer {
        Writer::Master(m) | Writer::Bumped(m) if create => {
            m.created(&mut tx, item).await?;
            write_row(&mut tx, table, item, true).await?;
        }
        Writer::Master(m) => {
            m.updated(&mut tx, item).await?;
            write_row(&mut tx, table, item, false).await?;
        }
        Writer::Bumped(m) => {
            let now = m.now();
            let revision = update_bumped(&mut tx, table, item, now).await?;
            m.save(&mut tx, Save::update(item).bumped(revision, now))
                .await?;
        }
        Writer::Plain | Writer::Floor(_) => {
            let revision = if create { 0 } else { item.cqrs_revision + 1 };
            item.set_cqrs(revision, micros_now());
            write_row(&mut tx, table, item, create).await?;
            if let Writer::Floor(floor) = writer {
                floor.insert(&mut tx, floor_row(item, create)?).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The caller's UPDATE of the row that also bumps its revision and stamps it at `now`
/// ([`Save::bumped`]); the new revision.
async fn update_bumped(
    tx: &mut Transaction,
    table: &str,
    item: &Item,
    now: DateTime<Utc>,
) -> anyhow::Result<i64> {
    let [id, _, _, name, qty, price, description, created] = item_params(item);
    let rows = tx
        .query(
            &format!(
                "UPDATE {table} SET cqrs_revision = cqrs_revision + 1, cqrs_updated = $2, \
                 name = $3, qty = $4, price = $5, description = $6, created = $7 \
                 WHERE id = $1 RETURNING cqrs_revision"
            ),
            &[
                id,
                python_datetime(&now).into(),
                name,
                qty,
                price,
                description,
                created,
            ],
        )
        .await?;
    rows.first()
        .and_then(|r| r.first())
        .and_then(SqlValue::as_i64)
        .with_context(|| format!("no row {} in {table}", item.id))
}

fn micros_now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The plain row the master's message of this save would be: the same body (the SAVE
/// django-cqrs sends) and metadata.
fn floor_row(item: &Item, create: bool) -> anyhow::Result<FloorRow> {
    let Value::Object(data) = serde_json::to_value(item)? else {
        bail!("an item serializes to an object");
    };
    let mut message = CqrsMessage::new(SignalType::Save, Item::CQRS_ID, json!(item.id), data);
    message.meta = Some(json!({}));
    message.expires = expires_after(item.cqrs_updated, Some(DEFAULT_MESSAGE_TTL));
    let pk = item.id.to_string();
    let metadata = Metadata::new().with(
        CQRS_KEY,
        json!({"exchange": DEFAULT_EXCHANGE, "routing_key": Item::CQRS_ID,
               "cqrs_id": Item::CQRS_ID, "signal_type": "SAVE", "pk": &pk}),
    );
    Ok(FloorRow {
        stream_id: record_stream(Item::CQRS_ID, &pk),
        version: if create { 1 } else { 2 },
        topic: format!("cqrs.{}.SAVE", Item::CQRS_ID),
        state: message.to_body(),
        metadata,
    })
}

/// What the save loop measured.
struct Saves {
    seconds: f64,
    latencies: Vec<f64>,
    create_latencies: Vec<f64>,
    update_latencies: Vec<f64>,
    /// Item id → the instant the commit of its update returned.
    updated_at: HashMap<i64, Instant>,
    started: Instant,
}

/// N creates and N updates (interleaved: each update right after its create).
async fn run_saves(
    store: &dyn Store,
    table: &str,
    writer: Writer<'_>,
    first_id: i64,
    items: usize,
    interleave: bool,
) -> anyhow::Result<Saves> {
    let mut s = Saves {
        seconds: 0.0,
        latencies: Vec::with_capacity(2 * items),
        create_latencies: Vec::with_capacity(items),
        update_latencies: Vec::with_capacity(items),
        updated_at: HashMap::with_capacity(items),
        started: Instant::now(),
    };
    let mut pending = Vec::with_capacity(if interleave { 0 } else { items });
    let update = |s: &mut Saves, t0: Instant, id: i64| {
        let done = Instant::now();
        let d = (done - t0).as_secs_f64();
        s.latencies.push(d);
        s.update_latencies.push(d);
        s.updated_at.insert(id, done);
    };
    for i in 0..items {
        let mut item = Item::new(first_id + i as i64, "bench");
        let t0 = Instant::now();
        save(store, table, writer, &mut item, true).await?;
        let d = t0.elapsed().as_secs_f64();
        s.latencies.push(d);
        s.create_latencies.push(d);
        item.qty = 2;
        if interleave {
            let t0 = Instant::now();
            save(store, table, writer, &mut item, false).await?;
            update(&mut s, t0, item.id);
        } else {
            pending.push(item);
        }
    }
    for mut item in pending {
        let t0 = Instant::now();
        save(store, table, writer, &mut item, false).await?;
        update(&mut s, t0, item.id);
    }
    s.seconds = s.started.elapsed().as_secs_f64();
    for v in [
        &mut s.latencies,
        &mut s.create_latencies,
        &mut s.update_latencies,
    ] {
        v.sort_by(f64::total_cmp);
    }
    Ok(s)
}

/// What the replica applied: (item id, revision) → commit instants, in commit order.
#[derive(Default)]
struct Applied {
    commits: Mutex<HashMap<(i64, i64), Vec<Instant>>>,
    final_revisions: AtomicU64,
}

impl Applied {
    fn reset(&self) {
        self.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.final_revisions.store(0, AtomicOrdering::Relaxed);
    }
}

/// The replica's `ItemReplica`: INSERT or UPDATE by pk into `replica_items` (a batch: one
/// multi-row upsert); each apply stamps its commit instant (as the peer's
/// `replicated_at`, but at the commit).
struct ItemReplica {
    table: String,
    applied: Arc<Applied>,
    /// The revision an item ends at (1: created then updated once; 0: created only).
    final_revision: i64,
}

impl ItemReplica {
    fn stamp(&self, tx: &mut Transaction, change: &Change<'_>) {
        let (Some(id), Some(revision)) = (change.pk.as_i64(), change.revision) else {
            return;
        };
        let applied = Arc::clone(&self.applied);
        let is_final = revision == self.final_revision;
        tx.on_commit(move || {
            applied
                .commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((id, revision))
                .or_default()
                .push(Instant::now());
            if is_final {
                applied
                    .final_revisions
                    .fetch_add(1, AtomicOrdering::Relaxed);
            }
        });
    }

    fn params(change: &Change<'_>) -> Result<[SqlValue; 8], BoxError> {
        let d = change.data;
        let text = |k: &str| -> Result<SqlValue, BoxError> {
            Ok(d.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("`{k}` is not text"))?
                .into())
        };
        let int = |k: &str| -> Result<SqlValue, BoxError> {
            Ok(d.get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("`{k}` is not an integer"))?
                .into())
        };
        Ok([
            int("id")?,
            int("cqrs_revision")?,
            text("cqrs_updated")?,
            text("name")?,
            int("qty")?,
            text("price")?,
            text("description")?,
            text("created")?,
        ])
    }
}

#[async_trait]
impl ReplicaModel for ItemReplica {
    fn cqrs_id(&self) -> &str {
        "item"
    }

    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        let id = pk.as_i64().ok_or("the pk is not an integer")?;
        let rows = tx
            .query(
                &format!("SELECT cqrs_revision FROM {} WHERE id = $1", self.table),
                &[id.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r[0].as_i64()))
    }

    async fn stored_revisions(
        &self,
        tx: &mut Transaction,
        pks: &[&Value],
    ) -> Result<Option<Vec<Option<i64>>>, BoxError> {
        let ids = pks
            .iter()
            .map(|pk| pk.as_i64().ok_or("the pk is not an integer"))
            .collect::<Result<Vec<i64>, _>>()?;
        // Padded with the last id, so a few statement shapes serve every batch size.
        let padded = padded_len(ids.len());
        let list: Vec<String> = (1..=padded).map(|i| format!("${i}")).collect();
        let last = ids.last().copied().unwrap_or_default();
        let params: Vec<SqlValue> = (0..padded)
            .map(|i| ids.get(i).copied().unwrap_or(last).into())
            .collect();
        let sql = format!(
            "SELECT id, cqrs_revision FROM {} WHERE id IN ({})",
            self.table,
            list.join(", ")
        );
        let found: HashMap<i64, i64> = tx
            .query(&sql, &params)
            .await?
            .iter()
            .filter_map(|r| Some((r[0].as_i64()?, r[1].as_i64()?)))
            .collect();
        Ok(Some(ids.iter().map(|id| found.get(id).copied()).collect()))
    }

    /// One multi-row DELETE and one multi-row upsert per batch.
    async fn write_batch(
        &self,
        tx: &mut Transaction,
        writes: &[RowWrite<'_>],
    ) -> Result<(), BoxError> {
        let (deletes, saves): (Vec<&RowWrite<'_>>, Vec<_>) =
            writes.iter().partition(|w| w.kind == WriteKind::Delete);
        if !deletes.is_empty() {
            let mut params = Vec::with_capacity(deletes.len());
            for w in &deletes {
                params.push(SqlValue::from(
                    w.change.pk.as_i64().ok_or("the pk is not an integer")?,
                ));
            }
            let list: Vec<String> = (1..=params.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM {} WHERE id IN ({})",
                self.table,
                list.join(", ")
            );
            tx.execute(&sql, &params).await?;
        }
        if saves.is_empty() {
            return Ok(());
        }
        for range in statement_chunks(saves.len(), rows_per_statement(tx.backend())) {
            let mut params = Vec::with_capacity(range.len() * 8);
            for w in &saves[range.clone()] {
                params.extend(Self::params(&w.change)?);
            }
            tx.execute(&upsert_items_sql(&self.table, range.len()), &params)
                .await?;
        }
        for w in &saves {
            self.stamp(tx, &w.change);
        }
        Ok(())
    }

    async fn create(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            &format!(
                "INSERT INTO {} (id, cqrs_revision, cqrs_updated, name, qty, price, description, created) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                self.table
            ),
            &Self::params(change)?,
        )
        .await?;
        self.stamp(tx, change);
        Ok(())
    }

    async fn update(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            &format!(
                "UPDATE {} SET cqrs_revision = $2, cqrs_updated = $3, name = $4, qty = $5, \
                 price = $6, description = $7, created = $8 WHERE id = $1",
                self.table
            ),
            &Self::params(change)?,
        )
        .await?;
        self.stamp(tx, change);
        Ok(())
    }

    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        tx.execute(
            &format!("DELETE FROM {} WHERE id = $1", self.table),
            &[change.pk.as_i64().ok_or("the pk is not an integer")?.into()],
        )
        .await?;
        Ok(())
    }
}

/// A master store with its `items` table and a running relay (optionally declaring the
/// replica's queue), and a replica store with its `replica_items` table.
struct World {
    master_scratch: Scratch,
    items: String,
    master: Master,
    replica_scratch: Scratch,
    replica_items: String,
}

impl World {
    async fn open(bench: &ReplicationBench, run: &str, phase: &str) -> anyhow::Result<Self> {
        let master_scratch = Scratch::open_empty(&bench.backend, "efbrm", run, phase).await?;
        let items = master_scratch.table("items");
        create_table(&master_scratch, &items).await?;
        let replica_scratch = Scratch::open_empty(&bench.backend, "efbrr", run, phase).await?;
        let replica_items = replica_scratch.table("replica_items");
        create_table(&replica_scratch, &replica_items).await?;
        let master = Master::new().register_with::<Item>(ModelOptions::new().table(&items));
        Ok(World {
            master_scratch,
            items,
            master,
            replica_scratch,
            replica_items,
        })
    }

    fn start_relay(
        &self,
        bench: &ReplicationBench,
        vhost_url: &str,
        declare_queue: bool,
    ) -> anyhow::Result<RunningRelay> {
        let mut route = self.master.route();
        if declare_queue {
            route = route.replica_queue(QUEUE, ["item"]);
        }
        let relay = Arc::new(
            Relay::builder(Arc::clone(&self.master_scratch.store), vhost_url, RELAY)?
                .route(route)
                .batch_size(bench.window)
                .window(bench.window)
                .build(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let r = Arc::clone(&relay);
        let task = tokio::spawn(async move {
            r.run(async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(RunningRelay { relay, stop, task })
    }

    async fn start_replica(
        &self,
        bench: &ReplicationBench,
        amqp: &AmqpConfig,
        applied: &Arc<Applied>,
        final_revision: i64,
    ) -> anyhow::Result<ReplicaConsumer> {
        let model = ItemReplica {
            table: self.replica_items.clone(),
            applied: Arc::clone(applied),
            final_revision,
        };
        let mut options = ReplicaOptions::new(QUEUE);
        options.workers = bench.workers;
        options.batch_size = bench.replica_batch;
        Ok(ReplicaConsumer::start(
            amqp.clone(),
            Arc::clone(&self.replica_scratch.store),
            ReplicaModels::new().with(model),
            options,
        )
        .await?)
    }

    /// Rows of the replica at `revision`.
    async fn replica_rows_at(&self, revision: i64) -> anyhow::Result<i64> {
        let mut tx = self.replica_scratch.store.begin().await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT COUNT(*) FROM {} WHERE cqrs_revision = $1",
                    self.replica_items
                ),
                &[revision.into()],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows.first().and_then(|r| r[0].as_i64()).unwrap_or(0))
    }

    async fn remove(self) -> anyhow::Result<()> {
        self.master_scratch.remove().await?;
        self.replica_scratch.remove().await
    }
}

struct RunningRelay {
    relay: Arc<Relay>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), eventfold_relay::RelayError>>,
}

impl RunningRelay {
    async fn stop(self) -> anyhow::Result<RelayMetrics> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(self.relay.metrics())
    }
}

/// Waits until `n` items reached their final revision on the replica; the instant.
async fn wait_applied(applied: &Applied, n: u64, timeout: Duration) -> Option<Instant> {
    let t0 = Instant::now();
    while applied.final_revisions.load(AtomicOrdering::Relaxed) < n {
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(Instant::now())
}

/// Duplicates applied: applies of one (item, revision) beyond the first.
fn duplicates_applied(applied: &Applied) -> usize {
    applied
        .commits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|v| v.len().saturating_sub(1))
        .sum()
}

fn replica_json(stats: &ReplicaStats) -> Value {
    json!({
        "applied": stats.applied,
        "ordering_errors": stats.stale,
        "duplicates_skipped": stats.duplicates,
        "lost_gap_warnings": stats.lost_gaps,
        "retries": stats.retries,
        "dead_letters": stats.dead_letters,
        "replica_commits": stats.commits,
        "batch_fallbacks": stats.batch_fallbacks,
    })
}

/// The broker's own consume-and-ack rate: `n` persistent copies of `message` are
/// published (confirmed) to a scratch queue, then consumed by one plain lapin consumer
/// with `prefetch`, acking every message as it arrives (no store, no eventfold code).
/// Also returns the rate when every `prefetch / 2`-th message acks all before it
/// (`multiple`), the cheapest acking there is.
async fn broker_consume_rate(
    vhost_url: &str,
    message: &OutgoingMessage,
    n: usize,
    prefetch: u16,
) -> anyhow::Result<(f64, f64)> {
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let exchange = format!("bench-consume-{suffix}");
    let admin = Admin::connect(vhost_url).await?;
    let publisher = ConfirmedPublisher::connect(
        AmqpConfig::from_url(vhost_url)?.with_connection_name("eventfold-consume-rate"),
        PublisherOptions {
            window: 256,
            ..Default::default()
        },
    )
    .await?;
    let mut rates = Vec::new();
    for multiple in [false, true] {
        let queue = format!("{exchange}-{multiple}");
        admin.bound_queue(&queue, &exchange).await?;
        let mut m = message.clone();
        m.exchange = exchange.clone();
        let batch = vec![m; 256];
        let mut sent = 0;
        while sent < n {
            let k = batch.len().min(n - sent);
            for o in publisher.publish_all(&batch[..k]).await {
                o?;
            }
            sent += k;
        }
        let channel = admin.conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await?;
        let every = (prefetch as usize / 2).max(1);
        let t0 = Instant::now();
        let mut got = 0;
        while got < n {
            let delivery = consumer
                .next()
                .await
                .context("the consumer stopped early")??;
            got += 1;
            if !multiple {
                delivery.ack(BasicAckOptions::default()).await?;
            } else if got % every == 0 || got == n {
                delivery.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
        let _ = channel.close(200, "done".into()).await;
        admin.delete_queue(&queue).await?;
    }
    let _ = admin
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    publisher.close().await?;
    admin.close().await;
    Ok((rates[0], rates[1]))
}

/// The phases of saves alone (no relay, no replica), in the order they take turns
/// (`plain` first: the others' ratios are to it).
const SAVE_PHASES: [&str; 4] = ["plain", "record_only", "bumped", "floor"];

/// The save phases take turns in this many rounds of N / rounds items each, so that
/// what else the machine does (another process's commits, a checkpoint) falls on all of
/// them alike and their ratios hold within one run.
const SAVE_ROUNDS: usize = 8;

/// A save phase's store, master and floor table, and what its rounds measured.
struct SavePhase {
    name: &'static str,
    scratch: Scratch,
    table: String,
    master: Master,
    floor: Option<Floor>,
    seconds: f64,
    latencies: Vec<f64>,
    create_latencies: Vec<f64>,
    update_latencies: Vec<f64>,
}

impl SavePhase {
    async fn open(bench: &ReplicationBench, run: &str, name: &'static str) -> anyhow::Result<Self> {
        let scratch =
            Scratch::open_empty(&bench.backend, "efbrp", run, &name.replace('_', "")).await?;
        let table = scratch.table("items");
        create_table(&scratch, &table).await?;
        let master = Master::new().register_with::<Item>(ModelOptions::new().table(&table));
        let floor = match name {
            "floor" => Some(Floor::create(&*scratch.store, &table).await?),
            _ => None,
        };
        Ok(SavePhase {
            name,
            scratch,
            table,
            master,
            floor,
            seconds: 0.0,
            latencies: Vec::new(),
            create_latencies: Vec::new(),
            update_latencies: Vec::new(),
        })
    }

    fn writer(&self) -> (Writer<'_>, &'static str) {
        match (self.name, &self.floor) {
            ("record_only", _) => (
                Writer::Master(&self.master),
                "row + message, relay and replica not running",
            ),
            ("bumped", _) => (
                Writer::Bumped(&self.master),
                "as record_only, updates bumped by the caller's UPDATE (Save::bumped)",
            ),
            (_, Some(floor)) => (
                Writer::Floor(floor),
                "row + one plain INSERT as large as the message: the least a master adds",
            ),
            _ => (Writer::Plain, "row only, one transaction each"),
        }
    }

    /// Saves `items` more items, from `first_id`.
    async fn round(
        &mut self,
        bench: &ReplicationBench,
        first_id: i64,
        items: usize,
    ) -> anyhow::Result<()> {
        let (writer, _) = self.writer();
        let s = run_saves(
            &*self.scratch.store,
            &self.table,
            writer,
            first_id,
            items,
            bench.interleave,
        )
        .await?;
        self.seconds += s.seconds;
        self.latencies.extend(s.latencies);
        self.create_latencies.extend(s.create_latencies);
        self.update_latencies.extend(s.update_latencies);
        Ok(())
    }

    /// Saves/s, the phase's figures and its line; removes its store.
    async fn finish(mut self, saves: usize) -> anyhow::Result<(f64, Value, String)> {
        for v in [
            &mut self.latencies,
            &mut self.create_latencies,
            &mut self.update_latencies,
        ] {
            v.sort_by(f64::total_cmp);
        }
        let (_, what) = self.writer();
        let rate = saves as f64 / self.seconds;
        let (p50, p99) = (
            percentile(&self.latencies, 50.0) * 1e3,
            percentile(&self.latencies, 99.0) * 1e3,
        );
        let figures = json!({
            "master_saves_per_s": sig4(rate),
            "save_p50_ms": sig4(p50),
            "save_p99_ms": sig4(p99),
            "create_p50_ms": sig4(percentile(&self.create_latencies, 50.0) * 1e3),
            "update_p50_ms": sig4(percentile(&self.update_latencies, 50.0) * 1e3),
        });
        let text = format!(
            "[{:11}] {rate:.0} saves/s ({what}) p50 {p50:.3} ms p99 {p99:.3} ms",
            self.name
        );
        self.scratch.remove().await?;
        Ok((rate, figures, text))
    }
}

/// The phases of [`SAVE_PHASES`] that `bench` asks for, in [`SAVE_ROUNDS`] rounds: each
/// one's saves/s, figures and line.
async fn save_phases(
    bench: &ReplicationBench,
    run: &str,
) -> anyhow::Result<Vec<(&'static str, f64, Value, String)>> {
    let mut phases = Vec::new();
    for name in SAVE_PHASES {
        if bench.phases.iter().any(|p| p == name) {
            phases.push(SavePhase::open(bench, run, name).await?);
        }
    }
    let rounds = SAVE_ROUNDS.min(bench.items.max(1));
    let mut first_id = 1;
    for round in 0..rounds {
        let items = bench.items / rounds + usize::from(round < bench.items % rounds);
        for phase in &mut phases {
            phase.round(bench, first_id, items).await?;
        }
        first_id += items as i64;
    }
    let mut out = Vec::new();
    for phase in phases {
        let name = phase.name;
        let (rate, figures, text) = phase.finish(2 * bench.items).await?;
        out.push((name, rate, figures, text));
    }
    Ok(out)
}

/// Runs the benchmark; prints readable lines and returns the peer-shaped result (the
/// caller prints it as the last line).
pub async fn run(bench: &ReplicationBench) -> anyhow::Result<Value> {
    let backend = bench.backend.name();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let vhost = TempVhost::new()?;
    let vhost_url = format!(
        "{}/{}",
        bench.amqp_url.trim_end_matches('/'),
        vhost.name.replace('/', "%2f")
    );
    let amqp = AmqpConfig::from_url(&vhost_url)?.with_connection_name("eventfold-bench-replica");
    let has = |p: &str| bench.phases.iter().any(|x| x == p);
    let n = bench.items;
    let mut results = serde_json::Map::new();
    line(format!(
        "eventfold bench replication: backend {backend}, {n} items ({} saves), {} replica workers, {}, \
         vhost {}, relay batch/window {}, replica batch {}",
        2 * n,
        bench.workers,
        if bench.interleave { "interleaved (update right after create)" } else { "all creates, then all updates" },
        vhost.name, bench.window, bench.replica_batch
    ));

    // The save phases, without the relay: `plain` first, as the others' ratios are to it.
    let mut plain = None;
    let mut save_rates = HashMap::new();
    for (phase, rate, mut figures, text) in save_phases(bench, &run).await? {
        if phase == "plain" {
            plain = Some(rate);
        }
        let vs_plain = plain.filter(|_| phase != "plain").map(|p| rate / p);
        if let Some(ratio) = vs_plain {
            figures["vs_plain"] = json!(sig4(ratio));
        }
        line(match vs_plain {
            Some(ratio) => format!("{text}; {ratio:.3}x plain"),
            None => text,
        });
        save_rates.insert(phase, rate);
        results.insert(phase.into(), figures);
    }

    let mut master_rate = None;
    if has("replication") {
        let world = World::open(bench, &run, "repl").await?;
        let applied = Arc::new(Applied::default());
        let relay = world.start_relay(bench, &vhost_url, true)?;
        let replica = world.start_replica(bench, &amqp, &applied, 1).await?;
        // One warm-up item, not counted, replicated before the clock starts (the peer's
        // consumer is bound and its master connected before the timed saves).
        let mut warm = Item::new(0, "warmup");
        save(
            &*world.master_scratch.store,
            &world.items,
            Writer::Master(&world.master),
            &mut warm,
            true,
        )
        .await?;
        warm.qty = 2;
        save(
            &*world.master_scratch.store,
            &world.items,
            Writer::Master(&world.master),
            &mut warm,
            false,
        )
        .await?;
        if wait_applied(&applied, 1, bench.timeout).await.is_none() {
            bail!("the warm-up item never reached the replica");
        }
        applied.reset();
        let s = run_saves(
            &*world.master_scratch.store,
            &world.items,
            Writer::Master(&world.master),
            1,
            n,
            bench.interleave,
        )
        .await?;
        let t_end = Instant::now();
        let done = wait_applied(&applied, n as u64, bench.timeout).await;
        // A moment more to catch duplicates in flight.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = replica.shutdown().await?;
        let metrics = relay.stop().await?;
        let at_final = world.replica_rows_at(1).await?;
        let lost = (n as i64 + 1 - at_final).max(0);
        let dups = duplicates_applied(&applied);
        let mut lags: Vec<f64> = {
            let commits = applied.commits.lock().unwrap_or_else(|p| p.into_inner());
            s.updated_at
                .iter()
                .filter_map(|(id, at)| {
                    commits
                        .get(&(*id, 1))
                        .and_then(|v| v.first())
                        .map(|r| r.saturating_duration_since(*at).as_secs_f64())
                })
                .collect()
        };
        lags.sort_by(f64::total_cmp);
        world.remove().await?;
        let rate = 2.0 * n as f64 / s.seconds;
        master_rate = Some(rate);
        let e2e = done.map(|t| 2.0 * n as f64 / (t - s.started).as_secs_f64());
        let lag_after = done.map(|t| t.saturating_duration_since(t_end).as_secs_f64());
        let mut phase = json!({
            "master_saves_per_s": sig4(rate),
            "save_p50_ms": sig4(percentile(&s.latencies, 50.0) * 1e3),
            "save_p99_ms": sig4(percentile(&s.latencies, 99.0) * 1e3),
            "create_p50_ms": sig4(percentile(&s.create_latencies, 50.0) * 1e3),
            "update_p50_ms": sig4(percentile(&s.update_latencies, 50.0) * 1e3),
            "e2e_replicated_msgs_per_s": e2e.map(sig4),
            "lag_after_last_master_save_s": lag_after.map(sig4),
            "item_lag_p50_ms": sig4(percentile(&lags, 50.0) * 1e3),
            "item_lag_p99_ms": sig4(percentile(&lags, 99.0) * 1e3),
            "replica_items_final": at_final - 1,
            "runs_incomplete": u8::from(done.is_none()),
            "lost": lost,
            "duplicates_applied": dups,
            "workers": bench.workers,
            "interleave": bench.interleave,
            "amqp_connections_opened": metrics.connections_opened,
            "relay_batches": metrics.batches,
        });
        let replica_part = replica_json(&stats);
        for (k, v) in replica_part.as_object().expect("an object") {
            phase[k] = v.clone();
        }
        line(format!(
            "[replication] {rate:.0} master saves/s p50 {} ms p99 {} ms; e2e {} msgs/s; lag after last save {} s; \
             item lag p50 {} ms p99 {} ms; lost {lost}, ordering errors {}, duplicates applied {dups}, retries {}, \
             dead letters {}; {} replica commits for {} applies; relay opened {} AMQP connections",
            phase["save_p50_ms"], phase["save_p99_ms"], phase["e2e_replicated_msgs_per_s"],
            phase["lag_after_last_master_save_s"], phase["item_lag_p50_ms"], phase["item_lag_p99_ms"],
            stats.stale, stats.retries, stats.dead_letters, stats.commits, stats.applied,
            metrics.connections_opened
        ));
        results.insert("replication".into(), phase);
    }

    if has("cold_start") && bench.cold_start > 0 {
        for (name, declare) in [("cold_start", true), ("cold_start_hold", false)] {
            let k = bench.cold_start;
            let world = World::open(bench, &run, name).await?;
            let admin = Admin::connect(&vhost_url).await?;
            let _ = admin.delete_queue(QUEUE).await;
            let relay = world.start_relay(bench, &vhost_url, declare)?;
            for i in 0..k {
                let mut item = Item::new(i as i64 + 1, "cold");
                save(
                    &*world.master_scratch.store,
                    &world.items,
                    Writer::Master(&world.master),
                    &mut item,
                    true,
                )
                .await?;
            }
            // The replica starts only after the master wrote (and the relay tried).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let applied = Arc::new(Applied::default());
            let replica = world.start_replica(bench, &amqp, &applied, 0).await?;
            let done = wait_applied(&applied, k as u64, bench.timeout).await;
            let stats = replica.shutdown().await?;
            let metrics = relay.stop().await?;
            let rows = world.replica_rows_at(0).await?;
            let _ = admin.delete_queue(QUEUE).await;
            admin.close().await;
            world.remove().await?;
            let lost = (k as i64 - rows).max(0);
            line(format!(
                "[{name:11}] {k} saves before the replica existed ({}); replica holds {rows}: lost {lost}; \
                 {} returned as unroutable while no queue was bound",
                if declare { "the relay declared its queue" } else { "no queue declared: the relay held the messages" },
                metrics.returned
            ));
            results.insert(
                name.into(),
                json!({
                    "saves_before_consumer": k,
                    "replica_items": rows,
                    "lost": lost,
                    "complete": done.is_some(),
                    "relay_returned": metrics.returned,
                    "retries": stats.retries,
                    "dead_letters": stats.dead_letters,
                }),
            );
        }
    }

    let mut backlog_rate = None;
    let mut broker = None;
    let mut broker_multiple = None;
    let mut confirmed = None;
    if has("backlog") {
        let b = bench.backlog;
        let world = World::open(bench, &run, "backlog").await?;
        let admin = Admin::connect(&vhost_url).await?;
        let t0 = Instant::now();
        let mut k = 0;
        let mut last = 0;
        while k < b {
            let mut tx = world.master_scratch.store.begin().await?;
            for _ in 0..bench.backlog_batch.max(1).min(b - k) {
                let mut item = Item::new(k as i64 + 1, "backlog");
                let saved = world.master.created(&mut tx, &mut item).await?;
                last = saved.notification.unwrap_or(last);
                write_row(&mut tx, &world.items, &item, true).await?;
                k += 1;
            }
            tx.commit().await?;
        }
        let t_write = t0.elapsed().as_secs_f64();
        let relay = world.start_relay(bench, &vhost_url, true)?;
        let t0 = Instant::now();
        let drained = loop {
            let position = world
                .master_scratch
                .store
                .tracking_position(RELAY)
                .await?
                .unwrap_or(0);
            if position >= last {
                break true;
            }
            if t0.elapsed() > bench.timeout {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let t_drain = t0.elapsed().as_secs_f64();
        let metrics = relay.stop().await?;
        let queued = admin.count(QUEUE).await?;
        if !drained || (queued as usize) < b {
            bail!(
                "the relay queued {queued} of {b} messages in {:?}",
                bench.timeout
            );
        }
        let sample = admin
            .channel
            .basic_get(QUEUE.into(), Default::default())
            .await?;
        let sample_body = sample
            .as_ref()
            .map(|m| m.delivery.data.clone())
            .context("no message to sample")?;
        if let Some(m) = sample {
            m.delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
        }
        let applied = Arc::new(Applied::default());
        let t0 = Instant::now();
        let replica = world.start_replica(bench, &amqp, &applied, 0).await?;
        let done = wait_applied(&applied, b as u64, bench.timeout).await;
        let secs = t0.elapsed().as_secs_f64();
        let stats = replica.shutdown().await?;
        let rows = world.replica_rows_at(0).await?;
        admin.delete_queue(QUEUE).await?;
        admin.close().await;
        world.remove().await?;
        if done.is_none() {
            bail!(
                "the replica applied {rows} of {b} backlog messages in {:?}",
                bench.timeout
            );
        }
        let rate = b as f64 / secs;
        backlog_rate = Some(rate);
        let mut message = OutgoingMessage::new("", QUEUE, sample_body);
        message.content_type = Some("text/plain".to_owned());
        message.delivery_mode = 2;
        let (per_message, multiple) = broker_consume_rate(&vhost_url, &message, b, 1000).await?;
        broker = Some(per_message);
        broker_multiple = Some(multiple);
        let r = broker_confirmed_rate(
            &vhost_url,
            &message,
            b.min(20_000),
            bench.window,
            bench.window,
        )
        .await?;
        confirmed = Some(r.per_second);
        line(format!(
            "[backlog    ] {b} master saves written in {t_write:.2} s ({} per transaction), relayed into the \
             replica's queue in {t_drain:.2} s ({:.0}/s, {} batches); the replica applied them in {secs:.2} s: \
             {rate:.0} msgs/s in {} commits (lost {}, dead letters {})",
            bench.backlog_batch, b as f64 / t_drain, metrics.batches, stats.commits,
            (b as i64 - rows).max(0), stats.dead_letters
        ));
        line(format!(
            "[broker     ] {b} messages of {} bytes, one plain consumer, prefetch 1000, no store: \
             {per_message:.0} consumed+acked/s acking each ({:.3}x for the replica), {multiple:.0}/s acking \
             every 500th with `multiple` ({:.3}x); confirmed publish {:.0}/s",
            message.body.len(), rate / per_message, rate / multiple, r.per_second
        ));
        results.insert(
            "backlog".into(),
            json!({
                "messages": b,
                "backlog_msgs_per_s": sig4(rate),
                "apply_s": sig4(secs),
                "relay_drain_msgs_per_s": sig4(b as f64 / t_drain),
                "replica_commits": stats.commits,
                "lost": (b as i64 - rows).max(0),
                "dead_letters": stats.dead_letters,
                "broker_consume_per_s": sig4(per_message),
                "broker_consume_multiple_ack_per_s": sig4(multiple),
                "broker_confirmed_per_s": sig4(r.per_second),
                "message_body_bytes": message.body.len(),
            }),
        );
    }
    drop(vhost);

    let mut bare = None;
    if has("bare") {
        let (rate, p50) = bare_commits(&bench.backend, &run, bench.bare_commits).await?;
        bare = Some(rate);
        line(format!(
            "[bare       ] {rate:.0} commits/s p50 {p50:.3} ms ({} single-row INSERT commits, no eventfold)",
            bench.bare_commits
        ));
    }

    let mut floor_write_rate = None;
    if has("floor_write") {
        let rate = floor_write(bench, &run).await?;
        floor_write_rate = Some(rate);
        line(format!(
            "[floor_write] {rate:.0} rows/s: {} rows by a bare multi-row upsert, {} per transaction, {} writers, \
             no broker",
            bench.backlog, bench.replica_batch, bench.workers
        ));
        results.insert(
            "floor_write".into(),
            json!({
                "rows": bench.backlog,
                "rows_per_transaction": bench.replica_batch,
                "writers": bench.workers,
                "floor_write_rows_per_s": sig4(rate),
            }),
        );
    }

    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| sig4(a / b));
    let e2e = results
        .get("replication")
        .and_then(|r| r["e2e_replicated_msgs_per_s"].as_f64());
    let mut out = Map::new();
    out.insert("results".into(), Value::Object(results));
    out.insert("plain_saves_per_s".into(), json!(plain.map(sig4)));
    out.insert("master_vs_plain".into(), json!(ratio(master_rate, plain)));
    for phase in &SAVE_PHASES[1..] {
        let rate = save_rates.get(phase).copied();
        out.insert(format!("{phase}_saves_per_s"), json!(rate.map(sig4)));
        out.insert(format!("{phase}_vs_plain"), json!(ratio(rate, plain)));
    }
    let floor = save_rates.get("floor").copied();
    for phase in ["record_only", "bumped"] {
        out.insert(
            format!("{phase}_vs_floor"),
            json!(ratio(save_rates.get(phase).copied(), floor)),
        );
    }
    out.insert("e2e_vs_master".into(), json!(ratio(e2e, master_rate)));
    out.insert("backlog_msgs_per_s".into(), json!(backlog_rate.map(sig4)));
    out.insert("broker_consume_per_s".into(), json!(broker.map(sig4)));
    out.insert(
        "backlog_vs_broker_consume".into(),
        json!(ratio(backlog_rate, broker)),
    );
    out.insert(
        "backlog_vs_broker_multiple_ack".into(),
        json!(ratio(backlog_rate, broker_multiple)),
    );
    out.insert("broker_confirmed_per_s".into(), json!(confirmed.map(sig4)));
    out.insert("bare_commits_per_s".into(), json!(bare.map(sig4)));
    out.insert(
        "floor_write_rows_per_s".into(),
        json!(floor_write_rate.map(sig4)),
    );
    out.insert(
        "backlog_vs_floor_write".into(),
        json!(ratio(backlog_rate, floor_write_rate)),
    );
    out.insert("plain_vs_bare".into(), json!(ratio(plain, bare)));
    if let Some(r) = out["results"].get("replication") {
        line(format!(
            "[goals      ] master = {}x plain (goal >= 0.8); e2e = {}x master (goal >= 0.95); lag after last save \
             {} s (goal <= 0.1); lost {}, ordering errors {}, duplicates applied {} (goals 0); backlog = {}x the \
             broker's consume-and-ack rate (goal >= 0.6)",
            out["master_vs_plain"], out["e2e_vs_master"], r["lag_after_last_master_save_s"], r["lost"],
            r["ordering_errors"], r["duplicates_applied"], out["backlog_vs_broker_consume"]
        ));
    }
    Ok(Value::Object(out))
}
