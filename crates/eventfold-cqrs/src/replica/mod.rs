//! The replica side: models that apply django-cqrs messages through the replica's own
//! [`Transaction`](eventfold_core::Transaction), and the consumer that feeds them.
//!
//! - [`model`]: what a replica model is ([`ReplicaModel`], object-safe, held by
//!   `cqrs_id` in [`ReplicaModels`]; a batch's net writes are [`RowWrite`]s), its typed
//!   flavour ([`TypedReplicaModel`] behind [`Typed`]) and the field mapping of the
//!   dynamic flavour ([`FieldMapping`]).
//! - [`apply`]: django-cqrs's revision rules ([`apply_message`], [`apply_batch`],
//!   [`Applied`]).
//! - [`consumer`]: [`ReplicaConsumer`], its topology ([`replica_topology`]), settings
//!   ([`ReplicaOptions`]) and figures ([`ReplicaStats`]).
//!
//! # Example
//!
//! A typed model on SQLite (PostgreSQL is the same code: the SQL is portable), fed one
//! captured django-cqrs body through the revision rules, with no broker:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold_core::{async_trait, BoxError, Store, Transaction};
//! use eventfold_cqrs::replica::{apply_message, Applied, Change, ReplicaModels, Typed, TypedReplicaModel};
//! use eventfold_cqrs::wire::CqrsMessage;
//! use serde_json::Value;
//!
//! #[derive(serde::Deserialize)]
//! struct Item {
//!     id: i64,
//!     name: String,
//!     cqrs_revision: i64,
//! }
//!
//! struct Items;
//!
//! #[async_trait]
//! impl TypedReplicaModel for Items {
//!     type Instance = Item;
//!
//!     fn cqrs_id(&self) -> &str {
//!         "item"
//!     }
//!
//!     async fn stored_revision(&self, tx: &mut Transaction, pk: &Value) -> Result<Option<i64>, BoxError> {
//!         let rows = tx.query("SELECT cqrs_revision FROM items WHERE id = $1", &[pk.as_i64().into()]).await?;
//!         Ok(rows.first().and_then(|row| row[0].as_i64()))
//!     }
//!
//!     async fn create(&self, tx: &mut Transaction, item: Item, _: &Change<'_>) -> Result<(), BoxError> {
//!         let sql = "INSERT INTO items (id, name, cqrs_revision) VALUES ($1, $2, $3)";
//!         tx.execute(sql, &[item.id.into(), item.name.into(), item.cqrs_revision.into()]).await?;
//!         Ok(())
//!     }
//!
//!     async fn update(&self, tx: &mut Transaction, item: Item, _: &Change<'_>) -> Result<(), BoxError> {
//!         let sql = "UPDATE items SET name = $2, cqrs_revision = $3 WHERE id = $1";
//!         tx.execute(sql, &[item.id.into(), item.name.into(), item.cqrs_revision.into()]).await?;
//!         Ok(())
//!     }
//!
//!     async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
//!         tx.execute("DELETE FROM items WHERE id = $1", &[change.pk.as_i64().into()]).await?;
//!         Ok(())
//!     }
//! }
//!
//! let store = eventfold_sqlite::SqliteStore::open_in_memory()?;
//! let mut tx = store.begin().await?;
//! tx.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, cqrs_revision INTEGER)", &[]).await?;
//! tx.commit().await?;
//!
//! let models = ReplicaModels::new().with(Typed(Items));
//! let body = br#"{"signal_type":"SAVE","cqrs_id":"item","instance_data":{"id":2,"name":"Alpha","cqrs_revision":1},"previous_data":null,"instance_pk":2,"correlation_id":null,"retries":0,"expires":null,"meta":{}}"#;
//! let message = CqrsMessage::from_body(body)?;
//!
//! let mut tx = store.begin().await?;
//! assert_eq!(apply_message(&models, &mut tx, &message).await?, Applied::Created { sync: false });
//! // The same revision again is a duplicate: acked by a consumer, never applied twice.
//! assert_eq!(apply_message(&models, &mut tx, &message).await?, Applied::Duplicate { revision: 1 });
//! tx.commit().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Consuming (needs a broker):
//!
//! ```no_run
//! # async fn run(store: std::sync::Arc<dyn eventfold_core::Store>, models: eventfold_cqrs::replica::ReplicaModels) -> Result<(), Box<dyn std::error::Error>> {
//! use eventfold_amqp::AmqpConfig;
//! use eventfold_cqrs::replica::{ReplicaConsumer, ReplicaOptions};
//!
//! let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?
//!     .with_connection_name("inventory-replica");
//! let mut options = ReplicaOptions::new("replica");
//! options.workers = 4;
//! options.failover = true; // run two of these: one consumes, the other waits
//! let consumer = ReplicaConsumer::start(config, store, models, options).await?;
//! // ... until told to stop:
//! let stats = consumer.shutdown().await?;
//! println!("applied {}, stale {}, retries {}", stats.applied, stats.stale, stats.retries);
//! # Ok(()) }
//! ```
//!
//! # How the consumer works
//!
//! **Topology** as django-cqrs's (`replica_topology`): topic exchange `cqrs` (durable),
//! `<queue>` bound with `<cqrs_id>` and `cqrs.<queue>.<cqrs_id>`, `dead_letter_<queue>`
//! bound with `cqrs.dead_letter_<queue>.<cqrs_id>`, durable, not exclusive, no arguments.
//! Either consumer can take the other's place on the same queue.
//!
//! **Failover** ([`ReplicaOptions::failover`]) declares `<queue>` with
//! `x-single-active-consumer`: of several consumers only one receives; when its connection
//! goes, the broker requeues its unacked messages in place and hands the queue to the next,
//! so per-instance order survives the takeover. RabbitMQ refuses to re-declare a queue with
//! other arguments, and the argument cannot be set by policy, so: the plain mode takes an
//! existing queue as it is (a failover queue works for it); failover mode refuses a queue
//! that exists without the argument (406) rather than consume it without the guarantee.
//! Delete the queue (or let failover mode create it first) to switch.
//!
//! **Order.** The key of a message is its instance (`cqrs_id`, `instance_pk`): it picks one
//! of N workers, which applies its messages in queue order. So a create and its update,
//! arriving at once, are applied in that order (django-cqrs's `-w 2` competing processes
//! apply them in either order and heal by 2-second retries).
//!
//! **Batches.** A worker takes what is queued for it, up to
//! [`ReplicaOptions::batch_size`] messages (optionally waiting [`ReplicaOptions::linger`]
//! for more), applies them in one transaction of the replica store, commits, and only then
//! acks them: one multiple-ack per run of settled deliveries (eventfold-amqp's batch
//! consumer keeps the channel's unacked deliveries in tag order and never covers one that
//! is still open or waiting). Under a backlog batches fill up and the commit cost is shared;
//! a lone message is applied at once. A batch is applied by [`apply_batch`]: the stored
//! revisions in one query per model ([`ReplicaModel::stored_revisions`]), the revision
//! rules over the batch in order, then each model's net writes at once
//! ([`ReplicaModel::write_batch`]: per primary key at most a DELETE and one create or
//! update, the last applied message winning; plain tables write them with multi-row
//! statements). If anything fails inside a batch, the batch rolls back and its messages
//! are applied one per transaction through the per-message hooks, so only the failing
//! one fails.
//!
//! **Failures** follow django-cqrs: a failing hook is re-published with `retries + 1` to
//! `cqrs.<queue>.<cqrs_id>` after the retry delay (2 s), while the original stays unacked
//! and the worker goes on; the original is acked once the broker confirmed the copy. After
//! `max_retries` (30), or when `expires <= now`, the message is dead-lettered to
//! `cqrs.dead_letter_<queue>.<cqrs_id>` with `expiration` = the dead message TTL
//! (10 days), body unchanged, so `manage.py cqrs_dead_letters dump` and `retry` read it.
//! Messages that are not django-cqrs messages are dead-lettered at once, the reason in the
//! `x-eventfold-error` header. A retried message goes to the back of the queue: if a newer
//! revision of its instance is applied meanwhile, the retried one is stale when it comes
//! back and is dropped, as with django-cqrs (the newer revision carries the whole row).
//!
//! **Redeliveries** (after a crash or a failover: applied, but the ack was lost) are stale
//! or duplicates by the revision rules and are skipped; [`ReplicaStats`] counts them apart
//! (`redelivered_skipped`) so `stale` and `duplicates` measure real ordering errors.
//!
//! On PostgreSQL a takeover can also cost one retry: the new consumer's insert of a row
//! the old one is still committing waits on the unique index, fails, and is re-published,
//! then skipped as a duplicate when it comes back.
//!
//! **Shutdown** ([`ReplicaConsumer::shutdown`]) stops consuming, lets each worker commit and
//! ack the batch in hand, and leaves everything else unacked for redelivery.
//!
//! **Supervision.** A consumer does not reconnect by itself: a lost connection stops it
//! ([`ReplicaConsumer::stopped`]). [`ReplicaConsumer::run_until`] is the loop a process runs:
//! start, and after a lost connection start again with backoff (in failover mode the
//! restarted consumer queues up behind the one that took over), until the shutdown signal.

pub mod apply;
pub mod consumer;
pub mod model;

pub use apply::{apply_batch, apply_message, Applied, ApplyError};
pub use consumer::{
    replica_topology, ReplicaConsumer, ReplicaError, ReplicaOptions, ReplicaStats,
    SINGLE_ACTIVE_CONSUMER,
};
pub use model::{
    padded_len, statement_chunks, Change, FieldMapping, Rejected, ReplicaModel, ReplicaModels,
    RowWrite, Typed, TypedReplicaModel, WriteKind,
};
