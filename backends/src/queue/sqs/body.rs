//! Packing records into SQS message bodies: base64 of `[version]` + shared frames.

use super::BACKEND;
use crate::frame::{self, Frames};
use crate::queue::Record;
use crate::BackendError;
use base64::Engine as _;

/// SQS limit on a message body, and on the sum of the bodies in one batch call.
pub(super) const MAX_BODY_BYTES: usize = 256 * 1024;
/// Raw bytes that still fit a body once base64-encoded (4 chars per 3 bytes).
const MAX_RAW_BYTES: usize = MAX_BODY_BYTES / 4 * 3;
const FORMAT_VERSION: u8 = 1;

/// Packs records into as few bodies as fit.
pub(super) fn pack(records: &[Record]) -> Result<Vec<String>, BackendError> {
    let mut bodies = Vec::new();
    let mut raw = vec![FORMAT_VERSION];
    for r in records {
        let framed = frame::framed_len(r);
        if 1 + framed > MAX_RAW_BYTES {
            return Err(BackendError::fatal(
                BACKEND,
                format!("record of {framed} bytes does not fit an SQS message"),
            ));
        }
        if raw.len() + framed > MAX_RAW_BYTES {
            bodies.push(base64::engine::general_purpose::STANDARD.encode(&raw));
            raw.truncate(1);
        }
        // Cannot fail: both lengths are below MAX_RAW_BYTES, checked above.
        frame::put(&mut raw, r).map_err(|_| BackendError::fatal(BACKEND, "record too long"))?;
    }
    if raw.len() > 1 {
        bodies.push(base64::engine::general_purpose::STANDARD.encode(&raw));
    }
    Ok(bodies)
}

/// Unpacks a body into its records; why not, when it is not a body this backend wrote.
pub(super) fn unpack(body: &str) -> Result<Vec<Record>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("not base64: {e}"))?;
    let Some((&version, rest)) = raw.split_first() else {
        return Err("empty body".into());
    };
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let mut frames = Frames::new(rest);
    let mut records = Vec::new();
    while !frames.is_empty() {
        let (key, value) = frames.next_frame().map_err(|_| "truncated".to_string())?;
        let key = std::str::from_utf8(key)
            .map_err(|_| "key not UTF-8".to_string())?
            .to_owned();
        records.push(Record {
            key,
            value: value.to_vec(),
        });
    }
    Ok(records)
}
