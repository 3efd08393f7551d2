//! How to open a store: the file, whether to create the tables, and the durability level.

use std::path::PathBuf;
use std::time::Duration;

use eventfold_core::{Error, Result};

/// Settings for [`crate::SqliteStore::open`].
///
/// [`SqliteConfig::new`] gives the defaults that suit almost every application: create
/// the tables when missing, WAL with `synchronous = NORMAL`, wait up to 5 s for another
/// process's write lock. Change a setting by assigning its field:
///
/// ```
/// let mut config = eventfold_sqlite::SqliteConfig::new("app.db");
/// config.synchronous = eventfold_sqlite::Synchronous::Full;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file; created if missing (its folder must exist).
    pub path: PathBuf,
    /// Apply pending migrations on open (default `true`). With `false`, opening a file
    /// whose schema is not the current one fails with
    /// [`eventfold_core::Error::SchemaVersion`], so a deployment can migrate on purpose
    /// (`eventfold migrate`) and run the application with fewer rights.
    pub create_tables: bool,
    /// How hard each commit insists on reaching the disk (default [`Synchronous::Normal`]).
    pub synchronous: Synchronous,
    /// How long a statement waits for a lock held by another process (or another
    /// [`crate::SqliteStore`] on the same file) before failing (default 5 s).
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    /// The defaults for the database file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            create_tables: true,
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Checks the settings without opening the file: the path must not be empty (SQLite
    /// would open a temporary database that is gone when the store closes).
    ///
    /// The error is [`Error::Config`] naming the field (`path`); `eventfold::Config`
    /// reports it under `EVENTFOLD_SQLITE_PATH` when the value came from there.
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::Config {
                variable: "path".to_owned(),
                message: "is empty; name the database file, e.g. eventfold.sqlite3 \
                          (an empty path would be a temporary database, lost on close)"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_is_refused() {
        assert!(SqliteConfig::new("events.sqlite3").validate().is_ok());
        let err = SqliteConfig::new("").validate().unwrap_err();
        assert!(
            matches!(&err, Error::Config { variable, .. } if variable == "path"),
            "{err:?}"
        );
    }
}

/// SQLite's `PRAGMA synchronous`: when a commit waits for the disk.
///
/// The store always runs in WAL mode, where:
///
/// - [`Synchronous::Normal`] (the default) writes each commit to the write-ahead log
///   without waiting for the disk, and syncs only at checkpoints. A commit survives a
///   crash of the process (the operating system has the bytes); a power loss or an
///   operating-system crash may lose the last commits before the next checkpoint, but
///   never corrupts the database and never keeps half a commit. This is SQLite's own
///   recommendation for WAL, and it makes a commit cost microseconds instead of an
///   `fsync`.
/// - [`Synchronous::Full`] syncs the log at every commit: a commit also survives a power
///   loss, at the price of one `fsync` per commit (milliseconds on most disks).
/// - [`Synchronous::Off`] never syncs: fastest, and a power loss may corrupt the
///   database. Only for data that can be rebuilt (tests, throw-away caches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Synchronous {
    /// Never wait for the disk; a power loss may corrupt the database.
    Off,
    /// Sync at checkpoints only: durable against process crashes, never corrupted.
    #[default]
    Normal,
    /// Sync the log at every commit: durable against power loss.
    Full,
}

impl Synchronous {
    /// The `PRAGMA synchronous` statement for this level.
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "PRAGMA synchronous = OFF",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
            Synchronous::Full => "PRAGMA synchronous = FULL",
        }
    }
}
