//! The length-prefixed record frame shared by the queues that pack many records into one
//! stored value (a disk-queue batch, an SQS message body):
//! `[key length: u32 LE] [key] [value length: u32 LE] [value]`, frames back to back.
//!
//! Each queue adds its own header (the disk queue a record count, SQS a format version).

use crate::queue::Record;

/// Bytes a record takes framed.
pub(crate) fn framed_len(record: &Record) -> usize {
    8 + record.key.len() + record.value.len()
}

/// A field longer than a `u32` can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

/// Appends `record`, framed, to `out`.
pub(crate) fn put(out: &mut Vec<u8>, record: &Record) -> Result<(), TooLong> {
    let key = u32::try_from(record.key.len()).map_err(|_| TooLong)?;
    let value = u32::try_from(record.value.len()).map_err(|_| TooLong)?;
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(record.key.as_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(&record.value);
    Ok(())
}

/// Frames that end early or claim more bytes than follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

/// Reads frames off the front of a byte slice.
pub(crate) struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Frames starting at the first byte of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next frame's raw key and value.
    pub(crate) fn next_frame(&mut self) -> Result<(&'a [u8], &'a [u8]), Truncated> {
        let key = self.field()?;
        let value = self.field()?;
        Ok((key, value))
    }

    /// Splits a `[length: u32 LE][bytes]` field off the front.
    fn field(&mut self) -> Result<&'a [u8], Truncated> {
        let (len, tail) = self.rest.split_first_chunk::<4>().ok_or(Truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(Truncated);
        }
        let (field, tail) = tail.split_at(len);
        self.rest = tail;
        Ok(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: &[u8]) -> Record {
        Record {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn frames_round_trip_and_truncation_is_detected() {
        let records = [rec("a", b"1"), rec("", b""), rec("visitor", b"{\"x\":1}")];
        let mut out = Vec::new();
        for r in &records {
            put(&mut out, r).unwrap();
        }
        assert_eq!(out.len(), records.iter().map(framed_len).sum::<usize>());
        let mut frames = Frames::new(&out);
        for r in &records {
            let (k, v) = frames.next_frame().unwrap();
            assert_eq!((k, v), (r.key.as_bytes(), r.value.as_slice()));
        }
        assert!(frames.is_empty());
        assert_eq!(
            Frames::new(&out[..out.len() - 1]).next_frame().map(|_| ()),
            Ok(())
        );
        let mut cut = Frames::new(&out[..out.len() - 1]);
        cut.next_frame().unwrap();
        cut.next_frame().unwrap();
        assert_eq!(cut.next_frame(), Err(Truncated));
    }
}
