//! The data behind each page (what its `/api` twin returns as JSON) and the routes.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventfold::{Notification, NotificationQuery, StoredEvent, StreamQuery, Timestamp};
use eventfold_relay::{ParkedMessage, Relay};
use serde::{Deserialize, Serialize};

use crate::{html, metrics, InspectError, Shared, ACTION_HEADER};

/// Rows per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 50;
/// The most rows a page shows.
const MAX_LIMIT: usize = 1000;
/// Snapshots shown on a stream's page (the newest).
const SNAPSHOTS_SHOWN: usize = 10;
/// Notifications one "streams of a type" request reads, newest first, at most.
const TYPE_SCAN: usize = 5000;
/// Dead letters shown per queue (the oldest, in queue order).
const DEAD_LETTERS_SHOWN: u32 = 50;
/// A follower whose position has not changed for this long is "stalled" (when behind).
const STALLED_AFTER: Duration = Duration::from_secs(30);

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/log") }))
        .route("/assets/inspect.js", get(script))
        .route("/assets/inspect.css", get(style))
        .route("/streams", get(streams_html))
        .route("/api/streams", get(streams_json))
        .route("/streams/{*id}", get(stream_html))
        .route("/api/streams/{*id}", get(stream_json))
        .route("/log", get(log_html))
        .route("/api/log", get(log_json))
        .route("/api/log/tail", get(log_tail))
        .route("/followers", get(followers_html))
        .route("/api/followers", get(followers_json))
        .route("/relay", get(relay_html))
        .route("/api/relay", get(relay_json))
        .route("/dead-letters", get(dead_letters_html))
        .route("/api/dead-letters", get(dead_letters_json))
        .route(
            "/api/dead-letters/{queue}/{action}",
            post(dead_letter_action),
        )
        .route("/metrics", get(metrics::metrics))
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/inspect.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/inspect.css"),
    )
}

/// An error as the caller reads it: JSON under `/api`, a page elsewhere; secrets redacted.
pub(crate) fn error_response(shared: &Shared, path: &str, error: &InspectError) -> Response {
    let message = shared.redact(&error.to_string());
    let status = error.status();
    if path.starts_with("/api/") || path == "/metrics" {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        (status, Html(html::error_page(status, &message))).into_response()
    }
}

fn page<T>(
    shared: &Shared,
    path: &str,
    result: Result<T, InspectError>,
    render: impl FnOnce(&Shared, &T) -> String,
) -> Response {
    match result {
        Ok(data) => Html(render(shared, &data)).into_response(),
        Err(error) => error_response(shared, path, &error),
    }
}

fn json<T: Serialize>(shared: &Shared, path: &str, result: Result<T, InspectError>) -> Response {
    match result {
        Ok(data) => Json(data).into_response(),
        Err(error) => error_response(shared, path, &error),
    }
}

fn number<T: std::str::FromStr>(
    name: &str,
    value: Option<&str>,
) -> Result<Option<T>, InspectError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            InspectError::BadRequest(format!(
                "{name} must be a non-negative integer, got {text:?}"
            ))
        }),
    }
}

fn limit(value: Option<&str>) -> Result<usize, InspectError> {
    let limit = number::<usize>("limit", value)?.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(InspectError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    Ok(limit)
}

/// One event, snapshot or notification, as the pages show it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EventRow {
    /// Its id in the notification log (events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The stream (aggregate id).
    pub stream_id: String,
    /// Its version in the stream.
    pub version: u64,
    /// `Aggregate.Event` for events, `Aggregate` for snapshots.
    pub topic: String,
    /// When it happened, RFC 3339.
    pub time: String,
    /// The stored payload's size in bytes.
    pub size: usize,
    /// Record metadata (correlation id, headers), when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The payload, decoded (decompressed, decrypted).
    pub payload: Option<serde_json::Value>,
    /// Why the payload could not be decoded, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

impl EventRow {
    fn new(shared: &Shared, id: Option<u64>, record: &StoredEvent) -> Self {
        let (payload, undecodable) = match shared.decoder.decode(record) {
            Ok(json) => (Some(json), None),
            Err(why) => (None, Some(why)),
        };
        EventRow {
            id,
            stream_id: record.stream_id.clone(),
            version: record.version,
            topic: record.topic.clone(),
            time: record.timestamp.to_string(),
            size: record.state.len(),
            metadata: record
                .metadata
                .to_json()
                .and_then(|text| serde_json::from_str(&text).ok()),
            payload,
            undecodable,
        }
    }

    fn of(shared: &Shared, n: &Notification) -> Self {
        EventRow::new(shared, Some(n.id), &n.event)
    }
}

/// The aggregate type of an event topic (`World.Created` is `World`'s).
fn aggregate_type(topic: &str) -> &str {
    topic.rsplit_once('.').map_or(topic, |(kind, _)| kind)
}

#[derive(Debug, Default, Deserialize)]
struct StreamsParams {
    id: Option<String>,
    #[serde(rename = "type")]
    aggregate_type: Option<String>,
    before: Option<String>,
}

/// A stream found by [`StreamsPage`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream id.
    pub stream_id: String,
    /// The topic of its newest event seen.
    pub last_topic: String,
    /// That event's notification id.
    pub last_id: u64,
}

