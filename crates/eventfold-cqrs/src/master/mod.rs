//! The master side: models whose saves and deletes record django-cqrs messages in the
//! caller's transaction, for the relay ([`CqrsRoute`]) to publish.
//!
//! A master model is a serde struct with a [`MasterModel`] impl (its `CQRS_ID`, primary
//! key, `cqrs_revision` and `cqrs_updated`), registered in a [`Master`] with its
//! [`ModelOptions`] (table and columns, published fields, tracked fields, meta function).
//! See the crate docs for the call order, what is recorded and how a cold start is
//! covered.

mod python;
mod route;
mod sql;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::{Metadata, Notification, Recording, StoredEvent, Timestamp, Transaction};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::wire::{self, CqrsMessage, SignalType};

pub use python::{date, datetime, optional_datetime};
pub use route::CqrsRoute;

/// The metadata key under which a recorded message keeps its routing facts
/// ([`CqrsRecord`]).
pub const CQRS_KEY: &str = "eventfold.cqrs";

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
    /// An update or delete of a row that is not in the table (or a create or update called
    /// after the caller deleted it): nothing was recorded.
    #[error("master model {cqrs_id}: no row with pk {pk} in {table} (update and delete need the row: call them before deleting it)")]
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

/// A primary key: an integer or text (a UUID as its hyphenated text).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pk {
    /// An integer key (`AutoField`, `BigAutoField`).
    Int(i64),
    /// A text key (`CharField`, `UUIDField`).
    Text(String),
}

impl Pk {
    /// As JSON, the form of `instance_pk` and of the `id` of a DELETE.
    pub fn to_json(&self) -> Value {
        match self {
            Pk::Int(i) => Value::from(*i),
            Pk::Text(s) => Value::from(s.as_str()),
        }
    }

    fn to_sql(&self) -> eventfold_core::SqlValue {
        match self {
            Pk::Int(i) => eventfold_core::SqlValue::Integer(*i),
            Pk::Text(s) => eventfold_core::SqlValue::Text(s.clone()),
        }
    }
}

impl std::fmt::Display for Pk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pk::Int(i) => write!(f, "{i}"),
            Pk::Text(s) => f.write_str(s),
        }
    }
}

impl From<i64> for Pk {
    fn from(value: i64) -> Self {
        Pk::Int(value)
    }
}

impl From<i32> for Pk {
    fn from(value: i32) -> Self {
        Pk::Int(value.into())
    }
}

impl From<String> for Pk {
    fn from(value: String) -> Self {
        Pk::Text(value)
    }
}

impl From<&str> for Pk {
    fn from(value: &str) -> Self {
        Pk::Text(value.to_owned())
    }
}

/// A master model (django-cqrs's `MasterMixin`): a serde struct whose serde form is what
/// it publishes by default, saved by the caller's own SQL into a row that holds its
/// `cqrs_revision` and `cqrs_updated`.
pub trait MasterModel: Serialize + Send + Sync + 'static {
    /// The id master and replicas share (`CQRS_ID`): the routing key of its messages.
    const CQRS_ID: &'static str;

    /// The instance's primary key.
    fn pk(&self) -> Pk;

    /// Its revision: 0 when created, one more on every update (set by eventfold).
    fn cqrs_revision(&self) -> i64;

    /// When it was last saved (set by eventfold).
    fn cqrs_updated(&self) -> DateTime<Utc>;

    /// Sets the revision and the save time; eventfold calls it on every save and delete,
    /// before the caller writes the row.
    fn set_cqrs(&mut self, revision: i64, updated: DateTime<Utc>);
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new row: revision 0.
    Created,
    /// A changed row: the row's revision + 1.
    Updated,
    /// A removed row: the message carries the row's revision + 1.
    Deleted,
}

/// Which fields a model publishes (`CQRS_FIELDS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fields {
    /// Every field of its serde form (`'__all__'`, the default).
    #[default]
    All,
    /// These fields, in the serde form's order; `cqrs_revision` and `cqrs_updated` are
    /// always published.
    Only(Vec<String>),
}

/// What the meta function sees (django-cqrs's `get_cqrs_meta` keyword arguments).
#[derive(Debug)]
#[non_exhaustive]
pub struct MetaContext<'a> {
    /// The model's `CQRS_ID`.
    pub cqrs_id: &'a str,
    /// SAVE, DELETE or SYNC.
    pub signal_type: SignalType,
    /// The primary key, as it travels.
    pub instance_pk: &'a Value,
    /// The message's `instance_data`.
    pub instance_data: &'a Map<String, Value>,
    /// The message's `previous_data`.
    pub previous_data: Option<&'a Map<String, Value>>,
}

