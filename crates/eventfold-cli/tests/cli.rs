//! The `eventfold` binary, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

fn eventfold(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(args)
        .current_dir(dir)
        .env_remove("EVENTFOLD_STORE")
        .env_remove("EVENTFOLD_SQLITE_PATH")
        .env_remove("EVENTFOLD_CIPHER_KEY")
        .output()
        .expect("the eventfold binary runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn demo_runs_the_worlds_scenario_on_sqlite_and_log_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = stdout(&eventfold(dir.path(), &["demo"]));
    assert!(
        first.contains(r#"get_world_history() -> ["dinosaurs", "trucks", "internet", "covid"]"#),
        "{first}"
    );
    assert!(
        first.contains("sqlite file eventfold.sqlite3 (WAL, synchronous=Normal)"),
        "{first}"
    );
    assert!(first.contains("snapshots of world"), "{first}");
    assert!(first.contains("notification log: 5 in all"), "{first}");
    assert!(first.contains("processed 5 new notifications"), "{first}");
    assert!(dir.path().join("eventfold.sqlite3").exists());

    // A second run adds a second world to the same file; the projection resumes.
    let second = stdout(&eventfold(dir.path(), &["demo"]));
    assert!(second.contains("notification log: 10 in all"), "{second}");
    assert!(second.contains("processed 5 new notifications"), "{second}");

    let log = stdout(&eventfold(dir.path(), &["log", "--topic", "World.Created"]));
    assert_eq!(log.lines().count(), 2, "{log}");
    let all = stdout(&eventfold(dir.path(), &["log", "--after", "8"]));
    let ids: Vec<&str> = all
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["9", "10"], "newest last: {all}");

    let migrate = stdout(&eventfold(dir.path(), &["migrate"]));
    assert!(migrate.contains("already at version"), "{migrate}");
}

/// `eventfold migrate` on a new SQLite file reports the versions it went through, then
/// that nothing is left to do.
#[test]
fn migrate_reports_what_it_applied_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let first = stdout(&eventfold(dir.path(), &["migrate"]));
    let version = eventfold::sqlite::SCHEMA_VERSION;
    assert!(
        first.contains(&format!("from version 0 to {version}")),
        "{first}"
    );
    assert!(dir.path().join("eventfold.sqlite3").exists());
    let second = stdout(&eventfold(dir.path(), &["migrate"]));
    assert!(
        second.contains(&format!("already at version {version}")),
        "{second}"
    );
}

#[test]
fn bench_prints_figures_then_one_json_line_with_the_peers_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = stdout(&eventfold(
        dir.path(),
        &[
            "bench",
            "worlds",
            "--backend",
            "memory",
            "--worlds",
            "10",
            "--commands",
            "6",
            "--raw-events",
            "50",
            "--raw-batch",
            "10",
            "--raw-single",
            "5",
        ],
    ));
    let last = out.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(last).unwrap();
    let result = &json["results"]["eventfold-memory"];
    for key in [
        "commands_per_s",
        "events_appended_per_s",
        "cmd_p50_ms",
        "cmd_p99_ms",
        "gets_per_s",
        "creates_per_s",
        "read_mismatches",
        "raw_app_events_per_s",
        "raw_store_events_per_s",
        "raw_single_events_per_s",
        "raw_single_p50_ms",
    ] {
        assert!(result[key].is_number(), "{key} missing in {last}");
    }
    assert_eq!(result["read_mismatches"], 0);
    assert_eq!(result["commands"], 60);
    assert_eq!(
        result["snapshots_seen_for_world0"], 1,
        "version 7: one snapshot at 5"
    );
}

