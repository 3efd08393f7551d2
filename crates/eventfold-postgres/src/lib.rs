//! The PostgreSQL store of eventfold.
//!
//! TODO docs

mod config;
mod error;
mod schema;
mod store;
mod wakeup;

pub mod bench;

pub use config::{redact_url, Ordering, PostgresConfig};
pub use schema::{MigrationReport, SCHEMA_VERSION};
pub use store::{save_in, PostgresStore, PostgresTransaction};
pub use wakeup::LISTENER_APPLICATION_NAME;

/// The backend name in errors and benchmarks.
pub const BACKEND: &str = "postgres";

/// The public futures can be spawned on a multi-threaded runtime (sqlx's generic
/// executors make that easy to break without noticing).
#[cfg(test)]
#[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
mod send_checks {
    use eventfold_core::{Application, Recording};

    use crate::bench::{self, BenchLength};
    use crate::{Ordering, PostgresConfig, PostgresStore};

    fn spawnable(config: PostgresConfig, store: PostgresStore, app: Application) {
        let c = config.clone();
        tokio::spawn(async move { PostgresStore::connect(&c).await });
        let c = config.clone();
        tokio::spawn(async move { PostgresStore::migrate_with(&c).await });
        let s = store.clone();
        tokio::spawn(async move { s.migrate().await });
        let s = store.clone();
        tokio::spawn(async move {
            let mut tx = s.pool().begin().await.unwrap();
            s.record_in(&mut tx, &Recording::default()).await
        });
        let s = store.clone();
        tokio::spawn(async move {
            let mut tx = s.pool().begin().await.unwrap();
            crate::save_in(&app, &s, &mut tx, &mut []).await
        });
        let c = config.clone();
        tokio::spawn(async move { bench::bare_insert_commit_rate(&c.url, 1).await });
        tokio::spawn(async move {
            bench::concurrent_writers(&config, 1, Ordering::TableLock, BenchLength::Count(1))
                .await
        });
    }
}
