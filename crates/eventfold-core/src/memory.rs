//! The in-memory store: the full contract without a database, for tests and for
//! applications whose state may vanish with the process.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Conflict, Error, Result};
use crate::store::{
    EventReader, EventWriter, Loaded, Notification, NotificationQuery, NotificationReader,
    Recording, Store, StoreTransaction, StoredEvent, StreamQuery, Tracking, TrackingReader,
    Transaction,
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
///
/// Writers take turns, as on SQLite: a [`Transaction`] holds the turn from `begin` until
/// it commits or drops, and stages its writes, which apply only at the commit. So do not
/// save through the store (outside the transaction) while holding one: that waits for it.
#[derive(Clone, Default)]
pub struct InMemoryStore {
    inner: Arc<Mutex<Inner>>,
    writer: Arc<tokio::sync::Mutex<()>>,
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
        // A panic while holding the lock cannot leave a half-applied recording: writes are
        // validated into a `Staged` first and applied without a fallible step.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes validated against the store plus what is staged before them, not applied yet.
#[derive(Default)]
struct Staged {
    /// Events with their final versions (appends resolved), in log order.
    events: Vec<StoredEvent>,
    snapshots: Vec<StoredEvent>,
    tracking: HashMap<String, u64>,
}

impl Staged {
    fn latest_version(&self, inner: &Inner, stream_id: &str) -> u64 {
        let stored = inner.streams.get(stream_id).map_or(0, |s| s.events.len()) as u64;
        let staged = self
            .events
            .iter()
            .filter(|e| e.stream_id == stream_id)
            .count() as u64;
        stored + staged
    }

    /// Validates `recording` against the store and the writes staged so far. Returns the
    /// versions its appends get, in order.
    fn check(&self, inner: &Inner, recording: &Recording) -> Result<Vec<u64>> {
        let mut next: HashMap<&str, u64> = HashMap::new();
        for event in &recording.events {
            let expected = next
                .entry(&event.stream_id)
                .or_insert_with(|| self.latest_version(inner, &event.stream_id) + 1);
            if event.version != *expected {
                let first = recording
                    .events
                    .iter()
                    .filter(|e| e.stream_id == event.stream_id)
                    .map(|e| e.version)
                    .min()
                    .unwrap_or(event.version);
                return Err(Error::Conflict(Conflict::streams([(
                    event.stream_id.clone(),
                    first.saturating_sub(1),
                )])));
            }
            *expected += 1;
        }
        if let Some(tracking) = &recording.tracking {
            let current = self
                .tracking
                .get(&tracking.follower)
                .or_else(|| inner.tracking.get(&tracking.follower));
            if let Some(&current) = current {
                if current >= tracking.position {
                    return Err(Error::Conflict(Conflict::tracking(
                        tracking.follower.clone(),
                        tracking.position,
                        current,
                    )));
                }
            }
        }
        Ok(recording
            .appends
            .iter()
            .map(|append| {
                let version = next
                    .entry(&append.stream_id)
                    .or_insert_with(|| self.latest_version(inner, &append.stream_id) + 1);
                *version += 1;
                *version - 1
            })
            .collect())
    }

    /// Validates `recording` and stages it. Returns its notification ids. On error
    /// nothing of it is staged.
    fn stage(&mut self, inner: &Inner, recording: &Recording) -> Result<Vec<u64>> {
        let versions = self.check(inner, recording)?;
        let first_id = inner.log.len() + self.events.len() + 1;
        self.events.extend(recording.events.iter().cloned());
        self.events.extend(
            recording
                .appends
                .iter()
                .zip(versions)
                .map(|(append, version)| {
                    let mut event = append.clone();
                    event.version = version;
                    event
                }),
        );
        self.snapshots.extend(recording.snapshots.iter().cloned());
        if let Some(tracking) = &recording.tracking {
            self.tracking
                .insert(tracking.follower.clone(), tracking.position);
        }
        Ok(ids_from(first_id, recording))
    }

    fn apply(self, inner: &mut Inner) {
        for event in self.events {
            inner.push_event(event);
        }
        for snapshot in self.snapshots {
            inner.push_snapshot(snapshot);
        }
        inner.tracking.extend(self.tracking);
    }
}

fn ids_from(first_id: usize, recording: &Recording) -> Vec<u64> {
    (first_id..first_id + recording.notification_count())
        .map(|id| id as u64)
        .collect()
}

impl Inner {
    /// Validates and applies `recording` at once (a write outside a transaction), without
    /// staging copies first.
    fn record(&mut self, recording: &Recording) -> Result<Vec<u64>> {
        let versions = Staged::default().check(self, recording)?;
        let first_id = self.log.len() + 1;
        for event in &recording.events {
            self.push_event(event.clone());
        }
        for (append, version) in recording.appends.iter().zip(versions) {
            let mut event = append.clone();
            event.version = version;
            self.push_event(event);
        }
        for snapshot in &recording.snapshots {
            self.push_snapshot(snapshot.clone());
        }
        if let Some(tracking) = &recording.tracking {
            self.tracking
                .insert(tracking.follower.clone(), tracking.position);
        }
        Ok(ids_from(first_id, recording))
    }

    fn push_event(&mut self, event: StoredEvent) {
        let idx = self.log.len();
        // Most writes extend an existing stream: avoid cloning its id for the lookup.
        match self.streams.get_mut(&event.stream_id) {
            Some(stream) => stream.events.push(idx),
            None => {
                let mut stream = Stream::default();
                stream.events.push(idx);
                self.streams.insert(event.stream_id.clone(), stream);
            }
        }
        self.log.push(event);
    }

    fn push_snapshot(&mut self, snapshot: StoredEvent) {
        self.streams
            .entry(snapshot.stream_id.clone())
            .or_default()
            .snapshots
            .entry(snapshot.version)
            .or_insert(snapshot);
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
        let _turn = self.writer.lock().await;
        let ids = self.lock().record(recording)?;
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
        let end = query
            .before
            .map_or(inner.log.len(), |b| {
                (b.saturating_sub(1) as usize).min(inner.log.len())
            })
            .max(start);
        let in_range = inner.log[start..end]
            .iter()
            .enumerate()
            .map(|(i, e)| ((start + i) as u64 + 1, e))
            .filter(|(id, e)| query.admits(*id, &e.topic));
        let notify = |(id, e): (u64, &StoredEvent)| Notification::new(id, e.clone());
        Ok(if query.descending {
            in_range.rev().take(query.limit).map(notify).collect()
        } else {
            in_range.take(query.limit).map(notify).collect()
        })
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

    async fn followers(&self) -> Result<Vec<Tracking>> {
        let mut followers: Vec<Tracking> = self
            .lock()
            .tracking
            .iter()
            .map(|(name, &position)| Tracking::new(name.clone(), position))
            .collect();
        followers.sort_by(|a, b| a.follower.cmp(&b.follower));
        Ok(followers)
    }
}

#[async_trait]
impl Store for InMemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    /// Takes the writers' turn (waiting for a transaction or a write in progress).
    async fn begin(&self) -> Result<Transaction> {
        let turn = self.writer.clone().lock_owned().await;
        Ok(Transaction::new(InMemoryTransaction {
            store: self.clone(),
            _turn: turn,
            staged: Staged::default(),
        }))
    }
}

/// A transaction on the [`InMemoryStore`]: its writes are staged, validated as they come,
/// and applied all at once at the commit; a rollback (or a drop) discards them. The
/// caller's own in-memory state goes in as [`Transaction::on_commit`] effects.
pub struct InMemoryTransaction {
    store: InMemoryStore,
    _turn: OwnedMutexGuard<()>,
    staged: Staged,
}

impl std::fmt::Debug for InMemoryTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryTransaction")
            .field("staged_events", &self.staged.events.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StoreTransaction for InMemoryTransaction {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn record(&mut self, recording: &Recording) -> Result<Vec<u64>> {
        // `stage` validates everything before it stages anything.
        self.staged.stage(&self.store.lock(), recording)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let InMemoryTransaction {
            store,
            _turn,
            staged,
        } = *self;
        let recorded = !staged.events.is_empty();
        staged.apply(&mut store.lock());
        drop(_turn);
        if recorded {
            store.wakeups.notify_waiters();
        }
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
