//! Configuration from variables: good values build a working application, bad ones are
//! errors that name the variable.

use eventfold::{AesGcmCipher, Config, Error};

fn error_of(vars: &[(&str, &str)]) -> (String, String) {
    match Config::from_vars(vars.iter().copied()) {
        Err(Error::Config { variable, message }) => (variable, message),
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(config) => panic!("expected an error, got {config:?}"),
    }
}

#[test]
fn bad_values_name_their_variable() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("EVENTFOLD_STORE", "cassandra")],
            "EVENTFOLD_STORE",
            "unknown store",
        ),
        (
            &[("EVENTFOLD_COMPRESSOR", "lz4")],
            "EVENTFOLD_COMPRESSOR",
            "none or zlib",
        ),
        (
            &[("EVENTFOLD_CIPHER_KEY", "short")],
            "EVENTFOLD_CIPHER_KEY",
            "base64",
        ),
        (
            &[("EVENTFOLD_CIPHER_KEY", "c2hvcnQ=")],
            "EVENTFOLD_CIPHER_KEY",
            "32-byte",
        ),
        (
            &[("EVENTFOLD_SNAPSHOT_INTERVALS", "World=five")],
            "EVENTFOLD_SNAPSHOT_INTERVALS",
            "Type=N",
        ),
        (
            &[("EVENTFOLD_SNAPSHOT_INTERVALS", "=5")],
            "EVENTFOLD_SNAPSHOT_INTERVALS",
            "Type=N",
        ),
        (
            &[("EVENTFOLD_CACHE_SIZE", "-1")],
            "EVENTFOLD_CACHE_SIZE",
            "whole number",
        ),
        (
            &[("EVENTFOLD_CREATE_TABLES", "maybe")],
            "EVENTFOLD_CREATE_TABLES",
            "true or false",
        ),
        (
            &[("EVENTFOLD_SQLITE_SYNCHRONOUS", "extra")],
            "EVENTFOLD_SQLITE_SYNCHRONOUS",
            "off, normal or full",
        ),
        (
            &[("EVENTFOLD_SQLITE_PATH", "")],
            "EVENTFOLD_SQLITE_PATH",
            "empty",
        ),
        (
            &[
                ("EVENTFOLD_STORE", "sqlite"),
                ("EVENTFOLD_SQLITE_PATH", "  "),
            ],
            "EVENTFOLD_SQLITE_PATH",
            "empty",
        ),
    ];
    for (vars, variable, needle) in cases {
        let (got_variable, message) = error_of(vars);
        assert_eq!(&got_variable, variable, "for {vars:?}");
        assert!(
            message.contains(needle),
            "{variable}: {message:?} lacks {needle:?}"
        );
        let shown = Error::Config {
            variable: got_variable,
            message,
        }
        .to_string();
        assert!(shown.contains(variable), "{shown}");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_needs_a_url() {
    let (variable, message) = error_of(&[("EVENTFOLD_STORE", "postgres")]);
    assert_eq!(variable, "EVENTFOLD_DATABASE_URL");
    assert!(message.contains("required"), "{message}");
}

/// The store crates check their own settings and name their fields (`schema`); from the
/// environment, the error names the variable instead.
#[cfg(feature = "postgres")]
#[test]
fn postgres_names_and_urls_are_reported_under_their_variable() {
    let url = ("EVENTFOLD_DATABASE_URL", "postgres://app@db/orders");
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[url, ("EVENTFOLD_POSTGRES_SCHEMA", "bad-name")],
            "EVENTFOLD_POSTGRES_SCHEMA",
            "bad-name",
        ),
        (
            &[url, ("EVENTFOLD_TABLE_PREFIX", "a-b")],
            "EVENTFOLD_TABLE_PREFIX",
            "a-b",
        ),
        (
            &[url, ("EVENTFOLD_TABLE_PREFIX", "1st_")],
            "EVENTFOLD_TABLE_PREFIX",
            "digit",
        ),
        (
            &[("EVENTFOLD_DATABASE_URL", "mysql://app:secret@db/orders")],
            "EVENTFOLD_DATABASE_URL",
            "unsupported scheme mysql://",
        ),
        (
            &[("DATABASE_URL", "mysql://app@db/orders")],
            "DATABASE_URL",
            "unsupported scheme mysql://",
        ),
        (
            &[("EVENTFOLD_DATABASE_URL", "db.internal/orders")],
            "EVENTFOLD_DATABASE_URL",
            "not a URL",
        ),
    ];
    for (vars, variable, needle) in cases {
        let mut vars = vars.to_vec();
        vars.push(("EVENTFOLD_STORE", "postgres"));
        let (got_variable, message) = error_of(&vars);
        assert_eq!(&got_variable, variable, "for {vars:?}: {message}");
        assert!(
            message.contains(needle),
            "{variable}: {message:?} lacks {needle:?}"
        );
        assert!(!message.contains("secret"), "{message}");
    }
}

