//! The work behind `eventfold cqrs`: sync, bulk dump and load, the diff trio and the
//! dead-letter commands, in django-cqrs's formats so that either side's tools read the
//! other's output.
//!
//! | command | django-cqrs | format |
//! |---|---|---|
//! | [`sync`] | `cqrs_sync` | SYNC messages to `<cqrs_id>` (every replica) or `cqrs.<queue>.<cqrs_id>` |
//! | [`bulk_dump`] | `cqrs_bulk_dump` | line 1 the `cqrs_id`, then `"\n" + json` per row, no final newline |
//! | [`bulk_load`] | `cqrs_bulk_load` | reads a dump; each row applied as a SAVE (revision rules) |
//! | [`diff_master`] | `cqrs_diff_master` | `<cqrs_id>,<now>` then one `[[pk, revision], ...]` line per batch |
//! | [`diff_replica`] | `cqrs_diff_replica` | `<first line>,<queue or None>` then `[pk, ...]` lines that differ |
//! | [`diff_sync`] | `cqrs_diff_sync` | a SYNC of each line's pks, to the queue of the first line |
//! | [`deleted_diff_replica`] | `cqrs_deleted_diff_replica` | `<cqrs_id>,<now>` then one `[pk, ...]` line per batch of replica rows |
//! | [`deleted_diff_master`] | `cqrs_deleted_diff_master` | the first line, then `[pk, ...]` lines the master no longer has |
//! | [`deleted_sync_replica`] | `cqrs_deleted_sync_replica` | deletes each line's pks on the replica |
//! | [`dead_letters_dump`], [`dead_letters_retry`], [`dead_letters_purge`] | `cqrs_dead_letters` | bodies one per line |
//!
//! JSON is written as `ujson.dumps` writes it ([`crate::wire::ujson`]), timestamps as
//! Python's `str(datetime)`, every line ends with `\n` (Django's `stdout.write`) except in
//! a dump.
//!
//! # Decisions
//!
//! - **Keyset pages, not offsets.** Rows are read `batch` at a time in primary-key order,
//!   each page after the last pk of the one before (`WHERE pk > $n ORDER BY pk LIMIT`),
//!   each in a short transaction of its own: a long sync neither holds a snapshot open nor
//!   rereads skipped rows, and rows written meanwhile are not missed or doubled (django's
//!   `batch_qs` slices by offset and says it needs a static table).
//! - **Confirmed, and unroutable is a failure.** A sync publishes each page with
//!   publisher confirms ([`ConfirmedPublisher::publish_all`]) and counts what came back
//!   unroutable ([`SyncReport::returned`]): a sync to a queue that is not bound reached
//!   nobody, and the CLI exits non-zero saying so (django-cqrs publishes without
//!   confirms).
//! - **Bulk loads apply the revision rules** ([`apply_batch`], as `cqrs_save` does),
//!   a batch of lines per transaction: one read of the stored revisions and one
//!   multi-row upsert per batch, as the replica consumer writes. When that fails (the
//!   database refuses a line, which aborts a PostgreSQL transaction, or a line does not
//!   fit the table), the batch is rolled back and applied again line by line
//!   ([`apply_message`]) with a savepoint per line, so that line alone is reported and
//!   the rest of its batch still commits.
//! - **Dead letters are browsed, not consumed**: taken without an ack, then given back in
//!   their order ([`QueueBrowser`]). A retry acks each dead letter only after the broker
//!   confirmed its re-published copy, so a failure part way loses nothing (at worst a
//!   copy is sent twice, which the revision rules absorb). A body that is not a
//!   django-cqrs message cannot be re-routed and stays.

use std::io::{BufRead, Write};

use chrono::Utc;
use eventfold_amqp::{AmqpConfig, AmqpError, ConfirmedPublisher, Outcome, QueueBrowser};
use eventfold_core::{Store, Transaction};
use serde_json::Value;

use crate::replica::{apply_batch, apply_message, ReplicaModels};
use crate::table::{pk_key, Filter, Role, Table, TableError, TableReplica, TablesConfig};
use crate::wire::{
    dead_letter_queue, expires_after, python_datetime, queue_routing_key, routing_key, ujson,
    CqrsMessage, SignalType, DEFAULT_MESSAGE_TTL,
};

