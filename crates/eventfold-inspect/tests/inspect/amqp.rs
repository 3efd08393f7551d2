//! With a broker: dead letters shown with their reasons, retried through the inspector
//! and applied by a running replica consumer; credentials in no response.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, Outcome, PublisherOptions};
use eventfold_cqrs::replica::{ReplicaConsumer, ReplicaModels, ReplicaOptions};
use eventfold_cqrs::table::{Role, TableReplica, TablesConfig};
use eventfold_cqrs::wire::{CqrsMessage, SignalType};
use eventfold_inspect::{Inspector, ACTION_HEADER};
use eventfold_testkit::TestVhost;
use serde_json::json;

use crate::support::{get, parse_metrics, request, sample, seed, Db};

const QUEUE: &str = "replica";

async fn create_items(db: &Db) {
    let mut tx = db.store.begin().await.unwrap();
    tx.execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         cqrs_revision BIGINT NOT NULL, cqrs_updated TEXT NOT NULL)",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn item_names(db: &Db) -> Vec<String> {
    let mut tx = db.store.begin().await.unwrap();
    let rows = tx
        .query("SELECT name FROM items ORDER BY id", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

async fn publish(amqp: &AmqpConfig, message: &CqrsMessage) {
    let publisher = ConfirmedPublisher::connect(amqp.clone(), PublisherOptions::default())
        .await
        .unwrap();
    let outcomes = publisher
        .publish_all(&[message.to_message("cqrs", &message.cqrs_id)])
        .await;
    assert!(
        matches!(outcomes.as_slice(), [Ok(Outcome::Confirmed)]),
        "{outcomes:?}"
    );
    publisher.close().await.unwrap();
}

/// A replica of `item` rows on SQLite, its consumer running on a vhost of its own, and
/// one dead letter in `dead_letter_replica`: a SAVE of "anvil" that expired on the way.
pub(crate) struct Replica {
    pub vhost: TestVhost,
    pub amqp: AmqpConfig,
    pub db: Db,
    pub consumer: Arc<ReplicaConsumer>,
    pub raw: eventfold_testkit::Raw,
    pub message: CqrsMessage,
}

impl Replica {
    pub async fn with_a_dead_letter() -> Replica {
        let vhost = TestVhost::with_prefix("ef-inspect");
        let amqp = AmqpConfig::from_url(&vhost.url()).unwrap();
        let db = Db::sqlite().await;
        create_items(&db).await;
        let tables = TablesConfig::from_toml("[replica.item]\ntable = \"items\"\n").unwrap();
        let table = eventfold_cqrs::tooling::open_table(&*db.store, &tables, Role::Replica, "item")
            .await
            .unwrap();
        let consumer = Arc::new(
            ReplicaConsumer::start(
                amqp.clone(),
                db.store.clone(),
                ReplicaModels::new().with(TableReplica::new(table)),
                ReplicaOptions::new(QUEUE),
            )
            .await
            .unwrap(),
        );
        // A message that expired on the way: the consumer dead-letters it with the reason.
        let data = json!({"id": 1, "name": "anvil", "cqrs_revision": 0, "cqrs_updated": "2026-12-01 10:00:00+00:00"});
        let mut message = CqrsMessage::new(
            SignalType::Save,
            "item",
            json!(1),
            data.as_object().unwrap().clone(),
        );
        message.expires = Some(chrono::Utc::now() - chrono::Duration::hours(1));
        publish(&amqp, &message).await;
        let raw = vhost.raw().await;
        raw.wait_count("dead_letter_replica", 1, Duration::from_secs(30))
            .await;
        Replica {
            vhost,
            amqp,
            db,
            consumer,
            raw,
            message,
        }
    }

    /// The inspector of this replica, with actions allowed and the consumer's counters.
    pub fn inspector(&self) -> Inspector {
        let stats = self.consumer.clone();
        Inspector::builder(self.db.store.clone())
            .amqp(self.amqp.clone())
            .dead_letters(QUEUE)
            .replica_stats(QUEUE, move || stats.stats())
            .allow_actions(true)
            .build()
    }

    /// The names of the replica's rows.
    pub async fn items(&self) -> Vec<String> {
        item_names(&self.db).await
    }

    /// Waits until the replica has the `anvil` row.
    pub async fn wait_applied(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.items().await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the retried message was never applied"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(self.items().await, ["anvil"]);
    }

    /// Stops the consumer (every inspector of it dropped first).
    pub async fn stop(self) {
        self.raw.close().await;
        Arc::try_unwrap(self.consumer)
            .expect("the inspectors are dropped")
            .shutdown()
            .await
            .unwrap();
        drop(self.vhost);
    }
}

#[tokio::test]
async fn a_dead_letter_retried_through_the_inspector_is_applied_by_the_replica() {
    let replica = Replica::with_a_dead_letter().await;
    let router = replica.inspector().router();
    let page = get(&router, "/api/dead-letters").await.json();
    let queue = &page["queues"][0];
    assert_eq!(queue["queue"], QUEUE);
    assert_eq!(queue["dead_letter_queue"], "dead_letter_replica");
    assert_eq!(queue["total"], 1);
    assert_eq!(queue["letters"][0]["cqrs_id"], "item");
    assert!(
        queue["letters"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{queue}"
    );
    assert_eq!(
        queue["letters"][0]["body"]["instance_data"]["name"],
        "anvil"
    );
    assert_eq!(queue["stats"]["dead_letters"], 1);
    assert_eq!(
        replica.raw.count("dead_letter_replica").await,
        1,
        "looking leaves it in place"
    );
    let html = get(&router, "/dead-letters").await;
    assert!(
        html.body
            .contains("data-action=\"/api/dead-letters/replica/retry\""),
        "{}",
        html.body
    );
    assert!(html.body.contains("expired at"), "{}", html.body);
    let metrics = parse_metrics(&get(&router, "/metrics").await.body);
    assert_eq!(
        sample(&metrics, "eventfold_dead_letters{queue=\"replica\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "eventfold_replica_dead_letters_total{queue=\"replica\"}"
        ),
        1.0
    );
    assert!(replica.items().await.is_empty());

    // Retry (what the page's button posts): re-stamped, back in the replica queue, applied.
    let retry = request(
        &router,
        Request::post("/api/dead-letters/replica/retry")
            .header(ACTION_HEADER, "1")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(
        (retry["total"].as_u64(), retry["handled"].as_u64()),
        (Some(1), Some(1))
    );
    replica.wait_applied().await;
    let metrics = parse_metrics(&get(&router, "/metrics").await.body);
    assert_eq!(
        sample(&metrics, "eventfold_dead_letters{queue=\"replica\"}"),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "eventfold_replica_applied_total{queue=\"replica\"}"
        ),
        1.0
    );
    let page = get(&router, "/api/dead-letters").await.json();
    assert_eq!(page["queues"][0]["total"], 0);

    // Purge empties the dead-letter queue.
    let mut message = replica.message.clone();
    message.expires = Some(chrono::Utc::now() - chrono::Duration::hours(1));
    message.instance_pk = json!(2);
    publish(&replica.amqp, &message).await;
    replica
        .raw
        .wait_count("dead_letter_replica", 1, Duration::from_secs(30))
        .await;
    let purge = request(
        &router,
        Request::post("/api/dead-letters/replica/purge")
            .header(ACTION_HEADER, "1")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(purge["handled"], 1);
    assert_eq!(replica.raw.count("dead_letter_replica").await, 0);
    drop(router);
    replica.stop().await;
}

/// A broker user of its own with a password, on `vhost`; deleted on drop.
struct BrokerUser {
    name: String,
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl BrokerUser {
    fn new(vhost: &TestVhost, password: &str) -> Self {
        let name = format!(
            "ef-inspect-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_user", &name, password]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost.name,
            &name,
            ".*",
            ".*",
            ".*",
        ]);
        BrokerUser { name }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .output();
    }
}

#[tokio::test]
async fn credentials_appear_in_no_response() {
    const DB_PASSWORD: &str = "pg-pass-7f3a9c";
    const BROKER_PASSWORD: &str = "mq-pass-b81d2e";
    let vhost = TestVhost::with_prefix("ef-inspect");
    let user = BrokerUser::new(&vhost, BROKER_PASSWORD);
    // The local server trusts every login: the password is in the URL, and not needed.
    let url = crate::support::database_url().replacen(
        "postgres@",
        &format!("postgres:{DB_PASSWORD}@"),
        1,
    );
    assert!(
        url.contains(DB_PASSWORD),
        "EVENTFOLD_TEST_DATABASE_URL has no postgres@: {url}"
    );
    let db = Db::postgres_at(&url).await;
    let worlds = seed(&db).await;
    let broker_url = format!(
        "amqp://{}:{BROKER_PASSWORD}@127.0.0.1:5672/{}",
        user.name, vhost.name
    );
    // A broker that cannot be reached, with a password: its errors are shown.
    let unreachable = format!(
        "amqp://{}:{BROKER_PASSWORD}@127.0.0.1:1/{}",
        user.name, vhost.name
    );
    for amqp_url in [broker_url, unreachable] {
        // The passwords are known from the configurations: nothing is said about them.
        let router = Inspector::builder(db.store.clone())
            .config(&db.writer_config())
            .unwrap()
            .amqp(AmqpConfig::from_url(&amqp_url).unwrap())
            .dead_letters(QUEUE)
            .allow_actions(true)
            .build()
            .router();
        let mut statuses = Vec::new();
        for uri in [
            "/log".to_owned(),
            "/api/log".to_owned(),
            format!("/streams/{}", worlds[0]),
            format!("/api/streams/{}", worlds[0]),
            "/streams?type=World".to_owned(),
            "/followers".to_owned(),
            "/api/followers".to_owned(),
            "/relay".to_owned(),
            "/api/relay".to_owned(),
            "/dead-letters".to_owned(),
            "/api/dead-letters".to_owned(),
            "/metrics".to_owned(),
        ] {
            let reply = get(&router, &uri).await;
            for secret in [DB_PASSWORD, BROKER_PASSWORD, crate::support::KEY] {
                assert!(!reply.body.contains(secret), "{uri}: {}", reply.body);
                for value in reply.headers.values() {
                    assert!(
                        !value.to_str().unwrap_or_default().contains(secret),
                        "{uri}"
                    );
                }
            }
            statuses.push((uri, reply.status));
        }
        let retry = request(
            &router,
            Request::post("/api/dead-letters/replica/retry")
                .header(ACTION_HEADER, "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(!retry.body.contains(BROKER_PASSWORD), "{}", retry.body);
        let broker_pages_failed = statuses
            .iter()
            .filter(|(uri, _)| uri.contains("dead-letters") || uri == "/metrics")
            .all(|(_, status)| *status == StatusCode::BAD_GATEWAY);
        if amqp_url.contains(":1/") {
            assert!(broker_pages_failed, "{statuses:?}");
            assert_eq!(retry.status, StatusCode::BAD_GATEWAY);
        } else {
            assert!(
                statuses.iter().all(|(_, s)| *s == StatusCode::OK),
                "{statuses:?}"
            );
            assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
        }
    }
    drop(user);
}
