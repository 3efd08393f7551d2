//! The core of eventfold: event-sourced aggregates, the application and its repository,
//! the mapper (serde JSON, zlib, AES-GCM), the store traits, followers, and the in-memory
//! store.
//!
//! **Architecture invariant:** this crate knows nothing of SQL, AMQP or any wire format.
//! Stores implement [`EventReader`], [`EventWriter`], [`NotificationReader`] and
//! [`TrackingReader`] (together, [`Store`]) in their own crates; most users depend on the
//! `eventfold` facade, which re-exports this crate and the backends.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold_core::{Aggregate, Application, InMemoryStore, Root};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Counter { value: i64 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum CounterEvent { Opened, Added { amount: i64 } }
//!
//! impl Aggregate for Counter {
//!     const TYPE: &'static str = "Counter";
//!     type Id = uuid::Uuid;
//!     type Event = CounterEvent;
//!     fn apply(&mut self, event: &CounterEvent) {
//!         if let CounterEvent::Added { amount } = event { self.value += amount; }
//!     }
//! }
//!
//! let app = Application::builder(InMemoryStore::new()).snapshot_every::<Counter>(5).build();
//! let mut counter = Root::<Counter>::new(CounterEvent::Opened);
//! counter.trigger(CounterEvent::Added { amount: 2 });
//! app.save(&mut counter).await?;
//!
//! let loaded = app.repository().get::<Counter>(counter.id()).await?;
//! assert_eq!(loaded.value, 2);
//! assert_eq!(loaded.version(), 2);
//! # Ok::<(), eventfold_core::Error>(())
//! # }).unwrap();
//! ```

mod application;
mod domain;
mod error;
mod follower;
mod mapper;
mod memory;
mod store;
mod switch;
mod variant;

pub use application::{
    retry_on_conflict, Application, ApplicationBuilder, MaybeConflict, Repository, Saveable,
};
pub use async_trait::async_trait;
pub use domain::{Aggregate, AggregateId, GenerateId, PendingEvent, Root, Timestamp};
pub use error::{BoxError, CodecError, Conflict, Error, ExpectedVersion, RecordKind, Result};
pub use follower::{
    Envelope, Follower, FollowerBuilder, Handles, Projection, Subscriptions, View, ViewProjection,
};
pub use mapper::{AesGcmCipher, Cipher, Compressor, JsonMapper, Mapper, Upcast, Zlib};
pub use memory::{InMemoryStore, InMemoryTransaction};
pub use store::{
    error_chain, EventReader, EventWriter, Loaded, Metadata, Notification, NotificationQuery,
    NotificationReader, Recording, SqlRow, SqlValue, Store, StoreTransaction, StoredEvent,
    StreamQuery, Tracking, TrackingReader, Transaction,
};
pub use switch::{OffGuard, OffSwitch};
pub use uuid;