/// What django-cqrs's `cqrs_diff_replica` writes for a replica without a queue, and
/// `cqrs_diff_sync` reads as "every replica".
pub const NO_QUEUE: &str = "None";

/// Reports how far long work got (the CLI draws a progress bar with it).
pub trait Progress {
    /// The work has `total` items (0: unknown).
    fn start(&mut self, total: u64);
    /// `n` more items are done.
    fn advance(&mut self, n: u64);
}

/// No progress reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The tables file, a table or a filter.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The broker.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// Reading the input or writing the output.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The input is not what the command reads (a dump, a diff stream).
    #[error("{what}: {message}")]
    Input {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl From<eventfold_core::Error> for ToolError {
    fn from(e: eventfold_core::Error) -> Self {
        ToolError::Table(TableError::Store(e))
    }
}

fn input(what: &'static str, message: impl Into<String>) -> ToolError {
    ToolError::Input {
        what,
        message: message.into(),
    }
}

fn json_line(value: &impl serde::Serialize) -> Vec<u8> {
    let mut line = ujson(value).expect("JSON values always serialize");
    line.push(b'\n');
    line
}

/// Opens the table of `cqrs_id` on the `role` side of `config` in `store`.
pub async fn open_table(
    store: &dyn Store,
    config: &TablesConfig,
    role: Role,
    cqrs_id: &str,
) -> Result<Table, ToolError> {
    let spec = config.spec(role, cqrs_id)?;
    let mut tx = store.begin().await?;
    let table = Table::open(&mut tx, cqrs_id, spec, role).await;
    tx.rollback().await?;
    Ok(table?)
}

/// Reads the first line of a stream (without its line end); an empty stream is an
/// [`ToolError::Input`] error.
fn first_line(input_stream: &mut dyn BufRead, what: &'static str) -> Result<String, ToolError> {
    let mut line = String::new();
    input_stream.read_line(&mut line)?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        return Err(input(
            what,
            "it is empty (its first line must start with the cqrs_id)",
        ));
    }
    Ok(line)
}

// ---- sync ----

/// Where SYNC messages go.
#[derive(Debug, Clone, Copy)]
pub struct SyncTarget<'a> {
    /// The exchange (`cqrs`).
    pub exchange: &'a str,
    /// One replica's queue (`cqrs.<queue>.<cqrs_id>`), or `None` for every replica
    /// (`<cqrs_id>`).
    pub queue: Option<&'a str>,
}

/// What a sync published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Rows read and published.
    pub processed: u64,
    /// Messages the broker confirmed.
    pub confirmed: u64,
    /// Messages that came back unroutable: no queue is bound to their routing key.
    pub returned: u64,
    /// Messages the broker refused.
    pub nacked: u64,
}

impl SyncReport {
    fn add(&mut self, other: SyncReport) {
        self.processed += other.processed;
        self.confirmed += other.confirmed;
        self.returned += other.returned;
        self.nacked += other.nacked;
    }
}

/// Publishes every row of `table` that `filter` selects as a SYNC message, `batch` rows
/// per read and per confirmed batch, in primary-key order.
pub async fn sync(
    store: &dyn Store,
    table: &Table,
    filter: &Filter,
    publisher: &ConfirmedPublisher,
    target: SyncTarget<'_>,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<SyncReport, ToolError> {
    let batch = batch.max(1);
    let key = match target.queue {
        Some(queue) => queue_routing_key(queue, table.cqrs_id()),
        None => routing_key(table.cqrs_id()),
    };
    let mut tx = store.begin().await?;
    progress.start(table.count(&mut tx, filter).await?);
    tx.rollback().await?;
    let mut report = SyncReport::default();
    let mut after: Option<Value> = None;
    loop {
        let mut tx = store.begin().await?;
        let rows = table.rows(&mut tx, filter, after.as_ref(), batch).await?;
        tx.rollback().await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some(last.pk.clone());
        let messages: Vec<_> = rows
            .iter()
            .map(|row| {
                row.sync_message(table.cqrs_id())
                    .to_message(target.exchange, &key)
            })
            .collect();
        for outcome in publisher.publish_all(&messages).await {
            match outcome? {
                Outcome::Confirmed => report.confirmed += 1,
                Outcome::Returned { .. } => report.returned += 1,
                _ => report.nacked += 1,
            }
        }
        report.processed += rows.len() as u64;
        progress.advance(rows.len() as u64);
        if rows.len() < batch {
            break;
        }
    }
    Ok(report)
}

