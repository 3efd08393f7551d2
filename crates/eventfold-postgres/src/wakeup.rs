//! Wake-ups for followers: a background LISTEN task that reconnects with backoff, and a
//! coalescing NOTIFY sender for commits made by [`crate::PostgresStore::record`].

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;

/// First and longest pause before reconnecting the LISTEN connection.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The `application_name` of the LISTEN connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "eventfold-listener";

/// Counters of the LISTEN task, for tests and diagnostics.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    /// Times the task started listening (first connect and every reconnect).
    pub listening_since: AtomicU64,
    /// Notifications received.
    pub received: AtomicU64,
}

/// What woke the LISTEN loop.
enum Woken {
    Received(Result<Option<sqlx::postgres::PgNotification>, sqlx::Error>),
    Heartbeat,
}

/// Listens on `channel` forever, waking `wakeups` on every notification and after every
/// (re)connection, since notifications sent while it was not listening are lost.
///
/// Every `heartbeat` (unless zero) it sends `SELECT 1` and waits at most
/// `connect_timeout` for the answer: a connection whose peer vanished without closing it
/// (a half-open TCP connection: a network partition, a server host that lost power) would
/// otherwise look idle for as long as the kernel keeps retrying, and wake nobody.
pub(crate) async fn listen(
    options: PgConnectOptions,
    connect_timeout: Duration,
    heartbeat: Duration,
    channel: String,
    wakeups: Arc<Notify>,
    stats: Arc<ListenerStats>,
) {
    let options = options.application_name(LISTENER_APPLICATION_NAME);
    let mut backoff = BACKOFF_MIN;
    loop {
        // A pool of its own per connection: when a dead connection is given up, sqlx's
        // listener still tries to UNLISTEN on it in a background task, which keeps the
        // pool's one slot until the kernel gives up on the socket.
        let pool: PgPool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_before_acquire(false)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(options.clone());
        let started = tokio::time::timeout(connect_timeout, start_listening(&pool, &channel)).await;
        match started {
            Ok(Ok(mut listener)) => {
                stats.listening_since.fetch_add(1, AtomicOrdering::Relaxed);
                backoff = BACKOFF_MIN;
                tracing::debug!(%channel, "listening for eventfold notifications");
                wakeups.notify_waiters();
                let mut beats = tokio::time::interval(heartbeat.max(Duration::from_millis(1)));
                beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                beats.tick().await;
                loop {
                    // `try_recv` is cancel-safe: a heartbeat never loses a notification.
                    let woken = tokio::select! {
                        received = listener.try_recv() => Woken::Received(received),
                        _ = beats.tick(), if !heartbeat.is_zero() => Woken::Heartbeat,
                    };
                    match woken {
                        Woken::Received(Ok(Some(_))) => {
                            stats.received.fetch_add(1, AtomicOrdering::Relaxed);
                            wakeups.notify_waiters();
                        }
                        Woken::Received(Ok(None)) => {
                            // The connection was lost and sqlx re-established it (and its
                            // LISTEN); whatever was sent in between is gone: catch up.
                            tracing::info!(%channel, "LISTEN connection lost and re-established");
                            stats.listening_since.fetch_add(1, AtomicOrdering::Relaxed);
                            wakeups.notify_waiters();
                        }
                        Woken::Received(Err(error)) => {
                            tracing::warn!(%channel, %error, "LISTEN connection failed; reconnecting");
                            break;
                        }
                        Woken::Heartbeat => {
                            let ping = sqlx::query("SELECT 1").execute(&mut listener);
                            match tokio::time::timeout(connect_timeout, ping).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(error)) => {
                                    tracing::warn!(%channel, %error, "LISTEN connection failed its heartbeat; reconnecting");
                                    break;
                                }
                                Err(_) => {
                                    tracing::warn!(%channel, ?connect_timeout, "LISTEN connection did not answer its heartbeat; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%channel, %error, ?backoff, "cannot LISTEN; retrying");
            }
            Err(_) => {
                tracing::warn!(%channel, ?backoff, "LISTEN not set up within connect_timeout; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn start_listening(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// The least time between two NOTIFYs of one store: commits in between share the next
/// one. Followers in this process are woken directly; this only delays other processes'.
pub(crate) const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// The `application_name` of the connection that sends wake-ups.
pub const NOTIFIER_APPLICATION_NAME: &str = "eventfold-notifier";

/// Sends one NOTIFY per burst of commits: each commit calls `signal.notify_one()`, which
/// leaves at most one permit, so commits that land while a NOTIFY is in flight (or during
/// the [`NOTIFY_INTERVAL`] after it) are covered by the next one.
///
/// It keeps a connection of its own: through the pool, every NOTIFY cost a second round
/// trip (the ping sqlx sends when a connection goes back), next to the commands it
/// interleaves with. A failed connection is dropped and made again on the next burst.
pub(crate) async fn send_notifications(
    options: PgConnectOptions,
    connect_timeout: Duration,
    reply_timeout: Duration,
    statement: String,
    channel: String,
    signal: Arc<Notify>,
) {
    let options = options.application_name(NOTIFIER_APPLICATION_NAME);
    let mut connection: Option<PgConnection> = None;
    loop {
        signal.notified().await;
        let next_allowed = tokio::time::Instant::now() + NOTIFY_INTERVAL;
        if connection.is_none() {
            match tokio::time::timeout(connect_timeout, PgConnection::connect_with(&options)).await
            {
                Ok(Ok(conn)) => connection = Some(conn),
                Ok(Err(error)) => tracing::debug!(%channel, %error, "cannot connect to NOTIFY"),
                Err(_) => tracing::debug!(%channel, "cannot connect to NOTIFY: timed out"),
            }
        }
        if let Some(conn) = connection.as_mut() {
            let notify = sqlx::query(&statement).bind(&channel).execute(conn);
            if let Err(error) = crate::store::within(reply_timeout, notify).await {
                // Followers poll as well; a lost wake-up only delays them.
                tracing::debug!(%channel, %error, "NOTIFY failed");
                connection = None;
            }
        }
        tokio::time::sleep_until(next_allowed).await;
    }
}
