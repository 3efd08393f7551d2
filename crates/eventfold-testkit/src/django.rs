//! The real django-cqrs 3.1.0 as a test peer: the two Django projects in this crate's
//! `django/` directory (a master owning `master_item`, a replica keeping `replica_item`, both
//! of the model `item`), each on a SQLite file of the test's own and the test's own
//! RabbitMQ vhost, driven through `manage.py` with [`interop_python`].
//!
//! What the projects are (`django/`, Python):
//! - `interop_settings.py`: what both share; everything a test varies comes from the
//!   environment this module sets (`INTEROP_AMQP_URL`, `INTEROP_DB`, `INTEROP_QUEUE`).
//! - `interop_transport.py`: django-cqrs's own `RabbitMQTransport`, made to connect to the
//!   URL's vhost. django-cqrs 3.1.0 reads only host, port, user and password from
//!   `CQRS['url']` and always uses the vhost `/`; that one parameter is all it changes.
//! - `master/`: `Item(MasterMixin)` (`CQRS_ID` `item`, `qty` tracked, a meta function), the
//!   model of shared/peers/cqrs_services, and `manage.py interop_writes` (creates, updates,
//!   deletes through the model, one transaction each).
//! - `replica/`: `ItemReplica(ReplicaMixin)`, consuming [`QUEUE`] (`cqrs_consume`).
//!
//! [`Running`] puts `cqrs_consume` in a process group of its own: it runs its workers as
//! child processes, and stopping it stops them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{interop_python, Raw, TestVhost};

/// The queue the replica project consumes in these tests (not django-cqrs's default
/// `replica`, so the setting is seen to be used).
pub const QUEUE: &str = "interop_replica";

/// The `CQRS_ID` of both projects' model.
pub const CQRS_ID: &str = "item";

/// Which of the two projects.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// `master/`: `Item(MasterMixin)` in `master_item`, and `manage.py interop_writes`.
    Master,
    /// `replica/`: `ItemReplica(ReplicaMixin)` in `replica_item`, consuming [`QUEUE`].
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
            .join("django")
            .join(project)
            .join("manage.py")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(interop_python());
        command
            .arg(self.manage_py())
            .args(args)
            .current_dir(self.dir.path())
            .env("INTEROP_AMQP_URL", &self.amqp_url)
            .env("INTEROP_DB", self.database())
            .env("INTEROP_QUEUE", QUEUE)
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

    /// `manage.py interop_writes <operations>` on the master (creates, updates, deletes
    /// through the model, each in its own transaction: see its docstring): the pks it
    /// created, in order.
    pub async fn interop_writes(&self, operations: serde_json::Value) -> Vec<i64> {
        let out = self
            .manage(&["interop_writes", &operations.to_string()])
            .await;
        let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        out["created"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
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
    /// consumes); panics with the process's output if it exits.
    pub async fn wait_consuming(&mut self, raw: &Raw, queue: &str) {
        raw.wait_consumer(queue, || self.assert_running()).await;
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

/// The rows of `sql` on the SQLite file `database` (a Django project's, or any other), read
/// only, each column as JSON: integers and reals as numbers, text as strings, NULL as null.
pub fn query(database: &Path, sql: &str) -> Vec<Vec<serde_json::Value>> {
    use rusqlite::types::ValueRef;
    let db =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{}: {e}", database.display()));
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut statement = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => serde_json::Value::Null,
                        ValueRef::Integer(n) => n.into(),
                        ValueRef::Real(x) => x.into(),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                        ValueRef::Blob(b) => panic!("{sql}: a blob of {} bytes", b.len()),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}
