//! What the disk queue keeps in memory: delivery positions and acked-record bitmaps.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// A record's place: (batch number, index in the batch).
pub(super) type Pos = (u64, u32);

/// What only this process knows: the delivery positions.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The number the next published batch gets.
    pub(super) next_batch: u64,
    /// Records at or after this position were never received by this process.
    pub(super) cursor: Pos,
    /// Batches read since the start and not yet deleted: their size and acked records.
    pub(super) open: BTreeMap<u64, OpenBatch>,
    /// Received and neither acked nor released.
    pub(super) in_flight: HashSet<Pos>,
    /// Released: to be received again before anything new.
    pub(super) released: BTreeSet<Pos>,
    /// Records stored and not acked.
    pub(super) unacked: u64,
}

/// A batch this process has read.
#[derive(Debug)]
pub(super) struct OpenBatch {
    pub(super) len: u32,
    /// Its accounted bytes, freed when it is deleted.
    pub(super) bytes: u64,
    pub(super) acked: Bitmap,
}

/// One bit per record of a batch.
#[derive(Debug, Clone)]
pub(super) struct Bitmap {
    pub(super) bits: Vec<u8>,
    pub(super) set: u32,
}

impl Bitmap {
    pub(super) fn new(len: u32) -> Self {
        Self {
            bits: vec![0; (len as usize).div_ceil(8)],
            set: 0,
        }
    }

    pub(super) fn from_bytes(len: u32, bytes: &[u8]) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            if bytes
                .get(i as usize / 8)
                .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
            {
                b.insert(i);
            }
        }
        b
    }

    pub(super) fn contains(&self, i: u32) -> bool {
        self.bits
            .get(i as usize / 8)
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// Sets bit `i`; false when it was set already (or out of range).
    pub(super) fn insert(&mut self, i: u32) -> bool {
        match self.bits.get_mut(i as usize / 8) {
            Some(byte) if *byte & (1 << (i % 8)) == 0 => {
                *byte |= 1 << (i % 8);
                self.set += 1;
                true
            }
            _ => false,
        }
    }
}