// ---- bulk dump / load ----

/// Writes `table`'s rows in django-cqrs's dump format: the `cqrs_id`, then `"\n"` and
/// each row's `instance_data` as JSON, in primary-key order, with no final newline.
/// Returns the number of rows.
pub async fn bulk_dump(
    store: &dyn Store,
    table: &Table,
    out: &mut dyn Write,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<u64, ToolError> {
    let batch = batch.max(1);
    let all = Filter::all();
    let mut tx = store.begin().await?;
    progress.start(table.count(&mut tx, &all).await?);
    tx.rollback().await?;
    out.write_all(table.cqrs_id().as_bytes())?;
    let mut dumped = 0;
    let mut after: Option<Value> = None;
    loop {
        let mut tx = store.begin().await?;
        let rows = table.rows(&mut tx, &all, after.as_ref(), batch).await?;
        tx.rollback().await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some(last.pk.clone());
        for row in &rows {
            out.write_all(b"\n")?;
            out.write_all(&ujson(&row.data).expect("JSON values always serialize"))?;
        }
        dumped += rows.len() as u64;
        progress.advance(rows.len() as u64);
        if rows.len() < batch {
            break;
        }
    }
    out.flush()?;
    Ok(dumped)
}

/// What a bulk load did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Rows created or updated.
    pub loaded: u64,
    /// Rows not applied because the replica holds the same or a newer revision.
    pub skipped: u64,
    /// Lines that could not be loaded (not JSON, no primary key, refused by the table).
    pub failed: u64,
    /// Rows deleted first (`clear`).
    pub cleared: u64,
}

/// Loads a django-cqrs dump into the replica table of its `cqrs_id` (line 1): optionally
/// deletes every row first, then applies each line as a SAVE by the revision rules
/// ([`apply_message`]: a row the replica holds at the same or a newer revision is
/// skipped), `batch` lines per transaction. A line that cannot be loaded is reported to
/// `notes` with its line number and the others go on, as `cqrs_bulk_load` does (see the
/// module docs for how a line the database refuses is kept apart).
pub async fn bulk_load(
    store: &dyn Store,
    config: &TablesConfig,
    dump: &mut dyn BufRead,
    clear: bool,
    batch: usize,
    progress: &mut dyn Progress,
    notes: &mut dyn Write,
) -> Result<LoadReport, ToolError> {
    let batch = batch.max(1);
    let cqrs_id = first_line(dump, "the dump")?;
    let table = open_table(store, config, Role::Replica, &cqrs_id).await?;
    let models = ReplicaModels::new().with(TableReplica::new(table.clone()));
    let mut report = LoadReport::default();
    if clear {
        let mut tx = store.begin().await?;
        report.cleared = table.delete_all(&mut tx).await?;
        tx.commit().await?;
    }
    progress.start(0);
    let mut line_number = 1;
    let mut line = String::new();
    let mut eof = false;
    while !eof {
        let mut lines: Vec<(usize, String)> = Vec::with_capacity(batch.min(1024));
        while lines.len() < batch {
            line.clear();
            if dump.read_line(&mut line)? == 0 {
                eof = true;
                break;
            }
            line_number += 1;
            let text = line.trim();
            if !text.is_empty() {
                lines.push((line_number, text.to_owned()));
            }
        }
        if lines.is_empty() {
            break;
        }
        let load = LoadBatch {
            models: &models,
            table: &table,
            cqrs_id: &cqrs_id,
            lines: &lines,
        };
        let parsed = load.parse();
        let mut tx = store.begin().await?;
        let outcomes = match load.run_batched(&mut tx, &parsed).await {
            Some(outcomes) => outcomes,
            None => {
                // The batch write failed (the database refused a line, which aborts a
                // PostgreSQL transaction, or a line does not fit): the batch again, each
                // line in a savepoint, so only that line fails.
                tx.rollback().await?;
                tx = store.begin().await?;
                load.run_each(&mut tx, &parsed).await?
            }
        };
        tx.commit().await?;
        for ((number, _), outcome) in lines.iter().zip(outcomes) {
            match outcome {
                Ok(true) => report.loaded += 1,
                Ok(false) => report.skipped += 1,
                Err(reason) => {
                    report.failed += 1;
                    writeln!(notes, "line {number}: {reason}")?;
                }
            }
        }
        progress.advance(lines.len() as u64);
    }
    Ok(report)
}

