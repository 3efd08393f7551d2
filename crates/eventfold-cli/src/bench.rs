//! `eventfold bench worlds`: the peers' Worlds workload (shared harness shape), printing
//! readable lines and then one JSON line with the peers' keys.
//!
//! Steps, sequential with one command in flight, as in the peers' `es_bench.py`:
//! create N worlds; M commands round-robin (get + make_it_so + save, snapshot every 5,
//! zlib); read every world and check its history; then raw appends on one aggregate of an
//! application without snapshots (`raw_app`, `raw_store`, `raw_single`).
//!
//! On PostgreSQL it also times, in the same run, the server's limits: slices of bare
//! commits and of read-then-commit between the command passes, and at the end one bare
//! commit, one read+commit and one command at a time, in rotating turns (per-operation
//! medians; the commands of that probe are not in the command figures).

use std::sync::Arc;
use std::time::Instant;

use eventfold::{Config, Recording, Root, Store};
use eventfold_bench::changes::{percentile, sig4};
use serde_json::{json, Value};
use worlds_example::{World, WorldEvent, Worlds};

use crate::StoreArgs;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The Worlds workload of the peers' harness.
    Worlds(WorldsArgs),
    /// PostgreSQL: the bare single-row commit rate, and concurrent writers (1, 4, 16) with
    /// the concurrent ordering against the table lock Python eventsourcing takes.
    #[cfg(feature = "postgres")]
    PgWriters(PgWritersArgs),
    /// The peers' django-events-sourcing workload: saves of an `Order` row plus its change
    /// record in one transaction, the relay and a nameko-queue consumer in this process
    /// (phases baseline, no_consumer, consumer, backlog drain vs the broker's own confirmed
    /// rate, bare commits). Needs RabbitMQ and `rabbitmqctl` (a scratch virtual host).
    Changes(ChangesArgs),
    /// The peers' django-cqrs workload: master saves of an `Item` row plus its django-cqrs
    /// message in one transaction, the relay, and a replica consumer with W workers
    /// applying to a second store, in this process (phases plain, record_only, bumped,
    /// floor, replication, cold_start, backlog vs the broker's own consume-and-ack rate,
    /// bare commits; floor_write, the backlog's rows by a bare multi-row upsert, on
    /// request). Needs RabbitMQ and
    /// `rabbitmqctl` (a scratch virtual host).
    Replication(ReplicationArgs),
    /// The inspector's pages on a large store: one stream of 1M events (a snapshot every
    /// 1000) inside a log of 10M records, written once (SQLite: kept for the next run), then
    /// each page's request through the router (p50/p99 ms).
    Inspect(InspectArgs),
}

/// Options of `eventfold bench inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// sqlite or postgres (a scratch schema, dropped at the end).
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Events of the big stream.
    #[arg(long, default_value_t = 1_000_000)]
    stream_events: u64,
    /// Records of the log in all (scale down with e.g. --log-records 100000
    /// --stream-events 10000).
    #[arg(long, default_value_t = 10_000_000)]
    log_records: u64,
    /// Timed requests per page.
    #[arg(long, default_value_t = 50)]
    requests: usize,
    /// SQLite file of the sqlite backend (reused when it holds the same data set).
    #[arg(long, default_value = "/tmp/eventfold_inspect_bench.sqlite3")]
    bench_sqlite_path: String,
}

