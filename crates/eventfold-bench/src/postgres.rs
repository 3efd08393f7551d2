//! PostgreSQL benchmark building blocks, called by `eventfold bench` (the CLI prints and
//! compares).
//!
//! Each function works in a scratch schema `eventfold_bench_<random>` that it creates and
//! drops, so it never touches application tables. Figures are plain numbers; latencies
//! are per statement (per commit), measured on the client.

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

use eventfold_core::{Error, EventWriter, Recording, Result, StoredEvent, Timestamp};
use eventfold_postgres::{redact_url, Ordering, PostgresConfig, PostgresStore, BACKEND};

/// The bytes of one benchmark event (about the size of a Worlds event after JSON).
const PAYLOAD: usize = 100;

/// What a loop of single-row INSERT commits achieved: the fsync-bound limit of this
/// server, which no store that commits per command can beat.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommitRate {
    /// Commits made.
    pub commits: u64,
    /// Wall-clock seconds for all of them.
    pub seconds: f64,
    /// Commits per second.
    pub per_second: f64,
    /// Median commit latency, milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile commit latency, milliseconds.
    pub p99_ms: f64,
}

/// How long a writer benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchLength {
    /// Each writer makes this many recordings.
    Count(u64),
    /// Writers record until this much time has passed.
    Duration(Duration),
}

/// What [`concurrent_writers`] measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WriterThroughput {
    /// Concurrent writer tasks (each with its own connection and its own stream).
    pub writers: usize,
    /// How the writers kept the log gap-safe.
    pub ordering: Ordering,
    /// Recordings (= transactions = commits) made in all.
    pub recordings: u64,
    /// Events written in all (one per recording).
    pub events: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Recordings per second, all writers together.
    pub recordings_per_second: f64,
    /// Events per second, all writers together.
    pub events_per_second: f64,
    /// Median `record` latency, milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile `record` latency, milliseconds.
    pub p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn scratch_schema() -> String {
    format!(
        "eventfold_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Where a connection goes, without the password.
struct Target(String);

/// A failed connection is [`Error::Unavailable`], anything else [`Error::Backend`] (the
/// store's finer mapping is its own business).
fn sqlx_error(error: sqlx::Error, target: &Target) -> Error {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Error::Unavailable {
            backend: BACKEND,
            target: target.0.clone(),
            source: Box::new(error),
        },
        other => Error::backend(BACKEND, other),
    }
}

async fn connect(url: &str) -> Result<PgConnection> {
    let target = Target(redact_url(url));
    PgConnection::connect(url)
        .await
        .map_err(|e| sqlx_error(e, &target))
}

/// Loops of bare single-row INSERT commits (a bigserial key and 100 bytes, each its own
/// transaction) on one connection, in a scratch schema: the fsync-bound limit of this
/// server, which no store that commits per command can beat. A second loop reads the
/// newest row by its key before each commit: the limit of any store that loads before it
/// records, as a command does. Run them in slices between the slices of another benchmark
/// to compare over the same stretch of time (the machine's speed drifts).
pub struct BareCommits {
    conn: PgConnection,
    target: Target,
    schema: String,
    insert: String,
    read_newest: String,
    payload: Vec<u8>,
    commits: Samples,
    reads_then_commits: Samples,
}

/// Latencies and the time spent in one loop.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    fn rate(mut self) -> CommitRate {
        self.latencies.sort_unstable();
        let commits = self.latencies.len() as u64;
        let seconds = self.elapsed.as_secs_f64();
        CommitRate {
            commits,
            seconds,
            per_second: commits as f64 / seconds,
            p50_ms: percentile(&self.latencies, 0.50),
            p99_ms: percentile(&self.latencies, 0.99),
        }
    }
}

/// What [`BareCommits`] measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BareFigures {
    /// Single-row INSERT commits.
    pub commits: CommitRate,
    /// An indexed single-row SELECT, then a single-row INSERT commit (`None` if that loop
    /// never ran).
    pub reads_then_commits: Option<CommitRate>,
}

impl BareCommits {
    /// Connects and creates the scratch table.
    pub async fn open(url: &str) -> Result<Self> {
        let target = Target(redact_url(url));
        let mut conn = connect(url).await?;
        let schema = scratch_schema();
        let create = format!(
            "CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.bare (id bigserial PRIMARY KEY, payload bytea NOT NULL)"
        );
        conn.execute(create.as_str())
            .await
            .map_err(|e| sqlx_error(e, &target))?;
        Ok(BareCommits {
            conn,
            target,
            insert: format!("INSERT INTO {schema}.bare (payload) VALUES ($1)"),
            read_newest: format!("SELECT payload FROM {schema}.bare ORDER BY id DESC LIMIT 1"),
            schema,
            payload: vec![b'x'; PAYLOAD],
            commits: Samples::default(),
            reads_then_commits: Samples::default(),
        })
    }

    /// Makes `n` more commits.
    pub async fn commit(&mut self, n: u64) -> Result<()> {
        self.run(n, false).await
    }

    /// Makes `n` more commits, each after reading the newest row.
    pub async fn read_then_commit(&mut self, n: u64) -> Result<()> {
        self.run(n, true).await
    }

    /// Times one commit, left out of the loops' figures: for timing it interleaved, one
    /// at a time, with other work.
    pub async fn one_commit(&mut self) -> Result<Duration> {
        self.once(false).await
    }

    /// Times one read then commit, left out of the loops' figures (see
    /// [`Self::one_commit`]).
    pub async fn one_read_then_commit(&mut self) -> Result<Duration> {
        self.once(true).await
    }

