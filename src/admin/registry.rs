//! Every logged-in client, for SHOW CLIENTS, SHOW POOLS' client counts and KILL_CLIENT.
//! The map is written at login and logout only; a session's [`SessionConsole`] (in its
//! `ClientState`) gets relaxed stores from the session loop, no lock.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// One client session as the console sees it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    pub connect_time: SystemTime,
    pub application_name: Arc<str>,
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
                crate::frontend::cancel_session_token(&c.kill);
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

/// What the console shows of a session beyond its state (SHOW CLIENTS' link,
/// request_time, prepared_statements), and its side of SUSPEND. It lives in the session's
/// `ClientState`; the session loop writes it with relaxed stores, no lock.
#[derive(Debug, Default)]
pub struct SessionConsole {
    /// Id of the server connection lent to the session, 0 when none.
    link: AtomicU64,
    /// When the client last sent something (Unix seconds, from [`now_secs`]); 0: never.
    request_s: AtomicU64,
    /// Named protocol-level prepared statements in the client's view.
    prepared: AtomicU32,
    pub suspend: super::suspend::SessionSuspend,
}

impl SessionConsole {
    /// The client sent something.
    #[inline]
    pub fn requested(&self) {
        self.request_s.store(now_secs(), Ordering::Relaxed);
    }

    /// The server lent to the session now (0: none) and its prepared statement count.
    #[inline]
    pub fn publish(&self, link: u64, prepared: usize) {
        self.link.store(link, Ordering::Relaxed);
        self.prepared.store(prepared as u32, Ordering::Relaxed);
    }

    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    pub fn request_time(&self) -> Option<SystemTime> {
        match self.request_s.load(Ordering::Relaxed) {
            0 => None,
            s => Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }
}

/// Unix seconds, refreshed every second by the task [`spawn_clock`] starts, so that
/// stamping a request costs one relaxed load (PgBouncer's cached time). 0 until it ticks.
static CLOCK_S: AtomicU64 = AtomicU64::new(0);

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The coarse clock (exact while nothing runs it).
#[inline]
pub fn now_secs() -> u64 {
    match CLOCK_S.load(Ordering::Relaxed) {
        0 => wall_secs(),
        s => s,
    }
}

/// Keep [`now_secs`] fresh until `stop`.
pub fn spawn_clock(stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            CLOCK_S.store(wall_secs(), Ordering::Relaxed);
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => {
                    // Stopped: `now_secs` reads the wall clock again, not a stale value.
                    CLOCK_S.store(0, Ordering::Relaxed);
                    return;
                }
            }
        }
    })
}