/// Options of `eventfold bench replication` (the peer's `cqrs_bench.py` flags).
#[derive(Debug, clap::Args)]
pub struct ReplicationArgs {
    /// sqlite or postgres (master and replica both).
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// The broker, without a virtual host (a scratch one is created and deleted).
    #[arg(
        long,
        env = "EVENTFOLD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    amqp_url: String,
    /// N items (each created, then updated once: 2N messages).
    #[arg(short = 'n', long, default_value_t = 2000)]
    items: usize,
    /// Replica worker tasks.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// Update each item right after its create, instead of all creates then all updates.
    #[arg(long)]
    interleave: bool,
    /// K master saves before the replica exists (the cold_start phases; 0 skips them).
    #[arg(long, default_value_t = 100)]
    cold_start: usize,
    /// Messages of the backlog phase.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Master saves per transaction while the backlog is written (not timed).
    #[arg(long, default_value_t = 500)]
    backlog_batch: usize,
    /// The relay's batch size and window.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Messages per replica transaction, at most.
    #[arg(long, default_value_t = 200)]
    replica_batch: usize,
    /// Bare single-row commits.
    #[arg(long, default_value_t = 2000)]
    bare_commits: u64,
    /// Longest wait for the relay or the replica, seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Phases to run (also floor_write, not run by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,record_only,bumped,floor,replication,cold_start,backlog,bare"
    )]
    phases: Vec<String>,
    /// Directory of the scratch SQLite files.
    #[arg(long, default_value = "/tmp")]
    scratch_dir: String,
}

/// Options of `eventfold bench changes`.
#[derive(Debug, clap::Args)]
pub struct ChangesArgs {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// The broker, without a virtual host (a scratch one is created and deleted).
    #[arg(
        long,
        env = "EVENTFOLD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    amqp_url: String,
    /// N saves per phase (N/2 create+update pairs).
    #[arg(short = 'n', long, default_value_t = 1000)]
    saves: usize,
    /// Change records of the backlog phase.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Change records per transaction while the backlog is written (not timed).
    #[arg(long, default_value_t = 500)]
    backlog_batch: usize,
    /// The relay's batch size and window, and the broker probe's.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Messages of the broker's own confirmed-publish probe (default: --backlog).
    #[arg(long)]
    broker_messages: Option<usize>,
    /// Bare single-row commits.
    #[arg(long, default_value_t = 2000)]
    bare_commits: u64,
    /// Longest wait for the relay or the consumer, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Phases to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,record_only,no_consumer,consumer,consumer_paced,backlog,bare"
    )]
    phases: Vec<String>,
    /// Consume from nameko's two per-handler queues (created, updated) instead of one
    /// queue bound `#` (two queues keep no order between an instance's events).
    #[arg(long)]
    nameko_queues: bool,
    /// Saves per second of the consumer_paced phase (the peer's rate with its consumer).
    #[arg(long, default_value_t = 250.0)]
    paced_saves_per_s: f64,
    /// Directory of the scratch SQLite files.
    #[arg(long, default_value = "/tmp")]
    scratch_dir: String,
}

/// Options of `eventfold bench pg-writers`.
#[cfg(feature = "postgres")]
#[derive(Debug, clap::Args)]
pub struct PgWritersArgs {
    /// Single-row commits for the bare rate.
    #[arg(long, default_value_t = 2000)]
    commits: u64,
    /// Seconds per writer-count and ordering.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    writers: Vec<usize>,
}

/// Options of `eventfold bench worlds`.
#[derive(Debug, clap::Args)]
pub struct WorldsArgs {
    /// memory, sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// N aggregates.
    #[arg(long, default_value_t = 200)]
    worlds: usize,
    /// M commands per aggregate.
    #[arg(long, default_value_t = 20)]
    commands: usize,
    /// R events in raw_app and raw_store.
    #[arg(long, default_value_t = 10_000)]
    raw_events: usize,
    /// B events per save in raw_app and raw_store.
    #[arg(long, default_value_t = 100)]
    raw_batch: usize,
    /// S single-event transactions in raw_single.
    #[arg(long, default_value_t = 500)]
    raw_single: usize,
    /// Skip the raw append micro-benchmark.
    #[arg(long)]
    no_raw: bool,
    /// Store events uncompressed instead of zlib (the peers' configuration is zlib): shows
    /// what compression costs a command.
    #[arg(long)]
    no_compression: bool,
    /// Aggregate cache size (0 = off, as in the peers' runs). Results are labelled
    /// `eventfold-<backend>-cached` when it is on.
    #[arg(long, default_value_t = 0)]
    cache: usize,
    /// With --cache: a single writer's cache, no read before each command (a cache hit
    /// does not fast-forward).
    #[arg(long, requires = "cache")]
    single_writer: bool,
    /// SQLite file for the sqlite backend (deleted first).
    #[arg(long, default_value = "/tmp/eventfold_bench.sqlite3")]
    bench_sqlite_path: String,
}

