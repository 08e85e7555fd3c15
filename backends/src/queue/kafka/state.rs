//! What a Kafka member tracks of the records it received: per partition, the records not yet
//! behind the committed offset, and the released ones to hand out again.

use crate::queue::Record;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Delivery state of the partitions this member owns.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub(super) partitions: HashMap<i32, PartitionTrack>,
    /// Released records, handed out again before new ones.
    pub(super) redeliver: VecDeque<(i32, i64)>,
}

#[derive(Debug, Default)]
pub(super) struct PartitionTrack {
    /// Delivered records not yet behind the committed position, by offset.
    pub(super) pending: BTreeMap<i64, Pending>,
    /// Offset to commit: one past the last record of the contiguous acked prefix.
    pub(super) ack_through: Option<i64>,
    /// Offset last committed by this member.
    pub(super) committed: Option<i64>,
}

#[derive(Debug)]
pub(super) struct Pending {
    /// Kept until acked, for `release`.
    pub(super) record: Option<Record>,
    pub(super) released: bool,
}

impl PartitionTrack {
    /// Moves `ack_through` past every acked record at the head of `pending`.
    pub(super) fn advance(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().record.is_some() {
                break;
            }
            self.ack_through = Some(entry.key() + 1);
            entry.remove();
        }
    }
}

pub(super) fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // The tracker stays consistent between statements; a panic elsewhere at worst makes a
    // record be delivered twice.
    tracker.lock().unwrap_or_else(|p| p.into_inner())
}
