//! Replica models: where an applied message is written.
//!
//! A replica model has the master's `cqrs_id`, knows the revision it stores for a primary
//! key, and has hooks for create, update and delete. Every hook writes through the
//! [`Transaction`] the consumer hands it (the replica's own store, SQLite or PostgreSQL:
//! portable [`Transaction::execute`] / [`Transaction::query`], or the driver through the
//! backend's extension trait), so a batch of messages commits, or rolls back, as one.
//!
//! Two flavours:
//! - **dynamic**: implement [`ReplicaModel`] itself; the instance data arrives as a JSON
//!   map, after [`ReplicaModel::map_fields`] (a [`FieldMapping`] does renames and ignored
//!   fields). The plain-table replica of the CLI is one.
//! - **typed**: implement [`TypedReplicaModel`] for a serde struct (field renames by
//!   serde) and register it as [`Typed`]`(model)`.
//!
//! The revision lives in the replica row, as django-cqrs's `ReplicaMixin` keeps
//! `cqrs_revision`: the consumer asks [`ReplicaModel::stored_revision`] before a SAVE and
//! applies django-cqrs's rules (see the consumer's docs); a hook is called only when the
//! message is to be applied.

use std::collections::HashMap;
use std::sync::Arc;

use eventfold_core::{async_trait, BoxError, Transaction};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::wire::{CqrsMessage, SignalType};

/// One message to apply, as a hook sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Change<'a> {
    /// SAVE, SYNC (create / update) or DELETE.
    pub signal_type: SignalType,
    /// The primary key, as on the wire (a JSON number or string).
    pub pk: &'a Value,
    /// The instance data after the model's field mapping (for a DELETE, what the master
    /// sent: `id`, `cqrs_revision`, `cqrs_updated`).
    pub data: &'a Map<String, Value>,
    /// The old values of the master's tracked fields, if it tracks any.
    pub previous_data: Option<&'a Map<String, Value>>,
    /// The master's `meta`.
    pub meta: Option<&'a Value>,
    /// The message's `cqrs_revision`, if it has an integer one.
    pub revision: Option<i64>,
    /// The revision the replica held before this message (`None`: no row).
    pub stored_revision: Option<i64>,
    /// The master's correlation id.
    pub correlation_id: Option<&'a Value>,
    /// How many times the message has been retried already.
    pub retries: u32,
}

impl<'a> Change<'a> {
    /// The change `message` asks for, with `data` its (mapped) instance data.
    pub fn new(
        message: &'a CqrsMessage,
        data: &'a Map<String, Value>,
        stored_revision: Option<i64>,
    ) -> Self {
        Change {
            signal_type: message.signal_type,
            pk: &message.instance_pk,
            data,
            previous_data: message.previous_data.as_ref(),
            meta: message.meta.as_ref(),
            revision: message.revision(),
            stored_revision,
            correlation_id: message.correlation_id.as_ref(),
            retries: message.retries,
        }
    }
}

/// What a [`RowWrite`] does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Insert the row: it was not there when the batch began (or a DELETE of the same
    /// batch removed it, and that DELETE is an earlier write of the batch).
    Create,
    /// Update the row, which exists.
    Update,
    /// Delete the row, if there is one.
    Delete,
}

/// One row's net write in a batch, as [`ReplicaModel::write_batch`] gets it: after the
/// revision rules ran over the batch in order, the messages of one primary key that
/// were applied fold into at most a DELETE followed by a create or update, whose
/// [`Self::change`] is the last applied message (django-cqrs sends the whole row with
/// every revision, so the last one carries everything the row ends with).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RowWrite<'a> {
    /// Create, update or delete.
    pub kind: WriteKind,
    /// The last applied message of the row in the batch: its data after the field
    /// mapping, previous data, meta and revision. `stored_revision` is what the replica
    /// held before the first message this write stands for.
    pub change: Change<'a>,
    /// How many applied messages of the batch this write stands for (more than 1 when
    /// the batch held several of one primary key).
    pub messages: usize,
}

