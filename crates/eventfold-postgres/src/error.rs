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
/// * A server error a retry can get past (see [`is_transient`]) → [`Error::Backend`]
///   marked transient.
/// * Anything else → [`Error::Backend`].
pub(crate) fn sqlx_error(error: sqlx::Error, target: &Target) -> Error {
    if is_unavailable(&error) {
        Error::Unavailable {
            backend: BACKEND,
            target: target.0.clone(),
            source: Box::new(error),
        }
    } else if is_transient(&error) {
        Error::transient(BACKEND, error)
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

/// SQLSTATE codes after which the same work can succeed later.
///
/// `40001` serialization_failure, `40P01` deadlock_detected, `55P03` lock_not_available,
/// `53300` too_many_connections, `57P01`–`57P03` admin/crash shutdown and cannot connect
/// now, and class `08` (connection exceptions).
fn transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

/// Whether retrying the work that met `error` can succeed: the connection or the server
/// went away ([`is_unavailable`]), the protocol stream broke, or the server reported a
/// passing condition by its SQLSTATE (the typed `DatabaseError::code()`, never the text).
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            is_unavailable(error) || db.code().is_some_and(|code| transient_sqlstate(&code))
        }
        other => is_unavailable(other),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in [
            "40001", "40P01", "55P03", "53300", "57P01", "08006", "08000",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "57014"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Protocol("x".into())));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
