//! [`SqliteTransaction`]: the store's [`eventfold_core::Transaction`] on SQLite, and the
//! extension trait that reaches its connection.

use std::any::Any;
use std::fmt;

use async_trait::async_trait;
use eventfold_core::{Error, Recording, Result, SqlRow, SqlValue, StoreTransaction, Transaction};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, Statement};
use tokio::sync::OwnedMutexGuard;

use crate::store::{write_recording, SqliteStore};
use crate::{schema, sql_error};

/// An open `BEGIN IMMEDIATE` transaction on the store's write connection: what
/// [`eventfold_core::Store::begin`] returns on SQLite, inside an
/// [`eventfold_core::Transaction`].
///
/// Everything written into it commits or rolls back together: the caller's own rows
/// (through [`SqliteTransactionExt::sqlite`] and [`rusqlite`], or through the portable
/// [`Transaction::execute`] and [`Transaction::query`] with `$1, $2, ...` placeholders),
/// and eventfold's records ([`Transaction::record`], [`Transaction::track`]). Dropped
/// without a commit (an error, a panic, a cancelled task), it rolls back.
///
/// Each [`Transaction::record`] of more than one write runs inside a `SAVEPOINT`: a
/// recording that fails (a [conflict](eventfold_core::Error::Conflict)) leaves the
/// transaction as it was before the call, so its earlier writes can still commit (a
/// recording of one write is one statement, which SQLite undoes by itself).
///
/// While it is open it holds the store's write lock: the store's own writes wait for it,
/// so keep it short, and never call the same store's `record` (or `begin`) from inside
/// it; that waits for this transaction, which waits for the caller.
pub struct SqliteTransaction {
    store: SqliteStore,
    conn: OwnedMutexGuard<Connection>,
    open: bool,
    /// Whether a recording with events committed into it (followers are woken after the
    /// commit).
    recorded: bool,
}

impl SqliteTransaction {
    /// Starts the transaction on the (already locked) write connection.
    pub(crate) fn begin(
        store: SqliteStore,
        conn: OwnedMutexGuard<Connection>,
    ) -> rusqlite::Result<Self> {
        conn.prepare_cached(schema::BEGIN_IMMEDIATE)?.execute([])?;
        Ok(SqliteTransaction {
            store,
            conn,
            open: true,
            recorded: false,
        })
    }

    /// The connection, inside the open transaction: read and write your own tables with
    /// it (`prepare_cached` keeps repeated statements cheap). Do not run `COMMIT`,
    /// `ROLLBACK` or `RELEASE` on it yourself.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Fails if the transaction is no longer open: SQLite rolls it back by itself after
    /// some errors (a full disk, an I/O error), and a statement run after that would
    /// commit on its own, outside the transaction.
    fn ensure_open(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            return Err(Error::backend(
                "sqlite",
                "the transaction is no longer open: SQLite rolled it back after an error",
            ));
        }
        Ok(())
    }

    /// Runs `f` inside `SAVEPOINT ... RELEASE`; on error rolls back to the savepoint, so
    /// the transaction is as it was before.
    fn in_savepoint<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = &*self.conn;
        run(conn, schema::SAVEPOINT)?;
        match f(conn) {
            Ok(value) => {
                run(conn, schema::RELEASE)?;
                Ok(value)
            }
            Err(e) => {
                // If SQLite already rolled the whole transaction back, there is no
                // savepoint left; the next statement or the commit reports it.
                if !conn.is_autocommit() {
                    if let Err(undo) =
                        run(conn, schema::ROLLBACK_TO).and_then(|()| run(conn, schema::RELEASE))
                    {
                        tracing::warn!(error = %undo, "sqlite rollback to savepoint failed");
                    }
                }
                Err(e)
            }
        }
    }
}

/// How many statements writing `recording` runs (each event, append and snapshot is one,
/// and so is the follower position).
fn writes(recording: &Recording) -> usize {
    recording.events.len()
        + recording.appends.len()
        + recording.snapshots.len()
        + usize::from(recording.tracking.is_some())
}

/// Runs one of the store's own statements, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(sql_error)
}

/// Prepares `sql` (cached) and binds `params` to `$1, $2, ...` by name, so the
/// placeholders may appear in any order and more than once.
fn bind<'c>(
    conn: &'c Connection,
    sql: &str,
    params: &[SqlValue],
) -> Result<rusqlite::CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error)?;
    bind_params(&mut stmt, params)?;
    Ok(stmt)
}

fn bind_params(stmt: &mut Statement<'_>, params: &[SqlValue]) -> Result<()> {
    for (i, value) in params.iter().enumerate() {
        let name = format!("${}", i + 1);
        let Some(index) = stmt.parameter_index(&name).map_err(sql_error)? else {
            return Err(Error::backend(
                "sqlite",
                format!(
                    "{} values given, but the statement has no placeholder {name}",
                    params.len()
                ),
            ));
        };
        let value = match value {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
            other => {
                return Err(Error::backend(
                    "sqlite",
                    format!("cannot bind {other:?} to {name}"),
                ))
            }
        };
        stmt.raw_bind_parameter(index, ToSqlOutput::Borrowed(value))
            .map_err(sql_error)?;
    }
    // `$n` names each parameter once, however often it appears; any other placeholder
    // (`?`, `:name`) or a `$n` beyond the values would silently be NULL.
    if stmt.parameter_count() != params.len() {
        return Err(Error::backend(
            "sqlite",
            format!(
                "the statement has {} placeholders, {} values given (use $1, $2, ...)",
                stmt.parameter_count(),
                params.len()
            ),
        ));
    }
    Ok(())
}

