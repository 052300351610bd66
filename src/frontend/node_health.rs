//! Workers that could not be reached. Their tenants go to the coordinator (which can
//! serve every tenant) until the worker answers again.
//!
//! Rules:
//! - One outage is one failure: sessions that chose the worker before it was marked down
//!   and fail within the same down window do not lengthen it. Only a failed *retry* (a
//!   session that tried it after the window ended) doubles the window
//!   (`worker_retry_delay`, then ×2 per failed retry, at most 60 s).
//! - While a worker is down one probe per worker tries a real login to it every
//!   `PROBE_EVERY` (through the pool that failed: same database, user and credential)
//!   and marks it up as soon as one succeeds, so its tenants come back within about a
//!   second of it answering, whatever the window.
//! - Marking up forgets the history: the next outage starts at `worker_retry_delay`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::context::Context;
use crate::pool::{Node, Pool};

/// How often a down worker is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Longest window between retries by sessions.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct NodeHealth {
    down: DashMap<Arc<str>, Down>,
    /// Failed attempts to reach a worker (metrics).
    pub failures: AtomicU64,
}

struct Down {
    /// Sessions skip the worker until then.
    until: Instant,
    /// The current window (doubled per failed retry).
    delay: Duration,
    /// A probe task is running for it.
    probing: bool,
}

impl NodeHealth {
    pub fn is_down(&self, node: &Node) -> bool {
        match self.down.get(&node.name) {
            Some(e) => Instant::now() < e.until,
            None => false,
        }
    }

    /// No worker is marked (down, or in a down window's history): the common case, one
    /// look for all workers.
    pub fn none_marked(&self) -> bool {
        self.down.is_empty()
    }

    /// A session could not reach `node`. Returns true when a probe should be started
    /// for it (none is running).
    pub fn mark_down(&self, node: &Node, base: Duration) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut e = self.down.entry(node.name.clone()).or_insert(Down {
            until: now,
            delay: Duration::ZERO,
            probing: false,
        });
        if now >= e.until {
            // A new outage, or a failed retry after the window: a (longer) window.
            let delay = if e.delay.is_zero() {
                base
            } else {
                (e.delay * 2).min(MAX_DELAY)
            };
            e.until = now + delay;
            e.delay = delay;
            tracing::warn!(node = %node.name, host = %node.host, port = node.port, retry_in_s = delay.as_secs_f64(), "worker unreachable: routing its tenants to the coordinator");
        }
        !std::mem::replace(&mut e.probing, true)
    }

    pub fn mark_up(&self, node: &Node) {
        if self.down.remove(&node.name).is_some() {
            tracing::info!(node = %node.name, "worker reachable again");
        }
    }

    /// Is `node` still marked (down, or in its window's history)?
    fn is_marked(&self, node: &Node) -> bool {
        self.down.contains_key(&node.name)
    }

    fn probe_ended(&self, node: &Node) {
        if let Some(mut e) = self.down.get_mut(&node.name) {
            e.probing = false;
        }
    }

    /// Nodes currently marked down, with the time left.
    pub fn down_nodes(&self) -> Vec<(Arc<str>, Duration)> {
        let now = Instant::now();
        self.down
            .iter()
            .filter(|e| e.until > now)
            .map(|e| (e.key().clone(), e.until - now))
            .collect()
    }
}

/// Probe a down worker through `pool` until a login succeeds (then mark it up), it is
/// marked up by a session, or pgtenant shuts down.
pub fn spawn_probe(ctx: Arc<Context>, pool: Arc<Pool>) {
    tokio::spawn(async move {
        let node = pool.key.node.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            if !ctx.node_health.is_marked(&node) {
                break;
            }
            let timeout = pool.settings().server_connect_timeout.max(PROBE_EVERY);
            if let Ok(Ok(c)) = tokio::time::timeout(timeout, pool.open_dedicated("probe")).await {
                c.terminate();
                ctx.node_health.mark_up(&node);
                break;
            }
        }
        ctx.node_health.probe_ended(&node);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            name: "w1".into(),
            host: "127.0.0.1".into(),
            port: 1,
        }
    }

    #[test]
    fn failures_within_one_window_do_not_lengthen_it() {
        let h = NodeHealth::default();
        let n = node();
        let base = Duration::from_secs(5);
        assert!(h.mark_down(&n, base), "the first failure starts a probe");
        for _ in 0..5 {
            assert!(!h.mark_down(&n, base), "one probe at a time");
        }
        let left = h.down_nodes()[0].1;
        assert!(left <= base && left > Duration::from_secs(4), "{left:?}");
        assert!(h.is_down(&n));
        // A failed retry after the window doubles it.
        h.down.get_mut(&n.name).unwrap().until = Instant::now();
        h.mark_down(&n, base);
        assert!(h.down_nodes()[0].1 > Duration::from_secs(9));
        h.mark_up(&n);
        assert!(!h.is_down(&n));
        h.mark_down(&n, base);
        assert!(h.down_nodes()[0].1 <= base, "history forgotten once up");
    }
}
