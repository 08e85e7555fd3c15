//! What an SQS receiver keeps in memory: the messages it received, the fate of each of their
//! records, and what to do with a message once its fate is settled.

use crate::queue::Record;
use std::collections::{HashMap, VecDeque};

/// Messages received and not yet deleted or given back.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) next_id: u64,
    pub(super) messages: HashMap<u64, Message>,
    /// Records unpacked but not yet handed out: (message id, record index).
    pub(super) buffered: VecDeque<(u64, usize)>,
}

#[derive(Debug)]
pub(super) struct Message {
    pub(super) receipt: String,
    pub(super) records: Vec<(Record, Slot)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// Unpacked, waiting in `State::buffered`.
    Buffered,
    /// Handed to the caller.
    Out,
    Released,
    Acked,
}

/// What to do with a message that left `State`.
pub(super) enum Resolution {
    Delete {
        receipt: String,
    },
    /// Make visible again as it is.
    Reappear {
        receipt: String,
    },
    /// Send the unacked records as a new message, then delete the old one.
    Resend {
        receipt: String,
        records: Vec<Record>,
    },
}

impl Message {
    pub(super) fn resolution(&self) -> Option<Resolution> {
        let count = |s: Slot| self.records.iter().filter(|(_, slot)| *slot == s).count();
        let acked = count(Slot::Acked);
        if acked == self.records.len() {
            return Some(Resolution::Delete {
                receipt: self.receipt.clone(),
            });
        }
        if count(Slot::Out) > 0 || count(Slot::Released) == 0 {
            return None;
        }
        let receipt = self.receipt.clone();
        if acked == 0 {
            return Some(Resolution::Reappear { receipt });
        }
        let records = self
            .records
            .iter()
            .filter(|(_, s)| *s != Slot::Acked)
            .map(|(r, _)| r.clone())
            .collect();
        Some(Resolution::Resend { receipt, records })
    }
}

impl State {
    /// Takes the messages whose fate is settled among `ids` out of the state.
    pub(super) fn settle(&mut self, ids: impl IntoIterator<Item = u64>) -> Vec<Resolution> {
        let mut out = Vec::new();
        for id in ids {
            let Some(res) = self.messages.get(&id).and_then(Message::resolution) else {
                continue;
            };
            self.messages.remove(&id);
            self.buffered.retain(|(m, _)| *m != id);
            out.push(res);
        }
        out
    }
}
