//! End-to-end tests of the demo apps (`examples/axum_app.rs`, `examples/actix_app.rs`) over
//! real sockets on 127.0.0.1:0, against the real `lightrate-server`: one suite, run for both.
#![allow(clippy::unwrap_used, unreachable_pub, dead_code, missing_docs)]

mod actix;
mod auth;
mod axum;
mod cost;
mod examples;
mod hot_key;
mod llm_client;
mod secrets;
mod several;
mod suite;
mod support;
mod typical_rules;
mod upstream;
