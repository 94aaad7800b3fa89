//! The HTTP/1.1 server under the router: accepts connections, serves each with hyper,
//! and shuts down gracefully. axum::serve would do the same, but it first reads a few
//! bytes of every connection to tell HTTP/1 from HTTP/2, and handing those to hyper
//! makes hyper's read buffer grow from 8 to 16 KiB on every connection: the largest
//! part of an idle SSE stream's memory. Troupe speaks HTTP/1.1 (browsers' EventSource
//! over plain HTTP does; TLS and HTTP/2 belong to the proxy in front, see deploy/).

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::guard::PeerAddr;

/// Serves `app` on `listener` until `stop`; then stops accepting, lets requests under way
/// finish, and returns once every connection has closed.
pub async fn run(listener: TcpListener, app: Router, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                connections.spawn(serve_connection(tcp, peer, app.clone(), stop.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
    connections.close();
    connections.wait().await;
}

/// The most a request's line and headers may take: hyper answers a longer head with 431
/// instead of buffering up to its default of 400 KiB per connection.
const MAX_HEAD_BYTES: usize = 32 * 1024;

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, app: Router, stop: CancellationToken) {
    // Without TCP_NODELAY, the first small write of each response on a keep-alive
    // connection waits for the client's delayed ACK: about 40 ms, the whole latency of a
    // trivial task.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "setting TCP_NODELAY on a connection failed");
    }
    let connection = http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(
            TokioIo::new(tcp),
            TowerToHyperService::new(with_peer(app, peer)),
        )
        .with_upgrades();
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "a connection ended with an error");
    }
}

/// `app` with the connection's peer address on every request, for the rate limits.
fn with_peer(
    app: Router,
    peer: SocketAddr,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::util::MapRequest::new(app, move |mut request: axum::http::Request<_>| {
        request.extensions_mut().insert(PeerAddr(peer));
        request
    })
}

/// Out of file descriptors, say: keep serving the connections there are, and try
/// again shortly instead of spinning on the error.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
