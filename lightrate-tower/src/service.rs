//! [`LightRateService`]: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use lightrate_core::web::adapter::{Plan, RequestPolicy, Stage};
use tower::Service;

use crate::future::ResponseFuture;
use crate::request::{TowerRequest, WholeRequest};

/// The service of [`LightRateLayer`](crate::LightRateLayer).
pub struct LightRateService<S> {
    inner: S,
    policy: Arc<RequestPolicy<TowerRequest>>,
}

impl<S: Clone> Clone for LightRateService<S> {
    fn clone(&self) -> Self {
        LightRateService {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LightRateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRateService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> LightRateService<S> {
    pub(crate) fn new(inner: S, policy: Arc<RequestPolicy<TowerRequest>>) -> Self {
        LightRateService { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LightRateService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<bytes::Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    // Not inlined into the caller's poll: there, building the future would take a copy of
    // it (BENCHMARKS.md, the tower layer, has what that copy costs).
    #[inline(never)]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The default configuration reads no more than the whole request shows: no split into
        // head and body (two copies of the head).
        let plan = if self.policy.is_simple() {
            self.policy
                .plan_simple::<WholeRequest<ReqBody>>(&mut request)
        } else {
            let (mut parts, body) = request.into_parts();
            let plan = self.policy.plan(&mut parts);
            request = Request::from_parts(parts, body);
            plan
        };
        // Each arm builds the future where it is returned: no copy of the inner future.
        match plan {
            Plan::Call(headers) => {
                ResponseFuture::new(Stage::inner(self.inner.call(request), headers))
            }
            Plan::Refused(answer) => ResponseFuture::new(Stage::answer(answer)),
            Plan::Check(check) => {
                // The service that was polled ready serves this request; a clone stays.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let call = (inner, request);
                ResponseFuture::new(Stage::checking(check, call))
            }
        }
    }
}
