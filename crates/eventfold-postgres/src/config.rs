//! Connection settings: where the database is, which schema and table names to use, and
//! how writers order the notification log.

use std::time::Duration;

use eventfold_core::{Error, Result};

/// How concurrent writers keep the notification log gap-safe.
///
/// Both are safe; they differ in what concurrent writers wait for. See the crate docs
/// ("Gap-safe order") for the argument.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Ordering {
    /// The default: writers never wait for each other. Each recording transaction
    /// announces, with a shared advisory lock held until it ends, that the ids it takes
    /// are above the last id allocated before it; readers stop at the lowest announcement
    /// still held. Commits of concurrent writers overlap and share WAL flushes.
    #[default]
    Concurrent,
    /// What the Python `eventsourcing` library does: every recording transaction takes
    /// `LOCK TABLE events IN EXCLUSIVE MODE` and holds it through its commit, so one
    /// writer commits at a time. Kept so the two can be measured against each other
    /// (`eventfold bench pg-writers`); its writers announce themselves too, so mixing the two
    /// modes on one set of tables stays safe.
    TableLock,
}

impl std::fmt::Display for Ordering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ordering::Concurrent => "concurrent",
            Ordering::TableLock => "table-lock",
        })
    }
}

impl std::str::FromStr for Ordering {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            // The older names of the same setting stay accepted.
            "concurrent" | "snapshot-xmin" | "snapshotxmin" | "xmin" => Ok(Ordering::Concurrent),
            "table-lock" | "tablelock" | "lock" => Ok(Ordering::TableLock),
            other => Err(Error::Config {
                variable: "ordering".to_owned(),
                message: format!("expected concurrent or table-lock, got {other:?}"),
            }),
        }
    }
}

