//! The stored form of one `publish`: `[count: u32 LE]` followed by the records in the shared
//! frame format ([`crate::frame`]).

use super::BACKEND;
use crate::frame::{self, Frames};
use crate::queue::Record;
use crate::BackendError;

/// Packs records into one batch value.
pub(super) fn encode_batch(records: &[Record]) -> Result<Vec<u8>, BackendError> {
    let size: usize = records.iter().map(frame::framed_len).sum();
    let count = u32::try_from(records.len())
        .map_err(|_| BackendError::fatal(BACKEND, "batch longer than 4 GiB"))?;
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&count.to_le_bytes());
    for r in records {
        frame::put(&mut out, r)
            .map_err(|_| BackendError::fatal(BACKEND, "record field longer than 4 GiB"))?;
    }
    Ok(out)
}

pub(super) fn corrupt(batch: u64) -> BackendError {
    BackendError::fatal(BACKEND, format!("batch {batch} is corrupt"))
}

/// The record count in a batch's header.
pub(super) fn batch_len(batch: u64, blob: &[u8]) -> Result<u32, BackendError> {
    let (n, _) = blob
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(batch))?;
    Ok(u32::from_le_bytes(*n))
}

/// One record of a batch as stored: (index, key, value).
pub(super) type RawRecord<'a> = (u32, &'a [u8], &'a [u8]);

/// Walks the records of a batch.
pub(super) struct BatchReader<'a> {
    batch: u64,
    frames: Frames<'a>,
    index: u32,
    len: u32,
}

impl<'a> BatchReader<'a> {
    pub(super) fn new(batch: u64, blob: &'a [u8]) -> Result<Self, BackendError> {
        let len = batch_len(batch, blob)?;
        Ok(Self {
            batch,
            frames: Frames::new(&blob[4..]),
            index: 0,
            len,
        })
    }

    /// The next record, or `None` after the last.
    pub(super) fn next_record(&mut self) -> Result<Option<RawRecord<'a>>, BackendError> {
        if self.index >= self.len {
            return Ok(None);
        }
        let (key, value) = self.frames.next_frame().map_err(|_| corrupt(self.batch))?;
        let i = self.index;
        self.index += 1;
        Ok(Some((i, key, value)))
    }
}
