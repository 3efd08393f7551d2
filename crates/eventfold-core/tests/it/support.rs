//! A small aggregate for the tests.

use eventfold_core::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub entries: Vec<i64>,
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TallyEvent {
    Opened { label: String },
    Added { amount: i64 },
    Reset,
}

impl Aggregate for Tally {
    const TYPE: &'static str = "Tally";
    type Id = uuid::Uuid;
    type Event = TallyEvent;

    fn apply(&mut self, event: &TallyEvent) {
        match event {
            TallyEvent::Opened { .. } => {}
            TallyEvent::Added { amount } => {
                self.entries.push(*amount);
                self.total += amount;
            }
            TallyEvent::Reset => {
                self.entries.clear();
                self.total = 0;
            }
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
