//! eventfold: event sourcing and CQRS for Rust services.
//!
//! This facade re-exports the core ([`eventfold_core`]: aggregates, application, mapper,
//! store traits, transactions, followers and views, the in-memory store) and the store
//! backends behind features: `sqlite` (default, embedded) and `postgres`. [`Config`] picks
//! the store, the compressor, the cipher and the snapshot intervals from the environment or
//! a builder, as Python `eventsourcing` does.
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
//!
//! # Transactions
//!
//! Every store opens a [`Transaction`] ([`Application::begin`]): your own rows, events
//! ([`Application::save_in`], [`Application::save_all_in`]), snapshots and follower
//! positions commit or roll back together. Write your rows with portable SQL
//! ([`Transaction::execute`] and [`Transaction::query`], `$1`-style placeholders, the same
//! text on SQLite and PostgreSQL), or through the driver:
//!
//! - SQLite: `eventfold::sqlite::SqliteTransactionExt`: `tx.sqlite()?` is the
//!   `rusqlite::Connection` inside the transaction;
//! - PostgreSQL: `eventfold::postgres::PostgresTransactionExt`: `tx.postgres()?` is the
//!   `sqlx` connection inside the transaction (feature `postgres`).
//!
//! # Read models on any store
//!
//! A [`View`] (or a raw [`Projection`]) writes through the follower's [`Transaction`], so
//! one implementation runs on whichever store the configuration chose: no `match` on the
//! backend, no second implementation. Its rows commit with its position, so each event
//! counts exactly once, across restarts.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold::{async_trait, Aggregate, BoxError, Config, Envelope, Follower, Handles};
//! use eventfold::{Root, SqlValue, Subscriptions, Transaction, View};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! # struct Account { balance: i64 }
//! # #[derive(Debug, Clone, Serialize, Deserialize)]
//! # enum AccountEvent { Opened, Deposited { amount: i64 } }
//! # impl Aggregate for Account {
//! #     const TYPE: &'static str = "Account";
//! #     type Id = eventfold::uuid::Uuid;
//! #     type Event = AccountEvent;
//! #     fn apply(&mut self, _: &AccountEvent) {}
//! # }
//!
//! /// `deposits(account, total)`, in portable SQL.
//! struct Deposits;
//!
//! #[async_trait]
//! impl View for Deposits {
//!     fn subscribe(to: &mut Subscriptions<Self>) {
//!         to.aggregate::<Account>();
//!     }
//!
//!     async fn setup(&mut self, tx: &mut Transaction) -> Result<(), BoxError> {
//!         tx.execute("CREATE TABLE IF NOT EXISTS deposits (account TEXT PRIMARY KEY, total BIGINT NOT NULL)", &[]).await?;
//!         Ok(())
//!     }
//! }
//!
//! #[async_trait]
//! impl Handles<Account> for Deposits {
//!     async fn handle(&mut self, tx: &mut Transaction, e: Envelope<Account>) -> Result<(), BoxError> {
//!         if let AccountEvent::Deposited { amount } = e.event {
//!             tx.execute(
//!                 "INSERT INTO deposits (account, total) VALUES ($1, $2) \
//!                  ON CONFLICT (account) DO UPDATE SET total = deposits.total + $2",
//!                 &[e.id.to_string().into(), amount.into()],
//!             )
//!             .await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("bank.sqlite3");
//! // EVENTFOLD_STORE=postgres would run the same view on PostgreSQL.
//! let app = Config::sqlite(path).aggregate::<Account>().application().await?;
//! let mut account = Root::<Account>::new(AccountEvent::Opened);
//! account.trigger(AccountEvent::Deposited { amount: 30 });
//! app.save(&mut account).await?;
//!
//! let mut follower = Follower::view(&app, "deposits", Deposits).build();
//! assert_eq!(follower.catch_up().await?, 2);
//!
//! let mut tx = app.begin().await?;
//! let rows = tx.query("SELECT total FROM deposits", &[]).await?;
//! assert_eq!(rows, [vec![SqlValue::Integer(30)]]);
//! # Ok::<(), eventfold::Error>(())
//! # }).unwrap();
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;

pub use config::{Config, StoreConfig};
pub use eventfold_core::*;

/// The `uuid` crate, for aggregate ids (`type Id = eventfold::uuid::Uuid;`) without a
/// dependency of your own.
pub use uuid;

/// The attribute that makes a trait's `async fn`s object safe, for implementing
/// [`View`], [`Handles`] and [`Projection`] without a dependency of your own:
///
/// ```
/// use eventfold::{async_trait, BoxError, Notification, Projection, Transaction};
///
/// /// Counts the notifications it has seen, on any store.
/// #[derive(Default)]
/// struct Counter(std::sync::Arc<std::sync::atomic::AtomicU64>);
///
/// #[async_trait]
/// impl Projection for Counter {
///     fn name(&self) -> &str {
///         "counter"
///     }
///
///     async fn process(
///         &mut self,
///         tx: &mut Transaction,
///         _notification: &Notification,
///     ) -> Result<(), BoxError> {
///         // State in memory changes only once the batch commits.
///         let seen = self.0.clone();
///         tx.on_commit(move || {
///             seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         });
///         Ok(())
///     }
/// }
/// ```
pub use async_trait::async_trait;

/// The README's Rust blocks, compiled as doctests so the tour stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The embedded SQLite store; [`sqlite::SqliteTransactionExt`] reaches its connection
/// inside a [`Transaction`].
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use eventfold_sqlite as sqlite;

/// The PostgreSQL store; `postgres::PostgresTransactionExt` reaches its connection inside
/// a [`Transaction`].
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use eventfold_postgres as postgres;
