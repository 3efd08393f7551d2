//! A plain table as a replica model.

use eventfold_core::{async_trait, BoxError, Transaction};
use serde_json::{Map, Value};

use super::pk_key;
use super::{Table, TableError};
use crate::replica::{Change, Rejected, ReplicaModel, RowWrite, WriteKind};

/// A plain [`Table`] as a [`ReplicaModel`]: a create or update upserts the row by its
/// primary key (revision and updated columns included), a delete deletes it. A batch
/// is read with one `IN (...)` query and written with one multi-row DELETE and one
/// multi-row upsert ([`Table::delete_many`], [`Table::upsert_many`]). Data that
/// does not fit the table (no primary key, a value its column cannot take) is
/// [`Rejected`], so dead-lettered with the reason; a database error is retried.
#[derive(Debug, Clone)]
pub struct TableReplica {
    table: Table,
}

impl TableReplica {
    /// The replica model of `table` (opened with [`super::Role::Replica`]).
    pub fn new(table: Table) -> Self {
        TableReplica { table }
    }

    /// The table it writes.
    pub fn table(&self) -> &Table {
        &self.table
    }
}

fn hook_error(e: TableError) -> BoxError {
    match e {
        TableError::BadData { .. } => Rejected(e.to_string()).into(),
        other => other.into(),
    }
}

#[async_trait]
impl ReplicaModel for TableReplica {
    fn cqrs_id(&self) -> &str {
        self.table.cqrs_id()
    }

    async fn stored_revision(
        &self,
        tx: &mut Transaction,
        pk: &Value,
    ) -> Result<Option<i64>, BoxError> {
        self.table.stored_revision(tx, pk).await.map_err(hook_error)
    }

    async fn stored_revisions(
        &self,
        tx: &mut Transaction,
        pks: &[&Value],
    ) -> Result<Option<Vec<Option<i64>>>, BoxError> {
        let found = self
            .table
            .stored_revisions(tx, pks)
            .await
            .map_err(hook_error)?;
        Ok(Some(
            pks.iter()
                .map(|pk| found.get(&pk_key(pk)).copied())
                .collect(),
        ))
    }

    fn map_fields(&self, data: &Map<String, Value>) -> Map<String, Value> {
        self.table.mapping().apply(data)
    }

    async fn create(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        self.table.upsert(tx, change.data).await.map_err(hook_error)
    }

    async fn update(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        self.table.upsert(tx, change.data).await.map_err(hook_error)
    }

    async fn delete(&self, tx: &mut Transaction, change: &Change<'_>) -> Result<(), BoxError> {
        self.table
            .delete(tx, change.pk)
            .await
            .map(drop)
            .map_err(hook_error)
    }

    async fn write_batch(
        &self,
        tx: &mut Transaction,
        writes: &[RowWrite<'_>],
    ) -> Result<(), BoxError> {
        let (deletes, saves): (Vec<&RowWrite<'_>>, Vec<_>) =
            writes.iter().partition(|w| w.kind == WriteKind::Delete);
        let pks: Vec<&Value> = deletes.iter().map(|w| w.change.pk).collect();
        self.table.delete_many(tx, &pks).await.map_err(hook_error)?;
        let rows: Vec<&Map<String, Value>> = saves.iter().map(|w| w.change.data).collect();
        self.table.upsert_many(tx, &rows).await.map_err(hook_error)
    }
}
