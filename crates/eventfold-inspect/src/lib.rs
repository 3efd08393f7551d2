//! A web inspector for running eventfold systems: what `eventfold inspect` serves, and a
//! router a service can mount to show its own store, relay and consumers.
//!
//! Every page is server-rendered HTML (escaped, with a little plain script for the live
//! tail and the action buttons) and the same data is JSON under `/api`:
//!
//! | page | JSON | what |
//! |---|---|---|
//! | `/streams?id=ID` or `?type=TYPE` | `/api/streams?...` | find a stream by id, or the streams of an aggregate type |
//! | `/streams/ID?before=V&at=N` | `/api/streams/ID?...` | its events (newest first, paged), snapshots, state at version N |
//! | `/log?before=ID&topic=T,U` | `/api/log?...` | the notification log, newest first, paged; `/api/log/tail` streams new records (SSE) |
//! | `/followers` | `/api/followers` | each follower's position, lag in records and seconds, moving or not |
//! | `/relay` | `/api/relay` | each relay's position, pending records, parked messages with their reasons |
//! | `/dead-letters` | `/api/dead-letters` | dead letters per queue with their reasons; `POST /api/dead-letters/QUEUE/retry` and `/purge` |
//! | `/metrics` | | Prometheus text format |
//!
//! It reads what `eventfold relay status`, `eventfold followers`, `eventfold log` and
//! `eventfold cqrs dead-letters` read, through the same functions: there is no second
//! source of truth. It is read-only unless built with [`InspectorBuilder::allow_actions`],
//! and takes an optional bearer token on every route.
//!
//! ```
//! use std::sync::Arc;
//! use eventfold_inspect::Inspector;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn eventfold::Store> = Arc::new(eventfold::InMemoryStore::new());
//! let inspector = Inspector::builder(store).token("s3cret").build();
//! // Mount it in a service (under a prefix with `Router::nest`), or serve it alone with
//! // `inspector.serve(listener, shutdown)`.
//! let app: axum::Router = inspector.router();
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

mod decode;
mod html;
mod metrics;
mod pages;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use eventfold::{Aggregate, Application, JsonMapper, Root, Store};
use eventfold_amqp::{AmqpConfig, ConsumerStats};
use eventfold_cqrs::replica::ReplicaStats;
use eventfold_relay::RelayMetrics;

pub use decode::PayloadDecoder;
pub use pages::{
    DeadLetterQueue, DeadLettersPage, EventRow, FollowerRow, FollowersPage, LogPage, RelayPage,
    RelayRow, StateAt, StreamPage, StreamSummary, StreamsPage,
};

/// The cookie a browser keeps the token in after opening a page with `?token=`.
pub const TOKEN_COOKIE: &str = "eventfold_inspect_token";

/// The header a POST action must carry: a form of another site cannot set it, so an
/// action cannot be triggered across sites with the browser's cookie.
pub const ACTION_HEADER: &str = "x-eventfold-action";

