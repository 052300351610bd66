//! A pool's limits: its entry's and role's `Limits`, the max_db_connections and
//! max_user_connections counters (`Counter`, per node), and closing another pool's idle
//! connection when one of them is full.
use super::*;

/// Server connections of one database entry (max_db_connections) or one server role
/// (max_user_connections) on one node.
pub struct Counter {
    pub count: AtomicU32,
    /// Woken when a connection it counts closes (or goes idle).
    pub freed: Notify,
    /// Every pool it counts, so that a pool at the limit can close an idle connection of
    /// another one (PgBouncer's evict_connection).
    pub(super) pools: Mutex<Vec<Weak<Pool>>>,
}
/// Which limit stopped a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    Database,
    Role,
}

impl Pool {
    /// This pool's limits under settings `s` (its entry's, its role's, the global ones).
    pub fn limits(&self, s: &Settings) -> crate::config::Limits {
        s.limits(&self.key.database, &self.key.user)
    }
    pub(super) fn pool_size(&self, s: &Settings) -> u32 {
        self.limits(s).pool_size
    }
    /// Count one more connection of this database entry and this role, if both limits
    /// allow it.
    pub(super) fn try_count(&self) -> bool {
        self.try_count_which().is_ok()
    }
    /// [`Pool::try_count`], saying which limit is full.
    pub(super) fn try_count_which(&self) -> Result<(), Full> {
        let l = self.limits(&self.settings.load());
        if !Self::try_count_one(&self.db, l.max_db_connections) {
            return Err(Full::Database);
        }
        if !Self::try_count_one(&self.role, l.max_user_connections) {
            self.db.count.fetch_sub(1, Ordering::AcqRel);
            // Someone may have seen the database full while this count stood.
            self.db.freed.notify_waiters();
            return Err(Full::Role);
        }
        Ok(())
    }
    pub(super) fn try_count_one(c: &Counter, max: u32) -> bool {
        if max == 0 {
            c.count.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        c.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
    /// Close one idle connection of another pool of the same database or role (the
    /// longest idle one first in each pool). Called with this pool's lock held: it only
    /// try-locks the others, so two pools evicting for each other cannot deadlock.
    /// Only pools of the limit that is `full` count: closing another role's idle
    /// connection frees nothing for a role at max_user_connections.
    pub(super) fn evict_idle_elsewhere(&self, full: Full) -> bool {
        let counter = match full {
            Full::Database => &self.db,
            Full::Role => &self.role,
        };
        let pools: Vec<Arc<Pool>> = counter
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for p in pools {
            if std::ptr::eq(Arc::as_ptr(&p), self) {
                continue;
            }
            let Ok(mut g) = p.inner.try_lock() else {
                continue;
            };
            if let Some(c) = g.idle.pop_front() {
                p.drop_slot(&mut g);
                drop(g);
                tracing::debug!(pool = %p.name(), server = c.id, for_pool = %self.name(), "closing idle server connection: max_db_connections or max_user_connections reached");
                c.terminate();
                return true;
            }
        }
        false
    }
    /// After a reload: let waiters use slots a larger pool_size opened up.
    pub fn regrant(&self) {
        let s = self.settings.load();
        let mut g = self.lock();
        while g.total < self.pool_size(&s) && g.queue.has_turns() {
            let before = g.total;
            self.grant_slot(&mut g);
            if g.total == before {
                break;
            }
        }
    }
}
