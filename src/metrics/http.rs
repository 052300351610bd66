//! The HTTP listener (hyper, HTTP/1.1): `/metrics`, `/healthz`, `/readyz`.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::collect::Scrape;
use super::health::readiness;
use crate::context::Context;

/// A slow client gets this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve until `stop`: one task per HTTP connection.
pub fn spawn(
    listener: TcpListener,
    ctx: Arc<Context>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let registry = Registry::new();
    if let Err(e) = registry.register(Box::new(Scrape::new(ctx.clone()))) {
        tracing::error!(error = %e, "metrics registry");
    }
    let state = Arc::new(State { ctx, registry });
    tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let state = state.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(&req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(sock), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
    })
}

struct State {
    ctx: Arc<Context>,
    registry: Registry,
}

impl State {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
        }
        match req.uri().path() {
            "/metrics" => self.metrics(),
            "/healthz" | "/livez" => {
                let why = self.ctx.health.liveness(self.ctx.shutdown.is_cancelled());
                status_of(why)
            }
            "/readyz" => status_of(readiness(&self.ctx)),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n".into(),
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let encoder = TextEncoder::new();
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
        }
        let mut r = Response::new(Full::new(Bytes::from(buf)));
        if let Ok(v) = HeaderValue::from_str(encoder.format_type()) {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        r
    }
}

/// 200 "ok", or 503 with one reason per line.
fn status_of(why: Vec<String>) -> Response<Full<Bytes>> {
    if why.is_empty() {
        text(StatusCode::OK, "ok\n".into())
    } else {
        let mut body = why.join("\n");
        body.push('\n');
        text(StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
