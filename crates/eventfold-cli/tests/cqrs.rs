//! `eventfold cqrs ...` run as a process: help, bad input, a dump and a diff through
//! pipes, and `consume` replicating into a plain SQLite table from a real broker (a
//! vhost of its own), then stopping on SIGTERM; two `consume --failover` processes on
//! one queue, the active one killed mid-burst; SIGTERM mid-burst acks exactly what was
//! applied.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use eventfold::sqlite::{SqliteConfig, SqliteStore};
use eventfold::Store;
use eventfold_testkit::TestVhost;

/// A SQLite file with an `items` table, and a tables file naming it on both sides.
struct Service {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl Service {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("service.sqlite3");
        let store = SqliteStore::open(&SqliteConfig::new(&db)).unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, \
             cqrs_revision INTEGER NOT NULL, cqrs_updated DATETIME NOT NULL)",
            &[],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let config = dir.path().join("eventfold-cqrs.toml");
        std::fs::write(
            &config,
            "[master.item]\ntable = \"items\"\n\n[replica.item]\ntable = \"items\"\n",
        )
        .unwrap();
        Service { dir, db }
    }

    async fn insert(&self, rows: &[(i64, &str, i64)]) {
        let store = SqliteStore::open(&SqliteConfig::new(&self.db)).unwrap();
        let mut tx = store.begin().await.unwrap();
        for (id, title, revision) in rows {
            tx.execute(
                "INSERT INTO items VALUES ($1, $2, $3, '2026-11-23 00:41:49.191666+00:00')",
                &[(*id).into(), (*title).into(), (*revision).into()],
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }

    async fn rows(&self) -> Vec<(i64, String, i64)> {
        let store = SqliteStore::open(&SqliteConfig::new(&self.db)).unwrap();
        let mut tx = store.begin().await.unwrap();
        let rows = tx
            .query(
                "SELECT id, title, cqrs_revision FROM items ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| {
                (
                    r[0].as_i64().unwrap(),
                    r[1].as_str().unwrap().to_owned(),
                    r[2].as_i64().unwrap(),
                )
            })
            .collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_eventfold"));
        c.current_dir(self.dir.path())
            .env_remove("EVENTFOLD_STORE")
            .env_remove("EVENTFOLD_AMQP_URL")
            .env_remove("EVENTFOLD_CQRS_CONFIG")
            .env("EVENTFOLD_SQLITE_PATH", &self.db)
            .arg("cqrs")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("eventfold runs")
    }

    /// Runs with `input` on stdin.
    fn pipe(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn fails(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[tokio::test]
async fn every_command_has_help() {
    let service = Service::new().await;
    let top = ok(&service.run(&["--help"]));
    for command in [
        "consume",
        "sync",
        "bulk-dump",
        "bulk-load",
        "diff-master",
        "diff-replica",
        "diff-sync",
        "deleted-diff-replica",
        "deleted-diff-master",
        "deleted-sync-replica",
        "dead-letters",
    ] {
        assert!(top.contains(command), "{command} in {top}");
    }
    assert!(
        top.contains("[replica.author]") && top.contains("id__in"),
        "{top}"
    );
    for (args, flag) in [
        (&["consume", "--help"][..], "--queue"),
        (&["sync", "--help"], "--filter"),
        (&["bulk-dump", "--help"], "--output"),
        (&["bulk-load", "--help"], "--clear"),
        (&["diff-master", "--help"], "--cqrs-id"),
        (&["diff-replica", "--help"], "--queue"),
        (&["diff-sync", "--help"], "--batch"),
        (&["deleted-diff-replica", "--help"], "--filter"),
        (&["deleted-diff-master", "--help"], "--config"),
        (&["deleted-sync-replica", "--help"], "--config"),
        (&["dead-letters", "--help"], "retry"),
        (&["dead-letters", "retry", "--help"], "--cqrs-id"),
        (&["dead-letters", "dump", "--help"], "--queue"),
        (&["dead-letters", "purge", "--help"], "--queue"),
    ] {
        let help = ok(&service.run(args));
        assert!(help.contains(flag), "{args:?}: {help}");
    }
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let service = Service::new().await;
    service.insert(&[(1, "one", 0)]).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["bulk-dump", "--cqrs-id", "author", "-o", "-"],
            "unknown cqrs_id \"author\": the tables file has no [master.author] (it has item)",
        ),
        (
            &[
                "diff-master",
                "--cqrs-id",
                "item",
                "--filter",
                "{\"colour\": 1}",
            ],
            "\"colour\" is not a field of item",
        ),
        (
            &["diff-master", "--cqrs-id", "item", "--filter", "[1]"],
            "bad filter: must be a JSON object",
        ),
        (&["sync", "--cqrs-id", "item"], "sync needs --filter"),
        (
            &["bulk-load", "-i", "missing.dump"],
            "cannot read the dump missing.dump",
        ),
        (
            &["bulk-dump", "--cqrs-id", "item", "--config", "nope.toml"],
            "bad tables file: cannot read nope.toml",
        ),
        (
            &["consume", "--queue", "q", "--workers", "0"],
            "--workers must be at least 1",
        ),
    ];
    for (args, says) in cases {
        let err = fails(&service.run(args));
        assert!(err.contains(says), "{args:?}: {err}");
    }
    std::fs::write(
        service.dir.path().join("bad.toml"),
        "[replica.item]\ntable = 3\n",
    )
    .unwrap();
    let err = fails(&service.run(&["bulk-dump", "-c", "item", "--config", "bad.toml"]));
    assert!(err.contains("bad.toml") && err.contains("line 2"), "{err}");

    let dump = ok(&service.run(&["bulk-dump", "--cqrs-id", "item"]));
    assert_eq!(dump, "");
    assert!(service.dir.path().join("item.dump").exists());
    let err = fails(&service.run(&["bulk-dump", "--cqrs-id", "item"]));
    assert!(
        err.contains("item.dump exists (--force overwrites it)"),
        "{err}"
    );
    ok(&service.run(&["bulk-dump", "--cqrs-id", "item", "--force"]));

    let err = fails(&service.pipe(&["bulk-load", "-i", "-"], b""));
    assert!(err.contains("the dump: it is empty"), "{err}");
    let err = fails(&service.pipe(&["diff-replica"], b"item,now\nnope\n"));
    assert!(err.contains("line 2: not a JSON list"), "{err}");

    let mut elsewhere = service.command(&["bulk-dump", "-c", "item", "-o", "-"]);
    elsewhere.env(
        "EVENTFOLD_SQLITE_PATH",
        service.dir.path().join("absent.sqlite3"),
    );
    let err = fails(&elsewhere.output().unwrap());
    assert!(err.contains("no SQLite database at"), "{err}");

    // The broker's password never shows, even when it is refused.
    let err = fails(&service.run(&[
        "sync",
        "-c",
        "item",
        "-f",
        "{}",
        "--amqp-url",
        "amqp://guest:sekrit-pw@127.0.0.1:1/%2f",
    ]));
    assert!(
        err.contains("cannot connect") && !err.contains("sekrit-pw"),
        "{err}"
    );
}

#[tokio::test]
async fn dumps_and_diffs_go_through_pipes() {
    let master = Service::new().await;
    let replica = Service::new().await;
    master
        .insert(&[(1, "one", 0), (2, "two", 5), (3, "three", 1)])
        .await;
    // The replica holds 3 at a newer revision than the master: a load skips it.
    replica.insert(&[(3, "newer", 2)]).await;

    let diff = ok(&master.run(&["diff-master", "-c", "item", "-b", "2"]));
    let lines: Vec<&str> = diff.lines().collect();
    assert!(lines[0].starts_with("item,20"), "{diff}");
    assert_eq!(&lines[1..], ["[[1,0],[2,5]]", "[[3,1]]"]);
    let replica_diff = ok(&replica.pipe(&["diff-replica", "--queue", "replica"], diff.as_bytes()));
    assert_eq!(replica_diff, format!("{},replica\n[1,2]\n[3]\n", lines[0]));

    let dump = ok(&master.run(&["bulk-dump", "-c", "item", "-o", "-"]));
    assert!(
        dump.starts_with("item\n{\"id\":1,") && !dump.ends_with('\n'),
        "{dump}"
    );
    let load = replica.pipe(&["bulk-load", "-i", "-"], dump.as_bytes());
    ok(&load);
    let said = String::from_utf8_lossy(&load.stderr);
    assert!(said.contains("2 rows loaded, 1 skipped"), "{said}");
    assert_eq!(
        replica.rows().await,
        [
            (1, "one".into(), 0),
            (2, "two".into(), 5),
            (3, "newer".into(), 2)
        ]
    );
    let again = ok(&replica.pipe(&["diff-replica"], diff.as_bytes()));
    assert_eq!(again, format!("{},None\n[3]\n", lines[0]));

    // A row the master deleted goes from the replica through the deleted trio.
    replica.insert(&[(9, "gone", 0)]).await;
    let listed = ok(&replica.run(&["deleted-diff-replica", "-c", "item"]));
    let gone = ok(&master.pipe(&["deleted-diff-master"], listed.as_bytes()));
    assert!(gone.ends_with("\n[9]\n"), "{gone}");
    let deleted = ok(&replica.pipe(&["deleted-sync-replica"], gone.as_bytes()));
    assert_eq!(deleted, "1 rows deleted\n");
    assert_eq!(replica.rows().await.len(), 3);
}

/// SIGTERM, then the output (within a minute).
fn stop(mut child: std::process::Child) -> Output {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

async fn wait_for(replica: &Service, want: &[(i64, String, i64)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = replica.rows().await;
        if rows == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica rows {rows:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn consume_replicates_into_a_plain_table_and_sync_feeds_it() {
    let vhost = TestVhost::with_prefix("ef-cli-cqrs");
    let url = vhost.url();
    let master = Service::new().await;
    let replica = Service::new().await;
    master.insert(&[(1, "one", 0), (2, "two", 3)]).await;

    let consumer = replica
        .command(&["consume", "--queue", "replica", "--workers", "2"])
        .env("EVENTFOLD_AMQP_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let raw = vhost.raw().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw.consumers("replica").await != Some(1) {
        assert!(Instant::now() < deadline, "the consumer never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The topology django-cqrs declares: the replica queue and its dead letters.
    assert_eq!(raw.consumers("dead_letter_replica").await, Some(0));

    let synced = master
        .command(&["sync", "-c", "item", "-f", "{}", "-q", "replica"])
        .env("EVENTFOLD_AMQP_URL", &url)
        .output()
        .unwrap();
    let said = ok(&synced);
    assert!(
        said.contains("2 of 2 rows of item synced (routing key cqrs.replica.item)"),
        "{said}"
    );
    wait_for(&replica, &[(1, "one".into(), 0), (2, "two".into(), 3)]).await;

    // A body that is no message is dead-lettered, and dead-letters dump shows it.
    raw.channel
        .basic_publish(
            "cqrs".into(),
            "item".into(),
            lapin::options::BasicPublishOptions::default(),
            b"{not json",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    raw.wait_count("dead_letter_replica", 1, Duration::from_secs(30))
        .await;
    let dumped = replica
        .command(&["dead-letters", "dump", "--queue", "replica"])
        .env("EVENTFOLD_AMQP_URL", &url)
        .output()
        .unwrap();
    assert_eq!(ok(&dumped), "{not json\n");

    let out = stop(consumer);
    let said = ok(&out);
    assert!(said.contains("consuming replica (item)"), "{said}");
    assert!(said.contains("stopped: 2 applied (2 created"), "{said}");
}

/// The SAVE django-cqrs publishes for revision `revision` of item `pk` (titled
/// `item PK rREVISION`).
fn save_body(pk: i64, revision: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "signal_type": "SAVE", "cqrs_id": "item",
        "instance_data": {
            "id": pk, "title": format!("item {pk} r{revision}"), "cqrs_revision": revision,
            "cqrs_updated": "2026-11-23 00:41:49.191666+00:00",
        },
        "previous_data": null, "instance_pk": pk, "correlation_id": null, "retries": 0,
        "expires": null, "meta": {},
    }))
    .unwrap()
}

/// Publishes `bodies` to the `cqrs` exchange with routing key `item`, in order, each
/// confirmed by the broker.
async fn publish_saves(channel: &lapin::Channel, bodies: &[Vec<u8>]) {
    for body in bodies {
        channel
            .basic_publish(
                "cqrs".into(),
                "item".into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A figure of the `stopped: ...` line `consume` prints last (`applied`, `stale`,
/// `duplicates`, `acked`, ...).
fn stopped_figure(said: &str, figure: &str) -> u64 {
    let line = said
        .lines()
        .find(|l| l.starts_with("stopped: "))
        .unwrap_or_else(|| panic!("no stopped line in {said}"));
    let at = line
        .find(&format!(" {figure}"))
        .unwrap_or_else(|| panic!("no {figure} in {line}"));
    let number = line[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap();
    number
        .parse()
        .unwrap_or_else(|_| panic!("{figure} in {line}"))
}

/// Every item 1..=items at revision `last`.
fn at_revision(items: i64, last: i64) -> Vec<(i64, String, i64)> {
    (1..=items)
        .map(|pk| (pk, format!("item {pk} r{last}"), last))
        .collect()
}

async fn replica_count(replica: &Service) -> usize {
    replica.rows().await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_standby_takes_over_after_sigkill_with_nothing_lost() {
    const ITEMS: i64 = 400;
    const LAST: i64 = 2;
    let vhost = TestVhost::with_prefix("ef-cli-failover");
    let url = vhost.url();
    let replica = Service::new().await;
    let raw = vhost.raw().await;
    let spawn = || {
        replica
            .command(&["consume", "--queue", "replica", "--failover", "-w", "2"])
            .env("EVENTFOLD_AMQP_URL", &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_consumers = |n: u32| {
        let raw = &raw;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while raw.consumers("replica").await != Some(n) {
                assert!(Instant::now() < deadline, "never {n} consumers");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The first to subscribe is the single active consumer; the second waits.
    let mut active = spawn();
    wait_consumers(1).await;
    let standby = spawn();
    wait_consumers(2).await;

    // Each item created, then updated twice; the last third is published only after the
    // kill, so the standby has work that only it can have done.
    let bodies: Vec<Vec<u8>> = (1..=ITEMS)
        .flat_map(|pk| (0..=LAST).map(move |revision| save_body(pk, revision)))
        .collect();
    let (during, after) = bodies.split_at(bodies.len() * 2 / 3);
    let publisher = {
        let channel = raw.channel.clone();
        let during = during.to_vec();
        tokio::spawn(async move {
            for chunk in during.chunks(20) {
                publish_saves(&channel, chunk).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica_count(&replica).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the active consumer applied nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    active.kill().unwrap();
    active.wait().unwrap();
    let rows_at_kill = replica_count(&replica).await;
    publisher.await.unwrap();
    publish_saves(&raw.channel, after).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let want = at_revision(ITEMS, LAST);
    while replica.rows().await != want {
        assert!(
            Instant::now() < deadline,
            "after the kill ({rows_at_kill} rows then), the replica holds {:?}",
            replica
                .rows()
                .await
                .iter()
                .filter(|r| r.2 != LAST)
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = ok(&stop(standby));
    assert!(
        stopped_figure(&said, "applied") >= after.len() as u64,
        "the standby applied less than what was published after the kill: {said}"
    );
    assert_eq!(stopped_figure(&said, "stale"), 0, "{said}");
    assert_eq!(stopped_figure(&said, "dead letters"), 0, "{said}");
    assert_eq!(raw.settled_count("replica").await, 0);
    assert_eq!(raw.count("dead_letter_replica").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_on_sigterm_acks_what_it_applied_and_leaves_the_rest_queued() {
    const ITEMS: i64 = 500;
    const LAST: i64 = 3;
    let vhost = TestVhost::with_prefix("ef-cli-sigterm");
    let url = vhost.url();
    let replica = Service::new().await;
    let raw = vhost.raw().await;
    let spawn = || {
        replica
            .command(&["consume", "--queue", "replica", "-w", "2", "--batch", "20"])
            .env("EVENTFOLD_AMQP_URL", &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    raw.wait_consumer("replica", || {}).await;
    let bodies: Vec<Vec<u8>> = (1..=ITEMS)
        .flat_map(|pk| (0..=LAST).map(move |revision| save_body(pk, revision)))
        .collect();
    let publisher = {
        let channel = raw.channel.clone();
        let bodies = bodies.clone();
        tokio::spawn(async move { publish_saves(&channel, &bodies).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica_count(&replica).await == 0 {
        assert!(Instant::now() < deadline, "the consumer applied nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let said = ok(&stop(first));
    publisher.await.unwrap();
    assert!(
        said.contains("SIGTERM: finishing the batches in hand"),
        "{said}"
    );
    let acked = stopped_figure(&said, "acked");
    let handled = stopped_figure(&said, "applied")
        + stopped_figure(&said, "stale")
        + stopped_figure(&said, "duplicates");
    assert_eq!(acked, handled, "{said}");
    assert_eq!(stopped_figure(&said, "dead letters"), 0, "{said}");
    // What it did not ack went back to the queue, and nothing else.
    let left = raw.settled_count("replica").await;
    assert_eq!(u64::from(left), bodies.len() as u64 - acked, "{said}");

    // The next consumer applies each message left exactly once: none was applied
    // already, so no redelivery is skipped.
    let second = spawn();
    let want = at_revision(ITEMS, LAST);
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.rows().await != want {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = ok(&stop(second));
    assert_eq!(stopped_figure(&said, "applied"), u64::from(left), "{said}");
    assert_eq!(stopped_figure(&said, "redelivered skipped"), 0, "{said}");
    assert_eq!(raw.settled_count("replica").await, 0);
}