/// One transaction's worth of dump lines (line number, text).
struct LoadBatch<'a> {
    models: &'a ReplicaModels,
    table: &'a Table,
    cqrs_id: &'a str,
    lines: &'a [(usize, String)],
}

const LOAD_SAVEPOINT: &str = "eventfold_cqrs_load_line";

impl LoadBatch<'_> {
    /// Each line as the SAVE it stands for, or why it is not one.
    fn parse(&self) -> Vec<Result<CqrsMessage, String>> {
        self.lines
            .iter()
            .map(|(_, text)| {
                let data = match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(data)) => data,
                    Ok(_) => return Err("not a JSON object".to_owned()),
                    Err(e) => return Err(format!("not JSON ({e})")),
                };
                let pk = self.table.pk_of(&data).map_err(|e| e.to_string())?;
                Ok(CqrsMessage::new(SignalType::Save, self.cqrs_id, pk, data))
            })
            .collect()
    }

    /// Applies every line at once ([`apply_batch`]: one read of the stored revisions,
    /// one multi-row upsert): `Ok(true)` loaded, `Ok(false)` skipped by the revision
    /// rules, `Err(reason)` not a row. `None` when the batch failed (roll `tx` back).
    async fn run_batched(
        &self,
        tx: &mut Transaction,
        parsed: &[Result<CqrsMessage, String>],
    ) -> Option<Vec<Result<bool, String>>> {
        let messages: Vec<&CqrsMessage> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        let mut applied = apply_batch(self.models, tx, &messages)
            .await
            .ok()?
            .into_iter();
        Some(
            parsed
                .iter()
                .map(|p| match p {
                    Ok(_) => Ok(applied.next().is_some_and(|a| a.is_applied())),
                    Err(reason) => Err(reason.clone()),
                })
                .collect(),
        )
    }

    /// Applies each line in `tx` in a savepoint of its own ([`apply_message`]), so a line
    /// the database refuses is rolled back alone and reported.
    async fn run_each(
        &self,
        tx: &mut Transaction,
        parsed: &[Result<CqrsMessage, String>],
    ) -> Result<Vec<Result<bool, String>>, ToolError> {
        let mut outcomes = Vec::with_capacity(parsed.len());
        for message in parsed {
            let message = match message {
                Ok(message) => message,
                Err(reason) => {
                    outcomes.push(Err(reason.clone()));
                    continue;
                }
            };
            tx.execute(&format!("SAVEPOINT {LOAD_SAVEPOINT}"), &[])
                .await?;
            let applied = apply_message(self.models, tx, message).await;
            if applied.is_err() {
                tx.execute(&format!("ROLLBACK TO SAVEPOINT {LOAD_SAVEPOINT}"), &[])
                    .await?;
            }
            tx.execute(&format!("RELEASE SAVEPOINT {LOAD_SAVEPOINT}"), &[])
                .await?;
            outcomes.push(
                applied
                    .map(|a| a.is_applied())
                    .map_err(|e| format!("pk {}: {e}", message.pk_text())),
            );
        }
        Ok(outcomes)
    }
}

// ---- diffs ----

/// Writes `cqrs_diff_master`'s stream for `table`: `<cqrs_id>,<now>`, then one JSON list
/// of `[pk, revision]` per `batch` rows, in primary-key order. Returns the number of rows
/// (0: nothing was written, as django-cqrs writes nothing when no row matches).
pub async fn diff_master(
    store: &dyn Store,
    table: &Table,
    filter: &Filter,
    out: &mut dyn Write,
    batch: usize,
) -> Result<u64, ToolError> {
    pk_pages(store, table, filter, out, batch, true).await
}

/// Writes `cqrs_deleted_diff_replica`'s stream for the replica `table`:
/// `<cqrs_id>,<now>`, then one JSON list of pks per `batch` rows, for
/// [`deleted_diff_master`] to tell which the master no longer has. Returns the number of
/// rows (0: nothing was written).
pub async fn deleted_diff_replica(
    store: &dyn Store,
    table: &Table,
    filter: &Filter,
    out: &mut dyn Write,
    batch: usize,
) -> Result<u64, ToolError> {
    pk_pages(store, table, filter, out, batch, false).await
}