/// The row ranges of a multi-row write of `rows` rows: chunks whose sizes are powers of
/// two of at most `max_rows` (rounded down to one), largest first (55 rows: 32, 16, 4, 2,
/// 1). Batches come in every size, and one statement shape per size would evict one
/// another from the connection's statement cache (sqlx keeps 100, eventfold-sqlite 64) and
/// be parsed and planned again each time; with these, a few shapes serve every batch.
pub fn statement_chunks(rows: usize, max_rows: usize) -> Vec<std::ops::Range<usize>> {
    let largest = if max_rows <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - max_rows.leading_zeros())
    };
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, largest);
    while start < rows {
        while size > rows - start {
            size /= 2;
        }
        chunks.push(start..start + size);
        start += size;
    }
    chunks
}

/// How long an `IN (...)` list of `n` values is made (the next power of two; pad it by
/// repeating a value) so that, as with [`statement_chunks`], a few statement shapes
/// serve every batch.
pub fn padded_len(n: usize) -> usize {
    n.next_power_of_two()
}

/// A hook's way to say a message can never be applied (its data does not fit the model):
/// the consumer dead-letters it at once, with this reason, instead of retrying it. Any
/// other hook error is retried as django-cqrs retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// A replica model, the dynamic flavour: instance data as a JSON map. Object-safe, so a
/// consumer holds many, keyed by [`ReplicaModel::cqrs_id`] ([`ReplicaModels`]).
///
/// Every method runs inside the consumer's transaction, possibly with other messages of
/// the same batch before it; a hook that fails makes the consumer roll the batch back and
/// apply its messages one per transaction, so only the failing one is retried. Hooks
/// must therefore write only through `tx` (or stage in-memory effects with
/// [`Transaction::on_commit`]).
#[async_trait]
pub trait ReplicaModel: Send + Sync + 'static {
    /// The `CQRS_ID` shared with the master.
    fn cqrs_id(&self) -> &str;

    /// The `cqrs_revision` stored for `pk`, `None` when there is no such row.
    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError>;

    /// The stored revisions of many pks at once, one per pk in order, if the model reads
    /// them in one query (`WHERE id IN (...)`): the consumer asks once per batch, which
    /// saves a round trip per message. `None` (the default): the consumer asks
    /// [`Self::stored_revision`] for each.
    async fn stored_revisions(
        &self,
        tx: &mut Transaction,
        pks: &[&Value],
    ) -> Result<Option<Vec<Option<i64>>>, BoxError> {
        let _ = (tx, pks);
        Ok(None)
    }

    /// Maps the master's instance data to the replica's fields (django-cqrs's
    /// `CQRS_MAPPING`) before a hook sees it. The default keeps it as it is.
    fn map_fields(&self, data: &Map<String, Value>) -> Map<String, Value> {
        data.clone()
    }

    /// Creates the row (no row for `change.pk`).
    async fn create(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError>;

    /// Updates the row (it exists, and the message is to be applied).
    async fn update(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError>;

    /// Deletes the row of `change.pk` (no revision check, as django-cqrs). A missing row
    /// is not an error.
    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError>;

    /// Writes a batch's net writes at once: at most one create or update per primary key,
    /// a DELETE of a key always before its create (run the deletes first, then the rest,
    /// and the order within each kind does not matter). The consumer calls it once per
    /// model and batch, after the revision rules; a model with multi-row statements
    /// (`INSERT ... VALUES (...), (...) ON CONFLICT ... DO UPDATE`, `DELETE ... WHERE pk IN
    /// (...)`) saves a round trip per message. An error rolls the batch back and the
    /// consumer applies its messages one per transaction through [`Self::create`],
    /// [`Self::update`] and [`Self::delete`], so only the failing message is retried or
    /// dead-lettered. The default calls those hooks one by one, in order.
    async fn write_batch(
        &self,
        tx: &mut Transaction,
        writes: &[RowWrite<'_>],
    ) -> Result<(), BoxError> {
        for write in writes {
            match write.kind {
                WriteKind::Create => self.create(tx, &write.change).await?,
                WriteKind::Update => self.update(tx, &write.change).await?,
                WriteKind::Delete => self.delete(tx, &write.change).await?,
            }
        }
        Ok(())
    }
}

/// A replica model, the typed flavour: the instance data deserialized into
/// [`TypedReplicaModel::Instance`] (serde renames do the field mapping; data that does
/// not deserialize is [`Rejected`], so dead-lettered with the serde error). Register it
/// as [`Typed`]`(model)`.
#[async_trait]
pub trait TypedReplicaModel: Send + Sync + 'static {
    /// The replica's row type.
    type Instance: DeserializeOwned + Send + Sync;

    /// The `CQRS_ID` shared with the master.
    fn cqrs_id(&self) -> &str;

    /// The `cqrs_revision` stored for `pk`, `None` when there is no such row.
    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError>;

    /// The stored revisions of many pks at once, if the model reads them in one query
    /// (see [`ReplicaModel::stored_revisions`]; default `None`: one by one).
    async fn stored_revisions(
        &self,
        _tx: &mut Transaction,
        _pks: &[&Value],
    ) -> Result<Option<Vec<Option<i64>>>, BoxError> {
        Ok(None)
    }

    /// Creates the row.
    async fn create(
        &self,
        tx: &mut Transaction,
        instance: Self::Instance,
        change: &Change<'_>,
    ) -> Result<(), BoxError>;

    /// Updates the row.
    async fn update(
        &self,
        tx: &mut Transaction,
        instance: Self::Instance,
        change: &Change<'_>,
    ) -> Result<(), BoxError>;

    /// Deletes the row of `change.pk`; a missing row is not an error.
    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError>;

    /// Writes a batch's net writes at once, each with its deserialized instance (`None`
    /// for a delete); see [`ReplicaModel::write_batch`] for the order and what an error
    /// does. The default calls [`Self::create`], [`Self::update`] and [`Self::delete`]
    /// one by one, in order.
    async fn write_batch(
        &self,
        tx: &mut Transaction,
        writes: Vec<(Option<Self::Instance>, RowWrite<'_>)>,
    ) -> Result<(), BoxError> {
        for (instance, write) in writes {
            match (write.kind, instance) {
                (WriteKind::Delete, _) => self.delete(tx, &write.change).await?,
                (WriteKind::Create, Some(instance)) => {
                    self.create(tx, instance, &write.change).await?
                }
                (WriteKind::Update, Some(instance)) => {
                    self.update(tx, instance, &write.change).await?
                }
                (kind, None) => return Err(format!("a {kind:?} write without its instance").into()),
            }
        }
        Ok(())
    }
}

/// A [`TypedReplicaModel`] as a [`ReplicaModel`].
#[derive(Debug, Clone)]
pub struct Typed<M>(pub M);

impl<M: TypedReplicaModel> Typed<M> {
    fn instance(&self, change: &Change<'_>) -> Result<M::Instance, BoxError> {
        serde_json::from_value(Value::Object(change.data.clone())).map_err(|e| {
            Rejected(format!(
                "instance_data does not fit {} ({}): {e}",
                self.0.cqrs_id(),
                std::any::type_name::<M::Instance>()
            ))
            .into()
        })
    }
}

#[async_trait]
impl<M: TypedReplicaModel> ReplicaModel for Typed<M> {
    fn cqrs_id(&self) -> &str {
        self.0.cqrs_id()
    }

    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        self.0.stored_revision(tx, pk).await
    }

    async fn stored_revisions(
        &self,
        tx: &mut Transaction,
        pks: &[&Value],
    ) -> Result<Option<Vec<Option<i64>>>, BoxError> {
        self.0.stored_revisions(tx, pks).await
    }

    async fn create(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        let instance = self.instance(change)?;
        self.0.create(tx, instance, change).await
    }

    async fn update(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        let instance = self.instance(change)?;
        self.0.update(tx, instance, change).await
    }

    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        self.0.delete(tx, change).await
    }

    async fn write_batch(
        &self,
        tx: &mut Transaction,
        writes: &[RowWrite<'_>],
    ) -> Result<(), BoxError> {
        let mut typed = Vec::with_capacity(writes.len());
        for write in writes {
            let instance = match write.kind {
                WriteKind::Delete => None,
                WriteKind::Create | WriteKind::Update => Some(self.instance(&write.change)?),
            };
            typed.push((instance, *write));
        }
        self.0.write_batch(tx, typed).await
    }
}

/// The field mapping of a dynamic model (django-cqrs's `CQRS_MAPPING`, plus ignored
/// fields): master field name → replica field name; fields not renamed keep their name,
/// ignored fields are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMapping {
    renames: HashMap<String, String>,
    ignored: Vec<String>,
}

