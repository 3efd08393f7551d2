//! The in-memory store: the full contract without a database, for tests and for
//! applications whose state may vanish with the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::error::{Conflict, Error, Result};
use crate::store::{
    EventReader, EventWriter, Loaded, Notification, NotificationQuery, NotificationReader,
    ProjectionStore, Recording, Store, StoredEvent, StreamQuery, Tracking, TrackingReader,
};

#[derive(Default)]
struct Stream {
    /// Indices into `Inner::log`, by version - 1.
    events: Vec<usize>,
    snapshots: BTreeMap<u64, StoredEvent>,
}

#[derive(Default)]
struct Inner {
    /// The notification log; notification id = index + 1.
    log: Vec<StoredEvent>,
    streams: HashMap<String, Stream>,
    tracking: HashMap<String, u64>,
}

/// Keeps everything in process memory. Cheap to clone: clones share the same data.
#[derive(Clone, Default)]
pub struct InMemoryStore {
    inner: Arc<Mutex<Inner>>,
    wakeups: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore").finish_non_exhaustive()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied recording: `record`
        // validates everything before it mutates, so the data stays consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn check_tracking(tracking: &HashMap<String, u64>, new: &Tracking) -> Result<()> {
    match tracking.get(&new.follower) {
        Some(&current) if current >= new.position => Err(Error::Conflict(Conflict::new(vec![(
            format!("tracking:{}", new.follower),
            current,
        )]))),
        _ => Ok(()),
    }
}

#[async_trait]
impl EventReader for InMemoryStore {
    async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        let versions = stream
            .events
            .iter()
            .enumerate()
            .map(|(i, &idx)| (i as u64 + 1, idx));
        Ok(query
            .select(versions)
            .into_iter()
            .map(|idx| inner.log[idx].clone())
            .collect())
    }

    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        Ok(query
            .select(stream.snapshots.iter().map(|(&v, s)| (v, s)))
            .into_iter()
            .cloned()
            .collect())
    }

    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(stream_id) else {
            return Ok(Loaded::default());
        };
        let snapshot = match up_to {
            Some(v) => stream.snapshots.range(..=v).next_back(),
            None => stream.snapshots.iter().next_back(),
        }
        .map(|(_, s)| s.clone());
        let from = snapshot.as_ref().map_or(0, |s| s.version) as usize;
        let to = up_to.map_or(stream.events.len(), |v| {
            (v as usize).min(stream.events.len())
        });
        let events = stream.events[from.min(to)..to]
            .iter()
            .map(|&idx| inner.log[idx].clone())
            .collect();
        Ok(Loaded { snapshot, events })
    }
}

#[async_trait]
impl EventWriter for InMemoryStore {
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
        let mut inner = self.lock();
        // Validate the whole recording before changing anything, so it is all or nothing.
        let mut next_version: HashMap<&str, u64> = HashMap::new();
        for event in &recording.events {
            let expected = next_version.entry(&event.stream_id).or_insert_with(|| {
                inner
                    .streams
                    .get(&event.stream_id)
                    .map_or(0, |s| s.events.len() as u64)
                    + 1
            });
            if event.version != *expected {
                let first = recording
                    .events
                    .iter()
                    .filter(|e| e.stream_id == event.stream_id)
                    .map(|e| e.version)
                    .min()
                    .unwrap_or(event.version);
                return Err(Error::Conflict(Conflict::new(vec![(
                    event.stream_id.clone(),
                    first.saturating_sub(1),
                )])));
            }
            *expected += 1;
        }
        if let Some(tracking) = &recording.tracking {
            check_tracking(&inner.tracking, tracking)?;
        }
        let mut ids = Vec::with_capacity(recording.events.len());
        for event in &recording.events {
            let idx = inner.log.len();
            inner.log.push(event.clone());
            // Most recordings extend an existing stream: avoid cloning its id for the lookup.
            match inner.streams.get_mut(&event.stream_id) {
                Some(stream) => stream.events.push(idx),
                None => {
                    let mut stream = Stream::default();
                    stream.events.push(idx);
                    inner.streams.insert(event.stream_id.clone(), stream);
                }
            }
            ids.push(idx as u64 + 1);
        }
        for snapshot in &recording.snapshots {
            inner
                .streams
                .entry(snapshot.stream_id.clone())
                .or_default()
                .snapshots
                .entry(snapshot.version)
                .or_insert_with(|| snapshot.clone());
        }
        if let Some(tracking) = &recording.tracking {
            inner
                .tracking
                .insert(tracking.follower.clone(), tracking.position);
        }
        drop(inner);
        if !ids.is_empty() {
            self.wakeups.notify_waiters();
        }
        Ok(ids)
    }
}

#[async_trait]
impl NotificationReader for InMemoryStore {
    async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>> {
        let inner = self.lock();
        let start = (query.after as usize).min(inner.log.len());
        Ok(inner.log[start..]
            .iter()
            .enumerate()
            .filter(|(_, e)| query.topics.is_empty() || query.topics.contains(&e.topic))
            .take(query.limit)
            .map(|(i, e)| Notification {
                id: (start + i) as u64 + 1,
                event: e.clone(),
            })
            .collect())
    }

    async fn max_notification_id(&self) -> Result<u64> {
        Ok(self.lock().log.len() as u64)
    }

    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.wakeups.clone())
    }
}

#[async_trait]
impl TrackingReader for InMemoryStore {
    async fn tracking_position(&self, follower: &str) -> Result<Option<u64>> {
        Ok(self.lock().tracking.get(follower).copied())
    }
}

impl Store for InMemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// Projections over the in-memory store keep their own state in memory; the transaction
/// only carries the position forward.
#[derive(Debug, Default)]
pub struct InMemoryTransaction {
    _private: (),
}

#[async_trait]
impl ProjectionStore for InMemoryStore {
    type Transaction = InMemoryTransaction;

    async fn begin(&self) -> Result<InMemoryTransaction> {
        Ok(InMemoryTransaction::default())
    }

    async fn commit(&self, _tx: InMemoryTransaction, tracking: &Tracking) -> Result<()> {
        let mut inner = self.lock();
        check_tracking(&inner.tracking, tracking)?;
        inner
            .tracking
            .insert(tracking.follower.clone(), tracking.position);
        Ok(())
    }

    async fn position(&self, follower: &str) -> Result<Option<u64>> {
        self.tracking_position(follower).await
    }
}
