//! Measures the PostgreSQL store's write path on this machine: the bare single-row commit
//! rate, then 1, 4 and 16 concurrent writers with each ordering.
//!
//! ```sh
//! cargo run --release -p eventfold-bench --example bench_writers -- [seconds per run]
//! ```
//!
//! Uses `EVENTFOLD_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! works in scratch schemas it drops again.

use std::time::Duration;

use eventfold_bench::postgres::{self as bench, BenchLength};
use eventfold_postgres::{Ordering, PostgresConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("EVENTFOLD_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let length = BenchLength::Duration(Duration::from_secs_f64(seconds));
    let config = PostgresConfig::new(&url);

    let bare = bench::bare_insert_commit_rate(&url, 2000).await?;
    println!(
        "bare single-row INSERT commits: {:.0}/s (p50 {:.3} ms, p99 {:.3} ms, {} commits)",
        bare.per_second, bare.p50_ms, bare.p99_ms, bare.commits
    );
    println!("writers  ordering        wake-up       recordings/s  p50 ms  p99 ms");
    for writers in [1, 4, 16] {
        for ordering in [Ordering::Concurrent, Ordering::TableLock] {
            for in_tx in [false, true] {
                let run = if in_tx {
                    bench::concurrent_writers_notify_in_transaction(
                        &config, writers, ordering, length,
                    )
                    .await?
                } else {
                    bench::concurrent_writers(&config, writers, ordering, length).await?
                };
                println!(
                    "{:>7}  {:<14}  {:<12}  {:>12.0}  {:>6.3}  {:>6.3}",
                    writers,
                    ordering.to_string(),
                    if in_tx {
                        "NOTIFY in tx"
                    } else {
                        "after commit"
                    },
                    run.recordings_per_second,
                    run.p50_ms,
                    run.p99_ms
                );
            }
        }
    }
    Ok(())
}
