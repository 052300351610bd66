//! Periodic pool upkeep (PgBouncer's janitor.c): close idle connections past
//! server_idle_timeout or server_lifetime, keep min_pool_size connections open, and
//! remove pools nobody uses (`pool_idle_timeout`; see [`Pools::remove_unused`]).
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Pool, Pools};

/// Run upkeep every second until `stop` fires.
pub fn spawn_janitor(pools: Arc<Pools>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // First, while no connect of fill_min's is in flight: a pool that cannot
            // connect (min_pool_size > 0 on a database that does not exist) still goes.
            let idle_for = pools.settings.load().pool_idle_timeout;
            let removed = pools.remove_unused(idle_for, Instant::now());
            if removed > 0 {
                tracing::debug!(removed, left = pools.len(), "removed unused pools");
            }
            for pool in pools.all() {
                pool.sweep();
                fill_min(&pool);
            }
        }
    })
}

impl Pool {
    /// Close idle connections that are past their time or that the server closed.
    pub fn sweep(&self) {
        let s = self.settings.load();
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut g = self.lock();
            // As in PgBouncer, server_idle_timeout does not close connections that
            // min_pool_size keeps (server_lifetime still does; fill_min reopens them).
            let min = self.limits(&s).min_pool_size;
            let mut i = 0;
            while i < g.idle.len() {
                let total = g.total;
                let c = &mut g.idle[i];
                let stale = c.conn.is_stale();
                let past_lifetime = !s.server_lifetime.is_zero()
                    && now.duration_since(c.created) >= s.server_lifetime;
                let expired = Self::expired(&s, c, now) && (past_lifetime || total > min);
                if stale || expired {
                    if let Some(c) = g.idle.remove(i) {
                        closed.push(c);
                    }
                    self.drop_slot(&mut g);
                } else {
                    i += 1;
                }
            }
        }
        for c in closed {
            tracing::debug!(pool = %self.name(), server = c.id, "closing idle server connection");
            c.terminate();
        }
    }
}

/// Open connections up to min_pool_size, for pools that have been used (so a credential is
/// known), one at a time in the background.
fn fill_min(pool: &Arc<Pool>) {
    let s = pool.settings.load();
    let min = pool.limits(&s).min_pool_size;
    // A stale pool's entry now leads elsewhere: nothing is opened there any more.
    if min == 0 || !pool.has_credential() || pool.is_stale() {
        return;
    }
    let open = {
        let mut g = pool.lock();
        if g.total < min && pool.try_count() {
            g.total += 1;
            true
        } else {
            false
        }
    };
    if open {
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Ok(c) = pool.open(None).await {
                // Count it as lent and give it straight back: it joins the idle list.
                pool.stats.active.add(1);
                pool.release(c, true);
            }
        });
    }
}
