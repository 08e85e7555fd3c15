//! Decision-core benchmark on a realistic project (benches/fixtures/realistic.json: 60
//! experiments, 24 flags, 30 audiences of 3-5 conditions) over 1,000 fixture users.
//!
//! `benches/sdk_baseline.py` times the official Python SDK on the same datafile and users; the
//! README reports both from one run of `benches/run.sh`.

#![allow(clippy::expect_used)] // a benchmark with a broken fixture should stop loudly
use bucketd::core::{DecideOptions, Decider, ProjectConfig, UserContext};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn fixture() -> (ProjectConfig, Vec<UserContext>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fixtures");
    let datafile = std::fs::read(format!("{dir}/realistic.json")).expect("fixture datafile");
    let config = ProjectConfig::parse(&datafile).expect("fixture parses");
    let users: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/users.json")).expect("fixture users"))
            .expect("users json");
    let users = users
        .as_array()
        .expect("user list")
        .iter()
        .map(|u| {
            UserContext::new(
                u["user_id"].as_str().expect("user id"),
                u["attributes"].as_object().cloned().unwrap_or_default(),
            )
        })
        .collect();
    (config, users)
}

fn decisions(c: &mut Criterion) {
    let (config, users) = fixture();
    let exp = config.experiment_by_key("exp_1").expect("exp_1 exists");
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("experiment_decision", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let d = Decider::new(&config, &users[i]);
            black_box(d.variation(black_box(exp), None))
        })
    });
    let options = DecideOptions {
        disable_decision_event: true,
        ..DecideOptions::default()
    };
    let mut stamp = || (String::new(), 0u64);
    g.bench_function("decide_all_24_flags", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let d = Decider::new(&config, &users[i]);
            black_box(d.decide(None, options, None, &mut stamp))
        })
    });
    g.bench_function("bucket_value_murmur3", |b| {
        b.iter(|| {
            bucketd::core::bucketing::bucket_value(
                black_box("user-123-456789012"),
                black_box("1000123"),
            )
        })
    });
    g.bench_function("parse_datafile_125k", |b| {
        b.iter(|| black_box(ProjectConfig::parse(black_box(config.datafile.as_bytes()))))
    });
    g.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