pub async fn run(store: &StoreArgs, command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Worlds(args) => worlds(store, args).await,
        #[cfg(feature = "postgres")]
        BenchCommand::PgWriters(args) => pg_writers(store, args).await,
        BenchCommand::Changes(args) => changes(store, args).await,
        BenchCommand::Replication(args) => replication(store, args).await,
        BenchCommand::Inspect(args) => inspect(store, args).await,
    }
}

/// The benchmark backend named `name`: scratch SQLite files in `scratch_dir`, or the
/// PostgreSQL server the store options name.
fn bench_backend(
    store: &StoreArgs,
    name: &str,
    scratch_dir: &str,
) -> anyhow::Result<eventfold_bench::changes::Backend> {
    use eventfold_bench::changes::Backend;
    #[cfg(not(feature = "postgres"))]
    let _ = store;
    Ok(match name {
        "sqlite" => Backend::Sqlite {
            dir: scratch_dir.into(),
        },
        #[cfg(feature = "postgres")]
        "postgres" => {
            let mut vars = store.vars();
            vars.insert("EVENTFOLD_STORE".into(), "postgres".into());
            let eventfold::StoreConfig::Postgres(pg) =
                Config::from_vars(vars)?.store_config().clone()
            else {
                anyhow::bail!("this build has no PostgreSQL store");
            };
            Backend::Postgres { url: pg.url }
        }
        other => anyhow::bail!("unknown backend {other} (sqlite or postgres)"),
    })
}

/// Runs `bench` on a runtime of its own with two workers, so the relay and the consumers
/// run beside the save loop as they would in a server (the CLI's own runtime has one
/// thread).
async fn on_two_workers<F>(bench: F) -> anyhow::Result<Value>
where
    F: std::future::Future<Output = anyhow::Result<Value>> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(bench)
    })
    .await?
}

/// Prints the peers' last line: `results.<name>` = the phases (the peer's keys) and the
/// figures across phases.
fn print_peer_line(
    bench: &str,
    workload: &str,
    params: Value,
    name: String,
    result: Value,
) -> anyhow::Result<()> {
    let mut out = json!({
        "bench": bench,
        "workload": workload,
        "params": params,
        "versions": {"eventfold": env!("CARGO_PKG_VERSION")},
        "results": {},
    });
    let mut figures = result;
    if let Some(fields) = figures.as_object_mut() {
        if let Some(Value::Object(phases)) = fields.remove("results") {
            fields.extend(phases);
        }
    }
    out["results"] = json!({ name: figures });
    outln!("{out}")?;
    Ok(())
}

