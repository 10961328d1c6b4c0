//! [`ResponseFuture`]: the response future of [`LightRateService`](crate::LightRateService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use lightrate_core::web::adapter::{Stage, Verdict};
use lightrate_core::web::{ResponseHead, Used};
use pin_project_lite::pin_project;
use tower::Service;

use crate::request::TowerRequest;

pin_project! {
    /// The response future of [`LightRateService`](crate::LightRateService): the inner service's future
    /// (allowed), an answer that is ready (429, 503, 400), or the limiter asking the token
    /// source first. An allowed local hit neither boxes nor allocates here.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        stage: Stage<S::Future, Response<Bytes>, (S, Request<ReqBody>)>,
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    #[inline]
    pub(crate) fn new(stage: Stage<S::Future, Response<Bytes>, (S, Request<ReqBody>)>) -> Self {
        ResponseFuture { stage }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().stage.poll_stage(
            cx,
            |(mut service, mut request), verdict| match verdict {
                Verdict::Allowed(allowed) => {
                    let headers = allowed.mark::<TowerRequest>(request.extensions_mut());
                    Stage::inner(service.call(request), headers)
                }
                Verdict::Refused(answer) => Stage::answer(answer),
            },
            |output, after| {
                let Some(after) = after else { return output };
                let head = output.as_ref().ok().map(|response| {
                    let used = response.extensions().get::<Used>().copied();
                    ResponseHead::new(response.status().as_u16(), response.headers(), used)
                });
                match after.finish(head.as_ref()) {
                    None => output,
                    Some(fields) => output.map(|mut response| {
                        response.headers_mut().extend(*fields);
                        response
                    }),
                }
            },
            |answer| match answer {
                Some(answer) => Ok(answer.map(ResBody::from)),
                None => panic!("ResponseFuture polled after it completed"),
            },
        )
    }
}
