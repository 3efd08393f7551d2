//! The application: a repository that rebuilds aggregates from snapshots and events, and
//! saves that record pending events (and due snapshots) in one transaction.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;

use crate::domain::{Aggregate, AggregateId, Root, SnapshotBody, Timestamp};
use crate::error::{Conflict, Error, RecordKind, Result};
use crate::mapper::{JsonMapper, Mapper};
use crate::store::{Loaded, Metadata, Recording, Store, StoredEvent, StreamQuery, Transaction};

type CacheKey = (&'static str, String);

/// A bounded cache of the last saved copy of each aggregate.
///
/// It never hides a conflicting write: a cached copy that another writer has overtaken
/// either catches up on read (fast-forward, the default) or makes the next save fail with
/// [`Error::Conflict`], which evicts it.
struct AggregateCache {
    entries: Mutex<LruCache<CacheKey, Box<dyn Any + Send + Sync>>>,
    fastforward: bool,
}

impl AggregateCache {
    fn get<A: Aggregate>(&self, stream_id: &str) -> Option<Root<A>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(A::TYPE, stream_id.to_owned()))
            .and_then(|entry| entry.downcast_ref::<Root<A>>())
            .cloned()
    }

    fn put(&self, key: CacheKey, entry: Box<dyn Any + Send + Sync>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.put(key, entry);
    }

    fn evict(&self, key: &CacheKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.pop(key);
    }
}

/// Loads aggregates: the latest snapshot plus the events after it.
pub struct Repository<M: Mapper = JsonMapper> {
    store: Arc<dyn Store>,
    mapper: Arc<M>,
    cache: Option<Arc<AggregateCache>>,
}

impl<M: Mapper> Repository<M> {
    /// The aggregate as of its latest event. Takes the id or a borrowed form of it
    /// (`&str` for `String` ids).
    ///
    /// Fails with [`Error::AggregateNotFound`] if it has no events, and with
    /// [`Error::WrongAggregateType`] if the stream belongs to another aggregate type.
    #[tracing::instrument(level = "debug", name = "eventfold.get", skip_all, fields(aggregate = A::TYPE, %id))]
    pub async fn get<A: Aggregate>(
        &self,
        id: &(impl ToOwned<Owned = A::Id> + std::fmt::Display + Sync + ?Sized),
    ) -> Result<Root<A>> {
        let stream_id = id.to_string();
        if let Some(cache) = &self.cache {
            if let Some(mut root) = cache.get::<A>(&stream_id) {
                if cache.fastforward {
                    let newer = self
                        .store
                        .select_events(
                            &stream_id,
                            StreamQuery {
                                after: Some(root.version()),
                                ..StreamQuery::default()
                            },
                        )
                        .await?;
                    if !newer.is_empty() {
                        self.replay(&mut root, &newer)?;
                        cache.put((A::TYPE, stream_id), Box::new(root.clone()));
                    }
                }
                return Ok(root);
            }
        }
        let loaded = self.store.load(&stream_id, None).await?;
        let root = self.rebuild::<A>(&id.to_owned(), loaded)?;
        if let Some(cache) = &self.cache {
            cache.put((A::TYPE, stream_id), Box::new(root.clone()));
        }
        Ok(root)
    }

    /// The aggregate as it was at `version` (or at its latest version, if lower).
    pub async fn get_at<A: Aggregate>(
        &self,
        id: &(impl ToOwned<Owned = A::Id> + std::fmt::Display + Sync + ?Sized),
        version: u64,
    ) -> Result<Root<A>> {
        let loaded = self.store.load(&id.to_string(), Some(version)).await?;
        self.rebuild::<A>(&id.to_owned(), loaded)
    }

    /// The mapper, shared (for followers that decode with it).
    pub fn shared_mapper(&self) -> Arc<M> {
        self.mapper.clone()
    }

    /// Decodes a stored event of aggregate type `A` (for followers and tools).
    ///
    /// Fails with [`Error::WrongAggregateType`] when the event is not one of `A`'s.
    pub fn decode_event<A: Aggregate>(&self, event: &StoredEvent) -> Result<A::Event> {
        decode_event::<A, M>(&self.mapper, event)
    }