/// `eventfold bench inspect`.
async fn inspect(store: &StoreArgs, args: &InspectArgs) -> anyhow::Result<()> {
    use eventfold_bench::inspect::{InspectBench, Target};
    if args.stream_events == 0 || args.stream_events > args.log_records || args.requests == 0 {
        anyhow::bail!(
            "need 0 < --stream-events <= --log-records and --requests > 0 (got {}, {}, {})",
            args.stream_events,
            args.log_records,
            args.requests
        );
    }
    let target = match bench_backend(store, &args.backend, "/tmp")? {
        eventfold_bench::changes::Backend::Sqlite { .. } => {
            Target::Sqlite(args.bench_sqlite_path.clone().into())
        }
        #[cfg(feature = "postgres")]
        eventfold_bench::changes::Backend::Postgres { url } => Target::Postgres(url),
    };
    let bench = InspectBench {
        stream_events: args.stream_events,
        log_records: args.log_records,
        requests: args.requests,
    };
    outln!(
        "inspect on {}: a stream of {} events in a log of {} records, {} requests per page",
        args.backend,
        args.stream_events,
        args.log_records,
        args.requests
    )?;
    let result =
        on_two_workers(async move { eventfold_bench::inspect::run(target, &bench).await }).await?;
    if let Some(pages) = result["pages"].as_object() {
        for (name, figures) in pages {
            outln!(
                "{name:<24} p50 {} ms  p99 {} ms",
                figures["p50_ms"],
                figures["p99_ms"]
            )?;
        }
    }
    let line = json!({
        "bench": "inspect",
        "params": {
            "backend": args.backend, "stream_events": args.stream_events,
            "log_records": args.log_records, "requests": args.requests,
        },
        "versions": {"eventfold": env!("CARGO_PKG_VERSION")},
        "results": result,
    });
    outln!("{line}")?;
    Ok(())
}

/// `eventfold bench replication`.
async fn replication(store: &StoreArgs, args: &ReplicationArgs) -> anyhow::Result<()> {
    use eventfold_bench::replication::ReplicationBench;
    let bench = ReplicationBench {
        backend: bench_backend(store, &args.backend, &args.scratch_dir)?,
        amqp_url: args.amqp_url.clone(),
        items: args.items,
        workers: args.workers.max(1),
        interleave: args.interleave,
        cold_start: args.cold_start,
        backlog: args.backlog,
        backlog_batch: args.backlog_batch,
        window: args.window,
        replica_batch: args.replica_batch,
        bare_commits: args.bare_commits,
        timeout: std::time::Duration::from_secs(args.timeout),
        phases: args.phases.clone(),
    };
    let params = json!({
        "n": args.items, "workers": args.workers, "interleave": args.interleave,
        "cold_start": args.cold_start, "backlog": args.backlog, "window": args.window,
        "replica_batch": args.replica_batch, "phases": args.phases,
    });
    let result =
        on_two_workers(async move { eventfold_bench::replication::run(&bench).await }).await?;
    print_peer_line(
        "cqrs_bench",
        "replication",
        params,
        format!("eventfold-{}", args.backend),
        result,
    )
}

/// `eventfold bench changes`, on a runtime of its own with two workers, so the relay and
/// the consumers run beside the save loop as they would in a server (the CLI's own
/// runtime has one thread).
async fn changes(store: &StoreArgs, args: &ChangesArgs) -> anyhow::Result<()> {
    use eventfold_bench::changes::ChangesBench;
    let backend = bench_backend(store, &args.backend, &args.scratch_dir)?;
    let bench = ChangesBench {
        backend,
        amqp_url: args.amqp_url.clone(),
        saves: args.saves,
        backlog: args.backlog,
        backlog_batch: args.backlog_batch,
        window: args.window,
        broker_messages: args.broker_messages.unwrap_or(args.backlog),
        bare_commits: args.bare_commits,
        timeout: std::time::Duration::from_secs(args.timeout),
        phases: args.phases.clone(),
        nameko_queues: args.nameko_queues,
        paced_saves_per_s: args.paced_saves_per_s,
    };
    let name = format!("eventfold-{}", args.backend);
    let params = json!({
        "saves": 2 * (args.saves / 2), "phases": args.phases, "backlog": args.backlog,
        "window": args.window, "batch_size": args.window, "broker_messages": bench.broker_messages,
        "bare_commits": args.bare_commits, "nameko_queues": args.nameko_queues,
    });
    let result = on_two_workers(async move { eventfold_bench::changes::run(&bench).await }).await?;
    print_peer_line("crud_events_bench", "changes", params, name, result)
}

