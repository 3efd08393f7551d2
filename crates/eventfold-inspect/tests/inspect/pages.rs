//! Every JSON endpoint and page on a store with real data, paging, undecodable events, the
//! token, read-only actions and the live tail.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use eventfold::{Recording, StoredEvent, Timestamp};
use eventfold_inspect::Inspector;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;
use worlds_example::World;

use crate::support::{get, parse_metrics, request, sample, seed, Db};

fn inspector(db: &Db) -> Inspector {
    Inspector::builder(db.store.clone())
        .config(&db.writer_config())
        .unwrap()
        .aggregate::<World>()
        .build()
}

fn ids(rows: &Value, key: &str) -> Vec<u64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_u64().unwrap())
        .collect()
}

async fn every_endpoint_shows_the_data(db: Db) {
    let worlds = seed(&db).await;
    let router = inspector(&db).router();
    let world = worlds[0].to_string();

    // A stream: newest first, decoded (decrypted, decompressed), its snapshot, its state.
    let stream = get(&router, &format!("/api/streams/{world}")).await.json();
    assert_eq!(stream["aggregate_type"], "World");
    assert_eq!(stream["last_version"], 3);
    assert_eq!(ids(&stream["events"], "version"), [3, 2, 1]);
    assert_eq!(stream["events"][2]["topic"], "World.Created");
    assert_eq!(stream["events"][0]["topic"], "World.SomethingHappened");
    assert!(
        stream["events"][0]["payload"]
            .to_string()
            .contains("trucks"),
        "{stream}"
    );
    assert!(stream["events"][0]["size"].as_u64().unwrap() > 0);
    // The save crossed version 2: the snapshot is the state after it.
    assert_eq!(ids(&stream["snapshots"], "version"), [3]);
    assert!(stream["snapshots"][0]["payload"]
        .to_string()
        .contains("trucks"));
    assert_eq!(stream["state_available"], true);
    assert_eq!(stream["state"], Value::Null);
    // Below the snapshot: folded from the events.
    let at_2 = get(&router, &format!("/api/streams/{world}?at=2"))
        .await
        .json();
    assert_eq!(at_2["state"]["version"], 2);
    assert_eq!(
        at_2["state"]["state"]["history"],
        serde_json::json!(["dinosaurs"])
    );
    let at_3 = get(&router, &format!("/api/streams/{world}?at=3"))
        .await
        .json();
    assert_eq!(
        at_3["state"]["state"]["history"],
        serde_json::json!(["dinosaurs", "trucks"])
    );
    let by_query = get(&router, &format!("/api/streams?id={world}"))
        .await
        .json();
    assert_eq!(by_query["stream_id"], world.as_str());

    // Paging a stream.
    let page = get(&router, &format!("/api/streams/{world}?limit=2"))
        .await
        .json();
    assert_eq!(ids(&page["events"], "version"), [3, 2]);
    assert_eq!(page["next_before"], 2);
    let older = get(&router, &format!("/api/streams/{world}?limit=2&before=2"))
        .await
        .json();
    assert_eq!(ids(&older["events"], "version"), [1]);
    assert_eq!(older["next_before"], Value::Null);

    // The log: newest first, paged, filtered by topic.
    let log = get(&router, "/api/log?limit=4").await.json();
    assert_eq!(log["head"], 6);
    assert_eq!(ids(&log["notifications"], "id"), [6, 5, 4, 3]);
    assert_eq!(log["next_before"], 3);
    let older = get(&router, "/api/log?limit=4&before=3").await.json();
    assert_eq!(ids(&older["notifications"], "id"), [2, 1]);
    assert_eq!(older["next_before"], Value::Null);
    let created = get(&router, "/api/log?topic=World.Created").await.json();
    assert_eq!(ids(&created["notifications"], "id"), [4, 1]);
    assert_eq!(created["notifications"][0]["payload"], "Created");
    assert_eq!(created["notifications"][0].get("undecodable"), None);

    // Streams of an aggregate type, newest activity first.
    let found = get(&router, "/api/streams?type=World").await.json();
    let streams: Vec<&str> = found["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(streams, [worlds[1].to_string(), world.clone()]);
    assert_eq!(found["registered_types"], serde_json::json!(["World"]));
    let none = get(&router, "/api/streams?type=Nothing").await.json();
    assert_eq!(none["streams"], serde_json::json!([]));

    // Followers and the relay (which never ran: everything pending).
    let followers = get(&router, "/api/followers").await.json();
    assert_eq!(followers["head"], 6);
    assert_eq!(followers["followers"][0]["name"], "view");
    assert_eq!(followers["followers"][0]["position"], 2);
    assert_eq!(followers["followers"][0]["lag_records"], 4);
    assert!(followers["followers"][0]["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(followers["followers"][0]["state"], "unknown");
    let again = get(&router, "/api/followers").await.json();
    assert_eq!(
        again["followers"][0]["state"], "unknown",
        "not seen to move"
    );
    let mut tx = db.store.begin().await.unwrap();
    tx.track(eventfold::Tracking::new("view", 3)).await.unwrap();
    tx.commit().await.unwrap();
    let moved = get(&router, "/api/followers").await.json();
    assert_eq!(moved["followers"][0]["state"], "moving");
    assert_eq!(moved["followers"][0]["lag_records"], 3);
    let relay = get(&router, "/api/relay").await.json();
    assert_eq!(relay["relays"][0]["name"], "relay");
    assert_eq!(relay["relays"][0]["position"], 0);
    assert_eq!(relay["relays"][0]["pending"], 6);
    assert_eq!(relay["relays"][0]["parked"], serde_json::json!([]));
    let dead = get(&router, "/api/dead-letters").await.json();
    assert_eq!(dead["queues"], serde_json::json!([]));
    assert_eq!(dead["actions_allowed"], false);

    // /metrics parses, and says the same.
    let metrics = get(&router, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = parse_metrics(&metrics.body);
    assert_eq!(sample(&samples, "eventfold_log_head"), 6.0);
    assert_eq!(
        sample(&samples, "eventfold_follower_position{follower=\"view\"}"),
        3.0
    );
    assert_eq!(
        sample(
            &samples,
            "eventfold_follower_lag_records{follower=\"view\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(&samples, "eventfold_relay_pending_records{relay=\"relay\"}"),
        6.0
    );
    assert_eq!(
        sample(&samples, "eventfold_relay_parked_messages{relay=\"relay\"}"),
        0.0
    );

    // The pages: HTML of the same data, with links to the streams.
    for (uri, expected) in [
        ("/log".to_owned(), format!("href=\"/streams/{world}\"")),
        (format!("/streams/{world}?at=2"), "dinosaurs".to_owned()),
        ("/streams?type=World".to_owned(), world.clone()),
        ("/followers".to_owned(), "view".to_owned()),
        ("/relay".to_owned(), "pending".to_owned()),
        (
            "/dead-letters".to_owned(),
            "No queues configured".to_owned(),
        ),
    ] {
        let page = get(&router, &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.body);
        assert!(page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(
            page.body.contains(&expected),
            "{uri} lacks {expected}: {}",
            page.body
        );
    }
    let js = get(&router, "/assets/inspect.js").await;
    assert!(js.body.contains("EventSource"));

    // Bad input is a clear error, not a crash.
    let missing = get(&router, "/api/streams/no-such-stream").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("no stream"), "{}", missing.body);
    let bad = get(&router, "/api/log?before=soon").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("before must be a non-negative integer"),
        "{}",
        bad.body
    );
    let bad = get(&router, "/api/log?limit=100000").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let page = get(&router, "/log?limit=0").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("limit must be between"), "{}", page.body);
}

#[tokio::test]
async fn every_endpoint_shows_the_data_on_sqlite() {
    every_endpoint_shows_the_data(Db::sqlite().await).await;
}

#[tokio::test]
async fn every_endpoint_shows_the_data_on_postgres() {
    every_endpoint_shows_the_data(Db::postgres().await).await;
}

#[tokio::test]
async fn undecodable_events_are_shown_as_such() {
    let db = Db::sqlite().await;
    let worlds = seed(&db).await;
    // No cipher key: the encrypted payloads cannot be read.
    let router = Inspector::builder(db.store.clone()).build().router();
    let stream = get(&router, &format!("/api/streams/{}", worlds[0]))
        .await
        .json();
    let event = &stream["events"][0];
    assert_eq!(event["payload"], Value::Null);
    assert!(
        event["undecodable"]
            .as_str()
            .unwrap()
            .contains("no cipher key configured"),
        "{event}"
    );
    assert_eq!(event["version"], 3, "the rest of the row is there");
    let page = get(&router, &format!("/streams/{}", worlds[0])).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("undecodable: no cipher key"),
        "{}",
        page.body
    );
    // Asking for the state of an aggregate type that is not registered is a clear error.
    let state = get(&router, &format!("/api/streams/{}?at=2", worlds[0])).await;
    assert_eq!(state.status, StatusCode::BAD_REQUEST);
    assert!(state.body.contains("not registered"), "{}", state.body);

    // A record that is no JSON at all, with markup in its names: escaped, undecodable.
    db.store
        .record(&Recording::new().event(StoredEvent::new(
            "<img src=x onerror=alert(1)>",
            1,
            "Evil.<b>Bold</b>",
            Timestamp::now(),
            b"\x00\x01 not json".to_vec(),
        )))
        .await
        .unwrap();
    let log = get(&router, "/log").await;
    assert_eq!(log.status, StatusCode::OK);
    assert!(!log.body.contains("<img src=x"), "{}", log.body);
    assert!(!log.body.contains("<b>Bold"), "{}", log.body);
    assert!(log.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let api = get(&router, "/api/log?limit=1").await.json();
    assert_eq!(api["notifications"][0]["payload"], Value::Null);
}

#[tokio::test]
async fn a_token_is_required_on_every_route() {
    let db = Db::sqlite().await;
    seed(&db).await;
    let router = Inspector::builder(db.store.clone())
        .token("t0ken-42")
        .build()
        .router();
    for uri in [
        "/log",
        "/api/log",
        "/api/followers",
        "/metrics",
        "/streams",
        "/assets/inspect.js",
    ] {
        let reply = get(&router, uri).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(!reply.body.contains("t0ken-42"));
        let wrong = request(
            &router,
            Request::get(uri)
                .header(header::AUTHORIZATION, "Bearer t0ken-41")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{uri}");
        let right = request(
            &router,
            Request::get(uri)
                .header(header::AUTHORIZATION, "Bearer t0ken-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(right.status, StatusCode::OK, "{uri}");
    }
    let post = request(
        &router,
        Request::post("/api/dead-letters/replica/retry")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED);

    // A browser opens a link with ?token=: it gets a cookie and the same page without it.
    let link = get(&router, "/log?token=t0ken-42").await;
    assert_eq!(link.status, StatusCode::SEE_OTHER);
    assert_eq!(link.headers[header::LOCATION], "/log");
    let cookie = link.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap();
    let with_cookie = request(
        &router,
        Request::get("/followers")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(with_cookie.status, StatusCode::OK);
    assert_eq!(
        get(&router, "/log?token=nope").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn actions_are_refused_when_read_only() {
    let db = Db::sqlite().await;
    let read_only = Inspector::builder(db.store.clone())
        .dead_letters("replica")
        .build()
        .router();
    for action in ["retry", "purge"] {
        let reply = request(
            &read_only,
            Request::post(format!("/api/dead-letters/replica/{action}"))
                .header(eventfold_inspect::ACTION_HEADER, "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{action}");
        assert!(reply.body.contains("read-only"), "{}", reply.body);
    }
    // GET is no way around it.
    let get_action = get(&read_only, "/api/dead-letters/replica/purge").await;
    assert_eq!(get_action.status, StatusCode::METHOD_NOT_ALLOWED);

    // Allowed, an action still needs the page's header (no cross-site form posts it).
    let allowed = Inspector::builder(db.store.clone())
        .dead_letters("replica")
        .allow_actions(true)
        .build()
        .router();
    let reply = request(
        &allowed,
        Request::post("/api/dead-letters/replica/purge")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.body.contains(eventfold_inspect::ACTION_HEADER),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn the_live_tail_receives_a_record_committed_after_connecting() {
    for db in [Db::sqlite().await, Db::postgres().await] {
        let worlds = seed(&db).await;
        let router = inspector(&db).router();
        let response = router
            .clone()
            .oneshot(Request::get("/api/log/tail").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body();

        // Committed after the connection opened (the tail starts at the head, 6).
        let app = db.writer_config().application_on(db.store.clone()).unwrap();
        let mut world = app.repository().get::<World>(&worlds[1]).await.unwrap();
        let make = world.make_it_so("a comet");
        world.trigger(make);
        app.save(&mut world).await.unwrap();

        let mut received = String::new();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    received.push_str(std::str::from_utf8(&data).unwrap());
                }
                if received.contains("a comet") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "{received}");
        assert!(received.contains("event: notification\n"), "{received}");
        assert!(received.contains("id: 7\n"), "{received}");
        assert!(
            !received.contains("id: 6\n"),
            "only what came after: {received}"
        );
        drop(db);
    }
}

#[tokio::test]
async fn the_state_of_a_stream_past_its_end_is_its_last() {
    let db = Db::sqlite().await;
    let worlds = seed(&db).await;
    let router = inspector(&db).router();
    let state = get(&router, &format!("/api/streams/{}?at=99", worlds[1]))
        .await
        .json();
    assert_eq!(state["state"]["version"], 3);
    assert_eq!(
        state["state"]["state"]["history"],
        serde_json::json!(["internet", "rain"])
    );
    let zero = get(&router, &format!("/api/streams/{}?at=0", worlds[1])).await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
}
