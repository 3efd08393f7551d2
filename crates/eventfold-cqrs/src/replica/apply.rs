//! django-cqrs's revision rules (`ReplicaManager.save_instance` / `update_instance` /
//! `delete_instance`), applied to one message inside the caller's transaction.

use eventfold_core::{BoxError, Transaction};

use super::model::{Change, Rejected, ReplicaModels};
use crate::wire::{CqrsMessage, SignalType};

/// What applying one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// There was no row: created (SAVE or SYNC, whatever the revision).
    Created {
        /// The message was a SYNC.
        sync: bool,
    },
    /// The row was updated.
    Updated {
        /// The message was a SYNC.
        sync: bool,
        /// The revision stored before.
        stored: i64,
        /// The message's revision.
        received: i64,
    },
    /// A SAVE older than the stored revision: not applied ("Wrong CQRS sync order").
    Stale {
        /// The revision stored.
        stored: i64,
        /// The message's revision.
        received: i64,
    },
    /// A SAVE of the stored revision: not applied ("Received duplicate CQRS data").
    Duplicate {
        /// The revision, stored and received.
        revision: i64,
    },
    /// A DELETE: the row of the pk is gone (if there was one).
    Deleted,
}

impl Applied {
    /// Whether a hook wrote something.
    pub fn is_applied(&self) -> bool {
        !matches!(self, Applied::Stale { .. } | Applied::Duplicate { .. })
    }

    /// For an applied SAVE, how many revisions were skipped (`received - stored - 1`,
    /// django-cqrs's "Lost or filtered out N CQRS packages"); 0 otherwise.
    pub fn lost(&self) -> i64 {
        match *self {
            Applied::Updated {
                sync: false,
                stored,
                received,
            } => (received - stored - 1).max(0),
            _ => 0,
        }
    }

    /// A SYNC that took the row back to an older revision ("CQRS revision downgrade on
    /// sync", applied all the same).
    pub fn is_sync_downgrade(&self) -> bool {
        matches!(*self, Applied::Updated { sync: true, stored, received } if received < stored)
    }
}

/// Why a message could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// No model has the message's `cqrs_id` (dead-lettered at once).
    #[error("unknown cqrs_id {0:?}")]
    UnknownCqrsId(String),
    /// A SAVE or SYNC whose `instance_data` has no integer `cqrs_revision` (dead-lettered
    /// at once).
    #[error("`instance_data.cqrs_revision` is missing or not an integer")]
    NoRevision,
    /// A hook said the message can never be applied ([`Rejected`]; dead-lettered at once).
    #[error("rejected by the model: {0}")]
    Rejected(String),
    /// A hook or the database failed (retried).
    #[error("{0}")]
    Failed(#[source] BoxError),
}

impl ApplyError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ApplyError::Failed(_))
    }

    fn from_hook(e: BoxError) -> Self {
        match e.downcast::<Rejected>() {
            Ok(rejected) => ApplyError::Rejected(rejected.0),
            Err(e) => ApplyError::Failed(e),
        }
    }
}

/// Applies `message` to its model in `tx` by django-cqrs's rules:
///
/// | stored \ message | SAVE | SYNC |
/// |---|---|---|
/// | no row | created | created |
/// | older than the message | updated (a gap > 1 is [`Applied::lost`]) | updated |
/// | same revision | [`Applied::Duplicate`], not applied | updated |
/// | newer than the message | [`Applied::Stale`], not applied | updated ([`Applied::is_sync_downgrade`]) |
///
/// A DELETE deletes by pk with no revision check. Nothing is committed here: the caller
/// owns `tx`. Used by the consumer and by anything that loads django-cqrs messages
/// (a `cqrs_bulk_load` dump, say).
pub async fn apply_message(
    models: &ReplicaModels,
    tx: &mut Transaction,
    message: &CqrsMessage,
) -> Result<Applied, ApplyError> {
    let model = models
        .get(&message.cqrs_id)
        .ok_or_else(|| ApplyError::UnknownCqrsId(message.cqrs_id.clone()))?;
    if message.signal_type == SignalType::Delete {
        let change = Change::new(message, &message.instance_data, None);
        model
            .delete(tx, &change)
            .await
            .map_err(ApplyError::from_hook)?;
        return Ok(Applied::Deleted);
    }
    let received = message.revision().ok_or(ApplyError::NoRevision)?;
    let sync = message.signal_type == SignalType::Sync;
    let stored = model
        .stored_revision(tx, &message.instance_pk)
        .await
        .map_err(ApplyError::from_hook)?;
    let data = model.map_fields(&message.instance_data);
    let change = Change::new(message, &data, stored);
    let Some(stored) = stored else {
        model
            .create(tx, &change)
            .await
            .map_err(ApplyError::from_hook)?;
        return Ok(Applied::Created { sync });
    };
    if !sync && stored > received {
        return Ok(Applied::Stale { stored, received });
    }
    if !sync && stored == received {
        return Ok(Applied::Duplicate { revision: stored });
    }
    model
        .update(tx, &change)
        .await
        .map_err(ApplyError::from_hook)?;
    Ok(Applied::Updated {
        sync,
        stored,
        received,
    })
}
