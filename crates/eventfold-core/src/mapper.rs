//! Turning domain values into stored bytes and back: serde transcoding, then optional
//! compression, then optional encryption (the order Python `eventsourcing` uses, so its
//! `zlib` and AES-GCM can read what we write).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{CodecError, Error};

/// Steps an old stored value forward one schema version (see [`crate::Aggregate::upcast_event`]).
pub type Upcast = fn(u32, &mut serde_json::Value) -> Result<(), String>;

/// Encodes values for storage and decodes them again.
///
/// The default is [`JsonMapper`]; a mapper for another format (or for another library's
/// stored layout) implements this trait and is passed to [`crate::ApplicationBuilder::mapper`].
pub trait Mapper: Send + Sync + 'static {
    /// Encodes an event. Returns its name (the enum variant) and its stored bytes.
    fn encode_event<E: Serialize>(
        &self,
        event: &E,
        schema_version: u32,
    ) -> Result<(&'static str, Vec<u8>), CodecError>;

    /// Encodes aggregate state for a snapshot.
    fn encode_state<S: Serialize>(
        &self,
        state: &S,
        schema_version: u32,
    ) -> Result<Vec<u8>, CodecError>;

    /// Decodes stored bytes written by `encode_event` or `encode_state`, upcasting records
    /// of an older schema version to `schema_version` first.
    fn decode<T: DeserializeOwned>(
        &self,
        stored: &[u8],
        schema_version: u32,
        upcast: Upcast,
    ) -> Result<T, CodecError>;
}

/// Compresses stored payloads.
pub trait Compressor: Send + Sync + 'static {
    /// Compresses `plain`.
    fn compress(&self, plain: &[u8]) -> Vec<u8>;
    /// Reverses [`Compressor::compress`].
    fn decompress(&self, compressed: &[u8]) -> Result<Vec<u8>, CodecError>;
}

/// Encrypts stored payloads.
pub trait Cipher: Send + Sync + 'static {
    /// Encrypts `plain` (a fresh nonce every call).
    fn encrypt(&self, plain: &[u8]) -> Vec<u8>;
    /// Reverses [`Cipher::encrypt`]; fails on a wrong key or damaged bytes.
    fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CodecError>;
}

/// zlib (RFC 1950) compression: the bytes Python's `zlib.decompress` reads.
///
/// Backed by libdeflate with one reusable compressor per thread: a streaming deflate
/// state costs microseconds to set up for every record, more than the whole rest of a
/// command. The default level is 1: on event-sized JSON (tens to hundreds of bytes),
/// level 6 (Python's default) was measured to save under 10% of the bytes for up to 100x
/// the CPU time. Use [`Zlib::with_level`] for more.
#[derive(Debug, Clone, Copy)]
pub struct Zlib {
    level: i32,
}

impl Zlib {
    /// zlib at the given level (0-12; libdeflate's 10-12 are slower and smaller, still zlib).
    pub fn with_level(level: u32) -> Self {
        Zlib {
            level: level.min(12) as i32,
        }
    }
}

impl Default for Zlib {
    fn default() -> Self {
        Zlib::with_level(1)
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, libdeflater::Compressor)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<libdeflater::Decompressor>> = const { RefCell::new(None) };
}

/// Refuses to inflate beyond this: a corrupt or hostile record must not exhaust memory.
const MAX_INFLATED: usize = 1 << 30;

