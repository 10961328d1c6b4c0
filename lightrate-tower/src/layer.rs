//! [`LightRateLayer`]: the configuration, shared by every service it makes.

use std::sync::Arc;

use lightrate_core::web::adapter::RequestPolicy;
use lightrate_core::Limiter;
use tower::Layer;

use crate::request::TowerRequest;
use crate::service::LightRateService;

/// Rate limiting for axum and any tower stack: identifies the user, picks the target (the
/// route's operation, else method + path), asks the [`Limiter`], and answers 429 with
/// `Retry-After` without calling the inner service when it says no.
///
/// Cheap to clone; clones share the limiter and the declared operations. See the crate docs
/// for a full example.
#[derive(Clone)]
pub struct LightRateLayer {
    policy: Arc<RequestPolicy<TowerRequest>>,
}

impl LightRateLayer {
    /// A layer asking `limiter`. By default the user is the client's IP address; see
    /// [`identify`](Self::identify).
    pub fn new(limiter: Limiter) -> Self {
        LightRateLayer {
            policy: Arc::new(RequestPolicy::new(limiter)),
        }
    }
}

lightrate_core::request_policy_options! {
    type: LightRateLayer,
    view: TowerRequest,
    method: http::Method => |method: &http::Method| Some(method.clone()),
    reads_decision: "`Extension<Decision>` in an axum handler",
    template: "axum's route template (`MatchedPath`, `/items/{id}`)",
    path: "as the request's URI has it",
    route: "as given to `Router::route`",
}

impl<S> Layer<S> for LightRateLayer {
    type Service = LightRateService<S>;

    fn layer(&self, inner: S) -> LightRateService<S> {
        LightRateService::new(inner, self.policy.clone())
    }
}
