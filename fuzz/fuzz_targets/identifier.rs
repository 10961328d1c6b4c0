//! Fuzz target `identifier`: see `lightrate_testing::fuzzing::identifier`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lightrate_testing::fuzzing::identifier(data));