    fn rebuild<A: Aggregate>(&self, id: &A::Id, loaded: Loaded) -> Result<Root<A>> {
        let mut root = match loaded.snapshot {
            Some(snapshot) => {
                if snapshot.topic != A::TYPE {
                    return Err(Error::WrongAggregateType {
                        stream_id: snapshot.stream_id,
                        expected: A::TYPE,
                        found: snapshot.topic,
                    });
                }
                let body: SnapshotBody<A> = self
                    .mapper
                    .decode(&snapshot.state, A::SCHEMA_VERSION, A::upcast_state)
                    .map_err(|source| Error::Decode {
                        kind: RecordKind::Snapshot,
                        stream_id: snapshot.stream_id.clone(),
                        version: snapshot.version,
                        source,
                    })?;
                Root::from_parts(
                    id.clone(),
                    snapshot.version,
                    body.created_on,
                    body.modified_on,
                    body.state,
                )
            }
            None => Root::from_parts(
                id.clone(),
                0,
                Timestamp::default(),
                Timestamp::default(),
                A::default(),
            ),
        };
        self.replay(&mut root, &loaded.events)?;
        if root.version() == 0 {
            return Err(Error::AggregateNotFound {
                aggregate: A::TYPE,
                id: id.to_string(),
            });
        }
        Ok(root)
    }

    fn replay<A: Aggregate>(&self, root: &mut Root<A>, events: &[StoredEvent]) -> Result<()> {
        for stored in events {
            let event = self.decode_event::<A>(stored)?;
            root.replay(stored.version, stored.timestamp, &event);
        }
        Ok(())
    }
}

/// Decodes a stored event of `A`, refusing another aggregate type's event.
pub(crate) fn decode_event<A: Aggregate, M: Mapper>(
    mapper: &M,
    event: &StoredEvent,
) -> Result<A::Event> {
    let ours = event
        .topic
        .strip_prefix(A::TYPE)
        .is_some_and(|rest| rest.starts_with('.'));
    if !ours {
        return Err(Error::WrongAggregateType {
            stream_id: event.stream_id.clone(),
            expected: A::TYPE,
            found: event.topic.clone(),
        });
    }
    mapper
        .decode(&event.state, A::SCHEMA_VERSION, A::upcast_event)
        .map_err(|source| Error::Decode {
            kind: RecordKind::Event,
            stream_id: event.stream_id.clone(),
            version: event.version,
            source,
        })
}

/// Something [`Application::save_all`] can save: a [`Root`] of any aggregate type.
pub trait Saveable<M: Mapper>: Send {
    /// The aggregate type name (for the snapshot interval).
    fn aggregate_type(&self) -> &'static str;

    /// Encodes the pending events (each with `metadata`), and a snapshot if one is due,
    /// into `recording`.
    fn stage(
        &self,
        mapper: &M,
        snapshot_every: Option<u64>,
        metadata: &Metadata,
        recording: &mut Recording,
    ) -> Result<()>;

    /// Forgets the pending events once they are recorded.
    fn mark_saved(&mut self);

    /// The stream id and the version the save expects to be the latest recorded.
    fn expected(&self) -> (String, u64);

    /// A copy for the aggregate cache.
    fn cache_entry(&self) -> Box<dyn Any + Send + Sync>;
}

