//! The storage contract every backend implements: streams of events, snapshots, the global
//! notification log, follower positions, and the transaction that all of them (and the
//! caller's own rows) are written through.
//!
//! Records are opaque bytes here: the [`crate::Mapper`] has already turned domain values into
//! `state` before a store sees them, so a store never knows the event types, the codec, the
//! compression or the cipher. Every backend must pass the conformance suite in the
//! `eventfold-conformance` crate.
//!
//! The public structs are `#[non_exhaustive]`: build them with their constructors and
//! builder methods, so that a later field does not break your code.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::Timestamp;

/// Free-form data stored with a record beside its payload: correlation and causation ids,
/// a message id, headers. Carried to followers and to the wire (nameko headers,
/// django-cqrs `meta`). Empty metadata is stored as nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, serde_json::Value>);

impl Metadata {
    /// The key under which [`Metadata::correlation_id`] is kept.
    pub const CORRELATION_ID: &'static str = "correlation_id";
    /// The key under which [`Metadata::causation_id`] is kept.
    pub const CAUSATION_ID: &'static str = "causation_id";
    /// The key under which [`Metadata::message_id`] is kept.
    pub const MESSAGE_ID: &'static str = "message_id";

    /// No metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `key`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds (or replaces) `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_str())
    }

    /// Sets the correlation id (the id of the request or conversation this belongs to).
    pub fn with_correlation_id(self, id: impl Into<String>) -> Self {
        self.with(Self::CORRELATION_ID, id.into())
    }

    /// Sets the causation id (the id of the message that caused this one).
    pub fn with_causation_id(self, id: impl Into<String>) -> Self {
        self.with(Self::CAUSATION_ID, id.into())
    }

    /// The correlation id, if set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.get_str(Self::CORRELATION_ID)
    }

    /// The causation id, if set.
    pub fn causation_id(&self) -> Option<&str> {
        self.get_str(Self::CAUSATION_ID)
    }

    /// The message id, if set.
    pub fn message_id(&self) -> Option<&str> {
        self.get_str(Self::MESSAGE_ID)
    }

    /// True when there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.0.iter()
    }

    /// The JSON text stores keep, or `None` when empty.
    ///
    /// A JSON object with the keys in order, written straight from the map (no copy into
    /// a `serde_json::Value` first: that copy cost as much as the rest of recording a
    /// change's metadata).
    pub fn to_json(&self) -> Option<String> {
        (!self.is_empty()).then(|| {
            serde_json::to_string(&self.0)
                .expect("a map of string keys to JSON values always serializes")
        })
    }

    /// Parses what [`Metadata::to_json`] wrote (`None` or empty text is empty metadata).
    pub fn from_json(text: Option<&str>) -> std::result::Result<Self, serde_json::Error> {
        match text {
            None | Some("") => Ok(Self::default()),
            Some(text) => serde_json::from_str(text),
        }
    }
}

impl FromIterator<(String, serde_json::Value)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (String, serde_json::Value)>>(iter: I) -> Self {
        Metadata(iter.into_iter().collect())
    }
}

/// One stored record of a stream: an event, or a snapshot of the aggregate at `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredEvent {
    /// The stream, i.e. the aggregate id in its text form.
    pub stream_id: String,
    /// Position in the stream, from 1, without gaps.
    pub version: u64,
    /// What the bytes are: `"<Aggregate>.<Event>"` for events, `"<Aggregate>"` for snapshots.
    pub topic: String,
    /// When the event happened (or when the snapshot was taken).
    pub timestamp: Timestamp,
    /// The encoded payload, as produced by the mapper.
    pub state: Vec<u8>,
    /// Data stored beside the payload (correlation id, headers, ...); empty for snapshots.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

impl StoredEvent {
    /// A record without metadata.
    pub fn new(
        stream_id: impl Into<String>,
        version: u64,
        topic: impl Into<String>,
        timestamp: Timestamp,
        state: Vec<u8>,
    ) -> Self {
        StoredEvent {
            stream_id: stream_id.into(),
            version,
            topic: topic.into(),
            timestamp,
            state,
            metadata: Metadata::default(),
        }
    }

    /// The same record with `metadata`.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// An event as it appears in the global notification log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notification {
    /// Position in the log: ascending in commit order, never reused (gaps may exist).
    pub id: u64,
    /// The event itself.
    pub event: StoredEvent,
}

impl Notification {
    /// A notification of `event` at log position `id`.
    pub fn new(id: u64, event: StoredEvent) -> Self {
        Notification { id, event }
    }
}

