//! What the tests and benchmarks of the lightrate workspace share (`publish = false`):
//!
//! - [`Unlimited`]: a token source that grants everything, so that what is measured is the
//!   limiter or the middleware alone; [`UnlimitedPerTarget`], the same with a rule of its own
//!   for each target (several limits on distinct rules);
//! - [`Recording`]: the embedded source with the demo rules, recording every call, and able
//!   to fail on demand;
//! - [`Counting`]: the system allocator, counting allocations per thread and live bytes, for
//!   the tests that prove a local hit allocates nothing, and [`new_buckets`], what a live
//!   bucket costs;
//! - [`expect`]: what the adapters' tests expect of the answers, written once for both;
//! - [`fuzzing`]: the bodies of the fuzz targets, for `cargo fuzz` and the corpus replay;
//! - [`Logs`]: what lightrate logs on the test's thread, captured;
//! - [`Scrape`]: Prometheus text parsed by a real parser, for the metrics tests;
//! - [`Listening`], [`demo_app`]: the demo apps and the server started as processes.

mod alloc;
mod buckets;
pub mod expect;
pub mod fuzzing;
mod logs;
mod process;
mod scrape;
mod sources;

pub use alloc::{allocations, live_bytes, Counting};
pub use buckets::{new_buckets, BucketCost};
pub use logs::Logs;
pub use process::{demo_app, example_binary, Listening};
pub use scrape::Scrape;
pub use sources::{Recording, Unlimited, UnlimitedPerTarget};
