//! The crate's error type.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// What went wrong talking to the broker.
///
/// No variant ever carries the connection password: every message that comes from lapin or
/// from the broker is scrubbed of it, and endpoints appear in their redacted form
/// ([`crate::AmqpConfig::redacted_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The configuration is invalid (a URL that does not parse, a name longer than AMQP's
    /// 255-byte short strings, a zero window). Retrying does not help.
    #[error("invalid AMQP configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The broker cannot be reached, or the connection (or its heartbeat) was lost. The
    /// caller should reconnect with backoff ([`crate::ConfirmedPublisher::reconnect`]);
    /// messages whose confirmation did not arrive must be treated as not published.
    #[error("AMQP broker unavailable at {endpoint}: {reason}")]
    Unavailable {
        /// The broker, as `amqp://user:***@host:port/vhost`.
        endpoint: String,
        /// Why (I/O error, connection closed by the broker, missed heartbeats...).
        reason: String,
    },

    /// The broker refused the credentials or the access to the virtual host. Retrying with
    /// the same configuration does not help.
    #[error("AMQP access refused at {endpoint}: {reason}")]
    AccessRefused {
        /// The broker, as `amqp://user:***@host:port/vhost`.
        endpoint: String,
        /// The broker's reply text.
        reason: String,
    },

    /// An exchange or queue that the operation needs does not exist (AMQP 404). For a publish
    /// this means the message was **not** published; the channel was closed by the broker and
    /// is re-opened for the next publish.
    #[error("AMQP entity not found: {reason}")]
    NotFound {
        /// The broker's reply text (names the missing exchange or queue).
        reason: String,
    },

    /// The broker closed the channel for another reason (for example 406
    /// `PRECONDITION_FAILED` when a declaration does not match an existing entity).
    #[error("AMQP channel error {code}: {reason}")]
    Channel {
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text.
        reason: String,
    },

    /// The channel closed under this operation after an earlier channel-level error (a 404
    /// for another message of the same batch, for instance): the message was not sent. The
    /// connection is fine; the next batch uses a new channel.
    #[error("AMQP channel closed: {reason}")]
    ChannelClosed {
        /// What lapin reported.
        reason: String,
    },

    /// The publisher or consumer was shut down, or its connection closed on request.
    #[error("AMQP {what} is closed")]
    Closed {
        /// What is closed (`"publisher"`, `"consumer"`).
        what: &'static str,
    },

    /// Any other client-side failure reported by lapin (framing, serialisation...).
    #[error("AMQP client error: {reason}")]
    Client {
        /// lapin's message, scrubbed of the password.
        reason: String,
    },
}

impl AmqpError {
    /// Whether the right reaction is to reconnect (with backoff) and try again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AmqpError::Unavailable { .. })
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        AmqpError::Config {
            reason: reason.into(),
        }
    }

    /// Classifies a lapin error. `endpoint` is already redacted; `password` is scrubbed from
    /// every message (lapin's and the broker's texts).
    pub(crate) fn from_lapin(err: &lapin::Error, endpoint: &str, password: &str) -> Self {
        let scrub = |s: String| scrub(&s, password);
        match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                let reason = scrub(amqp.get_message().to_string());
                match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => AmqpError::NotFound { reason },
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => AmqpError::AccessRefused {
                        endpoint: endpoint.to_owned(),
                        reason,
                    },
                    AMQPErrorKind::Soft(soft) => AmqpError::Channel {
                        code: soft.get_id(),
                        reason,
                    },
                    AMQPErrorKind::Hard(_) => AmqpError::Unavailable {
                        endpoint: endpoint.to_owned(),
                        reason,
                    },
                }
            }
            lapin::ErrorKind::IOError(_)
            | lapin::ErrorKind::MissingHeartbeatError
            | lapin::ErrorKind::InvalidConnectionState(_)
            | lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::InvalidChannel(_)
            | lapin::ErrorKind::RuntimeShutdownError(_) => AmqpError::Unavailable {
                endpoint: endpoint.to_owned(),
                reason: scrub(err.to_string()),
            },
            _ => AmqpError::Client {
                reason: scrub(err.to_string()),
            },
        }
    }
}

/// Replaces every occurrence of `password` (and of its percent-encoded form) in `text`.
pub(crate) fn scrub(text: &str, password: &str) -> String {
    if password.is_empty() {
        return text.to_owned();
    }
    let mut out = text.replace(password, "***");
    for strict in [false, true] {
        let encoded = crate::config::percent_encode_with(password, strict);
        if encoded != password {
            out = out.replace(&encoded, "***");
        }
    }
    out
}

/// The crate's result type.
pub type Result<T, E = AmqpError> = std::result::Result<T, E>;
