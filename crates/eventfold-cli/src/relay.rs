//! `eventfold relay`: runs the outbox relay (the notification log to RabbitMQ) as a
//! process; `eventfold relay status | parked | republish`: what it did, from the store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use eventfold_amqp::{AmqpConfig, ConfirmedPublisher, PublisherOptions};
use eventfold_relay::{NamekoChanges, NamekoDomainEvents, Relay, RelayStatus};

use crate::StoreArgs;

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Options of `eventfold relay`.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Without a subcommand, runs the relay until SIGTERM or Ctrl-C: it follows the \
notification log of the configured store (EVENTFOLD_STORE, EVENTFOLD_SQLITE_PATH, ...) and \
publishes it to RabbitMQ, recording its position only over what the broker confirmed \
(at-least-once, in log order; message id <name>:<notification id>). On SIGTERM or Ctrl-C \
the batch in flight gets its confirms and its position, then it exits 0. The broker must be \
reachable when it starts; later outages are waited out.

Examples:
  eventfold relay --nameko-service orders
  eventfold relay --domain-events worlds --aggregate World
  eventfold relay status --json"
)]
pub struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Print the relay's position, the log's head, the lag (records, seconds), the number
    /// of parked messages and the last error, one item per line (read from the store; the
    /// relay need not run).
    Status(StatusArgs),
    /// List the parked messages (unroutable or not encodable) that were not re-published:
    /// notification id, exchange, routing key, reason.
    Parked(NameArgs),
    /// Publish the parked messages again (with their original message ids) and print the
    /// counts: re-published, still parked, failed.
    Republish(RepublishArgs),
}

/// The relay's name.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The relay's name (its position in the store, its lock, its message ids).
    #[arg(long, default_value = "relay")]
    name: String,
}

/// Options of `eventfold relay status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    name: NameArgs,
    /// Print one JSON object instead.
    #[arg(long)]
    json: bool,
}

/// The broker to publish to.
#[derive(Debug, clap::Args)]
pub struct AmqpArgs {
    /// The broker, amqp://user:password@host:port/vhost (the password is never printed).
    #[arg(long, env = "EVENTFOLD_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    pub(crate) amqp_url: String,
}

/// Options of `eventfold relay republish`.
#[derive(Debug, clap::Args)]
pub struct RepublishArgs {
    #[command(flatten)]
    name: NameArgs,
    #[command(flatten)]
    amqp: AmqpArgs,
}

/// Options of running the relay.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    name: NameArgs,
    #[command(flatten)]
    amqp: AmqpArgs,
    /// Publish the model change records (eventfold-changes) of this service only, as
    /// nameko events on the exchange NAME.events (repeatable). Default: every change record.
    #[arg(long = "nameko-service", value_name = "NAME")]
    nameko_services: Vec<String>,
    /// Also publish domain events, as nameko events of SERVICE (exchange
    /// SERVICE.events, routing key = the topic). Needs --aggregate.
    #[arg(long, value_name = "SERVICE", requires = "aggregates")]
    domain_events: Option<String>,
    /// With --domain-events: the aggregate types whose events are published, e.g. World
    /// (repeatable).
    #[arg(long = "aggregate", value_name = "TYPE", requires = "domain_events")]
    aggregates: Vec<String>,
    /// A replica queue this master serves, with the CQRS_IDs it replicates, e.g.
    /// `replica=item,book` (repeatable): the relay declares its queues with django-cqrs's
    /// topology before publishing, so a replica that starts later loses nothing. django-cqrs
    /// master messages (eventfold-cqrs) are always published; without this flag, one that
    /// no queue takes is held until a replica binds.
    #[arg(long = "cqrs-replica", value_name = "QUEUE=ID,...", value_parser = parse_cqrs_replica)]
    cqrs_replicas: Vec<(String, Vec<String>)>,
    /// The exchange the --cqrs-replica queues are bound to (the masters' CQRS['exchange']).
    #[arg(long, default_value = eventfold_cqrs::wire::DEFAULT_EXCHANGE)]
    cqrs_exchange: String,
    /// Notifications read (and published) per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Messages in flight without a confirm, at most.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

/// `QUEUE=ID[,ID...]` of `--cqrs-replica`.
fn parse_cqrs_replica(text: &str) -> Result<(String, Vec<String>), String> {
    let (queue, ids) = text
        .split_once('=')
        .ok_or_else(|| format!("expected QUEUE=ID[,ID...], got {text:?}"))?;
    let ids: Vec<String> = ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    if queue.trim().is_empty() || ids.is_empty() {
        return Err(format!("expected QUEUE=ID[,ID...], got {text:?}"));
    }
    Ok((queue.trim().to_owned(), ids))
}

