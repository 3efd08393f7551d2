//! The pages in headless Chromium, as a person uses them: each page on a store with real
//! data, a stream link followed, the state folded, the live tail receiving a new event, a
//! dead letter retried with its button and applied by the running replica. A screenshot of
//! each page goes to `target/browser-artifacts/<test>/`.

use eventfold_inspect::Inspector;
use eventfold_testkit::browser::{Browser, Locator};
use worlds_example::World;

use crate::amqp::Replica;
use crate::support::{seed, Db};

/// `inspector` served on a loopback port until the returned sender is dropped or fired.
struct Served {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(inspector: Inspector) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(inspector.serve(listener, async move {
            let _ = stopped.await;
        }));
        Served { url, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn inspector(db: &Db) -> Inspector {
    Inspector::builder(db.store.clone())
        .config(&db.writer_config())
        .unwrap()
        .aggregate::<World>()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_opens_and_a_stream_link_leads_to_its_state() {
    let db = Db::sqlite().await;
    let worlds = seed(&db).await;
    let served = Served::start(inspector(&db)).await;
    let url = &served.url;
    let browser = Browser::start("inspect_pages").await;

    browser.goto(&format!("{url}/log")).await;
    browser.wait_for_text(Locator::Css("h1"), "Log").await;
    let log = browser.text(Locator::Css("table#log tbody")).await;
    assert!(log.contains("World.SomethingHappened"), "{log}");
    assert!(log.contains("trucks"), "decoded payloads: {log}");
    browser.screenshot("log").await;

    // The newest record is the second world's: its link opens its stream.
    browser
        .find(Locator::Css("table#log a.stream"))
        .await
        .click()
        .await
        .unwrap();
    let title = browser.wait_for_text(Locator::Css("h1"), "Stream").await;
    assert!(title.contains(&worlds[1].to_string()), "{title}");
    let events = browser.text(Locator::Css("table#events")).await;
    assert!(events.contains("rain"), "{events}");
    browser.screenshot("stream").await;

    // State at version 2, through the page's form.
    let at = browser.find(Locator::Id("state-at")).await;
    at.clear().await.unwrap();
    at.send_keys("2").await.unwrap();
    browser
        .find(Locator::Css("form.search button"))
        .await
        .click()
        .await
        .unwrap();
    let state = browser
        .wait_for_text(Locator::Id("state"), "internet")
        .await;
    assert!(
        !state.contains("rain"),
        "version 2 is before the rain: {state}"
    );
    browser.screenshot("state_at_2").await;

    browser.goto(&format!("{url}/streams?type=World")).await;
    let streams = browser.text(Locator::Css("table#streams")).await;
    assert!(streams.contains(&worlds[0].to_string()), "{streams}");
    browser.screenshot("streams").await;

    for (page, expected) in [
        ("followers", "view"),
        ("relay", "pending"),
        ("dead-letters", "No queues configured"),
        ("metrics", "eventfold_log_head 6"),
    ] {
        browser.goto(&format!("{url}/{page}")).await;
        browser.wait_for_text(Locator::Css("body"), expected).await;
        browser.screenshot(page).await;
    }
    browser.close().await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_shows_a_new_event() {
    let db = Db::sqlite().await;
    let worlds = seed(&db).await;
    let served = Served::start(inspector(&db)).await;
    let browser = Browser::start("inspect_live_tail").await;
    browser.goto(&format!("{}/log", served.url)).await;
    browser
        .wait_for_text(Locator::Id("tail-status"), "connected")
        .await;

    let app = db.writer_config().application_on(db.store.clone()).unwrap();
    let mut world = app.repository().get::<World>(&worlds[0]).await.unwrap();
    let make = world.make_it_so("a comet");
    world.trigger(make);
    app.save(&mut world).await.unwrap();

    let rows = browser
        .wait_for_text(Locator::Css("table#log tbody"), "a comet")
        .await;
    assert!(rows.starts_with('7'), "the new record on top: {rows}");
    assert_eq!(browser.text(Locator::Id("head")).await, "7");
    browser.screenshot("live_tail").await;
    browser.close().await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_with_its_button_is_applied() {
    let replica = Replica::with_a_dead_letter().await;
    let served = Served::start(replica.inspector()).await;
    let browser = Browser::start("inspect_dead_letters").await;
    browser.goto(&format!("{}/dead-letters", served.url)).await;
    let queue = browser
        .wait_for_text(Locator::Css("section.queue"), "expired at")
        .await;
    assert!(queue.contains("anvil"), "{queue}");
    browser.screenshot("dead_letters").await;

    browser
        .find(Locator::Css("button.action"))
        .await
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(Locator::Id("action-result"), "retry replica: 1 of 1 done")
        .await;
    assert_eq!(
        browser.text(Locator::Css("section.queue .total")).await,
        "0"
    );
    replica.wait_applied().await;
    browser.screenshot("retried").await;
    browser.goto(&format!("{}/dead-letters", served.url)).await;
    assert_eq!(
        browser.text(Locator::Css("section.queue .total")).await,
        "0"
    );
    browser.screenshot("dead_letters_after").await;
    browser.close().await;
    served.stop().await;
    replica.stop().await;
}
