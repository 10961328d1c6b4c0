//! Fuzz target `consume_response`: see `lightrate_testing::fuzzing::consume_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lightrate_testing::fuzzing::consume_response(data));
