//! An orders service on eventfold, end to end.
//!
//! - [`order`]: the event-sourced `Order` (place, add a line, pay, cancel).
//! - [`service`]: the axum handlers. Each command saves the order's events **and** its
//!   django-cqrs master row ([`row::OrderRow`], `cqrs_id` `order`, table `orders`) in one
//!   transaction (`Application::begin`, `save_in`, `Master::created` / `updated`).
//! - [`totals`]: a projection (a typed `View`) of orders and totals per status, in the
//!   same store.
//! - The `orders` binary runs the service, the projection and the relay, which publishes
//!   the master's messages to RabbitMQ and declares the replica's queue first (a replica
//!   that starts later loses nothing).
//! - [`replica`] and the `orders-replica` binary: a `ReplicaConsumer` writing the orders
//!   into the replica's own database, and routes that read them.
//!
//! The service's logic runs without a broker: the relay is what publishes.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use eventfold::{Config, Follower};
//! use orders_example::row::OrderRow;
//! use orders_example::service::Orders;
//! use orders_example::totals::OrderTotals;
//!
//! let dir = tempfile::tempdir()?;
//! let app = Arc::new(Config::sqlite(dir.path().join("orders.sqlite3")).application().await?);
//! let mut tx = app.begin().await?;
//! OrderRow::create_table(&mut tx).await?;
//! tx.commit().await?;
//!
//! let orders = Orders::new(app.clone(), OrderRow::master());
//! let placed = orders.place("ada").await?;
//! let filled = orders.command(placed.id, None, |o| o.add_line("tea", 2, 350)).await?;
//! let paid = orders.command(placed.id, None, |o| o.pay(700)).await?;
//! assert_eq!((paid.version, paid.cqrs_revision), (3, Some(2)));
//! assert!(orders.command(placed.id, None, |o| o.pay(700)).await.is_err(), "paid already");
//! assert_eq!(filled.total_cents, 700);
//!
//! Follower::view(&app, OrderTotals::NAME, OrderTotals).build().catch_up().await?;
//! let totals = orders.totals().await?;
//! assert_eq!((totals[0].status.as_str(), totals[0].orders, totals[0].total_cents), ("paid", 1, 700));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod order;
pub mod replica;
pub mod row;
pub mod service;
pub mod totals;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;

/// The broker when `EVENTFOLD_AMQP_URL` is not set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The replica's queue when none is given: the relay declares it, the replica consumes
/// it, and its dead letters go to `dead_letter_orders_replica`.
pub const DEFAULT_REPLICA_QUEUE: &str = "orders_replica";

/// The store configuration of the environment (`EVENTFOLD_STORE`,
/// `EVENTFOLD_DATABASE_URL`, ...), with this process's own SQLite file and PostgreSQL
/// schema, so that the service and its replica never share tables even when they share
/// an environment.
pub fn store_config(sqlite_path: &str, schema: &str) -> eventfold::Result<eventfold::Config> {
    const OWN: [&str; 2] = ["EVENTFOLD_SQLITE_PATH", "EVENTFOLD_POSTGRES_SCHEMA"];
    let vars = std::env::vars()
        .filter(|(name, _)| !OWN.contains(&name.as_str()))
        .chain([
            (OWN[0].to_owned(), sqlite_path.to_owned()),
            (OWN[1].to_owned(), schema.to_owned()),
        ]);
    eventfold::Config::from_vars(vars)
}

/// Resolves on Ctrl-C or SIGTERM, saying which. The handlers are installed when this is
/// called, so a signal from then on is a graceful stop, never the default death.
pub fn termination() -> anyhow::Result<impl Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen to SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen to SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "interrupted",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    })
}

/// The stop signal the parts of a process share (its HTTP server, the relay, a
/// follower, a consumer): the first part to end, or a signal, stops them all.
#[derive(Debug)]
pub struct Stop {
    /// `true` once stopped: a part that starts waiting later still sees it.
    sender: tokio::sync::watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop::new()
    }
}

impl Stop {
    /// Nothing stopped yet.
    pub fn new() -> Self {
        Stop {
            sender: tokio::sync::watch::channel(false).0,
        }
    }

    /// Tells every part to stop.
    pub fn stop(&self) {
        self.sender.send_replace(true);
    }

    /// Resolves once [`Stop::stop`] has been called, before or after this call.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            let _ = receiver.wait_for(|stopped| *stopped).await;
        }
    }

    /// Runs `part`; once it ends, however it ends, stops the others.
    pub async fn part<T>(
        &self,
        what: &'static str,
        part: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let outcome = part.await.context(what);
        self.stop();
        outcome
    }

    /// Waits for `signal` (see [`termination`]), printing `NAME: SIGNAL, stopping`, then
    /// stops every part; returns early if something else stopped them.
    pub async fn on(&self, name: &str, signal: impl Future<Output = &'static str>) {
        tokio::select! {
            signal = signal => println!("{name}: {signal}, stopping"),
            () = self.stopped() => {}
        }
        self.stop();
    }
}

/// Binds `listen` and serves `router` until `shutdown` resolves. Prints
/// `NAME: listening on http://ADDR` once bound (the address the OS gave for port 0).
pub async fn serve(
    name: &str,
    listen: SocketAddr,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("{name}: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server failed")
}

/// The exit of a binary: 0, or 1 after `NAME: error: ...` with its causes on stderr.
pub fn exit_code(name: &str, outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at `EVENTFOLD_LOG` (default `warn,lapin=off`, as the `eventfold`
/// command: the relay reports broker trouble itself, once per outage); a filter that does
/// not parse is an error.
pub fn init_logging() -> anyhow::Result<()> {
    let value = std::env::var("EVENTFOLD_LOG").unwrap_or_default();
    let value = if value.trim().is_empty() {
        "warn,lapin=off"
    } else {
        value.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_new(value)
        .with_context(|| format!("EVENTFOLD_LOG: {value:?} is not a filter such as info"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
