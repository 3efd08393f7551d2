//! `eventfold bench inspect`: the inspector's pages on a large store. One stream of
//! `stream_events` events (a snapshot every 1000 versions) inside a log of `log_records`
//! records, then each page's request through the router, timed (p50/p99 ms).
//!
//! The big stream's events are spread over the whole log (1 in 10 of each written batch),
//! the others belong to streams of 1000 events each, and one record in 100 000 has the
//! topic `Rare.Happened` (the topic filter's rare case; the filler's `Other.Happened` is its
//! common case, and the big stream's `Big.Happened` is one record in ten).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use eventfold_core::{
    Aggregate, Application, Mapper as _, Recording, Root, Store, StoredEvent, Timestamp, Tracking,
};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::changes::percentile;

/// The big stream's id.
pub const BIG_STREAM: &str = "big-counter";

/// The benchmark's aggregate: a count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counter {
    /// Events applied.
    pub n: u64,
}

/// The counter's one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CounterEvent {
    /// Counted once more.
    Happened {
        /// The count after it.
        n: u64,
    },
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Big";
    type Id = String;
    type Event = CounterEvent;
    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Happened { n } = event;
        self.n = *n;
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct InspectBench {
    /// Events of the big stream.
    pub stream_events: u64,
    /// Records in the log in all (the big stream's included).
    pub log_records: u64,
    /// Timed requests per page.
    pub requests: usize,
}