/// Runs `eventfold relay ...`.
pub async fn run(store: &StoreArgs, args: &RelayArgs) -> anyhow::Result<()> {
    match &args.command {
        None => run_relay(store, &args.run).await,
        Some(RelayCommand::Status(a)) => status(store, a).await,
        Some(RelayCommand::Parked(a)) => parked(store, a).await,
        Some(RelayCommand::Republish(a)) => republish(store, a).await,
    }
}

/// The broker's configuration, and a first connection to it: a wrong URL, password or
/// port is an error at once rather than a relay that waits forever.
pub(crate) async fn connect_check(url: &str, connection_name: &str) -> anyhow::Result<AmqpConfig> {
    let amqp = AmqpConfig::from_url(url)?.with_connection_name(connection_name);
    let probe = ConfirmedPublisher::connect(
        amqp.clone(),
        PublisherOptions {
            role: "relay-check".to_owned(),
            ..PublisherOptions::default()
        },
    )
    .await
    .with_context(|| format!("cannot connect to the broker at {}", amqp.redacted_url()))?;
    let _ = probe.close().await;
    Ok(amqp)
}

async fn open(store: &StoreArgs) -> anyhow::Result<Arc<dyn eventfold::Store>> {
    Ok(store.config()?.open_store().await?)
}

/// The store, for the commands that only read what a relay did: a SQLite file that does
/// not exist is an error, not a new empty file (as for `eventfold log`).
async fn open_existing(store: &StoreArgs, what: &str) -> anyhow::Result<Arc<dyn eventfold::Store>> {
    let config = store.config()?;
    if let eventfold::StoreConfig::Sqlite(sqlite) = config.store_config() {
        if !sqlite.path.exists() {
            anyhow::bail!(
                "no SQLite database at {} (EVENTFOLD_SQLITE_PATH or --sqlite-path); \
                 `eventfold relay {what}` creates nothing",
                sqlite.path.display()
            );
        }
    }
    Ok(config.open_store().await?)
}

