//! Headless Chromium driven over WebDriver, for tests that use a page as a person does.
//!
//! [`Browser::start`] runs Debian's `chromedriver` on a free loopback port and opens one
//! headless `chromium` session through it (a fresh profile per session, with the flags
//! that keep Chromium off the network: this machine has none). `scripts/services.sh`
//! installs both packages when they are missing; `EVENTFOLD_CHROMIUM` and
//! `EVENTFOLD_CHROMEDRIVER` name other binaries. A test tool's own browser download is
//! not used: it cannot work without the internet.
//!
//! Screenshots go to `target/browser-artifacts/<test>/<name>.png` (under
//! `CARGO_TARGET_DIR` when it is set, or `EVENTFOLD_BROWSER_ARTIFACTS`), kept after the
//! run so a failure can be looked at.
//!
//! ```no_run
//! # async fn page() {
//! use eventfold_testkit::browser::{Browser, Locator};
//!
//! let browser = Browser::start("streams_page").await;
//! browser.goto("http://127.0.0.1:7070/streams").await;
//! browser.find(Locator::Css("a.stream")).await.click().await.unwrap();
//! browser.wait_for_text(Locator::Css("h1"), "Stream").await;
//! browser.screenshot("stream").await;
//! browser.close().await;
//! # }
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fantoccini::elements::Element;
pub use fantoccini::{Client, Locator};

/// How long [`Browser::find`] and [`Browser::wait_for_text`] wait before they panic.
pub const WAIT: Duration = Duration::from_secs(15);

/// One headless Chromium session and the `chromedriver` process behind it. Dropping it
/// stops both; [`Browser::close`] also ends the session politely first.
pub struct Browser {
    client: Client,
    // Dropped after the client (fields drop in order): the session's end reaches the
    // driver before the driver stops.
    _driver: DriverProcess,
    artifacts: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session; screenshots of this
    /// session go to `browser-artifacts/<test>/`.
    pub async fn start(test: &str) -> Browser {
        let chromium = binary("EVENTFOLD_CHROMIUM", "chromium");
        let chromedriver = binary("EVENTFOLD_CHROMEDRIVER", "chromedriver");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            // Its own process group, which Chromium joins: dropping the session kills the
            // group, so no browser outlives a test that panicked before `close`.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", chromedriver.display()));
        let profile = tempfile::tempdir().expect("a temporary Chromium profile");
        let driver = DriverProcess(driver);
        wait_for_port(port).await;
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("no Chromium session through chromedriver: {e}"));
        let artifacts = artifacts_root().join(test);
        std::fs::create_dir_all(&artifacts)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", artifacts.display()));
        Browser {
            client,
            _driver: driver,
            artifacts,
            _profile: profile,
        }
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits until the page has loaded.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The first element `locator` finds, waiting up to [`WAIT`] for it to appear.
    pub async fn find(&self, locator: Locator<'_>) -> Element {
        let described = format!("{locator:?}");
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(locator)
            .await
            .unwrap_or_else(|e| panic!("no element {described} within {WAIT:?}: {e}"))
    }

    /// The visible text of the first element `locator` finds (waiting as [`Self::find`]).
    pub async fn text(&self, locator: Locator<'_>) -> String {
        self.find(locator).await.text().await.expect("element text")
    }

    /// Waits up to [`WAIT`] until the element `locator` finds contains `expected`
    /// (the page may change it from a script); panics with the last text seen.
    pub async fn wait_for_text(&self, locator: Locator<'_>, expected: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(element) = self.client.find(locator).await {
                if let Ok(text) = element.text().await {
                    if text.contains(expected) {
                        return text;
                    }
                    last = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{locator:?} did not show {expected:?} within {WAIT:?}; it showed {last:?}")
    }

    /// Saves a PNG of the viewport as `<name>.png` in this session's artifacts folder and
    /// returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Ends the session (Chromium quits), then stops `chromedriver`.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `chromedriver` and the Chromium it started (one process group), killed when dropped:
/// also when a test panics, or when the session never opens.
struct DriverProcess(Child);

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `$variable` when set, else `name` found on `PATH`; panics with what to install.
fn binary(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH: run scripts/services.sh (it installs Debian's \
                 chromium and chromium-driver) or set {variable}"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `EVENTFOLD_BROWSER_ARTIFACTS`, else `browser-artifacts` in the target folder
/// (`CARGO_TARGET_DIR`, else the workspace's `target`).
fn artifacts_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVENTFOLD_BROWSER_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join("target")
        });
    target.join("browser-artifacts")
}
