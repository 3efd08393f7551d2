//! Publishing with publisher confirms and many messages in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, ExchangeKind, PublisherConfirm};
use tokio::sync::Mutex;

use crate::config::{short, AmqpConfig};
use crate::error::{AmqpError, Result};
use crate::message::OutgoingMessage;

/// How a published message ended, as the broker confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The broker took responsibility for the message: it was routed to at least one queue
    /// (and, for a persistent message to durable queues, written to disk).
    Confirmed,
    /// The message was unroutable (no queue bound for its routing key) and came back with
    /// its confirmation. It was **not** delivered anywhere.
    Returned {
        /// The AMQP reply code (312 `NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker refused the message (`basic.nack`: an internal error, a queue overflow
    /// with `reject-publish`...). It must be treated as not published.
    Nacked,
}

impl Outcome {
    /// `true` only for [`Outcome::Confirmed`].
    pub fn is_confirmed(&self) -> bool {
        matches!(self, Outcome::Confirmed)
    }
}

/// Settings of a [`ConfirmedPublisher`].
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// At most this many publishes are unconfirmed at any time (default 256). A publish
    /// beyond it first waits for the oldest confirmation.
    pub window: usize,
    /// The role in the connection name `<name>/<role>` (default `publisher`).
    pub role: String,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            window: 256,
            role: "publisher".to_owned(),
        }
    }
}

struct Link {
    conn: Arc<lapin::Connection>,
    channel: lapin::Channel,
}

/// A publisher on one connection and one channel in confirm mode.
///
/// Every publish is `mandatory`, so an unroutable message comes back as
/// [`Outcome::Returned`] instead of vanishing, and every publish has an outcome from the
/// broker: `Confirmation::NotRequested` is never taken as success. Up to
/// [`PublisherOptions::window`] publishes are in flight at once.
///
/// When the broker closes the channel (a publish to a missing exchange: 404), the next
/// publish opens a new channel on the same connection. When the connection is lost, calls
/// fail with [`AmqpError::Unavailable`] until [`ConfirmedPublisher::reconnect`] succeeds.
pub struct ConfirmedPublisher {
    config: AmqpConfig,
    options: PublisherOptions,
    link: Mutex<Option<Link>>,
    /// Held for a whole batch: batches never overlap on the channel (see `publish_all`).
    batch: Mutex<()>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connections_opened: AtomicU64,
}

impl std::fmt::Debug for ConfirmedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmedPublisher")
            .field("config", &self.config)
            .field("options", &self.options)
            .field("in_flight", &self.in_flight())
            .field("connections_opened", &self.connections_opened())
            .finish()
    }
}

