//! The browser harness against a page served here: it opens the page, clicks, sees the
//! page's script change the text, keeps a screenshot, and stops what it started.

use eventfold_testkit::browser::{Browser, Locator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = r#"<!doctype html><html><head><title>harness</title></head><body>
<h1 id="state">waiting</h1>
<button id="go" onclick="setTimeout(() => { document.getElementById('state').textContent = 'clicked ' + (1 + 1); }, 200)">go</button>
</body></html>"#;

/// Serves `PAGE` to every request on a loopback port; returns the page's URL.
async fn serve_page() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_click_runs_the_page_script_and_the_screenshot_is_a_png() {
    let url = serve_page().await;
    let browser = Browser::start("testkit_harness").await;
    browser.goto(&url).await;
    assert_eq!(browser.text(Locator::Id("state")).await, "waiting");
    browser.find(Locator::Id("go")).await.click().await.unwrap();
    // The script changes the text 200 ms after the click: the wait must poll for it.
    let shown = browser.wait_for_text(Locator::Id("state"), "clicked").await;
    assert_eq!(shown, "clicked 2");
    assert_eq!(browser.client().title().await.unwrap(), "harness");

    let path = browser.screenshot("clicked").await;
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} is not a real PNG ({} bytes)",
        path.display(),
        png.len()
    );
    browser.close().await;
}

#[tokio::test]
#[should_panic(expected = "did not show")]
async fn waiting_for_text_that_never_comes_fails_with_what_was_shown() {
    let url = serve_page().await;
    let browser = Browser::start("testkit_harness_timeout").await;
    browser.goto(&url).await;
    browser.wait_for_text(Locator::Id("state"), "never").await;
}
