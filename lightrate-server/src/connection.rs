//! Accepting and serving connections: the connection cap, back-off on accept errors, the
//! whole-request deadline, and draining on shutdown.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::metrics::ServerMetrics;

/// What a connection is answered, without reading anything, when the server holds its
/// maximum: 503, retry in a second, closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
retry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 75\r\n\r\n\
{\"error\":\"Service Unavailable\",\"message\":\"too many connections; try again\"}";

/// The first pause after a failed accept; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause after a failed accept: short, so that the server accepts again soon
/// after descriptors are freed.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// While accepts keep failing, one log line per this period.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// A connection is dropped only by an injected fault.
#[cfg(feature = "test-util")]
pub(crate) type Dropped = crate::faults::Dropped;
#[cfg(not(feature = "test-util"))]
pub(crate) type Dropped = std::convert::Infallible;

pub(crate) type HttpService =
    tower::util::BoxCloneService<http::Request<Body>, http::Response<Body>, Dropped>;

/// The limits the accept loop enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) drain_timeout: Duration,
}

/// Accepts until `stopped`, then lets every connection finish its request (up to the drain
/// timeout) and returns when all are closed.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    service: HttpService,
    mut stopped: watch::Receiver<bool>,
    limits: Limits,
    metrics: Arc<ServerMetrics>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut failures = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                failures.succeeded();
                stream
            }
            // The peer gave up before we accepted: nothing to do with us.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                metrics.accept_error();
                let pause = failures.failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = stopped.changed() => break,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            // One non-blocking write to a fresh socket's empty buffer; then closed.
            let _ = stream.try_write(REFUSAL);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let stopped = stopped.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            metrics.connection_opened();
            serve_connection(stream, service, stopped, limits).await;
            metrics.connection_closed();
            drop(slot);
        });
        // Reap finished connections so the set stays as small as the open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(target: "lightrate::server", connections = open, "draining");
    }
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until the client closes it, a deadline passes, or the server stops
/// (then the request in flight may finish within the drain timeout).
async fn serve_connection(
    stream: TcpStream,
    service: HttpService,
    mut stopped: watch::Receiver<bool>,
    limits: Limits,
) {
    let clock = Arc::new(RequestClock::new());
    let io = TokioIo::new(TimedStream {
        inner: stream,
        clock: clock.clone(),
    });
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let answer = crate::arrival::REQUEST_STARTED.scope(
                clock.started(),
                service.clone().oneshot(request.map(Body::new)),
            );
            let clock = clock.clone();
            async move {
                let answer = answer.await;
                clock.answered();
                answer
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // From the end of the previous answer (or the accept): so also the idle timeout.
        .header_read_timeout(limits.request_timeout);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            if tokio::time::timeout(limits.drain_timeout, connection).await.is_err() {
                tracing::warn!(
                    target: "lightrate::server",
                    "a request was still in flight at the drain timeout; its connection was closed"
                );
            }
        }
    }
}

/// The start of the request being read on one connection: the accept for the first, then the
/// first byte read after each answer.
#[derive(Debug)]
struct RequestClock {
    accepted: Instant,
    /// Nanoseconds from `accepted`.
    started: AtomicU64,
    /// An answer was given and no byte read since.
    between_requests: AtomicBool,
}

impl RequestClock {
    fn new() -> Self {
        RequestClock {
            accepted: Instant::now(),
            started: AtomicU64::new(0),
            between_requests: AtomicBool::new(false),
        }
    }

    fn started(&self) -> Instant {
        self.accepted + Duration::from_nanos(self.started.load(Ordering::Relaxed))
    }

    fn answered(&self) {
        self.between_requests.store(true, Ordering::Relaxed);
    }

    fn read_some(&self) {
        if self.between_requests.swap(false, Ordering::Relaxed) {
            let nanos = u64::try_from(self.accepted.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.started.store(nanos, Ordering::Relaxed);
        }
    }
}

/// A TCP stream that tells its [`RequestClock`] when bytes arrive.
struct TimedStream {
    inner: TcpStream,
    clock: Arc<RequestClock>,
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.read_some();
        }
        polled
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An accept error that concerns one connection only (the peer reset or gave up): accept the
/// next one at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Failed accepts in a row: how long to pause, and when to say so.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failures since the last success.
    count: u64,
    since: Option<Instant>,
    last_logged: Option<Instant>,
    pause: Duration,
}

impl AcceptFailures {
    /// Records a failure; the pause before the next accept (5 ms, doubling, at most 200 ms).
    /// Logs the first failure of a run, then one line per 10 s while it lasts.
    fn failed(&mut self, e: &io::Error) -> Duration {
        let now = Instant::now();
        self.count += 1;
        self.pause = if self.count == 1 {
            FIRST_BACKOFF
        } else {
            (self.pause * 2).min(MAX_BACKOFF)
        };
        let since = *self.since.get_or_insert(now);
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_EVERY);
        if due {
            self.last_logged = Some(now);
            tracing::warn!(
                target: "lightrate::server",
                error = %e,
                failures = self.count,
                for_ms = now.duration_since(since).as_millis() as u64,
                "accept failed; backing off (at most one line per 10 s while it lasts)"
            );
        }
        self.pause
    }

    /// Records a success; says how long accepts failed, if they did.
    fn succeeded(&mut self) {
        if self.count > 0 {
            let since = self.since.map_or(Duration::ZERO, |s| s.elapsed());
            tracing::info!(
                target: "lightrate::server",
                failures = self.count,
                for_ms = since.as_millis() as u64,
                "accepting again"
            );
        }
        *self = AcceptFailures::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_to_its_cap_and_resets_on_success() {
        let mut failures = AcceptFailures::default();
        let e = io::Error::other("Too many open files");
        let pauses: Vec<u128> = (0..8).map(|_| failures.failed(&e).as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 200, 200]);
        failures.succeeded();
        assert_eq!(failures.failed(&e), FIRST_BACKOFF);
    }

    #[test]
    fn a_peer_that_gave_up_is_no_reason_to_back_off() {
        assert!(is_per_connection(&io::ErrorKind::ConnectionAborted.into()));
        assert!(!is_per_connection(&io::Error::from_raw_os_error(24))); // EMFILE
    }

    #[test]
    fn the_refusal_is_a_complete_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
