//! `eventfold inspect` run as a process: it serves the pages of the demo's store on the
//! address it prints, asks for the token, stops on SIGTERM, and says what is wrong with
//! bad input without showing a password.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn eventfold(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventfold"));
    command
        .current_dir(dir)
        .env_remove("EVENTFOLD_STORE")
        .env_remove("EVENTFOLD_SQLITE_PATH")
        .env_remove("EVENTFOLD_CIPHER_KEY")
        .env_remove("EVENTFOLD_INSPECT_TOKEN")
        .env_remove("EVENTFOLD_AMQP_URL");
    command
}

/// One HTTP/1.1 request; the status code and the body.
fn http_get(address: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Server {
        let mut child = eventfold(dir)
            .arg("inspect")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        assert!(line.contains("read-only"), "{line}");
        Server { child, address }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn inspect_serves_the_demo_store_behind_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let demo = eventfold(dir.path()).arg("demo").output().unwrap();
    assert!(demo.status.success());
    let server = Server::start(dir.path(), &["--listen", "127.0.0.1:0", "--token", "tok-1"]);
    assert!(
        server.address.starts_with("127.0.0.1:"),
        "{}",
        server.address
    );

    let (status, _) = http_get(&server.address, "/api/log", None);
    assert_eq!(status, 401);
    let (status, body) = http_get(&server.address, "/api/log?limit=2", Some("tok-1"));
    assert_eq!(status, 200, "{body}");
    let log: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(log["head"], 5);
    assert_eq!(log["notifications"].as_array().unwrap().len(), 2);
    // The demo writes zlib: decoded without being told.
    assert!(log["notifications"][0]["payload"].is_object(), "{log}");
    let stream = log["notifications"][0]["stream_id"].as_str().unwrap();
    // World is registered: state at version N.
    let (status, body) = http_get(
        &server.address,
        &format!("/api/streams/{stream}?at=2"),
        Some("tok-1"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"history\":[\"dinosaurs\"]"), "{body}");
    let (status, body) = http_get(&server.address, "/metrics", Some("tok-1"));
    assert_eq!(status, 200);
    assert!(body.contains("eventfold_log_head 5"), "{body}");
    assert!(server.stop().success());
}

#[test]
fn inspect_explains_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let help = eventfold(dir.path())
        .args(["inspect", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--amqp-url",
        "--dead-letters",
        "--relay",
        "--allow-actions",
        "--token",
        "127.0.0.1:7070",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }

    let bad = eventfold(dir.path())
        .args(["inspect", "--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--listen"),
        "{bad:?}"
    );

    let missing = eventfold(dir.path()).arg("inspect").output().unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no SQLite database"), "{err}");
    assert!(
        !dir.path().join("eventfold.sqlite3").exists(),
        "reading creates nothing"
    );

    let demo = eventfold(dir.path()).arg("demo").output().unwrap();
    assert!(demo.status.success());
    let broker = eventfold(dir.path())
        .args([
            "inspect",
            "--listen",
            "127.0.0.1:0",
            "--dead-letters",
            "replica",
        ])
        .env(
            "EVENTFOLD_AMQP_URL",
            "amqp://guest:hidden-pw-5@127.0.0.1:1/%2f",
        )
        .output()
        .unwrap();
    assert!(!broker.status.success());
    let err = String::from_utf8_lossy(&broker.stderr);
    assert!(err.contains("cannot connect to the broker"), "{err}");
    assert!(!err.contains("hidden-pw-5"), "{err}");
}
