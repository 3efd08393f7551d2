//! Aggregates: state that is a fold of its events, and the root that carries identity,
//! version, timestamps and the events not yet saved.

use std::fmt;
use std::hash::Hash;
use std::ops::Deref;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(chrono::Utc::now().timestamp_micros())
    }

    /// From microseconds since the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// As a chrono date-time in UTC.
    pub fn to_datetime(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            self.to_datetime()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }
}

/// An aggregate id: it has a text form (the stream id) and can be parsed back from it.
///
/// Implemented for [`uuid::Uuid`] (the default, ids generated on creation) and [`String`]
/// (natural keys chosen by the caller).
pub trait AggregateId:
    Clone + Eq + Hash + fmt::Display + fmt::Debug + Send + Sync + 'static
{
    /// Parses the text form written by `Display`; `None` if it is not a valid id.
    fn parse_id(text: &str) -> Option<Self>;
}

/// An id type that can make a fresh unique id, so [`Root::new`] can create aggregates.
pub trait GenerateId: AggregateId {
    /// A new, unique id.
    fn generate() -> Self;
}

impl AggregateId for uuid::Uuid {
    fn parse_id(text: &str) -> Option<Self> {
        uuid::Uuid::parse_str(text).ok()
    }
}

impl GenerateId for uuid::Uuid {
    fn generate() -> Self {
        uuid::Uuid::new_v4()
    }
}

impl AggregateId for String {
    fn parse_id(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
}

/// The state of an aggregate type and the events that change it.
///
/// The state starts as `Default` and every event, including the one that creates the
/// aggregate, is folded in by [`Aggregate::apply`]. Events use serde's default (externally
/// tagged) enum representation: the variant name becomes the event's topic,
/// `"<TYPE>.<Variant>"`.
///
/// ```
/// use eventfold_core::Aggregate;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Default, Serialize, Deserialize)]
/// struct Dog { tricks: Vec<String> }
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// enum DogEvent { Registered, TrickAdded { trick: String } }
///
/// impl Aggregate for Dog {
///     const TYPE: &'static str = "Dog";
///     type Id = uuid::Uuid;
///     type Event = DogEvent;
///     fn apply(&mut self, event: &DogEvent) {
///         if let DogEvent::TrickAdded { trick } = event {
///             self.tricks.push(trick.clone());
///         }
///     }
/// }
/// ```
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate type's name, used in topics, snapshot intervals and messages.
    const TYPE: &'static str;

    /// The schema version of this aggregate's events and state. Raise it when a stored
    /// shape changes and teach [`Aggregate::upcast_event`] / [`Aggregate::upcast_state`]
    /// how to bring old records forward.
    const SCHEMA_VERSION: u32 = 1;

    /// The id type: [`uuid::Uuid`] or [`String`] (or your own [`AggregateId`]).
    type Id: AggregateId;

    /// The events of this aggregate.
    type Event: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static;

    /// Folds one event into the state. Must not fail: decisions belong in commands, which
    /// check first and then trigger events.
    fn apply(&mut self, event: &Self::Event);

    /// Rewrites a stored event of schema version `from` (JSON, in the serde representation
    /// of that version) one step towards [`Aggregate::SCHEMA_VERSION`]. Called once per
    /// missing step, so `from + 1` is the target.
    fn upcast_event(from: u32, event: &mut serde_json::Value) -> Result<(), String> {
        let _ = event;
        Err(format!(
            "{} has no upcast for events of schema version {from}",
            Self::TYPE
        ))
    }

    /// Like [`Aggregate::upcast_event`], for the state stored in snapshots.
    fn upcast_state(from: u32, state: &mut serde_json::Value) -> Result<(), String> {
        let _ = state;
        Err(format!(
            "{} has no upcast for snapshots of schema version {from}",
            Self::TYPE
        ))
    }
}

/// An event triggered on a root and not saved yet.
#[derive(Debug, Clone)]
pub struct PendingEvent<E> {
    /// The root's version once this event is applied.
    pub version: u64,
    /// When it was triggered.
    pub timestamp: Timestamp,
    /// The event.
    pub event: E,
}

/// An aggregate instance: its id, version, timestamps, state, and the events triggered on it
/// since it was loaded or last saved.
///
/// Dereferences to the state, so `world.history` reads the `World` state directly.
#[derive(Debug, Clone)]
pub struct Root<A: Aggregate> {
    id: A::Id,
    version: u64,
    created_on: Timestamp,
    modified_on: Timestamp,
    state: A,
    pending: Vec<PendingEvent<A::Event>>,
}

impl<A: Aggregate> Root<A>
where
    A::Id: GenerateId,
{
    /// Creates an aggregate with a fresh id, from its creation event.
    pub fn new(created: A::Event) -> Self {
        Self::with_id(A::Id::generate(), created)
    }
}

impl<A: Aggregate> Root<A> {
    /// Creates an aggregate with the given id, from its creation event.
    ///
    /// Saving it fails with a conflict if that id already has events.
    pub fn with_id(id: A::Id, created: A::Event) -> Self {
        let now = Timestamp::now();
        let mut root = Root {
            id,
            version: 0,
            created_on: now,
            modified_on: now,
            state: A::default(),
            pending: Vec::new(),
        };
        root.trigger(created);
        // Replay takes created_on from the first event, so it must be that event's time.
        root.created_on = root.modified_on;
        root
    }

    /// Rebuilds a root from stored parts (used by the repository).
    pub(crate) fn from_parts(
        id: A::Id,
        version: u64,
        created_on: Timestamp,
        modified_on: Timestamp,
        state: A,
    ) -> Self {
        Root {
            id,
            version,
            created_on,
            modified_on,
            state,
            pending: Vec::new(),
        }
    }

    /// Applies a loaded event and advances the version, without making it pending.
    pub(crate) fn replay(&mut self, version: u64, timestamp: Timestamp, event: &A::Event) {
        self.state.apply(event);
        self.version = version;
        if version == 1 {
            self.created_on = timestamp;
        }
        self.modified_on = timestamp;
    }

    /// Applies `event` to the state once and keeps it pending until the next save.
    pub fn trigger(&mut self, event: A::Event) {
        let timestamp = Timestamp::now().max(self.modified_on);
        self.state.apply(&event);
        self.version += 1;
        self.modified_on = timestamp;
        self.pending.push(PendingEvent {
            version: self.version,
            timestamp,
            event,
        });
    }

    /// The aggregate's id.
    pub fn id(&self) -> &A::Id {
        &self.id
    }

    /// The version: the number of events applied, saved or pending.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version last saved (or loaded).
    pub fn saved_version(&self) -> u64 {
        self.version - self.pending.len() as u64
    }

    /// When the first event happened.
    pub fn created_on(&self) -> Timestamp {
        self.created_on
    }

    /// When the last event happened.
    pub fn modified_on(&self) -> Timestamp {
        self.modified_on
    }

    /// The current state, with pending events applied.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Events triggered since the last save.
    pub fn pending_events(&self) -> &[PendingEvent<A::Event>] {
        &self.pending
    }

    /// Forgets pending events after they were recorded.
    pub fn mark_saved(&mut self) {
        self.pending.clear();
    }
}

impl<A: Aggregate> Deref for Root<A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.state
    }
}

/// What a snapshot stores besides the version: the timestamps and the state.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotBody<S> {
    pub(crate) created_on: Timestamp,
    pub(crate) modified_on: Timestamp,
    pub(crate) state: S,
}
