//! The Worlds scenario on SQLite, with no server: `cargo run -p worlds-example [PATH]`.

use eventfold::{Config, Follower};
use worlds_example::{EventsPerWorld, World, Worlds};

#[tokio::main(flavor = "current_thread")]
async fn main() -> eventfold::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "worlds.sqlite3".into());
    let config = Config::sqlite(&path).zlib().snapshot_every::<World>(5);
    let worlds = Worlds::new(config.application().await?);

    let id = worlds.create_world().await?;
    for what in ["dinosaurs", "trucks", "internet", "covid"] {
        worlds.make_it_so(id, what).await?;
    }
    println!("history of {id}: {:?}", worlds.get_world_history(id).await?);

    let mut follower = Follower::view(worlds.app(), EventsPerWorld::NAME, EventsPerWorld).build();
    let counted = follower.catch_up().await?;
    println!(
        "view {}: counted {counted} new events; world {id} has {}",
        EventsPerWorld::NAME,
        EventsPerWorld::count(worlds.app().store(), id).await?
    );
    Ok(())
}
