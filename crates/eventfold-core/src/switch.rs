//! A scoped off switch by name: what eventfold-changes (nameko change events) and
//! eventfold-cqrs (django-cqrs master messages) use to stop recording messages while a
//! test, or a data migration, holds a guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    all_off: usize,
    names_off: HashMap<String, usize>,
}

/// Off for everything, or for some names, while guards live. Guards nest and overlap: a
/// name is on again once every guard that covers it has dropped. Cheap to clone; clones
/// share the state.
#[derive(Debug, Clone, Default)]
pub struct OffSwitch {
    counts: Arc<Mutex<Counts>>,
}

impl OffSwitch {
    /// A switch that is on for every name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `name` is on: no guard holds everything or `name` off.
    pub fn is_on(&self, name: &str) -> bool {
        let counts = self.lock();
        counts.all_off == 0 && counts.names_off.get(name).is_none_or(|&n| n == 0)
    }

    /// Off for every name while the guard lives.
    pub fn off_all(&self) -> OffGuard {
        self.lock().all_off += 1;
        OffGuard {
            counts: Arc::clone(&self.counts),
            names: None,
        }
    }

    /// Off for `names` while the guard lives.
    pub fn off_for(&self, names: &[&str]) -> OffGuard {
        let mut counts = self.lock();
        for name in names {
            *counts.names_off.entry((*name).to_owned()).or_default() += 1;
        }
        OffGuard {
            counts: Arc::clone(&self.counts),
            names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps an [`OffSwitch`] off (for everything or for its names) while it lives.
#[derive(Debug)]
#[must_use = "the switch is back on as soon as the guard drops"]
pub struct OffGuard {
    counts: Arc<Mutex<Counts>>,
    names: Option<Vec<String>>,
}

impl Drop for OffGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match &self.names {
            None => counts.all_off -= 1,
            Some(names) => {
                for name in names {
                    if let Some(n) = counts.names_off.get_mut(name) {
                        *n -= 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_overlap() {
        let switch = OffSwitch::new();
        assert!(switch.is_on("order"));
        let order = switch.off_for(&["order"]);
        let both = switch.off_for(&["order", "item"]);
        assert!(!switch.is_on("order") && !switch.is_on("item") && switch.is_on("book"));
        drop(both);
        assert!(!switch.is_on("order") && switch.is_on("item"));
        let all = switch.clone().off_all();
        assert!(!switch.is_on("book"));
        drop(order);
        assert!(!switch.is_on("order"));
        drop(all);
        assert!(switch.is_on("order") && switch.is_on("book"));
    }
}
