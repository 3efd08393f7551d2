//! `eventfold cqrs ...`: django-cqrs replication for plain tables (consume, sync) and
//! django-cqrs's management commands (bulk dump and load, the diff trio, dead letters),
//! in its formats, so that the tools of both sides read each other's output.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, ExchangeKind, PublisherOptions};
use eventfold_cqrs::replica::{ReplicaConsumer, ReplicaModels, ReplicaOptions};
use eventfold_cqrs::table::{Filter, Role, TableReplica, TablesConfig, DEFAULT_CONFIG_FILE};
use eventfold_cqrs::tooling::{self, Progress, SyncReport, SyncTarget, ToolError};
use eventfold_cqrs::wire::{queue_routing_key, routing_key, DEFAULT_EXCHANGE};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::relay::{connect_check, AmqpArgs, Signals};
use crate::StoreArgs;

const DEFAULT_BATCH: usize = 10_000;

/// Options of `eventfold cqrs`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The database is the configured store's (EVENTFOLD_STORE, \
EVENTFOLD_SQLITE_PATH, EVENTFOLD_DATABASE_URL, or the global flags); the tables file \
(--config, EVENTFOLD_CQRS_CONFIG, default eventfold-cqrs.toml) says which table holds each \
cqrs_id:

  [replica.author]              # a cqrs_id this service replicates
  table = \"authors\"             # pk = \"id\", revision = \"cqrs_revision\",
  rename = { name = \"full_name\" } # updated = \"cqrs_updated\" by default
  ignore = [\"internal_note\"]

  [master.book]                 # a cqrs_id this service publishes
  table = \"books\"
  fields = [\"id\", \"title\", \"author\"]
  rename = { author = \"author_id\" }

A filter (--filter) is a JSON object as django-cqrs's: {\"id__in\": [1, 2]}, \
{\"title\": \"x\"}, {\"id__gt\": 10, \"cqrs_updated__gte\": \"2026-01-01 00:00:00+00:00\"}; \
lookups exact, in, gt, gte, lt, lte, isnull; fields are instance_data keys, columns or pk; \
{} is every row.

Examples:
  eventfold cqrs consume --queue replica
  eventfold cqrs sync --cqrs-id book --filter '{}' --queue replica
  eventfold cqrs diff-master --cqrs-id book | eventfold cqrs diff-replica --queue replica \\
    | eventfold cqrs diff-sync"
)]
pub struct CqrsArgs {
    #[command(subcommand)]
    command: CqrsCommand,
}

#[derive(Debug, Subcommand)]
enum CqrsCommand {
    /// Replicate into plain tables: consume the queue (declared with django-cqrs's
    /// topology) and apply each message by the revision rules, until SIGTERM or Ctrl-C
    /// (a lost broker connection is waited out).
    Consume(ConsumeArgs),
    /// Re-publish master rows as SYNC messages, to every replica or to one queue, in
    /// confirmed batches (cqrs_sync).
    Sync(SyncArgs),
    /// Write a master table in django-cqrs's dump format (cqrs_bulk_dump).
    BulkDump(BulkDumpArgs),
    /// Load a django-cqrs dump into its replica table, by the revision rules
    /// (cqrs_bulk_load).
    BulkLoad(BulkLoadArgs),
    /// Print the [pk, revision] pairs of a master table, for diff-replica
    /// (cqrs_diff_master).
    DiffMaster(DiffMasterArgs),
    /// Read diff-master's output on stdin and print the pks this replica is missing or
    /// holds at another revision, for diff-sync (cqrs_diff_replica).
    DiffReplica(DiffReplicaArgs),
    /// Read diff-replica's output on stdin and sync those pks to its queue
    /// (cqrs_diff_sync).
    DiffSync(DiffSyncArgs),
    /// Print the pks of a replica table, for deleted-diff-master
    /// (cqrs_deleted_diff_replica).
    DeletedDiffReplica(DiffMasterArgs),
    /// Read deleted-diff-replica's output on stdin and print the pks the master no longer
    /// has, for deleted-sync-replica (cqrs_deleted_diff_master).
    DeletedDiffMaster(TablesOnly),
    /// Read deleted-diff-master's output on stdin and delete those rows of the replica
    /// (cqrs_deleted_sync_replica).
    DeletedSyncReplica(TablesOnly),
    /// Show, retry or purge the dead letters of a replica queue (cqrs_dead_letters).
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

/// The tables file.
#[derive(Debug, clap::Args)]
struct TablesArgs {
    /// The tables file (TOML; see `eventfold cqrs --help`).
    #[arg(long, env = "EVENTFOLD_CQRS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
    config: PathBuf,
}

impl TablesArgs {
    fn load(&self) -> anyhow::Result<TablesConfig> {
        Ok(TablesConfig::load(&self.config)?)
    }
}

/// The broker and exchange.
#[derive(Debug, clap::Args)]
struct BrokerArgs {
    #[command(flatten)]
    amqp: AmqpArgs,
    /// The exchange (django-cqrs's CQRS['exchange']).
    #[arg(long, env = "EVENTFOLD_CQRS_EXCHANGE", default_value = DEFAULT_EXCHANGE)]
    exchange: String,
}

impl BrokerArgs {
    async fn config(&self, role: &str) -> anyhow::Result<AmqpConfig> {
        connect_check(&self.amqp.amqp_url, &format!("eventfold-cqrs-{role}")).await
    }

    /// A confirmed publisher, with the exchange declared (topic, durable) as a
    /// django-cqrs master declares it.
    async fn publisher(&self, role: &str) -> anyhow::Result<ConfirmedPublisher> {
        let amqp = self.config(role).await?;
        let endpoint = amqp.redacted_url();
        let publisher = ConfirmedPublisher::connect(
            amqp,
            PublisherOptions {
                role: role.to_owned(),
                ..PublisherOptions::default()
            },
        )
        .await
        .with_context(|| format!("cannot connect to the broker at {endpoint}"))?;
        publisher
            .declare_exchange(&self.exchange, ExchangeKind::Topic)
            .await?;
        Ok(publisher)
    }
}

/// Options of `eventfold cqrs consume`.
#[derive(Debug, clap::Args)]
struct ConsumeArgs {
    /// The replica's queue (CQRS['queue']); dead letters go to dead_letter_QUEUE.
    #[arg(long, short)]
    queue: String,
    /// Replicate these cqrs_ids only (`-c a b` or `-c a -c b`). Default: every
    /// [replica.*] table.
    #[arg(long = "cqrs-id", short = 'c', value_name = "CQRS_ID", num_args = 1..)]
    cqrs_ids: Vec<String>,
    /// Worker tasks; one instance's messages always go to the same worker, in order.
    #[arg(long, short, default_value_t = 4)]
    workers: usize,
    /// At most this many messages applied per replica transaction.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Re-publishes of a failing message before it is dead-lettered (CQRS_MAX_RETRIES).
    #[arg(long, default_value_t = 30)]
    max_retries: u32,
    /// Seconds before a failing message is re-published (CQRS_RETRY_DELAY).
    #[arg(long, default_value_t = 2.0)]
    retry_delay: f64,
    /// Declare the queue with x-single-active-consumer, so that several consume
    /// processes on one queue fail over without breaking per-instance order.
    #[arg(long)]
    failover: bool,
    #[command(flatten)]
    tables: TablesArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Options of `eventfold cqrs sync`.
#[derive(Debug, clap::Args)]
struct SyncArgs {
    /// The master table's cqrs_id.
    #[arg(long = "cqrs-id", short = 'c', value_name = "CQRS_ID")]
    cqrs_id: String,
    /// The rows to sync, as a JSON filter ('{}' for every row; see `eventfold cqrs
    /// --help`).
    #[arg(long, short)]
    filter: Option<String>,
    /// Sync to this replica queue only (routing key cqrs.QUEUE.CQRS_ID). Default:
    /// every replica (routing key <cqrs_id>).
    #[arg(long, short)]
    queue: Option<String>,
    /// Rows read and published per confirmed batch.
    #[arg(long, short, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    #[command(flatten)]
    tables: TablesArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Options of `eventfold cqrs bulk-dump`.
#[derive(Debug, clap::Args)]
struct BulkDumpArgs {
    /// The master table's cqrs_id.
    #[arg(long = "cqrs-id", short = 'c', value_name = "CQRS_ID")]
    cqrs_id: String,
    /// The dump file, - for stdout. Default: <cqrs_id>.dump.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long, short)]
    force: bool,
    /// Rows read per query.
    #[arg(long, short, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    #[command(flatten)]
    tables: TablesArgs,
}

/// Options of `eventfold cqrs bulk-load`.
#[derive(Debug, clap::Args)]
struct BulkLoadArgs {
    /// The dump file, - for stdin. Its first line names the cqrs_id.
    #[arg(long, short)]
    input: PathBuf,
    /// Delete every row of the replica table first.
    #[arg(long)]
    clear: bool,
    /// Lines loaded per transaction.
    #[arg(long, short, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    #[command(flatten)]
    tables: TablesArgs,
}

/// Options of the commands that only read the tables file and stdin.
#[derive(Debug, clap::Args)]
struct TablesOnly {
    #[command(flatten)]
    tables: TablesArgs,
}

/// Options of `eventfold cqrs diff-master` and `deleted-diff-replica`.
#[derive(Debug, clap::Args)]
struct DiffMasterArgs {
    /// The table's cqrs_id (master for diff-master, replica for deleted-diff-replica).
    #[arg(long = "cqrs-id", short = 'c', value_name = "CQRS_ID")]
    cqrs_id: String,
    /// Only the rows of this JSON filter. Default: every row.
    #[arg(long, short)]
    filter: Option<String>,
    /// [pk, revision] pairs per output line.
    #[arg(long, short, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    #[command(flatten)]
    tables: TablesArgs,
}

/// Options of `eventfold cqrs diff-replica`.
#[derive(Debug, clap::Args)]
struct DiffReplicaArgs {
    /// This replica's queue, passed on to diff-sync (which then syncs to it alone).
    /// Without it, diff-sync syncs to every replica.
    #[arg(long, short)]
    queue: Option<String>,
    #[command(flatten)]
    tables: TablesArgs,
}

/// Options of `eventfold cqrs diff-sync`.
#[derive(Debug, clap::Args)]
struct DiffSyncArgs {
    /// Rows read and published per confirmed batch.
    #[arg(long, short, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    #[command(flatten)]
    tables: TablesArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// Re-publish the dead letters to the replica queue (cqrs.QUEUE.CQRS_ID) with
    /// retries 0 and expires re-stamped; each leaves the dead-letter queue only once the
    /// broker confirmed its copy. Prints the re-published bodies.
    Retry(DeadLetterArgs),
    /// Print the dead letters' bodies, one per line, leaving them in the queue.
    Dump(DeadLetterArgs),
    /// Delete the dead letters.
    Purge(DeadLetterArgs),
}

/// Options of `eventfold cqrs dead-letters ...`.
#[derive(Debug, clap::Args)]
struct DeadLetterArgs {
    /// The replica queue whose dead letters (dead_letter_QUEUE) to handle.
    #[arg(long, short)]
    queue: String,
    /// Only the dead letters of this cqrs_id; the others stay as they are.
    #[arg(long = "cqrs-id", short = 'c', value_name = "CQRS_ID")]
    cqrs_id: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
}

/// Runs `eventfold cqrs ...`.
pub async fn run(store: &StoreArgs, args: &CqrsArgs) -> anyhow::Result<()> {
    let outcome = match &args.command {
        CqrsCommand::Consume(a) => consume(store, a).await,
        CqrsCommand::Sync(a) => sync(store, a).await,
        CqrsCommand::BulkDump(a) => bulk_dump(store, a).await,
        CqrsCommand::BulkLoad(a) => bulk_load(store, a).await,
        CqrsCommand::DiffMaster(a) => diff_master(store, a).await,
        CqrsCommand::DiffReplica(a) => diff_replica(store, a).await,
        CqrsCommand::DiffSync(a) => diff_sync(store, a).await,
        CqrsCommand::DeletedDiffReplica(a) => deleted_diff_replica(store, a).await,
        CqrsCommand::DeletedDiffMaster(a) => deleted_diff_master(store, a).await,
        CqrsCommand::DeletedSyncReplica(a) => deleted_sync_replica(store, a).await,
        CqrsCommand::DeadLetters(c) => dead_letters(c).await,
    };
    // A closed pipe is an io::Error the caller recognises, not a tool error.
    outcome.map_err(|e| match e.downcast::<ToolError>() {
        Ok(ToolError::Io(io)) => io.into(),
        Ok(other) => other.into(),
        Err(e) => e,
    })
}

/// The store holding the tables: a SQLite file that does not exist is an error, not a
/// new empty database.
async fn open(store: &StoreArgs) -> anyhow::Result<Arc<dyn eventfold::Store>> {
    let config = store.config()?;
    if let eventfold::StoreConfig::Sqlite(sqlite) = config.store_config() {
        if !sqlite.path.exists() {
            anyhow::bail!(
                "no SQLite database at {} (EVENTFOLD_SQLITE_PATH or --sqlite-path): the \
                 tables of `eventfold cqrs` must exist",
                sqlite.path.display()
            );
        }
    }
    Ok(config.open_store().await?)
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct Bar(ProgressBar);

impl Bar {
    fn new(what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_message(what.to_owned());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        if total == 0 {
            self.0.set_style(
                ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec})")
                    .expect("a valid template"),
            );
            self.0.enable_steady_tick(Duration::from_millis(200));
        } else {
            self.0.set_length(total);
            self.0.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} to go)",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
        }
    }

    fn advance(&mut self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn parse_filter(
    table: &eventfold_cqrs::table::Table,
    text: Option<&str>,
) -> anyhow::Result<Filter> {
    Ok(match text {
        Some(text) => Filter::parse(table, text)?,
        None => Filter::all(),
    })
}

/// Fails when not every message was confirmed: a returned message reached no queue.
fn check_sync(report: &SyncReport, key: &str) -> anyhow::Result<()> {
    if report.returned > 0 {
        anyhow::bail!(
            "{} of {} messages were unroutable: no queue is bound to routing key {key} \
             (start the replica's consumer first, or check --queue)",
            report.returned,
            report.processed
        );
    }
    if report.nacked > 0 {
        anyhow::bail!(
            "the broker refused {} of {} messages",
            report.nacked,
            report.processed
        );
    }
    Ok(())
}

async fn consume(store: &StoreArgs, args: &ConsumeArgs) -> anyhow::Result<()> {
    let signals = Signals::new()?;
    let config = args.tables.load()?;
    let ids: Vec<String> = if args.cqrs_ids.is_empty() {
        config.replica.keys().cloned().collect()
    } else {
        args.cqrs_ids.clone()
    };
    if ids.is_empty() {
        anyhow::bail!(
            "{} has no [replica.<cqrs_id>] table to replicate into",
            args.tables.config.display()
        );
    }
    if args.workers == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    if !(args.retry_delay.is_finite() && args.retry_delay >= 0.0) {
        anyhow::bail!(
            "--retry-delay must be a number of seconds, not {}",
            args.retry_delay
        );
    }
    let log = open(store).await?;
    let mut models = ReplicaModels::new();
    for id in &ids {
        let table = tooling::open_table(&*log, &config, Role::Replica, id).await?;
        models = models.with(TableReplica::new(table));
    }
    let amqp = args.broker.config("replica").await?;
    let endpoint = amqp.redacted_url();
    let mut options = ReplicaOptions::new(args.queue.clone());
    options.exchange = args.broker.exchange.clone();
    options.workers = args.workers;
    options.batch_size = args.batch.max(1);
    options.max_retries = args.max_retries;
    options.retry_delay = Duration::from_secs_f64(args.retry_delay);
    options.failover = args.failover;
    outln!(
        "consuming {} ({}) from {endpoint}, {} workers",
        args.queue,
        ids.join(", "),
        args.workers
    )?;
    let mut bar = Bar::new(&format!("{} applied", args.queue));
    bar.start(0);
    let shown = bar.0.clone();
    let shutdown = async {
        let signal = signals.recv().await;
        let _ = outln!("{signal}: finishing the batches in hand");
    };
    // A lost connection is waited out (run_until starts again); a refused one ends it.
    let stats = ReplicaConsumer::run_until(
        amqp,
        log,
        models,
        options,
        shutdown,
        Duration::from_millis(500),
        move |stats| shown.set_position(stats.applied),
    )
    .await?;
    drop(bar);
    outln!(
        "stopped: {} applied ({} created, {} updated, {} deleted), {} stale, {} duplicates, \
         {} redelivered skipped, {} retries, {} dead letters; {} acked",
        stats.applied,
        stats.created,
        stats.updated,
        stats.deleted,
        stats.stale,
        stats.duplicates,
        stats.redelivered_skipped,
        stats.retries,
        stats.dead_letters,
        stats.acked
    )?;
    Ok(())
}

async fn sync(store: &StoreArgs, args: &SyncArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let Some(filter) = &args.filter else {
        anyhow::bail!(
            "sync needs --filter: a JSON object such as '{{\"id__in\": [1, 2]}}', or '{{}}' \
             for every row"
        );
    };
    let log = open(store).await?;
    let table = tooling::open_table(&*log, &config, Role::Master, &args.cqrs_id).await?;
    let filter = Filter::parse(&table, filter)?;
    let publisher = args.broker.publisher("sync").await?;
    let target = SyncTarget {
        exchange: &args.broker.exchange,
        queue: args.queue.as_deref(),
    };
    let mut bar = Bar::new(&format!("sync {}", args.cqrs_id));
    let report = tooling::sync(
        &*log, &table, &filter, &publisher, target, args.batch, &mut bar,
    )
    .await?;
    drop(bar);
    let _ = publisher.close().await;
    if report.processed == 0 {
        eprintln!("No objects found for filter!");
        return Ok(());
    }
    let key = match &args.queue {
        Some(q) => queue_routing_key(q, &args.cqrs_id),
        None => routing_key(&args.cqrs_id),
    };
    check_sync(&report, &key)?;
    outln!(
        "{} of {} rows of {} synced (routing key {key})",
        report.confirmed,
        report.processed,
        args.cqrs_id
    )?;
    Ok(())
}

async fn bulk_dump(store: &StoreArgs, args: &BulkDumpArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.dump", args.cqrs_id)));
    let to_stdout = path == Path::new("-");
    if !to_stdout && path.exists() && !args.force {
        anyhow::bail!("{} exists (--force overwrites it)", path.display());
    }
    let log = open(store).await?;
    let table = tooling::open_table(&*log, &config, Role::Master, &args.cqrs_id).await?;
    let mut bar = Bar::new(&format!("dump {}", args.cqrs_id));
    let rows = if to_stdout {
        let mut out = std::io::stdout().lock();
        tooling::bulk_dump(&*log, &table, &mut out, args.batch, &mut bar).await?
    } else {
        // Written beside it and renamed when complete: a failed dump leaves no partial file.
        let partial = path.with_extension("dump.partial");
        let file = File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = BufWriter::new(file);
        let rows = tooling::bulk_dump(&*log, &table, &mut out, args.batch, &mut bar).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e.into());
            }
        };
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
        rows
    };
    drop(bar);
    eprintln!(
        "{rows} rows of {} dumped to {}",
        args.cqrs_id,
        if to_stdout {
            "stdout".into()
        } else {
            path.display().to_string()
        }
    );
    Ok(())
}

fn reader(path: &Path, what: &str) -> anyhow::Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let file =
        File::open(path).with_context(|| format!("cannot read the {what} {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

async fn bulk_load(store: &StoreArgs, args: &BulkLoadArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let mut dump = reader(&args.input, "dump")?;
    let log = open(store).await?;
    let mut bar = Bar::new("load");
    let mut notes = std::io::stderr();
    let report = tooling::bulk_load(
        &*log, &config, &mut *dump, args.clear, args.batch, &mut bar, &mut notes,
    )
    .await?;
    drop(bar);
    if args.clear {
        eprintln!("{} rows deleted first", report.cleared);
    }
    eprintln!(
        "{} rows loaded, {} skipped (same or newer revision here), {} failed",
        report.loaded, report.skipped, report.failed
    );
    if report.failed > 0 {
        anyhow::bail!("{} lines of the dump could not be loaded", report.failed);
    }
    Ok(())
}

async fn diff_master(store: &StoreArgs, args: &DiffMasterArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let log = open(store).await?;
    let table = tooling::open_table(&*log, &config, Role::Master, &args.cqrs_id).await?;
    let filter = parse_filter(&table, args.filter.as_deref())?;
    let mut out = std::io::stdout().lock();
    let rows = tooling::diff_master(&*log, &table, &filter, &mut out, args.batch).await?;
    if rows == 0 {
        eprintln!("No objects found for filter!");
    }
    Ok(())
}

async fn diff_replica(store: &StoreArgs, args: &DiffReplicaArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let log = open(store).await?;
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut notes = std::io::stderr();
    tooling::diff_replica(
        &*log,
        &config,
        &mut input,
        &mut out,
        args.queue.as_deref(),
        &mut notes,
    )
    .await?;
    Ok(())
}

async fn diff_sync(store: &StoreArgs, args: &DiffSyncArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let log = open(store).await?;
    let publisher = args.broker.publisher("diff-sync").await?;
    let mut input = std::io::stdin().lock();
    let mut bar = Bar::new("diff-sync");
    let report = tooling::diff_sync(
        &*log,
        &config,
        &mut input,
        &publisher,
        &args.broker.exchange,
        args.batch,
        &mut bar,
    )
    .await?;
    drop(bar);
    let _ = publisher.close().await;
    check_sync(&report, "the diff's queue")?;
    outln!("{} of {} rows synced", report.confirmed, report.processed)?;
    Ok(())
}

async fn deleted_diff_replica(store: &StoreArgs, args: &DiffMasterArgs) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let log = open(store).await?;
    let table = tooling::open_table(&*log, &config, Role::Replica, &args.cqrs_id).await?;
    let filter = parse_filter(&table, args.filter.as_deref())?;
    let mut out = std::io::stdout().lock();
    let rows = tooling::deleted_diff_replica(&*log, &table, &filter, &mut out, args.batch).await?;
    if rows == 0 {
        eprintln!("No objects found for filter!");
    }
    Ok(())
}

async fn deleted_diff_master(store: &StoreArgs, args: &TablesOnly) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let log = open(store).await?;
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut notes = std::io::stderr();
    tooling::deleted_diff_master(&*log, &config, &mut input, &mut out, &mut notes).await?;
    Ok(())
}

async fn deleted_sync_replica(store: &StoreArgs, args: &TablesOnly) -> anyhow::Result<()> {
    let config = args.tables.load()?;
    let log = open(store).await?;
    let mut input = std::io::stdin().lock();
    let deleted = tooling::deleted_sync_replica(&*log, &config, &mut input).await?;
    outln!("{deleted} rows deleted")?;
    Ok(())
}

async fn dead_letters(command: &DeadLettersCommand) -> anyhow::Result<()> {
    let (DeadLettersCommand::Retry(args)
    | DeadLettersCommand::Dump(args)
    | DeadLettersCommand::Purge(args)) = command;
    let amqp = args.broker.config("dead-letters").await?;
    let cqrs_id = args.cqrs_id.as_deref();
    let mut out = std::io::stdout().lock();
    let report = match command {
        DeadLettersCommand::Dump(_) => {
            tooling::dead_letters_dump(&amqp, &args.queue, cqrs_id, &mut out).await?
        }
        DeadLettersCommand::Retry(_) => {
            let mut notes = std::io::stderr();
            tooling::dead_letters_retry(
                &amqp,
                &args.queue,
                cqrs_id,
                &args.broker.exchange,
                &mut out,
                &mut notes,
            )
            .await?
        }
        DeadLettersCommand::Purge(_) => {
            tooling::dead_letters_purge(&amqp, &args.queue, cqrs_id).await?
        }
    };
    let verb = match command {
        DeadLettersCommand::Dump(_) => "dumped",
        DeadLettersCommand::Retry(_) => "retried",
        DeadLettersCommand::Purge(_) => "purged",
    };
    eprintln!(
        "Total dead letters: {}; {} {verb}, {} left in dead_letter_{}",
        report.total, report.handled, report.left, args.queue
    );
    Ok(())
}
