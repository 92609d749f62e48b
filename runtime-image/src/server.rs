//! HTTP/1.1 accept loops on hyper with TCP_NODELAY, for the Runtime API
//! (torn down at once with its runtime) and the invoke endpoint (drained
//! gracefully on shutdown).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    builder
}

fn prepare(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// A server whose connections all end when it is dropped.
pub struct ScopedServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ScopedServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ScopedServer {
    fn drop(&mut self) {
        // The task owns the JoinSet of connections: aborting it drops them all.
        self.task.abort();
    }
}

pub fn spawn_scoped(listener: TcpListener, router: Router) -> std::io::Result<ScopedServer> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        prepare(&stream);
                        let service = TowerToHyperService::new(router.clone());
                        connections.spawn(async move {
                            let _ = builder().serve_connection(TokioIo::new(stream), service).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(ScopedServer { addr, task })
}

/// Serves `router` until `stop` is cancelled, then lets open connections
/// finish their requests for at most `drain`.
pub async fn serve_until(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    prepare(&stream);
                    let service = TowerToHyperService::new(router.clone());
                    let connection = builder().serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain period");
    }
}