/// A follower's position in the notification log: the id of the last notification it
/// has fully processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tracking {
    /// The follower's unique name.
    pub follower: String,
    /// The last processed notification id.
    pub position: u64,
}

impl Tracking {
    /// `follower` at `position`.
    pub fn new(follower: impl Into<String>, position: u64) -> Self {
        Tracking {
            follower: follower.into(),
            position,
        }
    }
}

/// Everything one save writes, atomically.
///
/// Build it with [`Recording::new`] and the builder methods.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Recording {
    /// New events at the versions they carry; each `(stream_id, version)` must continue its
    /// stream (the latest stored version + 1, or the previous event of the recording + 1),
    /// or the whole recording fails with [`crate::Conflict::Streams`].
    pub events: Vec<StoredEvent>,
    /// Events appended at whatever version comes next in their stream when the store
    /// writes them (their `version` field is ignored): for change records, whose writer
    /// does not know the stream's latest version. Concurrent appends to one stream are
    /// serialised by the store, each gets its own version, and none fails.
    pub appends: Vec<StoredEvent>,
    /// Snapshots taken after these events; an existing `(stream_id, version)` snapshot is
    /// left as it is (snapshots of one version are interchangeable).
    pub snapshots: Vec<StoredEvent>,
    /// A follower position to move in the same transaction; must be greater than the
    /// stored position, or the recording fails with [`crate::Conflict::Tracking`].
    pub tracking: Option<Tracking>,
}

impl Recording {
    /// An empty recording.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event at the version it carries.
    pub fn event(mut self, event: StoredEvent) -> Self {
        self.events.push(event);
        self
    }

    /// Adds an event at the next version of its stream (see [`Recording::appends`]).
    pub fn append(mut self, event: StoredEvent) -> Self {
        self.appends.push(event);
        self
    }

    /// Adds a snapshot.
    pub fn snapshot(mut self, snapshot: StoredEvent) -> Self {
        self.snapshots.push(snapshot);
        self
    }

    /// Moves a follower's position in the same transaction.
    pub fn tracking(mut self, tracking: Tracking) -> Self {
        self.tracking = Some(tracking);
        self
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.appends.is_empty()
            && self.snapshots.is_empty()
            && self.tracking.is_none()
    }

    /// How many notification ids recording this gives: one per event and append.
    pub fn notification_count(&self) -> usize {
        self.events.len() + self.appends.len()
    }
}

/// Which records of one stream to select.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamQuery {
    /// Only versions strictly greater than this.
    pub after: Option<u64>,
    /// Only versions at most this.
    pub up_to: Option<u64>,
    /// Newest first instead of oldest first.
    pub descending: bool,
    /// At most this many records.
    pub limit: Option<usize>,
}

impl StreamQuery {
    /// Every record of the stream, oldest first.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only versions strictly greater than `version`.
    pub fn after(mut self, version: u64) -> Self {
        self.after = Some(version);
        self
    }

    /// Only versions at most `version`.
    pub fn up_to(mut self, version: u64) -> Self {
        self.up_to = Some(version);
        self
    }

    /// Newest first.
    pub fn descending(mut self) -> Self {
        self.descending = true;
        self
    }

    /// At most `limit` records.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Filters, orders and limits `(version, item)` pairs given in ascending version order
    /// (for backends that hold records in memory).
    pub fn select<T>(&self, items: impl DoubleEndedIterator<Item = (u64, T)>) -> Vec<T> {
        let after = self.after.unwrap_or(0);
        let up_to = self.up_to.unwrap_or(u64::MAX);
        let wanted = items.filter(|(v, _)| *v > after && *v <= up_to);
        let limit = self.limit.unwrap_or(usize::MAX);
        if self.descending {
            wanted.rev().take(limit).map(|(_, t)| t).collect()
        } else {
            wanted.take(limit).map(|(_, t)| t).collect()
        }
    }

    /// The newest record at or below `up_to` (or the newest of all).
    pub fn latest(up_to: Option<u64>) -> Self {
        StreamQuery {
            after: None,
            up_to,
            descending: true,
            limit: Some(1),
        }
    }
}

/// Which notifications to select from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotificationQuery {
    /// Only ids strictly greater than this (a follower passes its position).
    pub after: u64,
    /// Only ids strictly below this (for paging newest first).
    pub before: Option<u64>,
    /// At most this many.
    pub limit: usize,
    /// Only these topics; empty selects every topic.
    pub topics: Vec<String>,
    /// Newest first: the `limit` highest ids in the range, in descending order.
    pub descending: bool,
}