/// A value set with the builder keeps the setting's name.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn builder_settings_keep_their_own_name() {
    let err = Config::postgres("mysql://db/orders")
        .open_store()
        .await
        .err()
        .expect("a MySQL URL is refused");
    assert!(
        matches!(&err, Error::Config { variable, .. } if variable == "url"),
        "{err:?}"
    );
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_tuning_comes_from_variables() {
    use std::time::Duration;

    use eventfold::postgres::Ordering;
    use eventfold::StoreConfig;

    let url = ("EVENTFOLD_DATABASE_URL", "postgres://app@db/orders");
    let config = Config::from_vars([
        ("EVENTFOLD_STORE", "postgres"),
        url,
        ("EVENTFOLD_POSTGRES_MAX_CONNECTIONS", "32"),
        ("EVENTFOLD_POSTGRES_CONNECT_TIMEOUT", "2.5"),
        ("EVENTFOLD_POSTGRES_REPLY_TIMEOUT", "0"),
        ("EVENTFOLD_POSTGRES_LISTENER_HEARTBEAT", "30"),
        ("EVENTFOLD_POSTGRES_ORDERING", "table-lock"),
    ])
    .unwrap();
    let StoreConfig::Postgres(postgres) = config.store_config() else {
        panic!("a PostgreSQL configuration: {config:?}");
    };
    assert_eq!(postgres.max_connections, 32);
    assert_eq!(postgres.connect_timeout, Duration::from_millis(2500));
    assert_eq!(postgres.reply_timeout, Duration::ZERO);
    assert_eq!(postgres.listener_heartbeat, Duration::from_secs(30));
    assert_eq!(postgres.ordering, Ordering::TableLock);

    type Case<'a> = (&'a str, &'a str, &'a str);
    let cases: &[Case] = &[
        ("EVENTFOLD_POSTGRES_MAX_CONNECTIONS", "0", "at least 1"),
        ("EVENTFOLD_POSTGRES_MAX_CONNECTIONS", "many", "whole number"),
        ("EVENTFOLD_POSTGRES_CONNECT_TIMEOUT", "-1", "seconds"),
        ("EVENTFOLD_POSTGRES_CONNECT_TIMEOUT", "0", "above zero"),
        ("EVENTFOLD_POSTGRES_REPLY_TIMEOUT", "30s", "seconds"),
        ("EVENTFOLD_POSTGRES_LISTENER_HEARTBEAT", "NaN", "seconds"),
        (
            "EVENTFOLD_POSTGRES_ORDERING",
            "serial",
            "concurrent or table-lock",
        ),
    ];
    for (variable, value, needle) in cases {
        let (got_variable, message) =
            error_of(&[("EVENTFOLD_STORE", "postgres"), url, (variable, value)]);
        assert_eq!(&got_variable, variable, "for {value:?}");
        assert!(
            message.contains(needle),
            "{variable}: {message:?} lacks {needle:?}"
        );
    }
}

#[tokio::test]
async fn good_values_configure_a_working_application() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sqlite3");
    let key = AesGcmCipher::generate_key();
    let vars = [
        ("EVENTFOLD_STORE", "sqlite"),
        ("EVENTFOLD_SQLITE_PATH", path.to_str().unwrap()),
        ("EVENTFOLD_SQLITE_SYNCHRONOUS", "full"),
        ("EVENTFOLD_COMPRESSOR", "zlib"),
        ("EVENTFOLD_CIPHER_KEY", key.as_str()),
        ("EVENTFOLD_SNAPSHOT_INTERVALS", "Note=2"),
        ("EVENTFOLD_CACHE_SIZE", "10"),
        ("UNRELATED", "ignored"),
    ];
    let config = Config::from_vars(vars).unwrap();
    assert!(config
        .store_config()
        .to_string()
        .contains("synchronous=Full"));
    let app = config.aggregate::<Note>().application().await.unwrap();
    assert_eq!(app.snapshot_interval("Note"), Some(2));

    let mut note = eventfold::Root::<Note>::new(NoteEvent::Written {
        text: "hello".into(),
    });
    note.trigger(NoteEvent::Written {
        text: "again".into(),
    });
    app.save(&mut note).await.unwrap();
    assert!(path.exists(), "the SQLite file was created");

    // The same file read with another key fails clearly; with the right key it loads.
    let wrong = Config::from_vars(vars.map(|(k, v)| {
        if k == "EVENTFOLD_CIPHER_KEY" {
            (k, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        } else {
            (k, v)
        }
    }))
    .unwrap()
    .aggregate::<Note>()
    .cache_size(0)
    .application()
    .await
    .unwrap();
    assert!(matches!(
        wrong.repository().get::<Note>(note.id()).await,
        Err(Error::Decode { .. })
    ));
    let again = Config::from_vars(vars)
        .unwrap()
        .aggregate::<Note>()
        .application()
        .await
        .unwrap();
    assert_eq!(
        again
            .repository()
            .get::<Note>(note.id())
            .await
            .unwrap()
            .texts,
        ["hello", "again"]
    );
}

