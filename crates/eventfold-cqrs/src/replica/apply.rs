//! django-cqrs's revision rules (`ReplicaManager.save_instance` / `update_instance` /
//! `delete_instance`), applied to one message inside the caller's transaction.

use std::collections::{HashMap, HashSet};

use eventfold_core::{BoxError, Transaction};
use serde_json::{Map, Value};

use super::model::{Change, Rejected, ReplicaModels, RowWrite, WriteKind};
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
    let stored = match message.signal_type {
        SignalType::Delete => None,
        _ => {
            message.revision().ok_or(ApplyError::NoRevision)?;
            model
                .stored_revision(tx, &message.instance_pk)
                .await
                .map_err(ApplyError::from_hook)?
        }
    };
    apply_known(models, tx, message, stored).await
}

/// [`apply_message`] with the stored revision already known (ignored for a DELETE).
async fn apply_known(
    models: &ReplicaModels,
    tx: &mut Transaction,
    message: &CqrsMessage,
    stored: Option<i64>,
) -> Result<Applied, ApplyError> {
    let model = models
        .get(&message.cqrs_id)
        .ok_or_else(|| ApplyError::UnknownCqrsId(message.cqrs_id.clone()))?;
    let applied = decide(message, stored)?;
    let result = match applied {
        Applied::Deleted => {
            let change = Change::new(message, &message.instance_data, None);
            model.delete(tx, &change).await
        }
        Applied::Created { .. } | Applied::Updated { .. } => {
            let data = model.map_fields(&message.instance_data);
            let change = Change::new(message, &data, stored);
            if matches!(applied, Applied::Created { .. }) {
                model.create(tx, &change).await
            } else {
                model.update(tx, &change).await
            }
        }
        Applied::Stale { .. } | Applied::Duplicate { .. } => Ok(()),
    };
    result.map_err(ApplyError::from_hook)?;
    Ok(applied)
}

/// What the revision rules make of `message` with `stored` the revision the replica
/// holds (ignored for a DELETE); writes nothing.
fn decide(message: &CqrsMessage, stored: Option<i64>) -> Result<Applied, ApplyError> {
    if message.signal_type == SignalType::Delete {
        return Ok(Applied::Deleted);
    }
    let received = message.revision().ok_or(ApplyError::NoRevision)?;
    let sync = message.signal_type == SignalType::Sync;
    let Some(stored) = stored else {
        return Ok(Applied::Created { sync });
    };
    if !sync && stored > received {
        return Ok(Applied::Stale { stored, received });
    }
    if !sync && stored == received {
        return Ok(Applied::Duplicate { revision: stored });
    }
    Ok(Applied::Updated {
        sync,
        stored,
        received,
    })
}

