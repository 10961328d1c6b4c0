//! [`LightRateMiddleware`]: the service that [`LightRate`](crate::LightRate) wraps around
//! an app, a scope or a resource.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse};
use lightrate_core::web::adapter::{Plan, RequestPolicy, Stage};

use crate::convert::to_actix_response;
use crate::future::ResponseFuture;
use crate::request::ActixRequest;

/// The middleware service of [`LightRate`](crate::LightRate).
pub struct LightRateMiddleware<S> {
    service: Rc<S>,
    policy: Arc<RequestPolicy<ActixRequest>>,
}

impl<S> fmt::Debug for LightRateMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightRateMiddleware")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S> LightRateMiddleware<S> {
    pub(crate) fn new(service: Rc<S>, policy: Arc<RequestPolicy<ActixRequest>>) -> Self {
        LightRateMiddleware { service, policy }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

impl<S, B> Service<ServiceRequest> for LightRateMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = ResponseFuture<S>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        ResponseFuture::new(match self.policy.plan(&mut req) {
            Plan::Call(headers) => Stage::inner(self.service.call(req), headers),
            Plan::Refused(answer) => {
                Stage::answer(Box::new(req.into_response(to_actix_response(*answer))))
            }
            Plan::Check(check) => Stage::checking(check, (Rc::clone(&self.service), req)),
        })
    }
}
