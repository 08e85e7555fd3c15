//! A queue record as the flusher reads it back (from the disk queue, Kafka or SQS): decoded or
//! refused, and a decoded event encodes again to a record that decodes to the same event.
#![no_main]

use backends::Record;
use bucketd::pipeline::record::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let record = Record {
        key: "visitor".into(),
        value: data.to_vec(),
    };
    let Ok(event) = decode(&record) else {
        return;
    };
    let Ok(again) = encode(&event) else {
        return;
    };
    assert_eq!(decode(&again).ok(), Some(event), "round trip changed the event");
});