impl Compressor for Zlib {
    fn compress(&self, plain: &[u8]) -> Vec<u8> {
        COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let compressor = match &mut *cell {
                Some((level, compressor)) if *level == self.level => compressor,
                slot => {
                    let level = libdeflater::CompressionLvl::new(self.level)
                        .expect("level is clamped to libdeflate's range");
                    &mut slot
                        .insert((self.level, libdeflater::Compressor::new(level)))
                        .1
                }
            };
            let mut out = vec![0; compressor.zlib_compress_bound(plain.len())];
            let len = compressor
                .zlib_compress(plain, &mut out)
                .expect("the output buffer has the bound libdeflate asked for");
            out.truncate(len);
            out
        })
    }

    fn decompress(&self, compressed: &[u8]) -> Result<Vec<u8>, CodecError> {
        DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let decompressor = cell.get_or_insert_with(libdeflater::Decompressor::new);
            // zlib does not record the inflated size: guess, and grow on demand.
            let mut capacity = (compressed.len() * 4).max(256);
            loop {
                let mut out = vec![0; capacity];
                match decompressor.zlib_decompress(compressed, &mut out) {
                    Ok(len) => {
                        out.truncate(len);
                        return Ok(out);
                    }
                    Err(libdeflater::DecompressionError::InsufficientSpace)
                        if capacity < MAX_INFLATED =>
                    {
                        capacity *= 4;
                    }
                    Err(e) => return Err(CodecError::Compression(e.to_string())),
                }
            }
        })
    }
}

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// AES-256-GCM. Stored layout is `nonce (12) | tag (16) | ciphertext`, as Python
/// `eventsourcing.cipher.AESCipher` writes it.
#[derive(Clone)]
pub struct AesGcmCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for AesGcmCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesGcmCipher(<key hidden>)")
    }
}

impl AesGcmCipher {
    /// From a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        AesGcmCipher {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// From a standard base64 key of 32 bytes (Python's `AESCipher.create_key(32)` format).
    /// `variable` names the setting in the error.
    pub fn from_base64(key: &str, variable: &str) -> Result<Self, Error> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| Error::Config {
                variable: variable.to_owned(),
                message: format!("not valid base64: {e}"),
            })?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Config {
            variable: variable.to_owned(),
            message: format!(
                "AES-256 needs a 32-byte key, this one has {} bytes",
                bytes.len()
            ),
        })?;
        Ok(AesGcmCipher::new(&key))
    }

    /// A new random key, base64 encoded, for configuration.
    pub fn generate_key() -> String {
        base64::engine::general_purpose::STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }
}

impl Cipher for AesGcmCipher {
    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, plain)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        // aes-gcm returns ciphertext|tag; the stored layout puts the tag first.
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(tag);
        out.extend_from_slice(ciphertext);
        out
    }

    fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>, CodecError> {
        if stored.len() < NONCE_LEN + TAG_LEN {
            return Err(CodecError::Truncated(stored.len()));
        }
        let (nonce, rest) = stored.split_at(NONCE_LEN);
        let (tag, ciphertext) = rest.split_at(TAG_LEN);
        let mut sealed = Vec::with_capacity(rest.len());
        sealed.extend_from_slice(ciphertext);
        sealed.extend_from_slice(tag);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), sealed.as_slice())
            .map_err(|_| CodecError::Decryption)
    }
}

/// serde JSON, then the optional compressor, then the optional cipher.
///
/// Records of schema version 1 are the plain serde JSON of the value. Later versions are
/// wrapped as `{"_v":N,"data":<json>}` so an old record can be recognised and upcast.
#[derive(Clone, Default)]
pub struct JsonMapper {
    compressor: Option<Arc<dyn Compressor>>,
    cipher: Option<Arc<dyn Cipher>>,
}

impl std::fmt::Debug for JsonMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonMapper")
            .field("compressed", &self.compressor.is_some())
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct Versioned<T> {
    #[serde(rename = "_v")]
    version: u32,
    data: T,
}

const VERSION_MARKER: &[u8] = br#"{"_v":"#;

impl JsonMapper {
    /// Plain JSON, no compression, no encryption.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds compression.
    pub fn with_compressor(mut self, compressor: impl Compressor) -> Self {
        self.compressor = Some(Arc::new(compressor));
        self
    }

    /// Adds encryption.
    pub fn with_cipher(mut self, cipher: impl Cipher) -> Self {
        self.cipher = Some(Arc::new(cipher));
        self
    }

