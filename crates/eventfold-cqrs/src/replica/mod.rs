//! The replica side: models that apply django-cqrs messages through the replica's own
//! [`Transaction`](eventfold_core::Transaction).
//!
//! - [`model`]: what a replica model is ([`ReplicaModel`], object-safe, held by
//!   `cqrs_id`), its typed flavour ([`TypedReplicaModel`] behind [`Typed`]) and the
//!   field mapping of the dynamic flavour ([`FieldMapping`]).

pub mod model;

pub use model::{
    Change, FieldMapping, Rejected, ReplicaModel, ReplicaModels, Typed, TypedReplicaModel,
};