#[test]
fn bad_configuration_is_a_clear_error_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["log"])
        .current_dir(dir.path())
        .env("EVENTFOLD_STORE", "cassandra")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("EVENTFOLD_STORE") && err.contains("cassandra"),
        "{err}"
    );

    let output = eventfold(
        dir.path(),
        &[
            "--store",
            "sqlite",
            "--sqlite-path",
            "/nonexistent/dir/x.db",
            "log",
        ],
    );
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("/nonexistent/dir/x.db"),
        "the error names the file: {err}"
    );
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["demo", "--help"],
        vec!["migrate", "--help"],
        vec!["log", "--help"],
        vec!["followers", "--help"],
        vec!["bench", "--help"],
        vec!["bench", "worlds", "--help"],
        vec!["bench", "inspect", "--help"],
        vec!["inspect", "--help"],
    ] {
        let out = stdout(&eventfold(dir.path(), &args));
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

/// `eventfold migrate` on PostgreSQL reports the versions it went through, then that
/// nothing is left to do (it used to open the store first, which had migrated already).
#[cfg(feature = "postgres")]
#[test]
fn migrate_reports_what_it_applied_on_postgres() {
    let url = std::env::var("EVENTFOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let schema = format!(
        "eventfold_test_cli_{:x}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let dir = tempfile::tempdir().unwrap();
    let migrate = || {
        Command::new(env!("CARGO_BIN_EXE_eventfold"))
            .arg("migrate")
            .current_dir(dir.path())
            .env("EVENTFOLD_STORE", "postgres")
            .env("EVENTFOLD_DATABASE_URL", &url)
            .env("EVENTFOLD_POSTGRES_SCHEMA", &schema)
            .env_remove("EVENTFOLD_TABLE_PREFIX")
            .output()
            .expect("the eventfold binary runs")
    };
    let first = migrate();
    let second = migrate();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let version = eventfold::postgres::SCHEMA_VERSION;
    let first = stdout(&first);
    assert!(
        first.contains(&format!("migrated from version 0 to {version}")),
        "{first}"
    );
    let second = stdout(&second);
    assert!(
        second.contains(&format!("up to date at version {version}")),
        "{second}"
    );
}

/// `eventfold log` on a file that does not exist says so, fails, and leaves no file.
#[test]
fn log_of_a_missing_sqlite_file_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = eventfold(dir.path(), &["--sqlite-path", "missing.sqlite3", "log"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("no SQLite database at missing.sqlite3"),
        "{err}"
    );
    assert!(!dir.path().join("missing.sqlite3").exists());
    let output = eventfold(dir.path(), &["log"]);
    assert!(!output.status.success());
    assert!(!dir.path().join("eventfold.sqlite3").exists());
}

#[test]
fn log_says_when_nothing_matched() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&eventfold(dir.path(), &["migrate"]));
    let output = eventfold(dir.path(), &["log"]);
    assert_eq!(stdout(&output), "", "stdout has one line per notification");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(err.trim(), "0 notifications");

    stdout(&eventfold(dir.path(), &["demo"]));
    let output = eventfold(dir.path(), &["log", "--after", "5"]);
    assert_eq!(stdout(&output), "");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("0 notifications after id 5"), "{err}");
}

fn eventfold_with_key(dir: &Path, key: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventfold"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("EVENTFOLD_STORE")
        .env_remove("EVENTFOLD_SQLITE_PATH")
        .env_remove("EVENTFOLD_COMPRESSOR")
        .env_remove("EVENTFOLD_CIPHER_KEY");
    if let Some(key) = key {
        command.env("EVENTFOLD_CIPHER_KEY", key);
    }
    command.output().expect("the eventfold binary runs")
}

