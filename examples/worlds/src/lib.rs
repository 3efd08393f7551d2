//! The Worlds scenario from the Python `eventsourcing` README, on eventfold.
//!
//! A `World` has a `history`; the command `make_it_so(what)` triggers `SomethingHappened`.
//! The `Worlds` application creates worlds, runs commands and reads histories; with
//! snapshots every 5 versions and zlib compression it is also the benchmark workload
//! (`eventfold bench worlds`).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold_core::{Application, InMemoryStore, JsonMapper, Zlib};
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
//! # Ok::<(), eventfold_core::Error>(())
//! # }).unwrap();
//! ```

use eventfold_core::{Aggregate, Application, JsonMapper, Mapper, Result, Root};
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