impl<A: Aggregate, M: Mapper> Saveable<M> for Root<A> {
    fn aggregate_type(&self) -> &'static str {
        A::TYPE
    }

    fn stage(
        &self,
        mapper: &M,
        snapshot_every: Option<u64>,
        metadata: &Metadata,
        recording: &mut Recording,
    ) -> Result<()> {
        let stream_id = self.id().to_string();
        for pending in self.pending_events() {
            let (name, state) = mapper
                .encode_event(&pending.event, A::SCHEMA_VERSION)
                .map_err(|source| Error::Encode {
                    what: format!("{} event", A::TYPE),
                    source,
                })?;
            recording.events.push(
                StoredEvent::new(
                    stream_id.clone(),
                    pending.version,
                    format!("{}.{name}", A::TYPE),
                    pending.timestamp,
                    state,
                )
                .with_metadata(metadata.clone()),
            );
        }
        let due = snapshot_every.is_some_and(|every| {
            every > 0 && self.saved_version() / every != self.version() / every
        });
        if due {
            let body = SnapshotBody {
                created_on: self.created_on(),
                modified_on: self.modified_on(),
                state: self.state(),
            };
            let state = mapper
                .encode_state(&body, A::SCHEMA_VERSION)
                .map_err(|source| Error::Encode {
                    what: format!("{} snapshot", A::TYPE),
                    source,
                })?;
            recording.snapshots.push(StoredEvent::new(
                stream_id,
                self.version(),
                A::TYPE,
                self.modified_on(),
                state,
            ));
        }
        Ok(())
    }

    fn mark_saved(&mut self) {
        Root::mark_saved(self);
    }

    fn expected(&self) -> (String, u64) {
        (self.id().to_string(), self.saved_version())
    }

    fn cache_entry(&self) -> Box<dyn Any + Send + Sync> {
        let mut copy = self.clone();
        copy.mark_saved();
        Box::new(copy)
    }
}

/// An event-sourced application: a store, a mapper, snapshot intervals and an optional
/// aggregate cache. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Application<M: Mapper = JsonMapper> {
    repository: Repository<M>,
    snapshot_intervals: HashMap<String, u64>,
}

impl Application<JsonMapper> {
    /// Starts building an application on `store`, with plain JSON, no snapshots and no cache.
    pub fn builder(store: impl Store + 'static) -> ApplicationBuilder<JsonMapper> {
        Self::builder_on(Arc::new(store))
    }

    /// Like [`Application::builder`], on a store that is already shared.
    pub fn builder_on(store: Arc<dyn Store>) -> ApplicationBuilder<JsonMapper> {
        ApplicationBuilder {
            store,
            mapper: JsonMapper::new(),
            snapshot_intervals: HashMap::new(),
            cache_capacity: None,
            cache_fastforward: true,
        }
    }
}

impl<M: Mapper> Application<M> {
    /// The repository, to load aggregates.
    pub fn repository(&self) -> &Repository<M> {
        &self.repository
    }

