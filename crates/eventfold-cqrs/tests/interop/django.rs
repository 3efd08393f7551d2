//! The Django projects of [`eventfold_testkit::django`], and the topology eventfold's
//! replica declares for their queue.

use eventfold_cqrs::wire::{dead_letter_queue, queue_routing_key, routing_key, DEFAULT_EXCHANGE};
pub use eventfold_testkit::django::{wait_for, DjangoProject, Side, CQRS_ID, QUEUE};
use eventfold_testkit::Raw;

/// What `cqrs_consume` declares for [`QUEUE`] (tests/fixtures/django_cqrs_topology.txt):
/// the durable topic exchange `cqrs`; the queue bound with `item` and
/// `cqrs.<queue>.item`; `dead_letter_<queue>` bound with `cqrs.dead_letter_<queue>.item`.
pub async fn declare_replica_topology(raw: &Raw) {
    raw.topic_bound_queue(QUEUE, DEFAULT_EXCHANGE, &routing_key(CQRS_ID))
        .await;
    raw.bound_queue(QUEUE, DEFAULT_EXCHANGE, &queue_routing_key(QUEUE, CQRS_ID))
        .await;
    let dead = dead_letter_queue(QUEUE);
    raw.bound_queue(&dead, DEFAULT_EXCHANGE, &queue_routing_key(&dead, CQRS_ID))
        .await;
}