/// Where the store lives and how it behaves. Build with [`PostgresConfig::new`] and set
/// the public fields.
///
/// ```
/// use eventfold_postgres::{Ordering, PostgresConfig};
///
/// let mut config = PostgresConfig::new("postgres://app:secret@db.internal/orders");
/// config.schema = "billing".into();
/// assert_eq!(config.table_prefix, "eventfold_");
/// assert!(config.create_tables);
/// assert_eq!(config.ordering, Ordering::Concurrent);
/// assert_eq!(config.redacted_url(), "postgres://app:***@db.internal/orders");
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?options`.
    pub url: String,
    /// The schema holding the tables (created if missing). Default `public`.
    pub schema: String,
    /// Prefix of every table, sequence and function name, so several applications can
    /// share one schema. Default `eventfold_`.
    pub table_prefix: String,
    /// Create or upgrade the tables on [`crate::PostgresStore::connect`] (default `true`).
    /// With `false`, connecting to a database whose schema is not at this build's version
    /// fails with [`Error::SchemaVersion`] telling the operator to run `eventfold migrate`.
    pub create_tables: bool,
    /// Size of the connection pool (default 10). The two wake-up connections (one LISTENs,
    /// one sends NOTIFY after commits) are separate and not counted here.
    pub max_connections: u32,
    /// How long to wait for a connection (when connecting, and for a free pool slot)
    /// before failing with [`Error::Unavailable`]. Default 5 s.
    pub connect_timeout: Duration,
    /// How writers keep the log gap-safe (default [`Ordering::Concurrent`]).
    pub ordering: Ordering,
    /// How often the LISTEN connection of followers' wake-ups checks that the server still
    /// answers (within [`Self::connect_timeout`]), so a connection that died silently is
    /// replaced. Default 10 s; zero turns the check off (followers still poll).
    pub listener_heartbeat: Duration,
    /// How long the store waits for the server's reply to a statement on one of its own
    /// connections (`load`, `record`, the log and tracking reads, projection transactions,
    /// the wake-up NOTIFY) before it gives the connection up as dead and fails with
    /// [`Error::Unavailable`]. Without it, a connection that died without closing (a
    /// network partition, a frozen server host) hangs the command for as long as the kernel
    /// keeps the socket. A client-side deadline, not PostgreSQL's `statement_timeout`: the
    /// outcome of a recording that timed out is unknown, as with any lost connection.
    /// Statements sent into the caller's own transaction ([`crate::PostgresStore::record_in`])
    /// wait as the caller's other statements do. Default 30 s; zero turns it off.
    pub reply_timeout: Duration,
    /// A tuning knob: send the followers' wake-up NOTIFY inside every
    /// [`record`](eventfold_core::EventWriter::record) transaction instead of from a
    /// background task after the commit (default `false`). PostgreSQL serialises the
    /// commits of transactions that sent NOTIFY on a server-wide lock, so this costs
    /// throughput under concurrent writers; it exists so that cost can be measured.
    /// Transactions ([`eventfold_core::Store::begin`], [`crate::PostgresStore::join`])
    /// always send it inside, since the store cannot know when the caller commits.
    pub notify_in_transaction: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .field("table_prefix", &self.table_prefix)
            .field("create_tables", &self.create_tables)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("ordering", &self.ordering)
            .field("listener_heartbeat", &self.listener_heartbeat)
            .field("reply_timeout", &self.reply_timeout)
            .field("notify_in_transaction", &self.notify_in_transaction)
            .finish()
    }
}

impl PostgresConfig {
    /// Defaults for the database at `url`: schema `public`, prefix `eventfold_`, tables
    /// created on connect, 10 connections, 5 s connect timeout, [`Ordering::Concurrent`],
    /// a 10 s heartbeat on the LISTEN connection, a 30 s reply timeout.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: "public".to_owned(),
            table_prefix: "eventfold_".to_owned(),
            create_tables: true,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            ordering: Ordering::Concurrent,
            listener_heartbeat: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            notify_in_transaction: false,
        }
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks the settings without connecting: the URL is a `postgres://` (or
    /// `postgresql://`) URL that parses; schema and prefix are ASCII letters, digits and
    /// `_`, the schema not starting with a digit, and every derived name short enough for
    /// PostgreSQL (63 bytes); the pool and the connect timeout are above zero.
    ///
    /// The errors are [`Error::Config`] naming the field at fault (`url`, `schema`,
    /// `table_prefix`, `max_connections`, `connect_timeout`); `eventfold::Config` reports
    /// them under the environment variable the value came from.
    pub fn validate(&self) -> Result<()> {
        let bad = |variable: &str, message: String| Error::Config {
            variable: variable.to_owned(),
            message,
        };
        let scheme = self.url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            return Err(bad(
                "url",
                match scheme {
                    Some(scheme) => format!(
                        "unsupported scheme {scheme}:// in {}; expected postgres:// or postgresql://",
                        self.redacted_url()
                    ),
                    None => format!(
                        "{:?} is not a URL; expected postgres://user@host/database",
                        self.redacted_url()
                    ),
                },
            ));
        }
        if let Err(e) = self.url.parse::<sqlx::postgres::PgConnectOptions>() {
            return Err(bad(
                "url",
                format!("cannot parse {}: {e}", self.redacted_url()),
            ));
        }
        let word = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if self.schema.is_empty()
            || !word(&self.schema)
            || self.schema.as_bytes()[0].is_ascii_digit()
            || self.schema.len() > 63
        {
            return Err(bad(
                "schema",
                format!(
                    "{:?} is not a plain identifier (ASCII letters, digits, _, at most 63 bytes)",
                    self.schema
                ),
            ));
        }
        // The longest derived name was "<prefix>notification_stamp_seq" (23 bytes of
        // suffix); older schema versions still create it before migrating past it.
        if !word(&self.table_prefix) || self.table_prefix.len() > 63 - 23 {
            return Err(bad(
                "table_prefix",
                format!(
                    "{:?} must be ASCII letters, digits and _, at most 40 bytes",
                    self.table_prefix
                ),
            ));
        }
        if self
            .table_prefix
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_digit)
        {
            return Err(bad(
                "table_prefix",
                format!("{:?} must not start with a digit", self.table_prefix),
            ));
        }
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1".to_owned()));
        }
        if self.connect_timeout.is_zero() {
            return Err(bad("connect_timeout", "must be above zero".to_owned()));
        }
        Ok(())
    }
}