/// The first line and the pages of the two streams that list a table's rows.
async fn pk_pages(
    store: &dyn Store,
    table: &Table,
    filter: &Filter,
    out: &mut dyn Write,
    batch: usize,
    with_revisions: bool,
) -> Result<u64, ToolError> {
    let batch = batch.max(1);
    let mut rows = 0;
    let mut after: Option<Value> = None;
    loop {
        let mut tx = store.begin().await?;
        let page = table
            .revisions(&mut tx, filter, after.as_ref(), batch)
            .await?;
        tx.rollback().await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        if rows == 0 {
            writeln!(out, "{},{}", table.cqrs_id(), python_datetime(&Utc::now()))?;
        }
        after = Some(last.clone());
        rows += page.len() as u64;
        if with_revisions {
            out.write_all(&json_line(&page))?;
        } else {
            let pks: Vec<&Value> = page.iter().map(|(pk, _)| pk).collect();
            out.write_all(&json_line(&pks))?;
        }
        if page.len() < batch {
            break;
        }
    }
    out.flush()?;
    Ok(rows)
}

/// Reads a stream of pk lists after its `<cqrs_id>,...` first line: the first line, the
/// table of its `cqrs_id` on the `role` side, and the lists. A line that is not a JSON
/// list of pks is an error naming it, before anything is done.
async fn pk_lists(
    store: &dyn Store,
    config: &TablesConfig,
    role: Role,
    stream: &mut dyn BufRead,
    what: &'static str,
) -> Result<(String, Table, Vec<Vec<Value>>), ToolError> {
    let first = first_line(stream, what)?;
    let cqrs_id = first.split(',').next().unwrap_or_default();
    let table = open_table(store, config, role, cqrs_id).await?;
    let mut lists = Vec::new();
    for (i, line) in stream.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(pks)) if pks.iter().all(|p| !p.is_array() && !p.is_object()) => {
                lists.push(pks)
            }
            _ => {
                return Err(input(
                    what,
                    format!("line {}: not a JSON list of pks: {text}", i + 2),
                ))
            }
        }
    }
    Ok((first, table, lists))
}

