//! Master → replica replication over RabbitMQ, wire-compatible with django-cqrs 3.1 in
//! both directions: a Rust master feeds Django replicas, a Django master feeds Rust
//! replicas.
//!
//! - [`wire`]: the message (`CqrsMessage`), its routing keys and queue names, byte for
//!   byte as django-cqrs writes them.
//! - [`master`]: master models whose saves and deletes record their message in the
//!   caller's transaction; the relay publishes it.
//! - [`replica`]: consumers that apply messages to replica models or plain tables, with
//!   django-cqrs's revision rules, per-instance order over many workers, retries and dead
//!   letters. A replica model ([`replica::ReplicaModel`], or a serde struct through
//!   [`replica::TypedReplicaModel`]) writes through the replica store's own transaction;
//!   [`replica::ReplicaConsumer`] applies batches of messages in one transaction each and
//!   acks them after the commit (the module docs say how, and why).
//! - [`table`]: plain tables as master and replica models with no Rust code, described
//!   by a TOML tables file, read and written with the same SQL on SQLite and PostgreSQL.
//! - [`tooling`]: what `eventfold cqrs` runs besides the consumer (sync, bulk dump and
//!   load, the diff trio, dead letters), in django-cqrs's formats.
//!
//! ```
//! use eventfold_cqrs::wire::{CqrsMessage, SignalType};
//!
//! let body = br#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":{"id":2,"cqrs_revision":1},"previous_data":null,"instance_pk":2,"correlation_id":null,"retries":0,"expires":"2026-11-24T00:41:49+00:00","meta":{}}"#;
//! let message = CqrsMessage::from_body(body)?;
//! assert_eq!(message.signal_type, SignalType::Save);
//! assert_eq!(message.revision(), Some(1));
//! assert_eq!(message.to_body(), body);
//! # Ok::<(), eventfold_cqrs::wire::MalformedMessage>(())
//! ```

