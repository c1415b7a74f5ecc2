//! Serving HTTP on every natter listener (auth's API, the gateway's
//! upgrades, every health port), with the limits of docs/protocol.md §2.6
//! that `axum::serve` does not have: a request's headers must arrive within
//! [`HttpLimits::timeout`] (also an idle keep-alive connection's next
//! request), and its body within the same time after them, or the
//! connection is closed; at most [`HttpLimits::max_connections`] are open
//! at once, and more wait in the listen backlog, unread. A client that
//! sends half a request therefore holds a connection for seconds, not
//! forever, and cannot hold more than the cap.
//!
//! HTTP/1.1 only, as `ws://` needs and ingresses speak to their backends.
//! Each request carries the peer's address as axum's `ConnectInfo`.

use crate::Config;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a request's headers, and then its body, may take to arrive.
    pub timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The limits `config` sets (`NATTER_HTTP_TIMEOUT_SECS`,
    /// `NATTER_HTTP_MAX_CONNECTIONS`).
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self {
            timeout: Duration::from_secs(config.http_timeout_secs.max(1)),
            max_connections: config.http_max_connections.max(1),
        }
    }
}

/// How long to wait before accepting again after `accept` failed (out of
/// file descriptors, say): at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown`; then stops accepting,
/// lets each connection finish the request it is on, and returns once they
/// have (upgraded WebSockets are not connections any more: their owner
/// drains them). A failed accept is logged and retried, never fatal.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, peer, slot)) = accepted else {
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, router, limits.timeout, shutdown).await;
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Takes a connection slot, then a connection; `None` when accepting failed
/// (after a pause).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => {
            // Without it, Nagle's algorithm holds a small write (a pushed
            // frame, a reply) while an earlier one is unacknowledged, and a
            // client that only reads acknowledges late (delayed ACK, up to
            // 40 ms on Linux): every push after the first waited that long.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
            }
            Some((stream, peer, slot))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accepting a connection failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = Connection {
        router,
        peer,
        timeout,
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection closed");
    }
}

/// One connection's requests, handed to the router.
#[derive(Clone)]
struct Connection {
    router: Router,
    peer: SocketAddr,
    timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Connection {
    type Response = axum::response::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let (parts, body) = request.into_parts();
        let late = Arc::new(AtomicBool::new(false));
        let body = DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(self.timeout)),
            late: late.clone(),
        };
        let request = hyper::Request::from_parts(parts, Body::new(body));
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // The handler saw an error for the body; the client gets no
            // answer, and the connection ends here.
            if late.load(Ordering::Relaxed) {
                return Err(BoxError::from(BodyTimeout));
            }
            Ok(response)
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

/// A request body that fails once its deadline passes before its end, and
/// says so in `late`.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    late: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BoxError::from(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Serves an echo route with `limits` on a free port: its address and
    /// the token that stops it.
    async fn server(limits: HttpLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/echo", post(|body: Bytes| async move { body }));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, router, limits, stop.clone()));
        (addr, stop)
    }

    fn limits(max_connections: usize) -> HttpLimits {
        HttpLimits {
            timeout: Duration::from_secs(1),
            max_connections,
        }
    }

    /// Everything the server sends until it closes the connection.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen))
            .await
            .expect("the server closed the connection")
            .expect("read");
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn a_partial_header_is_dropped_after_the_timeout() {
        let (addr, _stop) = server(limits(8)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: natter\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut stream).await;
        assert!(!answer.contains("200"), "{answer}");
    }

    #[tokio::test]
    async fn a_partial_body_is_dropped_after_the_timeout_without_an_answer() {
        let (addr, _stop) = server(limits(8)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: natter\r\nContent-Length: 100\r\n\r\nhalf")
            .await
            .expect("write");
        assert_eq!(until_closed(&mut stream).await, "");
    }

    #[tokio::test]
    async fn a_whole_request_is_answered_and_an_idle_connection_then_closed() {
        let (addr, _stop) = server(limits(8)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: natter\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .expect("write");
        let answer = until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hi"), "{answer}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let (addr, _stop) = server(limits(1)).await;
        let mut holder = TcpStream::connect(addr).await.expect("connect");
        holder
            .write_all(b"POST /echo HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut waiting = TcpStream::connect(addr).await.expect("connect");
        waiting
            .write_all(b"POST /echo HTTP/1.1\r\nHost: n\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            .await
            .expect("write");
        let answer = until_closed(&mut waiting).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The second was only served once the first was dropped.
        let mut buf = [0_u8; 64];
        assert_eq!(holder.try_read(&mut buf).expect("closed, not pending"), 0);
    }
}
