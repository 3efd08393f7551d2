//! Configuration by environment or builder: which store, where, compression, encryption,
//! snapshot intervals, cache.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use eventfold_core::{
    AesGcmCipher, Aggregate, Application, Error, InMemoryStore, JsonMapper, Result, Store, Zlib,
};

/// Which store to open, and its settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreConfig {
    /// Process memory; gone when the process ends.
    Memory,
    /// The embedded SQLite store.
    #[cfg(feature = "sqlite")]
    Sqlite(eventfold_sqlite::SqliteConfig),
    /// The PostgreSQL store.
    #[cfg(feature = "postgres")]
    Postgres(eventfold_postgres::PostgresConfig),
}

impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("memory (nothing survives the process)"),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(c) => write!(
                f,
                "sqlite file {} (WAL, synchronous={:?})",
                c.path.display(),
                c.synchronous
            ),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(c) => write!(
                f,
                "postgres schema {:?}, tables {}*",
                c.schema, c.table_prefix
            ),
        }
    }
}

/// Everything needed to build an [`Application`]: store, mapper and snapshot settings.
///
/// From the environment ([`Config::from_env`]):
///
/// | variable | values | default |
/// |---|---|---|
/// | `EVENTFOLD_STORE` | `memory`, `sqlite`, `postgres` | `sqlite` |
/// | `EVENTFOLD_SQLITE_PATH` | file path, not empty | `eventfold.sqlite3` |
/// | `EVENTFOLD_SQLITE_SYNCHRONOUS` | `off`, `normal`, `full` | `normal` (with WAL) |
/// | `EVENTFOLD_DATABASE_URL` (or `DATABASE_URL`) | `postgres://...` or `postgresql://...` | required for `postgres` |
/// | `EVENTFOLD_POSTGRES_SCHEMA` | schema name | `public` |
/// | `EVENTFOLD_TABLE_PREFIX` | table name prefix | `eventfold_` |
/// | `EVENTFOLD_POSTGRES_MAX_CONNECTIONS` | pool size | `10` |
/// | `EVENTFOLD_POSTGRES_CONNECT_TIMEOUT` | seconds (`2.5` allowed), above zero | `5` |
/// | `EVENTFOLD_POSTGRES_REPLY_TIMEOUT` | seconds; `0` waits for ever | `30` |
/// | `EVENTFOLD_POSTGRES_LISTENER_HEARTBEAT` | seconds; `0` turns it off | `10` |
/// | `EVENTFOLD_POSTGRES_ORDERING` | `concurrent`, `table-lock` | `concurrent` |
/// | `EVENTFOLD_CREATE_TABLES` | `true`, `false` | `true` |
/// | `EVENTFOLD_COMPRESSOR` | `none`, `zlib` | `none` |
/// | `EVENTFOLD_CIPHER_KEY` | base64 of 32 bytes (AES-256-GCM) | none |
/// | `EVENTFOLD_SNAPSHOT_INTERVALS` | `World=5,Dog=10`: declared types only (see [`Config::aggregate`]) | none |
/// | `EVENTFOLD_CACHE_SIZE` | aggregates kept in memory | `0` (off) |
/// | `EVENTFOLD_CACHE_FASTFORWARD` | `true`: a cache hit reads newer events first; `false`: for a single writer, no read (a stale copy fails its save with a conflict) | `true` |
///
/// A bad value is an [`Error::Config`] whose `variable` is the environment variable it came
/// from (a store setting's own check, such as the schema name, is reported under
/// `EVENTFOLD_POSTGRES_SCHEMA`); values set with the builder keep the setting's name
/// (`schema`, `path`, ...). Variables set to the empty string count as unset, except
/// `EVENTFOLD_SQLITE_PATH`, where an empty value is an error.
#[derive(Debug, Clone)]
pub struct Config {
    store: StoreConfig,
    compress: bool,
    cipher_key: Option<String>,
    snapshot_intervals: HashMap<String, u64>,
    /// Names read from `EVENTFOLD_SNAPSHOT_INTERVALS`, checked against `aggregate_types`
    /// when the application is built.
    env_snapshot_names: Vec<String>,
    /// Aggregate types the program declared (`aggregate`, `snapshot_every`,
    /// `snapshot_interval`).
    aggregate_types: BTreeSet<String>,
    cache_size: usize,
    cache_fastforward: bool,
}

const STORE: &str = "EVENTFOLD_STORE";