/// Reads [`deleted_diff_replica`]'s stream on the master and writes
/// `cqrs_deleted_diff_master`'s: the first line as it is, then, for each input line, the
/// JSON list of its pks that the master no longer has (lines with none are left out).
/// Returns how many pks are gone; each line is also noted to `notes`.
pub async fn deleted_diff_master(
    store: &dyn Store,
    config: &TablesConfig,
    diff: &mut dyn BufRead,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<u64, ToolError> {
    let (first, table, lists) = pk_lists(
        store,
        config,
        Role::Master,
        diff,
        "the deleted-diff-replica stream",
    )
    .await?;
    writeln!(out, "{first}")?;
    let mut gone = 0;
    for pks in lists {
        let missing = |_: usize, stored: Option<i64>| stored.is_none();
        gone += write_picked(store, &table, &pks, missing, out, notes, "PK to delete: ").await?;
    }
    out.flush()?;
    Ok(gone)
}

/// Looks `pks` up in `table` and writes the JSON list of those `pick` keeps (given each
/// one's index and stored revision), if any, to `out`, and after `note` to `notes`.
/// Returns how many it kept.
async fn write_picked(
    store: &dyn Store,
    table: &Table,
    pks: &[Value],
    pick: impl Fn(usize, Option<i64>) -> bool,
    out: &mut dyn Write,
    notes: &mut dyn Write,
    note: &str,
) -> Result<u64, ToolError> {
    let mut tx = store.begin().await?;
    let stored = table.stored_revisions(&mut tx, pks).await?;
    tx.rollback().await?;
    let picked: Vec<&Value> = pks
        .iter()
        .enumerate()
        .filter(|(i, pk)| pick(*i, stored.get(&pk_key(pk)).copied()))
        .map(|(_, pk)| pk)
        .collect();
    if !picked.is_empty() {
        let listed = json_line(&picked);
        out.write_all(&listed)?;
        notes.write_all(note.as_bytes())?;
        notes.write_all(&listed)?;
    }
    Ok(picked.len() as u64)
}

/// Reads [`deleted_diff_master`]'s stream on the replica and deletes the rows of its pks
/// (`cqrs_deleted_sync_replica`), one transaction per line. Returns how many rows went.
pub async fn deleted_sync_replica(
    store: &dyn Store,
    config: &TablesConfig,
    diff: &mut dyn BufRead,
) -> Result<u64, ToolError> {
    let (_, table, lists) = pk_lists(
        store,
        config,
        Role::Replica,
        diff,
        "the deleted-diff-master stream",
    )
    .await?;
    let mut deleted = 0;
    for pks in lists {
        let mut tx = store.begin().await?;
        for pk in &pks {
            deleted += table.delete(&mut tx, pk).await?;
        }
        tx.commit().await?;
    }
    Ok(deleted)
}

/// Reads `cqrs_diff_master`'s stream and writes `cqrs_diff_replica`'s: the first line
/// with `,<queue>` added (`None` without a queue), then, for each input line, the JSON
/// list of its pks whose row is missing or at another revision here (lines with none are
/// left out). Returns how many pks differ; each differing line is also noted to `notes`.
pub async fn diff_replica(
    store: &dyn Store,
    config: &TablesConfig,
    diff: &mut dyn BufRead,
    out: &mut dyn Write,
    queue: Option<&str>,
    notes: &mut dyn Write,
) -> Result<u64, ToolError> {
    const WHAT: &str = "the diff-master stream";
    let first = first_line(diff, WHAT)?;
    let cqrs_id = first.split(',').next().unwrap_or_default();
    let table = open_table(store, config, Role::Replica, cqrs_id).await?;
    writeln!(out, "{first},{}", queue.unwrap_or(NO_QUEUE))?;
    let mut differing = 0;
    for (i, line) in diff.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let pairs = parse_revisions(text).ok_or_else(|| {
            input(
                WHAT,
                format!(
                    "line {}: not a JSON list of [pk, revision] pairs: {text}",
                    i + 2
                ),
            )
        })?;
        let pks: Vec<Value> = pairs.iter().map(|(pk, _)| pk.clone()).collect();
        let stale = |i: usize, stored: Option<i64>| stored != Some(pairs[i].1);
        differing += write_picked(store, &table, &pks, stale, out, notes, "PK to resync: ").await?;
    }
    out.flush()?;
    Ok(differing)
}

fn parse_revisions(text: &str) -> Option<Vec<(Value, i64)>> {
    let Value::Array(items) = serde_json::from_str(text).ok()? else {
        return None;
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(pair)
                if pair.len() == 2 && !pair[0].is_array() && !pair[0].is_object() =>
            {
                Some((pair[0].clone(), pair[1].as_i64()?))
            }
            _ => None,
        })
        .collect()
}

/// Reads `cqrs_diff_replica`'s stream and syncs the pks of each line (`{"id__in": [...]}`
/// in django-cqrs; here by primary key) to the queue its first line names, or to every
/// replica when that is `None`.
#[allow(clippy::too_many_arguments)]
pub async fn diff_sync(
    store: &dyn Store,
    config: &TablesConfig,
    diff: &mut dyn BufRead,
    publisher: &ConfirmedPublisher,
    exchange: &str,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<SyncReport, ToolError> {
    const WHAT: &str = "the diff-replica stream";
    let (first, table, lists) = pk_lists(store, config, Role::Master, diff, WHAT).await?;
    let parts: Vec<&str> = first.split(',').collect();
    if parts.len() < 3 {
        return Err(input(
            WHAT,
            format!("its first line {first:?} is not <cqrs_id>,<time>,<queue>"),
        ));
    }
    let queue = parts[parts.len() - 1];
    let target = SyncTarget {
        exchange,
        queue: (queue != NO_QUEUE).then_some(queue),
    };
    let mut report = SyncReport::default();
    for pks in lists {
        for chunk in pks.chunks(crate::table::PK_CHUNK) {
            let filter = Filter::pk_in(&table, chunk.to_vec());
            report.add(sync(store, &table, &filter, publisher, target, batch, progress).await?);
        }
    }
    Ok(report)
}

// ---- dead letters ----

/// What a dead-letter command did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterReport {
    /// Dead letters in the queue when the command started.
    pub total: u32,
    /// Dead letters dumped, re-published (and removed) or purged.
    pub handled: u32,
    /// Dead letters left in the queue: another `cqrs_id`, not a django-cqrs message
    /// (retry), or a re-publish the broker did not confirm.
    pub left: u32,
}

