//! Looking into a queue from outside a consumer: count, browse without acking, ack one
//! by one, purge. What queue tooling (dead-letter commands) needs.

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;

use crate::config::{short, AmqpConfig};
use crate::error::{AmqpError, Result};
use crate::message::IncomingMessage;

/// A message taken from a queue by [`QueueBrowser::get`], not acked yet: it stays the
/// browser's until [`QueueBrowser::ack`] or [`QueueBrowser::requeue_all`] (or the browser
/// closes, which gives it back to the queue).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Browsed {
    /// The message.
    pub message: IncomingMessage,
    /// Its delivery tag on the browser's channel.
    pub delivery_tag: u64,
}

/// One connection and channel for looking into queues: messages taken with
/// [`Self::get`] stay unacked (the broker redelivers them to nobody else meanwhile) until
/// acked one by one or all given back in their original order.
pub struct QueueBrowser {
    config: AmqpConfig,
    conn: lapin::Connection,
    channel: lapin::Channel,
}

impl std::fmt::Debug for QueueBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBrowser")
            .field("config", &self.config)
            .finish()
    }
}

impl QueueBrowser {
    /// Connects (connection name `<name>/<role>`).
    pub async fn connect(config: AmqpConfig, role: &str) -> Result<Self> {
        let conn = config.connect(role).await?;
        let channel = conn.create_channel().await.map_err(|e| config.error(&e))?;
        Ok(QueueBrowser {
            config,
            conn,
            channel,
        })
    }

    /// Declares `queue` durable with no arguments if it does not exist (as django-cqrs
    /// declares its queues), takes it as it is if it does, and returns how many messages
    /// it holds ready.
    pub async fn declare(&mut self, queue: &str) -> Result<u32> {
        let name = short("queue", queue)?;
        match self
            .channel
            .queue_declare(
                name.clone(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
        {
            Ok(q) => Ok(q.message_count()),
            Err(e) => match self.config.error(&e) {
                // Declared with other arguments (failover): the channel is closed; look
                // at the queue as it is on a new one.
                AmqpError::Channel { code: 406, .. } => {
                    self.channel = self
                        .conn
                        .create_channel()
                        .await
                        .map_err(|e| self.config.error(&e))?;
                    self.message_count(queue).await
                }
                other => Err(other),
            },
        }
    }

    /// How many messages `queue` holds ready (not counting the ones this browser holds).
    /// [`AmqpError::NotFound`] when there is no such queue.
    pub async fn message_count(&self, queue: &str) -> Result<u32> {
        self.channel
            .queue_declare(
                short("queue", queue)?,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .map_err(|e| self.config.error(&e))
    }

    /// Takes the next ready message of `queue` without acking it; `None` when there is
    /// none.
    pub async fn get(&self, queue: &str) -> Result<Option<Browsed>> {
        let got = self
            .channel
            .basic_get(short("queue", queue)?, BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| self.config.error(&e))?;
        Ok(got.map(|mut m| Browsed {
            delivery_tag: m.delivery.delivery_tag,
            message: IncomingMessage::from_delivery(&mut m.delivery),
        }))
    }

    /// Acks one message taken with [`Self::get`]: it leaves its queue for good.
    pub async fn ack(&self, delivery_tag: u64) -> Result<()> {
        self.channel
            .basic_ack(delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.config.error(&e))
    }

    /// Gives every message still held back to its queue, in its original place.
    pub async fn requeue_all(&self) -> Result<()> {
        self.channel
            .basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(|e| self.config.error(&e))
    }

    /// Removes every ready message of `queue`; returns how many.
    pub async fn purge(&self, queue: &str) -> Result<u32> {
        self.channel
            .queue_purge(short("queue", queue)?, QueuePurgeOptions::default())
            .await
            .map_err(|e| self.config.error(&e))
    }

    /// Closes the connection; messages still held go back to their queues.
    pub async fn close(self) -> Result<()> {
        self.conn
            .close(200, "done".into())
            .await
            .map_err(|e| self.config.error(&e))
    }
}