/// `--payload` shows each record's JSON, decoded through the mapper (the demo writes
/// zlib); encrypted records read without a key say that the key is missing.
#[test]
fn log_payload_shows_the_decoded_json() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&eventfold(dir.path(), &["demo"]));
    let log = stdout(&eventfold(
        dir.path(),
        &["log", "--payload", "--topic", "World.SomethingHappened"],
    ));
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].ends_with(r#"{"SomethingHappened":{"what":"dinosaurs"}}"#),
        "{log}"
    );

    let encrypted = tempfile::tempdir().unwrap();
    let key = eventfold::AesGcmCipher::generate_key();
    stdout(&eventfold_with_key(encrypted.path(), Some(&key), &["demo"]));
    let with_key = stdout(&eventfold_with_key(
        encrypted.path(),
        Some(&key),
        &["log", "--payload", "--topic", "World.SomethingHappened"],
    ));
    assert!(with_key.contains(r#""what":"covid""#), "{with_key}");

    let output = eventfold_with_key(encrypted.path(), None, &["log", "--payload"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("no cipher key configured (EVENTFOLD_CIPHER_KEY)"),
        "{err}"
    );
    assert!(err.contains("notification 1"), "{err}");
    // The plain listing needs no key.
    stdout(&eventfold_with_key(encrypted.path(), None, &["log"]));
}

#[test]
fn a_bad_log_filter_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["migrate"])
        .current_dir(dir.path())
        .env_remove("EVENTFOLD_STORE")
        .env_remove("EVENTFOLD_SQLITE_PATH")
        .env("EVENTFOLD_LOG", "eventfold=loud")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("EVENTFOLD_LOG"), "{err}");
}

/// Errors print each cause once: the core's messages already include their source.
#[test]
fn errors_print_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = eventfold(
        dir.path(),
        &["--sqlite-path", "/nonexistent/dir/x.db", "migrate"],
    );
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        err.matches("cannot open /nonexistent/dir/x.db").count(),
        1,
        "{err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let text = line
            .trim_start_matches("error: ")
            .trim_start_matches("  caused by: ");
        for earlier in &lines[..i] {
            assert!(!earlier.contains(text), "repeated {text:?} in {err}");
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ids(out: &str) -> Vec<u64> {
    out.lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// `--newest N` prints the N newest, newest first, and says how to page further back;
/// `--before ID` pages back (and bounds the oldest-first listing too).
#[test]
fn log_newest_pages_back_with_before() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&eventfold(dir.path(), &["demo"]));
    stdout(&eventfold(dir.path(), &["demo"]));

    let output = eventfold(dir.path(), &["log", "--newest", "3"]);
    assert_eq!(ids(&stdout(&output)), [10, 9, 8]);
    assert!(
        stderr(&output).contains("older: eventfold log --newest 3 --before 8"),
        "{}",
        stderr(&output)
    );
    let output = eventfold(dir.path(), &["log", "--newest", "3", "--before", "8"]);
    assert_eq!(ids(&stdout(&output)), [7, 6, 5]);

    // The last page: fewer than asked for, and no hint.
    let output = eventfold(dir.path(), &["log", "--newest", "4", "--before", "3"]);
    assert_eq!(ids(&stdout(&output)), [2, 1]);
    assert!(!stderr(&output).contains("older"), "{}", stderr(&output));

    let created = stdout(&eventfold(
        dir.path(),
        &["log", "--newest", "5", "--topic", "World.Created"],
    ));
    assert_eq!(ids(&created), [6, 1]);

    let bounded = stdout(&eventfold(
        dir.path(),
        &["log", "--after", "1", "--before", "4"],
    ));
    assert_eq!(ids(&bounded), [2, 3], "oldest first between the bounds");

    let output = eventfold(dir.path(), &["log", "--newest", "3", "--before", "1"]);
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).contains("0 notifications before id 1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn log_newest_refuses_follow_and_after() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&eventfold(dir.path(), &["migrate"]));
    for args in [
        ["log", "--newest", "3", "--follow"],
        ["log", "--newest", "3", "--after=2"],
    ] {
        let output = eventfold(dir.path(), &args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("cannot be used with"),
            "{}",
            stderr(&output)
        );
    }
}

