//! The orders service: HTTP commands on `Order`s with their django-cqrs master rows, the
//! `order-totals` projection and the relay to RabbitMQ, in one process, until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use eventfold::Follower;
use eventfold_amqp::AmqpConfig;
use eventfold_inspect::Inspector;
use eventfold_relay::Relay;
use orders_example::order::Order;
use orders_example::row::OrderRow;
use orders_example::service::Orders;
use orders_example::totals::OrderTotals;

/// The orders service: HTTP commands, the order-totals projection and the relay.
///
/// The store comes from the environment as for `eventfold` (EVENTFOLD_STORE=sqlite|postgres,
/// EVENTFOLD_DATABASE_URL, EVENTFOLD_COMPRESSOR, ...).
#[derive(Debug, Parser)]
#[command(name = "orders", version)]
struct Args {
    /// Where to serve HTTP (port 0: any free port, printed at start).
    #[arg(long, env = "ORDERS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The SQLite file of the service (EVENTFOLD_STORE=sqlite, the default).
    #[arg(long, env = "EVENTFOLD_SQLITE_PATH", default_value = "orders.sqlite3")]
    sqlite_path: String,
    /// The PostgreSQL schema of the service (EVENTFOLD_STORE=postgres).
    #[arg(long, env = "EVENTFOLD_POSTGRES_SCHEMA", default_value = "orders")]
    schema: String,
    /// The broker the relay publishes to (the password is never printed).
    #[arg(long, env = "EVENTFOLD_AMQP_URL", default_value = orders_example::DEFAULT_AMQP_URL,
          hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// The replica's queue, which the relay declares before it publishes.
    #[arg(long, env = "ORDERS_REPLICA_QUEUE", default_value = orders_example::DEFAULT_REPLICA_QUEUE)]
    replica_queue: String,
    /// The relay's name: its tracked position, its lock queue, its message ids.
    #[arg(long, env = "ORDERS_RELAY_NAME", default_value = "orders")]
    relay_name: String,
    /// Also serve the eventfold inspector here, read-only, with the relay's live
    /// counters (confirms, returns, nacks) that an `eventfold inspect` process cannot see.
    #[arg(long, env = "ORDERS_INSPECT", value_name = "ADDR")]
    inspect: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    orders_example::exit_code("orders", run().await)
}

async fn run() -> anyhow::Result<()> {
    let signalled = orders_example::termination()?;
    orders_example::init_logging()?;
    let args = Args::parse();

    let config =
        orders_example::store_config(&args.sqlite_path, &args.schema)?.aggregate::<Order>();
    println!("orders: store {}", config.store_config());
    let app = Arc::new(config.application().await?);
    let mut tx = app.begin().await?;
    OrderRow::create_table(&mut tx).await?;
    tx.commit().await?;
    let master = OrderRow::master();

    let amqp = AmqpConfig::from_url(&args.amqp_url)?
        .with_connection_name(format!("orders-relay-{}", args.relay_name));
    let endpoint = amqp.redacted_url();
    let relay = Relay::with_config(app.store().clone(), amqp.clone(), args.relay_name.clone())?
        .route(
            master
                .route()
                .replica_queue(&args.replica_queue, master.cqrs_ids()),
        )
        .build();
    let relay = Arc::new(relay);
    // A wrong URL or password is an error at start; later outages are waited out.
    relay
        .connect()
        .await
        .with_context(|| format!("cannot connect to the broker at {endpoint}"))?;
    println!(
        "orders: relay {} publishing to {endpoint} (replica queue {} declared before the first message)",
        args.relay_name, args.replica_queue
    );

    let stop = orders_example::Stop::new();
    let mut totals = Follower::view(&app, OrderTotals::NAME, OrderTotals).build();
    let router = Orders::new(app.clone(), master).router();
    let server = orders_example::serve("orders", args.listen, router, stop.stopped());
    let inspector = match args.inspect {
        Some(addr) => {
            let counters = Arc::clone(&relay);
            let inspector = Inspector::builder(app.store().clone())
                .config(&config)?
                .aggregate::<Order>()
                .relay(&args.relay_name)
                .relay_metrics(&args.relay_name, move || counters.metrics())
                .amqp(amqp)
                .dead_letters(&args.replica_queue)
                .build();
            Some(orders_example::serve(
                "orders inspector",
                addr,
                inspector.router(),
                stop.stopped(),
            ))
        }
        None => None,
    };
    let inspector = async {
        match inspector {
            Some(serving) => serving.await,
            // A part that ends stops the others: without an inspector, wait with them.
            None => {
                stop.stopped().await;
                Ok(())
            }
        }
    };
    let ((), server, inspector, relay_run, totals_run) = tokio::join!(
        stop.on("orders", signalled),
        stop.part("the HTTP server failed", server),
        stop.part("the inspector failed", inspector),
        stop.part("the relay stopped", async {
            Ok(relay.run(stop.stopped()).await?)
        }),
        stop.part("the order-totals projection stopped", async {
            Ok(totals.run(stop.stopped()).await?)
        }),
    );
    server?;
    inspector?;
    relay_run?;
    totals_run?;
    let m = relay.metrics();
    println!(
        "orders: stopped ({} published, {} confirmed by the broker)",
        m.published, m.confirmed
    );
    Ok(())
}
