//! Change events from data models: every create, update and delete of a registered model
//! becomes a **change record in the caller's own transaction**, in eventfold's
//! notification log, so the row and its event commit or roll back together. The relay
//! (`eventfold-amqp`) then publishes each record in nameko's wire format, as
//! `django-events-sourcing` does, but from the log, after the commit, with publisher
//! confirms: nothing is published for a rolled-back save, and nothing is lost when the
//! broker is down.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use eventfold_changes::{Changes, Model};
//! use eventfold_core::{NotificationQuery, NotificationReader, Store};
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct Order { id: i64, customer: String, qty: i32, amount: String }
//!
//! impl Model for Order {
//!     const NAME: &'static str = "order";
//!     fn key(&self) -> String { self.id.to_string() }
//! }
//!
//! let store = eventfold_core::InMemoryStore::new();
//! let changes = Changes::new("orders").register::<Order>();
//!
//! let order = Order { id: 1, customer: "sample".into(), qty: 3, amount: "99.90".into() };
//! let mut tx = store.begin().await?;
//! // ... the caller's own INSERT of the row goes through `tx` here ...
//! changes.created(&mut tx, &order).await?;
//! tx.commit().await?;
//!
//! let log = store.select_notifications(&NotificationQuery::after(0, 10)).await?;
//! let change = eventfold_changes::ChangeRecord::of(&log[0]).unwrap();
//! assert_eq!(change.service, "orders");
//! assert_eq!(change.event_type, "order__created");
//! assert_eq!(log[0].event.state, br#"{"id": 1, "customer": "sample", "qty": 3, "amount": "99.90"}"#);
//! # Ok::<(), eventfold_changes::Error>(())
//! # }).unwrap();
//! ```
//!
//! # What is recorded
//!
//! One record per change, appended (no version needed: the store allocates it) to the
//! instance's own stream `<service>.<model>:<key>`, so the records of one instance keep
//! their order from the log to the consumer. The topic is `<service>.<event type>`; the
//! payload is the body to publish, as JSON written the way Python's `json.dumps` writes
//! it (`eventfold_amqp::nameko::python_json`); the metadata holds [`ChangeRecord`]'s routing facts under
//! [`CHANGE_KEY`] next to the caller's own (a correlation id, `nameko.*` headers).
//!
//! Event types follow django-events-sourcing: `<model>__created`, `<model>__updated`,
//! `<model>__deleted`; a model that names a status field ([`Model::status`]) gets
//! `<model>__<status>` for saves instead (a delete stays `__deleted`).
//!
//! # What a change record costs
//!
//! A record is one [`Recording::append`](eventfold_core::Recording::append) in the
//! caller's transaction: one more row in the log, with its keys and indexes. Measured
//! with `eventfold bench changes --phases baseline,floor,record_only` (the same saves:
//! the row alone; the row and one plain INSERT of a row as large as the record into a
//! table with the log's keys and indexes; the row and its change record):
//!
//! * SQLite: ~80,000 instructions per save with the record against ~32,700 for the row
//!   alone and ~81,000 for the row and the plain INSERT (callgrind): the record costs
//!   what any extra row of its size costs. Most of it is the insert into three b-trees
//!   (the table, the stream-version key, the topic index) and writing their pages to the
//!   write-ahead log at the commit. So on SQLite a save with its record runs at about
//!   0.4 of the row alone, and no outbox that stores the record in the same transaction
//!   can do much better.
//! * PostgreSQL: 4 statements per save (`BEGIN`, the row, the record, `COMMIT`), as for
//!   the row and a plain INSERT, against 3 for the row alone (the store's one-statement
//!   append, see the `eventfold-postgres` docs, "Appends").
//!
//! # Switching dispatch off
//!
//! [`Changes::disable`] (every model) and [`Changes::disable_models`] return a guard:
//! while it lives, changes of those models record nothing. Tests hold one; the models'
//! code does not change.

pub mod drf;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use eventfold_core::{Metadata, Notification, Recording, StoredEvent, Timestamp, Transaction};
use serde::Serialize;

/// The metadata key under which a change record keeps its routing facts.
pub const CHANGE_KEY: &str = "eventfold.change";

