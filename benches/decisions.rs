//! Decision-core benchmark on a realistic project (benches/fixtures/realistic.json: 60
//! experiments, 24 flags, 30 audiences of 3-5 conditions) over 1,000 fixture users.
//!
//! `benches/sdk_baseline.py` times the official Python SDK on the same datafile and users; the
//! README reports both from one run of `benches/run.sh`.
//!
//! `decide_all_24_flags_5_global_holdouts` is the same decide-all on the fixture plus 5 running
//! global holdouts without audiences, each on 1% of the traffic: most users are evaluated
//! against all 5 and bucketed into none (then the flags decide as without holdouts), about 5%
//! are held by one (then every flag answers with its variation). The share held is printed.

#![allow(clippy::expect_used)] // a benchmark with a broken fixture should stop loudly
use bucketd::core::{DecideOptions, Decider, ProjectConfig, UserContext};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

/// The daemon's allocator (`src/main.rs`), so allocations cost here what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// The fixture datafile plus 5 global holdouts, each holding 1% of the traffic.
fn with_global_holdouts(config: &ProjectConfig) -> ProjectConfig {
    let mut df: serde_json::Value =
        serde_json::from_str(&config.datafile).expect("fixture datafile is JSON");
    df["holdouts"] = (1..=5)
        .map(|i| {
            serde_json::json!({"id": format!("90000{i}"), "key": format!("holdout_{i}"),
                "status": "Running", "audienceIds": [],
                "variations": [{"id": format!("91000{i}"), "key": "off", "featureEnabled": false}],
                "trafficAllocation": [{"entityId": format!("91000{i}"), "endOfRange": 100}]})
        })
        .collect();
    ProjectConfig::parse(df.to_string().as_bytes()).expect("fixture with holdouts parses")
}

fn decisions(c: &mut Criterion) {
    let (config, users) = fixture();
    let held_config = with_global_holdouts(&config);
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
    let held = users
        .iter()
        .filter(|u| {
            let d = Decider::new(&held_config, u).decide(None, options, None, &mut stamp);
            d.decision
                .first()
                .and_then(|d| d.rule_key.as_deref())
                .is_some_and(|k| k.starts_with("holdout_"))
        })
        .count();
    eprintln!(
        "5 global holdouts: {held} of {} fixture users held",
        users.len()
    );
    g.bench_function("decide_all_24_flags_5_global_holdouts", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let d = Decider::new(&held_config, &users[i]);
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

/// Decide-all and parsing on a big datafile (`BUCKETD_BENCH_DATAFILE`, e.g. the 1 MiB / 1,000-flag
/// one `benches/gen_big_datafile.py` writes; skipped when unset), over the fixture users.
fn big_datafile(c: &mut Criterion) {
    let Ok(path) = std::env::var("BUCKETD_BENCH_DATAFILE") else {
        return;
    };
    let (_, users) = fixture();
    let bytes = std::fs::read(&path).expect("BUCKETD_BENCH_DATAFILE is readable");
    let config = ProjectConfig::parse(&bytes).expect("big datafile parses");
    let options = DecideOptions {
        disable_decision_event: true,
        ..DecideOptions::default()
    };
    let mut stamp = || (String::new(), 0u64);
    let mut i = 0usize;
    let mut g = c.benchmark_group("big");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decide_all", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let d = Decider::new(&config, &users[i]);
            black_box(d.decide(None, options, None, &mut stamp))
        })
    });
    g.bench_function("parse_datafile", |b| {
        b.iter(|| black_box(ProjectConfig::parse(black_box(&bytes))))
    });
    g.finish();
}

/// A `decide` of one flag whose CMAB experiment is answered from the prediction cache: the first
/// pass, the cache lookup and the second pass (the cost a cached CMAB answer adds).
fn cmab_cache_hit(c: &mut Criterion) {
    use bucketd::core::{Attributes, ExternalInputs};
    use bucketd::service::cmab::{
        attributes_hash, cache_key, resolve, CacheOptions, CachedPrediction, CmabService,
        MemoryCache, PredictionCache, PredictionClient, RetryPolicy,
    };
    use std::sync::Arc;
    use std::time::Duration;
    let datafile = serde_json::json!({"version": "4", "projectId": "1", "accountId": "1",
        "revision": "1", "attributes": [{"id": "a1", "key": "country"}], "audiences": [],
        "events": [], "groups": [], "rollouts": [],
        "experiments": [{"id": "c1", "key": "cmab_exp", "status": "Running", "layerId": "l1",
            "audienceIds": [], "forcedVariations": {}, "trafficAllocation": [],
            "cmab": {"attributeIds": ["a1"], "trafficAllocation": 10000},
            "variations": [{"id": "v1", "key": "on", "featureEnabled": true},
                           {"id": "v2", "key": "off", "featureEnabled": false}]}],
        "featureFlags": [{"id": "f1", "key": "flag", "experimentIds": ["c1"], "rolloutId": "",
            "variables": []}]});
    let config = ProjectConfig::parse(datafile.to_string().as_bytes()).expect("bench datafile");
    let mut attrs = serde_json::Map::new();
    attrs.insert("country".into(), "nl".into());
    let user = UserContext::new("user-1", attrs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cache = Arc::new(MemoryCache::new(10_000, Duration::from_secs(1800)));
    let mut filtered = Attributes::new();
    filtered.insert("a1".into(), "nl".into());
    rt.block_on(cache.save(
        &cache_key("user-1", "c1"),
        CachedPrediction {
            attributes_hash: attributes_hash(&filtered),
            variation_id: "v1".into(),
            cmab_uuid: "00000000-0000-4000-8000-000000000000".into(),
        },
    ));
    let retry = RetryPolicy {
        max_retries: 1,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        multiplier: 2.0,
    };
    let client = PredictionClient::new("http://127.0.0.1:9/{}", Duration::from_secs(1), retry);
    let cmab = CmabService::new(client, cache);
    let options = DecideOptions {
        disable_decision_event: true,
        ..DecideOptions::default()
    };
    let mut stamp = || (String::new(), 0u64);
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decide_cmab_cache_hit", |b| {
        b.iter(|| {
            let outcome = rt.block_on(resolve(
                Some(&cmab),
                "user-1",
                CacheOptions::default(),
                |inputs: &ExternalInputs| {
                    Decider::new(&config, &user).with_inputs(inputs).decide(
                        Some(&["flag"]),
                        options,
                        None,
                        &mut stamp,
                    )
                },
            ));
            assert_eq!(outcome.decision[0].variation_key.as_deref(), Some("on"));
            black_box(outcome)
        })
    });
    g.finish();
}

criterion_group!(benches, decisions, cmab_cache_hit, big_datafile);
criterion_main!(benches);