/// A fresh, empty store for one benchmark phase.
async fn fresh_config(store: &StoreArgs, args: &WorldsArgs, phase: &str) -> anyhow::Result<Config> {
    let mut vars = store.vars();
    vars.insert("EVENTFOLD_STORE".into(), args.backend.clone());
    vars.insert("EVENTFOLD_CREATE_TABLES".into(), "true".into());
    match args.backend.as_str() {
        "sqlite" => {
            let path = format!("{}.{phase}", args.bench_sqlite_path);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            vars.insert("EVENTFOLD_SQLITE_PATH".into(), path);
        }
        "postgres" => {
            let prefix = format!("eventfold_bench_{phase}_");
            vars.insert("EVENTFOLD_TABLE_PREFIX".into(), prefix);
        }
        _ => {}
    }
    let config = Config::from_vars(vars)?;
    let config = if args.no_compression {
        config
    } else {
        config.zlib()
    };
    Ok(config
        .cache_size(args.cache)
        .cache_fastforward(!args.single_writer))
}

/// Opens the configured store, emptied of what a previous run left, so every run starts
/// from empty tables.
async fn open_empty(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    #[cfg(feature = "postgres")]
    if let eventfold::StoreConfig::Postgres(pg_config) = config.store_config() {
        let pg = eventfold::postgres::PostgresStore::connect(pg_config).await?;
        let tables = ["events", "snapshots", "tracking"].map(|t| pg.table_name(t));
        sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
            .execute(pg.pool())
            .await?;
        return Ok(Arc::new(pg));
    }
    Ok(config.open_store().await?)
}

#[cfg(feature = "postgres")]
async fn pg_writers(store: &StoreArgs, args: &PgWritersArgs) -> anyhow::Result<()> {
    use eventfold::postgres::Ordering;
    use eventfold_bench::postgres::{self as bench, BenchLength};

    let eventfold::StoreConfig::Postgres(config) = Config::from_vars({
        let mut vars = store.vars();
        vars.insert("EVENTFOLD_STORE".into(), "postgres".into());
        vars
    })?
    .store_config()
    .clone() else {
        anyhow::bail!("this build has no PostgreSQL store");
    };
    let bare = bench::bare_insert_commit_rate(&config.url, args.commits).await?;
    outln!(
        "[bare commits   ] {:.0} commits/s p50={:.3}ms p99={:.3}ms ({} single-row INSERT commits)",
        bare.per_second,
        bare.p50_ms,
        bare.p99_ms,
        bare.commits
    )?;
    let mut writers = serde_json::Map::new();
    for &n in &args.writers {
        for ordering in [Ordering::Concurrent, Ordering::TableLock] {
            let r = bench::concurrent_writers(
                &config,
                n,
                ordering,
                BenchLength::Duration(std::time::Duration::from_secs(args.seconds)),
            )
            .await?;
            outln!(
                "[{n:>2} writers {ordering:<12}] {:.0} recordings/s {:.0} events/s p50={:.3}ms p99={:.3}ms",
                r.recordings_per_second, r.events_per_second, r.p50_ms, r.p99_ms
            )?;
            writers.insert(
                format!("{ordering}/{n}"),
                json!({
                    "writers": n, "ordering": ordering.to_string(),
                    "recordings_per_s": sig4(r.recordings_per_second),
                    "events_per_s": sig4(r.events_per_second),
                    "p50_ms": sig4(r.p50_ms), "p99_ms": sig4(r.p99_ms),
                }),
            );
        }
    }
    outln!(
        "{}",
        json!({
            "bench": "eventfold_pg_writers",
            "results": {
                "bare_commits_per_s": sig4(bare.per_second),
                "bare_p50_ms": sig4(bare.p50_ms),
                "writers": writers,
            },
        })
    )?;
    Ok(())
}

