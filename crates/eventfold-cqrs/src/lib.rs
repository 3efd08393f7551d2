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

pub mod master;
pub mod replica;
pub mod table;
pub mod tooling;
pub mod wire;
