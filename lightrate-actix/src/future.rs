//! [`ResponseFuture`]: the response future of [`LightRateMiddleware`](crate::LightRateMiddleware).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use lightrate_core::web::adapter::{Stage, Verdict};
use lightrate_core::web::{ResponseHead, Used};
use pin_project_lite::pin_project;

use crate::convert::{append_headers, http_headers, to_actix_response};
use crate::request::ActixRequest;

pin_project! {
    /// The response future of [`LightRateMiddleware`](crate::LightRateMiddleware): the inner
    /// service's future (allowed, or not limited), an answer that is ready (429, 503, 400),
    /// or the limiter asking the token source first. An allowed local hit neither boxes nor
    /// allocates here.
    pub struct ResponseFuture<S>
    where
        S: Service<ServiceRequest>,
    {
        #[pin]
        stage: Stage<S::Future, ServiceResponse, (Rc<S>, ServiceRequest)>,
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<ServiceRequest>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<ServiceRequest>,
{
    pub(crate) fn new(stage: Stage<S::Future, ServiceResponse, (Rc<S>, ServiceRequest)>) -> Self {
        ResponseFuture { stage }
    }
}

impl<S, B> Future for ResponseFuture<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<BoxBody>, actix_web::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().stage.poll_stage(
            cx,
            |(service, req), verdict| match verdict {
                Verdict::Allowed(allowed) => {
                    let headers = allowed.mark::<ActixRequest>(&mut req.extensions_mut());
                    Stage::inner(service.call(req), headers)
                }
                Verdict::Refused(answer) => {
                    Stage::answer(Box::new(req.into_response(to_actix_response(*answer))))
                }
            },
            |output, after| {
                let Some(after) = after else {
                    return output.map(ServiceResponse::map_into_boxed_body);
                };
                let head = output.as_ref().ok().map(|response| {
                    let used = response.response().extensions().get::<Used>().copied();
                    // Made only for a closure that reads them (actix's are of another `http`).
                    let headers = if after.reads_headers() {
                        http_headers(response.headers())
                    } else {
                        http::HeaderMap::new()
                    };
                    (response.status().as_u16(), headers, used)
                });
                let head = head
                    .as_ref()
                    .map(|(status, headers, used)| ResponseHead::new(*status, headers, *used));
                let headers = after.finish(head.as_ref());
                output.map(|mut response| {
                    if let Some(headers) = headers {
                        append_headers(response.headers_mut(), *headers);
                    }
                    response.map_into_boxed_body()
                })
            },
            |answer| {
                answer.ok_or_else(|| {
                    actix_web::error::ErrorInternalServerError(
                        "lightrate: response future polled after completion",
                    )
                })
            },
        )
    }
}
