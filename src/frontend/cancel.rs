//! Cancel requests: each client gets a BackendKeyData of pgtenant's own; a CancelRequest
//! carrying it is forwarded to the server connection that client holds right now.
//!
//! Safety: the session sets and clears its target under the slot's lock, and a cancel holds
//! that lock until the postmaster has closed the cancel socket (i.e. has signalled the
//! backend). So a server connection is never handed to the next client while a cancel
//! meant for the previous one is still on its way; a signal that lands after the query
//! finished finds the backend idle, and PostgreSQL ignores cancels while idle.
use std::sync::Arc;

use dashmap::DashMap;
use rand::Rng;
use tokio::sync::Mutex;

use crate::backend::{send_cancel, CancelTarget};

#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<Arc<CancelTarget>>>,
}

impl CancelSlot {
    pub async fn set(&self, t: Option<Arc<CancelTarget>>) {
        if let Err(t) = self.try_set(t) {
            *self.target.lock().await = t;
        }
    }

    /// Set without waiting; fails (giving `t` back) only while a cancel is on its way,
    /// which [`CancelSlot::set`] then waits for (see above).
    pub fn try_set(&self, t: Option<Arc<CancelTarget>>) -> Result<(), Option<Arc<CancelTarget>>> {
        match self.target.try_lock() {
            Ok(mut g) => {
                *g = t;
                Ok(())
            }
            Err(_) => Err(t),
        }
    }
}

/// Every logged-in client's key, by pid.
#[derive(Default)]
pub struct CancelRegistry {
    map: DashMap<i32, (i32, Arc<CancelSlot>)>,
}

/// Removes the client's key when its session ends.
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.map.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Give a new client a unique key.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut rng = rand::thread_rng();
        let slot = Arc::new(CancelSlot::default());
        loop {
            let pid = rng.gen_range(1..i32::MAX);
            let secret = rng.gen::<i32>();
            if let dashmap::Entry::Vacant(v) = self.map.entry(pid) {
                v.insert((secret, slot.clone()));
                return CancelKey {
                    pid,
                    secret,
                    slot,
                    registry: self.clone(),
                };
            }
        }
    }

    /// Handle a CancelRequest. Unknown keys and wrong secrets are ignored silently, as
    /// PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let slot = match self.map.get(&pid) {
            Some(e) if e.0 == secret => e.1.clone(),
            _ => {
                tracing::debug!(pid, "cancel request with unknown key ignored");
                return;
            }
        };
        let guard = slot.target.lock().await;
        if let Some(t) = guard.as_ref() {
            if let Err(e) = send_cancel(t).await {
                tracing::warn!(error = %e, "forwarding cancel request failed");
            } else {
                tracing::debug!(pid, server_pid = t.pid, "cancel request forwarded");
            }
        }
        drop(guard);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
