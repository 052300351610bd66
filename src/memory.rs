//! Giving memory back to the operating system once many clients have left, and
//! dropping the prepared statements no client uses any more.
//!
//! Client connections are small (see `frontend::handle_client`), but glibc's allocator
//! keeps freed memory in its arenas: after a burst of 10,000 clients that all left, the
//! resident size would stay at the burst's peak. A background task looks every 5 s:
//!
//! - it sweeps the prepared-statement registry (`frontend::prepared`): statements no
//!   client refers to any more are dropped;
//! - it asks the allocator to return its free pages (`malloc_trim`) once the number of
//!   connected clients, or of pools (`pool::Pools::remove_unused`), fell well below the
//!   peak seen since the last trim, once many more clients are parked than at the last
//!   trim (they gave up their tasks, see `net::park`), or the sweep freed at least 4 MiB.
//!
//! Nothing runs on the hot path. The other memory limits: large messages count against a
//! process-wide budget (`net::budget`), unused pools are removed by the janitor.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// How often the registry is swept and the counts are looked at.
const PERIOD: Duration = Duration::from_secs(5);
/// Trim after a statement sweep that freed at least this many bytes.
const MIN_FREED: usize = 4 << 20;
/// Trim once at least this many clients (or pools) went since the peak...
const MIN_DROP: u32 = 256;

/// ...and at least half of them: `true` when memory should be trimmed now.
fn should_trim(peak: u32, now: u32) -> bool {
    peak.saturating_sub(now) >= MIN_DROP && now <= peak / 2
}

/// Peaks since the last trim: clients connected, pools; and the fewest clients parked
/// (see `net::park`).
#[derive(Default)]
struct Peaks {
    clients: u32,
    pools: u32,
    parked_low: u32,
}

/// Return free heap pages to the OS. Returns whether the allocator released anything.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

pub fn spawn_trimmer(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut peak = Peaks::default();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // The sweep locks the registry's shards one by one: off the runtime's threads.
            let c = ctx.clone();
            let (swept, freed) = tokio::task::spawn_blocking(move || c.statements.sweep())
                .await
                .unwrap_or_default();
            if swept > 0 {
                tracing::debug!(
                    swept,
                    freed,
                    left = ctx.statements.len(),
                    "dropped prepared statements no client uses"
                );
            }
            let parked = u32::try_from(crate::net::park::parked()).unwrap_or(u32::MAX);
            let now = Peaks {
                clients: ctx.clients.load(Ordering::Relaxed),
                pools: u32::try_from(ctx.pools.len()).unwrap_or(u32::MAX),
                parked_low: parked,
            };
            peak.clients = peak.clients.max(now.clients);
            peak.pools = peak.pools.max(now.pools);
            peak.parked_low = peak.parked_low.min(parked);
            // Clients that parked gave up their tasks: many more parked than at the last
            // trim (the same test, the other way round) leave freed tasks behind.
            if should_trim(peak.clients, now.clients)
                || should_trim(peak.pools, now.pools)
                || should_trim(parked, peak.parked_low)
                || freed >= MIN_FREED
            {
                let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
                tracing::debug!(
                    peak_clients = peak.clients,
                    clients = now.clients,
                    parked,
                    parked_low = peak.parked_low,
                    peak_pools = peak.pools,
                    pools = now.pools,
                    freed,
                    released,
                    "gave free memory back to the OS"
                );
                peak = now;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_drop() {
        assert!(!should_trim(0, 0));
        assert!(!should_trim(100, 0), "a small burst is not worth a trim");
        assert!(!should_trim(10_000, 9_000), "most clients are still there");
        assert!(should_trim(10_000, 5_000));
        assert!(should_trim(10_000, 0));
    }
}
