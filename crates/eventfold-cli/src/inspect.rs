//! `eventfold inspect`: the web inspector (eventfold-inspect) over the configured store and
//! broker.

use std::net::SocketAddr;

use anyhow::Context as _;
use eventfold_inspect::Inspector;

use crate::relay::{connect_check, AmqpArgs, Signals};
use crate::StoreArgs;

/// Options of `eventfold inspect`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Serves the pages (Streams, Log with a live tail, Followers, Relay, Dead \
letters) and their JSON under /api, and /metrics in Prometheus text format, until SIGTERM or \
Ctrl-C. Read-only unless --allow-actions. The store's and the broker's passwords never appear \
in a page or a response.

Examples:
  eventfold inspect                                   http://127.0.0.1:7070, the configured store
  eventfold inspect --dead-letters replica --allow-actions
  EVENTFOLD_INSPECT_TOKEN=s3cret eventfold inspect --listen 0.0.0.0:7070
  curl -H 'Authorization: Bearer s3cret' http://host:7070/api/log?limit=10"
)]
pub struct InspectArgs {
    /// The address to serve on (a non-loopback address shows the system to the network:
    /// use --token).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[command(flatten)]
    amqp: AmqpArgs,
    /// A replica or consumer queue whose dead letters (dead_letter_QUEUE) are shown, with
    /// retry and purge under --allow-actions (repeatable; django-cqrs replica queues by
    /// name). Needs the broker (--amqp-url).
    #[arg(long = "dead-letters", value_name = "QUEUE")]
    dead_letters: Vec<String>,
    /// A relay whose status and parked messages are shown (repeatable). Default: relay.
    #[arg(long = "relay", value_name = "NAME")]
    relays: Vec<String>,
    /// Allow the actions (dead-letter retry and purge, POST only). Without it every action
    /// is refused.
    #[arg(long)]
    allow_actions: bool,
    /// Require this bearer token on every route (Authorization: Bearer TOKEN; a browser
    /// opens http://ADDR/?token=TOKEN once and keeps it in a cookie).
    #[arg(long, env = "EVENTFOLD_INSPECT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs `eventfold inspect`.
pub async fn run(store: &StoreArgs, args: &InspectArgs) -> anyhow::Result<()> {
    let signals = Signals::new()?;
    let config = store.config()?;
    let log = crate::log::open_existing(&config, "inspect").await?;
    let backend = log.backend();
    let mut inspector = Inspector::builder(log)
        .config(&config)?
        .aggregate::<worlds_example::World>()
        .allow_actions(args.allow_actions);
    if let Some(token) = args.token.as_deref().filter(|t| !t.trim().is_empty()) {
        inspector = inspector.token(token);
    }
    for name in &args.relays {
        inspector = inspector.relay(name);
    }
    if !args.dead_letters.is_empty() {
        // A wrong URL or password is an error now, not a page that fails later.
        let amqp = connect_check(&args.amqp.amqp_url, "eventfold-inspect").await?;
        for queue in &args.dead_letters {
            inspector = inspector.dead_letters(queue);
        }
        inspector = inspector.amqp(amqp);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() && args.token.is_none() {
        eprintln!(
            "warning: serving on {address} without --token: anyone who reaches it reads the \
             store"
        );
    }
    outln!(
        "inspecting the {backend} store at http://{address}/ ({})",
        if args.allow_actions {
            "actions allowed"
        } else {
            "read-only"
        }
    )?;
    let shutdown = async move {
        let _ = signals.recv().await;
    };
    inspector.build().serve(listener, shutdown).await?;
    Ok(())
}
