//! Where a command's time goes on this server: a bare single-row INSERT commit, the same
//! without the WAL flush, a `SELECT 1` round trip, `record` of one event (with and without
//! the flush) and `load` of a short stream. The pieces run in interleaved rounds of 200
//! so that the machine's drift hits them alike; medians are printed.
//!
//! ```sh
//! cargo run --release -p eventfold-bench --example anatomy -- [rounds, default 10]
//! ```
//!
//! Uses `EVENTFOLD_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! works in a scratch schema it drops again.

use std::time::{Duration, Instant};

use eventfold_core::{EventReader, EventWriter, Recording, StoredEvent, Timestamp};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use sqlx::{Connection, Executor, PgConnection};

const PIECES: [&str; 6] = [
    "bare INSERT commit",
    "bare INSERT, no flush",
    "SELECT 1",
    "record 1 event",
    "record, no flush",
    "load (3 events)",
];

fn one_event(stream: &str, version: u64) -> Recording {
    Recording::new().event(StoredEvent::new(
        stream,
        version,
        "World.SomethingHappened",
        Timestamp::now(),
        vec![b'x'; 60],
    ))
}

fn median_micros(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("EVENTFOLD_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let separator = if url.contains('?') { '&' } else { '?' };
    let no_flush_url = format!("{url}{separator}options=-c%20synchronous_commit%3Doff");
    let schema = format!(
        "eventfold_anatomy_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );

    let mut config = PostgresConfig::new(&url);
    config.schema = schema.clone();
    let store = PostgresStore::connect(&config).await?;
    config.url = no_flush_url.clone();
    let no_flush_store = PostgresStore::connect(&config).await?;
    let mut conn = PgConnection::connect(&url).await?;
    let mut no_flush_conn = PgConnection::connect(&no_flush_url).await?;
    let bare_table = format!("{schema}.bare");
    conn.execute(
        format!("CREATE TABLE {bare_table} (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
            .as_str(),
    )
    .await?;
    let insert = format!("INSERT INTO {bare_table} (payload) VALUES ($1)");
    let payload = vec![b'x'; 100];

    let short = "short-stream";
    for version in 1..=3 {
        store.record(&one_event(short, version)).await?;
    }
    let mut versions = [0u64; 2];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); PIECES.len()];
    for _ in 0..rounds {
        for (piece, sample) in samples.iter_mut().enumerate() {
            for _ in 0..200 {
                let started = Instant::now();
                match piece {
                    0 | 1 => {
                        let conn = if piece == 0 {
                            &mut conn
                        } else {
                            &mut no_flush_conn
                        };
                        sqlx::query(&insert).bind(&payload).execute(conn).await?;
                    }
                    2 => {
                        sqlx::query("SELECT 1").execute(&mut conn).await?;
                    }
                    3 | 4 => {
                        let (store, stream) = if piece == 3 {
                            (&store, "flushed")
                        } else {
                            (&no_flush_store, "unflushed")
                        };
                        let version = &mut versions[piece - 3];
                        *version += 1;
                        store.record(&one_event(stream, *version)).await?;
                    }
                    _ => {
                        store.load(short, None).await?;
                    }
                }
                sample.push(started.elapsed());
            }
        }
    }
    for (piece, sample) in PIECES.iter().zip(samples) {
        println!("{piece:24} {:8.1} µs", median_micros(sample));
    }
    no_flush_store.close().await;
    store.close().await;
    conn.execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await?;
    Ok(())
}