/// A misspelt aggregate type in `EVENTFOLD_SNAPSHOT_INTERVALS` would never snapshot
/// anything: building the application fails instead, naming the variable, the unknown
/// name and the declared types.
#[tokio::test]
async fn snapshot_intervals_name_declared_aggregate_types_only() {
    let typo = [
        ("EVENTFOLD_STORE", "memory"),
        ("EVENTFOLD_SNAPSHOT_INTERVALS", "Note=2,Nots=5"),
    ];
    let expect_error = |result: eventfold::Result<eventfold::Application>| match result {
        Err(Error::Config { variable, message }) => {
            assert_eq!(variable, "EVENTFOLD_SNAPSHOT_INTERVALS");
            message
        }
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("expected an error for the unknown type"),
    };
    let config = Config::from_vars(typo).unwrap().aggregate::<Note>();
    let message = expect_error(config.application().await);
    assert!(message.contains("Nots"), "{message}");
    assert!(message.contains("declared types are Note"), "{message}");
    let store = config.open_store().await.unwrap();
    expect_error(config.application_on(store));

    // Nothing declared: every name is unknown, and the message says how to declare.
    let message = expect_error(Config::from_vars(typo).unwrap().application().await);
    assert!(message.contains("Config::aggregate"), "{message}");

    // Declared through snapshot_every, or by name: accepted; the builder's value wins.
    let app = Config::from_vars(typo)
        .unwrap()
        .snapshot_every::<Note>(3)
        .snapshot_interval("Nots", 7)
        .application()
        .await
        .unwrap();
    assert_eq!(app.snapshot_interval("Note"), Some(3));
    assert_eq!(app.snapshot_interval("Nots"), Some(7));
}

#[tokio::test]
async fn create_tables_false_on_an_empty_file_says_to_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.sqlite3");
    let err = Config::from_vars([
        ("EVENTFOLD_SQLITE_PATH", path.to_str().unwrap()),
        ("EVENTFOLD_CREATE_TABLES", "false"),
    ])
    .unwrap()
    .open_store()
    .await
    .err()
    .expect("an unmigrated database is refused");
    assert!(
        matches!(err, Error::SchemaVersion { found: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("eventfold migrate"), "{err}");
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Note {
    texts: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum NoteEvent {
    Written { text: String },
}

impl eventfold::Aggregate for Note {
    const TYPE: &'static str = "Note";
    type Id = uuid::Uuid;
    type Event = NoteEvent;
    fn apply(&mut self, event: &NoteEvent) {
        let NoteEvent::Written { text } = event;
        self.texts.push(text.clone());
    }
}

#[cfg(feature = "postgres")]
#[test]
fn secrets_are_the_cipher_key_and_the_database_passwords() {
    let key = AesGcmCipher::generate_key();
    let config = Config::from_vars([
        ("EVENTFOLD_STORE", "postgres"),
        (
            "EVENTFOLD_DATABASE_URL",
            "postgres://app:pw-1@db/orders?password=pw-2",
        ),
        ("EVENTFOLD_CIPHER_KEY", key.as_str()),
    ])
    .unwrap();
    assert_eq!(
        config.secrets(),
        [key.clone(), "pw-1".into(), "pw-2".into()]
    );
    assert!(config.has_cipher_key());
    let plain = Config::from_vars([("EVENTFOLD_STORE", "sqlite")]).unwrap();
    assert!(plain.secrets().is_empty());
    assert!(!plain.has_cipher_key());
}
