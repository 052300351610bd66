//! What `/healthz` and `/readyz` answer from: a runtime heartbeat, the accept loops that
//! are running, and a cheap periodic TCP check of the coordinator.
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Routing;
use crate::context::Context;

/// The heartbeat ticks this often; `/healthz` fails when it is [`STALL`] behind.
const TICK: Duration = Duration::from_secs(1);
const STALL: Duration = Duration::from_secs(10);
/// A coordinator TCP check gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Liveness and readiness state. Written by background tasks and the accept loops (once
/// per loop start and end), read by the HTTP handlers: never touched per statement.
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last heartbeat tick.
    heartbeat_ms: AtomicU64,
    /// Accept loops running, and how many were started.
    accept_loops: AtomicU32,
    accept_loops_started: AtomicU32,
    /// The last coordinator check: done at all, and its outcome.
    coordinator_checked: AtomicBool,
    coordinator_ok: AtomicBool,
    coordinator_error: Mutex<Option<String>>,
    /// The refresher has told once whether the upstream is a Citus coordinator.
    upstream_checked: AtomicBool,
    /// When the shard map was last confirmed to match the coordinator (loaded, or its
    /// fingerprint found unchanged).
    shard_map_confirmed: Mutex<Option<Instant>>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            accept_loops: AtomicU32::new(0),
            accept_loops_started: AtomicU32::new(0),
            coordinator_checked: AtomicBool::new(false),
            coordinator_ok: AtomicBool::new(false),
            coordinator_error: Mutex::new(None),
            upstream_checked: AtomicBool::new(false),
            shard_map_confirmed: Mutex::new(None),
        }
    }
}

/// Held by a running accept loop; dropping it (the loop ended) makes `/healthz` fail.
pub struct AcceptLoopGuard<'a>(&'a Health);

impl Drop for AcceptLoopGuard<'_> {
    fn drop(&mut self) {
        self.0.accept_loops.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Health {
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Call at the top of an accept loop and keep the guard for as long as it runs.
    pub fn accept_loop_running(&self) -> AcceptLoopGuard<'_> {
        self.accept_loops.fetch_add(1, Ordering::Relaxed);
        self.accept_loops_started.fetch_add(1, Ordering::Relaxed);
        AcceptLoopGuard(self)
    }

    /// The refresher finished a check: it knows whether the upstream is Citus, and
    /// `map_current` says a shard map is loaded and matches the coordinator.
    pub fn upstream_checked(&self, map_current: bool) {
        if map_current {
            *lock(&self.shard_map_confirmed) = Some(Instant::now());
        }
        self.upstream_checked.store(true, Ordering::Release);
    }

    /// Time since the shard map was last confirmed current (None: never).
    pub fn shard_map_age(&self) -> Option<Duration> {
        lock(&self.shard_map_confirmed).map(|t| t.elapsed())
    }

    /// Was the coordinator reachable at the last check? None: not checked yet.
    pub fn coordinator_reachable(&self) -> Option<bool> {
        self.coordinator_checked
            .load(Ordering::Acquire)
            .then(|| self.coordinator_ok.load(Ordering::Relaxed))
    }

    fn set_coordinator(&self, r: Result<(), String>) {
        self.coordinator_ok.store(r.is_ok(), Ordering::Relaxed);
        *lock(&self.coordinator_error) = r.err();
        self.coordinator_checked.store(true, Ordering::Release);
    }

    fn heartbeat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Why the process is not alive, empty when it is: the runtime stopped running
    /// timers, or an accept loop ended while not draining.
    pub fn liveness(&self, draining: bool) -> Vec<String> {
        let mut why = Vec::new();
        let now = self.started.elapsed();
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        if now > STALL && now.saturating_sub(beat) > STALL {
            why.push(format!(
                "runtime stalled: last heartbeat {:.1} s ago",
                now.saturating_sub(beat).as_secs_f64()
            ));
        }
        let started = self.accept_loops_started.load(Ordering::Relaxed);
        let running = self.accept_loops.load(Ordering::Relaxed);
        if !draining && running < started {
            why.push(format!(
                "accept loop stopped: {running} of {started} running"
            ));
        }
        why
    }
}

/// Why pgtenant should not get traffic, one reason per entry; empty = ready.
///
/// Ready means: the configuration is loaded (it is, or `serve` would not run), not
/// draining, the coordinator answered the last TCP check, and, when the upstream is a
/// Citus coordinator (or `routing = on`), a shard map is loaded and was confirmed current
/// within `shard_map_max_age`.
pub fn readiness(ctx: &Context) -> Vec<String> {
    let s = ctx.settings();
    let mut why = Vec::new();
    if ctx.shutdown.is_cancelled() {
        why.push("draining: shutting down, not accepting new clients".to_string());
    }
    let coord = ctx.coordinator.load();
    match ctx.health.coordinator_reachable() {
        None => why.push(format!(
            "coordinator {}:{} not checked yet",
            coord.host, coord.port
        )),
        Some(false) => why.push(format!(
            "coordinator {}:{} unreachable: {}",
            coord.host,
            coord.port,
            lock(&ctx.health.coordinator_error)
                .as_deref()
                .unwrap_or("unknown error")
        )),
        Some(true) => {}
    }
    let last_error = lock(&ctx.shard_map.last_error).clone();
    let detail = last_error.map(|e| format!(": {e}")).unwrap_or_default();
    if s.routing != Routing::Off && !ctx.health.upstream_checked.load(Ordering::Acquire) {
        // Until then a Citus coordinator would look like a plain PostgreSQL.
        why.push(format!(
            "upstream not checked yet (Citus or plain PostgreSQL?){detail}"
        ));
    }
    let wants_map = s.routing == Routing::On
        || (s.routing == Routing::Auto && ctx.shard_map.is_citus.load(Ordering::Relaxed));
    if wants_map {
        match (ctx.shard_map.get(), ctx.health.shard_map_age()) {
            (None, _) => why.push(format!("shard map not loaded{detail}")),
            (Some(_), Some(age)) if age <= s.shard_map_max_age => {}
            (Some(_), age) => why.push(format!(
                "shard map stale: last confirmed {} ago, shard_map_max_age is {} s{detail}",
                age.map_or("never".to_string(), |a| format!("{:.0} s", a.as_secs_f64())),
                s.shard_map_max_age.as_secs_f64()
            )),
        }
    }
    why
}

/// The heartbeat and the coordinator check, until `stop`.
pub fn spawn_probes(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_probe = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            ctx.health.heartbeat();
            if Instant::now() >= next_probe {
                let r = probe_coordinator(&ctx).await;
                if let Err(e) = &r {
                    if ctx.health.coordinator_reachable() != Some(false) {
                        tracing::warn!(error = %e, "coordinator unreachable: not ready");
                    }
                } else if ctx.health.coordinator_reachable() == Some(false) {
                    tracing::info!("coordinator reachable again");
                }
                ctx.health.set_coordinator(r);
                // Not faster than every 5 s: each check makes the postmaster fork a
                // backend.
                let every = ctx
                    .settings()
                    .shard_map_refresh_interval
                    .max(TICK)
                    .max(Duration::from_secs(5));
                next_probe = Instant::now() + every;
            }
        }
    })
}

/// A TCP (or unix socket) connect to the coordinator, closed at once without a startup
/// packet (PostgreSQL does not log a connection that sends nothing).
async fn probe_coordinator(ctx: &Context) -> Result<(), String> {
    let node = ctx.coordinator.load_full();
    let connect = crate::net::stream::connect(&node.host, node.port);
    match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no TCP connection within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}
