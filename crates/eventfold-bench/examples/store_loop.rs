//! A quick measurement of the store alone, in the shape of the Worlds benchmark's command
//! phase: per command one `load` and one `record` of one event (plus a snapshot every 5th
//! version), sequential, one command in flight, on a fresh file with the default settings.
//!
//! `cargo run --release -p eventfold-bench --example store_loop -- [streams] [rounds] [off|normal|full]`

use std::time::{Duration, Instant};

use eventfold_core::{EventReader, EventWriter, Recording, StoredEvent, Timestamp};
use eventfold_sqlite::{SqliteConfig, SqliteStore, Synchronous};

fn record(stream_id: &str, version: u64, topic: &str, bytes: usize) -> StoredEvent {
    StoredEvent::new(
        stream_id,
        version,
        topic,
        Timestamp::now(),
        vec![b'x'; bytes],
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> eventfold_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let streams: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let synchronous = match args.next().as_deref() {
        Some("off") => Synchronous::Off,
        Some("full") => Synchronous::Full,
        _ => Synchronous::Normal,
    };
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut config = SqliteConfig::new(dir.path().join("loop.db"));
    config.synchronous = synchronous;
    let store = SqliteStore::open(&config)?;
    let ids: Vec<String> = (0..streams).map(|i| format!("world-{i:08}")).collect();

    let started = Instant::now();
    for id in &ids {
        store
            .record(&Recording::new().event(record(id, 1, "World.Created", 60)))
            .await?;
    }
    let creates = started.elapsed();

    let (mut loading, mut recording) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for _ in 0..rounds {
        for id in &ids {
            let t = Instant::now();
            let loaded = store.load(id, None).await?;
            loading += t.elapsed();
            let version =
                loaded.snapshot.as_ref().map_or(0, |s| s.version) + loaded.events.len() as u64 + 1;
            let mut command =
                Recording::new().event(record(id, version, "World.SomethingHappened", 80));
            if version.is_multiple_of(5) {
                command = command.snapshot(record(id, version, "World", 200));
            }
            let t = Instant::now();
            store.record(&command).await?;
            recording += t.elapsed();
        }
    }
    let elapsed = started.elapsed();
    let commands = streams as f64 * rounds as f64;
    println!(
        "creates/s {:.0} | commands/s {:.0} | per command: load {:.1} us, record {:.1} us, total {:.1} us",
        streams as f64 / creates.as_secs_f64(),
        commands / elapsed.as_secs_f64(),
        loading.as_secs_f64() * 1e6 / commands,
        recording.as_secs_f64() * 1e6 / commands,
        elapsed.as_secs_f64() * 1e6 / commands,
    );
    let wal = std::fs::metadata(dir.path().join("loop.db-wal")).map_or(0, |m| m.len());
    println!("write-ahead log: {} KiB", wal / 1024);
    Ok(())
}
