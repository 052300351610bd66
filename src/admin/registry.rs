//! Every logged-in client, for SHOW CLIENTS, SHOW POOLS' client counts and KILL_CLIENT.
//! Written at login and logout only; nothing here is touched per statement.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// One client session as the console sees it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    pub connect_time: SystemTime,
    pub application_name: String,
    pub tls: bool,
    /// Cancelled by KILL / KILL_CLIENT: the session ends (after its transaction).
    pub kill: CancellationToken,
    /// Active / waiting / idle (None: an admin console session, always active).
    pub state: Option<Arc<crate::metrics::counters::ClientState>>,
}

#[derive(Default)]
pub struct ClientRegistry {
    map: DashMap<u64, Arc<ClientInfo>>,
    next: AtomicU64,
}

impl ClientRegistry {
    /// A fresh client id (1, 2, …).
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn register(&self, info: ClientInfo) -> Arc<ClientInfo> {
        let info = Arc::new(info);
        self.map.insert(info.id, info.clone());
        info
    }

    pub fn unregister(&self, id: u64) {
        self.map.remove(&id);
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// End one client's session. False if there is no such client.
    pub fn kill(&self, id: u64) -> bool {
        match self.map.get(&id) {
            Some(c) => {
                c.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// Clients of one database (user, count).
    pub fn count_where(&self, pick: impl Fn(&ClientInfo) -> bool) -> usize {
        self.map.iter().filter(|e| pick(e.value())).count()
    }
}
