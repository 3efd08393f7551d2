//! `eventfold log`: print the notification log, optionally following it.

use std::time::Duration;

use eventfold::{Notification, NotificationQuery};

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

pub async fn run(store: &StoreArgs, args: &LogArgs) -> anyhow::Result<()> {
    let handle = store.config()?.open_store().await?;
    let log = handle.as_dyn();
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
                outln!("{}", format_notification(n))?;
            }
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