    async fn once(&mut self, read_first: bool) -> Result<Duration> {
        let started = Instant::now();
        if read_first {
            sqlx::query(&self.read_newest)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| sqlx_error(e, &self.target))?;
        }
        sqlx::query(&self.insert)
            .bind(&self.payload)
            .execute(&mut self.conn)
            .await
            .map_err(|e| sqlx_error(e, &self.target))?;
        Ok(started.elapsed())
    }

    async fn run(&mut self, n: u64, read_first: bool) -> Result<()> {
        let started = Instant::now();
        let mut latencies = Vec::with_capacity(n as usize);
        for _ in 0..n {
            latencies.push(self.once(read_first).await?);
        }
        let samples = if read_first {
            &mut self.reads_then_commits
        } else {
            &mut self.commits
        };
        samples.elapsed += started.elapsed();
        samples.latencies.extend(latencies);
        Ok(())
    }

    /// Drops the scratch schema and reports every loop made.
    pub async fn finish(mut self) -> Result<BareFigures> {
        let drop_schema = format!("DROP SCHEMA {} CASCADE", self.schema);
        self.conn
            .execute(drop_schema.as_str())
            .await
            .map_err(|e| sqlx_error(e, &self.target))?;
        let _ = self.conn.close().await;
        let reads_then_commits =
            (!self.reads_then_commits.latencies.is_empty()).then(|| self.reads_then_commits.rate());
        Ok(BareFigures {
            commits: self.commits.rate(),
            reads_then_commits,
        })
    }
}

/// The fsync-bound limit: `n` bare commits (see [`BareCommits`]) one after another.
pub async fn bare_insert_commit_rate(url: &str, n: u64) -> Result<CommitRate> {
    let mut bare = BareCommits::open(url).await?;
    bare.commit(n).await?;
    Ok(bare.finish().await?.commits)
}

/// `writers` tasks record one 100-byte event per recording, each on its own stream, all
/// at once, with `ordering`; in a scratch schema on the server of `config.url` (the
/// schema and prefix of `config` are not used). Returns the combined throughput.
pub async fn concurrent_writers(
    config: &PostgresConfig,
    writers: usize,
    ordering: Ordering,
    length: BenchLength,
) -> Result<WriterThroughput> {
    writers_bench(config, writers, ordering, length, false).await
}

/// Like [`concurrent_writers`], but each recording sends its wake-up NOTIFY inside its
/// own transaction (as [`PostgresStore::record_in`] does), to measure what that costs.
pub async fn concurrent_writers_notify_in_transaction(
    config: &PostgresConfig,
    writers: usize,
    ordering: Ordering,
    length: BenchLength,
) -> Result<WriterThroughput> {
    writers_bench(config, writers, ordering, length, true).await
}

async fn writers_bench(
    config: &PostgresConfig,
    writers: usize,
    ordering: Ordering,
    length: BenchLength,
    notify_in_transaction: bool,
) -> Result<WriterThroughput> {
    let writers = writers.max(1);
    let mut scratch = config.clone();
    scratch.schema = scratch_schema();
    scratch.table_prefix = "eventfold_".to_owned();
    scratch.create_tables = true;
    scratch.ordering = ordering;
    scratch.max_connections = u32::try_from(writers + 2).unwrap_or(u32::MAX);
    scratch.notify_in_transaction = notify_in_transaction;
    let store = PostgresStore::connect(&scratch).await?;
    let result = run_writers(&store, writers, length).await;
    let drop_schema = format!("DROP SCHEMA \"{}\" CASCADE", scratch.schema);
    let dropped = store.pool().execute(drop_schema.as_str()).await;
    let (recordings, seconds, mut latencies) = result?;
    dropped.map_err(|e| Error::backend(BACKEND, e))?;
    latencies.sort_unstable();
    Ok(WriterThroughput {
        writers,
        ordering,
        recordings,
        events: recordings,
        seconds,
        recordings_per_second: recordings as f64 / seconds,
        events_per_second: recordings as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    })
}

async fn run_writers(
    store: &PostgresStore,
    writers: usize,
    length: BenchLength,
) -> Result<(u64, f64, Vec<Duration>)> {
    // Open the connections before the clock starts.
    let warm: Vec<_> = (0..writers)
        .map(|_| store.pool().acquire())
        .collect::<Vec<_>>();
    let mut held = Vec::new();
    for acquire in warm {
        held.push(acquire.await.map_err(|e| Error::backend(BACKEND, e))?);
    }
    drop(held);

    let started = Instant::now();
    let deadline = match length {
        BenchLength::Duration(d) => Some(started + d),
        BenchLength::Count(_) => None,
    };
    let count = match length {
        BenchLength::Count(n) => n,
        BenchLength::Duration(_) => u64::MAX,
    };
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream_id = format!("writer-{w}");
                let mut latencies = Vec::new();
                let mut version = 0u64;
                while version < count && deadline.is_none_or(|d| Instant::now() < d) {
                    version += 1;
                    let recording = Recording::new().event(StoredEvent::new(
                        stream_id.clone(),
                        version,
                        "Bench.Happened",
                        Timestamp::now(),
                        vec![b'x'; PAYLOAD],
                    ));
                    let t = Instant::now();
                    store.record(&recording).await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let latencies = task.await.map_err(|e| Error::backend(BACKEND, e))??;
        all.extend(latencies);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((all.len() as u64, seconds, all))
}

/// The public futures can be spawned on a multi-threaded runtime.
#[cfg(test)]
#[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
mod send_checks {
    use super::*;

    fn spawnable(config: PostgresConfig) {
        let c = config.clone();
        tokio::spawn(async move { bare_insert_commit_rate(&c.url, 1).await });
        tokio::spawn(async move {
            concurrent_writers(&config, 1, Ordering::TableLock, BenchLength::Count(1)).await
        });
    }
}
