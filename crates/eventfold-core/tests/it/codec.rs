use eventfold_core::{
    AesGcmCipher, Application, CodecError, Compressor, Error, EventReader, EventWriter,
    InMemoryStore, JsonMapper, Mapper, RecordKind, Recording, Root, StoredEvent, StreamQuery, Zlib,
};

use crate::support::{Tally, TallyEvent};

fn key() -> String {
    AesGcmCipher::generate_key()
}

async fn saved_tally(app: &Application) -> Root<Tally> {
    let mut tally = Root::<Tally>::new(TallyEvent::Opened {
        label: "secret ledger".into(),
    });
    for amount in [3, 4, 5] {
        tally.trigger(TallyEvent::Added { amount });
    }
    app.save(&mut tally).await.unwrap();
    tally
}

#[tokio::test]
async fn compressed_and_encrypted_round_trip() {
    let key = key();
    for (mapper, encrypted) in [
        (JsonMapper::new().with_compressor(Zlib::default()), false),
        (
            JsonMapper::new().with_cipher(AesGcmCipher::from_base64(&key, "k").unwrap()),
            true,
        ),
        (
            JsonMapper::new()
                .with_compressor(Zlib::default())
                .with_cipher(AesGcmCipher::from_base64(&key, "k").unwrap()),
            true,
        ),
    ] {
        let store = InMemoryStore::new();
        let app = Application::builder(store.clone())
            .mapper(mapper)
            .snapshot_every::<Tally>(2)
            .build();
        let mut tally = Root::<Tally>::new(TallyEvent::Opened {
            label: "secret ledger".into(),
        });
        for amount in [3, 4, 5] {
            tally.trigger(TallyEvent::Added { amount });
        }
        app.save(&mut tally).await.unwrap();
        let loaded = app.repository().get::<Tally>(tally.id()).await.unwrap();
        assert_eq!(loaded.state(), tally.state());
        let stored = store
            .select_events(&tally.id().to_string(), StreamQuery::all())
            .await
            .unwrap();
        // Not "does not start with `{`": a random nonce starts with that byte once in 256.
        assert!(
            serde_json::from_slice::<serde_json::Value>(&stored[0].state).is_err(),
            "stored bytes are transformed, not plain JSON"
        );
        if encrypted {
            assert!(
                !stored[0].state.windows(6).any(|w| w == b"secret"),
                "plain text must not be visible in encrypted bytes"
            );
        }
    }
}

#[tokio::test]
async fn wrong_key_is_a_clear_decode_error() {
    let store = InMemoryStore::new();
    let writer = Application::builder(store.clone())
        .mapper(JsonMapper::new().with_cipher(AesGcmCipher::from_base64(&key(), "k").unwrap()))
        .build();
    let tally = saved_tally(&writer).await;
    let reader = Application::builder(store.clone())
        .mapper(JsonMapper::new().with_cipher(AesGcmCipher::from_base64(&key(), "k").unwrap()))
        .build();
    let err = reader
        .repository()
        .get::<Tally>(tally.id())
        .await
        .unwrap_err();
    match &err {
        Error::Decode {
            kind: RecordKind::Event,
            stream_id,
            version: 1,
            source: CodecError::Decryption,
        } => assert_eq!(stream_id, &tally.id().to_string()),
        other => panic!("expected a decryption error, got {other:?}"),
    }
    assert!(err.to_string().contains("wrong cipher key"), "{err}");
}

#[test]
fn bad_keys_name_the_variable() {
    for (key, needle) in [("not base64!", "base64"), ("c2hvcnQ=", "32-byte")] {
        let err = AesGcmCipher::from_base64(key, "EVENTFOLD_CIPHER_KEY").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("EVENTFOLD_CIPHER_KEY") && text.contains(needle),
            "{text}"
        );
    }
}

