//! Turning sqlx errors into the core's typed [`Error`].

use eventfold_core::Error;
use sqlx::postgres::{PgDatabaseError, PgSeverity};

use crate::BACKEND;

/// Where the store connects, without the password: the `target` of [`Error::Unavailable`].
#[derive(Debug, Clone)]
pub(crate) struct Target(pub String);

/// Maps a driver error that is not a conflict.
///
/// * The server cannot be reached, the pool timed out, or the server ended the session
///   (an error of severity `FATAL`/`PANIC`: shutdown, restart, `pg_terminate_backend`)
///   → [`Error::Unavailable`], safe to retry.
/// * Anything else → [`Error::Backend`].
pub(crate) fn sqlx_error(error: sqlx::Error, target: &Target) -> Error {
    if is_unavailable(&error) {
        Error::Unavailable {
            backend: BACKEND,
            target: target.0.clone(),
            source: Box::new(error),
        }
    } else {
        Error::backend(BACKEND, error)
    }
}

pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

/// If `error` is a unique violation (sqlx's typed check), the name of the constraint.
pub(crate) fn unique_violation(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Some(db.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}
