//! Audience conditions against user attributes: the input is `conditions NUL attributes`, both
//! JSON. Compiling must accept anything JSON; evaluation must answer (true, false or unknown).
#![no_main]

use bucketd::core::audience::Audience;
use bucketd::core::UserContext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (left, right) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(conditions) = serde_json::from_slice::<serde_json::Value>(left) else {
        return;
    };
    let attributes = match serde_json::from_slice::<serde_json::Value>(right) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let text = String::from_utf8_lossy(left).into_owned();
    let audience = Audience::compile("1".into(), "a".into(), text, &conditions);
    let _ = audience.evaluate(&UserContext::new("u", attributes));
});
