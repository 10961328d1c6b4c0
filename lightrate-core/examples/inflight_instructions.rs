//! Runs N local in-flight acquires and releases, for counting instructions per pair with
//! callgrind (as `hit_instructions` does for a hit):
//!
//! ```text
//! cargo build --release -p lightrate-core --example inflight_instructions
//! valgrind --tool=callgrind target/release/examples/inflight_instructions 100000
//! valgrind --tool=callgrind target/release/examples/inflight_instructions 300000
//! # (difference of the two totals) / 200000 = instructions per acquire + release
//! ```
//!
//! `... 100000 many [users]` takes slots of 10 000 identifiers (or `users`) in turn instead
//! of one; `... 100000 held` holds one slot of the identifier throughout (the count never
//! returns to 0). In `many` mode the map's seeds (random per run) change how long its probes
//! are, by a few instructions: compare 100000 with 1100000 (/ 1000000) there, a few runs.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use lightrate_core::InFlight;
use std::hint::black_box;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1_000_000);
    let mode = std::env::args().nth(2);
    let cap = InFlight::new(64);
    let users: Vec<String> = match mode.as_deref() {
        Some("many") => {
            let count: usize = std::env::args()
                .nth(3)
                .map(|s| s.parse().unwrap())
                .unwrap_or(10_000);
            (0..count).map(|i| format!("user-{i:08}")).collect()
        }
        _ => vec!["user-1".to_owned()],
    };
    // Every identifier has its entry before the count starts; the first is then found in the
    // map twice in a row, which makes it this thread's memo (as a busy client's would be): in
    // `many` mode every other identifier is compared with it (same length, same first bytes)
    // and misses. (One call site of the cap here, one in the loop: each more makes the
    // compiler less likely to inline the cap into the loop.)
    let _held: Vec<_> = users
        .iter()
        .chain([&users[0], &users[0]])
        .map(|u| cap.try_acquire_local(u).unwrap().into_slot().unwrap())
        .collect();
    let _held = if mode.as_deref() == Some("held") {
        _held
    } else {
        drop(_held);
        Vec::new()
    };
    let mut taken = 0u64;
    for i in 0..n {
        let user = &users[i % users.len()];
        if let Some(slot) = cap.try_acquire_local(black_box(user)).unwrap().into_slot() {
            taken += 1;
            drop(black_box(slot));
        }
    }
    println!("{taken}");
}
