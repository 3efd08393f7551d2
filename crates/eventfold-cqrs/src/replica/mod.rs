//! The replica side: models that apply django-cqrs messages through the replica's own
//! [`Transaction`](eventfold_core::Transaction), and the consumer that feeds them.
//!
//! - [`model`]: what a replica model is ([`ReplicaModel`], object-safe, held by
//!   `cqrs_id` in [`ReplicaModels`]), its typed flavour ([`TypedReplicaModel`] behind
//!   [`Typed`]) and the field mapping of the dynamic flavour ([`FieldMapping`]).
//! - [`apply`]: django-cqrs's revision rules ([`apply_message`], [`Applied`]).
//! - [`consumer`]: [`ReplicaConsumer`], its topology ([`replica_topology`]), settings
//!   ([`ReplicaOptions`]) and figures ([`ReplicaStats`]).

pub mod apply;
pub mod consumer;
pub mod model;

pub use apply::{apply_message, Applied, ApplyError};
pub use consumer::{
    replica_topology, ReplicaConsumer, ReplicaError, ReplicaOptions, ReplicaStats,
    SINGLE_ACTIVE_CONSUMER,
};
pub use model::{
    Change, FieldMapping, Rejected, ReplicaModel, ReplicaModels, Typed, TypedReplicaModel,
};
