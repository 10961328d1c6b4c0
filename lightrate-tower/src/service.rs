//! [`LightRate`]: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use lightrate_core::web::{Plan, RequestPolicy, Stage};
use tower::Service;

use crate::future::ResponseFuture;
use crate::request::TowerRequest;

/// The service of [`LightRateLayer`](crate::LightRateLayer).
pub struct LightRate<S> {
    inner: S,
    policy: Arc<RequestPolicy<TowerRequest>>,
}

impl<S: Clone> Clone for LightRate<S> {
    fn clone(&self) -> Self {
        LightRate {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LightRate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> LightRate<S> {
    pub(crate) fn new(inner: S, policy: Arc<RequestPolicy<TowerRequest>>) -> Self {
        LightRate { inner, policy }
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LightRate<S>
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
    // it (counted with callgrind: 64 instructions a request).
    #[inline(never)]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        // Each arm builds the future where it is returned: no copy of the inner future.
        match self.policy.plan(&mut parts) {
            Plan::Call(headers) => ResponseFuture::new(Stage::inner(
                self.inner.call(Request::from_parts(parts, body)),
                headers,
            )),
            Plan::Refused(answer) => ResponseFuture::new(Stage::answer(answer)),
            Plan::Check(check) => {
                // The service that was polled ready serves this request; a clone stays.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let call = (inner, Request::from_parts(parts, body));
                ResponseFuture::new(Stage::checking(check, call))
            }
        }
    }
}
