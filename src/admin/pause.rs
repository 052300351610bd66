//! PAUSE [db] / RESUME [db] as PgBouncer: while a database (or everything) is paused, a
//! client's next transaction waits for a server until RESUME; PAUSE itself returns once the
//! server connections lent to clients have come back. The session loop checks
//! [`PauseState::is_paused`] (one relaxed atomic load when nothing is paused) before it
//! takes a server for a new transaction.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{AdminError, Reply};
use crate::context::Context;

#[derive(Default)]
pub struct PauseState {
    /// Anything paused at all (the fast path).
    any: AtomicBool,
    all: AtomicBool,
    dbs: Mutex<HashSet<String>>,
    resumed: Notify,
}

impl PauseState {
    fn dbs(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.dbs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_paused(&self, db: &str) -> bool {
        self.any.load(Ordering::Relaxed)
            && (self.all.load(Ordering::Relaxed) || self.dbs().contains(db))
    }

    /// Everything paused (SHOW STATE).
    pub fn all_paused(&self) -> bool {
        self.all.load(Ordering::Relaxed)
    }

    /// Anything paused, everything or one database (SUSPEND refuses then).
    pub fn any_paused(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    fn pause(&self, db: Option<&str>) {
        match db {
            Some(db) => {
                self.dbs().insert(db.to_owned());
            }
            None => self.all.store(true, Ordering::Relaxed),
        }
        self.any.store(true, Ordering::Relaxed);
    }

    fn resume(&self, db: Option<&str>) {
        let mut dbs = self.dbs();
        match db {
            Some(db) => {
                dbs.remove(db);
            }
            None => {
                dbs.clear();
                self.all.store(false, Ordering::Relaxed);
            }
        }
        let any = self.all.load(Ordering::Relaxed) || !dbs.is_empty();
        self.any.store(any, Ordering::Relaxed);
        drop(dbs);
        self.resumed.notify_waiters();
    }

    /// Wait while `db` is paused.
    pub async fn wait(&self, db: &str) {
        loop {
            let resumed = self.resumed.notified();
            if !self.is_paused(db) {
                return;
            }
            resumed.await;
        }
    }
}

/// Server connections of `db` (or of all databases) lent to clients.
fn active(ctx: &Context, db: Option<&str>) -> u32 {
    ctx.pools
        .all()
        .iter()
        .filter(|p| db.is_none_or(|d| *p.key.database == *d))
        .map(|p| p.stats.active.get_gauge() as u32)
        .sum()
}

pub async fn pause(ctx: &Arc<Context>, db: Option<&str>) -> Result<Reply, AdminError> {
    let state = &ctx.admin.pause;
    if db.is_none() && state.all_paused() || db.is_some_and(|d| state.dbs().contains(d)) {
        return Err(AdminError::new("already paused"));
    }
    state.pause(db);
    tracing::info!(database = db.unwrap_or("*"), "PAUSE from the admin console");
    while active(ctx, db) > 0 {
        let still = match db {
            None => state.all_paused(),
            Some(d) => state.is_paused(d),
        };
        if !still {
            break; // RESUMEd meanwhile
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Reply::Tag("PAUSE"))
}

pub fn resume(ctx: &Arc<Context>, db: Option<&str>) -> Result<Reply, AdminError> {
    let state = &ctx.admin.pause;
    let paused = match db {
        None => state.any.load(Ordering::Relaxed),
        Some(d) => state.all_paused() || state.dbs().contains(d),
    };
    if !paused {
        return Err(AdminError::new("pooler is not paused/suspended"));
    }
    state.resume(db);
    tracing::info!(
        database = db.unwrap_or("*"),
        "RESUME from the admin console"
    );
    Ok(Reply::Tag("RESUME"))
}
