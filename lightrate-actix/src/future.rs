//! [`ResponseFuture`]: the response future of [`LightRateMiddleware`](crate::LightRateMiddleware).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use http::HeaderMap;
use pin_project_lite::pin_project;

use crate::middleware::add_headers;

type Checking = Pin<Box<dyn Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>>>>;

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
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<ServiceRequest>,
    {
        // The common case stays small: rare states are boxed, so that every request does not
        // move a future as large as a response.
        Inner {
            #[pin]
            future: S::Future,
            headers: Option<Box<HeaderMap>>,
        },
        Answer {
            response: Option<Box<ServiceResponse>>,
        },
        Checking {
            checking: Checking,
        },
    }
}

impl<S> fmt::Debug for ResponseFuture<S>
where
    S: Service<ServiceRequest>,
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

impl<S> ResponseFuture<S>
where
    S: Service<ServiceRequest>,
{
    pub(crate) fn inner(future: S::Future, headers: Option<Box<HeaderMap>>) -> Self {
        ResponseFuture {
            state: State::Inner { future, headers },
        }
    }

    pub(crate) fn answer(response: ServiceResponse) -> Self {
        ResponseFuture {
            state: State::Answer {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn checking(checking: Checking) -> Self {
        ResponseFuture {
            state: State::Checking { checking },
        }
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
        match self.project().state.project() {
            StateProj::Inner { future, headers } => {
                let mut response = ready!(future.poll(cx))?;
                add_headers(&mut response, headers.take());
                Poll::Ready(Ok(response.map_into_boxed_body()))
            }
            StateProj::Answer { response } => Poll::Ready(match response.take() {
                Some(response) => Ok(*response),
                None => Err(actix_web::error::ErrorInternalServerError(
                    "lightrate: response future polled after completion",
                )),
            }),
            StateProj::Checking { checking } => checking.as_mut().poll(cx),
        }
    }
}