/// Applies `messages` in `tx` as [`apply_message`] applies each in turn, with the same
/// outcomes (one per message, in order: later messages of an instance see what earlier
/// ones did), but in a few statements: the stored revisions are read once per model
/// ([`ReplicaModel::stored_revisions`](super::ReplicaModel::stored_revisions)), and each model gets the batch's net writes at
/// once ([`ReplicaModel::write_batch`](super::ReplicaModel::write_batch); of several messages of one primary key the last
/// applied one wins). An error (an unknown `cqrs_id`, a SAVE without a revision, a
/// failing read or write) is the batch's: roll `tx` back, and apply the messages one by
/// one with [`apply_message`] to find the failing one. Nothing is committed here.
pub async fn apply_batch(
    models: &ReplicaModels,
    tx: &mut Transaction,
    messages: &[&CqrsMessage],
) -> Result<Vec<Applied>, ApplyError> {
    if tx.backend() == "postgres" && messages.len() > 1 {
        // A replica table often starts empty and fills from a backlog: a generic plan
        // made while it was small keeps seq-scanning it (the revision read's IN list)
        // until autovacuum analyzes it, a minute or more later (384 of 500 batches of a
        // 100,000-message backlog did, 120 ms each). A custom plan costs ~0.1 ms a batch.
        tx.execute("SET LOCAL plan_cache_mode = force_custom_plan", &[])
            .await
            .map_err(|e| ApplyError::Failed(e.into()))?;
    }
    let mut known = stored_revisions(models, tx, messages).await?;
    let mut outcomes = Vec::with_capacity(messages.len());
    // Per model, in order of first appearance: its net writes, as (kind, index of the
    // message that wins, revision stored before the write, messages folded in); `None`
    // once a later DELETE of the batch cancelled it.
    let mut by_model: Vec<(&str, Vec<Option<Pending>>)> = Vec::new();
    // (cqrs_id, pk) → where its pending DELETE and save are, (model slot, write slot).
    let mut slots: HashMap<(&str, String), RowSlots> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let key = (message.cqrs_id.as_str(), message.pk_text());
        let stored = known.get(&key).copied().flatten();
        let applied = decide(message, stored)?;
        outcomes.push(applied);
        let kind = match applied {
            Applied::Created { .. } => WriteKind::Create,
            Applied::Updated { .. } => WriteKind::Update,
            Applied::Deleted => WriteKind::Delete,
            Applied::Stale { .. } | Applied::Duplicate { .. } => continue,
        };
        // Later messages of the batch see what this one did.
        known.insert(
            key.clone(),
            (kind != WriteKind::Delete)
                .then(|| message.revision())
                .flatten(),
        );
        let model_slot = match by_model.iter().position(|(id, _)| *id == key.0) {
            Some(slot) => slot,
            None => {
                by_model.push((key.0, Vec::new()));
                by_model.len() - 1
            }
        };
        let writes = &mut by_model[model_slot].1;
        let row = slots.entry(key).or_default();
        if kind == WriteKind::Delete {
            // A save of the batch before it is undone by the delete: the delete stands
            // for it (the row may not exist before the batch; a missing row is fine).
            let folded = row
                .save
                .take()
                .and_then(|s| writes[s].take())
                .map_or(0, |p| p.messages);
            match row.delete.and_then(|d| writes[d].as_mut()) {
                Some(delete) => {
                    delete.message = i;
                    delete.messages += folded + 1;
                }
                None => {
                    row.delete = Some(writes.len());
                    writes.push(Some(Pending {
                        kind,
                        message: i,
                        stored_before: None,
                        messages: folded + 1,
                    }));
                }
            }
            continue;
        }
        match row.save.and_then(|s| writes[s].as_mut()) {
            Some(save) => {
                save.message = i;
                save.messages += 1;
            }
            None => {
                row.save = Some(writes.len());
                writes.push(Some(Pending {
                    kind,
                    message: i,
                    stored_before: stored,
                    messages: 1,
                }));
            }
        }
    }
    for (cqrs_id, pending) in by_model {
        let model = models
            .get(cqrs_id)
            .ok_or_else(|| ApplyError::UnknownCqrsId(cqrs_id.to_owned()))?;
        let pending: Vec<Pending> = pending.into_iter().flatten().collect();
        let data: Vec<Option<Map<String, Value>>> = pending
            .iter()
            .map(|p| {
                (p.kind != WriteKind::Delete)
                    .then(|| model.map_fields(&messages[p.message].instance_data))
            })
            .collect();
        let writes: Vec<RowWrite<'_>> = pending
            .iter()
            .zip(&data)
            .map(|(p, data)| {
                let message = messages[p.message];
                RowWrite {
                    kind: p.kind,
                    change: Change::new(
                        message,
                        data.as_ref().unwrap_or(&message.instance_data),
                        p.stored_before,
                    ),
                    messages: p.messages,
                }
            })
            .collect();
        model
            .write_batch(tx, &writes)
            .await
            .map_err(ApplyError::from_hook)?;
    }
    Ok(outcomes)
}

/// A net write of [`apply_batch`] before its data is mapped.
struct Pending {
    kind: WriteKind,
    /// The index of the message that wins (the last applied one).
    message: usize,
    stored_before: Option<i64>,
    messages: usize,
}

/// Where one row's pending writes are in its model's list.
#[derive(Default)]
struct RowSlots {
    delete: Option<usize>,
    save: Option<usize>,
}

/// The stored revisions of the batch's instances, one query per model (when the model
/// answers many pks at once), keyed by (`cqrs_id`, pk text).
async fn stored_revisions<'m>(
    models: &ReplicaModels,
    tx: &mut Transaction,
    messages: &[&'m CqrsMessage],
) -> Result<HashMap<(&'m str, String), Option<i64>>, ApplyError> {
    let mut wanted: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut seen = HashSet::new();
    // A DELETE needs no revision.
    let saves = messages
        .iter()
        .filter(|m| m.signal_type != SignalType::Delete);
    for m in saves {
        if seen.insert((m.cqrs_id.as_str(), m.pk_text())) {
            wanted.entry(&m.cqrs_id).or_default().push(&m.instance_pk);
        }
    }
    let mut known = HashMap::with_capacity(seen.len());
    for (cqrs_id, pks) in wanted {
        let model = models
            .get(cqrs_id)
            .ok_or_else(|| ApplyError::UnknownCqrsId(cqrs_id.to_owned()))?;
        let revisions = match model
            .stored_revisions(tx, &pks)
            .await
            .map_err(ApplyError::from_hook)?
        {
            Some(revisions) => revisions,
            None => {
                let mut one_by_one = Vec::with_capacity(pks.len());
                for pk in &pks {
                    let revision = model.stored_revision(tx, pk).await;
                    one_by_one.push(revision.map_err(ApplyError::from_hook)?);
                }
                one_by_one
            }
        };
        if revisions.len() != pks.len() {
            let reason = format!(
                "{cqrs_id}: stored_revisions gave {} revisions for {} pks",
                revisions.len(),
                pks.len()
            );
            return Err(ApplyError::Failed(reason.into()));
        }
        for (pk, revision) in pks.into_iter().zip(revisions) {
            let text = match pk {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            known.insert((cqrs_id, text), revision);
        }
    }
    Ok(known)
}
