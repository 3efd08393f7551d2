//! The tables file: which plain table holds each `cqrs_id`, and how its columns map to
//! `instance_data`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::TableError;

/// The default file name of the tables file (`--config`, `EVENTFOLD_CQRS_CONFIG`).
pub const DEFAULT_CONFIG_FILE: &str = "eventfold-cqrs.toml";

/// The tables of one service: the ones it is the master of (`[master.<cqrs_id>]`) and
/// the ones it replicates (`[replica.<cqrs_id>]`).
///
/// ```
/// use eventfold_cqrs::table::TablesConfig;
///
/// let config = TablesConfig::from_toml(r#"
///     [replica.author]
///     table = "authors"
///     ignore = ["internal_note"]
///     rename = { name = "full_name" }
///
///     [master.book]
///     table = "books"
///     fields = ["id", "title", "author"]
///     rename = { author = "author_id" }
/// "#)?;
/// let author = config.replica("author")?;
/// assert_eq!(author.pk, "id");
/// assert_eq!(author.column_of("name"), "full_name");
/// assert_eq!(config.master("book")?.revision, "cqrs_revision");
/// assert!(config.replica("book").is_err());
/// # Ok::<(), eventfold_cqrs::table::TableError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TablesConfig {
    /// Tables this service publishes, by `cqrs_id`.
    #[serde(default)]
    pub master: BTreeMap<String, TableSpec>,
    /// Tables this service replicates into, by `cqrs_id`.
    #[serde(default)]
    pub replica: BTreeMap<String, TableSpec>,
}

/// One plain table and how its columns map to the keys of `instance_data`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TableSpec {
    /// The table's name (quoted as an identifier: any name works, case kept).
    pub table: String,
    /// Its schema on PostgreSQL (or attached database on SQLite); default: the
    /// connection's own (`search_path`, `main`).
    #[serde(default)]
    pub schema: Option<String>,
    /// The primary-key column (default `id`).
    #[serde(default = "default_pk")]
    pub pk: String,
    /// The column holding `cqrs_revision` (default `cqrs_revision`).
    #[serde(default = "default_revision")]
    pub revision: String,
    /// The column holding `cqrs_updated` (default `cqrs_updated`).
    #[serde(default = "default_updated")]
    pub updated: String,
    /// `instance_data` key → column, for the keys whose column has another name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// `instance_data` keys that are neither written (replica) nor published (master).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Master only: the keys to publish (default: every column, under its name or its
    /// rename). `cqrs_revision` and `cqrs_updated` are always published.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

fn default_pk() -> String {
    "id".to_owned()
}
fn default_revision() -> String {
    "cqrs_revision".to_owned()
}
fn default_updated() -> String {
    "cqrs_updated".to_owned()
}

/// Which side of replication a table is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[master.<cqrs_id>]`: this service publishes its rows.
    Master,
    /// `[replica.<cqrs_id>]`: this service writes the messages it receives into it.
    Replica,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Replica => "replica",
        })
    }
}

impl TablesConfig {
    /// Parses the TOML text of a tables file and checks it (see [`TableSpec`]).
    pub fn from_toml(text: &str) -> Result<Self, TableError> {
        let config: TablesConfig = toml::from_str(text).map_err(|e| TableError::Config {
            message: e.to_string().trim_end().to_owned(),
        })?;
        for (role, tables) in [
            (Role::Master, &config.master),
            (Role::Replica, &config.replica),
        ] {
            for (cqrs_id, spec) in tables {
                spec.check(cqrs_id, role)
                    .map_err(|message| TableError::Config {
                        message: format!("[{role}.{cqrs_id}]: {message}"),
                    })?;
            }
        }
        Ok(config)
    }