/// A record's metadata shows at the end of its line; a record without any has no `meta=`.
#[test]
fn log_shows_metadata_when_there_is_some() {
    use eventfold::{EventWriter, Metadata, Recording, StoredEvent, Timestamp};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eventfold.sqlite3");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store =
            eventfold::sqlite::SqliteStore::open(&eventfold::sqlite::SqliteConfig::new(&path))
                .unwrap();
        let with = StoredEvent::new("n-1", 1, "Note.Written", Timestamp::now(), b"{}".to_vec())
            .with_metadata(Metadata::new().with_correlation_id("req-7"));
        let without = StoredEvent::new("n-2", 1, "Note.Written", Timestamp::now(), b"{}".to_vec());
        store
            .record(&Recording::new().event(with).event(without))
            .await
            .unwrap();
    });
    let out = stdout(&eventfold(dir.path(), &["log"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with(r#"  meta={"correlation_id":"req-7"}"#),
        "{out}"
    );
    assert!(!lines[1].contains("meta="), "{out}");
    let newest = stdout(&eventfold(
        dir.path(),
        &["log", "--newest", "1", "--before", "2"],
    ));
    assert!(newest.contains("req-7"), "{newest}");
}

/// `eventfold followers` lists each follower's position and lag, by name.
#[test]
fn followers_lists_positions_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let output = eventfold(dir.path(), &["followers"]);
    assert!(!output.status.success(), "a missing file is an error");
    assert!(!dir.path().join("eventfold.sqlite3").exists());

    stdout(&eventfold(dir.path(), &["migrate"]));
    let output = eventfold(dir.path(), &["followers"]);
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).contains("0 followers"),
        "{}",
        stderr(&output)
    );

    stdout(&eventfold(dir.path(), &["demo"]));
    let out = stdout(&eventfold(dir.path(), &["followers"]));
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fields,
        ["events-per-world", "at", "5", "0", "behind"],
        "{out}"
    );

    // An event the follower has not seen yet: it is one behind.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use eventfold::{EventWriter, Recording, StoredEvent, Timestamp};
        let config = eventfold::sqlite::SqliteConfig::new(dir.path().join("eventfold.sqlite3"));
        let store = eventfold::sqlite::SqliteStore::open(&config).unwrap();
        let event = StoredEvent::new("n-1", 1, "Note.Written", Timestamp::now(), b"{}".to_vec());
        store.record(&Recording::new().event(event)).await.unwrap();
    });
    let out = stdout(&eventfold(dir.path(), &["followers"]));
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fields,
        ["events-per-world", "at", "5", "1", "behind"],
        "{out}"
    );
}

#[test]
fn bench_inspect_times_every_page_and_ends_with_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inspect.sqlite3");
    let args = [
        "bench",
        "inspect",
        "--log-records",
        "3000",
        "--stream-events",
        "1500",
        "--requests",
        "3",
        "--bench-sqlite-path",
        path.to_str().unwrap(),
    ];
    let first = stdout(&eventfold(dir.path(), &args));
    let line: serde_json::Value = serde_json::from_str(first.lines().last().unwrap()).unwrap();
    assert_eq!(line["bench"], "inspect");
    let pages = line["results"]["pages"].as_object().unwrap();
    for page in [
        "stream_newest",
        "stream_state_at_middle",
        "log_topic_rare",
        "log_topic_common",
        "log_topics_rare_and_big",
        "followers",
        "metrics",
    ] {
        assert!(
            pages[page]["p50_ms"].as_f64().unwrap() > 0.0,
            "{page}: {line}"
        );
        assert!(pages[page]["bytes"].as_u64().unwrap() > 0, "{page}: {line}");
    }
    assert!(line["results"]["build_s"].as_f64().is_some(), "{line}");
    // A second run reuses the data set.
    let second = stdout(&eventfold(dir.path(), &args));
    let line: serde_json::Value = serde_json::from_str(second.lines().last().unwrap()).unwrap();
    assert_eq!(line["results"]["build_s"], serde_json::Value::Null);
}