/// Where the passwords of a `postgres://` URL are: the user-info password and every
/// `password=` query parameter's value, in order.
fn password_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = url[rest_start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| rest_start + i);
        if let Some(at) = url[rest_start..authority_end].rfind('@') {
            let userinfo = &url[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                ranges.push(rest_start + colon + 1..rest_start + at);
            }
        }
    }
    // `?password=...` or `&password=...`
    let mut search_from = 0;
    while let Some(pos) = url[search_from..].find("password=") {
        let key_start = search_from + pos;
        let preceded_ok = key_start > 0 && matches!(url.as_bytes()[key_start - 1], b'?' | b'&');
        let value_start = key_start + "password=".len();
        if preceded_ok {
            let value_end = url[value_start..]
                .find(['&', '#'])
                .map_or(url.len(), |i| value_start + i);
            ranges.push(value_start..value_end);
        }
        search_from = value_start;
    }
    ranges
}

/// Replaces the password of a `postgres://` URL (user-info or `password=` query
/// parameter) with `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    for range in password_ranges(url).into_iter().rev() {
        out.replace_range(range, "***");
    }
    out
}

/// The passwords in a `postgres://` URL (as written, percent-encoded if they are), for
/// tools that must keep them out of what they show.
pub fn url_passwords(url: &str) -> Vec<String> {
    password_ranges(url)
        .into_iter()
        .map(|range| url[range].to_owned())
        .filter(|password| !password.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_passwords_it_redacts() {
        assert_eq!(
            url_passwords("postgres://app:s3cret@db/orders?sslmode=require&password=other"),
            ["s3cret", "other"]
        );
        assert!(url_passwords("postgres://app@db/orders").is_empty());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:p%40ss@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("postgresql://u:x@h/db?sslmode=disable&password=secret&a=b"),
            "postgresql://u:***@h/db?sslmode=disable&password=***&a=b"
        );
        assert_eq!(redact_url("postgres://u:@h"), "postgres://u:***@h");
    }

    #[test]
    fn validates_names() {
        let mut c = PostgresConfig::new("postgres://x");
        assert!(c.validate().is_ok());
        c.schema = "bad\"name".into();
        assert!(c.validate().is_err());
        c.schema = "ok_1".into();
        c.table_prefix = String::new();
        assert!(c.validate().is_ok());
        c.table_prefix = "a-b".into();
        assert!(c.validate().is_err());
        c.table_prefix = "x".repeat(41);
        assert!(c.validate().is_err());
        c.table_prefix = "ok_".into();
        c.connect_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
    }

    #[test]
    fn validates_the_url() {
        let field_of = |url: &str| match PostgresConfig::new(url).validate() {
            Err(Error::Config { variable, message }) => (variable, message),
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        };
        let (variable, message) = field_of("mysql://app:secret@db/orders");
        assert_eq!(variable, "url");
        assert!(message.contains("mysql://"), "{message}");
        assert!(
            !message.contains("secret"),
            "the password stays hidden: {message}"
        );
        let (variable, message) = field_of("db.internal/orders");
        assert_eq!(variable, "url");
        assert!(message.contains("not a URL"), "{message}");
        assert!(PostgresConfig::new("postgresql://app@db/orders")
            .validate()
            .is_ok());
    }

    #[test]
    fn parses_ordering() {
        assert_eq!(
            "table-lock".parse::<Ordering>().unwrap(),
            Ordering::TableLock
        );
        assert_eq!(
            "concurrent".parse::<Ordering>().unwrap(),
            Ordering::Concurrent
        );
        assert_eq!(
            "SnapshotXmin".parse::<Ordering>().unwrap(),
            Ordering::Concurrent
        );
        assert!("nope".parse::<Ordering>().is_err());
    }
}
