//! Fuzz target `rules_toml`: see `lightrate_testing::fuzzing::rules_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lightrate_testing::fuzzing::rules_toml(data));
