//! End-to-end tests over real sockets on 127.0.0.1:0.
#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

mod client;
mod server;
mod support;
