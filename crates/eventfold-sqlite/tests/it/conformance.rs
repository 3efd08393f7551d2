//! The conformance suite, run on an in-memory store and on a store in a temporary file.

use std::sync::Arc;

use async_trait::async_trait;
use eventfold_core::{
    EventReader, EventWriter, Loaded, Notification, NotificationQuery, NotificationReader,
    ProjectionStore, Recording, Result, Store, StoredEvent, StreamQuery, Tracking, TrackingReader,
};
use eventfold_sqlite::{SqliteConfig, SqliteStore, SqliteTransaction};
use tempfile::TempDir;

mod in_memory {
    async fn fresh_store() -> eventfold_sqlite::SqliteStore {
        eventfold_sqlite::SqliteStore::open_in_memory().unwrap()
    }

    eventfold_conformance::conformance_tests!(fresh_store);
}

mod on_file {
    async fn fresh_store() -> super::FileStore {
        super::FileStore::new()
    }

    eventfold_conformance::conformance_tests!(fresh_store);
}

/// A store on a file in its own temporary folder, removed with the last clone.
#[derive(Clone)]
pub struct FileStore {
    store: SqliteStore,
    _dir: Arc<TempDir>,
}

impl FileStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("store.db"))).unwrap();
        FileStore {
            store,
            _dir: Arc::new(dir),
        }
    }
}

#[async_trait]
impl EventReader for FileStore {
    async fn select_events(&self, stream_id: &str, query: StreamQuery) -> Result<Vec<StoredEvent>> {
        self.store.select_events(stream_id, query).await
    }
    async fn select_snapshots(
        &self,
        stream_id: &str,
        query: StreamQuery,
    ) -> Result<Vec<StoredEvent>> {
        self.store.select_snapshots(stream_id, query).await
    }
    async fn load(&self, stream_id: &str, up_to: Option<u64>) -> Result<Loaded> {
        self.store.load(stream_id, up_to).await
    }
}

#[async_trait]
impl EventWriter for FileStore {
    async fn record(&self, recording: &Recording) -> Result<Vec<u64>> {
        self.store.record(recording).await
    }
}

#[async_trait]
impl NotificationReader for FileStore {
    async fn select_notifications(&self, query: &NotificationQuery) -> Result<Vec<Notification>> {
        self.store.select_notifications(query).await
    }
    async fn max_notification_id(&self) -> Result<u64> {
        self.store.max_notification_id().await
    }
    fn wakeups(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.store.wakeups()
    }
}

#[async_trait]
impl TrackingReader for FileStore {
    async fn tracking_position(&self, follower: &str) -> Result<Option<u64>> {
        self.store.tracking_position(follower).await
    }
}

impl Store for FileStore {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
}

#[async_trait]
impl ProjectionStore for FileStore {
    type Transaction = SqliteTransaction;

    async fn begin(&self) -> Result<SqliteTransaction> {
        self.store.begin().await
    }
    async fn commit(&self, tx: SqliteTransaction, tracking: &Tracking) -> Result<()> {
        self.store.commit(tx, tracking).await
    }
    async fn position(&self, follower: &str) -> Result<Option<u64>> {
        self.store.position(follower).await
    }
}