async fn confirm_channel(config: &AmqpConfig, conn: &lapin::Connection) -> Result<lapin::Channel> {
    let channel = conn.create_channel().await.map_err(|e| config.error(&e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| config.error(&e))?;
    Ok(channel)
}

/// A confirmation as lapin resolved it: the ack flag is the message's own, the returned
/// message may belong to another message of the same multiple-ack.
struct Raw {
    ack: bool,
    ret: Option<lapin::message::BasicReturnMessage>,
}

fn same_message(ret: &lapin::message::BasicReturnMessage, m: &OutgoingMessage) -> bool {
    ret.delivery.exchange.as_str() == m.exchange
        && ret.delivery.routing_key.as_str() == m.routing_key
        && ret
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
            == m.message_id.as_deref()
        && ret.delivery.data == m.body
}

/// Gives each returned message to the first message of the batch it is a copy of.
fn reconcile(
    messages: &[OutgoingMessage],
    results: impl Iterator<Item = Result<Raw>>,
) -> Vec<Result<Outcome>> {
    let mut raws = Vec::with_capacity(messages.len());
    let mut returns = Vec::new();
    for r in results {
        raws.push(r.map(|mut raw| {
            if let Some(ret) = raw.ret.take() {
                returns.push(Some(ret));
            }
            raw.ack
        }));
    }
    let outcomes = raws
        .into_iter()
        .zip(messages)
        .map(|(r, m)| {
            let ack = r?;
            let mine = returns
                .iter_mut()
                .find(|ret| ret.as_ref().is_some_and(|ret| same_message(ret, m)))
                .and_then(Option::take);
            Ok(match (mine, ack) {
                (Some(ret), _) => Outcome::Returned {
                    reply_code: ret.reply_code,
                    reply_text: ret.reply_text.to_string(),
                },
                (None, true) => Outcome::Confirmed,
                (None, false) => Outcome::Nacked,
            })
        })
        .collect();
    for ret in returns.into_iter().flatten() {
        // Only possible when the returned message's own publish failed.
        tracing::warn!(
            exchange = %ret.delivery.exchange,
            routing_key = %ret.delivery.routing_key,
            reply_code = ret.reply_code,
            "a returned message matches no message of its batch"
        );
    }
    outcomes
}

impl ConfirmedPublisher {
    /// Connects (one connection, one channel in confirm mode).
    pub async fn connect(config: AmqpConfig, options: PublisherOptions) -> Result<Self> {
        if options.window == 0 {
            return Err(AmqpError::config("the publisher window must be at least 1"));
        }
        let publisher = ConfirmedPublisher {
            config,
            options,
            link: Mutex::new(None),
            batch: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections_opened: AtomicU64::new(0),
        };
        publisher.reconnect().await?;
        Ok(publisher)
    }

    /// A publisher on a channel of an existing connection (the consumer's dead letters).
    /// [`Self::reconnect`] would open a connection of its own.
    pub(crate) async fn on_connection(
        config: AmqpConfig,
        conn: Arc<lapin::Connection>,
        window: usize,
    ) -> Result<Self> {
        let channel = confirm_channel(&config, &conn).await?;
        Ok(ConfirmedPublisher {
            config,
            options: PublisherOptions {
                window: window.max(1),
                role: "dead-letters".to_owned(),
            },
            link: Mutex::new(Some(Link { conn, channel })),
            batch: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections_opened: AtomicU64::new(0),
        })
    }

    /// Drops the current connection (if any) and opens a new one. Publishes still in flight
    /// on the old connection fail with [`AmqpError::Unavailable`]; their messages must be
    /// published again. Call it, with backoff, after an [`AmqpError::Unavailable`].
    pub async fn reconnect(&self) -> Result<()> {
        let mut link = self.link.lock().await;
        if let Some(old) = link.take() {
            let _ = old.conn.close(200, "reconnecting".into()).await;
        }
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(self.config.connect(&self.options.role).await?);
        let channel = confirm_channel(&self.config, &conn).await?;
        *link = Some(Link { conn, channel });
        Ok(())
    }

    /// How many connections this publisher has opened (1 + successful or failed reconnects).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Publishes sent and not confirmed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The most publishes that were unconfirmed at the same time since [`Self::connect`]
    /// (never above the window; 1 would mean one round trip per message).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// The configuration (redacted when printed).
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// The channel to publish on: the current one, or a new one on the same connection when
    /// the broker closed the old one (a channel-level error such as 404).
    async fn channel(&self) -> Result<(lapin::Channel, Arc<lapin::Connection>)> {
        let mut guard = self.link.lock().await;
        let Some(link) = guard.as_mut() else {
            return Err(AmqpError::Closed { what: "publisher" });
        };
        if link.channel.status().connected() {
            return Ok((link.channel.clone(), Arc::clone(&link.conn)));
        }
        if !link.conn.status().connected() {
            return Err(AmqpError::Unavailable {
                endpoint: self.config.redacted_url(),
                reason: "the connection was closed or lost".to_owned(),
            });
        }
        tracing::debug!("publisher channel closed by the broker, opening a new one");
        link.channel = confirm_channel(&self.config, &link.conn).await?;
        Ok((link.channel.clone(), Arc::clone(&link.conn)))
    }

    /// Declares a durable exchange of `kind`, so that publishes to it are not lost for want
    /// of a consumer that declared it. Idempotent; a mismatch with an existing exchange is
    /// [`AmqpError::Channel`] (406).
    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<()> {
        let (channel, _) = self.channel().await?;
        channel
            .exchange_declare(
                short("exchange", name)?,
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.config.error(&e))
    }

    /// Makes sure the queue `name` exists: one that exists is kept as it is (whatever
    /// arguments its consumer declared it with); a missing one is declared durable, not
    /// exclusive, not auto-delete, without arguments. The check runs on a channel of its
    /// own, since the broker closes the channel of a failed passive declare.
    pub async fn ensure_queue(&self, name: &str) -> Result<()> {
        let queue = short("queue", name)?;
        let (channel, conn) = self.channel().await?;
        let probe = conn
            .create_channel()
            .await
            .map_err(|e| self.config.error(&e))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match probe
            .queue_declare(queue.clone(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = probe.close(200, "checked".into()).await;
                return Ok(());
            }
            Err(e) => match self.config.error(&e) {
                AmqpError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        channel
            .queue_declare(queue, QueueDeclareOptions::durable(), FieldTable::default())
            .await
            .map(drop)
            .map_err(|e| self.config.error(&e))
    }

    /// Binds `queue` to `exchange` with `routing_key` (idempotent).
    pub async fn bind_queue(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        let (channel, _) = self.channel().await?;
        channel
            .queue_bind(
                short("queue", queue)?,
                short("exchange", exchange)?,
                short("routing key", routing_key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.config.error(&e))
    }

    /// Sends one message on `channel`; the confirmation is awaited by the caller.
    async fn send(
        &self,
        channel: &lapin::Channel,
        conn: &lapin::Connection,
        message: &OutgoingMessage,
    ) -> Result<PublisherConfirm> {
        let exchange = short("exchange", &message.exchange)?;
        let routing_key = short("routing key", &message.routing_key)?;
        let properties = message.properties()?;
        channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &message.body,
                properties,
            )
            .await
            .map_err(|e| self.send_error(&e, conn))
    }

    /// A send refused because the channel is closed is [`AmqpError::ChannelClosed`] while
    /// the connection is up, [`AmqpError::Unavailable`] once it is not.
    fn send_error(&self, e: &lapin::Error, conn: &lapin::Connection) -> AmqpError {
        let channel_state = matches!(
            e.kind(),
            lapin::ErrorKind::InvalidChannelState(..) | lapin::ErrorKind::InvalidChannel(_)
        );
        if channel_state && conn.status().connected() {
            AmqpError::ChannelClosed {
                reason: crate::error::scrub(&e.to_string(), self.config.password()),
            }
        } else {
            self.config.error(e)
        }
    }

    /// Publishes `message` and waits for its outcome: one round trip per message, so prefer
    /// [`Self::publish_all`] for more than one.
    pub async fn publish_one(&self, message: &OutgoingMessage) -> Result<Outcome> {
        self.publish_all(std::slice::from_ref(message))
            .await
            .pop()
            .expect("one outcome per message")
    }

    /// Publishes every message, in order, with up to [`PublisherOptions::window`] of them
    /// unconfirmed at a time, and returns each one's outcome (same order).
    ///
    /// An error means "not known to be published": the message may or may not have reached
    /// its queue (re-publishing it may duplicate it: consumers drop duplicates by
    /// `message_id`). Once a message cannot be sent (the connection is lost, the broker
    /// closed the channel), every later message of the batch gets an error and is not sent,
    /// so nothing after a failure is published ahead of it: publish from the first failure
    /// again (after [`Self::reconnect`] for [`AmqpError::Unavailable`]). When the broker
    /// closes the channel (a 404), the confirmations still pending on it are errors too,
    /// even for messages it had routed.
    ///
    /// Batches run one at a time. That, and matching each returned message to the message
    /// that was published (exchange, routing key, `message_id`, body), makes
    /// [`Outcome::Returned`] exact: lapin hands a return to whichever confirmation of a
    /// multiple-ack it resolves first, which is not necessarily the message returned.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Vec<Result<Outcome>> {
        let _batch = self.batch.lock().await;
        // One channel for the whole batch: if the broker closes it (a 404), the rest of the
        // batch fails instead of going out on a new channel ahead of the failed messages.
        let (channel, conn) = match self.channel().await {
            Ok(c) => c,
            Err(e) => return messages.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut results: Vec<Option<Result<Raw>>> = (0..messages.len()).map(|_| None).collect();
        let mut pending: VecDeque<(usize, PublisherConfirm)> = VecDeque::new();
        let mut failed: Option<AmqpError> = None;
        for (i, message) in messages.iter().enumerate() {
            if let Some(err) = &failed {
                results[i] = Some(Err(err.clone()));
                continue;
            }
            if pending.len() >= self.options.window {
                let (j, confirm) = pending.pop_front().expect("window is not empty");
                results[j] = Some(self.settle(confirm.await));
            }
            match self.send(&channel, &conn, message).await {
                Ok(confirm) => {
                    pending.push_back((i, confirm));
                    let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    self.max_in_flight.fetch_max(n, Ordering::Relaxed);
                }
                Err(err) => {
                    if !matches!(err, AmqpError::Config { .. }) {
                        failed = Some(err.clone());
                    }
                    results[i] = Some(Err(err));
                }
            }
        }
        while let Some((j, confirm)) = pending.pop_front() {
            results[j] = Some(self.settle(confirm.await));
        }
        reconcile(
            messages,
            results
                .into_iter()
                .map(|r| r.expect("every message settled")),
        )
    }

    fn settle(&self, res: lapin::Result<Confirmation>) -> Result<Raw> {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match res {
            Ok(Confirmation::Ack(ret)) => Ok(Raw { ack: true, ret }),
            Ok(Confirmation::Nack(ret)) => Ok(Raw { ack: false, ret }),
            Ok(Confirmation::NotRequested) => Err(AmqpError::Client {
                reason: "the channel is not in confirm mode: the publish has no confirmation"
                    .into(),
            }),
            Err(e) => Err(self.config.error(&e)),
        }
    }

    /// Waits for the batch in flight (if any), then closes the connection.
    pub async fn close(&self) -> Result<()> {
        let _batch = self.batch.lock().await;
        if let Some(link) = self.link.lock().await.take() {
            link.conn
                .close(200, "closed".into())
                .await
                .map_err(|e| self.config.error(&e))?;
        }
        Ok(())
    }
}
