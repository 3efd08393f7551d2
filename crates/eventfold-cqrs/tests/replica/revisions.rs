//! django-cqrs's revision rules, case by case, on SQLite and PostgreSQL.

use std::sync::Arc;

use eventfold_core::Store;
use eventfold_cqrs::wire::SignalType::{Delete, Sync};

use crate::support::*;

async fn revision_rules(store: Arc<dyn Store>) {
    let vhost = TestVhost::with_prefix("ef-cqrs-rev");
    let faults = Arc::default();
    let consumer = start(&vhost, &store, &faults, options()).await;
    let messages = [
        // pk 1: created, duplicate skipped, a gap applied, then a stale one skipped.
        save(1, 0),
        save(1, 0),
        save(1, 2),
        save(1, 1),
        // pk 2: a gap of 2, then SYNCs applied whatever the stored revision.
        save(2, 0),
        save(2, 3),
        item(Sync, 2, 1),
        item(Sync, 2, 1),
        // pk 3: deleted by pk. pk 4: a SYNC creates. pk 5: deleting nothing is fine.
        save(3, 0),
        item(Delete, 3, 1),
        item(Sync, 4, 3),
        item(Delete, 5, 0),
        // pk 6: no row, so created whatever its revision.
        save(6, 4),
    ];
    publish(&vhost, &messages).await;
    let stats = wait_stats(&consumer, "13 messages", |s| s.acked == 13).await;
    let stats = {
        let final_stats = consumer.shutdown().await.unwrap();
        assert_eq!(final_stats.acked, stats.acked);
        final_stats
    };
    assert_eq!(
        (stats.created, stats.updated, stats.deleted, stats.applied),
        (5, 4, 2, 11),
        "{stats:?}"
    );
    assert_eq!(
        (
            stats.duplicates,
            stats.stale,
            stats.lost_gaps,
            stats.sync_downgrades
        ),
        (1, 1, 2, 1),
        "{stats:?}"
    );
    assert_eq!(
        (stats.retries, stats.dead_letters, stats.redelivered_skipped),
        (0, 0, 0)
    );
    assert_eq!(
        rows(&store).await,
        vec![
            (1, "item 1 r2".into(), 20, 2),
            (2, "item 2 r1".into(), 10, 1),
            (4, "item 4 r3".into(), 30, 3),
            (6, "item 6 r4".into(), 40, 4),
        ]
    );
    let raw = vhost.raw().await;
    assert_eq!(raw.count(QUEUE).await, 0);
    assert_eq!(raw.count(DLQ).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_rules_on_sqlite() {
    let (_db, store) = Db::sqlite().await;
    revision_rules(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_rules_on_postgres() {
    let (_db, store) = Db::postgres("rev").await;
    revision_rules(store).await;
}

/// The topology is django-cqrs's, so the two can replace each other on one queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_django_cqrs_s() {
    let (_db, store) = Db::sqlite().await;
    let vhost = TestVhost::with_prefix("ef-cqrs-topo");
    let consumer = start(&vhost, &store, &Arc::default(), options()).await;
    let raw = vhost.raw().await;
    // A plain (django-cqrs) re-declaration of both queues is accepted: same arguments.
    for queue in [QUEUE, DLQ] {
        raw.channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions::durable(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_bindings",
            "-p",
            &vhost.name,
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut bindings: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("cqrs\t"))
        .collect();
    bindings.sort();
    assert_eq!(
        bindings,
        [
            "cqrs\tdead_letter_replica\tcqrs.dead_letter_replica.item",
            "cqrs\treplica\tcqrs.replica.item",
            "cqrs\treplica\titem",
        ]
    );
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            &vhost.name,
            "name",
            "durable",
            "exclusive",
            "arguments",
        ])
        .output()
        .unwrap();
    let mut queues: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("name\t"))
        .map(str::to_owned)
        .collect();
    queues.sort();
    assert_eq!(
        queues,
        [
            "dead_letter_replica\ttrue\tfalse\t[]",
            "replica\ttrue\tfalse\t[]"
        ]
    );
    consumer.shutdown().await.unwrap();
}
