//! Where a command's time goes: interleaved rounds of the pieces, medians.
use std::time::{Duration, Instant};

use eventfold_core::{EventReader, EventWriter, Recording, StoredEvent, Timestamp};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use sqlx::{Connection, Executor, PgConnection};

fn event(stream: &str, version: u64) -> Recording {
    Recording {
        events: vec![StoredEvent {
            stream_id: stream.to_owned(),
            version,
            topic: "World.SomethingHappened".into(),
            timestamp: Timestamp::now(),
            state: vec![b'x'; 60],
        }],
        ..Recording::default()
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("EVENTFOLD_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let async_url = format!(
        "{url}?options=-c%20synchronous_commit%3Doff{}",
        std::env::var("ANATOMY_OPTS").unwrap_or_default()
    );
    let mut config = PostgresConfig::new(&url);
    config.table_prefix = "anatomy_".into();
    let store = PostgresStore::connect(&config).await?;
    let mut aconfig = config.clone();
    aconfig.url = async_url.clone();
    let astore = PostgresStore::connect(&aconfig).await?;
    let mut conn = PgConnection::connect(&url).await?;
    let mut aconn = PgConnection::connect(&async_url).await?;
    conn.execute("DROP TABLE IF EXISTS anatomy_bare; CREATE TABLE anatomy_bare (id bigserial PRIMARY KEY, payload bytea NOT NULL)").await?;
    let payload = vec![b'x'; 100];
    let stream = uuid::Uuid::new_v4().to_string();
    let astream = uuid::Uuid::new_v4().to_string();
    let small = uuid::Uuid::new_v4().to_string();
    for v in 1..=3 {
        store.record(&event(&small, v)).await?;
    }
    let mut version = 0;
    let names = [
        "bare insert",
        "bare insert async",
        "select 1",
        "record",
        "record async",
        "load",
        "raw record_one async",
    ];
    astore.record(&event(&astream, 1)).await?;
    let mut aversion = 1;
    let record_one: String = sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity WHERE application_name = 'eventfold' AND query LIKE 'WITH writer%' LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await?;
    let rawstream = uuid::Uuid::new_v4().to_string();
    let mut rawversion = 0i64;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    for _ in 0..rounds {
        let only: Option<usize> = std::env::var("ANATOMY_ONLY")
            .ok()
            .and_then(|v| v.parse().ok());
        for (k, sample) in samples.iter_mut().enumerate() {
            if only.is_some_and(|o| o != k) {
                continue;
            }
            for _ in 0..200 {
                let t = Instant::now();
                match k {
                    0 => {
                        sqlx::query("INSERT INTO anatomy_bare (payload) VALUES ($1)")
                            .bind(&payload)
                            .execute(&mut conn)
                            .await?;
                    }
                    1 => {
                        sqlx::query("INSERT INTO anatomy_bare (payload) VALUES ($1)")
                            .bind(&payload)
                            .execute(&mut aconn)
                            .await?;
                    }
                    2 => {
                        sqlx::query("SELECT 1").execute(&mut conn).await?;
                    }
                    3 => {
                        version += 1;
                        store.record(&event(&stream, version)).await?;
                    }
                    4 => {
                        aversion += 1;
                        astore.record(&event(&astream, aversion)).await?;
                    }
                    5 => {
                        store.load(&small, None).await.map(|_| ())?;
                    }
                    _ => {
                        rawversion += 1;
                        let ids: Option<Vec<i64>> = sqlx::query_scalar(&record_one)
                            .bind(&rawstream)
                            .bind(rawversion)
                            .bind("World.SomethingHappened")
                            .bind(chrono::Utc::now())
                            .bind(&payload[..60])
                            .fetch_one(&mut aconn)
                            .await?;
                        assert!(ids.is_some());
                    }
                }
                sample.push(t.elapsed());
            }
        }
    }
    for (name, sample) in names.iter().zip(samples).filter(|(_, s)| !s.is_empty()) {
        println!("{name:20} {:8.1} µs", median(sample));
    }
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT left(statement, 40), generic_plans, custom_plans FROM pg_prepared_statements",
    )
    .fetch_all(&mut aconn)
    .await?;
    for plan in plans {
        println!("{plan:?}");
    }
    conn.execute("DROP TABLE anatomy_bare").await?;
    Ok(())
}
