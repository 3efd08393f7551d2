//! The captured `Item` model, a clock the tests set, and stores: SQLite, and PostgreSQL in a
//! schema of its own per test (dropped by a guard, even when the test panics).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use eventfold_core::{Notification, NotificationQuery, SqlValue, Store, Transaction};
use eventfold_cqrs::master::{MasterModel, Pk};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use eventfold_sqlite::SqliteStore;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// The model of the captures (shared/peers/cqrs_services: `Item(MasterMixin)`), fields in
/// Django's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub id: i64,
    pub cqrs_revision: i64,
    #[serde(with = "eventfold_cqrs::master::datetime")]
    pub cqrs_updated: DateTime<Utc>,
    pub name: String,
    pub qty: i64,
    pub price: String,
    pub description: String,
    #[serde(with = "eventfold_cqrs::master::datetime")]
    pub created: DateTime<Utc>,
}

impl MasterModel for Item {
    const CQRS_ID: &'static str = "item";
    fn pk(&self) -> Pk {
        self.id.into()
    }
    fn cqrs_revision(&self) -> i64 {
        self.cqrs_revision
    }
    fn cqrs_updated(&self) -> DateTime<Utc> {
        self.cqrs_updated
    }
    fn set_cqrs(&mut self, revision: i64, updated: DateTime<Utc>) {
        self.cqrs_revision = revision;
        self.cqrs_updated = updated;
    }
}

pub fn at(text: &str) -> DateTime<Utc> {
    eventfold_cqrs::wire::parse_datetime(text).unwrap()
}

/// The captured item before its first save.
pub fn sample() -> Item {
    Item {
        id: 2,
        cqrs_revision: -1,
        cqrs_updated: DateTime::UNIX_EPOCH,
        name: "sample".into(),
        qty: 1,
        price: "9.99".into(),
        description: "captured on the wire".into(),
        created: at("2026-11-23 00:41:49.191759+00:00"),
    }
}

/// A clock the test moves.
#[derive(Clone)]
pub struct Clock(Arc<Mutex<DateTime<Utc>>>);

impl Clock {
    pub fn new(start: &str) -> Self {
        Clock(Arc::new(Mutex::new(at(start))))
    }
    pub fn set(&self, text: &str) {
        *self.0.lock().unwrap() = at(text);
    }
    pub fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
    pub fn master(&self) -> eventfold_cqrs::master::Master {
        let clock = self.clone();
        eventfold_cqrs::master::Master::new().clock(move || clock.now())
    }
}

/// The captured bodies: create (rev 0), update (rev 1), delete (rev 2).
pub fn captured() -> Vec<Value> {
    let text = include_str!("../fixtures/django_cqrs_envelopes.json");
    let v: Value = serde_json::from_str(text).unwrap();
    v["messages"].as_array().unwrap().clone()
}

/// Where the item table is and how its SQL is spelled on each backend.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    postgres: bool,
}

impl Table {
    fn cast(&self, param: &str, ty: &str) -> String {
        if self.postgres {
            format!("CAST({param} AS {ty})")
        } else {
            param.to_owned()
        }
    }

    pub async fn create(&self, tx: &mut Transaction) {
        let (updated, price) = if self.postgres {
            ("TIMESTAMPTZ", "NUMERIC(10, 2)")
        } else {
            ("TEXT", "TEXT")
        };
        tx.execute(
            &format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, cqrs_revision INTEGER NOT NULL DEFAULT 0, \
                 cqrs_updated {updated} NOT NULL, name TEXT NOT NULL, qty INTEGER NOT NULL, \
                 price {price} NOT NULL, description TEXT NOT NULL, created {updated} NOT NULL)",
                self.name
            ),
            &[],
        )
        .await
        .unwrap();
    }

    /// The caller's INSERT, with the revision and time eventfold set on `item`.
    pub async fn insert(&self, tx: &mut Transaction, item: &Item) {
        let sql = format!(
            "INSERT INTO {} (id, cqrs_revision, cqrs_updated, name, qty, price, description, created) \
             VALUES ($1, $2, {}, $4, $5, {}, $7, {})",
            self.name,
            self.cast("$3", "TIMESTAMPTZ"),
            self.cast("$6", "NUMERIC"),
            self.cast("$8", "TIMESTAMPTZ"),
        );
        tx.execute(&sql, &row(item)).await.unwrap();
    }

    /// The caller's UPDATE of every column.
    pub async fn update(&self, tx: &mut Transaction, item: &Item) {
        let sql = format!(
            "UPDATE {} SET cqrs_revision = $2, cqrs_updated = {}, name = $4, qty = $5, price = {}, \
             description = $7, created = {} WHERE id = $1",
            self.name,
            self.cast("$3", "TIMESTAMPTZ"),
            self.cast("$6", "NUMERIC"),
            self.cast("$8", "TIMESTAMPTZ"),
        );
        assert_eq!(tx.execute(&sql, &row(item)).await.unwrap(), 1);
    }

    pub async fn delete(&self, tx: &mut Transaction, id: i64) {
        tx.execute(
            &format!("DELETE FROM {} WHERE id = $1", self.name),
            &[id.into()],
        )
        .await
        .unwrap();
    }

    /// The row's revision, `None` when there is no row.
    pub async fn revision(&self, store: &dyn Store, id: i64) -> Option<i64> {
        let mut tx = store.begin().await.unwrap();
        let rows = tx
            .query(
                &format!("SELECT cqrs_revision FROM {} WHERE id = $1", self.name),
                &[id.into()],
            )
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        rows.first().map(|r| r[0].as_i64().unwrap())
    }
}

fn row(item: &Item) -> Vec<SqlValue> {
    vec![
        item.id.into(),
        item.cqrs_revision.into(),
        item.cqrs_updated.to_rfc3339().into(),
        item.name.as_str().into(),
        item.qty.into(),
        item.price.as_str().into(),
        item.description.as_str().into(),
        item.created.to_rfc3339().into(),
    ]
}

impl Table {
    /// The `item` table on SQLite.
    pub fn sqlite() -> Self {
        Table {
            name: "item".into(),
            postgres: false,
        }
    }
}

/// An SQLite store in memory with an empty `item` table.
pub async fn sqlite() -> (Arc<dyn Store>, Table) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let table = Table::sqlite();
    let mut tx = store.begin().await.unwrap();
    table.create(&mut tx).await;
    tx.commit().await.unwrap();
    (store, table)
}

/// `EVENTFOLD_TEST_DATABASE_URL`, or the local server.
pub fn database_url() -> String {
    std::env::var("EVENTFOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Drops its schema (and everything in it) when dropped, also when the test panics.
pub struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut conn = PgConnection::connect(&database_url()).await?;
                    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                })
        })
        .join();
    }
}

/// A PostgreSQL store in a fresh schema, with an empty `<schema>.item` table.
pub async fn postgres(tag: &str) -> (Arc<dyn Store>, Table, SchemaGuard) {
    let schema = format!(
        "eventfold_test_cqrs_{tag}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let guard = SchemaGuard(schema.clone());
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&config).await.unwrap());
    let table = Table {
        name: format!("{schema}.item"),
        postgres: true,
    };
    let mut tx = store.begin().await.unwrap();
    table.create(&mut tx).await;
    tx.commit().await.unwrap();
    (store, table, guard)
}

/// Every notification in the log.
pub async fn log(store: &dyn Store) -> Vec<Notification> {
    store
        .select_notifications(&NotificationQuery::after(0, 10_000))
        .await
        .unwrap()
}

pub fn body(n: &Notification) -> String {
    String::from_utf8(n.event.state.clone()).unwrap()
}