/// What can go wrong recording a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model was never registered with [`Changes::register`].
    #[error("model {0} is not registered for change events (Changes::register)")]
    NotRegistered(&'static str),
    /// The model's payload could not be serialized (the message does not show it).
    #[error("cannot serialize the {model} payload: {source}")]
    Serialize {
        /// The model name.
        model: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] eventfold_core::Error),
}

/// A data model whose changes become events: a plain serde struct, saved by the
/// caller's own SQL.
pub trait Model: Serialize + Send + Sync + 'static {
    /// The model name, lower case as Django names it (`"order"` for `Order`).
    const NAME: &'static str;

    /// The instance's primary key, as text: it keys the instance's stream (and so its order).
    fn key(&self) -> String;

    /// The status field's value, for models whose saves are named after it
    /// (`order__paid`); `None` (the default) names saves `__created` / `__updated`.
    fn status(&self) -> Option<String> {
        None
    }
}

/// Which kind of change happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new row.
    Created,
    /// A changed row.
    Updated,
    /// A removed row.
    Deleted,
}

type SerializeFn = dyn Fn(&dyn Any) -> serde_json::Result<Vec<u8>> + Send + Sync;

#[derive(Clone)]
struct Registered {
    name: String,
    serialize: Arc<SerializeFn>,
}

/// A model's own serializer (what a DRF serializer class does).
type Serializer<M> = dyn Fn(&M) -> serde_json::Value + Send + Sync;

/// Options of one registered model: its event name and its serializer.
pub struct ModelOptions<M: Model> {
    name: String,
    serializer: Option<Box<Serializer<M>>>,
}

impl<M: Model> Default for ModelOptions<M> {
    fn default() -> Self {
        ModelOptions {
            name: M::NAME.to_owned(),
            serializer: None,
        }
    }
}

impl<M: Model> ModelOptions<M> {
    /// The defaults: [`Model::NAME`] and the model's serde form.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the model's events `<name>__...` instead of [`Model::NAME`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Publishes what `serializer` returns instead of the model's serde form (as a DRF
    /// serializer class does). Its keys keep the order the function builds them in.
    pub fn serializer(
        mut self,
        serializer: impl Fn(&M) -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        self.serializer = Some(Box::new(serializer));
        self
    }
}

