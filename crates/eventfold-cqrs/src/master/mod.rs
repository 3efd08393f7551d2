//! The master side: models whose saves and deletes record django-cqrs messages in the
//! caller's transaction, for the relay ([`CqrsRoute`]) to publish.
//!
//! A master model is a serde struct with a [`MasterModel`] impl (its `CQRS_ID`, primary
//! key, `cqrs_revision` and `cqrs_updated`), registered in a [`Master`] with its
//! [`ModelOptions`] (table and columns, published fields, tracked fields, meta function).
//! See the crate docs for the call order, what is recorded and how a cold start is
//! covered.

mod model;
mod python;
mod record;
mod route;
mod sql;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::{Metadata, Recording, StoredEvent, Timestamp, Transaction};
use serde_json::{Map, Value};

use crate::wire::{self, CqrsMessage, SignalType};

pub use model::{Change, Fields, MasterModel, MetaContext, ModelOptions, Pk};
pub use python::{date, datetime, optional_datetime};
pub use record::{record_stream, CqrsRecord, CQRS_KEY};
pub use route::CqrsRoute;
pub use sql::datetime_param;

use model::{downcast, serde_map, DeleteDataFn, ModelMetaFn, SerializeFn};

/// What can go wrong saving, deleting or syncing a master model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model was never registered with [`Master::register`].
    #[error("master model {0} is not registered (Master::register)")]
    NotRegistered(&'static str),
    /// The model's options are invalid (a table or column name, a type name).
    #[error("master model {cqrs_id}: {reason}")]
    Options {
        /// The model's `CQRS_ID`.
        cqrs_id: String,
        /// What is wrong.
        reason: String,
    },
    /// An update or delete of a row that is not in the table (never inserted, or already
    /// deleted by the caller): nothing was recorded, and the transaction can go on.
    #[error("master model {cqrs_id}: no row with pk {pk} in {table} (an update or delete needs the row: call `deleted` before the caller's DELETE)")]
    RowNotFound {
        /// The model's `CQRS_ID`.
        cqrs_id: String,
        /// The primary key, as text.
        pk: String,
        /// The table, as configured.
        table: String,
    },
    /// An update of a model with tracked fields without its previous instance (its old
    /// values are what `previous_data` carries).
    #[error("master model {0} tracks fields: pass the previous instance (Save::previous)")]
    PreviousRequired(String),
    /// The instance did not serialize, or not to a JSON object.
    #[error("master model {cqrs_id}: cannot serialize the instance: {reason}")]
    Serialize {
        /// The model's `CQRS_ID`.
        cqrs_id: String,
        /// What went wrong.
        reason: String,
    },
    /// The revision column did not hold an integer.
    #[error("unreadable revision: {0}")]
    Revision(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] eventfold_core::Error),
}