    /// Reads and parses the tables file at `path`.
    pub fn load(path: &Path) -> Result<Self, TableError> {
        let text = std::fs::read_to_string(path).map_err(|e| TableError::Config {
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            TableError::Config { message } => TableError::Config {
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        })
    }

    /// The master table of `cqrs_id`, or [`TableError::UnknownCqrsId`].
    pub fn master(&self, cqrs_id: &str) -> Result<&TableSpec, TableError> {
        self.spec(Role::Master, cqrs_id)
    }

    /// The replica table of `cqrs_id`, or [`TableError::UnknownCqrsId`].
    pub fn replica(&self, cqrs_id: &str) -> Result<&TableSpec, TableError> {
        self.spec(Role::Replica, cqrs_id)
    }

    /// The table of `cqrs_id` on the `role` side, or [`TableError::UnknownCqrsId`]
    /// naming the ids there are.
    pub fn spec(&self, role: Role, cqrs_id: &str) -> Result<&TableSpec, TableError> {
        let tables = match role {
            Role::Master => &self.master,
            Role::Replica => &self.replica,
        };
        tables
            .get(cqrs_id)
            .ok_or_else(|| TableError::UnknownCqrsId {
                cqrs_id: cqrs_id.to_owned(),
                role,
                known: tables.keys().cloned().collect(),
            })
    }
}

impl TableSpec {
    /// A table named `table` with the defaults (`id`, `cqrs_revision`, `cqrs_updated`,
    /// no renames).
    pub fn new(table: impl Into<String>) -> Self {
        TableSpec {
            table: table.into(),
            schema: None,
            pk: default_pk(),
            revision: default_revision(),
            updated: default_updated(),
            rename: BTreeMap::new(),
            ignore: Vec::new(),
            fields: None,
        }
    }

    /// Puts the table in `schema`.
    pub fn in_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The column of `instance_data` key `key`: `cqrs_revision` and `cqrs_updated` go to
    /// [`Self::revision`] and [`Self::updated`], a renamed key to its column, any other
    /// key to the column of the same name.
    pub fn column_of<'a>(&'a self, key: &'a str) -> &'a str {
        match key {
            super::REVISION_KEY => &self.revision,
            super::UPDATED_KEY => &self.updated,
            _ => self.rename.get(key).map_or(key, String::as_str),
        }
    }

    fn check(&self, cqrs_id: &str, role: Role) -> Result<(), String> {
        if cqrs_id.is_empty() {
            return Err("the cqrs_id is empty".to_owned());
        }
        for (what, name) in [
            ("table", &self.table),
            ("pk", &self.pk),
            ("revision", &self.revision),
            ("updated", &self.updated),
        ] {
            if name.is_empty() {
                return Err(format!("`{what}` is empty"));
            }
        }
        if self.revision == self.updated {
            return Err(format!(
                "`revision` and `updated` are both the column {:?}",
                self.revision
            ));
        }
        let mut targets = BTreeMap::new();
        for (key, column) in &self.rename {
            if matches!(key.as_str(), super::REVISION_KEY | super::UPDATED_KEY) {
                return Err(format!(
                    "`rename` of {key:?}: set `revision` or `updated` to name its column"
                ));
            }
            if let Some(other) = targets.insert(column, key) {
                return Err(format!(
                    "`rename`: {other:?} and {key:?} both go to the column {column:?}"
                ));
            }
        }
        for key in &self.ignore {
            if matches!(key.as_str(), super::REVISION_KEY | super::UPDATED_KEY) {
                return Err(format!("`ignore`: {key:?} cannot be ignored"));
            }
        }
        match (&self.fields, role) {
            (Some(_), Role::Replica) => {
                return Err(
                    "`fields` is for master tables (a replica writes what it receives; \
                     use `ignore`)"
                        .to_owned(),
                )
            }
            (Some(fields), Role::Master) => {
                if let Some(key) = fields.iter().find(|f| self.ignore.contains(f)) {
                    return Err(format!("{key:?} is in both `fields` and `ignore`"));
                }
            }
            (None, _) => {}
        }
        Ok(())
    }
}
