//! The admin listener: `GET /metrics` (Prometheus), `GET /healthz`, `GET /readyz`, and
//! nothing else (404 for other paths, 405 for other methods on these three).
//!
//! HTTP/1.1 through hyper's low-level server: three fixed routes need no router, and
//! the connection handling is hyper's own, tokio-native, with a header read timeout.
//! Plain HTTP: it is meant for loopback (config refuses other addresses unless
//! `allow_remote = true`) or a scraper on a trusted network.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::server::{ProxyState, ACCEPT_ERROR_BACKOFF};

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; more are closed at accept.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long an in-flight admin request may finish after the proxy stopped.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Content type of the exposition `prometheus-client` writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints on `listeners` until `stop` fires.
pub(crate) async fn serve_admin(
    listeners: Vec<TcpListener>,
    state: Arc<ProxyState>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(admin_loop(
                listener,
                Arc::clone(&state),
                Arc::clone(&slots),
                stop.clone(),
            ))
        })
        .collect();
    for admin_loop in loops {
        let _ = admin_loop.await;
    }
}

async fn admin_loop(
    listener: TcpListener,
    state: Arc<ProxyState>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "admin accept failed; backing off");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(peer = %peer, "admin connection closed: too many at once");
            continue;
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, &request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(STOP_GRACE, connection).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = served {
                debug!(peer = %peer, error = %e, "admin connection failed");
            }
        });
    }
}

/// The answer to one admin request.
async fn respond(state: &ProxyState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    if request.method() != Method::GET {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.stats.metrics.encode())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        _ => match not_ready(state).await {
            None => text(StatusCode::OK, ready_text(state)),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    }
}

/// Why the proxy should get no new connections, in one line; `None` when ready.
async fn not_ready(state: &ProxyState) -> Option<String> {
    if state.draining() {
        return Some("draining".to_owned());
    }
    match state.directory.count_active_async().await {
        Ok(_) => None,
        Err(e) => {
            let mut reason = format!("database not readable: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason.push_str(": ");
                reason.push_str(&cause.to_string());
                source = cause.source();
            }
            Some(reason.replace(['\n', '\r'], " "))
        }
    }
}

/// The text of a ready `/readyz`: says so while task data is served stale.
fn ready_text(state: &ProxyState) -> String {
    match state.directory.http().and_then(|h| h.outage()) {
        Some((since, why)) => format!(
            "ready; database: serving stale task data since {}s ago ({})\n",
            since.as_secs(),
            why.replace(['\n', '\r'], " ")
        ),
        None => "ready\n".to_owned(),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