    /// The store: the notification log, tracking and raw streams.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.repository.store
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.repository.mapper
    }

    /// The snapshot interval for an aggregate type, if snapshots are on for it.
    pub fn snapshot_interval(&self, aggregate_type: &str) -> Option<u64> {
        self.snapshot_intervals.get(aggregate_type).copied()
    }

    /// The aggregate types that have a snapshot interval.
    pub fn snapshot_types(&self) -> impl Iterator<Item = &str> {
        self.snapshot_intervals.keys().map(String::as_str)
    }

    /// Saves one aggregate's pending events (and a due snapshot). Returns their notification ids.
    pub async fn save<A: Aggregate>(&self, root: &mut Root<A>) -> Result<Vec<u64>> {
        self.save_all_with(&mut [root as &mut dyn Saveable<M>], &Metadata::default())
            .await
    }

    /// Saves several aggregates, of any types, in one atomic transaction.
    ///
    /// On [`Error::Conflict`] nothing is written and the aggregates keep their pending
    /// events; reload them and run the command again (see [`retry_on_conflict`]).
    pub async fn save_all(&self, roots: &mut [&mut dyn Saveable<M>]) -> Result<Vec<u64>> {
        self.save_all_with(roots, &Metadata::default()).await
    }

    /// [`Application::save_all`], with `metadata` stored on every event (a correlation
    /// id, the request's headers, ...).
    #[tracing::instrument(level = "debug", name = "eventfold.save", skip_all, fields(aggregates = roots.len(), events, snapshots))]
    pub async fn save_all_with(
        &self,
        roots: &mut [&mut dyn Saveable<M>],
        metadata: &Metadata,
    ) -> Result<Vec<u64>> {
        let recording = self.prepare_with(roots, metadata)?;
        let span = tracing::Span::current();
        span.record("events", recording.events.len());
        span.record("snapshots", recording.snapshots.len());
        if recording.events.is_empty() {
            return Ok(Vec::new());
        }
        match self.repository.store.record(&recording).await {
            Ok(ids) => {
                for root in roots.iter_mut() {
                    if let Some(cache) = &self.repository.cache {
                        cache.put(cache_key(&**root), root.cache_entry());
                    }
                    root.mark_saved();
                }
                Ok(ids)
            }
            Err(err) => Err(self.failed(roots, err)),
        }
    }

    /// Opens a transaction on the application's store: save aggregates into it with
    /// [`Application::save_in`], write your own rows through it, then commit.
    pub async fn begin(&self) -> Result<Transaction> {
        self.repository.store.begin().await
    }

    /// Saves one aggregate into the caller's transaction; see [`Application::save_all_in`].
    pub async fn save_in<A: Aggregate>(
        &self,
        tx: &mut Transaction,
        root: &mut Root<A>,
    ) -> Result<Vec<u64>> {
        self.save_all_in(
            tx,
            &mut [root as &mut dyn Saveable<M>],
            &Metadata::default(),
        )
        .await
    }

    /// Records the aggregates' pending events (and due snapshots, each event with
    /// `metadata`) into `tx`, so they commit or roll back with everything else written
    /// there. Returns their notification ids.
    ///
    /// The roots are marked saved at once, so they can take further commands in the same
    /// transaction; the cache takes them only once `tx` commits. If the transaction rolls
    /// back, drop those roots and load them again: they hold versions that were never
    /// stored (a save from one fails with [`Error::Conflict`]; it cannot corrupt the stream).
    pub async fn save_all_in(
        &self,
        tx: &mut Transaction,
        roots: &mut [&mut dyn Saveable<M>],
        metadata: &Metadata,
    ) -> Result<Vec<u64>> {
        let recording = self.prepare_with(roots, metadata)?;
        if recording.events.is_empty() {
            return Ok(Vec::new());
        }
        match tx.record(&recording).await {
            Ok(ids) => {
                if let Some(cache) = &self.repository.cache {
                    let entries: Vec<_> = roots
                        .iter()
                        .map(|root| (cache_key(&**root), root.cache_entry()))
                        .collect();
                    let cache = cache.clone();
                    tx.on_commit(move || {
                        for (key, entry) in entries {
                            cache.put(key, entry);
                        }
                    });
                }
                for root in roots.iter_mut() {
                    root.mark_saved();
                }
                Ok(ids)
            }
            Err(err) => Err(self.failed(roots, err)),
        }
    }

    /// Evicts the roots of a failed save and states a conflict in their terms.
    fn failed(&self, roots: &[&mut dyn Saveable<M>], err: Error) -> Error {
        tracing::debug!(error = %err, "save failed");
        if let Some(cache) = &self.repository.cache {
            for root in roots.iter() {
                cache.evict(&cache_key(&**root));
            }
        }
        match err {
            Error::Conflict(Conflict::Streams(_)) => {
                Error::Conflict(Conflict::streams(roots.iter().map(|r| r.expected())))
            }
            other => other,
        }
    }

    /// Encodes what saving `roots` would write, without writing it (for tools and
    /// custom stores; [`Application::save_all_in`] records into a transaction).
    pub fn prepare(&self, roots: &[&mut dyn Saveable<M>]) -> Result<Recording> {
        self.prepare_with(roots, &Metadata::default())
    }

    fn prepare_with(
        &self,
        roots: &[&mut dyn Saveable<M>],
        metadata: &Metadata,
    ) -> Result<Recording> {
        let mut recording = Recording::default();
        for root in roots {
            let every = self.snapshot_intervals.get(root.aggregate_type()).copied();
            root.stage(&self.repository.mapper, every, metadata, &mut recording)?;
        }
        Ok(recording)
    }
}

fn cache_key<M: Mapper>(root: &dyn Saveable<M>) -> CacheKey {
    (root.aggregate_type(), root.expected().0)
}

/// Builds an [`Application`].
pub struct ApplicationBuilder<M: Mapper> {
    store: Arc<dyn Store>,
    mapper: M,
    snapshot_intervals: HashMap<String, u64>,
    cache_capacity: Option<NonZeroUsize>,
    cache_fastforward: bool,
}

impl<M: Mapper> ApplicationBuilder<M> {
    /// Uses another mapper (for example a [`JsonMapper`] with compression and a cipher).
    pub fn mapper<M2: Mapper>(self, mapper: M2) -> ApplicationBuilder<M2> {
        ApplicationBuilder {
            store: self.store,
            mapper,
            snapshot_intervals: self.snapshot_intervals,
            cache_capacity: self.cache_capacity,
            cache_fastforward: self.cache_fastforward,
        }
    }