/// The streams of an aggregate type, newest activity first.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StreamsPage {
    /// The type searched for (`None`: the form only).
    pub aggregate_type: Option<String>,
    /// The aggregate types registered for "state at version N".
    pub registered_types: Vec<String>,
    /// Streams of that type with events among the notifications read.
    pub streams: Vec<StreamSummary>,
    /// The notifications read covered ids from here up (inclusive).
    pub scanned_from: Option<u64>,
    /// For older streams, ask again with `before` this id (`None`: the start of the log
    /// was reached).
    pub next_before: Option<u64>,
}

async fn find_streams(
    shared: &Shared,
    params: &StreamsParams,
) -> Result<StreamsPage, InspectError> {
    let mut registered_types: Vec<String> =
        shared.aggregates.keys().map(|t| (*t).to_owned()).collect();
    registered_types.sort();
    let mut page = StreamsPage {
        aggregate_type: None,
        registered_types,
        streams: Vec::new(),
        scanned_from: None,
        next_before: None,
    };
    let Some(kind) = params
        .aggregate_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Ok(page);
    };
    page.aggregate_type = Some(kind.to_owned());
    // The log has no index by aggregate type, only by topic and id: read it newest first
    // in pages, a bounded number of records per request, and let the caller go on.
    let mut before = number::<u64>("before", params.before.as_deref())?;
    let mut seen = BTreeSet::new();
    let mut scanned = 0;
    while scanned < TYPE_SCAN && page.streams.len() < DEFAULT_LIMIT {
        let mut query = NotificationQuery::newest(500);
        if let Some(before) = before {
            query = query.before(before);
        }
        let batch = shared.store.select_notifications(&query).await?;
        let Some(oldest) = batch.last() else {
            before = None;
            break;
        };
        before = Some(oldest.id);
        page.scanned_from = Some(oldest.id);
        scanned += batch.len();
        for n in &batch {
            if aggregate_type(&n.event.topic) == kind && seen.insert(n.event.stream_id.clone()) {
                page.streams.push(StreamSummary {
                    stream_id: n.event.stream_id.clone(),
                    last_topic: n.event.topic.clone(),
                    last_id: n.id,
                });
            }
        }
        if batch.len() < 500 {
            before = None;
            break;
        }
    }
    page.next_before = before.filter(|&id| id > 1);
    Ok(page)
}

async fn streams_html(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<StreamsParams>,
) -> Response {
    if let Some(id) = params
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        return Redirect::to(&format!("/streams/{}", html::url_path(id))).into_response();
    }
    let result = find_streams(&shared, &params).await;
    page(&shared, "/streams", result, html::streams_page)
}

async fn streams_json(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<StreamsParams>,
) -> Response {
    if let Some(id) = params
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        let result = stream_page(&shared, id, &StreamParams::default()).await;
        return json(&shared, "/api/streams", result);
    }
    let result = find_streams(&shared, &params).await;
    json(&shared, "/api/streams", result)
}

#[derive(Debug, Default, Deserialize)]
struct StreamParams {
    before: Option<String>,
    limit: Option<String>,
    at: Option<String>,
}

