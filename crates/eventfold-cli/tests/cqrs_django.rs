//! `eventfold cqrs consume` with a plain-table tables file, no Rust code, replicating the
//! real django-cqrs 3.1.0 master of `eventfold_testkit::django` (saves, deletes and a
//! `cqrs_sync`) into a SQLite table with renamed and ignored columns. The Python is
//! `eventfold_testkit::interop_python`: without it the test fails, it does not skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventfold::sqlite::{SqliteConfig, SqliteStore};
use eventfold::Store;
use eventfold_testkit::django::{query, wait_for, DjangoProject, Side, CQRS_ID, QUEUE};
use eventfold_testkit::TestVhost;
use serde_json::{json, Value};

/// The consumer process and the file its output goes to; killed when dropped (also when
/// the test panics).
struct Consumer(Option<Child>, PathBuf);

impl Consumer {
    /// SIGTERM, then what it printed once it has exited.
    fn stop(mut self) -> String {
        let mut child = self.0.take().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        let out = std::fs::read_to_string(&self.1).unwrap();
        assert!(status.success(), "{status}: {out}");
        out
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cqrs_consume_replicates_a_django_master_into_a_plain_table() {
    eventfold_testkit::interop_python(); // fails now, before a vhost is made, without it
    let vhost = TestVhost::with_prefix("ef-cli-cqrs");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replica.sqlite3");
    let store = SqliteStore::open(&SqliteConfig::new(&db)).unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE copies (id INTEGER PRIMARY KEY, cqrs_revision INTEGER NOT NULL, \
         cqrs_updated TEXT NOT NULL, title TEXT NOT NULL, qty INTEGER NOT NULL, \
         price TEXT NOT NULL, created TEXT NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(store);
    std::fs::write(
        dir.path().join("eventfold-cqrs.toml"),
        "[replica.item]\ntable = \"copies\"\nrename = { name = \"title\" }\n\
         ignore = [\"description\"]\n",
    )
    .unwrap();

    let log = dir.path().join("consume.log");
    let output = std::fs::File::create(&log).unwrap();
    let consumer = Consumer(
        Some(
            Command::new(env!("CARGO_BIN_EXE_eventfold"))
                .current_dir(dir.path())
                .env_remove("EVENTFOLD_STORE")
                .env_remove("EVENTFOLD_CQRS_CONFIG")
                .env("EVENTFOLD_SQLITE_PATH", &db)
                .env("EVENTFOLD_AMQP_URL", vhost.url())
                .args(["cqrs", "consume", "--queue", QUEUE, "--workers", "2"])
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .unwrap(),
        ),
        log,
    );
    // It declares django-cqrs's topology: the master can publish (without confirms) once
    // the queue is there.
    let raw = vhost.raw().await;
    let start = std::time::Instant::now();
    while raw.consumers(QUEUE).await != Some(1) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the consumer never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let master = DjangoProject::migrated(Side::Master, &vhost).await;
    let creates: Vec<Value> = (1..=8)
        .map(|i| {
            json!({"create": {"name": format!("copy {i} \u{e9}/\u{1F980}"), "qty": i,
                              "price": format!("{i}.50"), "description": "not replicated"}})
        })
        .collect();
    let pks = master.interop_writes(Value::Array(creates)).await;
    let mut changes: Vec<Value> = pks
        .iter()
        .map(|pk| json!({"update": pk, "set": {"qty": 100 + pk}}))
        .collect();
    changes.push(json!({"delete": pks[1]}));
    changes.push(json!({"delete": pks[4]}));
    master.interop_writes(Value::Array(changes)).await;
    let all = json!({"id__in": pks}).to_string();
    let out = master
        .manage(&["cqrs_sync", "--cqrs-id", CQRS_ID, "--filter", &all])
        .await;
    assert!(out.contains("6 instance(s) synced"), "{out}");

    // The master's rows, every column but the ignored one, `name` as `title`.
    let on_master = query(
        &master.database(),
        "SELECT id, cqrs_revision, cqrs_updated, name, qty, CAST(price AS REAL), created \
         FROM master_item ORDER BY id",
    );
    assert_eq!(on_master.len(), 6);
    let normalized = |rows: Vec<Vec<Value>>| -> Vec<Vec<Value>> {
        rows.into_iter()
            .map(|mut r| {
                // Django keeps naive UTC text in SQLite; the message carries `+00:00`.
                for i in [2, 6] {
                    let text = r[i].as_str().unwrap().trim_end_matches("+00:00").to_owned();
                    r[i] = text.into();
                }
                r
            })
            .collect()
    };
    let on_master = normalized(on_master);
    let copies = || {
        normalized(query(
            &db,
            "SELECT id, cqrs_revision, cqrs_updated, title, qty, CAST(price AS REAL), created \
             FROM copies ORDER BY id",
        ))
    };
    wait_for(
        "the master's rows in the plain table",
        Duration::from_secs(30),
        || (copies() == on_master).then_some(()),
        || format!("{:?}\nwant {on_master:?}", copies()),
    )
    .await;
    assert!(on_master.iter().all(|r| r[1] == json!(1)), "{on_master:?}");

    let said = consumer.stop();
    assert!(said.contains("consuming interop_replica (item)"), "{said}");
    // 8 creates, 8 updates, 2 deletes, 6 syncs: each applied once, nothing stale.
    assert!(said.contains("stopped: 24 applied (8 created"), "{said}");
    assert_eq!(raw.settled_count(QUEUE).await, 0);
    assert_eq!(raw.settled_count("dead_letter_interop_replica").await, 0);
}