/// The registered models of one service, and the switch that turns their dispatch off.
/// Cheap to clone; clones share the switch.
#[derive(Clone)]
pub struct Changes {
    service: Arc<str>,
    models: Arc<HashMap<TypeId, Registered>>,
    switch: eventfold_core::OffSwitch,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("service", &self.service)
            .field(
                "models",
                &self.models.values().map(|m| &m.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Changes {
    /// Change events of `service` (the nameko source service: exchange `<service>.events`).
    pub fn new(service: impl Into<String>) -> Self {
        Changes {
            service: service.into().into(),
            models: Arc::new(HashMap::new()),
            switch: eventfold_core::OffSwitch::new(),
        }
    }

    /// Registers `M` with the default options.
    pub fn register<M: Model>(self) -> Self {
        self.register_with::<M>(ModelOptions::default())
    }

    /// Registers `M` with `options`.
    pub fn register_with<M: Model>(mut self, options: ModelOptions<M>) -> Self {
        let ModelOptions { name, serializer } = options;
        let serialize: Arc<SerializeFn> = match serializer {
            Some(serializer) => Arc::new(move |any: &dyn Any| {
                let model = any
                    .downcast_ref::<M>()
                    .expect("registered under its own type id");
                eventfold_amqp::nameko::python_json(&serializer(model))
            }),
            None => Arc::new(|any: &dyn Any| {
                eventfold_amqp::nameko::python_json(
                    any.downcast_ref::<M>()
                        .expect("registered under its own type id"),
                )
            }),
        };
        Arc::make_mut(&mut self.models).insert(TypeId::of::<M>(), Registered { name, serialize });
        self
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Records that `instance` was created, in `tx`. Returns its notification id, or
    /// `None` when dispatch is switched off for it.
    pub async fn created<M: Model>(
        &self,
        tx: &mut Transaction,
        instance: &M,
    ) -> Result<Option<u64>, Error> {
        self.record(tx, Change::Created, instance, &Metadata::default())
            .await
    }

    /// Records that `instance` was updated, in `tx`.
    pub async fn updated<M: Model>(
        &self,
        tx: &mut Transaction,
        instance: &M,
    ) -> Result<Option<u64>, Error> {
        self.record(tx, Change::Updated, instance, &Metadata::default())
            .await
    }

    /// Records that `instance` was deleted, in `tx` (its last state is the payload).
    pub async fn deleted<M: Model>(
        &self,
        tx: &mut Transaction,
        instance: &M,
    ) -> Result<Option<u64>, Error> {
        self.record(tx, Change::Deleted, instance, &Metadata::default())
            .await
    }

    /// Records `change` of `instance` in `tx`, with the caller's `metadata` (a correlation
    /// id; `nameko.*` keys become the message's nameko headers).
    pub async fn record<M: Model>(
        &self,
        tx: &mut Transaction,
        change: Change,
        instance: &M,
        metadata: &Metadata,
    ) -> Result<Option<u64>, Error> {
        let model = self
            .models
            .get(&TypeId::of::<M>())
            .ok_or(Error::NotRegistered(M::NAME))?;
        if !self.dispatching(&model.name) {
            return Ok(None);
        }
        let event_type = event_type(&model.name, change, instance.status().as_deref());
        let body = (model.serialize)(instance).map_err(|source| Error::Serialize {
            model: model.name.clone(),
            source,
        })?;
        let key = instance.key();
        let mut metadata = metadata.clone();
        metadata.insert(
            CHANGE_KEY,
            serde_json::json!({
                "service": &*self.service,
                "model": &model.name,
                "event_type": &event_type,
                "key": &key,
            }),
        );
        let record = StoredEvent::new(
            format!("{}.{}:{key}", self.service, model.name),
            0,
            format!("{}.{event_type}", self.service),
            Timestamp::now(),
            body,
        )
        .with_metadata(metadata);
        let ids = tx.record(&Recording::new().append(record)).await?;
        Ok(ids.first().copied())
    }

    fn dispatching(&self, model: &str) -> bool {
        self.switch.is_on(model)
    }

    /// Switches dispatch off for every model while the guard lives.
    pub fn disable(&self) -> DispatchOff {
        self.switch.off_all()
    }

    /// Switches dispatch off for the models named (as registered) while the guard lives.
    pub fn disable_models(&self, models: &[&str]) -> DispatchOff {
        self.switch.off_for(models)
    }
}

/// Dispatch stays off while the guard lives ([`Changes::disable`], [`Changes::disable_models`]).
pub type DispatchOff = eventfold_core::OffGuard;

/// The event type django-events-sourcing gives a change: `<model>__created`,
/// `<model>__updated`, `<model>__deleted`, or `<model>__<status>` for saves of a model
/// with a status field.
pub fn event_type(model: &str, change: Change, status: Option<&str>) -> String {
    let suffix = match (change, status) {
        (Change::Deleted, _) => "deleted",
        (_, Some(status)) => status,
        (Change::Created, None) => "created",
        (Change::Updated, None) => "updated",
    };
    format!("{model}__{suffix}")
}

/// The routing facts of a change record in the log, for the relay's nameko codec.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeRecord<'a> {
    /// The source service (exchange `<service>.events`).
    pub service: &'a str,
    /// The model name.
    pub model: &'a str,
    /// The event type (the routing key).
    pub event_type: &'a str,
    /// The instance key.
    pub key: &'a str,
    /// The body to publish.
    pub body: &'a [u8],
}

impl<'a> ChangeRecord<'a> {
    /// The change record in `notification`, or `None` if it is not one.
    pub fn of(notification: &'a Notification) -> Option<Self> {
        let facts = notification.event.metadata.get(CHANGE_KEY)?;
        let field = |name: &str| facts.get(name).and_then(|v| v.as_str());
        Some(ChangeRecord {
            service: field("service")?,
            model: field("model")?,
            event_type: field("event_type")?,
            key: field("key")?,
            body: &notification.event.state,
        })
    }
}
