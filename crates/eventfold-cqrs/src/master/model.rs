//! What a master model is: its trait, its key, its options.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::wire::SignalType;

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

    pub(super) fn to_sql(&self) -> eventfold_core::SqlValue {
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

pub(super) type SerializeFn = dyn Fn(&dyn Any) -> Result<Map<String, Value>, String> + Send + Sync;
pub(super) type ModelMetaFn = dyn Fn(&dyn Any, &MetaContext<'_>) -> Value + Send + Sync;
pub(super) type DeleteDataFn = dyn Fn(&dyn Any) -> Option<Value> + Send + Sync;

/// Options of one master model.
pub struct ModelOptions<M: MasterModel> {
    pub(super) table: String,
    pub(super) pk_column: String,
    pub(super) revision_column: String,
    pub(super) updated_column: String,
    pub(super) pk_type: Option<String>,
    pub(super) fields: Fields,
    pub(super) serializer: Option<Arc<SerializeFn>>,
    pub(super) tracked: Option<Fields>,
    pub(super) meta: Option<Arc<ModelMetaFn>>,
    pub(super) delete_data: Option<Arc<DeleteDataFn>>,
    pub(super) produce: bool,
    pub(super) model: PhantomData<fn(&M)>,
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
            model: PhantomData,
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
        self.serializer = Some(Arc::new(move |any: &dyn Any| {
            match serializer(downcast(any)) {
                Value::Object(map) => Ok(map),
                other => Err(format!("the serializer returned {other}, not an object")),
            }
        }));
        self
    }

    /// Tracks these fields of the serde form (`CQRS_TRACKED_FIELDS`): a save sends the old
    /// values of those that changed as `previous_data` (`null` for each set field on a
    /// create), so an update needs the previous instance ([`Save::previous`](super::Save::previous)).
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
    /// as `meta`. It takes precedence over [`Master::meta_function`](super::Master::meta_function).
    pub fn meta(
        mut self,
        meta: impl Fn(&M, &MetaContext<'_>) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.meta = Some(Arc::new(move |any: &dyn Any, cx: &MetaContext<'_>| {
            meta(downcast(any), cx)
        }));
        self
    }

    /// Extra data of a DELETE, sent as `instance_data.custom` when it is `Some`
    /// (`get_custom_cqrs_delete_data`).
    pub fn delete_data(
        mut self,
        data: impl Fn(&M) -> Option<Value> + Send + Sync + 'static,
    ) -> Self {
        self.delete_data = Some(Arc::new(move |any: &dyn Any| data(downcast(any))));
        self
    }

    /// Whether the model produces messages at all (`CQRS_PRODUCE`, default true). Its
    /// revisions are bumped either way.
    pub fn produce(mut self, produce: bool) -> Self {
        self.produce = produce;
        self
    }
}

pub(super) fn downcast<M: 'static>(any: &dyn Any) -> &M {
    any.downcast_ref::<M>()
        .expect("registered under its own type id")
}

pub(super) fn serde_map<M: Serialize>(instance: &M) -> Result<Map<String, Value>, String> {
    match serde_json::to_value(instance).map_err(|e| e.to_string())? {
        Value::Object(map) => Ok(map),
        other => Err(format!("its serde form is not an object but {other}")),
    }
}
