//! The `/bucketer` `a` parameter (a JSON object or the classic `k:v,k:"v"` list): parsed or
//! refused with an error, and never more attributes than the limit.
#![no_main]

use bucketd::http::params::parse_attributes;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(attributes) = parse_attributes(text, LIMIT) {
        assert!(attributes.len() <= LIMIT, "limit exceeded: {}", attributes.len());
    }
});
