//! `eventfold log`: print the notification log, oldest first or newest first, optionally
//! following it; `eventfold followers`: where each follower is in it.

use std::time::Duration;

use eventfold::{Config, Notification, NotificationQuery, StoreConfig};

use crate::StoreArgs;

/// Options of `eventfold log`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  eventfold log --after 100 --limit 20     ids 101.. oldest first, at most 20
  eventfold log --newest 20                the 20 newest, newest first
  eventfold log --newest 20 --before 81    the page before that, if its smallest id was 81")]
pub struct LogArgs {
    /// Start after this notification id.
    #[arg(long, default_value_t = 0, conflicts_with = "newest")]
    after: u64,
    /// Only ids below this one. With --newest, pages back: pass the smallest id of the
    /// previous page.
    #[arg(long, value_name = "ID", conflicts_with = "follow")]
    before: Option<u64>,
    /// Print at most this many (without --follow). Default: all.
    #[arg(long, conflicts_with = "newest")]
    limit: Option<usize>,
    /// Print the N newest notifications, newest first (instead of oldest first).
    #[arg(long, value_name = "N", conflicts_with = "follow")]
    newest: Option<usize>,
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

/// Decodes stored payloads to JSON for `--payload`, naming the record that does not.
struct Payloads(eventfold_inspect::PayloadDecoder);

impl Payloads {
    fn new(store: &StoreArgs) -> anyhow::Result<Self> {
        Ok(Payloads(eventfold_inspect::PayloadDecoder::from_config(
            &store.config()?,
        )?))
    }

    /// The payload as JSON: decrypted, decompressed, parsed (a record of a later schema
    /// version shows its data, without upcasting).
    fn decode(&self, n: &Notification) -> anyhow::Result<serde_json::Value> {
        self.0.decode(&n.event).map_err(|why| {
            anyhow::anyhow!(
                "cannot decode the payload of notification {} ({} {}@{}): {why}",
                n.id,
                n.event.topic,
                n.event.stream_id,
                n.event.version
            )
        })
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

/// One line per notification: id, topic, stream, version, time, payload size, and the
/// record's metadata as JSON (` meta={...}`) when it has any.
pub fn format_notification(n: &Notification) -> String {
    let mut line = format!(
        "{:>8}  {:<28} {} v{:<4} {}  {} bytes",
        n.id,
        n.event.topic,
        n.event.stream_id,
        n.event.version,
        n.event.timestamp,
        n.event.state.len()
    );
    if let Some(json) = n.event.metadata.to_json() {
        line.push_str("  meta=");
        line.push_str(&json);
    }
    line
}

/// What an empty result was filtered by, for the "0 notifications" line.
fn nothing_found(args: &LogArgs) -> String {
    let mut line = "0 notifications".to_owned();
    if args.after > 0 {
        line.push_str(&format!(" after id {}", args.after));
    }
    if let Some(before) = args.before {
        line.push_str(&format!(" before id {before}"));
    }
    if !args.topics.is_empty() {
        line.push_str(&format!(" with topic {}", args.topics.join(" or ")));
    }
    line
}

/// Opens the configured store for reading. A SQLite file that does not exist is an
/// error, and stays missing: reading creates nothing.
pub(crate) async fn open_existing(
    config: &Config,
    what: &str,
) -> anyhow::Result<std::sync::Arc<dyn eventfold::Store>> {
    if let StoreConfig::Sqlite(sqlite) = config.store_config() {
        if !sqlite.path.exists() {
            anyhow::bail!(
                "no SQLite database at {} (EVENTFOLD_SQLITE_PATH or --sqlite-path); \
                 nothing to show, and `eventfold {what}` creates nothing \
                 (`eventfold demo` or `eventfold migrate` makes one)",
                sqlite.path.display()
            );
        }
    }
    Ok(config.open_store().await?)
}

fn print(n: &Notification, payloads: Option<&Payloads>) -> anyhow::Result<()> {
    match payloads {
        Some(payloads) => {
            let json = payloads.decode(n)?;
            outln!("{}  {json}", format_notification(n))?
        }
        None => outln!("{}", format_notification(n))?,
    }
    Ok(())
}

/// Prints the log. The "0 notifications" line of an empty result goes to stderr, so
/// stdout has one line per notification and nothing else.
pub async fn run(store: &StoreArgs, args: &LogArgs) -> anyhow::Result<()> {
    let config = store.config()?;
    let payloads = args.payload.then(|| Payloads::new(store)).transpose()?;
    let log = open_existing(&config, "log").await?;
    if let Some(newest) = args.newest {
        let mut query = NotificationQuery::newest(newest).topics(args.topics.clone());
        if let Some(before) = args.before {
            query = query.before(before);
        }
        let page = log.select_notifications(&query).await?;
        for n in &page {
            print(n, payloads.as_ref())?;
        }
        match page.last() {
            None => eprintln!("{}", nothing_found(args)),
            Some(oldest) if page.len() == newest && oldest.id > 1 => eprintln!(
                "older: eventfold log --newest {newest} --before {}",
                oldest.id
            ),
            Some(_) => {}
        }
        return Ok(());
    }
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
            let mut query =
                NotificationQuery::after(after, left.min(1000)).topics(args.topics.clone());
            if let Some(before) = args.before {
                query = query.before(before);
            }
            let page = log.select_notifications(&query).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            left -= page.len();
            for n in &page {
                print(n, payloads.as_ref())?;
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

/// Prints each follower's name, position and how many notifications it is behind the
/// newest, by name; "0 followers" to stderr when none has a position.
pub async fn followers(store: &StoreArgs) -> anyhow::Result<()> {
    let config = store.config()?;
    let log = open_existing(&config, "followers").await?;
    let newest = log.max_notification_id().await?;
    // A consumer's inbox keeps one mark per applied message id as a follower row: those
    // are not followers of the log, and there may be millions of them.
    let (inbox, followers): (Vec<_>, Vec<_>) = log
        .followers()
        .await?
        .into_iter()
        .partition(|t| eventfold_relay::inbox::is_inbox_follower(&t.follower));
    if !inbox.is_empty() {
        eprintln!("({} consumer inbox marks not shown)", inbox.len());
    }
    if followers.is_empty() {
        eprintln!("0 followers (the log has {newest} notifications)");
        return Ok(());
    }
    let width = followers
        .iter()
        .map(|t| t.follower.len())
        .max()
        .unwrap_or(0);
    for tracking in &followers {
        outln!(
            "{:<width$}  at {:>8}  {} behind",
            tracking.follower,
            tracking.position,
            newest.saturating_sub(tracking.position)
        )?;
    }
    Ok(())
}
