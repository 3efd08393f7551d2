//! WAL checkpoints off the write path.
//!
//! With `synchronous = NORMAL`, a commit only appends to the write-ahead log; the disk
//! syncs happen when the log is copied back into the database (a checkpoint). SQLite runs
//! that checkpoint inside the commit that crosses its threshold, so every few hundred
//! commits one of them waits for two `fsync`s and the write-back of megabytes: spread
//! over the commits, about a third of their cost on the benchmark VM.
//!
//! Here a thread of the store does it instead, shortly after commits, on a connection of
//! its own: a passive checkpoint that writers do not wait for. Under steady load commits
//! arrive during every such pass, so the log is never fully copied when a commit begins
//! and cannot start over; once it passes [`RESTART_FRAMES`], a short second pass runs
//! while the store's writers wait, and the next commit starts the log from its beginning.
//! The write connection keeps SQLite's own checkpoint as a safety net at a higher
//! threshold, and any other process on the file checkpoints as usual.
//!
//! Measured on the 2-core VM with `eventfold-bench`'s `examples/store_loop.rs` (one load
//! and one single-event record per command), in runs paired back to back: 43–66 µs per
//! command with this thread against 61–102 µs with SQLite's own checkpoints in the
//! commit, and 39–49 µs with `synchronous = OFF`, which never syncs (the spread is other
//! work on the VM).

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Weak;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Mutex;

/// How long after a commit the thread waits, to checkpoint many commits at once.
const DELAY: Duration = Duration::from_millis(10);

/// Log size (in frames, i.e. pages) above which the thread makes writers wait for a
/// moment so the log can start over. Below it, a log that is fully copied starts over at
/// the next commit anyway; making writers wait at every pass costs more than a longer log.
const RESTART_FRAMES: i64 = 4000;

/// The write connection's own checkpoint threshold, in pages (SQLite's default is 1000):
/// reached only if the thread falls behind.
pub(crate) const WRITER_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 10000";

/// A handle on the checkpoint thread; it stops when the handle drops.
pub(crate) struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread with its own connection to the file.
    pub(crate) fn start(
        conn: Connection,
        writer: Weak<Mutex<Connection>>,
    ) -> std::io::Result<Checkpointer> {
        let (wake, wakes) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("eventfold-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &writer, &wakes))?;
        Ok(Checkpointer { wake })
    }

    /// Tells the thread that the log grew. Never blocks.
    pub(crate) fn poke(&self) {
        let _ = self.wake.try_send(());
    }
}

fn run(conn: &Connection, writer: &Weak<Mutex<Connection>>, wakes: &Receiver<()>) {
    while wakes.recv().is_ok() {
        std::thread::sleep(DELAY);
        let _ = wakes.try_recv();
        match checkpoint(conn) {
            Ok(Some((log, _))) if log > RESTART_FRAMES => {
                // The log keeps growing: commits arrived during each copy, so it was
                // never fully copied when the next commit began. Copy the rest while
                // writers wait (the frames since the pass above: quick), so the next
                // commit starts the log over from its beginning.
                let Some(writer) = writer.upgrade() else {
                    return;
                };
                let _writers_wait = writer.blocking_lock();
                if let Err(e) = checkpoint(conn) {
                    tracing::debug!(error = %e, "sqlite checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "sqlite checkpoint failed"),
        }
    }
}

/// A passive checkpoint: `Some((frames in the log, frames copied))`, or `None` if another
/// connection was checkpointing.
fn checkpoint(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        let busy: i64 = row.get(0)?;
        Ok((busy == 0).then_some((row.get(1)?, row.get(2)?)))
    })
}