impl NotificationQuery {
    /// Up to `limit` notifications after `after`, of every topic, oldest first.
    pub fn after(after: u64, limit: usize) -> Self {
        NotificationQuery {
            after,
            before: None,
            limit,
            topics: Vec::new(),
            descending: false,
        }
    }

    /// The `limit` newest notifications, newest first. Page further back with
    /// [`NotificationQuery::before`] the smallest id of the page.
    pub fn newest(limit: usize) -> Self {
        NotificationQuery {
            descending: true,
            ..Self::after(0, limit)
        }
    }

    /// Only ids strictly below `id`.
    pub fn before(mut self, id: u64) -> Self {
        self.before = Some(id);
        self
    }

    /// Only these topics.
    pub fn topics(mut self, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Whether `id` and `topic` are in the query's range and topics (for backends that
    /// hold the log in memory; the limit and the order are the caller's).
    pub fn admits(&self, id: u64, topic: &str) -> bool {
        id > self.after
            && self.before.is_none_or(|before| id < before)
            && (self.topics.is_empty() || self.topics.iter().any(|t| t == topic))
    }
}

/// What is needed to rebuild an aggregate: the latest snapshot (if any) and the events after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded {
    /// The newest snapshot at or below the requested version.
    pub snapshot: Option<StoredEvent>,
    /// Events after the snapshot (or from the start), up to the requested version, oldest first.
    pub events: Vec<StoredEvent>,
}

impl Loaded {
    /// A snapshot (if any) and the events after it.
    pub fn new(snapshot: Option<StoredEvent>, events: Vec<StoredEvent>) -> Self {
        Loaded { snapshot, events }
    }
}

/// A value bound to, or read from, a statement of [`Transaction::execute`] and
/// [`Transaction::query`]: the types SQLite and PostgreSQL share.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// An integer (`INTEGER`, `BIGINT`, `SMALLINT`; booleans read as 0 or 1).
    Integer(i64),
    /// A floating-point number (`REAL`, `DOUBLE PRECISION`).
    Real(f64),
    /// Text (`TEXT`, `VARCHAR`; PostgreSQL `NUMERIC` reads as its text).
    Text(String),
    /// Bytes (`BLOB`, `BYTEA`).
    Blob(Vec<u8>),
}

impl SqlValue {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a real or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Real(f) => Some(*f),
            SqlValue::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// True for `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }
}

macro_rules! sql_value_from {
    ($($t:ty => $variant:ident $(as $cast:ty)?),*) => {$(
        impl From<$t> for SqlValue {
            fn from(value: $t) -> Self {
                SqlValue::$variant((value $(as $cast)?).into())
            }
        }
    )*};
}

sql_value_from!(i64 => Integer, i32 => Integer as i64, u32 => Integer as i64, f64 => Real,
    String => Text, &str => Text, Vec<u8> => Blob, &[u8] => Blob, bool => Integer as i64);

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(SqlValue::Null, Into::into)
    }
}

/// One row of [`Transaction::query`]: its values in column order.
pub type SqlRow = Vec<SqlValue>;

/// The backend's half of a [`Transaction`]: an open database transaction (or, in memory,
/// a staged set of writes) that records, runs the caller's statements, and commits or
/// rolls back as a whole. Dropped without [`StoreTransaction::commit`], it rolls back.
///
/// Stores implement this; applications use [`Transaction`].
#[async_trait]
pub trait StoreTransaction: Send + 'static {
    /// The backend's short name.
    fn backend(&self) -> &'static str;

    /// Writes `recording` into the transaction. Returns the notification ids of its events
    /// then its appends. Visible to others only after the commit.
    ///
    /// On [`Error::Conflict`] nothing of the recording was written; whether the rest of
    /// the transaction can still commit depends on the backend (PostgreSQL aborts a
    /// transaction whose statement hit a unique violation): roll back and retry.
    async fn record(&mut self, recording: &Recording) -> Result<Vec<u64>>;

    /// Runs one SQL statement with `$1, $2, ...` placeholders; returns the rows changed.
    /// Stores without SQL fail with [`Error::Unsupported`].
    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let _ = (sql, params);
        Err(Error::Unsupported {
            backend: self.backend(),
            what: "SQL statements",
        })
    }

    /// Runs one SQL query with `$1, $2, ...` placeholders; returns its rows.
    /// Stores without SQL fail with [`Error::Unsupported`].
    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>> {
        let _ = (sql, params);
        Err(Error::Unsupported {
            backend: self.backend(),
            what: "SQL queries",
        })
    }

    /// Commits everything written into the transaction.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Rolls everything back.
    async fn rollback(self: Box<Self>) -> Result<()>;

    /// The concrete transaction, for the backend's own accessors (the driver connection).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

