//! Fuzz target `server_request`: see `lightrate_server::fuzzing::consume_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lightrate_server::fuzzing::consume_request(data));
