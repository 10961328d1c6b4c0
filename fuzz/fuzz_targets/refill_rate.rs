//! Fuzz target `refill_rate`: see `lightrate_testing::fuzzing::refill_rate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lightrate_testing::fuzzing::refill_rate(data));
