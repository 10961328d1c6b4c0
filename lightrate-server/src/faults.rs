//! Fault injection and request recording: a layer on the real server, for tests.
//!
//! A [`Faults`] handle controls what the server does with the next requests (answer slowly,
//! answer with an error status, answer garbage, drop the connection) and records every request
//! it saw, so that a test can assert the exact JSON and headers a client put on the wire and
//! how many calls were made.
//!
//! ```
//! use lightrate_server::faults::{Fault, Faults};
//! use http::StatusCode;
//! use std::time::Duration;
//!
//! let faults = Faults::new();
//! faults.push(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)); // the next request gets 503
//! faults.set_always(Some(Fault::Delay(Duration::from_millis(50)))); // then every one is slow
//! assert_eq!(faults.recorded().len(), 0);
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use tower::{Layer, Service};

/// The largest body the recorder buffers; a larger one is cut off (the handler then rejects
/// it as malformed).
const MAX_RECORDED_BODY: usize = 1024 * 1024;

/// What the server does to one request instead of answering it normally.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Wait, then answer normally (the request is processed and charged).
    Delay(Duration),
    /// Wait `delay`, give or take up to `jitter` (uniformly), and one request in `slow_one_in`
    /// five times as long (a source under load), then answer normally. `slow_one_in` 0: never
    /// slow.
    Jitter {
        /// The typical wait.
        delay: Duration,
        /// How far a wait may be from `delay`, either way.
        jitter: Duration,
        /// One request in this many waits five times as long.
        slow_one_in: u32,
    },
    /// Answer with this status and a JSON error body, without processing the request.
    Status(StatusCode),
    /// Answer with this status, a JSON error body and `Retry-After: <seconds>`, without
    /// processing the request.
    StatusRetryAfter(StatusCode, u64),
    /// Answer with this status and this exact body (e.g. a lying answer), without processing.
    Body(StatusCode, String),
    /// Answer 200 with a body that is not JSON, without processing.
    Garbage,
    /// Close the connection without answering, after reading the request.
    Drop,
}

/// A request as the server received it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
}

impl RecordedRequest {
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The control handle: which faults to inject, and what was received. Clones share state.
#[derive(Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Default)]
struct FaultState {
    next: VecDeque<Fault>,
    always: Option<Fault>,
    recorded: Vec<RecordedRequest>,
    /// Not recording: for long load runs, where the record would grow without bound.
    not_recording: bool,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Faults")
            .field("next", &state.next)
            .field("always", &state.always)
            .field("recorded", &state.recorded.len())
            .finish()
    }
}

impl Faults {
    /// No faults, nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `fault` to one upcoming request (queued: each request takes the first).
    pub fn push(&self, fault: Fault) {
        self.lock().next.push_back(fault);
    }

    /// Applies `fault` to every request when the queue is empty; `None` to stop.
    pub fn set_always(&self, fault: Option<Fault>) {
        self.lock().always = fault;
    }

    /// Forgets queued and standing faults (recordings are kept).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.next.clear();
        state.always = None;
    }

    /// Every request received so far, oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.lock().recorded.clone()
    }

    /// How many requests were received so far.
    pub fn count(&self) -> usize {
        self.lock().recorded.len()
    }

    /// Whether to record requests (default `true`). Off, [`recorded`](Self::recorded) stays as
    /// it is: for load runs, where a record of every request would grow without bound.
    pub fn set_recording(&self, on: bool) {
        self.lock().not_recording = !on;
    }

    /// Forgets the recordings.
    pub fn reset_recorded(&self) {
        self.lock().recorded.clear();
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, mut recorded: RecordedRequest) -> Option<Fault> {
        let mut state = self.lock();
        let fault = state.next.pop_front().or_else(|| state.always.clone());
        if !state.not_recording {
            recorded.fault = fault.clone();
            state.recorded.push(recorded);
        }
        fault
    }
}

/// The error that makes the server drop a connection.
#[derive(Debug)]
pub struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

/// The tower layer that applies [`Faults`].
#[derive(Clone, Debug)]
pub struct FaultLayer {
    faults: Faults,
}

impl FaultLayer {
    /// A layer controlled by `faults`.
    pub fn new(faults: Faults) -> Self {
        FaultLayer { faults }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            faults: self.faults.clone(),
        }
    }
}

/// The service of [`FaultLayer`].
#[derive(Clone, Debug)]
pub struct FaultService<S> {
    inner: S,
    faults: Faults,
}

impl<S, B> Service<Request<B>> for FaultService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Dropped;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Dropped>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Dropped>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that serves this request.
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        let faults = self.faults.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RECORDED_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let fault = faults.take(RecordedRequest {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                body: body.clone(),
                fault: None,
            });
            let respond = |status: StatusCode, body: Body| {
                let mut response = Response::new(body);
                *response.status_mut() = status;
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(response)
            };
            match fault {
                Some(Fault::Drop) => return Err(Dropped),
                Some(Fault::Garbage) => {
                    return respond(StatusCode::OK, Body::from("<html>not json at all"));
                }
                Some(Fault::Status(status)) => {
                    return Ok(crate::handler::error(status, "injected fault"));
                }
                Some(Fault::StatusRetryAfter(status, seconds)) => {
                    let mut response = crate::handler::error(status, "injected fault");
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
                    return Ok(response);
                }
                Some(Fault::Body(status, text)) => return respond(status, Body::from(text)),
                Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
                Some(Fault::Jitter {
                    delay,
                    jitter,
                    slow_one_in,
                }) => {
                    let offset = jitter.mul_f64(2.0 * fastrand::f64());
                    let mut wait = (delay + offset).saturating_sub(jitter);
                    if slow_one_in > 0 && fastrand::u32(0..slow_one_in) == 0 {
                        wait *= 5;
                    }
                    tokio::time::sleep(wait).await;
                }
                None => {}
            }
            let request = Request::from_parts(parts, Body::from(body));
            match inner.call(request).await {
                Ok(response) => Ok(response),
                Err(never) => match never {},
            }
        })
    }
}