async fn worlds(store: &StoreArgs, args: &WorldsArgs) -> anyhow::Result<()> {
    let (n, m) = (args.worlds, args.commands);
    let config = fresh_config(store, args, "worlds")
        .await?
        .snapshot_every::<World>(5);
    let worlds = Worlds::new(config.application_on(open_empty(&config).await?)?);

    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(worlds.create_world().await?);
    }
    let t_create = t0.elapsed().as_secs_f64();

    // On PostgreSQL, slices of bare commits run between the passes, so commands and the
    // fsync-bound limit are measured over the same stretch of time.
    #[cfg(feature = "postgres")]
    let mut bare = match config.store_config() {
        eventfold::StoreConfig::Postgres(pg) => {
            Some(eventfold_bench::postgres::BareCommits::open(&pg.url).await?)
        }
        _ => None,
    };
    let mut latencies = Vec::with_capacity(n * m);
    let mut t_cmd = 0.0;
    for j in 0..m {
        let t0 = Instant::now();
        for (i, id) in ids.iter().enumerate() {
            let what = format!("thing-{j}-{i}");
            let started = Instant::now();
            worlds.make_it_so(*id, &what).await?;
            latencies.push(started.elapsed().as_secs_f64());
        }
        t_cmd += t0.elapsed().as_secs_f64();
        #[cfg(feature = "postgres")]
        if let Some(bare) = bare.as_mut() {
            bare.commit(n.div_ceil(2) as u64).await?;
            bare.read_then_commit(n.div_ceil(4) as u64).await?;
        }
    }

    let t0 = Instant::now();
    let mut mismatches = 0;
    for id in &ids {
        if worlds.get_world_history(*id).await?.len() != m {
            mismatches += 1;
        }
    }
    let t_read = t0.elapsed().as_secs_f64();
    let snapshots_world0 = match ids.first() {
        Some(id) => worlds
            .app()
            .store()
            .select_snapshots(&id.to_string(), eventfold::StreamQuery::all())
            .await?
            .len(),
        None => 0,
    };

    // Per operation, one at a time in turn, so the three meet the machine in the same
    // state and none runs as a tight loop of its own (this VM runs a loop of identical
    // statements faster than the same statements mixed with other work). The order
    // rotates, since an operation's time depends on which one ran just before it.
    #[cfg(feature = "postgres")]
    let interleaved = match bare.as_mut() {
        Some(bare) => {
            let mut samples = [Vec::new(), Vec::new(), Vec::new()];
            for (i, id) in ids.iter().enumerate() {
                for turn in 0..3 {
                    let op = (i + turn) % 3;
                    let took = match op {
                        0 => bare.one_commit().await?,
                        1 => bare.one_read_then_commit().await?,
                        _ => {
                            let started = Instant::now();
                            worlds.make_it_so(*id, &format!("interleaved-{i}")).await?;
                            started.elapsed()
                        }
                    };
                    samples[op].push(took.as_secs_f64());
                }
            }
            Some(samples.map(|mut s| {
                s.sort_by(f64::total_cmp);
                percentile(&s, 50.0) * 1e6
            }))
        }
        None => None,
    };

    latencies.sort_by(f64::total_cmp);
    let commands = n * m;
    let mut result = json!({
        "creates_per_s": sig4(n as f64 / t_create),
        "commands": commands,
        "commands_per_s": sig4(commands as f64 / t_cmd),
        "events_appended_per_s": sig4(commands as f64 / t_cmd),
        "snapshots_written": n * ((m + 1) / 5),
        "snapshots_seen_for_world0": snapshots_world0,
        "cmd_p50_ms": sig4(percentile(&latencies, 50.0) * 1e3),
        "cmd_p99_ms": sig4(percentile(&latencies, 99.0) * 1e3),
        "cmd_mean_ms": sig4(latencies.iter().sum::<f64>() / latencies.len().max(1) as f64 * 1e3),
        "cmd_max_ms": sig4(latencies.last().copied().unwrap_or(f64::NAN) * 1e3),
        "reads": n,
        "gets_per_s": sig4(n as f64 / t_read),
        "read_mismatches": mismatches,
        "phase_s": {"create": sig4(t_create), "commands": sig4(t_cmd), "read": sig4(t_read)},
    });
    drop(worlds);
    if !args.no_raw {
        let raw = raw(store, args).await?;
        result
            .as_object_mut()
            .expect("an object")
            .extend(raw.as_object().expect("an object").clone());
    }

    #[cfg(feature = "postgres")]
    if let Some(bare) = bare {
        let figures = bare.finish().await?;
        let bare = figures.commits;
        let commands_per_s = commands as f64 / t_cmd;
        let fields = result.as_object_mut().expect("an object");
        fields.insert("bare_commits_per_s".into(), json!(sig4(bare.per_second)));
        fields.insert("bare_p50_ms".into(), json!(sig4(bare.p50_ms)));
        fields.insert("bare_p99_ms".into(), json!(sig4(bare.p99_ms)));
        fields.insert(
            "commands_vs_bare".into(),
            json!(sig4(commands_per_s / bare.per_second)),
        );
        if let Some(read_commit) = figures.reads_then_commits {
            fields.insert(
                "read_then_commit_per_s".into(),
                json!(sig4(read_commit.per_second)),
            );
            fields.insert(
                "read_then_commit_vs_bare".into(),
                json!(sig4(read_commit.per_second / bare.per_second)),
            );
            fields.insert(
                "commands_vs_read_then_commit".into(),
                json!(sig4(commands_per_s / read_commit.per_second)),
            );
        }
        if let Some([bare_us, read_commit_us, command_us]) = interleaved {
            fields.insert(
                "interleaved_p50_us".into(),
                json!({"bare_commit": sig4(bare_us), "read_then_commit": sig4(read_commit_us),
                       "command": sig4(command_us)}),
            );
            fields.insert(
                "interleaved_read_then_commit_vs_bare".into(),
                json!(sig4(bare_us / read_commit_us)),
            );
            fields.insert(
                "interleaved_command_vs_read_then_commit".into(),
                json!(sig4(read_commit_us / command_us)),
            );
            fields.insert(
                "interleaved_command_vs_bare".into(),
                json!(sig4(bare_us / command_us)),
            );
        }
    }
    let backend = match (args.cache, args.single_writer) {
        (0, _) => format!("eventfold-{}", args.backend),
        (_, false) => format!("eventfold-{}-cached", args.backend),
        (_, true) => format!("eventfold-{}-cached-single-writer", args.backend),
    };
    let r = &result;
    let mut line = format!(
        "[{backend:15}] cmds/s={} ev/s={} p50={}ms p99={}ms gets/s={} creates/s={} mism={}",
        r["commands_per_s"],
        r["events_appended_per_s"],
        r["cmd_p50_ms"],
        r["cmd_p99_ms"],
        r["gets_per_s"],
        r["creates_per_s"],
        r["read_mismatches"]
    );
    if !args.no_raw {
        line += &format!(
            " | raw_app={} ev/s raw_store={} ev/s raw_single={} ev/s (p50 {}ms)",
            r["raw_app_events_per_s"],
            r["raw_store_events_per_s"],
            r["raw_single_events_per_s"],
            r["raw_single_p50_ms"]
        );
    }
    if let Some(bare) = result.get("bare_commits_per_s") {
        line += &format!(
            " | bare commits={bare}/s (commands = {}x of it)",
            result["commands_vs_bare"]
        );
    }
    if let Some(read_commit) = result.get("read_then_commit_per_s") {
        line += &format!(
            " | read+commit={read_commit}/s ({}x of bare; commands = {}x of it)",
            result["read_then_commit_vs_bare"], result["commands_vs_read_then_commit"]
        );
    }
    if let Some(per_op) = result.get("interleaved_p50_us") {
        line += &format!(
            " | interleaved, p50 per op: bare commit {}µs, read+commit {}µs, command {}µs \
             (read+commit = {}x the bare rate; commands = {}x the read+commit rate)",
            per_op["bare_commit"],
            per_op["read_then_commit"],
            per_op["command"],
            result["interleaved_read_then_commit_vs_bare"],
            result["interleaved_command_vs_read_then_commit"]
        );
    }
    outln!("{line}")?;
    outln!("store: {}", config.store_config())?;
    let out = json!({
        "bench": "eventfold_bench",
        "workload": "worlds",
        "params": {
            "worlds": n, "commands": m, "snapshot_interval": 5,
            "compressor": if args.no_compression { "none" } else { "zlib" },
            "raw_events": args.raw_events, "raw_batch": args.raw_batch,
            "raw_single": args.raw_single, "cache": args.cache,
            "cache_fastforward": !args.single_writer,
        },
        "versions": {"eventfold": env!("CARGO_PKG_VERSION")},
        "results": {backend: result},
    });
    outln!("{out}")?;
    Ok(())
}

