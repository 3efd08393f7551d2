//! The conformance suite, run on an in-memory store and on a store in a temporary file.

use eventfold_conformance::Guarded;
use eventfold_sqlite::{SqliteConfig, SqliteStore};
use tempfile::TempDir;

mod in_memory {
    async fn fresh_store() -> eventfold_sqlite::SqliteStore {
        eventfold_sqlite::SqliteStore::open_in_memory().unwrap()
    }

    eventfold_conformance::conformance_tests!(fresh_store);
}

mod on_file {
    async fn fresh_store() -> super::FileStore {
        super::file_store()
    }

    eventfold_conformance::conformance_tests!(fresh_store);
}

/// A store on a file in its own temporary folder, removed with the last clone.
pub type FileStore = Guarded<SqliteStore, TempDir>;

fn file_store() -> FileStore {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("store.db"))).unwrap();
    Guarded::new(store, dir)
}
