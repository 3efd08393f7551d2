//! Failing hooks (retried by re-publishing, then dead-lettered), expired messages, and
//! every kind of malformed message: dead-lettered with the reason, and the consumer goes on.

use std::sync::Arc;
use std::time::Duration;

use eventfold_amqp::{OutgoingMessage, HEADER_ERROR};
use eventfold_cqrs::wire::CqrsMessage;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hook_is_retried_then_dead_lettered() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-retry");
    let faults = Arc::new(Faults::default());
    faults.fail(7, u32::MAX);
    faults.fail(9, 1);
    let mut opts = options();
    opts.max_retries = 2;
    opts.workers = 1;
    // One batch for the three, so the failure rolls back the good one too.
    opts.linger = Duration::from_millis(200);
    start(&vhost, &store, &faults, opts.clone())
        .await
        .shutdown()
        .await
        .unwrap();
    publish(&vhost, &[save(7, 0), save(8, 0), save(9, 0)]).await;
    let consumer = start(&vhost, &store, &faults, opts).await;
    let stats = wait_stats(&consumer, "the dead letter", |s| {
        s.dead_letters == 1 && s.acked == 5
    })
    .await;
    let stats = {
        let last = consumer.shutdown().await.unwrap();
        assert_eq!(last.acked, stats.acked);
        last
    };
    // 7 twice and 9 once re-published; 7 then exhausted.
    assert_eq!(
        (stats.retries, stats.exhausted, stats.dead_letters),
        (3, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.applied, 2);
    assert!(stats.batch_fallbacks >= 1, "{stats:?}");
    let ids: Vec<i64> = rows(&store).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, [8, 9]);

    let raw = vhost.raw().await;
    assert_eq!(raw.count(QUEUE).await, 0);
    let dead = raw.drain(DLQ).await;
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(m.delivery.exchange.as_str(), "cqrs");
    assert_eq!(
        m.delivery.routing_key.as_str(),
        "cqrs.dead_letter_replica.item"
    );
    assert_eq!(
        m.delivery
            .properties
            .expiration()
            .as_ref()
            .map(|s| s.as_str()),
        Some("864000000")
    );
    assert_eq!(
        header(m, HEADER_ERROR).as_deref(),
        Some("failed after 2 retries: injected failure for item 7")
    );
    // django-cqrs's `cqrs_dead_letters dump` reads it: the body is the message itself.
    let body = CqrsMessage::from_body(&m.delivery.data).unwrap();
    assert_eq!((body.pk_text().as_str(), body.retries), ("7", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_dead_lettered_unapplied() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-expired");
    let consumer = start(&vhost, &store, &Arc::default(), options()).await;
    let mut old = save(1, 0);
    old.expires = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    publish(&vhost, &[old, save(2, 0)]).await;
    wait_stats(&consumer, "both", |s| s.dead_letters == 1 && s.applied == 1).await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!((stats.expired, stats.retries), (1, 0));
    let ids: Vec<i64> = rows(&store).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, [2]);
    let dead = vhost.raw().await.drain(DLQ).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].delivery.routing_key.as_str(),
        "cqrs.dead_letter_replica.item"
    );
    let reason = header(&dead[0], HEADER_ERROR).unwrap();
    assert!(reason.starts_with("expired at "), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_message_is_dead_lettered_with_its_reason() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-malformed");
    let mut opts = options();
    opts.workers = 1;
    opts.max_body_bytes = 4096;
    let consumer = start(&vhost, &store, &Arc::default(), opts).await;

    let good = save(1, 0);
    let without = |key: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&save(2, 0).to_body()).unwrap();
        v.as_object_mut().unwrap().remove(key);
        v.to_string().into_bytes()
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&save(2, 0).to_body()).unwrap();
        v[key] = value;
        v.to_string().into_bytes()
    };
    let mut data_without_revision = save(2, 0);
    data_without_revision.instance_data.remove("cqrs_revision");
    let mut data_not_fitting = save(2, 0);
    data_not_fitting.instance_data["qty"] = "many".into();
    let mut huge = save(2, 0);
    huge.instance_data["name"] = "x".repeat(5000).into();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed message: not valid JSON"),
        (
            without("instance_pk"),
            "malformed message: missing `instance_pk`",
        ),
        (
            without("signal_type"),
            "malformed message: missing `signal_type`",
        ),
        (without("cqrs_id"), "malformed message: missing `cqrs_id`"),
        (
            without("instance_data"),
            "malformed message: missing `instance_data`",
        ),
        (
            with("signal_type", "PATCH".into()),
            "malformed message: unknown signal_type \"PATCH\"",
        ),
        (with("cqrs_id", "order".into()), "unknown cqrs_id \"order\""),
        (huge.to_body(), "body of "),
        (
            data_without_revision.to_body(),
            "`instance_data.cqrs_revision` is missing",
        ),
        (
            data_not_fitting.to_body(),
            "rejected by the model: instance_data does not fit item",
        ),
    ];
    let mut messages: Vec<OutgoingMessage> = cases
        .iter()
        .map(|(body, _)| OutgoingMessage::new("cqrs", "item", body.clone()))
        .collect();
    messages.push(good.to_message("cqrs", "item"));
    publish_raw(&vhost, &messages).await;

    let n = cases.len() as u64;
    wait_stats(&consumer, "all of them", |s| {
        s.dead_letters == n && s.applied == 1
    })
    .await;
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!((stats.malformed, stats.retries), (n, 0), "{stats:?}");
    assert_eq!(rows(&store).await, vec![(1, "item 1 r0".into(), 0, 0)]);

    let dead = vhost.raw().await.drain(DLQ).await;
    assert_eq!(dead.len(), cases.len());
    for (m, (body, reason)) in dead.iter().zip(&cases) {
        let got = header(m, HEADER_ERROR).unwrap();
        assert!(
            got.starts_with(reason),
            "{got:?} should start with {reason:?}"
        );
        assert_eq!(
            &m.delivery.data, body,
            "dead letters keep the body verbatim"
        );
    }
    assert!(header(&dead[7], HEADER_ERROR)
        .unwrap()
        .contains("exceeds the limit of 4096 bytes"));
}
