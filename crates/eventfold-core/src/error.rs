//! The one error type of the core, shared by every store backend.

use std::fmt;

/// A boxed error from a driver or user code, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout eventfold.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in eventfold.
///
/// Match on the variant, never on the message: [`Error::Conflict`] is the one a caller
/// usually retries (see [`crate::retry_on_conflict`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another writer recorded a version this save expected to record first.
    /// Nothing of the save was written; reload the aggregate and run the command again.
    #[error("{0}")]
    Conflict(Conflict),

    /// No events exist for this aggregate id (or none at or below the requested version).
    #[error("aggregate {aggregate} {id} not found")]
    AggregateNotFound {
        /// The aggregate type name ([`crate::Aggregate::TYPE`]).
        aggregate: &'static str,
        /// The id that was looked up.
        id: String,
    },

    /// A stored event or snapshot could not be decoded (corrupt bytes, wrong cipher key,
    /// or a schema the code no longer understands).
    #[error("cannot decode stored {kind} {stream_id}@{version}: {source}")]
    Decode {
        /// `"event"` or `"snapshot"`.
        kind: &'static str,
        /// Stream (aggregate id) of the record.
        stream_id: String,
        /// Version of the record within its stream.
        version: u64,
        /// What went wrong.
        #[source]
        source: CodecError,
    },

    /// A domain event or aggregate state could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded (an event topic or a snapshot).
        what: String,
        /// What went wrong.
        #[source]
        source: CodecError,
    },

    /// The database cannot be reached (down, refused, timed out). Safe to retry later:
    /// nothing was half-written.
    #[error("{backend} store unavailable ({target}): {source}")]
    Unavailable {
        /// Store backend name, e.g. `"postgres"`.
        backend: &'static str,
        /// Where it tried to connect, with any password removed.
        target: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The database answered with an error that is not a conflict.
    #[error("{backend} store error: {source}")]
    Backend {
        /// Store backend name, e.g. `"sqlite"`.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The database schema is not the one this code expects.
    #[error("{backend} schema is at version {found}, this build expects {expected}: {hint}")]
    SchemaVersion {
        /// Store backend name.
        backend: &'static str,
        /// Version found in the database (0 = no tables).
        found: i64,
        /// Version this build of eventfold needs.
        expected: i64,
        /// What to do about it, e.g. "run `eventfold migrate`".
        hint: String,
    },

    /// A configuration value is missing or invalid.
    #[error("invalid configuration {variable}: {message}")]
    Config {
        /// The environment variable or builder setting at fault.
        variable: String,
        /// Why the value was rejected.
        message: String,
    },

    /// A projection failed while processing a notification; its transaction was rolled back
    /// and its position did not move.
    #[error("projection {follower} failed at notification {notification_id}: {source}")]
    Projection {
        /// The follower's name.
        follower: String,
        /// The notification it was processing.
        notification_id: u64,
        /// The projection's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// True for [`Error::Conflict`]: the caller may reload and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// True for errors worth waiting out: the store was unreachable ([`Error::Unavailable`])
    /// or failed a statement for a reason of its own ([`Error::Backend`]); also for a
    /// projection error whose source is such an [`Error`]. Followers retry these.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Backend { .. } => true,
            Error::Projection { source, .. } => source
                .downcast_ref::<Error>()
                .is_some_and(Error::is_transient),
            _ => false,
        }
    }

    /// Wraps a driver error as [`Error::Backend`].
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }
}

/// A lost optimistic-concurrency race: some `(stream, version)` of the save already existed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conflict {
    /// The streams of the failed save, each with the version the writer expected to be the
    /// latest one recorded (the first new version minus one).
    pub expected: Vec<(String, u64)>,
}

impl Conflict {
    /// A conflict for the given streams and expected versions.
    pub fn new(expected: Vec<(String, u64)>) -> Self {
        Conflict { expected }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("concurrency conflict: another writer got there first (expected ")?;
        for (i, (stream, version)) in self.expected.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{stream} at version {version}")?;
        }
        f.write_str(")")
    }
}

/// Why bytes could not be turned into a value or back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// JSON (de)serialization failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The compressed bytes are not valid for the configured compressor.
    #[error("decompression failed: {0}")]
    Compression(String),
    /// Authentication of the ciphertext failed: wrong key, or the bytes were altered.
    #[error("decryption failed: wrong cipher key or damaged ciphertext")]
    Decryption,
    /// The ciphertext is shorter than nonce + tag.
    #[error("damaged ciphertext: {0} bytes is shorter than nonce and tag")]
    Truncated(usize),
    /// An upcast hook rejected an old stored record.
    #[error("upcast from schema version {from} failed: {message}")]
    Upcast {
        /// The schema version found in the stored record.
        from: u32,
        /// The hook's message.
        message: String,
    },
}