/// Where the big store goes.
pub enum Target {
    /// A SQLite file (created if missing; kept, so a second run can reuse it).
    Sqlite(std::path::PathBuf),
    /// A fresh schema on this PostgreSQL server, dropped at the end.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

const BATCH: u64 = 10_000;
const SNAPSHOT_EVERY: u64 = 1000;
const FILLER_STREAM_EVENTS: u64 = 1000;

fn progress(what: &str, done: u64, total: u64, started: Instant) {
    if done.is_multiple_of(BATCH * 100) || done == total {
        eprintln!(
            "  {what}: {done}/{total} ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Writes the data set; returns the seconds it took. The big stream is written as the
/// application saves it (its events and the snapshots due, through
/// [`Application::prepare`]), the filler beside it in the same recordings.
async fn build(store: &Arc<dyn Store>, bench: &InspectBench) -> anyhow::Result<f64> {
    let started = Instant::now();
    let app = Application::builder_on(store.clone())
        .snapshot_every::<Counter>(SNAPSHOT_EVERY)
        .build();
    let filler = app
        .mapper()
        .encode_event(&CounterEvent::Happened { n: 0 }, 1)?
        .1;
    let big_share = (bench.stream_events * BATCH / bench.log_records).max(1);
    let mut big = Root::<Counter>::with_id(BIG_STREAM.to_owned(), CounterEvent::Happened { n: 1 });
    let (mut written, mut filler_written) = (0u64, 0u64);
    while written < bench.log_records {
        let in_batch = BATCH.min(bench.log_records - written);
        let big_left = bench.stream_events - big.saved_version();
        // Room for the big stream's events in the batches after this one.
        let room_after = bench.log_records - written - in_batch;
        let big_here = big_left
            .min(in_batch)
            .min(big_share.max(big_left.saturating_sub(room_after)));
        while (big.version() - big.saved_version()) < big_here {
            let n = big.version() + 1;
            big.trigger(CounterEvent::Happened { n });
        }
        let mut recording = if big_here > 0 {
            app.prepare(&[&mut big])?
        } else {
            Recording::new()
        };
        for i in big_here..in_batch {
            let position = written + i + 1;
            let topic = if position.is_multiple_of(100_000) {
                "Rare.Happened"
            } else {
                "Other.Happened"
            };
            recording = recording.event(StoredEvent::new(
                format!("other-{}", filler_written / FILLER_STREAM_EVENTS),
                filler_written % FILLER_STREAM_EVENTS + 1,
                topic,
                Timestamp::now(),
                filler.clone(),
            ));
            filler_written += 1;
        }
        store.record(&recording).await?;
        if big_here > 0 {
            big.mark_saved();
        }
        written += in_batch;
        progress("records", written, bench.log_records, started);
    }
    let head = store.max_notification_id().await?;
    let mut tx = store.begin().await?;
    tx.track(Tracking::new("projection", head / 2)).await?;
    tx.track(Tracking::new("relay", head.saturating_sub(10)))
        .await?;
    tx.commit().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Whether `store` already holds this data set (a kept SQLite file of an earlier run).
async fn already_built(store: &dyn Store, bench: &InspectBench) -> anyhow::Result<bool> {
    let last = store
        .select_events(
            BIG_STREAM,
            eventfold_core::StreamQuery::all().descending().limit(1),
        )
        .await?;
    Ok(store.max_notification_id().await? == bench.log_records
        && last.first().map(|e| e.version) == Some(bench.stream_events))
}

async fn time_page(router: &axum::Router, uri: &str, requests: usize) -> anyhow::Result<Value> {
    let mut samples = Vec::with_capacity(requests);
    let mut bytes = 0;
    // One untimed request first: the first touch of cold pages is the OS cache's figure.
    for round in 0..=requests {
        let started = Instant::now();
        let response = router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty())?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        if status != StatusCode::OK {
            anyhow::bail!("{uri}: {status}: {}", String::from_utf8_lossy(&body));
        }
        bytes = body.len();
        if round > 0 {
            samples.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(json!({
        "p50_ms": crate::changes::sig4(percentile(&samples, 50.0)),
        "p99_ms": crate::changes::sig4(percentile(&samples, 99.0)),
        "bytes": bytes,
    }))
}

/// The pages timed, by name: `(name, uri)`.
pub fn pages(bench: &InspectBench) -> Vec<(&'static str, String)> {
    let middle = bench.log_records / 2;
    let stream_middle = bench.stream_events / 2;
    vec![
        ("stream_newest", format!("/api/streams/{BIG_STREAM}")),
        (
            "stream_middle_page",
            format!("/api/streams/{BIG_STREAM}?before={stream_middle}"),
        ),
        (
            "stream_state_at_last",
            format!("/api/streams/{BIG_STREAM}?at={}", bench.stream_events),
        ),
        (
            "stream_state_at_middle",
            format!("/api/streams/{BIG_STREAM}?at={}", stream_middle + 999),
        ),
        ("stream_html", format!("/streams/{BIG_STREAM}")),
        ("streams_of_type", "/api/streams?type=Big".to_owned()),
        ("log_newest", "/api/log".to_owned()),
        ("log_middle_page", format!("/api/log?before={middle}")),
        ("log_topic_rare", "/api/log?topic=Rare.Happened".to_owned()),
        (
            "log_topic_common",
            "/api/log?topic=Other.Happened".to_owned(),
        ),
        (
            "log_topics_rare_and_big",
            "/api/log?topic=Rare.Happened,Big.Happened".to_owned(),
        ),
        ("log_html", "/log".to_owned()),
        ("followers", "/api/followers".to_owned()),
        ("relay", "/api/relay".to_owned()),
        ("metrics", "/metrics".to_owned()),
    ]
}

/// Builds (or reuses) the data set on `target` and times every page; the figures as one
/// JSON object (`build_s`, `pages`).
pub async fn run(target: Target, bench: &InspectBench) -> anyhow::Result<Value> {
    let (store, backend, schema): (Arc<dyn Store>, &str, Option<String>) = match &target {
        Target::Sqlite(path) => {
            let config = eventfold_sqlite::SqliteConfig::new(path.clone());
            (
                Arc::new(eventfold_sqlite::SqliteStore::open(&config)?),
                "sqlite",
                None,
            )
        }
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => {
            let mut config = eventfold_postgres::PostgresConfig::new(url.clone());
            config.schema = format!(
                "eventfold_bench_inspect_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let store = eventfold_postgres::PostgresStore::connect(&config).await?;
            (Arc::new(store), "postgres", Some(config.schema.clone()))
        }
    };
    let outcome = async {
        let build_s = if already_built(&*store, bench).await? {
            eprintln!("  reusing the data set already in the store");
            None
        } else if store.max_notification_id().await? > 0 {
            anyhow::bail!("the store holds other data: give an empty or missing file");
        } else {
            Some(build(&store, bench).await?)
        };
        let router = eventfold_inspect::Inspector::builder(store.clone())
            .aggregate::<Counter>()
            .build()
            .router();
        let mut pages_json = serde_json::Map::new();
        for (name, uri) in pages(bench) {
            let figures = time_page(&router, &uri, bench.requests).await?;
            eprintln!(
                "  {name:<24} p50 {:>8} ms  p99 {:>8} ms  {:>7} bytes  {uri}",
                figures["p50_ms"], figures["p99_ms"], figures["bytes"]
            );
            pages_json.insert(name.to_owned(), figures);
        }
        Ok(json!({
            "backend": backend,
            "build_s": build_s.map(crate::changes::sig4),
            "pages": pages_json,
        }))
    }
    .await;
    if let Some(schema) = schema {
        drop_schema(&store, &schema).await;
    }
    outcome
}

async fn drop_schema(store: &Arc<dyn Store>, schema: &str) {
    let dropped = async {
        let mut tx = store.begin().await?;
        tx.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
            .await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("warning: the scratch schema {schema} was not dropped: {e}");
    }
}
