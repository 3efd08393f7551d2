//! The Worlds scenario from the Python `eventsourcing` README, on eventfold.
//!
//! A `World` has a `history`; the command `make_it_so(what)` triggers `SomethingHappened`.
//! The `Worlds` application creates worlds, runs commands and reads histories; with
//! snapshots every 5 versions and zlib compression it is also the benchmark workload
//! (`eventfold bench worlds`).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold::{Application, InMemoryStore, JsonMapper, Zlib};
//! use worlds_example::{World, Worlds};
//!
//! let app = Application::builder(InMemoryStore::new())
//!     .mapper(JsonMapper::new().with_compressor(Zlib::default()))
//!     .snapshot_every::<World>(5)
//!     .build();
//! let worlds = Worlds::new(app);
//! let id = worlds.create_world().await?;
//! for what in ["dinosaurs", "trucks", "internet", "covid"] {
//!     worlds.make_it_so(id, what).await?;
//! }
//! assert_eq!(worlds.get_world_history(id).await?, ["dinosaurs", "trucks", "internet", "covid"]);
//! # Ok::<(), eventfold::Error>(())
//! # }).unwrap();
//! ```

use async_trait::async_trait;
use eventfold::{
    Aggregate, Application, BoxError, Envelope, Handles, JsonMapper, Mapper, Result, Root, Store,
    Subscriptions, Transaction, View,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A world and everything that happened in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct World {
    /// What happened, in order.
    pub history: Vec<String>,
}

/// The events of a [`World`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorldEvent {
    /// The world came to be.
    Created,
    /// Something happened.
    SomethingHappened {
        /// What it was.
        what: String,
    },
}

impl Aggregate for World {
    const TYPE: &'static str = "World";
    type Id = Uuid;
    type Event = WorldEvent;

    fn apply(&mut self, event: &WorldEvent) {
        match event {
            WorldEvent::Created => {}
            WorldEvent::SomethingHappened { what } => self.history.push(what.clone()),
        }
    }
}

impl World {
    /// The command: decides what happens (here, always something).
    pub fn make_it_so(&self, what: &str) -> WorldEvent {
        WorldEvent::SomethingHappened {
            what: what.to_owned(),
        }
    }
}

/// The application: creates worlds, runs commands, reads histories.
pub struct Worlds<M: Mapper = JsonMapper> {
    app: Application<M>,
}

impl<M: Mapper> Worlds<M> {
    /// Wraps a configured application (store, mapper, snapshot interval).
    pub fn new(app: Application<M>) -> Self {
        Worlds { app }
    }

    /// The underlying application (repository, store, notification log).
    pub fn app(&self) -> &Application<M> {
        &self.app
    }

    /// Creates a world; returns its id.
    pub async fn create_world(&self) -> Result<Uuid> {
        let mut world = Root::<World>::new(WorldEvent::Created);
        self.app.save(&mut world).await?;
        Ok(*world.id())
    }

    /// Loads the world, makes `what` happen, saves.
    pub async fn make_it_so(&self, id: Uuid, what: &str) -> Result<()> {
        let mut world = self.app.repository().get::<World>(&id).await?;
        world.trigger(world.make_it_so(what));
        self.app.save(&mut world).await?;
        Ok(())
    }

    /// Everything that happened in the world.
    pub async fn get_world_history(&self, id: Uuid) -> Result<Vec<String>> {
        Ok(self
            .app
            .repository()
            .get::<World>(&id)
            .await?
            .state()
            .history
            .clone())
    }
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS world_event_counts \
    (world_id TEXT PRIMARY KEY, events BIGINT NOT NULL)";

/// A view into the table `world_event_counts(world_id, events)`: how many events each
/// world has. Its SQL is portable, so the same code runs on SQLite and PostgreSQL. Its
/// rows commit with its tracked position, so every event is counted exactly once, across
/// restarts.
///
/// Run it with `Follower::view(worlds.app(), EventsPerWorld::NAME, EventsPerWorld)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventsPerWorld;

impl EventsPerWorld {
    /// The view's follower name, which keys its tracked position.
    pub const NAME: &'static str = "events-per-world";

    /// Events counted for `world` so far (0 if none, also if the view never ran).
    pub async fn count(store: &dyn Store, world: Uuid) -> Result<u64> {
        // Read inside a transaction that is then rolled back: the table is created for
        // the read if the view never ran, and left as it was.
        let mut tx = store.begin().await?;
        tx.execute(CREATE_TABLE, &[]).await?;
        let rows = tx
            .query(
                "SELECT events FROM world_event_counts WHERE world_id = $1",
                &[world.to_string().into()],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .first()
            .and_then(|row| row.first())
            .and_then(|events| events.as_i64())
            .map_or(0, |n| n as u64))
    }
}

#[async_trait]
impl View for EventsPerWorld {
    fn subscribe(to: &mut Subscriptions<Self>) {
        to.aggregate::<World>();
    }

    async fn setup(&mut self, tx: &mut Transaction) -> std::result::Result<(), BoxError> {
        tx.execute(CREATE_TABLE, &[]).await?;
        Ok(())
    }
}

#[async_trait]
impl Handles<World> for EventsPerWorld {
    async fn handle(
        &mut self,
        tx: &mut Transaction,
        event: Envelope<World>,
    ) -> std::result::Result<(), BoxError> {
        tx.execute(
            "INSERT INTO world_event_counts (world_id, events) VALUES ($1, 1) \
             ON CONFLICT (world_id) DO UPDATE SET events = world_event_counts.events + 1",
            &[event.id.to_string().into()],
        )
        .await?;
        Ok(())
    }
}