fn cqrs_id_of(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("cqrs_id")?.as_str().map(str::to_owned)
}

/// Opens `dead_letter_<queue>` (declared durable if missing, as django-cqrs does).
async fn open_dead_letters(
    amqp: &AmqpConfig,
    queue: &str,
) -> Result<(QueueBrowser, String, u32), ToolError> {
    let mut browser = QueueBrowser::connect(amqp.clone(), "dead-letters").await?;
    let dlq = dead_letter_queue(queue);
    let total = browser.declare(&dlq).await?;
    Ok((browser, dlq, total))
}

/// One dead letter as [`dead_letters_peek`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeekedDeadLetter {
    /// Its `cqrs_id`, when the body is a django-cqrs message.
    pub cqrs_id: Option<String>,
    /// Why it was dead-lettered (the consumer's `x-eventfold-error` header), when known.
    pub reason: Option<String>,
    /// How many times it was tried (the `x-eventfold-attempts` header), when known.
    pub attempts: Option<i64>,
    /// The body, as text (lossy for bytes that are not UTF-8).
    pub body: String,
}

/// The first `limit` dead letters of `queue` and how many there are in all, leaving every
/// one of them in place and in order (taken without an ack and given back, as
/// [`dead_letters_dump`] does).
pub async fn dead_letters_peek(
    amqp: &AmqpConfig,
    queue: &str,
    limit: u32,
) -> Result<(u32, Vec<PeekedDeadLetter>), ToolError> {
    let (browser, dlq, total) = open_dead_letters(amqp, queue).await?;
    let outcome = async {
        let mut letters = Vec::new();
        for _ in 0..total.min(limit) {
            let Some(taken) = browser.get(&dlq).await? else {
                break;
            };
            let headers = &taken.message.headers;
            letters.push(PeekedDeadLetter {
                cqrs_id: cqrs_id_of(&taken.message.body),
                reason: match headers.get(eventfold_amqp::HEADER_ERROR) {
                    Some(eventfold_amqp::HeaderValue::Str(reason)) => Some(reason.clone()),
                    _ => None,
                },
                attempts: match headers.get(eventfold_amqp::HEADER_ATTEMPTS) {
                    Some(eventfold_amqp::HeaderValue::Int(n)) => Some(*n),
                    _ => None,
                },
                body: String::from_utf8_lossy(&taken.message.body).into_owned(),
            });
        }
        Ok::<_, ToolError>(letters)
    }
    .await;
    browser.requeue_all().await?;
    browser.close().await?;
    outcome.map(|letters| (total, letters))
}

/// Writes the body of each dead letter of `queue` (of `cqrs_id` only, when given), one
/// per line, and leaves them all in the queue: they are taken without an ack and given
/// back, in order, at the end.
pub async fn dead_letters_dump(
    amqp: &AmqpConfig,
    queue: &str,
    cqrs_id: Option<&str>,
    out: &mut dyn Write,
) -> Result<DeadLetterReport, ToolError> {
    let (browser, dlq, total) = open_dead_letters(amqp, queue).await?;
    let mut report = DeadLetterReport {
        total,
        ..Default::default()
    };
    let outcome = async {
        for _ in 0..total {
            let Some(taken) = browser.get(&dlq).await? else {
                break;
            };
            let body = &taken.message.body;
            if cqrs_id.is_some_and(|id| cqrs_id_of(body).as_deref() != Some(id)) {
                report.left += 1;
                continue;
            }
            out.write_all(body)?;
            out.write_all(b"\n")?;
            report.handled += 1;
        }
        out.flush()?;
        Ok::<_, ToolError>(())
    }
    .await;
    browser.requeue_all().await?;
    browser.close().await?;
    outcome.map(|()| report)
}

