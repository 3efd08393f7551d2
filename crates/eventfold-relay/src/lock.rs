//! The leader lock: an exclusive queue that only one connection can hold.

use eventfold_amqp::AmqpError;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;

/// Where the lock lives, and how to reach the broker for it.
#[derive(Clone)]
pub(crate) struct LockTarget {
    pub(crate) uri: AMQPUri,
    pub(crate) password: String,
    pub(crate) endpoint: String,
    pub(crate) connection_name: String,
    pub(crate) queue: String,
}

/// A connection that holds (or tries to hold) the lock queue.
pub(crate) struct Lock {
    target: LockTarget,
    conn: Option<lapin::Connection>,
    channel: Option<lapin::Channel>,
}

impl Lock {
    pub(crate) fn new(target: LockTarget) -> Self {
        Lock {
            target,
            conn: None,
            channel: None,
        }
    }

    fn error(&self, e: &lapin::Error) -> AmqpError {
        AmqpError::Unavailable {
            endpoint: self.target.endpoint.clone(),
            reason: crate::scrub(&e.to_string(), &self.target.password),
        }
    }

    /// Whether the lock is held on a live connection.
    pub(crate) fn held(&self) -> bool {
        self.channel.is_some() && self.conn.as_ref().is_some_and(|c| c.status().connected())
    }

    /// Tries to take the lock: `Ok(true)` held, `Ok(false)` another connection holds it
    /// (405 `RESOURCE_LOCKED`). Returns whether a new connection was opened too.
    pub(crate) async fn try_acquire(&mut self) -> Result<(bool, bool), AmqpError> {
        if self.held() {
            return Ok((true, false));
        }
        self.channel = None;
        let mut opened = false;
        if !self.conn.as_ref().is_some_and(|c| c.status().connected()) {
            self.conn = None;
            let props = lapin::ConnectionProperties::default()
                .with_connection_name(self.target.connection_name.clone().into());
            let conn = lapin::Connection::connect_uri(self.target.uri.clone(), props)
                .await
                .map_err(|e| self.error(&e))?;
            self.conn = Some(conn);
            opened = true;
        }
        let conn = self.conn.as_ref().expect("connected above");
        let channel = conn.create_channel().await.map_err(|e| self.error(&e))?;
        let declared = channel
            .queue_declare(
                self.target.queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    durable: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                self.channel = Some(channel);
                Ok((true, opened))
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(
                        amqp.kind(),
                        AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
                    ) =>
                {
                    Ok((false, opened))
                }
                _ => Err(self.error(&e)),
            },
        }
    }

    /// Gives the lock up (closes the connection: the broker deletes the queue).
    pub(crate) async fn release(&mut self) {
        self.channel = None;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close(200, "relay stopped".into()).await;
        }
    }
}