/// The state of an aggregate at a version.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StateAt {
    /// The registered aggregate type that folded it.
    pub aggregate_type: String,
    /// The version it is at (the stream's last, when N was beyond it).
    pub version: u64,
    /// The state, as serde serializes it.
    pub state: serde_json::Value,
}

/// One stream: its newest events (paged), its snapshots, and its state at a version.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StreamPage {
    /// The stream id.
    pub stream_id: String,
    /// Its aggregate type, from its topics.
    pub aggregate_type: String,
    /// Its last version.
    pub last_version: u64,
    /// Events, newest first, below `before` when given.
    pub events: Vec<EventRow>,
    /// For older events, ask again with `before` this version.
    pub next_before: Option<u64>,
    /// Its newest snapshots, newest first.
    pub snapshots: Vec<EventRow>,
    /// Whether its aggregate type is registered (so `at=N` can fold it).
    pub state_available: bool,
    /// The state at version `at`, when asked for.
    pub state: Option<StateAt>,
}

async fn stream_page(
    shared: &Shared,
    stream_id: &str,
    params: &StreamParams,
) -> Result<StreamPage, InspectError> {
    let limit = limit(params.limit.as_deref())?;
    let before = number::<u64>("before", params.before.as_deref())?;
    let at = number::<u64>("at", params.at.as_deref())?;
    let store = &shared.store;
    let last = store
        .select_events(stream_id, StreamQuery::all().descending().limit(1))
        .await?;
    let Some(last) = last.first() else {
        return Err(InspectError::NotFound(format!("no stream {stream_id:?}")));
    };
    let mut query = StreamQuery::all().descending().limit(limit);
    if let Some(before) = before {
        query = query.up_to(before.saturating_sub(1));
    }
    let events: Vec<EventRow> = if before == Some(0) || before == Some(1) {
        Vec::new()
    } else {
        store
            .select_events(stream_id, query)
            .await?
            .iter()
            .map(|e| EventRow::new(shared, None, e))
            .collect()
    };
    let next_before = match events.last() {
        Some(oldest) if events.len() == limit && oldest.version > 1 => Some(oldest.version),
        _ => None,
    };
    let snapshots = store
        .select_snapshots(
            stream_id,
            StreamQuery::all().descending().limit(SNAPSHOTS_SHOWN),
        )
        .await?
        .iter()
        .map(|s| EventRow::new(shared, None, s))
        .collect();
    let kind = aggregate_type(&last.topic).to_owned();
    let fold = shared.aggregates.get(kind.as_str()).cloned();
    let state = match (at, &fold) {
        (Some(_), None) => {
            return Err(InspectError::BadRequest(format!(
                "the aggregate type {kind} is not registered with the inspector, so its \
                 state cannot be folded"
            )))
        }
        (Some(0), Some(_)) => {
            return Err(InspectError::BadRequest(
                "at must be a version from 1".to_owned(),
            ))
        }
        (Some(version), Some(fold)) => {
            let mut first_error = None;
            let mut state = None;
            for app in &shared.apps {
                match fold(app.clone(), stream_id.to_owned(), version).await {
                    Ok(folded) => {
                        state = Some(folded);
                        break;
                    }
                    Err(e @ eventfold::Error::Decode { .. }) => {
                        first_error.get_or_insert(e);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            match (state, first_error) {
                (Some(state), _) => Some(state),
                (None, Some(e)) => return Err(e.into()),
                (None, None) => None,
            }
        }
        (None, _) => None,
    };
    Ok(StreamPage {
        stream_id: stream_id.to_owned(),
        aggregate_type: kind,
        last_version: last.version,
        events,
        next_before,
        snapshots,
        state_available: fold.is_some(),
        state,
    })
}

async fn stream_html(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(params): Query<StreamParams>,
) -> Response {
    let result = stream_page(&shared, &id, &params).await;
    page(&shared, "/streams", result, html::stream_page)
}

async fn stream_json(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(params): Query<StreamParams>,
) -> Response {
    let result = stream_page(&shared, &id, &params).await;
    json(&shared, "/api/streams", result)
}

#[derive(Debug, Default, Deserialize)]
struct LogParams {
    before: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    topic: Option<String>,
}

fn topics(param: Option<&str>) -> Vec<String> {
    param
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A page of the notification log, newest first.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LogPage {
    /// The highest notification id readable now.
    pub head: u64,
    /// The topics filtered by (empty: all).
    pub topics: Vec<String>,
    /// The notifications, newest first.
    pub notifications: Vec<EventRow>,
    /// For the page before, ask again with `before` this id.
    pub next_before: Option<u64>,
}

async fn log_page(shared: &Shared, params: &LogParams) -> Result<LogPage, InspectError> {
    let limit = limit(params.limit.as_deref())?;
    let topics = topics(params.topic.as_deref());
    let mut query = NotificationQuery::newest(limit).topics(topics.clone());
    if let Some(before) = number::<u64>("before", params.before.as_deref())? {
        query = query.before(before);
    }
    let head = shared.store.max_notification_id().await?;
    let page = shared.store.select_notifications(&query).await?;
    let next_before = match page.last() {
        Some(oldest) if page.len() == limit && oldest.id > 1 => Some(oldest.id),
        _ => None,
    };
    Ok(LogPage {
        head,
        topics,
        notifications: page.iter().map(|n| EventRow::of(shared, n)).collect(),
        next_before,
    })
}

async fn log_html(State(shared): State<Arc<Shared>>, Query(params): Query<LogParams>) -> Response {
    let result = log_page(&shared, &params).await;
    page(&shared, "/log", result, html::log_page)
}

async fn log_json(State(shared): State<Arc<Shared>>, Query(params): Query<LogParams>) -> Response {
    let result = log_page(&shared, &params).await;
    json(&shared, "/api/log", result)
}

/// Server-sent events: one `notification` event (an [`EventRow`] as JSON, its id the
/// notification id) per record committed after `after` (default: the head when the
/// connection opened), in log order, waking on the store's wake-ups and polling.
async fn log_tail(State(shared): State<Arc<Shared>>, Query(params): Query<LogParams>) -> Response {
    let after = match number::<u64>("after", params.after.as_deref()) {
        Ok(Some(after)) => after,
        Ok(None) => match shared.store.max_notification_id().await {
            Ok(head) => head,
            Err(e) => return error_response(&shared, "/api/log/tail", &e.into()),
        },
        Err(e) => return error_response(&shared, "/api/log/tail", &e),
    };
    let topics = topics(params.topic.as_deref());
    let wakeups = shared.store.wakeups();
    let state = (
        shared,
        after,
        topics,
        wakeups,
        std::collections::VecDeque::new(),
    );
    let stream = futures_lite::stream::unfold(
        state,
        |(shared, mut after, topics, wakeups, mut ready)| async move {
            loop {
                if let Some(event) = ready.pop_front() {
                    return Some((
                        Ok::<Event, Infallible>(event),
                        (shared, after, topics, wakeups, ready),
                    ));
                }
                let query = NotificationQuery::after(after, 100).topics(topics.clone());
                match shared.store.select_notifications(&query).await {
                    Ok(page) if !page.is_empty() => {
                        for n in &page {
                            after = n.id;
                            let row = EventRow::of(&shared, n);
                            let data = serde_json::to_string(&row).unwrap_or_default();
                            ready.push_back(
                                Event::default()
                                    .event("notification")
                                    .id(n.id.to_string())
                                    .data(data),
                            );
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let message = shared.redact(&e.to_string());
                        ready.push_back(Event::default().event("error").data(message));
                    }
                }
                let wake = async {
                    match &wakeups {
                        Some(w) => w.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What the inspector saw of a follower's position, for "moving" or "stalled".
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenFollower {
    position: u64,
    first_seen: Instant,
    last_move: Option<Instant>,
}

/// One follower of the log.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FollowerRow {
    /// Its name.
    pub name: String,
    /// The last notification id it processed.
    pub position: u64,
    /// Notifications after its position, up to the head.
    pub lag_records: u64,
    /// Age of the oldest notification it has not processed (0 when caught up).
    pub lag_seconds: f64,
    /// `caught up`; or, behind: `moving` (the inspector saw its position change within
    /// the last 30 s), `stalled` (watched for 30 s, not moved since), `unknown` (not
    /// watched long enough to tell).
    pub state: String,
}

/// Every follower of the log.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FollowersPage {
    /// The highest notification id readable now.
    pub head: u64,
    /// The followers, by name.
    pub followers: Vec<FollowerRow>,
    /// Consumer inbox marks (one per applied message id, not followers of the log): not
    /// listed, counted.
    pub inbox_marks: usize,
}

async fn followers_page(shared: &Shared) -> Result<FollowersPage, InspectError> {
    let store = &shared.store;
    let head = store.max_notification_id().await?;
    let (inbox, followers): (Vec<_>, Vec<_>) = store
        .followers()
        .await?
        .into_iter()
        .partition(|t| eventfold_relay::inbox::is_inbox_follower(&t.follower));
    let mut rows = Vec::with_capacity(followers.len());
    for tracking in followers {
        let lag_records = head.saturating_sub(tracking.position);
        let lag_seconds = if lag_records == 0 {
            0.0
        } else {
            oldest_unprocessed_age(shared, tracking.position).await?
        };
        let state = if lag_records == 0 {
            "caught up"
        } else {
            let mut seen = shared
                .seen_positions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let look = seen
                .entry(tracking.follower.clone())
                .or_insert_with(|| SeenFollower {
                    position: tracking.position,
                    first_seen: now,
                    last_move: None,
                });
            if look.position != tracking.position {
                look.position = tracking.position;
                look.last_move = Some(now);
            }
            match look.last_move {
                Some(moved) if moved.elapsed() < STALLED_AFTER => "moving",
                _ if look.first_seen.elapsed() >= STALLED_AFTER => "stalled",
                _ => "unknown",
            }
        };
        rows.push(FollowerRow {
            name: tracking.follower,
            position: tracking.position,
            lag_records,
            lag_seconds,
            state: state.to_owned(),
        });
    }
    Ok(FollowersPage {
        head,
        followers: rows,
        inbox_marks: inbox.len(),
    })
}

/// Seconds since the first notification after `position` was recorded (what `relay
/// status` calls lag seconds).
async fn oldest_unprocessed_age(shared: &Shared, position: u64) -> Result<f64, InspectError> {
    let next = shared
        .store
        .select_notifications(&NotificationQuery::after(position, 1))
        .await?;
    Ok(next.first().map_or(0.0, |n| {
        let age = Timestamp::now().as_micros() - n.event.timestamp.as_micros();
        age.max(0) as f64 / 1e6
    }))
}

async fn followers_html(State(shared): State<Arc<Shared>>) -> Response {
    let result = followers_page(&shared).await;
    page(&shared, "/followers", result, html::followers_page)
}

async fn followers_json(State(shared): State<Arc<Shared>>) -> Response {
    let result = followers_page(&shared).await;
    json(&shared, "/api/followers", result)
}

/// One relay's status, as `eventfold relay status` and `relay parked` show it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RelayRow {
    /// Its name.
    pub name: String,
    /// Its position in the log.
    pub position: u64,
    /// The log's head.
    pub head: u64,
    /// Records not published yet (head - position).
    pub pending: u64,
    /// Age of the oldest record not published yet.
    pub lag_seconds: f64,
    /// The last outage it recorded.
    pub last_error: Option<serde_json::Value>,
    /// Messages the broker returned (or that could not be encoded), parked and not
    /// re-published, oldest first.
    pub parked: Vec<ParkedRow>,
    /// Its counters, when it runs in this process.
    pub metrics: Option<serde_json::Value>,
}

/// A parked message.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ParkedRow {
    /// The notification it came from.
    pub notification_id: u64,
    /// Its topic.
    pub topic: String,
    /// Its stream.
    pub stream_id: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Why it was parked.
    pub reason: String,
}

impl From<&ParkedMessage> for ParkedRow {
    fn from(p: &ParkedMessage) -> Self {
        ParkedRow {
            notification_id: p.notification_id,
            topic: p.topic.clone(),
            stream_id: p.stream_id.clone(),
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            reason: p.reason.clone(),
        }
    }
}

/// The relays.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RelayPage {
    /// One row per relay name.
    pub relays: Vec<RelayRow>,
}

pub(crate) fn relay_metrics_json(m: &eventfold_relay::RelayMetrics) -> serde_json::Value {
    serde_json::json!({
        "published": m.published,
        "confirmed": m.confirmed,
        "returned": m.returned,
        "parked": m.parked,
        "nacked": m.nacked,
        "reconnects": m.reconnects,
        "batches": m.batches,
        "leader": m.leader,
        "standby": m.standby,
    })
}

async fn relay_page(shared: &Shared) -> Result<RelayPage, InspectError> {
    let mut relays = Vec::new();
    for name in &shared.relays {
        let status = Relay::status(&*shared.store, name).await?;
        let parked = eventfold_relay::parked_messages(&*shared.store, name).await?;
        let metrics = shared
            .relay_metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, source)| relay_metrics_json(&source()));
        relays.push(RelayRow {
            name: name.clone(),
            position: status.position,
            head: status.head,
            pending: status.lag_records,
            lag_seconds: status.lag_seconds,
            last_error: status.last_error.as_ref().map(|e| {
                serde_json::json!({
                    "at": e.at.to_string(),
                    "reason": shared.redact(&e.reason),
                    "ongoing": e.ongoing,
                })
            }),
            parked: parked.iter().map(|(_, p)| ParkedRow::from(p)).collect(),
            metrics,
        });
    }
    Ok(RelayPage { relays })
}

async fn relay_html(State(shared): State<Arc<Shared>>) -> Response {
    let result = relay_page(&shared).await;
    page(&shared, "/relay", result, html::relay_page)
}

async fn relay_json(State(shared): State<Arc<Shared>>) -> Response {
    let result = relay_page(&shared).await;
    json(&shared, "/api/relay", result)
}

/// The dead letters of one queue.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLetterQueue {
    /// The replica or consumer queue.
    pub queue: String,
    /// Its dead-letter queue.
    pub dead_letter_queue: String,
    /// How many dead letters it holds.
    pub total: u32,
    /// The first of them, in queue order.
    pub letters: Vec<DeadLetterRow>,
    /// Its consumer's counters, when it runs in this process.
    pub stats: Option<serde_json::Value>,
}

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLetterRow {
    /// Its `cqrs_id`, for a django-cqrs message.
    pub cqrs_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// How many times it was tried.
    pub attempts: Option<i64>,
    /// The body, as JSON when it is JSON.
    pub body: serde_json::Value,
}

/// The dead letters of every configured queue.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLettersPage {
    /// Whether retry and purge are allowed.
    pub actions_allowed: bool,
    /// One entry per queue.
    pub queues: Vec<DeadLetterQueue>,
}

pub(crate) fn replica_stats_json(s: &eventfold_cqrs::replica::ReplicaStats) -> serde_json::Value {
    serde_json::json!({
        "applied": s.applied,
        "duplicates": s.duplicates,
        "stale": s.stale,
        "retries": s.retries,
        "dead_letters": s.dead_letters,
        "commits": s.commits,
    })
}

fn amqp(shared: &Shared) -> Result<&eventfold_amqp::AmqpConfig, InspectError> {
    shared.amqp.as_ref().ok_or_else(|| {
        InspectError::BadRequest(
            "no broker configured (--amqp-url / EVENTFOLD_AMQP_URL)".to_owned(),
        )
    })
}

async fn dead_letters_page(shared: &Shared) -> Result<DeadLettersPage, InspectError> {
    let mut queues = Vec::new();
    if !shared.dead_letter_queues.is_empty() {
        let amqp = amqp(shared)?;
        for queue in &shared.dead_letter_queues {
            let (total, letters) =
                eventfold_cqrs::tooling::dead_letters_peek(amqp, queue, DEAD_LETTERS_SHOWN).await?;
            let stats = shared
                .replica_stats
                .iter()
                .find(|(q, _)| q == queue)
                .map(|(_, source)| replica_stats_json(&source()));
            queues.push(DeadLetterQueue {
                queue: queue.clone(),
                dead_letter_queue: eventfold_cqrs::wire::dead_letter_queue(queue),
                total,
                letters: letters
                    .into_iter()
                    .map(|l| DeadLetterRow {
                        body: serde_json::from_str(&l.body)
                            .unwrap_or(serde_json::Value::String(l.body)),
                        cqrs_id: l.cqrs_id,
                        reason: l.reason,
                        attempts: l.attempts,
                    })
                    .collect(),
                stats,
            });
        }
    }
    Ok(DeadLettersPage {
        actions_allowed: shared.allow_actions,
        queues,
    })
}

async fn dead_letters_html(State(shared): State<Arc<Shared>>) -> Response {
    let result = dead_letters_page(&shared).await;
    page(&shared, "/dead-letters", result, html::dead_letters_page)
}

async fn dead_letters_json(State(shared): State<Arc<Shared>>) -> Response {
    let result = dead_letters_page(&shared).await;
    json(&shared, "/api/dead-letters", result)
}

/// `cqrs dead-letters retry` of `queue`. The tooling writes each body to a `dyn Write`,
/// which makes its future not `Send`: it runs on a thread of its own.
async fn retry_dead_letters(
    amqp: eventfold_amqp::AmqpConfig,
    queue: String,
) -> Result<eventfold_cqrs::tooling::DeadLetterReport, InspectError> {
    let (done, report) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| InspectError::Internal(format!("cannot start a runtime: {e}")))
            .and_then(|runtime| {
                runtime
                    .block_on(eventfold_cqrs::tooling::dead_letters_retry(
                        &amqp,
                        &queue,
                        None,
                        eventfold_cqrs::wire::DEFAULT_EXCHANGE,
                        &mut std::io::sink(),
                        &mut std::io::sink(),
                    ))
                    .map_err(InspectError::from)
            });
        let _ = done.send(outcome);
    });
    report
        .await
        .unwrap_or_else(|_| Err(InspectError::Internal("the retry thread died".to_owned())))
}

