//! The storage contract every backend implements: streams of events, snapshots, the global
//! notification log and follower positions.
//!
//! Records are opaque bytes here: the [`crate::Mapper`] has already turned domain values into
//! `state` before a store sees them, so a store never knows the event types, the codec, the
//! compression or the cipher. Every backend must pass the conformance suite in the
//! `eventfold-conformance` crate.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::Timestamp;

/// One stored record of a stream: an event, or a snapshot of the aggregate at `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// An event as it appears in the global notification log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Position in the log: ascending in commit order, never reused (gaps may exist).
    pub id: u64,
    /// The event itself.
    pub event: StoredEvent,
}

/// A follower's position in the notification log: the id of the last notification it
/// has fully processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// The follower's unique name.
    pub follower: String,
    /// The last processed notification id.
    pub position: u64,
}

/// Everything one save writes, in one database transaction.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// New events; each `(stream_id, version)` must not exist yet, or the whole recording
    /// fails with [`crate::Error::Conflict`].
    pub events: Vec<StoredEvent>,
    /// Snapshots taken after these events; an existing `(stream_id, version)` snapshot is
    /// left as it is (snapshots of one version are interchangeable).
    pub snapshots: Vec<StoredEvent>,
    /// A follower position to move in the same transaction (process applications); must
    /// be greater than the stored position, or the recording fails with a conflict.
    pub tracking: Option<Tracking>,
}

/// Which records of one stream to select.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
pub struct NotificationQuery {
    /// Only ids strictly greater than this (a follower passes its position).
    pub after: u64,
    /// At most this many.
    pub limit: usize,
    /// Only these topics; empty selects every topic.
    pub topics: Vec<String>,
}

impl NotificationQuery {
    /// Up to `limit` notifications after `after`, of every topic.
    pub fn after(after: u64, limit: usize) -> Self {
        NotificationQuery {
            after,
            limit,
            topics: Vec::new(),
        }
    }
}

/// What is needed to rebuild an aggregate: the latest snapshot (if any) and the events after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The newest snapshot at or below the requested version.
    pub snapshot: Option<StoredEvent>,
    /// Events after the snapshot (or from the start), up to the requested version, oldest first.
    pub events: Vec<StoredEvent>,
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

/// Writes recordings atomically.
#[async_trait]
pub trait EventWriter: Send + Sync {
    /// Writes the whole recording in one transaction, or nothing.
    ///
    /// Returns the notification ids given to `recording.events`, in the same order.
    /// A `(stream_id, version)` that already exists fails the whole recording with
    /// [`crate::Error::Conflict`].
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>>;
}

/// Reads the global, totally ordered notification log.
#[async_trait]
pub trait NotificationReader: Send + Sync {
    /// Notifications after `query.after`, ascending by id.
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
}

/// Everything an application needs from its store.
pub trait Store: EventReader + EventWriter + NotificationReader + TrackingReader {
    /// The backend's short name (`"memory"`, `"sqlite"`, `"postgres"`), for messages and benchmarks.
    fn backend(&self) -> &'static str;
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
        }
        impl<T: Store + ?Sized> Store for $wrapper {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
        }
    )*};
}

forward_store!(Arc<T>, Box<T>, &T);

/// A store that a projection can write its own rows into, in the same transaction that
/// moves the projection's tracking position (exactly-once effect).
#[async_trait]
pub trait ProjectionStore: Send + Sync + 'static {
    /// An open transaction; the projection writes through it.
    type Transaction: Send;

    /// Opens a transaction.
    async fn begin(&self) -> Result<Self::Transaction>;

    /// Moves the follower to `tracking.position` inside `tx` and commits.
    ///
    /// Fails with [`crate::Error::Conflict`], committing nothing, when the stored position is
    /// already at or past `tracking.position` (another runner processed these notifications).
    async fn commit(&self, tx: Self::Transaction, tracking: &Tracking) -> Result<()>;

    /// The follower's last committed position.
    async fn position(&self, follower: &str) -> Result<Option<u64>>;
}