    /// Takes a snapshot of `A` every `versions` versions (0 turns it off).
    pub fn snapshot_every<A: Aggregate>(self, versions: u64) -> Self {
        self.snapshot_interval(A::TYPE, versions)
    }

    /// Like [`Self::snapshot_every`], by aggregate type name (for configuration).
    pub fn snapshot_interval(mut self, aggregate_type: &str, versions: u64) -> Self {
        if versions == 0 {
            self.snapshot_intervals.remove(aggregate_type);
        } else {
            self.snapshot_intervals
                .insert(aggregate_type.to_owned(), versions);
        }
        self
    }

    /// Keeps up to `capacity` aggregates in a cache (0 turns it off).
    pub fn cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = NonZeroUsize::new(capacity);
        self
    }

    /// Whether a cache hit first reads events newer than the cached copy (default: yes).
    ///
    /// Turning it off saves that read when this application is the only writer; with other
    /// writers, a stale copy still cannot overwrite their events: its save fails with a
    /// conflict and is evicted.
    pub fn cache_fastforward(mut self, fastforward: bool) -> Self {
        self.cache_fastforward = fastforward;
        self
    }

    /// Builds the application.
    pub fn build(self) -> Application<M> {
        Application {
            repository: Repository {
                store: self.store,
                mapper: Arc::new(self.mapper),
                cache: self.cache_capacity.map(|capacity| {
                    Arc::new(AggregateCache {
                        entries: Mutex::new(LruCache::new(capacity)),
                        fastforward: self.cache_fastforward,
                    })
                }),
            },
            snapshot_intervals: self.snapshot_intervals,
        }
    }
}

/// An error that may be a lost optimistic-concurrency race, so that
/// [`retry_on_conflict`] can retry commands that fail with the caller's own error type.
pub trait MaybeConflict {
    /// True when retrying the command may succeed because it lost a race.
    fn is_conflict(&self) -> bool;
}

impl MaybeConflict for Error {
    fn is_conflict(&self) -> bool {
        Error::is_conflict(self)
    }
}

/// Runs `command` again when it fails with a conflict, up to `attempts` times in all,
/// with a short growing pause between tries. `command` must reload what it changes.
///
/// The command may fail with its own error type (a domain error such as "insufficient
/// funds" beside the store's errors): implement [`MaybeConflict`] for it.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use eventfold_core::{Conflict, Error, MaybeConflict};
///
/// #[derive(Debug)]
/// enum BankError { InsufficientFunds, Store(Error) }
/// impl MaybeConflict for BankError {
///     fn is_conflict(&self) -> bool {
///         matches!(self, BankError::Store(e) if e.is_conflict())
///     }
/// }
///
/// let mut tries = 0;
/// let result = eventfold_core::retry_on_conflict(3, || {
///     tries += 1;
///     let attempt = tries;
///     async move {
///         match attempt {
///             1 => Err(BankError::Store(Error::Conflict(Conflict::streams([("acct-1".to_owned(), 3)])))),
///             _ => Err(BankError::InsufficientFunds),
///         }
///     }
/// })
/// .await;
/// assert!(matches!(result, Err(BankError::InsufficientFunds)));
/// assert_eq!(tries, 2);
/// # });
/// ```
pub async fn retry_on_conflict<T, E, F, Fut>(attempts: u32, mut command: F) -> Result<T, E>
where
    E: MaybeConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match command().await {
            Err(err) if err.is_conflict() && attempt < attempts => {
                // Writers that collided would collide again if they retried in lockstep.
                let base = 1u64 << attempt.min(6);
                let jitter = Timestamp::now().as_micros().unsigned_abs() % base.max(1) * 100;
                tokio::time::sleep(Duration::from_micros(base * 500 + jitter)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl<A: Aggregate> Root<A> {
    /// Parses a stream id as this aggregate's id type.
    pub fn parse_id(stream_id: &str) -> Option<A::Id> {
        A::Id::parse_id(stream_id)
    }
}
