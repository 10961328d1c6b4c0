//! [`LightRateClient`]: the client of the hosted LightRate token API (or of any server that
//! speaks its protocol, such as `lightrate-server`).
//!
//! | file | what it holds |
//! |---|---|
//! | `builder.rs` | [`LightRateClient`], [`ClientBuilder`]: settings, validation, construction |
//! | `env.rs` | the settings from the `LIGHTRATE_*` environment variables |
//! | `transport.rs` | the HTTP side: one call, its retries within the deadline, reading answers |
//! | `local.rs` | the SDKs' local-bucket API over a [`Limiter`](crate::Limiter) |

mod builder;
mod env;
mod local;
mod transport;

pub use builder::{
    ClientBuilder, Configuration, LightRateClient, DEFAULT_API_TIMEOUT, DEFAULT_BASE_URL,
    DEFAULT_RETRY_ATTEMPTS,
};
pub use local::LocalBucketResponse;
