//! The experiment-decision path (audiences, group and experiment bucketing) must not touch the
//! heap: a counting allocator watches this thread while fixture users are decided.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

use bucketd::core::{Decider, ProjectConfig, UserContext};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.with(Cell::get) {
            ALLOCATIONS.with(|c| c.set(c.get() + 1));
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn experiment_decisions_do_not_allocate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fixtures");
    let config =
        ProjectConfig::parse(&std::fs::read(format!("{dir}/realistic.json")).unwrap()).unwrap();
    let users: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/users.json")).unwrap()).unwrap();
    let users: Vec<UserContext> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            UserContext::new(
                u["user_id"].as_str().unwrap(),
                u["attributes"].as_object().unwrap().clone(),
            )
        })
        .collect();
    let experiments: Vec<usize> = config.experiments_in_order().map(|(i, _)| i).collect();
    let mut bucketed = 0usize;
    WATCHING.with(|w| w.set(true));
    for user in &users {
        for &e in &experiments {
            let d = Decider::new(&config, user);
            if d.variation(e, None).decision.variation.is_some() {
                bucketed += 1;
            }
        }
    }
    WATCHING.with(|w| w.set(false));
    let allocations = ALLOCATIONS.with(Cell::get);
    assert!(
        bucketed > 1000,
        "the fixture must exercise bucketing, got {bucketed} variations"
    );
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations on the decision path"
    );
}