fn read_value(value: ValueRef<'_>) -> SqlValue {
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(bytes) => SqlValue::Text(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => SqlValue::Blob(bytes.to_vec()),
    }
}

#[async_trait]
impl StoreTransaction for SqliteTransaction {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Writes the recording inside a savepoint: on error (a conflict) nothing of it stays,
    /// and the rest of the transaction can still commit.
    ///
    /// A recording of one write (one event, append, snapshot or position: a change record,
    /// a one-event command) needs no savepoint: SQLite undoes a failed statement by itself
    /// and leaves the transaction open, and a conflict found without a failing statement
    /// (a gap, a follower behind) writes nothing. Skipping `SAVEPOINT`, `RELEASE` and the
    /// sub-journal's page copies saves ~7,500 of the ~116,000 instructions of a save with
    /// a change record (callgrind, `eventfold bench changes --backend sqlite`).
    async fn record(&mut self, recording: &Recording) -> Result<Vec<u64>> {
        self.ensure_open()?;
        let ids = if writes(recording) == 1 {
            write_recording(&self.conn, recording)?
        } else {
            self.in_savepoint(|conn| write_recording(conn, recording))?
        };
        self.recorded |= !ids.is_empty();
        Ok(ids)
    }

    /// Runs `sql` with its `$1, $2, ...` placeholders bound by name. Returns the rows
    /// changed (0 for a statement that changes none, such as DDL).
    async fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        self.ensure_open()?;
        let conn = &*self.conn;
        let mut stmt = bind(conn, sql, params)?;
        let before = conn.total_changes();
        // Stepped as a query so that `INSERT ... RETURNING` works as on PostgreSQL.
        let mut rows = stmt.raw_query();
        while rows.next().map_err(sql_error)?.is_some() {}
        Ok(if conn.total_changes() == before {
            0
        } else {
            conn.changes()
        })
    }

    /// Runs `sql` with its `$1, $2, ...` placeholders bound by name; reads every column
    /// as the [`SqlValue`] of its SQLite storage class.
    async fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>> {
        self.ensure_open()?;
        let mut stmt = bind(&self.conn, sql, params)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(read_value(row.get_ref(i).map_err(sql_error)?));
            }
            out.push(values);
        }
        Ok(out)
    }

    /// `COMMIT`; then lets the checkpoint thread know, and wakes the followers if events
    /// were recorded. On failure the transaction rolls back.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.ensure_open()?;
        run(&self.conn, schema::COMMIT)?;
        self.open = false;
        let store = self.store.clone();
        let recorded = self.recorded;
        // Free the write connection before waking anyone who wants it.
        drop(self);
        store.committed();
        if recorded {
            store.wake_followers();
        }
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        self.open = false;
        if self.conn.is_autocommit() {
            return Ok(());
        }
        run(&self.conn, schema::ROLLBACK)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
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
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

/// The SQLite connection of an [`eventfold_core::Transaction`], to write your own rows
/// with [`rusqlite`] in the same transaction as eventfold's records.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use eventfold_core::Store;
/// use eventfold_sqlite::{rusqlite, SqliteStore, SqliteTransactionExt};
///
/// let store = SqliteStore::open_in_memory()?;
/// let mut tx = store.begin().await?;
/// let conn = tx.sqlite()?;
/// conn.execute("CREATE TABLE notes (text TEXT)", [])
///     .map_err(|e| eventfold_core::Error::backend("sqlite", e))?;
/// conn.execute("INSERT INTO notes VALUES (?1)", rusqlite::params!["hello"])
///     .map_err(|e| eventfold_core::Error::backend("sqlite", e))?;
/// tx.commit().await?;
/// # Ok::<(), eventfold_core::Error>(())
/// # }).unwrap();
/// ```
pub trait SqliteTransactionExt {
    /// The connection inside the open transaction. Fails with
    /// [`Error::Unsupported`] when the transaction belongs to another backend, and with
    /// [`Error::Backend`] when SQLite already rolled it back after an error.
    fn sqlite(&mut self) -> Result<&Connection>;
}

impl SqliteTransactionExt for Transaction {
    fn sqlite(&mut self) -> Result<&Connection> {
        let backend = self.backend();
        match self.downcast_mut::<SqliteTransaction>() {
            Some(tx) => {
                tx.ensure_open()?;
                Ok(tx.connection())
            }
            None => Err(Error::Unsupported {
                backend,
                what: "SQLite connections (SqliteTransactionExt::sqlite)",
            }),
        }
    }
}
