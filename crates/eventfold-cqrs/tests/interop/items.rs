//! The `Item` of both Django projects on the Rust side: the master model (its serde form
//! is what django-cqrs's `to_cqrs_dict` writes), and the rows a replica keeps of it.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use eventfold_cqrs::master::{MasterModel, Pk};
use eventfold_cqrs::wire::{parse_datetime, python_datetime, CqrsMessage, SignalType};
use serde::Serialize;
use serde_json::{json, Map, Value};

use eventfold_testkit::django::query;

use crate::django::CQRS_ID;

/// `master_item` of tests/django/master, fields in Django's order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    pub id: i64,
    #[serde(rename = "cqrs_revision")]
    pub revision: i64,
    #[serde(rename = "cqrs_updated", with = "eventfold_cqrs::master::datetime")]
    pub updated: DateTime<Utc>,
    pub name: String,
    pub qty: i64,
    /// A DecimalField(decimal_places=2): a string on the wire.
    pub price: String,
    pub description: String,
    #[serde(with = "eventfold_cqrs::master::datetime")]
    pub created: DateTime<Utc>,
}

impl MasterModel for Item {
    const CQRS_ID: &'static str = CQRS_ID;

    fn pk(&self) -> Pk {
        self.id.into()
    }

    fn cqrs_revision(&self) -> i64 {
        self.revision
    }

    fn cqrs_updated(&self) -> DateTime<Utc> {
        self.updated
    }

    fn set_cqrs(&mut self, revision: i64, updated: DateTime<Utc>) {
        self.revision = revision;
        self.updated = updated;
    }
}

impl Item {
    pub fn new(id: i64, name: &str, at: DateTime<Utc>) -> Self {
        Item {
            id,
            revision: 0,
            updated: at,
            name: name.to_owned(),
            qty: id,
            price: format!("{id}.99"),
            description: format!("item {id}"),
            created: at,
        }
    }

    /// `instance_data` as django-cqrs's master writes it.
    pub fn data(&self) -> Map<String, Value> {
        let Value::Object(data) = serde_json::to_value(self).unwrap() else {
            unreachable!("a struct serializes to an object")
        };
        data
    }

    /// A SAVE or SYNC of it as it is, written by hand.
    pub fn message(&self, signal: SignalType) -> CqrsMessage {
        CqrsMessage::new(signal, CQRS_ID, Value::from(self.id), self.data())
    }

    /// A DELETE as the master sends it: `{id, cqrs_revision + 1, cqrs_updated}`.
    pub fn delete(&self, at: DateTime<Utc>) -> CqrsMessage {
        let Value::Object(data) = json!({
            "id": self.id,
            "cqrs_revision": self.revision + 1,
            "cqrs_updated": python_datetime(&at),
        }) else {
            unreachable!()
        };
        CqrsMessage::new(SignalType::Delete, CQRS_ID, Value::from(self.id), data)
    }

    /// The row a replica must hold for it.
    pub fn replica_row(&self) -> ReplicaRow {
        ReplicaRow {
            id: self.id,
            revision: self.revision,
            updated: self.updated,
            name: self.name.clone(),
            qty: self.qty,
            price: self.price.parse().unwrap(),
            description: self.description.clone(),
            created: self.created,
        }
    }
}

/// One replica row, as comparable across databases: datetimes parsed (Django keeps an
/// aware datetime in SQLite as naive UTC text), the decimal as a number (Django's SQLite
/// column has numeric affinity).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaRow {
    pub id: i64,
    pub revision: i64,
    pub updated: DateTime<Utc>,
    pub name: String,
    pub qty: i64,
    pub price: f64,
    pub description: String,
    pub created: DateTime<Utc>,
}

/// Every row of `table` in the SQLite file `database` (a Django project's, or a
/// replica store's), by id: columns `id, cqrs_revision, cqrs_updated, name, qty, price,
/// description, created`, datetimes as text in either of Python's forms.
pub fn rows(database: &Path, table: &str) -> BTreeMap<i64, ReplicaRow> {
    let sql = format!(
        "SELECT id, cqrs_revision, cqrs_updated, name, qty, CAST(price AS REAL), description, \
         created FROM {table} ORDER BY id"
    );
    let datetime = |v: &Value| {
        let text = v.as_str().unwrap();
        parse_datetime(text).unwrap_or_else(|| panic!("{table}: {text:?} is not a datetime"))
    };
    query(database, &sql)
        .iter()
        .map(|r| {
            let row = ReplicaRow {
                id: r[0].as_i64().unwrap(),
                revision: r[1].as_i64().unwrap(),
                updated: datetime(&r[2]),
                name: r[3].as_str().unwrap().to_owned(),
                qty: r[4].as_i64().unwrap(),
                price: r[5].as_f64().unwrap(),
                description: r[6].as_str().unwrap().to_owned(),
                created: datetime(&r[7]),
            };
            (row.id, row)
        })
        .collect()
}

/// The raw `cqrs_updated` text of row `id` in `table` of `database`.
pub fn stored_updated(database: &Path, table: &str, id: i64) -> String {
    let sql = format!("SELECT cqrs_updated FROM {table} WHERE id = {id}");
    query(database, &sql)[0][0].as_str().unwrap().to_owned()
}