    /// Wraps JSON of a schema version above 1 as `{"_v":N,"data":<json>}`.
    fn mark_version(json: Vec<u8>, schema_version: u32) -> Vec<u8> {
        if schema_version <= 1 {
            return json;
        }
        let mut wrapped = Vec::with_capacity(json.len() + 24);
        write!(wrapped, "{{\"_v\":{schema_version},\"data\":")
            .expect("writing to a Vec cannot fail");
        wrapped.extend_from_slice(&json);
        wrapped.push(b'}');
        wrapped
    }

    fn seal(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        if let Some(compressor) = &self.compressor {
            bytes = compressor.compress(&bytes);
        }
        if let Some(cipher) = &self.cipher {
            bytes = cipher.encrypt(&bytes);
        }
        bytes
    }

    fn open<'a>(&self, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, CodecError> {
        let mut bytes = Cow::Borrowed(stored);
        if let Some(cipher) = &self.cipher {
            bytes = Cow::Owned(cipher.decrypt(&bytes)?);
        }
        if let Some(compressor) = &self.compressor {
            bytes = Cow::Owned(compressor.decompress(&bytes)?);
        }
        Ok(bytes)
    }
}

impl Mapper for JsonMapper {
    fn encode_event<E: Serialize>(
        &self,
        event: &E,
        schema_version: u32,
    ) -> Result<(&'static str, Vec<u8>), CodecError> {
        let name = crate::variant::variant_name(event).ok_or_else(|| {
            CodecError::Json(serde::ser::Error::custom(
                "an event must serialize as an externally tagged enum (serde's default), \
                 so its variant name can be its topic",
            ))
        })?;
        let json = serde_json::to_vec(event)?;
        let json = Self::mark_version(json, schema_version);
        Ok((name, self.seal(json)))
    }

    fn encode_state<S: Serialize>(
        &self,
        state: &S,
        schema_version: u32,
    ) -> Result<Vec<u8>, CodecError> {
        Ok(self.seal(Self::mark_version(
            serde_json::to_vec(state)?,
            schema_version,
        )))
    }

    fn decode<T: DeserializeOwned>(
        &self,
        stored: &[u8],
        schema_version: u32,
        upcast: Upcast,
    ) -> Result<T, CodecError> {
        self.decode_opened(stored, schema_version, upcast)
            .map_err(|error| {
                if self.cipher.is_none() && looks_sealed(stored) {
                    CodecError::MissingCipherKey
                } else {
                    error
                }
            })
    }
}

/// True for bytes that are neither JSON nor a zlib stream: what a cipher writes (random
/// to the eye). Only asked on the error path.
fn looks_sealed(stored: &[u8]) -> bool {
    let json = std::str::from_utf8(stored).is_ok_and(|text| {
        text.trim_start()
            .starts_with(|c: char| "{[\"-0123456789tfn".contains(c))
    });
    // A zlib header (RFC 1950: deflate, check bits) marks a compressed record, damaged
    // or not; random bytes carry one once in about 500.
    let zlib = stored.len() >= 2
        && stored[0] & 0x0f == 8
        && (u16::from(stored[0]) << 8 | u16::from(stored[1])) % 31 == 0;
    !stored.is_empty() && !json && !zlib
}

impl JsonMapper {
    fn decode_opened<T: DeserializeOwned>(
        &self,
        stored: &[u8],
        schema_version: u32,
        upcast: Upcast,
    ) -> Result<T, CodecError> {
        let json = self.open(stored)?;
        let (found, mut value) = if json.starts_with(VERSION_MARKER) {
            let versioned: Versioned<serde_json::Value> = serde_json::from_slice(&json)?;
            (versioned.version, versioned.data)
        } else if schema_version <= 1 {
            return Ok(serde_json::from_slice(&json)?);
        } else {
            (1, serde_json::from_slice(&json)?)
        };
        for from in found..schema_version {
            upcast(from, &mut value).map_err(|message| CodecError::Upcast { from, message })?;
        }
        Ok(serde_json::from_value(value)?)
    }
}
