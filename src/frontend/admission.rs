//! Who may hold a connection: connections still logging in, and logged-in clients.
//!
//! The rules:
//! - A connection that has not finished authentication is *waiting*; at most
//!   `max_startup_clients` wait at once. A new connection beyond that makes the one that
//!   has waited longest *among the peer's with the most waiting* give way (it is closed),
//!   so that sockets which never log in can delay other clients only until newer
//!   connections push them out, never lock them out (an honest login takes
//!   milliseconds), and one peer that opens connections faster than logins finish pushes
//!   out its own, not everyone else's. A peer is an IPv4 address, an IPv6 /64 (what one
//!   host is given), or the Unix socket. Those closes are logged at most once a second.
//! - A waiting connection is closed after `client_login_timeout` (login.rs).
//! - A client takes a slot of `max_client_conn` only once it has authenticated, and
//!   keeps it until it leaves. Admin console users (admin_users, stats_users logging in to
//!   database `pgtenant` / `pgbouncer`) have [`ADMIN_RESERVE`] more slots, so the console
//!   stays reachable when ordinary clients fill max_client_conn.
//!
//! `Context::clients` still counts every open client connection, from accept to close
//! (metrics, SHOW LISTS); this module only decides who may stay.
use crate::sync::lock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Slots beyond max_client_conn that only admin console users may take.
pub const ADMIN_RESERVE: u32 = 5;

/// The admission state shared by all listeners.
pub struct Admission {
    waiting: Mutex<Queue>,
    next_id: AtomicU64,
    /// Clients that authenticated and have not left.
    logged_in: AtomicU32,
    /// Waiting connections closed to make room since the last log line.
    pushed_out: Throttle,
    /// Logins that timed out since the last log line.
    timed_out: Throttle,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            waiting: Mutex::default(),
            next_id: AtomicU64::new(0),
            logged_in: AtomicU32::new(0),
            pushed_out: Throttle::new(),
            timed_out: Throttle::new(),
        }
    }
}

/// Waiting connections by arrival (oldest first), and by peer.
#[derive(Default)]
struct Queue {
    /// How to close each, and its peer.
    by_arrival: BTreeMap<u64, (CancellationToken, Peer)>,
    /// Each peer's waiting connections, oldest first.
    by_peer: HashMap<Peer, VecDeque<u64>>,
}

/// Where connections come from, for fairness between them: an IPv4 address, an IPv6
/// /64, or None (the Unix socket, or an address not known).
pub type Peer = Option<IpAddr>;

/// The [`Peer`] of a connection from `addr`.
pub fn peer_of(addr: Option<std::net::SocketAddr>) -> Peer {
    Some(match addr?.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    })
}

impl Queue {
    fn insert(&mut self, id: u64, token: CancellationToken, peer: Peer) {
        self.by_arrival.insert(id, (token, peer));
        self.by_peer.entry(peer).or_default().push_back(id);
    }

    fn remove(&mut self, id: u64) {
        let Some((_, peer)) = self.by_arrival.remove(&id) else {
            return;
        };
        if let Some(q) = self.by_peer.get_mut(&peer) {
            q.retain(|&i| i != id);
            if q.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Close the connection that waited longest among those of the peer with the most
    /// waiting (the oldest such peer's, on a tie). A scan of the peers: it runs only when
    /// the queue is over max_startup_clients.
    fn push_out_one(&mut self) -> bool {
        let Some(peer) = self
            .by_peer
            .iter()
            .max_by_key(|(_, q)| (q.len(), std::cmp::Reverse(q.front().copied())))
            .map(|(p, _)| *p)
        else {
            return false;
        };
        let Some(id) = self.by_peer.get(&peer).and_then(|q| q.front().copied()) else {
            return false;
        };
        if let Some((token, _)) = self.by_arrival.get(&id) {
            token.cancel();
        }
        self.remove(id);
        true
    }
}

impl Admission {
    /// A new connection from `peer` starts logging in. If more than `max_waiting`
    /// connections are now waiting, the oldest of the peer with the most waiting is told
    /// to close.
    pub fn start_login(&self, max_waiting: u32, peer: Peer) -> Waiting<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut closed = 0u64;
        {
            let mut w = lock(&self.waiting);
            w.insert(id, token.clone(), peer);
            while w.by_arrival.len() > max_waiting.max(1) as usize && w.push_out_one() {
                closed += 1;
            }
        }
        if closed > 0 {
            if let Some(n) = self.pushed_out.add(closed) {
                tracing::warn!(
                    closed = n,
                    max_startup_clients = max_waiting,
                    "max_startup_clients reached: closed the connections that waited longest to log in, from the peers with the most waiting"
                );
            }
        }
        Waiting {
            admission: self,
            id,
            token,
        }
    }

    /// A connection did not log in within client_login_timeout (logged at most once a
    /// second, with the count).
    pub fn login_timed_out(&self, timeout: std::time::Duration) {
        if let Some(n) = self.timed_out.add(1) {
            tracing::info!(
                closed = n,
                client_login_timeout_s = timeout.as_secs_f64(),
                "client login timed out"
            );
        }
    }

    /// Connections logging in now.
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).by_arrival.len()
    }

    /// Clients that authenticated and have not left.
    pub fn logged_in(&self) -> u32 {
        self.logged_in.load(Ordering::Relaxed)
    }

    /// Take a logged-in slot if fewer than `limit` are taken. The slot is given back when
    /// the returned guard drops, unless it is [kept](ClientSlot::keep).
    pub fn take_slot(&self, limit: u32) -> Option<ClientSlot<'_>> {
        self.logged_in
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot {
                admission: self,
                kept: false,
            })
    }

    /// A client whose slot was kept has left.
    pub fn client_left(&self) {
        self.logged_in.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection logging in; it stops counting as waiting when dropped or
/// [finished](Waiting::finish).
pub struct Waiting<'a> {
    admission: &'a Admission,
    id: u64,
    token: CancellationToken,
}

