//! [`ResponseFuture`]: the response future of [`LightRate`](crate::LightRate).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use lightrate_core::web::Rejection;
use lightrate_core::{Decision, Error};
use pin_project_lite::pin_project;
use tower::Service;

use crate::layer::Config;
use crate::service::Plan;

type Check = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

pin_project! {
    /// The response future of [`LightRate`](crate::LightRate): the inner service's future
    /// (allowed), an answer that is ready (429, 503, 400), or the limiter asking the token
    /// source first. An allowed local hit neither boxes nor allocates here.
    #[project = FutureProj]
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // The common case stays small: rare states are boxed, so that every request does not
        // move a future as large as a request.
        Inner {
            #[pin]
            future: S::Future,
            headers: Option<Box<HeaderMap>>,
        },
        Answer {
            response: Option<Box<Response<Bytes>>>,
        },
        Checking {
            checking: Box<Checking<S, ReqBody>>,
        },
    }
}

struct Checking<S, ReqBody> {
    check: Check,
    service: Option<S>,
    request: Option<Request<ReqBody>>,
    config: Arc<Config>,
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "inner",
            State::Answer { .. } => "answer",
            State::Checking { .. } => "checking",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn inner(future: S::Future, headers: Option<Box<HeaderMap>>) -> Self {
        ResponseFuture {
            state: State::Inner { future, headers },
        }
    }

    pub(crate) fn answer(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Answer {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn checking(
        check: Check,
        service: S,
        request: Request<ReqBody>,
        config: Arc<Config>,
    ) -> Self {
        ResponseFuture {
            state: State::Checking {
                checking: Box::new(Checking {
                    check,
                    service: Some(service),
                    request: Some(request),
                    config,
                }),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { future, headers } => {
                    let response = ready!(future.poll(cx))?;
                    let mut response = response;
                    if let Some(extra) = headers.take() {
                        response.headers_mut().extend(*extra);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Answer { response } => {
                    let response = response.take().map(|r| *r).unwrap_or_default();
                    return Poll::Ready(Ok(response.map(ResBody::from)));
                }
                StateProj::Checking { checking } => {
                    let Checking {
                        check,
                        service,
                        request,
                        config,
                    } = &mut **checking;
                    let result = ready!(check.as_mut().poll(cx));
                    let plan = match result {
                        Ok(decision) => config.settle(decision),
                        // The policy is to surface the source's failure: answer 503.
                        Err(error) => Plan::Answer(Rejection::Unavailable {
                            kind: error.kind(),
                            retry_after_secs: error.retry_after().map_or(1, |d| d.as_secs().max(1)),
                        }),
                    };
                    let next = match plan {
                        Plan::Allowed(decision, headers) => {
                            match (service.take(), request.take()) {
                                (Some(mut service), Some(mut request)) => {
                                    config.mark(request.extensions_mut(), decision);
                                    State::Inner {
                                        future: service.call(request),
                                        headers,
                                    }
                                }
                                _ => State::Answer { response: None },
                            }
                        }
                        Plan::Answer(rejection) => State::Answer {
                            response: Some(Box::new(config.respond(&rejection))),
                        },
                        // A slow path always ends in a decision.
                        Plan::Pass | Plan::Ask { .. } => State::Answer { response: None },
                    };
                    this.state.set(next);
                }
            }
        }
    }
}