#[tokio::test]
async fn corrupt_stored_event_names_stream_and_version() {
    let store = InMemoryStore::new();
    let app = Application::builder(store.clone())
        .mapper(JsonMapper::new().with_compressor(Zlib::default()))
        .build();
    let mut tally = saved_tally(&app).await;
    let stream_id = tally.id().to_string();
    // Another process wrote garbage as version 5 (valid store record, undecodable payload).
    store
        .record(&Recording::new().event(StoredEvent::new(
            stream_id.clone(),
            5,
            "Tally.Added",
            tally.modified_on(),
            b"\x78\x9c not zlib at all".to_vec(),
        )))
        .await
        .unwrap();
    let err = app.repository().get::<Tally>(tally.id()).await.unwrap_err();
    match &err {
        Error::Decode {
            kind: RecordKind::Event,
            stream_id: s,
            version: 5,
            source: CodecError::Compression(_),
        } => assert_eq!(s, &stream_id),
        other => panic!("expected a decode error at version 5, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("{stream_id}@5")), "{err}");
    // Versions before the damage still load.
    let before = app
        .repository()
        .get_at::<Tally>(tally.id(), 4)
        .await
        .unwrap();
    assert_eq!(before.total, 12);
    tally.trigger(TallyEvent::Reset);
    assert!(app.save(&mut tally).await.unwrap_err().is_conflict());
}

#[test]
fn events_of_unsupported_shape_fail_to_encode_clearly() {
    #[derive(serde::Serialize)]
    #[serde(tag = "type")]
    enum Internally {
        A,
    }
    let err = JsonMapper::new()
        .encode_event(&Internally::A, 1)
        .unwrap_err();
    assert!(err.to_string().contains("externally tagged"), "{err}");
}

/// Python's `zlib.decompress` reads what we write (skipped when python3 is missing).
#[test]
fn zlib_bytes_are_readable_by_python() {
    let plain = br#"{"SomethingHappened":{"what":"dinosaurs"}}"#;
    let compressed = Zlib::default().compress(plain);
    let hex: String = compressed.iter().map(|b| format!("{b:02x}")).collect();
    let output = match std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; sys.stdout.write(zlib.decompress(bytes.fromhex(sys.argv[1])).decode())",
            &hex,
        ])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("python3 not found: skipping the interop check");
            return;
        }
        Err(e) => panic!("running python3: {e}"),
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, plain);

    // And we read what Python writes.
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zlib; sys.stdout.write(zlib.compress(b'{\"Reset\":null}').hex())",
        ])
        .output()
        .unwrap();
    let bytes: Vec<u8> = (0..output.stdout.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(std::str::from_utf8(&output.stdout[i..i + 2]).unwrap(), 16).unwrap()
        })
        .collect();
    assert_eq!(
        Zlib::default().decompress(&bytes).unwrap(),
        br#"{"Reset":null}"#
    );
}

#[tokio::test]
async fn encrypted_records_read_without_a_key_say_the_key_is_missing() {
    let store = InMemoryStore::new();
    for compressor in [false, true] {
        let mut sealed =
            JsonMapper::new().with_cipher(AesGcmCipher::from_base64(&key(), "k").unwrap());
        let mut plain = JsonMapper::new();
        if compressor {
            sealed = sealed.with_compressor(Zlib::default());
            plain = plain.with_compressor(Zlib::default());
        }
        let writer = Application::builder(store.clone()).mapper(sealed).build();
        let tally = saved_tally(&writer).await;
        let reader = Application::builder(store.clone()).mapper(plain).build();
        let err = reader
            .repository()
            .get::<Tally>(tally.id())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Decode {
                    source: CodecError::MissingCipherKey,
                    ..
                }
            ),
            "compressor {compressor}: {err:?}"
        );
        assert!(err.to_string().contains("EVENTFOLD_CIPHER_KEY"), "{err}");
    }
}

#[test]
fn an_encode_error_never_shows_the_event() {
    #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
    struct Vault;
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Secret {
        pin: String,
    }
    impl eventfold_core::Aggregate for Vault {
        const TYPE: &'static str = "Vault";
        type Id = uuid::Uuid;
        type Event = Secret;
        fn apply(&mut self, _: &Secret) {}
    }
    let app = Application::builder(InMemoryStore::new()).build();
    let mut vault = Root::<Vault>::new(Secret { pin: "4921".into() });
    let err = crate::support::runtime()
        .block_on(app.save(&mut vault))
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(
        !text.contains("4921"),
        "the event's contents leaked: {text}"
    );
    assert!(text.contains("Vault event"), "{text}");
}
