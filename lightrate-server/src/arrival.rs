//! When the request being handled started arriving: set by the accept loop, read by the
//! handler.

use std::time::Instant;

tokio::task_local! {
    /// When the request being handled started arriving: set around each request's service
    /// call (no allocation, unlike an extension), so that the handler reads the body against
    /// the same deadline as the headers.
    pub(crate) static REQUEST_STARTED: Instant;
}

/// When the request being handled started arriving, if it came through the accept loop.
pub(crate) fn request_started() -> Option<Instant> {
    REQUEST_STARTED.try_with(|started| *started).ok()
}
