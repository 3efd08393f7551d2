//! The transaction a projection writes its rows through.

use std::fmt;

use rusqlite::{Connection, Params};
use tokio::sync::OwnedMutexGuard;

use crate::schema;

/// An open `BEGIN IMMEDIATE` transaction on the store's write connection, handed to a
/// projection by [`eventfold_core::ProjectionStore::begin`].
///
/// The projection writes its read-model rows through [`SqliteTransaction::connection`];
/// [`eventfold_core::ProjectionStore::commit`] moves the follower's position in the same
/// transaction and commits, so the rows and the position change together or not at all.
/// Dropped without that commit (an error, a panic, a cancelled task), it rolls back.
///
/// While it is open it holds the store's write lock: the store's own writes wait for it,
/// so keep batches short, and never call the same store's `record` (or `begin`) from
/// inside it — that waits for this transaction, which waits for the caller.
pub struct SqliteTransaction {
    conn: OwnedMutexGuard<Connection>,
    open: bool,
}

impl SqliteTransaction {
    /// Starts the transaction on the (already locked) write connection.
    pub(crate) fn begin(conn: OwnedMutexGuard<Connection>) -> rusqlite::Result<Self> {
        conn.prepare_cached(schema::BEGIN_IMMEDIATE)?.execute([])?;
        Ok(SqliteTransaction { conn, open: true })
    }

    /// The connection, inside the open transaction: read and write the projection's
    /// tables with it (`prepare_cached` keeps repeated statements cheap). Do not run
    /// `COMMIT` or `ROLLBACK` on it yourself.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs one statement with `params` (prepared once per connection and cached) and
    /// returns the number of rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute(params)
    }

    /// Commits; on failure the transaction is rolled back when `self` drops.
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached(schema::COMMIT)?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        if self.open {
            schema::rollback_quietly(&self.conn);
        }
    }
}

impl fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTransaction")
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}
