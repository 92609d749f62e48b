//! The gateway's HTTP listener, with the limits a public listener needs:
//! a cap on open connections, a deadline for a request's headers and one
//! for its body, and an idle timeout for kept-alive connections. Without
//! them a client sending a byte a second, or a few hundred idle
//! connections, held the gateway's resources indefinitely.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Open connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body.
    pub body_read_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests
/// finish (connections close after their current request). Returns when
/// every connection closed, or `drain` after `shutdown`. With `tls`, every
/// connection starts with a TLS handshake, bounded by the header deadline.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits,
        read_body_within_deadline,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (app, shutdown, tls) = (app.clone(), shutdown.clone(), tls.clone());
        connections.spawn(async move {
            accept_connection(tcp, remote, app, limits, tls, shutdown).await;
            drop(permit);
        });
    }
    // Connections the kernel has already accepted would be reset with their
    // request unanswered once the listener closes: take those still coming
    // (until none arrives for a moment, within a bound) and answer their
    // request before closing them.
    let lingering_until = tokio::time::Instant::now() + LINGER;
    while let Ok(Ok((tcp, remote))) = tokio::time::timeout_at(
        lingering_until.min(tokio::time::Instant::now() + QUIET),
        listener.accept(),
    )
    .await
    {
        let (app, shutdown, tls) = (app.clone(), shutdown.clone(), tls.clone());
        connections.spawn(accept_connection(tcp, remote, app, limits, tls, shutdown));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = drain.as_secs(),
            "connections still open after the drain bound; closing them"
        );
    }
}

/// How long a stopping listener keeps taking the connections still arriving.
const LINGER: Duration = Duration::from_secs(1);
/// A stopping listener closes once no connection arrived for this long.
const QUIET: Duration = Duration::from_millis(100);
/// How long a stopping connection waits for the request of a client that is
/// sending one (a fresh connection, or a kept-alive one) before it closes.
const LAST_REQUEST_WAIT: Duration = Duration::from_millis(250);

/// What a connection is doing, for its watchdog.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` at the last request's start or end.
    last: AtomicU64,
    /// Milliseconds since `epoch` (plus one) when bytes of a request that has
    /// not started yet first arrived; 0 when there are none.
    head_since: AtomicU64,
    epoch: Instant,
}

/// Why the watchdog closes a connection.
#[derive(Debug, PartialEq)]
enum Verdict {
    Keep,
    /// A request's headers did not arrive in time.
    SlowHeaders,
    /// No request for the idle timeout.
    Idle,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: between requests, they start a request's headers.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let now = self.now_ms() + 1;
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn verdict(&self, limits: &ListenerLimits) -> Verdict {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Keep;
        }
        let now = self.now_ms();
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            let waited = Duration::from_millis(now.saturating_sub(head - 1));
            return if waited >= limits.header_read_timeout {
                Verdict::SlowHeaders
            } else {
                Verdict::Keep
            };
        }
        let idle = Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)));
        if idle >= limits.idle_timeout {
            Verdict::Idle
        } else {
            Verdict::Keep
        }
    }
}

/// The connection's socket (or TLS stream), telling the watchdog when
/// bytes arrive.
struct Tracked<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Takes one accepted connection: its TLS handshake first when configured
/// (a client that does not finish it within the header deadline is
/// dropped), then its requests.
async fn accept_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    // Small responses must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_connection(tcp, remote, app, limits, shutdown).await;
    };
    match tokio::time::timeout(limits.header_read_timeout, tls.accept(tcp)).await {
        Ok(Ok(stream)) => serve_connection(stream, remote, app, limits, shutdown).await,
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "TLS handshake did not finish in time"),
    }
}

async fn serve_connection<S>(
    io: S,
    remote: SocketAddr,
    app: Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: AtomicU64::new(0),
        head_since: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let activity = activity.clone();
            activity.request_started();
            request.extensions_mut().insert(ConnectInfo(remote));
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                activity.request_ended();
                response
            }
        })
    };
    // The watchdog below keeps the header deadline: hyper's own also runs
    // while a kept-alive connection waits for its next request, which would
    // make it an idle timeout too.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let io = Tracked {
        io,
        activity: activity.clone(),
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let check_every =
        (limits.idle_timeout.min(limits.header_read_timeout) / 4).max(Duration::from_millis(10));
    let mut closing = false;
    let mut stopping_since: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if stopping_since.is_none() => {
                stopping_since = Some(Instant::now());
            }
            // Stopping: the request in progress is finished, and a client
            // sending one now still gets its answer; then the connection closes.
            _ = tokio::time::sleep(Duration::from_millis(5)), if !closing && stopping_since.is_some() => {
                let waited = stopping_since.map_or(Duration::ZERO, |t| t.elapsed());
                if activity.in_flight.load(Ordering::Relaxed) > 0 || waited >= LAST_REQUEST_WAIT {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(check_every), if !closing => {
                match activity.verdict(&limits) {
                    Verdict::Keep => {}
                    Verdict::Idle => {
                        tracing::debug!(%remote, "closing an idle connection");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    // Not a request yet: nothing to finish, close at once.
                    Verdict::SlowHeaders => {
                        tracing::debug!(%remote, "closing a connection whose headers did not arrive in time");
                        return;
                    }
                }
            }
        }
    }
}

/// Gives the request's body a deadline of [`ListenerLimits::body_read_timeout`]:
/// a client trickling it gets its read failed (and its connection closed)
/// instead of holding the request open. Nothing is buffered here; the routes
/// read the body with their own size limits.
async fn read_body_within_deadline(
    axum::extract::State(limits): axum::extract::State<ListenerLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limits.body_read_timeout)),
    });
    next.run(Request::from_parts(parts, body)).await
}

/// A body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The error of a body not received in time.
#[derive(Debug)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl std::error::Error for BodyReadTimeout {}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyReadTimeout))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