/// Re-publishes the dead letters of `queue` (of `cqrs_id` only, when given) to
/// `cqrs.<queue>.<cqrs_id>` with `retries` 0 and `expires` re-stamped (now + 1 day, when
/// it had one), as `cqrs_dead_letters retry` does, and removes each from the dead-letter
/// queue only once the broker confirmed its copy. Writes each re-published body to `out`.
/// Dead letters that are not django-cqrs messages stay where they are.
pub async fn dead_letters_retry(
    amqp: &AmqpConfig,
    queue: &str,
    cqrs_id: Option<&str>,
    exchange: &str,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<DeadLetterReport, ToolError> {
    const WINDOW: usize = 256;
    let publisher = ConfirmedPublisher::connect(
        amqp.clone(),
        eventfold_amqp::PublisherOptions {
            role: "dead-letters-retry".to_owned(),
            ..Default::default()
        },
    )
    .await?;
    let (browser, dlq, total) = open_dead_letters(amqp, queue).await?;
    let mut report = DeadLetterReport {
        total,
        ..Default::default()
    };
    let outcome = async {
        let mut pending: Vec<(u64, CqrsMessage)> = Vec::with_capacity(WINDOW);
        let mut seen = 0;
        while seen < total {
            let taken = browser.get(&dlq).await?;
            if let Some(taken) = &taken {
                seen += 1;
                match CqrsMessage::from_body(&taken.message.body) {
                    Err(e) => {
                        report.left += 1;
                        writeln!(notes, "left in {dlq}: not a django-cqrs message ({e})")?;
                    }
                    Ok(m) if cqrs_id.is_some_and(|id| id != m.cqrs_id) => report.left += 1,
                    Ok(mut m) => {
                        m.retries = 0;
                        if m.expires.is_some() {
                            m.expires = expires_after(Utc::now(), Some(DEFAULT_MESSAGE_TTL));
                        }
                        pending.push((taken.delivery_tag, m));
                    }
                }
            }
            if pending.len() >= WINDOW || (taken.is_none() || seen == total) && !pending.is_empty()
            {
                republish(
                    &publisher,
                    &browser,
                    queue,
                    exchange,
                    &mut pending,
                    &mut report,
                    out,
                )
                .await?;
            }
            if taken.is_none() {
                break;
            }
        }
        out.flush()?;
        Ok::<_, ToolError>(())
    }
    .await;
    browser.requeue_all().await?;
    browser.close().await?;
    let _ = publisher.close().await;
    outcome.map(|()| report)
}

async fn republish(
    publisher: &ConfirmedPublisher,
    browser: &QueueBrowser,
    queue: &str,
    exchange: &str,
    pending: &mut Vec<(u64, CqrsMessage)>,
    report: &mut DeadLetterReport,
    out: &mut dyn Write,
) -> Result<(), ToolError> {
    let messages: Vec<_> = pending
        .iter()
        .map(|(_, m)| m.to_message(exchange, &queue_routing_key(queue, &m.cqrs_id)))
        .collect();
    let outcomes = publisher.publish_all(&messages).await;
    for ((tag, _), (outcome, message)) in pending.drain(..).zip(outcomes.into_iter().zip(&messages))
    {
        if matches!(outcome, Ok(Outcome::Confirmed)) {
            browser.ack(tag).await?;
            out.write_all(&message.body)?;
            out.write_all(b"\n")?;
            report.handled += 1;
        } else {
            report.left += 1;
        }
    }
    Ok(())
}

/// Removes the dead letters of `queue`: all of them (a purge), or, with `cqrs_id`, only
/// that id's (taken and acked one by one; the others are given back).
pub async fn dead_letters_purge(
    amqp: &AmqpConfig,
    queue: &str,
    cqrs_id: Option<&str>,
) -> Result<DeadLetterReport, ToolError> {
    let (browser, dlq, total) = open_dead_letters(amqp, queue).await?;
    let mut report = DeadLetterReport {
        total,
        ..Default::default()
    };
    let outcome = async {
        match cqrs_id {
            None => report.handled = browser.purge(&dlq).await?,
            Some(id) => {
                for _ in 0..total {
                    let Some(taken) = browser.get(&dlq).await? else {
                        break;
                    };
                    if cqrs_id_of(&taken.message.body).as_deref() == Some(id) {
                        browser.ack(taken.delivery_tag).await?;
                        report.handled += 1;
                    } else {
                        report.left += 1;
                    }
                }
            }
        }
        Ok::<_, ToolError>(())
    }
    .await;
    browser.requeue_all().await?;
    browser.close().await?;
    outcome.map(|()| report)
}
