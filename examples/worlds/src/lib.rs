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
use eventfold::sqlite::{SqliteStore, SqliteTransaction};
use eventfold::{
    Aggregate, Application, BoxError, JsonMapper, Mapper, Notification, Projection, Result, Root,
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
    (world_id TEXT PRIMARY KEY, events INTEGER NOT NULL)";

/// A projection into the SQLite table `world_event_counts(world_id, events)`: how many
/// events each world has. Its rows commit with its tracked position, so every event is
/// counted exactly once, across restarts.
#[derive(Debug, Default)]
pub struct EventsPerWorld {
    table_ready: bool,
}

impl EventsPerWorld {
    /// The projection's name, which keys its tracked position.
    pub const NAME: &'static str = "events-per-world";

    /// Events counted for `world` so far (0 if none).
    pub async fn count(store: &SqliteStore, world: uuid::Uuid) -> Result<u64> {
        use eventfold::ProjectionStore;
        // Read inside a transaction that is then dropped, i.e. rolled back: the table is
        // created for the read if the projection never ran, and left as it was.
        let tx = store.begin().await?;
        tx.execute(CREATE_TABLE, [])
            .map_err(|e| eventfold::Error::backend("sqlite", e))?;
        let count = tx
            .connection()
            .query_row(
                "SELECT events FROM world_event_counts WHERE world_id = ?1",
                [world.to_string()],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .or_else(|e| match e {
                eventfold::sqlite::rusqlite::Error::QueryReturnedNoRows => Ok(0),
                other => Err(eventfold::Error::backend("sqlite", other)),
            })?;
        Ok(count)
    }
}

#[async_trait]
impl Projection<SqliteStore> for EventsPerWorld {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn topics(&self) -> Vec<String> {
        vec!["World.Created".into(), "World.SomethingHappened".into()]
    }

    async fn process(
        &mut self,
        tx: &mut SqliteTransaction,
        notification: &Notification,
    ) -> std::result::Result<(), BoxError> {
        if !self.table_ready {
            tx.execute(CREATE_TABLE, [])?;
            self.table_ready = true;
        }
        tx.execute(
            "INSERT INTO world_event_counts (world_id, events) VALUES (?1, 1) \
             ON CONFLICT (world_id) DO UPDATE SET events = events + 1",
            [&notification.event.stream_id],
        )?;
        Ok(())
    }
}
