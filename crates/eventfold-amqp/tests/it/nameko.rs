//! The nameko codec against captures of real nameko / django-events-sourcing messages
//! (tests/fixtures, copied from the peer harness) and through the broker.

use eventfold_amqp::nameko::{self, HandlerType, NamekoEvent};
use eventfold_amqp::{ConfirmedPublisher, ExchangeKind, HeaderValue, Outcome, PublisherOptions};
use lapin::types::AMQPValue;
use serde::Serialize;

use crate::support::TestVhost;

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The captured Order, field by field in the model's order (a Python dict keeps it).
#[derive(Serialize)]
struct Order {
    id: i64,
    customer: &'static str,
    qty: i64,
    amount: &'static str,
    note: &'static str,
    created: &'static str,
}

#[test]
fn the_body_is_byte_for_byte_what_django_events_sourcing_sent() {
    let capture = fixture("nameko_event.json");
    let order = Order {
        id: 1,
        customer: "sample",
        qty: 3,
        amount: "99.90",
        note: "captured on the wire",
        created: "2026-11-23T00:41:55.850687Z",
    };
    let m = nameko::event_message("orders", "order__created", &order, &Default::default()).unwrap();
    assert_eq!(
        std::str::from_utf8(&m.body).unwrap(),
        capture["body_raw"].as_str().unwrap()
    );
    assert_eq!(m.exchange, capture["exchange"].as_str().unwrap());
    assert_eq!(m.routing_key, capture["routing_key"].as_str().unwrap());
    let props = &capture["properties"];
    assert_eq!(m.content_type.as_deref(), props["content_type"].as_str());
    assert_eq!(
        m.content_encoding.as_deref(),
        props["content_encoding"].as_str()
    );
    assert_eq!(
        i64::from(m.delivery_mode),
        props["delivery_mode"].as_i64().unwrap()
    );
    assert_eq!(m.priority.map(i64::from), props["priority"].as_i64());
    assert!(m.headers.is_empty(), "the capture has no headers");
}

#[test]
fn the_standalone_dispatcher_capture_matches_too() {
    let capture = fixture("nameko_standalone_event.json");
    // Key order of a serde_json Map is sorted; this capture's keys happen to need a struct.
    #[derive(Serialize)]
    struct Small {
        id: i64,
        customer: &'static str,
        qty: i64,
    }
    let m = nameko::event_message(
        "orders",
        "order__updated",
        &Small {
            id: 1,
            customer: "sample",
            qty: 5,
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&m.body).unwrap(),
        capture["body_raw"].as_str().unwrap()
    );
    // The same payload as a Value decodes to the same JSON as the capture's body.
    let e = NamekoEvent::new("orders", "order__updated", capture["body"].clone());
    let from_value: serde_json::Value =
        serde_json::from_slice(&e.to_message().unwrap().body).unwrap();
    assert_eq!(from_value, capture["body"]);
}

#[test]
fn handler_queue_names_follow_nameko() {
    // The topology capture of a running `nameko run` consumer.
    let topology = std::fs::read_to_string(format!(
        "{}/tests/fixtures/nameko_topology.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let name = nameko::handler_queue_name(
        "orders",
        "order__created",
        "orders_consumer",
        "on_created",
        &HandlerType::ServicePool,
    );
    assert_eq!(
        name,
        "evt-orders-order__created--orders_consumer.on_created"
    );
    assert!(topology.contains(&format!(
        "orders.events\texchange\t{name}\tqueue\torder__created"
    )));
    assert_eq!(
        nameko::handler_queue_name(
            "orders",
            "order__created",
            "x",
            "y",
            &HandlerType::Singleton
        ),
        "evt-orders-order__created"
    );
    assert_eq!(
        nameko::handler_queue_name(
            "orders",
            "order__created",
            "svc",
            "m",
            &HandlerType::Broadcast {
                broadcast_id: "b1".into()
            }
        ),
        "evt-orders-order__created--svc.m-b1"
    );
    assert_eq!(nameko::exchange_name("orders"), "orders.events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_goes_through_the_broker_as_nameko_sends_it() {
    let vhost = TestVhost::new();
    let raw = vhost.raw().await;
    let p = ConfirmedPublisher::connect(vhost.config(), PublisherOptions::default())
        .await
        .unwrap();
    p.declare_exchange(&nameko::exchange_name("orders"), ExchangeKind::Topic)
        .await
        .unwrap();
    let queue = nameko::handler_queue_name(
        "orders",
        "order__created",
        "orders_consumer",
        "on_created",
        &HandlerType::ServicePool,
    );
    raw.bound_queue(&queue, "orders.events", "order__created")
        .await;

    let event = NamekoEvent::new(
        "orders",
        "order__created",
        serde_json::json!({"id": 7, "note": "naïve"}),
    )
    .with_header(
        "call_id_stack",
        vec![
            "gateway.create_order.5f1b".to_owned(),
            "orders.create.9c2a".to_owned(),
        ],
    )
    .with_header("correlation_id", "abc-123");
    assert_eq!(
        p.publish_one(&event.to_message().unwrap()).await.unwrap(),
        Outcome::Confirmed
    );

    let got = raw.drain(&queue).await;
    assert_eq!(got.len(), 1);
    let d = &got[0].delivery;
    assert_eq!(
        std::str::from_utf8(&d.data).unwrap(),
        r#"{"id": 7, "note": "na\u00efve"}"#
    );
    assert_eq!(d.exchange.as_str(), "orders.events");
    assert_eq!(d.routing_key.as_str(), "order__created");
    let props = &d.properties;
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(props.content_encoding().as_ref().unwrap().as_str(), "utf-8");
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(props.priority(), &Some(0));
    let headers = props.headers().as_ref().unwrap().inner();
    match headers.get("nameko.call_id_stack") {
        Some(AMQPValue::FieldArray(a)) => {
            let items: Vec<String> = a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
                    other => panic!("not a long string: {other:?}"),
                })
                .collect();
            assert_eq!(items, ["gateway.create_order.5f1b", "orders.create.9c2a"]);
        }
        other => panic!("call_id_stack: {other:?}"),
    }
    assert!(matches!(
        headers.get("nameko.correlation_id"),
        Some(AMQPValue::LongString(_))
    ));
    // And back: the context of the received headers.
    let received = eventfold_amqp::HeaderValue::Str("abc-123".into());
    let ctx = nameko::context_of(&event.to_message().unwrap().headers);
    assert_eq!(ctx.get("correlation_id"), Some(&received));
    assert!(matches!(ctx.get("call_id_stack"), Some(HeaderValue::List(l)) if l.len() == 2));
}
