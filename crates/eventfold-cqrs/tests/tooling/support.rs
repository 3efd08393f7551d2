//! A database per test: a SQLite file in a temporary directory, or a PostgreSQL schema of
//! its own (dropped at the end, also when the test fails).

use std::sync::Arc;

use eventfold_core::{Store, Transaction};
use eventfold_postgres::{PostgresConfig, PostgresStore};
use eventfold_sqlite::{SqliteConfig, SqliteStore};

pub fn database_url() -> String {
    std::env::var("EVENTFOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One test database and the store on it.
pub struct Db {
    pub store: Arc<dyn Store>,
    /// The PostgreSQL schema the tables go in (`None` on SQLite).
    pub schema: Option<String>,
    _guard: Guard,
}

enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(PostgresConfig),
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Guard::Postgres(config) = self else {
            return;
        };
        let config = config.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let store = PostgresStore::connect(&config).await?;
                let mut tx = store.begin().await?;
                tx.execute(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema), &[])
                    .await?;
                tx.commit().await?;
                store.close().await;
                Ok::<_, eventfold_core::Error>(())
            })
        })
        .join();
    }
}

impl Db {
    pub fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("db.sqlite3"))).unwrap();
        Db {
            store: Arc::new(store),
            schema: None,
            _guard: Guard::Sqlite(dir),
        }
    }

    pub async fn postgres() -> Db {
        let schema = format!(
            "eventfold_test_cqrs_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut config = PostgresConfig::new(database_url());
        config.schema = schema.clone();
        config.max_connections = 2;
        let guard = Guard::Postgres(config.clone());
        let store = PostgresStore::connect(&config).await.unwrap();
        Db {
            store: Arc::new(store),
            schema: Some(schema),
            _guard: guard,
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.schema.is_some()
    }

    /// `name`, qualified with the test's schema on PostgreSQL.
    pub fn table(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{name}\""),
            None => format!("\"{name}\""),
        }
    }

    pub async fn begin(&self) -> Transaction {
        self.store.begin().await.unwrap()
    }

    /// Runs statements in one transaction.
    pub async fn exec(&self, statements: &[&str]) {
        let mut tx = self.begin().await;
        for sql in statements {
            tx.execute(sql, &[]).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Creates the test table `name` with one column of each kind the tables map.
    pub async fn create_items(&self, name: &str) {
        let sql = if self.is_postgres() {
            format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, title VARCHAR(100) NOT NULL, \
                 active BOOLEAN, price NUMERIC(10,2), born DATE, tags JSONB, \
                 seen TIMESTAMP, ratio DOUBLE PRECISION, \
                 cqrs_revision INTEGER NOT NULL, cqrs_updated TIMESTAMPTZ NOT NULL)",
                self.table(name)
            )
        } else {
            format!(
                "CREATE TABLE {} (id INTEGER PRIMARY KEY, title VARCHAR(100) NOT NULL, \
                 active BOOL, price DECIMAL(10,2), born DATE, tags JSON, \
                 seen TIMESTAMP WITHOUT TIME ZONE, ratio REAL, \
                 cqrs_revision INTEGER NOT NULL, cqrs_updated DATETIME NOT NULL)",
                self.table(name)
            )
        };
        self.exec(&[&sql]).await;
    }
}

/// Runs an async test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$body($crate::support::Db::sqlite()).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$body($crate::support::Db::postgres().await).await;
            }
        }
    };
}
