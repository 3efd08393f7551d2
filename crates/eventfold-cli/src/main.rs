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
mod cqrs;
mod demo;
mod inspect;
mod log;
mod relay;

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
    /// Print the notification log, oldest first (newest last), or newest first with
    /// --newest.
    Log(log::LogArgs),
    /// Print each follower's position in the notification log and how far behind it is.
    Followers,
    /// Run the outbox relay: publish the notification log to RabbitMQ (at-least-once, in
    /// log order, position moved over confirmed messages only); `relay status`, `relay
    /// parked`, `relay republish` show and fix what it did.
    Relay(relay::RelayArgs),
    /// django-cqrs replication without Rust code: consume into plain tables, sync, bulk
    /// dump and load, diffs, dead letters (wire-compatible with django-cqrs 3.1).
    Cqrs(cqrs::CqrsArgs),
    /// Serve the web inspector: streams, the log with a live tail, followers, the relay,
    /// dead letters (HTML pages and JSON under /api) and /metrics.
    Inspect(inspect::InspectArgs),
    /// Benchmarks that print figures and end with one JSON line.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let filter = match log_filter(std::env::var("EVENTFOLD_LOG")) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("error: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Demo(args) => demo::run(&cli.store, args).await,
        Command::Migrate => migrate(&cli.store).await,
        Command::Log(args) => log::run(&cli.store, args).await,
        Command::Followers => log::followers(&cli.store).await,
        Command::Relay(args) => relay::run(&cli.store, args).await,
        Command::Cqrs(args) => cqrs::run(&cli.store, args).await,
        Command::Inspect(args) => inspect::run(&cli.store, args).await,
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
            eprintln!("{}", error_report(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn migrate(store: &StoreArgs) -> anyhow::Result<()> {
    outln!("{}", store.config()?.migrate().await?)?;
    Ok(())
}

/// The tracing filter of `EVENTFOLD_LOG` (default `warn`, without lapin's own lines: the
/// relay reports broker trouble itself, scrubbed and once per outage); a filter that does
/// not parse is a configuration error, not a silent fallback.
fn log_filter(
    value: Result<String, std::env::VarError>,
) -> eventfold::Result<tracing_subscriber::EnvFilter> {
    let invalid = |message: String| eventfold::Error::Config {
        variable: "EVENTFOLD_LOG".to_owned(),
        message,
    };
    match value {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_LOG.into()),
        Err(std::env::VarError::NotUnicode(value)) => {
            Err(invalid(format!("not valid UTF-8: {value:?}")))
        }
        Ok(value) if value.trim().is_empty() => Ok(DEFAULT_LOG.into()),
        Ok(value) => tracing_subscriber::EnvFilter::try_new(&value).map_err(|e| {
            invalid(format!(
                "{e} in {value:?} (expected a filter such as info or eventfold_postgres=debug,warn)"
            ))
        }),
    }
}

const DEFAULT_LOG: &str = "warn,lapin=off";

/// `error: <err>`, then each cause on a line of its own, except a cause whose text the
/// line before already contains (the core's errors show their source in their message).
fn error_report(err: &anyhow::Error) -> String {
    let mut report = format!("error: {err}");
    let mut previous = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        report.push_str("\n  caused by: ");
        report.push_str(&text);
        previous = text;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_shows_each_cause_once() {
        let json = serde_json::from_slice::<serde_json::Value>(b"nope").unwrap_err();
        let json_text = json.to_string();
        let codec = eventfold::CodecError::Json(json);
        let codec_text = codec.to_string();
        let decode = eventfold::Error::Decode {
            kind: eventfold::RecordKind::Event,
            stream_id: "w1".to_owned(),
            version: 3,
            source: codec,
        };
        let err = anyhow::Error::new(decode).context("reading notification 7");
        let report = error_report(&err);
        assert_eq!(report.matches(&json_text).count(), 1, "{report}");
        assert_eq!(
            report.lines().collect::<Vec<_>>(),
            [
                "error: reading notification 7".to_owned(),
                format!("  caused by: cannot decode stored event w1@3: {codec_text}"),
            ]
        );
    }

    #[test]
    fn a_bad_log_filter_is_an_error_naming_the_variable() {
        assert!(log_filter(Err(std::env::VarError::NotPresent)).is_ok());
        assert!(log_filter(Ok("eventfold_postgres=debug,warn".to_owned())).is_ok());
        let err = log_filter(Ok("eventfold=loud".to_owned())).unwrap_err();
        assert!(err.to_string().contains("EVENTFOLD_LOG"), "{err}");
    }
}
