//! The `eventfold` command line.
//!
//! Every command reads the store configuration from the `EVENTFOLD_*` environment
//! variables (see `eventfold::Config`); the global flags below override them.

/// `println!` that returns the write error instead of panicking, so a closed pipe
/// (`eventfold log | head`) ends the command quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod bench;
mod demo;
mod log;

use std::collections::HashMap;

use clap::{Parser, Subcommand};

/// eventfold: event-sourced applications on SQLite (embedded) or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "eventfold", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the events live. Each flag overrides the environment variable it names.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Store kind: memory, sqlite or postgres [env: EVENTFOLD_STORE, default sqlite]
    #[arg(long, global = true)]
    store: Option<String>,
    /// SQLite database file [env: EVENTFOLD_SQLITE_PATH, default eventfold.sqlite3]
    #[arg(long, global = true)]
    sqlite_path: Option<String>,
    /// PostgreSQL URL [env: EVENTFOLD_DATABASE_URL or DATABASE_URL]
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// PostgreSQL schema [env: EVENTFOLD_POSTGRES_SCHEMA, default public]
    #[arg(long, global = true)]
    postgres_schema: Option<String>,
}

impl StoreArgs {
    /// The environment with these flags laid over it, as `eventfold::Config` reads it.
    fn vars(&self) -> HashMap<String, String> {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        for (name, value) in [
            ("EVENTFOLD_STORE", &self.store),
            ("EVENTFOLD_SQLITE_PATH", &self.sqlite_path),
            ("EVENTFOLD_DATABASE_URL", &self.database_url),
            ("EVENTFOLD_POSTGRES_SCHEMA", &self.postgres_schema),
        ] {
            if let Some(value) = value {
                vars.insert(name.to_owned(), value.clone());
            }
        }
        vars
    }

    fn config(&self) -> eventfold::Result<eventfold::Config> {
        eventfold::Config::from_vars(self.vars())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Worlds scenario on the configured store (SQLite by default) and show
    /// the events, snapshots and notification log it produced.
    Demo(demo::DemoArgs),
    /// Create or upgrade the store's tables.
    Migrate,
    /// Print the notification log, oldest first (newest last).
    Log(log::LogArgs),
    /// Benchmarks that print figures and end with one JSON line.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVENTFOLD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Demo(args) => demo::run(&cli.store, args).await,
        Command::Migrate => migrate(&cli.store).await,
        Command::Log(args) => log::run(&cli.store, args).await,
        Command::Bench(command) => bench::run(&cli.store, command).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn migrate(store: &StoreArgs) -> anyhow::Result<()> {
    outln!("{}", store.config()?.migrate().await?)?;
    Ok(())
}
