//! `eventfold demo`: the Worlds scenario, with what it wrote.

use eventfold::{EventReader, NotificationQuery, NotificationReader, StreamQuery};
use worlds_example::{World, Worlds};

use crate::log::format_notification;
use crate::StoreArgs;

/// Options of `eventfold demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many of the newest notifications to print.
    #[arg(long, default_value_t = 12)]
    log_tail: u64,
}

pub async fn run(store: &StoreArgs, args: &DemoArgs) -> anyhow::Result<()> {
    let config = store.config()?.zlib().snapshot_every::<World>(5);
    let handle = config.open_store().await?;
    outln!("store: {}", config.store_config())?;
    outln!("mapper: JSON + zlib; snapshot World every 5 versions\n")?;
    let worlds = Worlds::new(config.application_on(&handle)?);

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
    let tail = store
        .select_notifications(&NotificationQuery::after(
            max.saturating_sub(args.log_tail),
            args.log_tail as usize,
        ))
        .await?;
    outln!(
        "\nnotification log: {max} in all, the newest {}:",
        tail.len()
    )?;
    for n in &tail {
        outln!("{}", format_notification(n))?;
    }
    if let eventfold::StoreHandle::Sqlite(sqlite) = &handle {
        let mut follower = eventfold::Follower::builder(
            store.clone(),
            sqlite.clone(),
            worlds_example::EventsPerWorld::default(),
        )
        .build();
        let counted = follower.catch_up().await?;
        outln!(
            "\nprojection {}: processed {counted} new notifications; world {id} has {} events \
             (table world_event_counts, position committed with the rows)",
            worlds_example::EventsPerWorld::NAME,
            worlds_example::EventsPerWorld::count(sqlite, id).await?
        )?;
    }
    anyhow::ensure!(
        history == ["dinosaurs", "trucks", "internet", "covid"] && snapshots.len() == 1,
        "the scenario did not produce the expected history and one snapshot"
    );
    Ok(())
}
