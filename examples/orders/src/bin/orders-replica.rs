//! The orders replica: consumes the orders service's django-cqrs messages into its own
//! database and serves what it holds, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use eventfold_amqp::AmqpConfig;
use eventfold_cqrs::replica::{ReplicaConsumer, ReplicaModels, ReplicaOptions, Typed};
use orders_example::replica::ReplicaOrders;

/// The orders replica: a django-cqrs replica of the orders, in its own database.
///
/// The store kind and server come from the environment as for `eventfold`
/// (EVENTFOLD_STORE=sqlite|postgres, EVENTFOLD_DATABASE_URL); the file or schema is the
/// replica's own.
#[derive(Debug, Parser)]
#[command(name = "orders-replica", version)]
struct Args {
    /// Where to serve HTTP (port 0: any free port, printed at start).
    #[arg(long, env = "ORDERS_REPLICA_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The replica's SQLite file (EVENTFOLD_STORE=sqlite, the default).
    #[arg(
        long,
        env = "ORDERS_REPLICA_SQLITE_PATH",
        default_value = "orders-replica.sqlite3"
    )]
    sqlite_path: String,
    /// The replica's PostgreSQL schema (EVENTFOLD_STORE=postgres).
    #[arg(long, env = "ORDERS_REPLICA_SCHEMA", default_value = "orders_replica")]
    schema: String,
    /// The broker (the password is never printed).
    #[arg(long, env = "EVENTFOLD_AMQP_URL", default_value = orders_example::DEFAULT_AMQP_URL,
          hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// The queue to consume; dead letters go to `dead_letter_<queue>`.
    #[arg(long, env = "ORDERS_REPLICA_QUEUE", default_value = orders_example::DEFAULT_REPLICA_QUEUE)]
    queue: String,
    /// Worker tasks (the messages of one order always go to the same one, in order).
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    orders_example::exit_code("orders-replica", run().await)
}

async fn run() -> anyhow::Result<()> {
    let signalled = orders_example::termination()?;
    orders_example::init_logging()?;
    let args = Args::parse();

    let config = orders_example::store_config(&args.sqlite_path, &args.schema)?;
    println!("orders-replica: store {}", config.store_config());
    let store = config.open_store().await?;
    ReplicaOrders::create_table(&*store).await?;

    let amqp = AmqpConfig::from_url(&args.amqp_url)?.with_connection_name("orders-replica");
    let endpoint = amqp.redacted_url();
    let models = ReplicaModels::new().with(Typed(ReplicaOrders));
    let mut options = ReplicaOptions::new(&args.queue);
    options.workers = args.workers;
    println!("orders-replica: consuming {} at {endpoint}", args.queue);

    let stop = orders_example::Stop::new();
    let router = ReplicaOrders::router(Arc::clone(&store));
    let server = orders_example::serve("orders-replica", args.listen, router, stop.stopped());
    let consumer = async {
        let stats = ReplicaConsumer::run_until(
            amqp,
            store.clone(),
            models,
            options,
            stop.stopped(),
            Duration::from_secs(5),
            |_| {},
        );
        Ok(stats.await?)
    };
    let ((), server, stats) = tokio::join!(
        stop.on("orders-replica", signalled),
        stop.part("the HTTP server failed", server),
        stop.part("the replica consumer stopped", consumer),
    );
    let stats = stats?;
    server?;
    println!(
        "orders-replica: stopped ({} applied, {} duplicates, {} stale, {} dead letters)",
        stats.applied, stats.duplicates, stats.stale, stats.dead_letters
    );
    Ok(())
}
