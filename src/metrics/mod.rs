//! Metrics and probes: the Prometheus collector, latency histograms and the HTTP
//! endpoints `/metrics`, `/healthz` and `/readyz`.
//!
//! Nothing here sits on the statement path with a shared lock: counters are the atomics
//! other modules already keep (read at scrape time), and the latency histograms record into
//! the recording thread's own HdrHistograms behind an uncontended lock ([`Latency::record`]).
//!
//! - [`latency`]: per-thread HdrHistograms by (node, kind), merged for `SHOW LATENCY` and
//!   the `/metrics` histograms.
//! - [`health`]: liveness (heartbeat, accept loops) and readiness (draining, coordinator
//!   reachable, shard map fresh).
//! - [`counters`]: server errors by SQLSTATE class, clients active / waiting.
//! - [`migration`]: blue-green cutovers run here (results, pause histogram).
//! - [`tenants`]: the busiest tenants (Space-Saving); [`activity`]: every tenant's
//!   transactions over the last minutes and hours (count-min sketches in time buckets).
//! - `collect`: the Prometheus collector over `Context`.
//! - `http`: the hyper listener.
pub mod activity;
mod collect;
pub mod counters;
pub mod health;
mod http;
pub mod latency;
pub mod migration;
pub mod striped;
pub mod tenants;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::Context;

pub use health::{readiness, Health};
pub use latency::Latency;

/// Bind the HTTP listener (before anything else starts, so a taken port fails startup).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Start the HTTP endpoints (if bound) and the probes; both end when `stop` fires.
pub fn start(
    listener: Option<TcpListener>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![health::spawn_probes(ctx.clone(), stop.clone())];
    if let Some(l) = listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(http_listen = %addr, "serving /metrics, /healthz, /readyz");
        }
        tasks.push(http::spawn(l, ctx, stop));
    }
    tasks
}
