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
        /// What kind of record it was.
        kind: RecordKind,
        /// Stream (aggregate id) of the record.
        stream_id: String,
        /// Version of the record within its stream.
        version: u64,
        /// What went wrong.
        #[source]
        source: CodecError,
    },

    /// A stream holds records of another aggregate type than the one asked for (two
    /// aggregate types given the same `String` id). Nothing was decoded.
    #[error("stream {stream_id} holds {found} records, not {expected}")]
    WrongAggregateType {
        /// The stream.
        stream_id: String,
        /// The aggregate type that was asked for.
        expected: &'static str,
        /// The topic found in the stream.
        found: String,
    },

    /// A domain event or aggregate state could not be encoded. The message names what
    /// was being encoded, never its contents (they may be encrypted at rest for a reason).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded: `"<Aggregate> event"` or `"<Aggregate> snapshot"`.
        what: String,
        /// What went wrong.
        #[source]
        source: CodecError,
    },

    /// The backend cannot do this (SQL statements on the memory store, ...).
    #[error("the {backend} store does not support {what}")]
    Unsupported {
        /// Store backend name.
        backend: &'static str,
        /// What was asked for.
        what: &'static str,
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
        /// Whether retrying the same work later can succeed (a deadlock, a serialisation
        /// failure, a busy database), as the backend judged from the driver's error code.
        transient: bool,
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

    /// True only for errors a retry can fix: the store was unreachable
    /// ([`Error::Unavailable`]), or a statement failed for a passing reason (a
    /// [`Error::Backend`] marked transient: deadlock, serialisation failure, busy); also
    /// for a projection error whose source is such an [`Error`]. Followers retry these
    /// (and projection errors their store recognises, [`crate::Store::is_transient_error`]).
    /// A syntax error, a missing table or a corrupt record is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::Backend { transient, .. } => *transient,
            Error::Projection { source, .. } => source
                .downcast_ref::<Error>()
                .is_some_and(Error::is_transient),
            _ => false,
        }
    }

    /// Wraps a driver error as [`Error::Backend`], not transient.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            transient: false,
            source: source.into(),
        }
    }

    /// Wraps a driver error that a retry may get past as [`Error::Backend`].
    pub fn transient(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            transient: true,
            source: source.into(),
        }
    }
}

/// Which kind of stored record failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// An event.
    Event,
    /// A snapshot.
    Snapshot,
    /// A record's metadata.
    Metadata,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Event => "event",
            RecordKind::Snapshot => "snapshot",
            RecordKind::Metadata => "metadata",
        })
    }
}

/// A stream and the version a writer expected to be its latest recorded one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpectedVersion {
    /// The stream.
    pub stream_id: String,
    /// The version the writer expected to be the latest (0: the stream should not exist).
    pub version: u64,
}

impl ExpectedVersion {
    /// `stream_id` expected at `version`.
    pub fn new(stream_id: impl Into<String>, version: u64) -> Self {
        ExpectedVersion {
            stream_id: stream_id.into(),
            version,
        }
    }
}

/// A lost optimistic-concurrency race. Nothing of the write was recorded; the caller may
/// reload and try again ([`crate::retry_on_conflict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// Some stream of the write was not at the version the writer expected: another
    /// writer recorded there first (or, at version 0, the stream already existed).
    Streams(Vec<ExpectedVersion>),
    /// A follower's stored position was already at or past the one being committed:
    /// another runner of the same follower processed these notifications.
    Tracking {
        /// The follower.
        follower: String,
        /// The position this writer tried to move it to.
        position: u64,
        /// The position stored.
        current: u64,
    },
}

impl Conflict {
    /// A conflict on these streams, each with the version the writer expected.
    pub fn streams(expected: impl IntoIterator<Item = (String, u64)>) -> Self {
        Conflict::Streams(
            expected
                .into_iter()
                .map(|(stream_id, version)| ExpectedVersion { stream_id, version })
                .collect(),
        )
    }

    /// A conflict on a follower's position.
    pub fn tracking(follower: impl Into<String>, position: u64, current: u64) -> Self {
        Conflict::Tracking {
            follower: follower.into(),
            position,
            current,
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Streams(expected) => {
                f.write_str("concurrency conflict: ")?;
                for (i, ExpectedVersion { stream_id, version }) in expected.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    if *version == 0 {
                        write!(f, "stream {stream_id} already exists (its id is taken)")?;
                    } else {
                        write!(
                            f,
                            "stream {stream_id} is no longer at version {version} (another writer saved first)"
                        )?;
                    }
                }
                Ok(())
            }
            Conflict::Tracking {
                follower,
                position,
                current,
            } => write!(
                f,
                "concurrency conflict: follower {follower} is already at position {current}, \
                 not below {position} (another runner processed these notifications)"
            ),
        }
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
    /// The record is neither JSON nor compressed JSON, and no cipher is configured: it is
    /// most likely encrypted, and the cipher key is missing.
    #[error("the record looks encrypted and no cipher key is configured (EVENTFOLD_CIPHER_KEY)")]
    MissingCipherKey,
    /// A stored column holds a value the record cannot have (a negative version or id).
    #[error("the stored {what} {value} is out of range")]
    OutOfRange {
        /// The column: `"version"`, `"notification id"`, ...
        what: &'static str,
        /// The value found.
        value: i64,
    },
    /// An upcast hook rejected an old stored record.
    #[error("upcast from schema version {from} failed: {message}")]
    Upcast {
        /// The schema version found in the stored record.
        from: u32,
        /// The hook's message.
        message: String,
    },
}