async fn run_relay(store: &StoreArgs, args: &RunArgs) -> anyhow::Result<()> {
    let name = &args.name.name;
    // Installed first: a SIGTERM from now on is a graceful stop, never the default death.
    let signals = Signals::new()?;
    let log = open(store).await?;
    let mut changes = NamekoChanges::new();
    if !args.nameko_services.is_empty() {
        changes = changes.services(args.nameko_services.iter().cloned());
    }
    let amqp = AmqpConfig::from_url(&args.amqp.amqp_url)?
        .with_connection_name(format!("eventfold-relay-{name}"));
    let endpoint = amqp.redacted_url();
    let mut cqrs = eventfold_cqrs::master::CqrsRoute::new().exchange(&args.cqrs_exchange);
    for (queue, ids) in &args.cqrs_replicas {
        cqrs = cqrs.replica_queue(queue, ids);
    }
    let mut builder = Relay::with_config(log.clone(), amqp, name.clone())?
        .route(changes)
        .route(cqrs)
        .batch_size(args.batch_size)
        .window(args.window);
    if let Some(service) = &args.domain_events {
        let mut route = NamekoDomainEvents::new(service.clone()).decoder(domain_decoder(store)?);
        for aggregate in &args.aggregates {
            route = route.aggregate(aggregate.clone());
        }
        builder = builder.route(route);
    }
    let relay = builder.build();
    // The relay's own connection, opened now: a wrong URL, password or port is an error at
    // once, and the relay stays one connection.
    relay
        .connect()
        .await
        .with_context(|| format!("cannot connect to the broker at {endpoint}"))?;
    outln!("relay {name}: connected to {endpoint}")?;

    let shutdown = async {
        let signal = signals.recv().await;
        tracing::info!(relay = %name, "{signal}: finishing the batch in flight");
        let _ = outln!("relay {name}: {signal}, finishing the batch in flight");
    };
    let roles = async {
        let (mut leader, mut standby) = (false, false);
        loop {
            let m = relay.metrics();
            if m.leader != leader {
                leader = m.leader;
                if leader {
                    let _ = outln!("relay {name}: leader, publishing to {endpoint}");
                }
            }
            if m.standby != standby {
                standby = m.standby;
                if standby {
                    let _ = outln!(
                        "relay {name}: standby, another relay holds the lock \
                         eventfold.relay.lock.{name}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let outcome = tokio::select! {
        outcome = relay.run(shutdown) => outcome,
        () = roles => unreachable!("the role watch never ends"),
    };
    outcome?;
    let m = relay.metrics();
    let position = log.tracking_position(name).await?.unwrap_or(0);
    outln!(
        "relay {name}: stopped at position {position} ({} published, {} confirmed, {} parked)",
        m.published,
        m.confirmed,
        m.parked
    )?;
    Ok(())
}

/// Domain events as JSON, decoded with the configured mapper (EVENTFOLD_CIPHER_KEY,
/// EVENTFOLD_COMPRESSOR), or with zlib added (what `eventfold demo` writes), then shaped
/// as the relay's plain-JSON decoder does (schema envelope and enum variant unwrapped).
fn domain_decoder(
    store: &StoreArgs,
) -> anyhow::Result<
    impl Fn(&eventfold::Notification) -> Result<serde_json::Value, eventfold_relay::EncodeError>
        + Send
        + Sync
        + 'static,
> {
    let payloads = eventfold_inspect::PayloadDecoder::from_config(&store.config()?)?;
    Ok(move |n: &eventfold::Notification| {
        let json = payloads
            .decode(&n.event)
            .map_err(|e| eventfold_relay::EncodeError(format!("cannot decode the event: {e}")))?;
        let mut plain = n.clone();
        plain.event.state = serde_json::to_vec(&json).expect("JSON");
        eventfold_relay::decode_plain_json(&plain)
    })
}

/// Ctrl-C and (unix) SIGTERM, listened to from creation on.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("cannot listen to SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot listen to SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves on the first of them, saying which.
    pub(crate) async fn recv(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "interrupted",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

fn status_json(name: &str, s: &RelayStatus) -> serde_json::Value {
    serde_json::json!({
        "relay": name,
        "position": s.position,
        "head": s.head,
        "lag_records": s.lag_records,
        "lag_seconds": s.lag_seconds,
        "parked": s.parked,
        "last_error": s.last_error.as_ref().map(|e| serde_json::json!({
            "at": e.at.to_string(),
            "reason": e.reason,
            "ongoing": e.ongoing,
        })),
    })
}

async fn status(store: &StoreArgs, args: &StatusArgs) -> anyhow::Result<()> {
    let name = &args.name.name;
    let log = open_existing(store, "status").await?;
    let s = Relay::status(&*log, name).await?;
    if args.json {
        outln!("{}", status_json(name, &s))?;
        return Ok(());
    }
    outln!("relay:       {name}")?;
    outln!("position:    {}", s.position)?;
    outln!("head:        {}", s.head)?;
    outln!("lag:         {} records", s.lag_records)?;
    outln!("lag seconds: {:.3}", s.lag_seconds)?;
    outln!("parked:      {}", s.parked)?;
    match &s.last_error {
        None => outln!("last error:  none")?,
        Some(e) => outln!(
            "last error:  {} at {} ({})",
            e.reason,
            e.at,
            if e.ongoing { "ongoing" } else { "recovered" }
        )?,
    }
    Ok(())
}

async fn parked(store: &StoreArgs, args: &NameArgs) -> anyhow::Result<()> {
    let log = open_existing(store, "parked").await?;
    let parked = eventfold_relay::parked_messages(&*log, &args.name).await?;
    if parked.is_empty() {
        eprintln!("0 parked messages (relay {})", args.name);
        return Ok(());
    }
    for (_, p) in &parked {
        outln!(
            "{}  exchange={}  routing_key={}  reason={}",
            p.notification_id,
            if p.exchange.is_empty() {
                "-"
            } else {
                &p.exchange
            },
            p.routing_key,
            p.reason
        )?;
    }
    eprintln!("{} parked messages (relay {})", parked.len(), args.name);
    Ok(())
}

async fn republish(store: &StoreArgs, args: &RepublishArgs) -> anyhow::Result<()> {
    let name = &args.name.name;
    let amqp = connect_check(&args.amqp.amqp_url, &format!("eventfold-relay-{name}")).await?;
    let log = open_existing(store, "republish").await?;
    let report = Relay::republish_parked(&*log, amqp, name).await?;
    outln!("republished:  {}", report.republished)?;
    outln!("still parked: {}", report.still_parked)?;
    outln!("failed:       {}", report.failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_cqrs_replica;

    #[test]
    fn cqrs_replica_names_a_queue_and_its_ids() {
        assert_eq!(
            parse_cqrs_replica("replica=item, book").unwrap(),
            (
                "replica".to_owned(),
                vec!["item".to_owned(), "book".to_owned()]
            )
        );
        for bad in ["replica", "=item", "replica=", "replica= , "] {
            let err = parse_cqrs_replica(bad).unwrap_err();
            assert!(err.contains("QUEUE=ID"), "{bad}: {err}");
        }
    }
}