//! # Master
//!
//! A master model is a serde struct with a [`master::MasterModel`] impl, registered in a
//! [`master::Master`] (what `MasterMixin` and `CQRS['master']` are in django-cqrs). Its
//! saves and deletes go through the caller's own [`eventfold_core::Transaction`], on
//! SQLite or PostgreSQL:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use chrono::{DateTime, Utc};
//! use eventfold_core::{NotificationQuery, NotificationReader, SqlValue, Store};
//! use eventfold_cqrs::master::{datetime_param, CqrsRecord, Master, MasterModel, ModelOptions, Pk};
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct Item {
//!     id: i64,
//!     cqrs_revision: i64,
//!     #[serde(with = "eventfold_cqrs::master::datetime")]
//!     cqrs_updated: DateTime<Utc>,
//!     name: String,
//! }
//!
//! impl MasterModel for Item {
//!     const CQRS_ID: &'static str = "item";
//!     fn pk(&self) -> Pk { self.id.into() }
//!     fn cqrs_revision(&self) -> i64 { self.cqrs_revision }
//!     fn cqrs_updated(&self) -> DateTime<Utc> { self.cqrs_updated }
//!     fn set_cqrs(&mut self, revision: i64, updated: DateTime<Utc>) {
//!         self.cqrs_revision = revision;
//!         self.cqrs_updated = updated;
//!     }
//! }
//!
//! let store = eventfold_sqlite::SqliteStore::open_in_memory()?;
//! let master = Master::new().register_with(ModelOptions::<Item>::new().table("shop_item"));
//! # let mut tx = store.begin().await?;
//! # tx.execute("CREATE TABLE shop_item (id INTEGER PRIMARY KEY, cqrs_revision INTEGER NOT NULL, \
//! #     cqrs_updated TEXT NOT NULL, name TEXT NOT NULL)", &[]).await?;
//! # tx.commit().await?;
//!
//! // Create: eventfold first (revision 0, the save time), then the caller's INSERT.
//! let mut item = Item { id: 1, cqrs_revision: 0, cqrs_updated: Utc::now(), name: "lamp".into() };
//! let mut tx = store.begin().await?;
//! master.created(&mut tx, &mut item).await?;
//! tx.execute(
//!     "INSERT INTO shop_item (id, cqrs_revision, cqrs_updated, name) VALUES ($1, $2, $3, $4)",
//!     &[item.id.into(), item.cqrs_revision.into(),
//!       datetime_param(tx.backend(), &item.cqrs_updated), item.name.as_str().into()],
//! ).await?;
//! tx.commit().await?;
//!
//! // Update: eventfold bumps the row's revision (one statement), then the caller's UPDATE.
//! item.name = "desk lamp".into();
//! let mut tx = store.begin().await?;
//! let saved = master.updated(&mut tx, &mut item).await?;
//! tx.execute("UPDATE shop_item SET name = $1 WHERE id = $2",
//!     &[item.name.as_str().into(), item.id.into()]).await?;
//! tx.commit().await?;
//! assert_eq!(saved.revision, 1);
//!
//! // The messages wait in the log for the relay (`master.route()`).
//! let log = store.select_notifications(&NotificationQuery::after(0, 10)).await?;
//! let update = CqrsRecord::of(&log[1]).unwrap();
//! assert_eq!((update.routing_key, update.signal_type), ("item", "SAVE"));
//! assert!(std::str::from_utf8(update.body)?.starts_with(
//!     r#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":{"id":1,"cqrs_revision":1,"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## The call order
//!
//! Call [`master::Master::created`], [`updated`](master::Master::updated) or
//! [`deleted`](master::Master::deleted) (or [`save`](master::Master::save) with per-save
//! options) in the caller's transaction **before** the caller's own INSERT, UPDATE or
//! DELETE of the row. eventfold sets the instance's revision and save time
//! ([`master::MasterModel::set_cqrs`]), so the caller's write carries them; for an update
//! or delete eventfold has already written them into the row itself:
//!
//! - a **create** is revision 0 and runs no SQL (the caller's INSERT is what fails on a
//!   duplicate key, and the transaction with it);
//! - an **update** or **delete** runs one portable statement,
//!   `UPDATE <table> SET cqrs_revision = cqrs_revision + 1, cqrs_updated = $1
//!   WHERE <pk> = $2 RETURNING cqrs_revision` (identifiers quoted; table and columns from
//!   [`master::ModelOptions`], defaults `<CQRS_ID>`, `id`, `cqrs_revision`,
//!   `cqrs_updated`); on SQLite the same UPDATE without `RETURNING` and a `SELECT` of
//!   the revision, cheaper there than SQLite's buffered `RETURNING` (the transaction
//!   holds SQLite's one write lock). The revision lives in the caller's row, as in django-cqrs, so rows
//!   migrated from django-cqrs keep counting from theirs. No row is
//!   [`master::Error::RowNotFound`], and nothing is recorded. A DELETE carries
//!   `{id, cqrs_revision + 1, cqrs_updated}`, as django-cqrs sends it.
//! - The caller's own UPDATE must not write an older revision back: write the instance's
//!   (which eventfold just set) or leave the two columns out.
//! - To spare that statement, the caller's own UPDATE may bump the row itself
//!   (`SET ..., cqrs_revision = cqrs_revision + 1, cqrs_updated = $n ... RETURNING
//!   cqrs_revision`, the time from [`master::Master::now`]) and then, after its write, pass
//!   the revision it returned with [`master::Save::bumped`].
//!
//! On PostgreSQL the bump's row lock serialises concurrent saves of one instance: the
//! second waits for the first to commit, then bumps the revision the first committed, so
//! two saves never share a revision, and their messages are in the log in revision order.
//! SQLite has one writer. `cqrs_updated` is written as `timestamptz` on PostgreSQL and as
//! Django's naive-UTC text on SQLite (its `DateTimeField`s:
//! [`master::datetime_param`] gives the caller's writes the same form); a UUID key needs
//! [`master::ModelOptions::pk_type`]`("uuid")` on PostgreSQL.
//!
//! ## What is recorded
//!
//! One record per message, appended to the instance's stream `cqrs.<cqrs_id>:<pk>`
//! (topic `cqrs.<cqrs_id>.<SIGNAL>`), **in the caller's transaction**: a rolled-back save
//! records nothing. Its payload is the body to publish, byte for byte as django-cqrs
//! writes it ([`wire::CqrsMessage::to_body`]), `expires` stamped at save time from the
//! master's clock and message TTL; its metadata holds the routing facts under
//! [`master::CQRS_KEY`] ([`master::CqrsRecord`]). `instance_data` is the serde form (or a
//! list of its fields, or a serializer's object), with `cqrs_revision` and
//! `cqrs_updated` (Python's `str(datetime)`) set on it; tracked fields send the old values
//! of those that changed as `previous_data` (the caller passes the previous instance:
//! [`master::Save::previous`]); `meta` is the model's meta function's result, else the
//! master's, else `{}`; `correlation_id` is the save's, else the master's correlation
//! function's.
//!
//! Production can be switched off per save ([`master::Save::produce`]), per model
//! ([`master::ModelOptions::produce`], `CQRS_PRODUCE`), or while a guard lives
//! ([`master::Master::disable`], for tests); revisions are bumped either way.
//! [`master::Master::sync`] records a SYNC of an instance to every replica (routing key
//! `<cqrs_id>`) or to one queue (`cqrs.<queue>.<cqrs_id>`), through the same log, so it
//! stays in order with the saves.
//!
//! ## Publishing, and the cold start
//!
//! [`master::CqrsRoute`] is the `eventfold-relay` route of these records: exchange `cqrs`
//! (topic, durable, declared before the first publish), the recorded routing key, the
//! body verbatim, `text/plain`, `delivery_mode` 2, no headers. The relay publishes after
//! the commit, with publisher confirms, and moves on only over what the broker confirmed,
//! where django-cqrs publishes from `on_commit` without confirms and drops what fails. The
//! relay also sets `message_id` (`<relay>:<notification id>`); django-cqrs's consumer
//! reads only the body, so it is unaffected.
//!
//! A message nobody is bound for is **held** ([`eventfold_relay::Unroutable::Hold`]): the
//! relay retries it with backoff, and everything after it waits, until a replica binds
//! its queue; `eventfold relay status` shows the hold as the relay's last error. So that a
//! cold start loses nothing even before any replica ever ran, give the route the replica
//! queues the master serves ([`master::CqrsRoute::replica_queue`]): before its first
//! publish to the exchange, on every connection, the relay declares each queue with
//! django-cqrs's topology (queue `<queue>` bound with `<cqrs_id>` and
//! `cqrs.<queue>.<cqrs_id>`, `dead_letter_<queue>` bound with
//! `cqrs.dead_letter_<queue>.<cqrs_id>`, durable, no arguments), so messages written
//! before the replica started wait in its queue. A queue that exists already is kept as it
//! is, whatever arguments its replica declared it with. A hold stops everything behind it,
//! so the messages of a model that no replica consumes yet belong on a route that parks
//! them ([`master::CqrsRoute`] explains how).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn run(store: Arc<dyn eventfold_core::Store>, master: eventfold_cqrs::master::Master)
//! # -> Result<(), eventfold_relay::RelayError> {
//! let relay = eventfold_relay::Relay::builder(store, "amqp://guest:guest@127.0.0.1:5672/%2f", "cqrs")?
//!     .route(master.route().replica_queue("replica", ["item"]))
//!     .build();
//! relay.run(std::future::pending()).await
//! # }
//! ```

pub mod master;
pub mod replica;
pub mod table;
pub mod tooling;
pub mod wire;