type AfterCommit = Box<dyn FnOnce() + Send>;

/// One transaction on any store: the caller's own rows, events, snapshots, change records
/// and follower positions commit or roll back together.
///
/// Open one with [`Store::begin`] (or [`crate::Application::begin`]). Write the caller's
/// rows through the backend's connection (`eventfold::sqlite::SqliteTransactionExt`,
/// `eventfold::postgres::PostgresTransactionExt`), through portable SQL
/// ([`Transaction::execute`], `$1`-style placeholders, on SQLite and PostgreSQL), or, for
/// state kept in memory, as a staged effect ([`Transaction::on_commit`]) that runs only if
/// the commit succeeds. Dropped without [`Transaction::commit`] it rolls back, and no
/// effect of it is visible anywhere.
pub struct Transaction {
    inner: Box<dyn StoreTransaction>,
    after_commit: Vec<AfterCommit>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("backend", &self.inner.backend())
            .field("after_commit", &self.after_commit.len())
            .finish()
    }
}

impl Transaction {
    /// Wraps a backend's open transaction (for store implementations).
    pub fn new(inner: impl StoreTransaction) -> Self {
        Transaction {
            inner: Box::new(inner),
            after_commit: Vec::new(),
        }
    }

    /// The backend's short name (`"memory"`, `"sqlite"`, `"postgres"`).
    pub fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    /// Records events, appends, snapshots and a tracking move into the transaction.
    /// See [`StoreTransaction::record`].
    pub async fn record(&mut self, recording: &Recording) -> Result<Vec<u64>> {
        if recording.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.record(recording).await
    }

    /// Moves a follower's position in the transaction; see [`Recording::tracking`].
    pub async fn track(&mut self, tracking: Tracking) -> Result<()> {
        self.inner
            .record(&Recording::new().tracking(tracking))
            .await
            .map(drop)
    }

    /// Runs one portable SQL statement (`$1, $2, ...` placeholders) in the transaction;
    /// returns the number of rows it changed. [`Error::Unsupported`] on the memory store.
    pub async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        self.inner.execute(sql, params).await
    }

    /// Runs one portable SQL query (`$1, $2, ...` placeholders) in the transaction.
    /// [`Error::Unsupported`] on the memory store.
    pub async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>> {
        self.inner.query(sql, params).await
    }

    /// Stages `effect` to run right after a successful commit, and never otherwise: the
    /// way to keep in-memory state (a cache, a projection held in memory) in step with
    /// the transaction on any store.
    pub fn on_commit(&mut self, effect: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(effect));
    }

    /// Commits, then runs the staged effects in the order they were staged.
    pub async fn commit(self) -> Result<()> {
        let Transaction {
            inner,
            after_commit,
        } = self;
        inner.commit().await?;
        for effect in after_commit {
            effect();
        }
        Ok(())
    }

    /// Rolls back: nothing written into the transaction is kept, no staged effect runs.
    pub async fn rollback(self) -> Result<()> {
        self.inner.rollback().await
    }

    /// The backend's transaction, if it is a `T` (backends build typed accessors on this).
    pub fn downcast_mut<T: StoreTransaction>(&mut self) -> Option<&mut T> {
        self.inner.as_any_mut().downcast_mut::<T>()
    }
}

/// Reads streams and their snapshots.
#[async_trait]
pub trait EventReader: Send + Sync {
    /// Events of one stream.
    async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>>;

    /// Snapshots of one stream.
    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>>;

    /// The latest snapshot at or below `up_to` and the events after it up to `up_to`.
    ///
    /// Backends override this to answer in one round trip; the default asks twice.
    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
        let snapshot = self
            .select_snapshots(stream_id, StreamQuery::latest(up_to))
            .await?
            .pop();
        let after = snapshot.as_ref().map(|s| s.version);
        let events = self
            .select_events(
                stream_id,
                StreamQuery {
                    after,
                    up_to,
                    ..StreamQuery::default()
                },
            )
            .await?;
        Ok(Loaded { snapshot, events })
    }
}

/// Writes recordings atomically, each in a transaction of its own.
#[async_trait]
pub trait EventWriter: Send + Sync {
    /// Writes the whole recording in one transaction, or nothing.
    ///
    /// Returns the notification ids given to `recording.events`, then to
    /// `recording.appends`, in order. A version that does not continue its stream fails
    /// the whole recording with [`crate::Conflict::Streams`]; a tracking position at or
    /// behind the stored one with [`crate::Conflict::Tracking`].
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>>;
}

