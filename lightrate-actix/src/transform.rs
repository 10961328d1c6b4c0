//! [`LightRate`]: the configuration, shared by every middleware it makes (one per worker and
//! per place it wraps).

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use lightrate_core::web::adapter::RequestPolicy;
use lightrate_core::Limiter;

use crate::convert::http_method;
use crate::middleware::LightRateMiddleware;
use crate::request::ActixRequest;

/// Rate limiting middleware for actix-web: identifies the user, picks the target (the
/// resource's operation, else method + path), asks the [`Limiter`], and answers 429 with
/// `Retry-After` without calling the handler when it says no.
///
/// Use it with `wrap` on an `App`, a `Scope` or a `Resource`. Cheap to clone; clones share the
/// limiter and the declared operations. See the crate docs for a full example.
#[derive(Clone)]
pub struct LightRate {
    policy: Arc<RequestPolicy<ActixRequest>>,
}

impl LightRate {
    /// A middleware asking `limiter`. By default the user is the client's IP address; see
    /// [`identify`](Self::identify).
    ///
    /// Build the limiter once and clone it into every worker's `App` (a clone is an `Arc`):
    /// every worker then draws from the same local buckets.
    pub fn new(limiter: Limiter) -> Self {
        LightRate {
            policy: Arc::new(RequestPolicy::new(limiter)),
        }
    }

    /// Whether a request to a named resource (`web::resource("/emails").name("send_email")`)
    /// is limited as the operation of that name, at one token, instead of by method and
    /// path. Default off. Operations declared with [`operation`](Self::operation) come
    /// first.
    ///
    /// Note that the route macros (`#[post("/emails")]`) name their resource after the
    /// handler function (or their `name = ".."` argument). Before routing (app-wide or
    /// scope-level `wrap`), actix resolves the name from the path alone: when several
    /// resources share a path (method guards), it is the first one's.
    ///
    /// ```
    /// use actix_web::{web, App, HttpResponse};
    /// use lightrate::actix::LightRate;
    /// use lightrate::{EmbeddedSource, Limiter, RuleSet};
    ///
    /// let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
    /// let app = App::new()
    ///     // Limited as the operation `send_email`, one token a request.
    ///     .service(
    ///         web::resource("/emails")
    ///             .name("send_email")
    ///             .route(web::post().to(HttpResponse::Ok)),
    ///     )
    ///     .wrap(LightRate::new(limiter).resource_names_as_operations(true));
    /// ```
    pub fn resource_names_as_operations(self, on: bool) -> Self {
        self.with_policy(|p| p.names_as_operations = on)
    }
}

lightrate_core::request_policy_options! {
    type: LightRate,
    view: ActixRequest,
    method: actix_web::http::Method => http_method,
    reads_decision: "`web::ReqData<Decision>` in an actix-web handler",
    template: "the pattern of the resource it matched (`ServiceRequest::match_pattern`, \
               `/items/{id}`)",
    path: "as actix routes it (percent-decoded)",
    route: "the resource's full pattern, scope prefixes included, as \
            `ServiceRequest::match_pattern` gives it: `/emails`, `/api/items/{id}`",
}

impl<S, B> Transform<S, ServiceRequest> for LightRate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = LightRateMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<LightRateMiddleware<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(LightRateMiddleware::new(
            Rc::new(service),
            self.policy.clone(),
        )))
    }
}
