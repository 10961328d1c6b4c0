//! Fuzz target `ietf_fields`: see `lightrate_testing::fuzzing::ietf_fields`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lightrate_testing::fuzzing::ietf_fields(data));