impl FieldMapping {
    /// The identity mapping.
    pub fn new() -> Self {
        FieldMapping::default()
    }

    /// Writes the master's field `from` as the replica's `to`.
    pub fn rename(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.renames.insert(from.into(), to.into());
        self
    }

    /// Drops the master's field `field`.
    pub fn ignore(mut self, field: impl Into<String>) -> Self {
        self.ignored.push(field.into());
        self
    }

    /// The replica's fields for the master's `data`, in the master's order.
    pub fn apply(&self, data: &Map<String, Value>) -> Map<String, Value> {
        data.iter()
            .filter(|(k, _)| !self.ignored.iter().any(|i| i == *k))
            .map(|(k, v)| {
                let name = self.renames.get(k).cloned().unwrap_or_else(|| k.clone());
                (name, v.clone())
            })
            .collect()
    }
}

/// The models of one replica, by `cqrs_id`.
#[derive(Clone, Default)]
pub struct ReplicaModels {
    by_id: HashMap<String, Arc<dyn ReplicaModel>>,
}

impl std::fmt::Debug for ReplicaModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.by_id.keys().collect();
        ids.sort();
        f.debug_struct("ReplicaModels")
            .field("cqrs_ids", &ids)
            .finish()
    }
}

impl ReplicaModels {
    /// No models.
    pub fn new() -> Self {
        ReplicaModels::default()
    }

