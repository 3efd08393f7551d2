//! `/metrics` in Prometheus text format: from the store and the broker (what any process
//! can read), and from the in-process sources of a service the inspector is embedded in.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::pages::error_response;
use crate::{InspectError, Shared};

/// Metric text under construction: each family's `# HELP` and `# TYPE` once, then its
/// samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// One family with one sample per `(label value, value)`.
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        rows: &[(String, T)],
        value: impl Fn(&T) -> u64,
    ) {
        if rows.is_empty() {
            return;
        }
        self.family(name, kind, help);
        for (key, row) in rows {
            self.sample(name, &[(label, key)], value(row));
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn collect(shared: &Shared) -> Result<String, InspectError> {
    let mut out = Exposition::default();
    let store = &shared.store;
    let head = store.max_notification_id().await?;
    out.family(
        "eventfold_log_head",
        "gauge",
        "The highest notification id readable now.",
    );
    out.sample("eventfold_log_head", &[], head);

    let followers: Vec<_> = store
        .followers()
        .await?
        .into_iter()
        .filter(|t| !eventfold_relay::inbox::is_inbox_follower(&t.follower))
        .map(|t| (t.follower, t.position))
        .collect();
    out.each(
        "eventfold_follower_position",
        "gauge",
        "The last notification id the follower processed.",
        "follower",
        &followers,
        |p| *p,
    );
    out.each(
        "eventfold_follower_lag_records",
        "gauge",
        "Notifications after the follower's position.",
        "follower",
        &followers,
        |p| head.saturating_sub(*p),
    );

    let mut relays = Vec::new();
    for name in &shared.relays {
        relays.push((
            name.clone(),
            eventfold_relay::Relay::status(&**store, name).await?,
        ));
    }
    out.each(
        "eventfold_relay_pending_records",
        "gauge",
        "Records the relay has not published yet.",
        "relay",
        &relays,
        |s| s.lag_records,
    );
    out.family(
        "eventfold_relay_lag_seconds",
        "gauge",
        "Age of the oldest record the relay has not published yet.",
    );
    for (name, s) in &relays {
        out.sample(
            "eventfold_relay_lag_seconds",
            &[("relay", name)],
            s.lag_seconds,
        );
    }
    out.each(
        "eventfold_relay_parked_messages",
        "gauge",
        "Parked messages (returned or not encodable) not re-published.",
        "relay",
        &relays,
        |s| s.parked,
    );

    let relay_metrics: Vec<_> = shared
        .relay_metrics
        .iter()
        .map(|(name, source)| (name.clone(), source()))
        .collect();
    for (name, help, value) in [
        (
            "eventfold_relay_published_total",
            "Messages the relay handed to the broker.",
            (|m: &eventfold_relay::RelayMetrics| m.published) as fn(&_) -> u64,
        ),
        (
            "eventfold_relay_confirmed_total",
            "Messages the broker confirmed.",
            |m| m.confirmed,
        ),
        (
            "eventfold_relay_returned_total",
            "Messages the broker returned as unroutable.",
            |m| m.returned,
        ),
        (
            "eventfold_relay_nacked_total",
            "Messages the broker nacked (published again).",
            |m| m.nacked,
        ),
        (
            "eventfold_relay_reconnects_total",
            "Reconnects after a lost broker connection.",
            |m| m.reconnects,
        ),
    ] {
        out.each(name, "counter", help, "relay", &relay_metrics, value);
    }

    if !shared.dead_letter_queues.is_empty() {
        if let Some(amqp) = &shared.amqp {
            let mut counts = Vec::new();
            for queue in &shared.dead_letter_queues {
                let (total, _) = eventfold_cqrs::tooling::dead_letters_peek(amqp, queue, 0).await?;
                counts.push((queue.clone(), u64::from(total)));
            }
            out.each(
                "eventfold_dead_letters",
                "gauge",
                "Messages in the queue's dead-letter queue.",
                "queue",
                &counts,
                |n| *n,
            );
        }
    }

    let replicas: Vec<_> = shared
        .replica_stats
        .iter()
        .map(|(queue, source)| (queue.clone(), source()))
        .collect();
    for (name, help, value) in [
        (
            "eventfold_replica_applied_total",
            "Replica messages applied and committed.",
            (|s: &eventfold_cqrs::replica::ReplicaStats| s.applied) as fn(&_) -> u64,
        ),
        (
            "eventfold_replica_duplicates_total",
            "Replica SAVEs of the stored revision, skipped.",
            |s| s.duplicates,
        ),
        (
            "eventfold_replica_stale_total",
            "Replica SAVEs older than the stored revision, skipped.",
            |s| s.stale,
        ),
        (
            "eventfold_replica_retries_total",
            "Replica messages re-published for a retry.",
            |s| s.retries,
        ),
        (
            "eventfold_replica_dead_letters_total",
            "Replica messages dead-lettered.",
            |s| s.dead_letters,
        ),
    ] {
        out.each(name, "counter", help, "queue", &replicas, value);
    }

    let consumers: Vec<_> = shared
        .consumer_stats
        .iter()
        .map(|(name, source)| (name.clone(), source()))
        .collect();
    for (name, help, value) in [
        (
            "eventfold_consumer_handled_total",
            "Messages handled and acked.",
            (|s: &eventfold_amqp::ConsumerStats| s.handled) as fn(&_) -> u64,
        ),
        (
            "eventfold_consumer_retries_total",
            "Handler runs that failed and were retried.",
            |s| s.retries,
        ),
        (
            "eventfold_consumer_dead_letters_total",
            "Messages dead-lettered.",
            |s| s.dead_lettered,
        ),
    ] {
        out.each(name, "counter", help, "consumer", &consumers, value);
    }
    Ok(out.text)
}

pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match collect(&shared).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => error_response(&shared, "/metrics", &error),
    }
}
