//! A store per test (a SQLite file in a temporary directory, or a PostgreSQL schema of its
//! own, dropped at the end), the Worlds data the pages show, and requests through the
//! router.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use eventfold::{Config, Root, Store};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use worlds_example::{World, WorldEvent};

pub fn database_url() -> String {
    std::env::var("EVENTFOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A cipher key for the stored events (base64 of 32 bytes).
pub const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// One test database, its configuration and its store.
pub struct Db {
    pub config: Config,
    pub store: Arc<dyn Store>,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    pub async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::sqlite(dir.path().join("inspect.sqlite3"));
        let store = config.open_store().await.unwrap();
        Db {
            config,
            store,
            schema: None,
            _dir: Some(dir),
        }
    }

    /// On PostgreSQL, reached through `url` (so a test can put a password in it).
    pub async fn postgres_at(url: &str) -> Db {
        let schema = format!(
            "eventfold_test_inspect_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let config = Config::from_vars([
            ("EVENTFOLD_STORE", "postgres"),
            ("EVENTFOLD_DATABASE_URL", url),
            ("EVENTFOLD_POSTGRES_SCHEMA", schema.as_str()),
        ])
        .unwrap();
        let store = config.open_store().await.unwrap();
        Db {
            config,
            store,
            schema: Some(schema),
            _dir: None,
        }
    }

    pub async fn postgres() -> Db {
        Db::postgres_at(&database_url()).await
    }

    /// The configuration the seeded events were written with: zlib, a cipher key,
    /// snapshots every 2 versions.
    pub fn writer_config(&self) -> Config {
        self.config
            .clone()
            .zlib()
            .cipher_key(KEY)
            .snapshot_every::<World>(2)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let config = self.config.clone();
        // Drop runs inside the test's runtime, which the join below blocks: a thread with a
        // runtime and a connection of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let store = config.open_store().await?;
                    let mut tx = store.begin().await?;
                    tx.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
                        .await?;
                    tx.commit().await
                })
        })
        .join();
    }
}

/// Two worlds of three events each (Created, then two things), written encrypted and
/// compressed with a snapshot at version 2; then the follower `view` at position 2.
pub async fn seed(db: &Db) -> [uuid::Uuid; 2] {
    let app = db.writer_config().application_on(db.store.clone()).unwrap();
    let mut ids = Vec::new();
    for (first, second) in [("dinosaurs", "trucks"), ("internet", "rain")] {
        let mut world = Root::<World>::new(WorldEvent::Created);
        let make = world.make_it_so(first);
        world.trigger(make);
        let make = world.make_it_so(second);
        world.trigger(make);
        app.save(&mut world).await.unwrap();
        ids.push(*world.id());
    }
    let mut tx = db.store.begin().await.unwrap();
    tx.track(eventfold::Tracking::new("view", 2)).await.unwrap();
    tx.commit().await.unwrap();
    [ids[0], ids[1]]
}

/// A response: status, headers, body as text.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub async fn request(router: &axum::Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub async fn get(router: &axum::Router, uri: &str) -> Reply {
    request(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// The samples of a Prometheus text exposition, `(name{labels}, value)`; panics on a line
/// that is neither a comment nor a sample.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        samples.push((series.to_owned(), value));
    }
    samples
}

pub fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
        .1
}
