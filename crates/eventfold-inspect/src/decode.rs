//! Stored payloads as JSON, for people: what `eventfold log --payload`, the relay's
//! domain-event route of the CLI and the inspector show.

use eventfold::{Config, JsonMapper, Mapper as _, StoredEvent};

/// Decodes stored payloads (events and snapshots) to JSON with the configured mapper,
/// and with zlib added when that fails (`eventfold demo` compresses whatever the
/// environment says), without upcasting: a record of a later schema version shows its
/// data as stored.
pub struct PayloadDecoder {
    configured: JsonMapper,
    with_zlib: JsonMapper,
    cipher_configured: bool,
}

impl std::fmt::Debug for PayloadDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadDecoder")
            .field("cipher_configured", &self.cipher_configured)
            .finish_non_exhaustive()
    }
}

impl PayloadDecoder {
    /// The decoder of `config`'s mapper (compressor, cipher key). Fails like
    /// [`Config::mapper`] on a bad cipher key.
    pub fn from_config(config: &Config) -> eventfold::Result<Self> {
        Ok(PayloadDecoder {
            configured: config.mapper()?,
            with_zlib: config.clone().zlib().mapper()?,
            cipher_configured: config.has_cipher_key(),
        })
    }

    /// The decoder of plain JSON records (zlib recognised too), without a cipher.
    pub fn plain() -> Self {
        PayloadDecoder {
            configured: JsonMapper::new(),
            with_zlib: JsonMapper::new().with_compressor(eventfold::Zlib::default()),
            cipher_configured: false,
        }
    }

    /// The record's payload as JSON, or why it cannot be read, in words (the likely cause
    /// first: a missing or wrong cipher key, or a damaged record).
    pub fn decode(&self, record: &StoredEvent) -> Result<serde_json::Value, String> {
        let decode = |mapper: &JsonMapper| {
            mapper.decode::<serde_json::Value>(&record.state, 1, |_, _| Ok(()))
        };
        let error = match decode(&self.configured) {
            Ok(json) => return Ok(json),
            Err(error) => error,
        };
        if let Ok(json) = decode(&self.with_zlib) {
            return Ok(json);
        }
        let likely = if self.cipher_configured {
            "wrong cipher key (EVENTFOLD_CIPHER_KEY) or damaged record"
        } else {
            "no cipher key configured (EVENTFOLD_CIPHER_KEY): the bytes are neither JSON \
             nor zlib, so the record is probably encrypted"
        };
        Err(format!("{likely} ({error})"))
    }
}