/// What went wrong answering a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No such stream, queue or relay.
    #[error("not found: {0}")]
    NotFound(String),
    /// A parameter that does not parse or is out of range.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No or a wrong bearer token.
    #[error("a bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    /// An action on a read-only inspector, or without the action header.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] eventfold::Error),
    /// Reading the relay's records failed.
    #[error("relay: {0}")]
    Relay(#[from] eventfold_relay::RelayError),
    /// The inspector itself failed.
    #[error("internal: {0}")]
    Internal(String),
    /// The broker (dead letters) failed.
    #[error("broker: {0}")]
    Broker(#[from] eventfold_cqrs::tooling::ToolError),
}

impl InspectError {
    fn status(&self) -> StatusCode {
        match self {
            InspectError::NotFound(_) => StatusCode::NOT_FOUND,
            InspectError::BadRequest(_) => StatusCode::BAD_REQUEST,
            InspectError::Unauthorized => StatusCode::UNAUTHORIZED,
            InspectError::Forbidden(_) => StatusCode::FORBIDDEN,
            InspectError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InspectError::Store(_) | InspectError::Relay(_) | InspectError::Broker(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

type StateFuture = Pin<Box<dyn Future<Output = Result<StateAt, eventfold::Error>> + Send>>;
type StateFn = Arc<dyn Fn(Arc<Application<JsonMapper>>, String, u64) -> StateFuture + Send + Sync>;
type Source<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// Builds an [`Inspector`] ([`Inspector::builder`]).
pub struct InspectorBuilder {
    store: Arc<dyn Store>,
    mappers: Vec<JsonMapper>,
    decoder: PayloadDecoder,
    aggregates: HashMap<&'static str, StateFn>,
    amqp: Option<AmqpConfig>,
    dead_letter_queues: Vec<String>,
    relays: Vec<String>,
    relay_metrics: Vec<(String, Source<RelayMetrics>)>,
    replica_stats: Vec<(String, Source<ReplicaStats>)>,
    consumer_stats: Vec<(String, Source<ConsumerStats>)>,
    allow_actions: bool,
    token: Option<String>,
    secrets: Vec<String>,
}

impl InspectorBuilder {
    /// Decodes events and snapshots with the mapper of `config` (compressor, cipher key)
    /// and builds "state at version N" with it; its secrets (cipher key, database
    /// password) are redacted from every response. Fails on a bad cipher key. Without it,
    /// plain and zlib-compressed JSON are shown, and encrypted records as undecodable.
    pub fn config(mut self, config: &eventfold::Config) -> eventfold::Result<Self> {
        self.secrets.extend(config.secrets());
        // With zlib as a second choice, as the decoder does: `eventfold demo` compresses
        // whatever the environment says.
        self.mappers = vec![config.mapper()?, config.clone().zlib().mapper()?];
        self.decoder = PayloadDecoder::from_config(config)?;
        Ok(self)
    }

    /// Registers aggregate type `A`: its streams get "state at version N", the fold of
    /// its events (from the newest snapshot at or below N) through [`Aggregate::apply`].
    pub fn aggregate<A: Aggregate>(mut self) -> Self
    where
        A::Id: ToOwned<Owned = A::Id>,
    {
        let state: StateFn = Arc::new(|app, stream_id, version| {
            Box::pin(async move {
                let id =
                    Root::<A>::parse_id(&stream_id).ok_or_else(|| eventfold::Error::Config {
                        variable: "stream id".to_owned(),
                        message: format!("{stream_id:?} is not an id of {}", A::TYPE),
                    })?;
                let root = app.repository().get_at::<A>(&id, version).await?;
                Ok(StateAt {
                    aggregate_type: A::TYPE.to_owned(),
                    version: root.version(),
                    state: serde_json::to_value(root.state()).map_err(|e| {
                        eventfold::Error::Decode {
                            kind: eventfold::RecordKind::Snapshot,
                            stream_id: stream_id.clone(),
                            version,
                            source: eventfold::CodecError::Json(e),
                        }
                    })?,
                })
            })
        });
        self.aggregates.insert(A::TYPE, state);
        self
    }

    /// The broker, for the dead-letter page, its actions and the dead-letter counts in
    /// `/metrics`. Its URL (and password) is never shown.
    pub fn amqp(mut self, amqp: AmqpConfig) -> Self {
        if !amqp.password().is_empty() {
            self.secrets.push(amqp.password().to_owned());
        }
        self.amqp = Some(amqp);
        self
    }

    /// A replica or consumer queue whose dead letters (`dead_letter_QUEUE`) are shown
    /// (repeatable).
    pub fn dead_letters(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queues.push(queue.into());
        self
    }

    /// A relay (by name) whose status and parked messages are shown (repeatable; default
    /// `relay`).
    pub fn relay(mut self, name: impl Into<String>) -> Self {
        self.relays.push(name.into());
        self
    }

    /// A relay running in this process: its counters go into `/metrics` and the relay
    /// page (`relay.metrics()` in the closure).
    pub fn relay_metrics(
        mut self,
        name: impl Into<String>,
        source: impl Fn() -> RelayMetrics + Send + Sync + 'static,
    ) -> Self {
        self.relay_metrics.push((name.into(), Arc::new(source)));
        self
    }

    /// A replica consumer of `queue` running in this process (`consumer.stats()`).
    pub fn replica_stats(
        mut self,
        queue: impl Into<String>,
        source: impl Fn() -> ReplicaStats + Send + Sync + 'static,
    ) -> Self {
        self.replica_stats.push((queue.into(), Arc::new(source)));
        self
    }

    /// An eventfold-amqp consumer running in this process, by name (`consumer.stats()`).
    pub fn consumer_stats(
        mut self,
        name: impl Into<String>,
        source: impl Fn() -> ConsumerStats + Send + Sync + 'static,
    ) -> Self {
        self.consumer_stats.push((name.into(), Arc::new(source)));
        self
    }

    /// Allows the POST actions (dead-letter retry and purge). Off by default: every
    /// action is then refused with 403.
    pub fn allow_actions(mut self, allow: bool) -> Self {
        self.allow_actions = allow;
        self
    }

    /// Requires `Authorization: Bearer TOKEN` (or the cookie a page opened with
    /// `?token=TOKEN` sets) on every route; others get 401.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        if !token.is_empty() {
            self.secrets.push(token.clone());
            self.token = Some(token);
        }
        self
    }

    /// A text that must never appear in a response (a database or broker password): error
    /// messages that contain it show `***` instead.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        let secret = secret.into();
        if !secret.is_empty() {
            self.secrets.push(secret);
        }
        self
    }

    /// The inspector.
    pub fn build(self) -> Inspector {
        let apps = self
            .mappers
            .into_iter()
            .map(|mapper| {
                Arc::new(
                    Application::builder_on(self.store.clone())
                        .mapper(mapper)
                        .build(),
                )
            })
            .collect();
        let relays = if self.relays.is_empty() {
            vec!["relay".to_owned()]
        } else {
            self.relays
        };
        Inspector {
            shared: Arc::new(Shared {
                store: self.store,
                apps,
                decoder: self.decoder,
                aggregates: self.aggregates,
                amqp: self.amqp,
                dead_letter_queues: self.dead_letter_queues,
                relays,
                relay_metrics: self.relay_metrics,
                replica_stats: self.replica_stats,
                consumer_stats: self.consumer_stats,
                allow_actions: self.allow_actions,
                token: self.token,
                secrets: self.secrets,
                seen_positions: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    /// One application per mapper to try, in order, for "state at version N".
    pub(crate) apps: Vec<Arc<Application<JsonMapper>>>,
    pub(crate) decoder: PayloadDecoder,
    pub(crate) aggregates: HashMap<&'static str, StateFn>,
    pub(crate) amqp: Option<AmqpConfig>,
    pub(crate) dead_letter_queues: Vec<String>,
    pub(crate) relays: Vec<String>,
    pub(crate) relay_metrics: Vec<(String, Source<RelayMetrics>)>,
    pub(crate) replica_stats: Vec<(String, Source<ReplicaStats>)>,
    pub(crate) consumer_stats: Vec<(String, Source<ConsumerStats>)>,
    pub(crate) allow_actions: bool,
    token: Option<String>,
    secrets: Vec<String>,
    /// What was seen of each follower's position, for "moving" and "stalled".
    pub(crate) seen_positions: Mutex<HashMap<String, pages::SeenFollower>>,
}

impl Shared {
    /// `text` with every configured secret replaced by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// The inspector: an [`axum::Router`] over a store (and, optionally, a broker and the
/// metric sources of a service it is embedded in). Cheap to clone.
#[derive(Clone)]
pub struct Inspector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("backend", &self.shared.store.backend())
            .field("relays", &self.shared.relays)
            .field("dead_letter_queues", &self.shared.dead_letter_queues)
            .field("allow_actions", &self.shared.allow_actions)
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// An inspector of `store` (as [`eventfold::Config::open_store`] opens it).
    pub fn builder(store: Arc<dyn Store>) -> InspectorBuilder {
        InspectorBuilder {
            store,
            mappers: vec![
                JsonMapper::new(),
                JsonMapper::new().with_compressor(eventfold::Zlib::default()),
            ],
            decoder: PayloadDecoder::plain(),
            aggregates: HashMap::new(),
            amqp: None,
            dead_letter_queues: Vec::new(),
            relays: Vec::new(),
            relay_metrics: Vec::new(),
            replica_stats: Vec::new(),
            consumer_stats: Vec::new(),
            allow_actions: false,
            token: None,
            secrets: Vec::new(),
        }
    }

    /// The pages, the JSON endpoints and `/metrics`, with the token check on every route.
    pub fn router(&self) -> axum::Router {
        pages::routes()
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                authorize,
            ))
            .with_state(self.shared.clone())
    }

    /// Serves [`Inspector::router`] on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Compares without stopping at the first difference, so timing does not tell how much
/// of a guess was right.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn given_token(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// `?token=`, decoded as axum decodes every other query.
fn query_token(request: &Request) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()?
        .0
        .token
}

async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(expected) = &shared.token else {
        return next.run(request).await;
    };
    if given_token(request.headers()).is_some_and(|t| same_secret(&t, expected)) {
        return next.run(request).await;
    }
    // A link with ?token= opens the pages in a browser, which keeps the token in a cookie
    // (HttpOnly: the page's script never sees it) and is sent back to the same page
    // without the token in its address bar and history.
    if query_token(&request).is_some_and(|t| same_secret(&t, expected)) {
        let path = request.uri().path().to_owned();
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, path),
                (
                    header::SET_COOKIE,
                    format!("{TOKEN_COOKIE}={expected}; HttpOnly; SameSite=Strict; Path=/"),
                ),
            ],
        )
            .into_response();
    }
    pages::error_response(&shared, request.uri().path(), &InspectError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(given_token(&headers), None);
        headers.insert(
            header::COOKIE,
            "a=b; eventfold_inspect_token=t1".parse().unwrap(),
        );
        assert_eq!(given_token(&headers).as_deref(), Some("t1"));
        headers.insert(header::AUTHORIZATION, "Bearer t2".parse().unwrap());
        assert_eq!(given_token(&headers).as_deref(), Some("t2"));
        headers.insert(header::AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(given_token(&headers), None);
    }

    #[test]
    fn a_token_in_the_query_is_percent_decoded() {
        let token = |uri: &str| query_token(&Request::builder().uri(uri).body(().into()).unwrap());
        assert_eq!(token("/log?token=a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(token("/log?topic=x&token=%41").as_deref(), Some("A"));
        assert_eq!(token("/log?topic=x"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }
}
