//! The real nameko 2.14.1, for the interop tests: the Python that has it, a `nameko run`
//! service process, and the Python scripts of this crate's `python/` directory
//! (`orders_consumer.py`, a service recording every event it receives; `dispatch_events.py`,
//! nameko's own `event_dispatcher`; `publish_raw.py`, raw bodies through py-amqp).
//!
//! The interpreter is `EVENTFOLD_INTEROP_PYTHON`, else the workspace's
//! `target/interop-venv/bin/python` (both made by `scripts/interop-venv.sh`, which
//! `scripts/test.sh` runs). Without either, [`python`] panics: interop tests fail, they do
//! not skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestVhost;

/// The Python with nameko ([`crate::interop_python`]); a failure (not a skip) when
/// there is none. Call it first in an interop test, before anything is set up.
pub fn python() -> PathBuf {
    crate::interop_python()
}

/// This crate's `python/` directory: the scripts and the nameko services.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// `python <script> <args>` (a script of [`python_dir`]), to completion; its standard
/// output. Panics with its output on failure.
pub async fn run_script(script: &str, args: Vec<String>) -> String {
    let script = python_dir().join(script);
    let python = python();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python)
            .arg(&script)
            .args(&args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}\n{}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// A `nameko run` process, killed when dropped (also when the test panics).
pub struct NamekoRun {
    child: Child,
    log: PathBuf,
}

impl NamekoRun {
    /// `nameko run --config <dir>/nameko.yaml <module>` (a module of [`python_dir`]) with
    /// AMQP_URI = `amqp_uri` and the environment `env`; its output goes to
    /// `<dir>/nameko.log`.
    pub fn start(dir: &Path, amqp_uri: &str, module: &str, env: &[(&str, &Path)]) -> Self {
        let config = dir.join("nameko.yaml");
        // JSON is YAML: a quoted string whatever the URI holds.
        std::fs::write(
            &config,
            format!(
                "AMQP_URI: {}\nmax_workers: 10\n",
                serde_json::to_string(amqp_uri).unwrap()
            ),
        )
        .unwrap();
        let log = dir.join("nameko.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(python());
        command
            .args(["-m", "nameko", "run", "--config"])
            .arg(&config)
            .arg(module)
            .current_dir(python_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            command.env(k, v);
        }
        NamekoRun {
            child: command.spawn().unwrap(),
            log,
        }
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with nameko's output) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("nameko run exited ({status}):\n{}", self.output());
        }
    }

    /// Waits until every queue exists and has a consumer (nameko declares, binds, then
    /// consumes); panics after 30 s or if the process exits.
    pub async fn wait_for_consumers(&mut self, vhost: &TestVhost, queues: &[String]) {
        let raw = vhost.raw().await;
        let start = Instant::now();
        for queue in queues {
            loop {
                self.assert_running();
                if raw.consumers(queue).await.unwrap_or(0) > 0 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "nameko did not consume {queue} within 30 s:\n{}",
                    self.output()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until the JSON-lines file `sink` has `n` lines; panics after `timeout` (with
    /// nameko's output) or if the process exits.
    pub async fn wait_for_lines(&mut self, sink: &Path, n: usize, timeout: Duration) {
        let lines = || {
            std::fs::read_to_string(sink)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let start = Instant::now();
        while lines() < n {
            self.assert_running();
            assert!(
                start.elapsed() < timeout,
                "nameko handled {} of {n} events:\n{}",
                lines(),
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NamekoRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