/// What a dead-letter action did.
#[derive(Debug, Clone, Serialize)]
struct ActionReport {
    queue: String,
    action: String,
    total: u32,
    handled: u32,
    left: u32,
}

async fn dead_letter_action(
    State(shared): State<Arc<Shared>>,
    Path((queue, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = "/api/dead-letters";
    let result = async {
        if !shared.allow_actions {
            return Err(InspectError::Forbidden(
                "the inspector is read-only: start it with --allow-actions to retry or \
                 purge dead letters"
                    .to_owned(),
            ));
        }
        if !headers.contains_key(ACTION_HEADER) {
            return Err(InspectError::Forbidden(format!(
                "an action needs the {ACTION_HEADER} header (the page's buttons send it)"
            )));
        }
        if !shared.dead_letter_queues.contains(&queue) {
            return Err(InspectError::NotFound(format!(
                "the queue {queue:?} is not one the inspector shows (--dead-letters)"
            )));
        }
        let amqp = amqp(&shared)?;
        let report = match action.as_str() {
            "retry" => retry_dead_letters(amqp.clone(), queue.clone()).await?,
            "purge" => eventfold_cqrs::tooling::dead_letters_purge(amqp, &queue, None).await?,
            other => {
                return Err(InspectError::NotFound(format!(
                    "no action {other:?} (retry or purge)"
                )))
            }
        };
        tracing::info!(%queue, %action, handled = report.handled, "dead-letter action");
        Ok(ActionReport {
            queue: queue.clone(),
            action: action.clone(),
            total: report.total,
            handled: report.handled,
            left: report.left,
        })
    }
    .await;
    json(&shared, path, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_comma_separated() {
        assert_eq!(topics(Some("A.B, C.D,,")), ["A.B", "C.D"]);
        assert!(topics(None).is_empty());
    }

    #[test]
    fn the_aggregate_type_is_the_topic_before_its_last_dot() {
        assert_eq!(aggregate_type("World.Created"), "World");
        assert_eq!(aggregate_type("shop.Order.Paid"), "shop.Order");
        assert_eq!(aggregate_type("World"), "World");
    }

    #[test]
    fn a_limit_out_of_range_is_a_bad_request() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(matches!(limit(Some("0")), Err(InspectError::BadRequest(_))));
        assert!(matches!(limit(Some("x")), Err(InspectError::BadRequest(_))));
        assert!(matches!(
            limit(Some("1001")),
            Err(InspectError::BadRequest(_))
        ));
    }
}
