//! A datafile, parsed and indexed; when it is accepted, every flag and experiment is decided for
//! a few users (with and without attributes, every decide option), so index references the parser
//! let through are exercised by the decision code too.
#![no_main]

use bucketd::core::{DecideOptions, Decider, ProjectConfig, UserContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = ProjectConfig::parse(data) else {
        return;
    };
    let mut attributes = serde_json::Map::new();
    attributes.insert("device".into(), "iphone".into());
    attributes.insert("age".into(), 31.into());
    attributes.insert("vip".into(), true.into());
    let users = [
        UserContext::new("user-1", serde_json::Map::new()),
        UserContext::new("user-2", attributes),
    ];
    let every = DecideOptions {
        enabled_flags_only: true,
        include_reasons: true,
        exclude_variables: true,
        ..DecideOptions::default()
    };
    let mut stamp = || (String::new(), 0u64);
    for user in &users {
        let decider = Decider::new(&config, user).with_reasons(true);
        let _ = decider.decide(None, DecideOptions::default(), None, &mut stamp);
        let _ = decider.decide(None, every, None, &mut stamp);
        for (idx, _) in config.experiments_in_order() {
            let _ = decider.variation(idx, None);
        }
    }
});