fn invalid(variable: &str, message: impl Into<String>) -> Error {
    Error::Config {
        variable: variable.to_owned(),
        message: message.into(),
    }
}

/// Seconds, fractions allowed (`2.5`), as a [`Duration`](std::time::Duration).
#[cfg(feature = "postgres")]
fn parse_seconds(variable: &str, value: &str) -> Result<std::time::Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| {
            invalid(
                variable,
                format!("expected a number of seconds (such as 5 or 0.5), got {value:?}"),
            )
        })
}

/// Reports a store setting's own error (which names its field, such as `schema`) under
/// the environment variable the value came from.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn from_variable(error: Error, fields: &[(&str, &str)]) -> Error {
    match error {
        Error::Config { variable, message } => {
            let variable = fields
                .iter()
                .find(|(field, _)| *field == variable)
                .map_or(variable, |(_, name)| (*name).to_owned());
            Error::Config { variable, message }
        }
        other => other,
    }
}

fn parse_bool(variable: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Ok(true),
        "0" | "false" | "no" | "off" | "n" => Ok(false),
        other => Err(invalid(
            variable,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

impl Config {
    fn with_store(store: StoreConfig) -> Self {
        Config {
            store,
            compress: false,
            cipher_key: None,
            snapshot_intervals: HashMap::new(),
            env_snapshot_names: Vec::new(),
            aggregate_types: BTreeSet::new(),
            cache_size: 0,
            cache_fastforward: true,
        }
    }

    /// The in-memory store.
    pub fn memory() -> Self {
        Self::with_store(StoreConfig::Memory)
    }

    /// A SQLite file (created if missing), WAL with `synchronous=NORMAL`.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl Into<std::path::PathBuf>) -> Self {
        Self::with_store(StoreConfig::Sqlite(eventfold_sqlite::SqliteConfig::new(
            path,
        )))
    }

    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::with_store(StoreConfig::Postgres(
            eventfold_postgres::PostgresConfig::new(url),
        ))
    }

    /// Any store configuration.
    pub fn store(store: StoreConfig) -> Self {
        Self::with_store(store)
    }

    /// Reads the `EVENTFOLD_*` environment variables (see the table above).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// Like [`Config::from_env`], from the given variables (for tests and tools).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let get = |name: &str| vars.get(name).map(String::as_str).filter(|v| !v.is_empty());
        #[cfg_attr(
            not(any(feature = "sqlite", feature = "postgres")),
            allow(unused_variables)
        )]
        let create_tables = get("EVENTFOLD_CREATE_TABLES")
            .map(|v| parse_bool("EVENTFOLD_CREATE_TABLES", v))
            .transpose()?
            .unwrap_or(true);

        let kind = get(STORE).unwrap_or("sqlite").trim().to_ascii_lowercase();
        let store = match kind.as_str() {
            "memory" | "popo" => StoreConfig::Memory,
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                // Set but empty is a mistake (an unset variable gives the default file).
                let path = match vars.get("EVENTFOLD_SQLITE_PATH") {
                    Some(path) => path.trim(),
                    None => "eventfold.sqlite3",
                };
                let mut sqlite = eventfold_sqlite::SqliteConfig::new(path);
                sqlite
                    .validate()
                    .map_err(|e| from_variable(e, &[("path", "EVENTFOLD_SQLITE_PATH")]))?;
                sqlite.create_tables = create_tables;
                if let Some(value) = get("EVENTFOLD_SQLITE_SYNCHRONOUS") {
                    sqlite.synchronous = match value.trim().to_ascii_lowercase().as_str() {
                        "off" => eventfold_sqlite::Synchronous::Off,
                        "normal" => eventfold_sqlite::Synchronous::Normal,
                        "full" => eventfold_sqlite::Synchronous::Full,
                        other => {
                            return Err(invalid(
                                "EVENTFOLD_SQLITE_SYNCHRONOUS",
                                format!("expected off, normal or full, got {other:?}"),
                            ))
                        }
                    };
                }
                StoreConfig::Sqlite(sqlite)
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let url_variable = if get("EVENTFOLD_DATABASE_URL").is_some() {
                    "EVENTFOLD_DATABASE_URL"
                } else {
                    "DATABASE_URL"
                };
                let url = get(url_variable).ok_or_else(|| {
                    invalid(
                        "EVENTFOLD_DATABASE_URL",
                        "required when EVENTFOLD_STORE=postgres (e.g. postgres://user@host/db)",
                    )
                })?;
                let mut postgres = eventfold_postgres::PostgresConfig::new(url);
                postgres.create_tables = create_tables;
                if let Some(schema) = get("EVENTFOLD_POSTGRES_SCHEMA") {
                    postgres.schema = schema.to_owned();
                }
                if let Some(prefix) = get("EVENTFOLD_TABLE_PREFIX") {
                    postgres.table_prefix = prefix.to_owned();
                }
                if let Some(value) = get("EVENTFOLD_POSTGRES_MAX_CONNECTIONS") {
                    postgres.max_connections = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            invalid(
                                "EVENTFOLD_POSTGRES_MAX_CONNECTIONS",
                                format!("expected a whole number of at least 1, got {value:?}"),
                            )
                        })?;
                }
                let seconds = [
                    (
                        "EVENTFOLD_POSTGRES_CONNECT_TIMEOUT",
                        &mut postgres.connect_timeout,
                    ),
                    (
                        "EVENTFOLD_POSTGRES_REPLY_TIMEOUT",
                        &mut postgres.reply_timeout,
                    ),
                    (
                        "EVENTFOLD_POSTGRES_LISTENER_HEARTBEAT",
                        &mut postgres.listener_heartbeat,
                    ),
                ];
                for (variable, setting) in seconds {
                    if let Some(value) = get(variable) {
                        *setting = parse_seconds(variable, value)?;
                    }
                }
                if postgres.connect_timeout.is_zero() {
                    return Err(invalid(
                        "EVENTFOLD_POSTGRES_CONNECT_TIMEOUT",
                        "must be above zero (a connection cannot be made in no time)",
                    ));
                }
                if let Some(value) = get("EVENTFOLD_POSTGRES_ORDERING") {
                    postgres.ordering = value.parse().map_err(|e| {
                        from_variable(e, &[("ordering", "EVENTFOLD_POSTGRES_ORDERING")])
                    })?;
                }
                postgres.validate().map_err(|e| {
                    from_variable(
                        e,
                        &[
                            ("url", url_variable),
                            ("schema", "EVENTFOLD_POSTGRES_SCHEMA"),
                            ("table_prefix", "EVENTFOLD_TABLE_PREFIX"),
                            ("max_connections", "EVENTFOLD_POSTGRES_MAX_CONNECTIONS"),
                            ("connect_timeout", "EVENTFOLD_POSTGRES_CONNECT_TIMEOUT"),
                        ],
                    )
                })?;
                StoreConfig::Postgres(postgres)
            }
            other => {
                let mut known = vec!["memory"];
                if cfg!(feature = "sqlite") {
                    known.push("sqlite");
                }
                if cfg!(feature = "postgres") {
                    known.push("postgres");
                }
                return Err(invalid(
                    STORE,
                    format!(
                        "unknown store {other:?}; this build supports {}",
                        known.join(", ")
                    ),
                ));
            }
        };

        let mut config = Self::with_store(store);
        config.compress = match get("EVENTFOLD_COMPRESSOR").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "none" => false,
            Some(v) if v == "zlib" => true,
            Some(other) => {
                return Err(invalid(
                    "EVENTFOLD_COMPRESSOR",
                    format!("expected none or zlib, got {other:?}"),
                ))
            }
        };
        if let Some(key) = get("EVENTFOLD_CIPHER_KEY") {
            AesGcmCipher::from_base64(key, "EVENTFOLD_CIPHER_KEY")?;
            config.cipher_key = Some(key.to_owned());
        }
        if let Some(spec) = get("EVENTFOLD_SNAPSHOT_INTERVALS") {
            for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let parsed = item.split_once('=').and_then(|(name, n)| {
                    let name = name.trim();
                    (!name.is_empty())
                        .then_some(())
                        .and(n.trim().parse::<u64>().ok())
                        .map(|n| (name.to_owned(), n))
                });
                let (name, every) = parsed.ok_or_else(|| {
                    invalid(
                        "EVENTFOLD_SNAPSHOT_INTERVALS",
                        format!("expected Type=N pairs separated by commas, got {item:?}"),
                    )
                })?;
                config.env_snapshot_names.push(name.clone());
                config.snapshot_intervals.insert(name, every);
            }
        }
        if let Some(size) = get("EVENTFOLD_CACHE_SIZE") {
            config.cache_size = size.trim().parse().map_err(|_| {
                invalid(
                    "EVENTFOLD_CACHE_SIZE",
                    format!("expected a whole number, got {size:?}"),
                )
            })?;
        }
        if let Some(value) = get("EVENTFOLD_CACHE_FASTFORWARD") {
            config.cache_fastforward = parse_bool("EVENTFOLD_CACHE_FASTFORWARD", value)?;
        }
        Ok(config)
    }

    /// Compresses stored events and snapshots with zlib.
    pub fn zlib(mut self) -> Self {
        self.compress = true;
        self
    }

    /// Encrypts stored events and snapshots with AES-256-GCM (base64 key of 32 bytes;
    /// [`AesGcmCipher::generate_key`] makes one). A bad key fails in [`Config::application`].
    pub fn cipher_key(mut self, base64_key: impl Into<String>) -> Self {
        self.cipher_key = Some(base64_key.into());
        self
    }

    /// Declares that the application stores aggregates of type `A`, so that
    /// `EVENTFOLD_SNAPSHOT_INTERVALS` may name it.
    ///
    /// The names in `EVENTFOLD_SNAPSHOT_INTERVALS` are checked when the application is
    /// built ([`Config::application`], [`Config::application_on`]): each must be a type
    /// declared here, with [`Config::snapshot_every`] or with [`Config::snapshot_interval`].
    /// A misspelt name (`Wrold=5`) would otherwise never snapshot anything and nobody
    /// would notice; it is an [`Error::Config`] naming the variable instead. The check
    /// cannot happen in [`Config::from_env`] (the program has not said yet which types it
    /// has), nor on first use (an aggregate type the program has not used yet may still
    /// come), so the program declares its types once, where it builds the application:
    ///
    /// ```
    /// # use eventfold::{Aggregate, Config};
    /// # #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
    /// # struct World;
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    /// # enum WorldEvent { Created }
    /// # impl Aggregate for World {
    /// #     const TYPE: &'static str = "World";
    /// #     type Id = uuid::Uuid;
    /// #     type Event = WorldEvent;
    /// #     fn apply(&mut self, _: &WorldEvent) {}
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let vars = [("EVENTFOLD_STORE", "memory"), ("EVENTFOLD_SNAPSHOT_INTERVALS", "World=5")];
    /// let app = Config::from_vars(vars)?.aggregate::<World>().application().await?;
    /// assert_eq!(app.snapshot_interval("World"), Some(5));
    ///
    /// let typo = [("EVENTFOLD_STORE", "memory"), ("EVENTFOLD_SNAPSHOT_INTERVALS", "Wrold=5")];
    /// let err = Config::from_vars(typo)?.aggregate::<World>().application().await.err();
    /// assert!(err.unwrap().to_string().contains("EVENTFOLD_SNAPSHOT_INTERVALS"));
    /// # Ok::<(), eventfold::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.aggregate_types.insert(A::TYPE.to_owned());
        self
    }

    /// Snapshots `A` every `versions` versions (and declares `A`, see
    /// [`Config::aggregate`]).
    pub fn snapshot_every<A: Aggregate>(self, versions: u64) -> Self {
        self.snapshot_interval(A::TYPE, versions)
    }

    /// Snapshots the named aggregate type every `versions` versions (and declares the
    /// name, see [`Config::aggregate`]).
    pub fn snapshot_interval(mut self, aggregate_type: &str, versions: u64) -> Self {
        self.aggregate_types.insert(aggregate_type.to_owned());
        self.snapshot_intervals
            .insert(aggregate_type.to_owned(), versions);
        self
    }

    /// Every name of `EVENTFOLD_SNAPSHOT_INTERVALS` is a declared aggregate type.
    fn check_snapshot_names(&self) -> Result<()> {
        let unknown: Vec<&str> = self
            .env_snapshot_names
            .iter()
            .filter(|name| !self.aggregate_types.contains(*name))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let declared = if self.aggregate_types.is_empty() {
            "no aggregate type is declared".to_owned()
        } else {
            let names: Vec<&str> = self.aggregate_types.iter().map(String::as_str).collect();
            format!("the declared types are {}", names.join(", "))
        };
        Err(invalid(
            "EVENTFOLD_SNAPSHOT_INTERVALS",
            format!(
                "unknown aggregate type {}: {declared} (declare each with \
                 Config::aggregate::<A>() or snapshot_every::<A>())",
                unknown.join(", ")
            ),
        ))
    }

    /// Keeps up to `size` aggregates in the application's cache.
    pub fn cache_size(mut self, size: usize) -> Self {
        self.cache_size = size;
        self
    }

    /// Whether a cache hit first reads events newer than the cached copy (default: yes).
    /// See [`eventfold_core::ApplicationBuilder::cache_fastforward`].
    pub fn cache_fastforward(mut self, fastforward: bool) -> Self {
        self.cache_fastforward = fastforward;
        self
    }

    /// Whether a cipher key is configured (`EVENTFOLD_CIPHER_KEY` or
    /// [`Config::cipher_key`]), for tools that explain why a record does not decode.
    pub fn has_cipher_key(&self) -> bool {
        self.cipher_key
            .as_ref()
            .is_some_and(|key| !key.trim().is_empty())
    }

    /// The texts of this configuration that no tool may show: the cipher key and the
    /// PostgreSQL URL's passwords.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.cipher_key.iter().cloned().collect();
        #[cfg(feature = "postgres")]
        if let StoreConfig::Postgres(config) = &self.store {
            secrets.extend(eventfold_postgres::url_passwords(&config.url));
        }
        secrets.retain(|secret| !secret.trim().is_empty());
        secrets
    }

    /// The store part of the configuration.
    pub fn store_config(&self) -> &StoreConfig {
        &self.store
    }

    /// The mapper this configuration asks for.
    pub fn mapper(&self) -> Result<JsonMapper> {
        let mut mapper = JsonMapper::new();
        if self.compress {
            mapper = mapper.with_compressor(Zlib::default());
        }
        if let Some(key) = &self.cipher_key {
            mapper = mapper.with_cipher(AesGcmCipher::from_base64(key, "EVENTFOLD_CIPHER_KEY")?);
        }
        Ok(mapper)
    }

    /// Opens (and, unless told not to, migrates) the configured store.
    ///
    /// The store is a trait object: applications, followers and projections run on it
    /// whatever the backend, so one projection with portable SQL
    /// ([`eventfold_core::Transaction::execute`]) serves SQLite and PostgreSQL alike.
    /// Code that needs the driver reaches it through the transaction
    /// (`eventfold::sqlite::SqliteTransactionExt`, `eventfold::postgres::PostgresTransactionExt`).
    pub async fn open_store(&self) -> Result<Arc<dyn Store>> {
        Ok(match &self.store {
            StoreConfig::Memory => Arc::new(InMemoryStore::new()),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(config) => {
                config.validate()?;
                Arc::new(eventfold_sqlite::SqliteStore::open(config)?)
            }
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(config) => {
                Arc::new(eventfold_postgres::PostgresStore::connect(config).await?)
            }
        })
    }

    /// Creates or upgrades the configured store's tables and says what was done (what
    /// `eventfold migrate` runs). The database is migrated without opening a store first
    /// (which would migrate it already), so the report shows the versions it went through.
    pub async fn migrate(&self) -> Result<String> {
        match &self.store {
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(config) => {
                Ok(eventfold_postgres::PostgresStore::migrate_with(config)
                    .await?
                    .to_string())
            }
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(config) => {
                config.validate()?;
                Ok(eventfold_sqlite::SqliteStore::migrate_with(config)?.to_string())
            }
            StoreConfig::Memory => Ok("memory store: nothing to migrate".to_owned()),
        }
    }

    /// Builds an application on an already opened store (one from [`Config::open_store`],
    /// or any other, such as a store the program opened itself to share it).
    ///
    /// Fails with [`Error::Config`] naming `EVENTFOLD_SNAPSHOT_INTERVALS` when that names
    /// an aggregate type the program did not declare (see [`Config::aggregate`]), and
    /// naming `EVENTFOLD_CIPHER_KEY` for a bad key.
    pub fn application_on(&self, store: Arc<dyn Store>) -> Result<Application<JsonMapper>> {
        self.check_snapshot_names()?;
        let mut builder = Application::builder_on(store)
            .mapper(self.mapper()?)
            .cache(self.cache_size)
            .cache_fastforward(self.cache_fastforward);
        for (name, every) in &self.snapshot_intervals {
            builder = builder.snapshot_interval(name, *every);
        }
        Ok(builder.build())
    }

    /// Opens the store and builds the application (see [`Config::application_on`] for
    /// the checks). The names of `EVENTFOLD_SNAPSHOT_INTERVALS` are checked before the
    /// store is opened.
    pub async fn application(&self) -> Result<Application<JsonMapper>> {
        self.check_snapshot_names()?;
        let store = self.open_store().await?;
        self.application_on(store)
    }
}
