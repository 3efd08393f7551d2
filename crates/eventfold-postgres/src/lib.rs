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
