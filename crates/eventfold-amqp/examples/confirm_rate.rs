//! The broker's own confirmed-publish rate: N persistent messages of a given size, a given
//! window in flight, to a durable queue in a temporary virtual host (created with
//! `rabbitmqctl`, deleted afterwards; `--vhost` to use an existing one with a temporary
//! queue instead). Prints readable lines, then one JSON line.
//!
//! ```sh
//! cargo run --release -p eventfold-amqp --example confirm_rate -- -n 20000 --size 512 --window 256
//! ```

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use eventfold_amqp::{
    AmqpConfig, ConfirmedPublisher, ExchangeKind, Outcome, OutgoingMessage, PublisherOptions,
};

struct Args {
    url: String,
    n: usize,
    size: usize,
    window: usize,
    batch: usize,
    vhost: Option<String>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        url: std::env::var("EVENTFOLD_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned()),
        n: 20_000,
        size: 512,
        window: 256,
        batch: 1_000,
        vhost: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "-n" | "--messages" => a.n = value()?.parse()?,
            "--size" => a.size = value()?.parse()?,
            "--window" => a.window = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--vhost" => a.vhost = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "confirm_rate [--url amqp://user:pass@host:port (no vhost)] [-n N] [--size BYTES] \
                     [--window W] [--batch B] [--vhost EXISTING]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl").arg("-q").args(args).output()?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Deletes the temporary vhost when dropped.
struct TempVhost(Option<String>);
impl Drop for TempVhost {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = rabbitmqctl(&["delete_vhost", v]);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (vhost, _guard) = match &args.vhost {
        Some(v) => (v.clone(), TempVhost(None)),
        None => {
            let v = format!("ef-bench-{suffix}");
            rabbitmqctl(&["add_vhost", &v])?;
            let guard = TempVhost(Some(v.clone()));
            rabbitmqctl(&["set_permissions", "-p", &v, "guest", ".*", ".*", ".*"])?;
            (v, guard)
        }
    };
    let config = AmqpConfig::from_url(&args.url)?
        .with_vhost(vhost.clone())
        .with_connection_name("eventfold-confirm-rate");
    let publisher = ConfirmedPublisher::connect(
        config.clone(),
        PublisherOptions {
            window: args.window,
            ..Default::default()
        },
    )
    .await?;

    let exchange = format!("bench-{suffix}");
    let queue = format!("bench-{suffix}");
    publisher
        .declare_exchange(&exchange, ExchangeKind::Topic)
        .await?;
    // The queue is declared and bound on a plain lapin channel (the crate's publisher does
    // not declare queues: consumers own them).
    let conn = lapin::Connection::connect(
        &format!("{}/{}", args.url.trim_end_matches('/'), vhost),
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions::durable(),
        Default::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await?;

    let message = OutgoingMessage::new(exchange.clone(), "bench", vec![b'x'; args.size]);
    let batch: Vec<OutgoingMessage> = vec![message; args.batch.max(1).min(args.n.max(1))];
    println!(
        "broker {config}, {} persistent messages of {} bytes, window {}, batches of {}",
        args.n,
        args.size,
        args.window,
        batch.len()
    );
    let start = Instant::now();
    let (mut confirmed, mut other) = (0usize, 0usize);
    let mut sent = 0;
    while sent < args.n {
        let k = batch.len().min(args.n - sent);
        for o in publisher.publish_all(&batch[..k]).await {
            match o {
                Ok(Outcome::Confirmed) => confirmed += 1,
                _ => other += 1,
            }
        }
        sent += k;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = confirmed as f64 / secs;
    let mib = rate * args.size as f64 / (1024.0 * 1024.0);
    let in_queue = ch
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::durable().passive(),
            Default::default(),
        )
        .await?
        .message_count();
    println!("confirmed {confirmed} (not confirmed {other}) in {secs:.3} s");
    println!(
        "{rate:.0} confirmed msgs/s, {mib:.2} MiB/s, max in flight {}",
        publisher.max_in_flight()
    );
    println!(
        "queue holds {in_queue}; connections opened {}",
        eventfold_amqp::connections_opened()
    );

    ch.queue_delete(queue.as_str().into(), Default::default())
        .await?;
    ch.exchange_delete(exchange.as_str().into(), Default::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    publisher.close().await?;

    let json = serde_json::json!({
        "bench": "amqp_confirm_rate",
        "params": {
            "messages": args.n, "size_bytes": args.size, "window": args.window,
            "batch": batch.len(), "persistent": true, "durable_queue": true,
        },
        "versions": { "eventfold-amqp": env!("CARGO_PKG_VERSION"), "lapin": "4.12.3" },
        "results": {
            "eventfold-amqp": {
                "confirmed": confirmed,
                "not_confirmed": other,
                "seconds": secs,
                "confirmed_msgs_per_s": rate,
                "mib_per_s": mib,
                "max_in_flight": publisher.max_in_flight(),
                "connections_opened": eventfold_amqp::connections_opened(),
                "queue_messages": in_queue,
            }
        }
    });
    println!("{json}");
    if other > 0 {
        bail!("{other} messages were not confirmed");
    }
    Ok(())
}