    /// Adds `model` (replacing one with the same `cqrs_id`).
    pub fn with(mut self, model: impl ReplicaModel) -> Self {
        self.insert(Arc::new(model));
        self
    }

    /// Adds a shared `model` (replacing one with the same `cqrs_id`).
    pub fn insert(&mut self, model: Arc<dyn ReplicaModel>) {
        self.by_id.insert(model.cqrs_id().to_owned(), model);
    }

    /// The model of `cqrs_id`.
    pub fn get(&self, cqrs_id: &str) -> Option<&Arc<dyn ReplicaModel>> {
        self.by_id.get(cqrs_id)
    }

    /// The `cqrs_id`s, sorted.
    pub fn cqrs_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.by_id.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_are_powers_of_two_covering_the_rows() {
        let sizes = |rows, max| -> Vec<usize> {
            statement_chunks(rows, max)
                .iter()
                .map(|r| r.len())
                .collect()
        };
        assert_eq!(sizes(55, 256), [32, 16, 4, 2, 1]);
        assert_eq!(sizes(200, 256), [128, 64, 8]);
        assert_eq!(sizes(600, 250), [128, 128, 128, 128, 64, 16, 8]);
        assert_eq!(sizes(3, 0), [1, 1, 1]);
        assert!(sizes(0, 256).is_empty());
        let ranges = statement_chunks(7, 4);
        assert_eq!(ranges, [0..4, 4..6, 6..7]);
        assert_eq!((padded_len(1), padded_len(5), padded_len(128)), (1, 8, 128));
    }

    #[test]
    fn field_mapping_renames_and_drops() {
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"id":1,"name":"a","secret":"x","cqrs_revision":0}"#).unwrap();
        let mapped = FieldMapping::new()
            .rename("name", "title")
            .ignore("secret")
            .apply(&data);
        assert_eq!(
            Value::Object(mapped).to_string(),
            r#"{"id":1,"title":"a","cqrs_revision":0}"#
        );
    }
}