/// A master-wide meta function (`CQRS['master']['meta_function']`).
type MetaFn = dyn Fn(&MetaContext<'_>) -> Value + Send + Sync;
/// A master-wide correlation function (`CQRS['master']['correlation_function']`): signal
/// type, cqrs id, pk, queue (for a sync to one queue).
type CorrelationFn = dyn Fn(SignalType, &str, &Value, Option<&str>) -> Option<Value> + Send + Sync;
type ClockFn = dyn Fn() -> DateTime<Utc> + Send + Sync;

struct Registered {
    cqrs_id: &'static str,
    table: String,
    bump: Result<sql::Bump, String>,
    fields: Fields,
    tracked: Option<Fields>,
    serialize: Arc<SerializeFn>,
    to_map: Arc<SerializeFn>,
    meta: Option<Arc<ModelMetaFn>>,
    delete_data: Option<Arc<DeleteDataFn>>,
    produce: bool,
}

/// The master models of one service, the master's options (`CQRS['master']`), and the
/// switch that turns production off. Cheap to clone; clones share the switch.
#[derive(Clone)]
pub struct Master {
    models: Arc<HashMap<TypeId, Arc<Registered>>>,
    exchange: Arc<str>,
    message_ttl: Option<Duration>,
    clock: Arc<ClockFn>,
    meta: Option<Arc<MetaFn>>,
    correlation: Option<Arc<CorrelationFn>>,
    switch: eventfold_core::OffSwitch,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("exchange", &self.exchange)
            .field("message_ttl", &self.message_ttl)
            .field(
                "models",
                &self.models.values().map(|m| m.cqrs_id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Master {
    fn default() -> Self {
        Master::new()
    }
}

/// What a save, delete or sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Saved {
    /// The instance's revision now (for a delete: the revision its DELETE carries).
    pub revision: i64,
    /// The save time stamped on it.
    pub updated: DateTime<Utc>,
    /// The notification id of the recorded message; `None` when production is off.
    pub notification: Option<u64>,
}

/// One save or delete, with its per-save options ([`Master::save`]).
pub struct Save<'a, M> {
    change: Change,
    instance: &'a mut M,
    previous: Option<&'a M>,
    correlation_id: Option<Value>,
    produce: bool,
    metadata: Metadata,
    bumped: Option<(i64, DateTime<Utc>)>,
}

impl<'a, M: MasterModel> Save<'a, M> {
    /// A create of `instance` (revision 0).
    pub fn create(instance: &'a mut M) -> Self {
        Self::new(Change::Created, instance)
    }

    /// An update of `instance` (the row's revision + 1).
    pub fn update(instance: &'a mut M) -> Self {
        Self::new(Change::Updated, instance)
    }

    /// A delete of `instance`.
    pub fn delete(instance: &'a mut M) -> Self {
        Self::new(Change::Deleted, instance)
    }

    /// A `change` of `instance` (for code that picks the kind at run time).
    pub fn new(change: Change, instance: &'a mut M) -> Self {
        Save {
            change,
            instance,
            previous: None,
            correlation_id: None,
            produce: true,
            metadata: Metadata::default(),
            bumped: None,
        }
    }

    /// The caller's own statement already bumped the row and stamped it at `updated`
    /// (`SET ..., cqrs_revision = cqrs_revision + 1, cqrs_updated = $n ... RETURNING
    /// cqrs_revision`, with `updated` from [`Master::now`]), and returned `revision`:
    /// eventfold records with these instead of running its own bump, which saves a
    /// statement per save. Then call [`Master::save`] after the caller's write.
    pub fn bumped(mut self, revision: i64, updated: DateTime<Utc>) -> Self {
        self.bumped = Some((revision, updated));
        self
    }

    /// The instance as it was before this update, for tracked fields' `previous_data`.
    pub fn previous(mut self, previous: &'a M) -> Self {
        self.previous = Some(previous);
        self
    }

    /// The message's `correlation_id` (else the master's correlation function's).
    pub fn correlation_id(mut self, id: impl Into<Value>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// `false`: bump the revision, record nothing (`CQRS_PRODUCE` for one save).
    pub fn produce(mut self, produce: bool) -> Self {
        self.produce = produce;
        self
    }

    /// Metadata kept with the record in the log (not sent: django-cqrs messages have no
    /// headers).
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// Where a SYNC goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncTarget {
    /// Every replica of the model (routing key `<cqrs_id>`).
    All,
    /// One replica queue (routing key `cqrs.<queue>.<cqrs_id>`).
    Queue(String),
}

impl SyncTarget {
    /// One replica queue.
    pub fn queue(queue: impl Into<String>) -> Self {
        SyncTarget::Queue(queue.into())
    }
}

/// To the microsecond, as both databases and Python keep it.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

impl Master {
    /// A master publishing to exchange `cqrs`, messages living one day, stamped with the
    /// system clock, meta `{}`, no correlation function.
    pub fn new() -> Self {
        Master {
            models: Arc::default(),
            exchange: wire::DEFAULT_EXCHANGE.into(),
            message_ttl: Some(wire::DEFAULT_MESSAGE_TTL),
            clock: Arc::new(Utc::now),
            meta: None,
            correlation: None,
            switch: eventfold_core::OffSwitch::new(),
        }
    }

    /// The exchange (`CQRS['exchange']`, default `cqrs`).
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into().into();
        self
    }

    /// How long a message lives (`CQRS_MESSAGE_TTL`, default 86400 s; `None`: for ever).
    pub fn message_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.message_ttl = ttl;
        self
    }

    /// The clock that stamps `cqrs_updated` and `expires` (tests fix it).
    pub fn clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// One meta function for every model (`CQRS['master']['meta_function']`); a model's
    /// own ([`ModelOptions::meta`]) takes precedence.
    pub fn meta_function(
        mut self,
        meta: impl Fn(&MetaContext<'_>) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.meta = Some(Arc::new(meta));
        self
    }

    /// The correlation id of messages that were given none
    /// (`CQRS['master']['correlation_function']`): called with the signal type, cqrs id,
    /// pk and target queue.
    pub fn correlation_function(
        mut self,
        correlation: impl Fn(SignalType, &str, &Value, Option<&str>) -> Option<Value>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.correlation = Some(Arc::new(correlation));
        self
    }

    /// Registers `M` with the default options.
    pub fn register<M: MasterModel>(self) -> Self {
        self.register_with::<M>(ModelOptions::default())
    }

    /// Registers `M` with `options`.
    pub fn register_with<M: MasterModel>(mut self, options: ModelOptions<M>) -> Self {
        let ModelOptions {
            table,
            pk_column,
            revision_column,
            updated_column,
            pk_type,
            fields,
            serializer,
            tracked,
            meta,
            delete_data,
            produce,
            model: PhantomData,
        } = options;
        let bump = sql::Bump::new(
            &table,
            &pk_column,
            &revision_column,
            &updated_column,
            pk_type.as_deref(),
        );
        let to_map: Arc<SerializeFn> = Arc::new(|any: &dyn Any| serde_map(downcast::<M>(any)));
        let registered = Registered {
            cqrs_id: M::CQRS_ID,
            table,
            bump,
            fields,
            tracked,
            serialize: serializer.unwrap_or_else(|| to_map.clone()),
            to_map,
            meta,
            delete_data,
            produce,
        };
        Arc::make_mut(&mut self.models).insert(TypeId::of::<M>(), Arc::new(registered));
        self
    }

    /// The master's clock now, to the microsecond: the save time of a save whose row the
    /// caller bumps itself ([`Save::bumped`]).
    pub fn now(&self) -> DateTime<Utc> {
        micros((self.clock)())
    }

    /// The exchange messages are published to.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }

    /// The `CQRS_ID`s of the registered models.
    pub fn cqrs_ids(&self) -> Vec<&'static str> {
        let mut ids: Vec<_> = self.models.values().map(|m| m.cqrs_id).collect();
        ids.sort_unstable();
        ids
    }

    /// The relay route for this master's messages, its exchange set; add the replica
    /// queues it serves with [`CqrsRoute::replica_queue`].
    pub fn route(&self) -> CqrsRoute {
        CqrsRoute::new().exchange(&*self.exchange)
    }

    /// Records the create of `instance` in `tx`: revision 0. Call it before the caller's
    /// own INSERT of the row, which writes the revision and save time set on `instance`.
    pub async fn created<M: MasterModel>(
        &self,
        tx: &mut Transaction,
        instance: &mut M,
    ) -> Result<Saved, Error> {
        self.save(tx, Save::create(instance)).await
    }

    /// Records an update of `instance` in `tx`: bumps the row's revision. Call it before
    /// the caller's own UPDATE of the row. A model with tracked fields needs
    /// [`Master::save`] with [`Save::previous`].
    pub async fn updated<M: MasterModel>(
        &self,
        tx: &mut Transaction,
        instance: &mut M,
    ) -> Result<Saved, Error> {
        self.save(tx, Save::update(instance)).await
    }

    /// Records the delete of `instance` in `tx`: the DELETE carries the row's revision + 1.
    /// Call it before the caller's own DELETE of the row.
    pub async fn deleted<M: MasterModel>(
        &self,
        tx: &mut Transaction,
        instance: &mut M,
    ) -> Result<Saved, Error> {
        self.save(tx, Save::delete(instance)).await
    }

    fn model<M: MasterModel>(&self) -> Result<&Arc<Registered>, Error> {
        self.models
            .get(&TypeId::of::<M>())
            .ok_or(Error::NotRegistered(M::CQRS_ID))
    }

    fn producing(&self, cqrs_id: &str) -> bool {
        self.switch.is_on(cqrs_id)
    }

    /// Saves or deletes as `save` says, in `tx`: sets the revision (0 for a create, the
    /// row's bumped revision otherwise) and the save time on the instance, then records
    /// the message, unless production is off (per save, per model, or by a
    /// [`ProductionOff`] guard).
    pub async fn save<M: MasterModel>(
        &self,
        tx: &mut Transaction,
        save: Save<'_, M>,
    ) -> Result<Saved, Error> {
        let model = self.model::<M>()?;
        let options_error = |reason: &String| Error::Options {
            cqrs_id: M::CQRS_ID.to_owned(),
            reason: reason.clone(),
        };
        let bump = model.bump.as_ref().map_err(options_error)?;
        let Save {
            change,
            instance,
            previous,
            correlation_id,
            produce,
            metadata,
            bumped,
        } = save;
        if change == Change::Updated && model.tracked.is_some() && previous.is_none() {
            return Err(Error::PreviousRequired(M::CQRS_ID.to_owned()));
        }
        let pk = instance.pk();
        let (revision, now) = match (bumped, change) {
            (Some((revision, updated)), _) => (revision, micros(updated)),
            (None, Change::Created) => (0, self.now()),
            (None, Change::Updated | Change::Deleted) => {
                let now = self.now();
                let revision = bump
                    .run(tx, &pk, now)
                    .await?
                    .ok_or_else(|| Error::RowNotFound {
                        cqrs_id: M::CQRS_ID.to_owned(),
                        pk: pk.to_string(),
                        table: model.table.clone(),
                    })?;
                (revision, now)
            }
        };
        instance.set_cqrs(revision, now);
        let saved = Saved {
            revision,
            updated: now,
            notification: None,
        };
        if !(produce && model.produce && self.producing(M::CQRS_ID)) {
            return Ok(saved);
        }
        let instance: &M = instance;
        let (signal_type, instance_data, previous_data) = match change {
            Change::Deleted => {
                let mut data = Map::new();
                data.insert("id".to_owned(), pk.to_json());
                data.insert("cqrs_revision".to_owned(), Value::from(revision));
                data.insert(
                    "cqrs_updated".to_owned(),
                    Value::from(wire::python_datetime(&now)),
                );
                if let Some(custom) = model.delete_data.as_ref().and_then(|f| f(instance)) {
                    data.insert("custom".to_owned(), custom);
                }
                (SignalType::Delete, data, None)
            }
            Change::Created | Change::Updated => {
                let data = self.instance_data(model, instance)?;
                let previous_data = match &model.tracked {
                    None => None,
                    Some(tracked) => Some(self.previous_data(
                        model,
                        tracked,
                        instance,
                        previous.filter(|_| change == Change::Updated),
                    )?),
                };
                (SignalType::Save, data, previous_data)
            }
        };
        let mut message = CqrsMessage::new(signal_type, M::CQRS_ID, pk.to_json(), instance_data);
        message.previous_data = previous_data;
        message.correlation_id = correlation_id;
        self.stamp(model, instance, &mut message, None, now);
        let id = self
            .record_message(tx, &message, &wire::routing_key(M::CQRS_ID), metadata, now)
            .await?;
        Ok(Saved {
            notification: Some(id),
            ..saved
        })
    }

    /// Records a SYNC of `instance` as it is (load it in `tx`): to every replica or to one
    /// queue. Its revision is not bumped. Returns the notification id, `None` when
    /// production is off.
    pub async fn sync<M: MasterModel>(
        &self,
        tx: &mut Transaction,
        instance: &M,
        target: SyncTarget,
    ) -> Result<Option<u64>, Error> {
        let model = self.model::<M>()?;
        if !(model.produce && self.producing(M::CQRS_ID)) {
            return Ok(None);
        }
        let now = self.now();
        let data = self.instance_data(model, instance)?;
        let (queue, routing_key) = match &target {
            SyncTarget::All => (None, wire::routing_key(M::CQRS_ID)),
            SyncTarget::Queue(q) => (Some(q.as_str()), wire::queue_routing_key(q, M::CQRS_ID)),
        };
        let mut message =
            CqrsMessage::new(SignalType::Sync, M::CQRS_ID, instance.pk().to_json(), data);
        self.stamp(model, instance, &mut message, queue, now);
        let id = self
            .record_message(tx, &message, &routing_key, Metadata::default(), now)
            .await?;
        Ok(Some(id))
    }

    /// Records a message the caller built (a sync of a plain table's rows, a dead letter
    /// retried) in `tx`, to this master's exchange with `routing_key`, as it is: nothing is
    /// stamped, the production switch does not apply.
    pub async fn record(
        &self,
        tx: &mut Transaction,
        message: &CqrsMessage,
        routing_key: &str,
        metadata: Metadata,
    ) -> Result<u64, Error> {
        self.record_message(tx, message, routing_key, metadata, self.now())
            .await
    }

    async fn record_message(
        &self,
        tx: &mut Transaction,
        message: &CqrsMessage,
        routing_key: &str,
        mut metadata: Metadata,
        now: DateTime<Utc>,
    ) -> Result<u64, Error> {
        let pk = message.pk_text();
        if let Some(Value::String(id)) = &message.correlation_id {
            if metadata.correlation_id().is_none() {
                metadata.insert(Metadata::CORRELATION_ID, id.clone());
            }
        }
        metadata.insert(
            CQRS_KEY,
            serde_json::json!({
                "exchange": &*self.exchange,
                "routing_key": routing_key,
                "cqrs_id": &message.cqrs_id,
                "signal_type": message.signal_type.as_str(),
                "pk": &pk,
            }),
        );
        let record = StoredEvent::new(
            record_stream(&message.cqrs_id, &pk),
            0,
            format!("cqrs.{}.{}", message.cqrs_id, message.signal_type.as_str()),
            Timestamp::from_micros(now.timestamp_micros()),
            message.to_body(),
        )
        .with_metadata(metadata);
        let ids = tx.record(&Recording::new().append(record)).await?;
        Ok(ids
            .first()
            .copied()
            .expect("a recording of one append returns its id"))
    }

    /// `instance_data` of a SAVE or SYNC: the serde form (or the serializer's), limited to
    /// the published fields, then `cqrs_revision` and `cqrs_updated` (in place when the
    /// form has them, else at the end), as `_common_serialization` builds it.
    fn instance_data<M: MasterModel>(
        &self,
        model: &Registered,
        instance: &M,
    ) -> Result<Map<String, Value>, Error> {
        let serialize_error = |reason| Error::Serialize {
            cqrs_id: M::CQRS_ID.to_owned(),
            reason,
        };
        let mut data = (model.serialize)(instance).map_err(serialize_error)?;
        if let Fields::Only(fields) = &model.fields {
            data.retain(|k, _| fields.iter().any(|f| f == k));
        }
        data.insert(
            "cqrs_revision".to_owned(),
            Value::from(instance.cqrs_revision()),
        );
        data.insert(
            "cqrs_updated".to_owned(),
            Value::from(wire::python_datetime(&instance.cqrs_updated())),
        );
        Ok(data)
    }

    /// `previous_data`: on a create, `null` for each tracked field that is set
    /// (`changed_initial`); on an update, the old value of each tracked field that changed.
    fn previous_data<M: MasterModel>(
        &self,
        model: &Registered,
        tracked: &Fields,
        instance: &M,
        previous: Option<&M>,
    ) -> Result<Map<String, Value>, Error> {
        let serialize_error = |reason| Error::Serialize {
            cqrs_id: M::CQRS_ID.to_owned(),
            reason,
        };
        let is_tracked = |k: &str| match tracked {
            Fields::All => true,
            Fields::Only(fields) => fields.iter().any(|f| f == k),
        };
        let now = (model.to_map)(instance).map_err(serialize_error)?;
        let Some(previous) = previous else {
            return Ok(now
                .into_iter()
                .filter(|(k, v)| is_tracked(k) && !v.is_null())
                .map(|(k, _)| (k, Value::Null))
                .collect());
        };
        let mut before = (model.to_map)(previous).map_err(serialize_error)?;
        Ok(now
            .into_iter()
            .filter(|(k, _)| is_tracked(k))
            .filter_map(|(k, v)| {
                let old = before.remove(&k).unwrap_or(Value::Null);
                (old != v).then_some((k, old))
            })
            .collect())
    }

    /// Fills in what the master adds to every message: `meta` (the model's meta function,
    /// else the master's, else `{}`), the correlation function's id when the save gave
    /// none, and `expires`.
    fn stamp<M: MasterModel>(
        &self,
        model: &Registered,
        instance: &M,
        message: &mut CqrsMessage,
        queue: Option<&str>,
        now: DateTime<Utc>,
    ) {
        let cx = MetaContext {
            cqrs_id: M::CQRS_ID,
            signal_type: message.signal_type,
            instance_pk: &message.instance_pk,
            instance_data: &message.instance_data,
            previous_data: message.previous_data.as_ref(),
        };
        let meta = match (&model.meta, &self.meta) {
            (Some(own), _) => own(instance, &cx),
            (None, Some(all)) => all(&cx),
            (None, None) => Value::Object(Map::new()),
        };
        if message.correlation_id.is_none() {
            message.correlation_id = self
                .correlation
                .as_ref()
                .and_then(|f| f(message.signal_type, M::CQRS_ID, &message.instance_pk, queue));
        }
        message.meta = Some(meta);
        message.expires = wire::expires_after(now, self.message_ttl);
    }

    /// Switches production off for every model while the guard lives (revisions are still
    /// bumped).
    pub fn disable(&self) -> ProductionOff {
        self.switch.off_all()
    }

    /// Switches production off for the models of these `CQRS_ID`s while the guard lives.
    pub fn disable_models(&self, cqrs_ids: &[&str]) -> ProductionOff {
        self.switch.off_for(cqrs_ids)
    }
}

/// Production stays off while the guard lives ([`Master::disable`], [`Master::disable_models`]).
pub type ProductionOff = eventfold_core::OffGuard;
