//! `eventfold log`: print the notification log, optionally following it.

use std::time::Duration;

use eventfold::{JsonMapper, Mapper, Notification, NotificationQuery, StoreConfig};

use crate::StoreArgs;

/// Options of `eventfold log`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Start after this notification id.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Print at most this many (without --follow). Default: all.
    #[arg(long)]
    limit: Option<usize>,
    /// Only these topics, e.g. World.SomethingHappened (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Keep printing new notifications as they are recorded (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
    /// With --follow: how often to look for new notifications.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll: Duration,
    /// Also print each record's payload as JSON, decoded with the configured cipher
    /// (EVENTFOLD_CIPHER_KEY) and compressor (zlib is recognised without
    /// EVENTFOLD_COMPRESSOR).
    #[arg(long)]
    payload: bool,
}

/// Decodes stored payloads to JSON for `--payload`.
struct Payloads {
    /// The mapper of the configuration.
    configured: JsonMapper,
    /// The same with zlib: `eventfold demo` compresses whatever the environment says.
    with_zlib: JsonMapper,
    /// Whether EVENTFOLD_CIPHER_KEY is set.
    cipher_configured: bool,
}

impl Payloads {
    fn new(store: &StoreArgs) -> anyhow::Result<Self> {
        let config = store.config()?;
        let cipher_configured = store
            .vars()
            .get("EVENTFOLD_CIPHER_KEY")
            .is_some_and(|key| !key.trim().is_empty());
        Ok(Payloads {
            configured: config.mapper()?,
            with_zlib: config.zlib().mapper()?,
            cipher_configured,
        })
    }

    /// The payload as JSON: decrypted, decompressed, parsed (a record of a later schema
    /// version shows its data, without upcasting).
    fn decode(&self, n: &Notification) -> anyhow::Result<serde_json::Value> {
        let decode = |mapper: &JsonMapper| {
            mapper.decode::<serde_json::Value>(&n.event.state, 1, |_, _| Ok(()))
        };
        let error = match decode(&self.configured) {
            Ok(json) => return Ok(json),
            Err(error) => error,
        };
        if let Ok(json) = decode(&self.with_zlib) {
            return Ok(json);
        }
        let record = format!(
            "cannot decode the payload of notification {} ({} {}@{})",
            n.id, n.event.topic, n.event.stream_id, n.event.version
        );
        let likely = if self.cipher_configured {
            "wrong cipher key (EVENTFOLD_CIPHER_KEY) or damaged record"
        } else {
            "no cipher key configured (EVENTFOLD_CIPHER_KEY): the bytes are neither JSON \
             nor zlib, so the record is probably encrypted"
        };
        Err(anyhow::Error::new(error).context(format!("{record}: {likely}")))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("unit must be ms or s: {text:?}")),
    }
}

/// One line per notification: id, topic, stream, version, time, payload size.
pub fn format_notification(n: &Notification) -> String {
    format!(
        "{:>8}  {:<28} {} v{:<4} {}  {} bytes",
        n.id,
        n.event.topic,
        n.event.stream_id,
        n.event.version,
        n.event.timestamp,
        n.event.state.len()
    )
}

/// What an empty result was filtered by, for the "0 notifications" line.
fn nothing_found(args: &LogArgs) -> String {
    let mut line = "0 notifications".to_owned();
    if args.after > 0 {
        line.push_str(&format!(" after id {}", args.after));
    }
    if !args.topics.is_empty() {
        line.push_str(&format!(" with topic {}", args.topics.join(" or ")));
    }
    line
}

/// Prints the log. A SQLite file that does not exist is an error, and stays missing:
/// reading the log creates nothing. The "0 notifications" line of an empty result goes
/// to stderr, so stdout has one line per notification and nothing else.
pub async fn run(store: &StoreArgs, args: &LogArgs) -> anyhow::Result<()> {
    let config = store.config()?;
    if let StoreConfig::Sqlite(sqlite) = config.store_config() {
        if !sqlite.path.exists() {
            anyhow::bail!(
                "no SQLite database at {} (EVENTFOLD_SQLITE_PATH or --sqlite-path); \
                 nothing to show, and `eventfold log` creates nothing \
                 (`eventfold demo` or `eventfold migrate` makes one)",
                sqlite.path.display()
            );
        }
    }
    let payloads = args.payload.then(|| Payloads::new(store)).transpose()?;
    let handle = config.open_store().await?;
    let log = handle.as_dyn();
    let mut printed = 0usize;
    let mut told_empty = false;
    let mut after = args.after;
    let mut left = if args.follow {
        usize::MAX
    } else {
        args.limit.unwrap_or(usize::MAX)
    };
    let wakeups = log.wakeups();
    loop {
        while left > 0 {
            let page = log
                .select_notifications(&NotificationQuery {
                    after,
                    limit: left.min(1000),
                    topics: args.topics.clone(),
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            left -= page.len();
            for n in &page {
                match &payloads {
                    Some(payloads) => {
                        let json = payloads.decode(n)?;
                        outln!("{}  {json}", format_notification(n))?
                    }
                    None => outln!("{}", format_notification(n))?,
                }
            }
            printed += page.len();
        }
        if printed == 0 && !told_empty {
            if !args.follow {
                eprintln!("{}", nothing_found(args));
                return Ok(());
            }
            eprintln!(
                "{} so far; waiting for new ones (Ctrl-C to stop)",
                nothing_found(args)
            );
            told_empty = true;
        }
        if !args.follow {
            return Ok(());
        }
        let wake = async {
            match &wakeups {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = wake => {}
            () = tokio::time::sleep(args.poll) => {}
        }
    }
}