impl Waiting<'_> {
    /// Resolves when this connection must close to make room for newer ones.
    pub async fn pushed_out(&self) {
        self.token.cancelled().await
    }

    /// Authenticated: no longer waiting, and no longer closed to make room.
    pub fn finish(&self) {
        lock(&self.admission.waiting).remove(self.id);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A logged-in slot during login: given back on drop unless kept.
pub struct ClientSlot<'a> {
    admission: &'a Admission,
    kept: bool,
}

impl ClientSlot<'_> {
    /// The login succeeded: the slot stays taken until [`Admission::client_left`].
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.admission.client_left();
        }
    }
}

/// Counts events and lets one log line through per second, with the count since the
/// last one: a flood of connections must not become a flood of log lines.
pub struct Throttle {
    start: Instant,
    /// Milliseconds since `start` of the last line, +1 (0 = never).
    last: AtomicU64,
    count: AtomicU64,
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle {
            start: Instant::now(),
            last: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Count `n` events; `Some(total since the last line)` when a line may be written now.
    pub fn add(&self, n: u64) -> Option<u64> {
        self.count.fetch_add(n, Ordering::AcqRel);
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Acquire);
        if last != 0 && now < last + 1000 {
            return None;
        }
        self.last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(self.count.swap(0, Ordering::AcqRel))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_gives_way() {
        let a = Admission::default();
        let w1 = a.start_login(2, None);
        let w2 = a.start_login(2, None);
        assert!(!w1.token.is_cancelled());
        let w3 = a.start_login(2, None);
        assert!(w1.token.is_cancelled(), "the oldest is pushed out");
        assert!(!w2.token.is_cancelled() && !w3.token.is_cancelled());
        assert_eq!(a.waiting(), 2);
        // A finished login no longer counts, and is never pushed out.
        w2.finish();
        let w4 = a.start_login(2, None);
        assert!(!w2.token.is_cancelled() && !w3.token.is_cancelled());
        assert_eq!(a.waiting(), 2);
        drop((w1, w2, w3, w4));
        assert_eq!(a.waiting(), 0);
        assert!(lock(&a.waiting).by_peer.is_empty());
    }

    /// One peer opening connections faster than logins finish pushes out its own
    /// connections, not the other peers' (which waited longer).
    #[test]
    fn the_peer_with_the_most_waiting_gives_way() {
        let a = Admission::default();
        let honest = peer_of(Some("10.0.0.1:5000".parse().unwrap()));
        let flood = peer_of(Some("10.0.0.2:5000".parse().unwrap()));
        let h1 = a.start_login(4, honest);
        let h2 = a.start_login(4, honest);
        let mut floods: Vec<_> = (0..20).map(|_| a.start_login(4, flood)).collect();
        assert!(!h1.token.is_cancelled() && !h2.token.is_cancelled());
        assert_eq!(a.waiting(), 4);
        let alive: Vec<bool> = floods.iter().map(|w| !w.token.is_cancelled()).collect();
        assert_eq!(alive.iter().filter(|x| **x).count(), 2);
        assert!(alive[18] && alive[19], "the flood's newest stay: {alive:?}");
        // One peer left: its oldest goes, as before.
        floods.truncate(0);
        let h3 = a.start_login(2, honest);
        assert_eq!(a.waiting(), 2);
        assert!(h1.token.is_cancelled() && !h2.token.is_cancelled());
        drop((h2, h3));
        assert_eq!(a.waiting(), 0);
        // IPv6 peers are /64s; an IPv4-mapped address is its IPv4 one.
        assert_eq!(
            peer_of(Some("[2001:db8::1]:1".parse().unwrap())),
            peer_of(Some("[2001:db8::ffff:2]:1".parse().unwrap()))
        );
        assert_eq!(
            peer_of(Some("[::ffff:10.0.0.1]:1".parse().unwrap())),
            honest
        );
    }

    #[test]
    fn slots_are_given_back_unless_kept() {
        let a = Admission::default();
        let s1 = a.take_slot(2).expect("first");
        let s2 = a.take_slot(2).expect("second");
        assert!(a.take_slot(2).is_none(), "limit 2");
        assert!(
            a.take_slot(3).is_some(),
            "a higher limit (the admin reserve)"
        );
        drop(s1);
        assert_eq!(a.logged_in(), 1);
        s2.keep();
        assert_eq!(a.logged_in(), 1);
        a.client_left();
        assert_eq!(a.logged_in(), 0);
    }

    #[test]
    fn throttle_lets_one_line_through_per_second() {
        let t = Throttle::new();
        assert_eq!(t.add(1), Some(1));
        assert_eq!(t.add(1), None);
        assert_eq!(t.add(2), None);
        std::thread::sleep(std::time::Duration::from_millis(1010));
        assert_eq!(t.add(1), Some(4));
    }
}
