//! The real django-cqrs 3.1.0 as a test peer: the two Django projects of `tests/django/`
//! (a master owning `master_item`, a replica keeping `replica_item`), each on a SQLite file
//! of the test's own and the test's own RabbitMQ vhost, driven through `manage.py`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use eventfold_cqrs::wire::{dead_letter_queue, queue_routing_key, routing_key, DEFAULT_EXCHANGE};
use eventfold_testkit::{interop_python, Raw, TestVhost};

/// The queue the replica project consumes in these tests (not django-cqrs's default
/// `replica`, so the setting is seen to be used).
pub const QUEUE: &str = "interop_replica";

/// The cqrs id of both projects' model.
pub const CQRS_ID: &str = "item";

/// What `cqrs_consume` declares for [`QUEUE`] (tests/fixtures/django_cqrs_topology.txt):
/// the durable topic exchange `cqrs`; the queue bound with `item` and
/// `cqrs.<queue>.item`; `dead_letter_<queue>` bound with `cqrs.dead_letter_<queue>.item`.
pub async fn declare_replica_topology(raw: &Raw) {
    raw.topic_bound_queue(QUEUE, DEFAULT_EXCHANGE, &routing_key(CQRS_ID))
        .await;
    raw.bound_queue(QUEUE, DEFAULT_EXCHANGE, &queue_routing_key(QUEUE, CQRS_ID))
        .await;
    let dead = dead_letter_queue(QUEUE);
    raw.bound_queue(&dead, DEFAULT_EXCHANGE, &queue_routing_key(&dead, CQRS_ID))
        .await;
}

/// Which of the two projects.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Master,
    Replica,
}

/// One Django project with its database (a SQLite file in a temporary directory) and
/// broker (a vhost), migrated.
pub struct DjangoProject {
    side: Side,
    dir: tempfile::TempDir,
    amqp_url: String,
}

impl DjangoProject {
    /// The project on `vhost`, its database created by `manage.py migrate`.
    pub async fn migrated(side: Side, vhost: &TestVhost) -> Self {
        let project = DjangoProject {
            side,
            dir: tempfile::tempdir().unwrap(),
            amqp_url: vhost.url(),
        };
        project.manage(&["migrate", "--verbosity", "0"]).await;
        project
    }

    /// The SQLite file of its database.
    pub fn database(&self) -> PathBuf {
        self.dir.path().join("db.sqlite3")
    }

    fn manage_py(&self) -> PathBuf {
        let project = match self.side {
            Side::Master => "master",
            Side::Replica => "replica",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/django")
            .join(project)
            .join("manage.py")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(interop_python());
        command
            .arg(self.manage_py())
            .args(args)
            .current_dir(self.dir.path())
            .env("EVENTFOLD_CQRS_AMQP_URL", &self.amqp_url)
            .env("EVENTFOLD_CQRS_DB", self.database())
            .env("EVENTFOLD_CQRS_QUEUE", QUEUE)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null());
        command
    }

    /// `manage.py <args>` to completion: its stdout. Panics with its output on failure.
    pub async fn manage(&self, args: &[&str]) -> String {
        let out = self.manage_output(args).await;
        assert!(
            out.status.success(),
            "manage.py {args:?} ({:?}): {}\n{}\n{}",
            self.side,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `manage.py <args>` to completion, whatever its status.
    pub async fn manage_output(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// `manage.py <args>` left running (e.g. `cqrs_consume`), output to a log file.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let log = self.dir.path().join(format!("{}.log", args[0]));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = self.command(args);
        // A process group of its own: `cqrs_consume` runs its workers as child processes,
        // and they must go with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.stdout(out.try_clone().unwrap()).stderr(out);
        Running {
            child: command.spawn().unwrap(),
            log,
        }
    }
}

/// A `manage.py` process and its children, stopped when dropped (also when the test panics).
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with its output) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("manage.py exited ({status}):\n{}", self.output());
        }
    }

    /// Waits until `queue` exists and has a consumer (django-cqrs declares, binds, then
    /// consumes).
    pub async fn wait_consuming(&mut self, raw: &Raw, queue: &str) {
        let start = Instant::now();
        loop {
            self.assert_running();
            if raw.consumers(queue).await.unwrap_or(0) > 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nothing consumes {queue} after 30 s:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM lets cqrs_consume stop its workers; whatever is left after 5 s is killed.
        self.signal_group("-TERM");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// Polls `read` every 50 ms until it returns `Some`, or panics after `timeout` with `what`
/// and the last value `describe` gives.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut read: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = read() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}: {}",
            describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