/// One aggregate's worth of pre-encoded events, `count` long, as a recording.
fn encoded_events(app: &eventfold::Application, count: usize) -> eventfold::Result<Recording> {
    let mut world = Root::<World>::new(WorldEvent::Created);
    for q in 1..count {
        world.trigger(world.make_it_so(&format!("raw-{q}")));
    }
    app.prepare(&[&mut world])
}

async fn raw(store: &StoreArgs, args: &WorldsArgs) -> anyhow::Result<serde_json::Value> {
    let config = fresh_config(store, args, "raw").await?.aggregate::<World>();
    let app = config.application_on(open_empty(&config).await?)?;
    let (r, b, s) = (args.raw_events, args.raw_batch.max(1), args.raw_single);

    // raw_app: through the application layer, B events per save, aggregate kept in memory.
    let mut world = Root::<World>::new(WorldEvent::Created);
    app.save(&mut world).await?;
    let t0 = Instant::now();
    let mut k = 0;
    while k < r {
        for _ in 0..b.min(r - k) {
            world.trigger(world.make_it_so(&format!("raw-{k}")));
            k += 1;
        }
        app.save(&mut world).await?;
    }
    let t_app = t0.elapsed().as_secs_f64();

    // raw_store: pre-encoded before the clock starts, B per transaction.
    let encoded = encoded_events(&app, r)?;
    let batches: Vec<Recording> = encoded
        .events
        .chunks(b)
        .map(|chunk| {
            chunk
                .iter()
                .cloned()
                .fold(Recording::new(), Recording::event)
        })
        .collect();
    let t0 = Instant::now();
    for batch in &batches {
        app.store().record(batch).await?;
    }
    let t_store = t0.elapsed().as_secs_f64();

    // raw_single: one pre-encoded event per transaction.
    let singles: Vec<Recording> = encoded_events(&app, s)?
        .events
        .into_iter()
        .map(|event| Recording::new().event(event))
        .collect();
    let mut latencies = Vec::with_capacity(s);
    let t0 = Instant::now();
    for single in &singles {
        let started = Instant::now();
        app.store().record(single).await?;
        latencies.push(started.elapsed().as_secs_f64());
    }
    let t_single = t0.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "raw_app_events_per_s": sig4(r as f64 / t_app),
        "raw_store_events_per_s": sig4(encoded.events.len() as f64 / t_store),
        "raw_single_events_per_s": sig4(singles.len() as f64 / t_single),
        "raw_single_p50_ms": sig4(percentile(&latencies, 50.0) * 1e3),
        "raw_single_p99_ms": sig4(percentile(&latencies, 99.0) * 1e3),
        "raw_event_state_bytes": singles.last().map_or(0, |e| e.events[0].state.len()),
    }))
}