/// A master-wide meta function (`CQRS['master']['meta_function']`).
type MetaFn = dyn Fn(&MetaContext<'_>) -> Value + Send + Sync;
/// A master-wide correlation function (`CQRS['master']['correlation_function']`): signal
/// type, cqrs id, pk, queue (for a sync to one queue).
type CorrelationFn = dyn Fn(SignalType, &str, &Value, Option<&str>) -> Option<Value> + Send + Sync;
type ClockFn = dyn Fn() -> DateTime<Utc> + Send + Sync;

type SerializeFn = dyn Fn(&dyn Any) -> Result<Map<String, Value>, String> + Send + Sync;
type ModelMetaFn = dyn Fn(&dyn Any, &MetaContext<'_>) -> Value + Send + Sync;
type DeleteDataFn = dyn Fn(&dyn Any) -> Option<Value> + Send + Sync;

/// Options of one master model.
pub struct ModelOptions<M: MasterModel> {
    table: String,
    pk_column: String,
    revision_column: String,
    updated_column: String,
    pk_type: Option<String>,
    fields: Fields,
    serializer: Option<Box<dyn Fn(&M) -> Value + Send + Sync>>,
    tracked: Option<Fields>,
    meta: Option<Box<dyn Fn(&M, &MetaContext<'_>) -> Value + Send + Sync>>,
    delete_data: Option<Box<dyn Fn(&M) -> Option<Value> + Send + Sync>>,
    produce: bool,
}

impl<M: MasterModel> Default for ModelOptions<M> {
    fn default() -> Self {
        ModelOptions {
            table: M::CQRS_ID.to_owned(),
            pk_column: "id".to_owned(),
            revision_column: "cqrs_revision".to_owned(),
            updated_column: "cqrs_updated".to_owned(),
            pk_type: None,
            fields: Fields::All,
            serializer: None,
            tracked: None,
            meta: None,
            delete_data: None,
            produce: true,
        }
    }
}

impl<M: MasterModel> std::fmt::Debug for ModelOptions<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelOptions")
            .field("cqrs_id", &M::CQRS_ID)
            .field("table", &self.table)
            .field("fields", &self.fields)
            .field("tracked", &self.tracked)
            .field("produce", &self.produce)
            .finish_non_exhaustive()
    }
}

impl<M: MasterModel> ModelOptions<M> {
    /// The defaults: table named as the `CQRS_ID`, columns `id`, `cqrs_revision`,
    /// `cqrs_updated`, every field published, none tracked, meta `{}`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table holding the rows (`app_item`, or `schema.table`), as Django named it.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The primary key column (default `id`).
    pub fn pk_column(mut self, column: impl Into<String>) -> Self {
        self.pk_column = column.into();
        self
    }

    /// The SQL type the key is cast to on PostgreSQL (`uuid` for a `UUIDField`; default
    /// none: integers and text bind as they are).
    pub fn pk_type(mut self, sql_type: impl Into<String>) -> Self {
        self.pk_type = Some(sql_type.into());
        self
    }

    /// The revision column (default `cqrs_revision`).
    pub fn revision_column(mut self, column: impl Into<String>) -> Self {
        self.revision_column = column.into();
        self
    }

    /// The save-time column (default `cqrs_updated`).
    pub fn updated_column(mut self, column: impl Into<String>) -> Self {
        self.updated_column = column.into();
        self
    }

    /// Publishes only these fields of the serde form (`CQRS_FIELDS`).
    pub fn fields(mut self, fields: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fields = Fields::Only(fields.into_iter().map(Into::into).collect());
        self
    }

    /// Publishes what `serializer` returns (a JSON object) instead of the serde form
    /// (`CQRS_SERIALIZER`); `cqrs_revision` and `cqrs_updated` are set on it.
    pub fn serializer(mut self, serializer: impl Fn(&M) -> Value + Send + Sync + 'static) -> Self {
        self.serializer = Some(Box::new(serializer));
        self
    }

    /// Tracks these fields of the serde form (`CQRS_TRACKED_FIELDS`): a save sends the old
    /// values of those that changed as `previous_data` (`null` for each set field on a
    /// create), so an update needs the previous instance ([`Save::previous`]).
    pub fn tracked_fields(mut self, fields: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tracked = Some(Fields::Only(fields.into_iter().map(Into::into).collect()));
        self
    }

    /// Tracks every field of the serde form (`CQRS_TRACKED_FIELDS = '__all__'`).
    pub fn track_all_fields(mut self) -> Self {
        self.tracked = Some(Fields::All);
        self
    }

    /// The model's own meta function (an override of `get_cqrs_meta`); its result travels
    /// as `meta`. It takes precedence over [`Master::meta_function`].
    pub fn meta(
        mut self,
        meta: impl Fn(&M, &MetaContext<'_>) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.meta = Some(Box::new(meta));
        self
    }

    /// Extra data of a DELETE, sent as `instance_data.custom` when it is `Some`
    /// (`get_custom_cqrs_delete_data`).
    pub fn delete_data(
        mut self,
        data: impl Fn(&M) -> Option<Value> + Send + Sync + 'static,
    ) -> Self {
        self.delete_data = Some(Box::new(data));
        self
    }

    /// Whether the model produces messages at all (`CQRS_PRODUCE`, default true). Its
    /// revisions are bumped either way.
    pub fn produce(mut self, produce: bool) -> Self {
        self.produce = produce;
        self
    }
}

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

#[derive(Default)]
struct Switch {
    all_off: usize,
    models_off: HashMap<String, usize>,
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
    switch: Arc<Mutex<Switch>>,
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

    fn new(change: Change, instance: &'a mut M) -> Self {
        Save {
            change,
            instance,
            previous: None,
            correlation_id: None,
            produce: true,
            metadata: Metadata::default(),
        }
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

fn downcast<M: 'static>(any: &dyn Any) -> &M {
    any.downcast_ref::<M>()
        .expect("registered under its own type id")
}

fn serde_map<M: Serialize>(instance: &M) -> Result<Map<String, Value>, String> {
    match serde_json::to_value(instance).map_err(|e| e.to_string())? {
        Value::Object(map) => Ok(map),
        other => Err(format!("its serde form is not an object but {other}")),
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
            switch: Arc::default(),
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
        } = options;
        let bump = sql::Bump::new(
            &table,
            &pk_column,
            &revision_column,
            &updated_column,
            pk_type.as_deref(),
        );
        let to_map: Arc<SerializeFn> = Arc::new(|any: &dyn Any| serde_map(downcast::<M>(any)));
        let serialize: Arc<SerializeFn> = match serializer {
            Some(serializer) => Arc::new(move |any: &dyn Any| match serializer(downcast(any)) {
                Value::Object(map) => Ok(map),
                other => Err(format!("the serializer returned {other}, not an object")),
            }),
            None => to_map.clone(),
        };
        let registered = Registered {
            cqrs_id: M::CQRS_ID,
            table,
            bump,
            fields,
            tracked,
            serialize,
            to_map,
            meta: meta.map(|meta| {
                Arc::new(move |any: &dyn Any, cx: &MetaContext<'_>| meta(downcast(any), cx))
                    as Arc<ModelMetaFn>
            }),
            delete_data: delete_data.map(|data| {
                Arc::new(move |any: &dyn Any| data(downcast(any))) as Arc<DeleteDataFn>
            }),
            produce,
        };
        Arc::make_mut(&mut self.models).insert(TypeId::of::<M>(), Arc::new(registered));
        self
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
        let switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        switch.all_off == 0 && switch.models_off.get(cqrs_id).is_none_or(|&n| n == 0)
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
        } = save;
        if change == Change::Updated && model.tracked.is_some() && previous.is_none() {
            return Err(Error::PreviousRequired(M::CQRS_ID.to_owned()));
        }
        let now = micros((self.clock)());
        let pk = instance.pk();
        let revision = match change {
            Change::Created => 0,
            Change::Updated | Change::Deleted => {
                bump.run(tx, &pk, now)
                    .await?
                    .ok_or_else(|| Error::RowNotFound {
                        cqrs_id: M::CQRS_ID.to_owned(),
                        pk: pk.to_string(),
                        table: model.table.clone(),
                    })?
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
        let message = self.message(
            model,
            instance,
            signal_type,
            pk.to_json(),
            instance_data,
            previous_data,
            correlation_id,
            None,
            now,
        );
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
        let now = micros((self.clock)());
        let data = self.instance_data(model, instance)?;
        let (queue, routing_key) = match &target {
            SyncTarget::All => (None, wire::routing_key(M::CQRS_ID)),
            SyncTarget::Queue(q) => (Some(q.as_str()), wire::queue_routing_key(q, M::CQRS_ID)),
        };
        let message = self.message(
            model,
            instance,
            SignalType::Sync,
            instance.pk().to_json(),
            data,
            None,
            None,
            queue,
            now,
        );
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
        self.record_message(tx, message, routing_key, metadata, micros((self.clock)()))
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

    #[allow(clippy::too_many_arguments)]
    fn message<M: MasterModel>(
        &self,
        model: &Registered,
        instance: &M,
        signal_type: SignalType,
        instance_pk: Value,
        instance_data: Map<String, Value>,
        previous_data: Option<Map<String, Value>>,
        correlation_id: Option<Value>,
        queue: Option<&str>,
        now: DateTime<Utc>,
    ) -> CqrsMessage {
        let cx = MetaContext {
            cqrs_id: M::CQRS_ID,
            signal_type,
            instance_pk: &instance_pk,
            instance_data: &instance_data,
            previous_data: previous_data.as_ref(),
        };
        let meta = match (&model.meta, &self.meta) {
            (Some(own), _) => own(instance, &cx),
            (None, Some(all)) => all(&cx),
            (None, None) => Value::Object(Map::new()),
        };
        let correlation_id = correlation_id.or_else(|| {
            self.correlation
                .as_ref()
                .and_then(|f| f(signal_type, M::CQRS_ID, &instance_pk, queue))
        });
        let mut message = CqrsMessage::new(signal_type, M::CQRS_ID, instance_pk, instance_data);
        message.previous_data = previous_data;
        message.correlation_id = correlation_id;
        message.expires = wire::expires_after(now, self.message_ttl);
        message.meta = Some(meta);
        message
    }

    /// Switches production off for every model while the guard lives (revisions are still
    /// bumped).
    pub fn disable(&self) -> ProductionOff {
        self.switch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all_off += 1;
        ProductionOff {
            switch: self.switch.clone(),
            models: None,
        }
    }

    /// Switches production off for the models of these `CQRS_ID`s while the guard lives.
    pub fn disable_models(&self, cqrs_ids: &[&str]) -> ProductionOff {
        let mut switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        for id in cqrs_ids {
            *switch.models_off.entry((*id).to_owned()).or_default() += 1;
        }
        ProductionOff {
            switch: self.switch.clone(),
            models: Some(cqrs_ids.iter().map(|m| (*m).to_owned()).collect()),
        }
    }
}

/// The log stream of an instance's messages: `cqrs.<cqrs_id>:<pk>`, so they keep their
/// order from the log to the replica.
pub fn record_stream(cqrs_id: &str, pk: &str) -> String {
    format!("cqrs.{cqrs_id}:{pk}")
}

/// Production stays off while this lives ([`Master::disable`], [`Master::disable_models`]).
#[must_use = "production is back on as soon as the guard drops"]
pub struct ProductionOff {
    switch: Arc<Mutex<Switch>>,
    models: Option<Vec<String>>,
}

impl Drop for ProductionOff {
    fn drop(&mut self) {
        let mut switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        match &self.models {
            None => switch.all_off -= 1,
            Some(models) => {
                for model in models {
                    if let Some(n) = switch.models_off.get_mut(model) {
                        *n -= 1;
                    }
                }
            }
        }
    }
}

/// A recorded django-cqrs message in the log, as the relay reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CqrsRecord<'a> {
    /// The exchange to publish to.
    pub exchange: &'a str,
    /// The routing key (`<cqrs_id>` or `cqrs.<queue>.<cqrs_id>`).
    pub routing_key: &'a str,
    /// The model's `CQRS_ID`.
    pub cqrs_id: &'a str,
    /// `SAVE`, `DELETE` or `SYNC`.
    pub signal_type: &'a str,
    /// The primary key, as text.
    pub pk: &'a str,
    /// The body to publish, byte for byte.
    pub body: &'a [u8],
}

impl<'a> CqrsRecord<'a> {
    /// The message in `notification`, or `None` if it is not one.
    pub fn of(notification: &'a Notification) -> Option<Self> {
        let facts = notification.event.metadata.get(CQRS_KEY)?;
        let field = |name: &str| facts.get(name).and_then(Value::as_str);
        Some(CqrsRecord {
            exchange: field("exchange")?,
            routing_key: field("routing_key")?,
            cqrs_id: field("cqrs_id")?,
            signal_type: field("signal_type")?,
            pk: field("pk")?,
            body: &notification.event.state,
        })
    }
}
