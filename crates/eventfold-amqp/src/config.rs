//! Where the broker is and how to connect to it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::uri::AMQPUri;

use crate::error::{scrub, AmqpError, Result};

/// Connections opened by this process through this crate (every [`AmqpConfig::connect`],
/// including reconnects).
static CONNECTIONS_OPENED: AtomicU64 = AtomicU64::new(0);

/// How many AMQP connections this process has opened through this crate so far.
pub fn connections_opened() -> u64 {
    CONNECTIONS_OPENED.load(Ordering::Relaxed)
}

/// How to reach the broker: `amqp://user:password@host:port/vhost`, a connection name shown
/// by `rabbitmqctl list_connections name` and the management UI, and the heartbeat.
///
/// `Debug` and `Display` print the redacted URL (`amqp://user:***@host:port/vhost`); the
/// password never appears in a log line or an [`AmqpError`].
#[derive(Clone)]
pub struct AmqpConfig {
    uri: AMQPUri,
    connection_name: String,
}

impl AmqpConfig {
    /// The default heartbeat, in seconds (RabbitMQ's own default is 60).
    pub const DEFAULT_HEARTBEAT_SECS: u16 = 30;
    /// The default connection timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Parses an `amqp://user:password@host:port/vhost` URL (percent-encoded vhost, `%2f` or
    /// an empty path for `/`). Query parameters `heartbeat`, `connection_timeout` (ms),
    /// `frame_max` and `channel_max` are honoured. Only `amqp://` is supported (this crate
    /// is built without TLS).
    pub fn from_url(url: &str) -> Result<Self> {
        let mut uri: AMQPUri = url.parse().map_err(|e: String| {
            // amq-protocol's "Invalid URL: '<url>'" would echo the password.
            let password = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .and_then(|(userinfo, _)| userinfo.split_once(':'))
                .map(|(_, p)| p)
                .unwrap_or("");
            let e = e.replace(url, "<the URL>");
            AmqpError::config(format!("not an AMQP URL: {}", scrub(&e, password)))
        })?;
        if uri.scheme != lapin::uri::AMQPScheme::AMQP {
            return Err(AmqpError::config(
                "only amqp:// is supported (the crate is built without TLS)",
            ));
        }
        if uri.vhost.is_empty() {
            uri.vhost = "/".to_owned();
        }
        uri.query
            .heartbeat
            .get_or_insert(Self::DEFAULT_HEARTBEAT_SECS);
        uri.query
            .connection_timeout
            .get_or_insert(Self::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64);
        Ok(AmqpConfig {
            uri,
            connection_name: "eventfold".to_owned(),
        })
    }

    /// Sets the connection name (client property `connection_name`). Connections opened by
    /// this crate are named `<name>/<role>` (role: `publisher`, `consumer`).
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Sets the heartbeat in seconds (0 disables it; the broker may negotiate it down).
    pub fn with_heartbeat(mut self, secs: u16) -> Self {
        self.uri.query.heartbeat = Some(secs);
        self
    }

    /// Sets the TCP connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.uri.query.connection_timeout = Some(timeout.as_millis() as u64);
        self
    }

    /// Replaces the virtual host.
    pub fn with_vhost(mut self, vhost: impl Into<String>) -> Self {
        self.uri.vhost = vhost.into();
        self
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The connection name.
    pub fn connection_name(&self) -> &str {
        &self.connection_name
    }

    /// The requested heartbeat in seconds.
    pub fn heartbeat(&self) -> u16 {
        self.uri.query.heartbeat.unwrap_or(0)
    }

    /// The URL with the password replaced by `***`: safe for logs and errors.
    pub fn redacted_url(&self) -> String {
        format!(
            "amqp://{}:***@{}:{}/{}",
            percent_encode(&self.uri.authority.userinfo.username),
            self.uri.authority.host,
            self.uri.authority.port,
            percent_encode(&self.uri.vhost),
        )
    }

    /// The password, for a tool that must keep it out of what it shows (print
    /// [`Self::redacted_url`], never this).
    pub fn password(&self) -> &str {
        &self.uri.authority.userinfo.password
    }

    /// Maps a lapin error of a connection made from this configuration.
    pub(crate) fn error(&self, err: &lapin::Error) -> AmqpError {
        AmqpError::from_lapin(err, &self.redacted_url(), self.password())
    }

    /// Opens a connection named `<connection name>/<role>` and counts it.
    pub(crate) async fn connect(&self, role: &str) -> Result<lapin::Connection> {
        let name = format!("{}/{}", self.connection_name, role);
        let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
        CONNECTIONS_OPENED.fetch_add(1, Ordering::Relaxed);
        let conn = lapin::Connection::connect_uri(self.uri.clone(), props)
            .await
            .map_err(|e| self.error(&e))?;
        tracing::debug!(endpoint = %self, role, "AMQP connection opened");
        Ok(conn)
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("connection_name", &self.connection_name)
            .field("heartbeat", &self.uri.query.heartbeat)
            .finish()
    }
}

impl fmt::Display for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`ef-test.1` stays
/// readable); `strict` also encodes `-._~`, as amq-protocol's URI printer does.
pub(crate) fn percent_encode_with(s: &str, strict: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || (!strict && matches!(b, b'-' | b'.' | b'_' | b'~')) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes as in a URL (unreserved characters kept).
pub(crate) fn percent_encode(s: &str) -> String {
    percent_encode_with(s, false)
}

/// Turns a name into an AMQP short string (at most 255 bytes), or a configuration error.
pub(crate) fn short(what: &str, s: &str) -> Result<lapin::types::ShortString> {
    lapin::types::ShortString::try_new(s).map_err(|_| {
        AmqpError::config(format!(
            "{what} is {} bytes, AMQP allows at most 255",
            s.len()
        ))
    })
}
