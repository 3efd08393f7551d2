//! eventfold: event sourcing and CQRS for Rust services.
//!
//! This facade re-exports the core ([`eventfold_core`]: aggregates, application, mapper,
//! store traits, followers, the in-memory store) and the store backends behind features:
//! `sqlite` (default, embedded) and `postgres`. [`Config`] picks the store, the compressor,
//! the cipher and the snapshot intervals from the environment or a builder, as Python
//! `eventsourcing` does.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold::{Aggregate, Config, Root};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Account { balance: i64 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum AccountEvent { Opened, Deposited { amount: i64 } }
//!
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "Account";
//!     type Id = eventfold::uuid::Uuid;
//!     type Event = AccountEvent;
//!     fn apply(&mut self, event: &AccountEvent) {
//!         if let AccountEvent::Deposited { amount } = event { self.balance += amount; }
//!     }
//! }
//!
//! // Equivalent to EVENTFOLD_STORE=memory EVENTFOLD_COMPRESSOR=zlib EVENTFOLD_SNAPSHOT_INTERVALS=Account=10
//! let app = Config::memory().zlib().snapshot_every::<Account>(10).application().await?;
//! let mut account = Root::<Account>::new(AccountEvent::Opened);
//! account.trigger(AccountEvent::Deposited { amount: 100 });
//! app.save(&mut account).await?;
//! assert_eq!(app.repository().get::<Account>(account.id()).await?.balance, 100);
//! # Ok::<(), eventfold::Error>(())
//! # }).unwrap();
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;

pub use config::{Config, StoreConfig, StoreHandle};
pub use eventfold_core::*;

/// The `uuid` crate, for aggregate ids (`type Id = eventfold::uuid::Uuid;`) without a
/// dependency of your own.
pub use uuid;

/// The attribute that makes a trait's `async fn`s object safe, for implementing
/// [`Projection`] without a dependency of your own:
///
/// ```
/// use eventfold::{async_trait, BoxError, InMemoryStore, InMemoryTransaction};
/// use eventfold::{Notification, Projection};
///
/// /// Counts the notifications it has seen.
/// struct Counter(u64);
///
/// #[async_trait]
/// impl Projection<InMemoryStore> for Counter {
///     fn name(&self) -> &str {
///         "counter"
///     }
///
///     async fn process(
///         &mut self,
///         _tx: &mut InMemoryTransaction,
///         _notification: &Notification,
///     ) -> Result<(), BoxError> {
///         self.0 += 1;
///         Ok(())
///     }
/// }
/// ```
pub use async_trait::async_trait;

/// The README's Rust blocks, compiled as doctests so the tour stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The embedded SQLite store.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use eventfold_sqlite as sqlite;

/// The PostgreSQL store.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use eventfold_postgres as postgres;
