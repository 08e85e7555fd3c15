//! Query strings and JSON request bodies as the HTTP layer reads them: the query parser and its
//! boolean-flag reading, and the body parser the `/v1/*` handlers share.
#![no_main]

use bucketd::http::params::{parse_json, Query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let query = Query::parse(Some(text));
        let _ = query.get("e");
        let _ = query.values("experimentKey");
        let _ = query.all("featureKey");
        let _ = query.flag("debug", false);
    }
    let _ = parse_json::<serde_json::Value>(data);
    let _ = parse_json::<std::collections::BTreeMap<String, serde_json::Value>>(data);
});