/// Reads the global, totally ordered notification log.
#[async_trait]
pub trait NotificationReader: Send + Sync {
    /// Notifications in the query's range, ascending by id (descending with
    /// [`NotificationQuery::descending`]).
    ///
    /// Gap-safe: once a notification with id `n` has been returned, no notification with an
    /// id below `n` can appear later (a backend with concurrent writers returns only ids
    /// below the oldest transaction still in flight).
    async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>>;

    /// The highest notification id that [`Self::select_notifications`] can return now (0 if none).
    async fn max_notification_id(&self) -> Result<u64>;

    /// A handle that is notified when new notifications may exist, if the backend can tell
    /// (in-process commits, LISTEN/NOTIFY). Followers poll as well, so a missed wake-up
    /// only delays them.
    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Reads follower positions.
#[async_trait]
pub trait TrackingReader: Send + Sync {
    /// The follower's last processed notification id, or `None` if it never ran.
    async fn tracking_position(&self, follower: &str) -> Result<Option<u64>>;

    /// Every follower that has a position, by name.
    async fn followers(&self) -> Result<Vec<Tracking>>;
}

/// Everything an application needs from its store.
#[async_trait]
pub trait Store: EventReader + EventWriter + NotificationReader + TrackingReader {
    /// The backend's short name (`"memory"`, `"sqlite"`, `"postgres"`), for messages and benchmarks.
    fn backend(&self) -> &'static str;

    /// Opens a [`Transaction`]: the caller's own writes and eventfold's records in one
    /// atomic unit.
    async fn begin(&self) -> Result<Transaction>;

    /// Whether `error` (typically one a projection returned, from this backend's driver)
    /// is worth waiting out: a lost connection, a restarting server, a serialisation
    /// failure. Followers retry those. The default knows no driver and says no.
    fn is_transient_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        let _ = error;
        false
    }
}

macro_rules! forward_store {
    ($($wrapper:ty),*) => {$(
        #[async_trait]
        impl<T: EventReader + ?Sized> EventReader for $wrapper {
            async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
                (**self).select_events(stream_id, query).await
            }
            async fn select_snapshots(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
                (**self).select_snapshots(stream_id, query).await
            }
            async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
                (**self).load(stream_id, up_to).await
            }
        }
        #[async_trait]
        impl<T: EventWriter + ?Sized> EventWriter for $wrapper {
            async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
                (**self).record(recording).await
            }
        }
        #[async_trait]
        impl<T: NotificationReader + ?Sized> NotificationReader for $wrapper {
            async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>> {
                (**self).select_notifications(query).await
            }
            async fn max_notification_id(&self) -> Result<u64> {
                (**self).max_notification_id().await
            }
            fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
                (**self).wakeups()
            }
        }
        #[async_trait]
        impl<T: TrackingReader + ?Sized> TrackingReader for $wrapper {
            async fn tracking_position(&self, follower: &str) -> Result<Option<u64>> {
                (**self).tracking_position(follower).await
            }
            async fn followers(&self) -> Result<Vec<Tracking>> {
                (**self).followers().await
            }
        }
        #[async_trait]
        impl<T: Store + ?Sized> Store for $wrapper {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            async fn begin(&self) -> Result<Transaction> {
                (**self).begin().await
            }
            fn is_transient_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
                (**self).is_transient_error(error)
            }
        }
    )*};
}

forward_store!(Arc<T>, Box<T>, &T);

/// Walks `error` and its sources, for [`Store::is_transient_error`] implementations.
pub fn error_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::Metadata;

    /// The text is what a `serde_json::Value` of the same map writes (what stores kept
    /// before), keys in order, and reads back as the same metadata.
    #[test]
    fn metadata_json_is_the_json_value_text_and_round_trips() {
        let metadata = Metadata::new()
            .with("zeta", "last")
            .with_correlation_id("req-\"42\"\n")
            .with(
                "headers",
                serde_json::json!({"b": [1, 2.5, null], "a": {"é": true}}),
            );
        let as_value = serde_json::Value::from(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<serde_json::Map<_, _>>(),
        )
        .to_string();
        let text = metadata.to_json().unwrap();
        assert_eq!(text, as_value);
        assert!(text.starts_with(r#"{"correlation_id":"#), "{text}");
        assert_eq!(Metadata::from_json(Some(&text)).unwrap(), metadata);
        assert_eq!(Metadata::new().to_json(), None);
    }
}
