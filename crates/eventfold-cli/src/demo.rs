//! `eventfold demo`: the Worlds scenario, with what it wrote.

use eventfold::{EventReader, Follower, NotificationQuery, NotificationReader, StreamQuery};
use worlds_example::{EventsPerWorld, World, Worlds};

use crate::log::format_notification;
use crate::StoreArgs;

/// Options of `eventfold demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many of the newest notifications to print.
    #[arg(long, default_value_t = 12)]
    log_tail: usize,
}

pub async fn run(store: &StoreArgs, args: &DemoArgs) -> anyhow::Result<()> {
    let config = store.config()?.zlib().snapshot_every::<World>(5);
    let app = config.application().await?;
    outln!("store: {}", config.store_config())?;
    outln!("mapper: JSON + zlib; snapshot World every 5 versions\n")?;
    let worlds = Worlds::new(app);

    let id = worlds.create_world().await?;
    outln!("create_world() -> {id}")?;
    for what in ["dinosaurs", "trucks", "internet", "covid"] {
        worlds.make_it_so(id, what).await?;
        outln!("make_it_so({what:?})")?;
    }
    let history = worlds.get_world_history(id).await?;
    outln!("get_world_history() -> {history:?}\n")?;

    let store = worlds.app().store();
    let stream_id = id.to_string();
    let events = store.select_events(&stream_id, StreamQuery::all()).await?;
    outln!("events of world {id}: {}", events.len())?;
    for stored in &events {
        let event = worlds.app().repository().decode_event::<World>(stored)?;
        outln!(
            "  v{}  {:<24} {}  {} bytes stored  {:?}",
            stored.version,
            stored.topic,
            stored.timestamp,
            stored.state.len(),
            event
        )?;
    }
    let snapshots = store
        .select_snapshots(&stream_id, StreamQuery::all())
        .await?;
    outln!("snapshots of world {id}: {}", snapshots.len())?;
    for snapshot in &snapshots {
        outln!(
            "  v{}  {}  {} bytes stored",
            snapshot.version,
            snapshot.timestamp,
            snapshot.state.len()
        )?;
    }

    let max = store.max_notification_id().await?;
    let mut tail = store
        .select_notifications(&NotificationQuery::newest(args.log_tail))
        .await?;
    tail.reverse();
    outln!(
        "\nnotification log: {max} in all, the newest {}:",
        tail.len()
    )?;
    for n in &tail {
        outln!("{}", format_notification(n))?;
    }
    if store.backend() == "memory" {
        outln!(
            "\nview {}: skipped, the memory store runs no SQL",
            EventsPerWorld::NAME
        )?;
    } else {
        // The same view on SQLite and PostgreSQL: its SQL is portable.
        let mut follower =
            Follower::view(worlds.app(), EventsPerWorld::NAME, EventsPerWorld).build();
        let counted = follower.catch_up().await?;
        outln!(
            "\nview {}: processed {counted} new notifications; world {id} has {} events \
             (table world_event_counts, position committed with the rows)",
            EventsPerWorld::NAME,
            EventsPerWorld::count(store, id).await?
        )?;
    }
    anyhow::ensure!(
        history == ["dinosaurs", "trucks", "internet", "covid"] && snapshots.len() == 1,
        "the scenario did not produce the expected history and one snapshot"
    );
    Ok(())
}
