//! Every logged-in client, for SHOW CLIENTS, SHOW POOLS' client counts and KILL_CLIENT.
//! The map is written at login and logout only; a session's [`SessionConsole`] (in its
//! `ClientState`) gets relaxed stores from the session loop, no lock.
//!
//! A client's entry is the one allocation every connected client keeps for as long as it
//! is connected (its session holds the same `Arc`, parked or not): what the console
//! shows of it and its `ClientState` live in it together (memory per idle client).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::metrics::counters::ClientState;

/// One client session as the console sees it. Every connected client has one: its
/// fields are kept small (see [`Addr`], [`ClientInfo::connect_time`]).
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub addr: Option<Addr>,
    pub local_addr: Option<Addr>,
    /// When it connected, µs since the Unix epoch (see [`ClientInfo::connect_time`]).
    pub connect_us: u64,
    pub application_name: Arc<str>,
    pub tls: bool,
    /// An admin console session's token (a child of the shutdown token, awaited by the
    /// console loop), cancelled by KILL / KILL_CLIENT; a client's session is killed
    /// through its `state` instead. Some: this is a console session.
    pub kill: Option<CancellationToken>,
    /// Active / waiting / idle, and the session's side of the console (a console
    /// session's is unused: see [`ClientInfo::session`]).
    pub state: ClientState,
}

impl AsRef<ClientState> for ClientInfo {
    fn as_ref(&self) -> &ClientState {
        &self.state
    }
}

/// A socket address as SHOW CLIENTS shows it, in 20 bytes (a `SocketAddr` takes 32 for
/// an IPv6 flow label and scope id nobody shows): memory per client.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    ip: std::net::IpAddr,
    port: u16,
}

impl Addr {
    pub fn ip(&self) -> std::net::IpAddr {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Addr {
        Addr {
            ip: a.ip(),
            port: a.port(),
        }
    }
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::new(self.ip, self.port).fmt(f)
    }
}

/// Now, µs since the Unix epoch (for [`ClientInfo::connect_us`]).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl ClientInfo {
    pub fn connect_time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(self.connect_us)
    }

    /// A client's session state; None for an admin console session (always active).
    #[inline]
    pub fn session(&self) -> Option<&ClientState> {
        self.kill.is_none().then_some(&self.state)
    }

    /// End this client's session (after its transaction) or console session.
    pub fn kill(&self) {
        match &self.kill {
            None => self.state.console.kill(),
            Some(t) => t.cancel(),
        }
    }
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
        self.insert(info.clone());
        info
    }

    /// Enter an entry made beforehand (a client's, made at its login).
    pub fn insert(&self, info: Arc<ClientInfo>) {
        self.map.insert(info.id, info);
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

    /// Wake every client's session, to look at its flags and the shutdown token (the
    /// signal count moves once, before any of them wakes).
    pub fn wake_sessions(&self) {
        crate::frontend::signal_sessions();
        // Woken after the map's locks are let go: a parked session's waker spawns its
        // task (see `net::park`), which must not run under them.
        let clients: Vec<_> = self
            .map
            .iter()
            .filter(|e| e.value().session().is_some())
            .map(|e| e.value().clone())
            .collect();
        for c in clients {
            c.state.console.suspend.wake_after_signal();
        }
    }

    /// The idle sweep (`frontend::session::park`, twice a second): sessions its sweeps
    /// saw idle `park_after` times in a row, with nothing sent since, are asked to park
    /// and woken (the signal count moves once, before any of them wakes). Returns how
    /// many were asked.
    pub fn ask_idle_to_park(&self) -> usize {
        let mut asked = Vec::new();
        for e in self.map.iter() {
            if let Some(s) = e.value().session() {
                if s.kind() == crate::metrics::counters::ClientStateKind::Idle
                    && s.console.sweep_idle()
                {
                    asked.push(e.value().clone());
                }
            }
        }
        if !asked.is_empty() {
            crate::frontend::signal_sessions();
            for c in &asked {
                c.state.console.suspend.wake_after_signal();
            }
        }
        asked.len()
    }

    /// End one client's session. False if there is no such client.
    pub fn kill(&self, id: u64) -> bool {
        match self.map.get(&id) {
            Some(c) => {
                c.kill();
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
    /// KILL / KILL_CLIENT came: the session ends (after its transaction). A flag and the
    /// session's waker (kept in `suspend`) rather than a cancellation token per client:
    /// the memory every idle client costs.
    killed: AtomicBool,
    pub suspend: super::suspend::SessionSuspend,
    /// Where the session stands towards parking (`frontend::session::park`): the sweeps
    /// that saw it idle since its client last sent something, or [`PARK_ASKED`] or
    /// [`PARK_PARKED`].
    park: AtomicU8,
    /// Sweeps of idleness before it is asked to park: 2 (0.5–1 s), doubled up to
    /// [`PARK_AFTER_MAX`] each time it came back within 2 s of parking or declined, and
    /// back to 2 once it stayed parked a minute (see [`SessionConsole::set_parked`]).
    park_after: AtomicU8,
    /// When it last parked ([`now_secs`], truncated).
    parked_at: AtomicU32,
}

/// Parking states past the count of idle sweeps ([`SessionConsole`]): asked to park, …
const PARK_ASKED: u8 = 254;
/// … parked.
const PARK_PARKED: u8 = 255;
/// Sweeps before the first ask (0.5–1 s), and the most (16 s, see `park_after`).
const PARK_AFTER_MIN: u8 = 2;
const PARK_AFTER_MAX: u8 = 32;

impl SessionConsole {
    /// The client sent something.
    #[inline]
    pub fn requested(&self) {
        self.request_s.store(now_secs(), Ordering::Relaxed);
        if self.park.load(Ordering::Relaxed) != 0 {
            self.park.store(0, Ordering::Relaxed);
        }
    }

    /// The idle sweep's look at this session (its state is idle): one more sweep that saw
    /// it idle; after `park_after` of them it is asked to park (true: wake it).
    fn sweep_idle(&self) -> bool {
        let seen = self.park.load(Ordering::Relaxed);
        if seen >= PARK_ASKED {
            return false;
        }
        let after = self.park_after.load(Ordering::Relaxed).max(PARK_AFTER_MIN);
        let next = seen + 1;
        if next < after {
            // A message in between (back to 0) wins.
            let _ = self
                .park
                .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
            return false;
        }
        self.park
            .compare_exchange(seen, PARK_ASKED, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Was the session asked to park (and has not answered yet)?
    #[inline]
    pub fn park_asked(&self) -> bool {
        self.park.load(Ordering::Relaxed) == PARK_ASKED
    }

    /// The session parked (true), or took up its task again (false). A client that came
    /// back within 2 s of parking waits twice as long before the next ask (a client
    /// with steady gaps stops paying for parks it does not keep); one that stayed parked
    /// a minute starts over.
    pub fn set_parked(&self, parked: bool) {
        let now = now_secs() as u32;
        if parked {
            self.parked_at.store(now, Ordering::Relaxed);
            self.park.store(PARK_PARKED, Ordering::SeqCst);
            return;
        }
        let stayed = now.wrapping_sub(self.parked_at.load(Ordering::Relaxed));
        if stayed <= 2 {
            self.back_off();
        } else if stayed >= 60 {
            self.park_after.store(PARK_AFTER_MIN, Ordering::Relaxed);
        }
        self.park.store(0, Ordering::SeqCst);
    }

    /// The session could not park now: asked again later, after twice as many sweeps.
    pub fn decline_park(&self) {
        self.back_off();
        self.park.store(0, Ordering::Relaxed);
    }

    fn back_off(&self) {
        let after = self.park_after.load(Ordering::Relaxed).max(PARK_AFTER_MIN);
        self.park_after
            .store((after * 2).min(PARK_AFTER_MAX), Ordering::Relaxed);
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

    /// End the session (KILL, KILL_CLIENT): the flag, then a wake-up.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.suspend.wake();
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Resolves once the session is killed. Awaited only inside the session's own task:
    /// it leaves that task's waker where [`SessionConsole::kill`] wakes it.
    pub fn killed(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            // The waker first, then the flag: a kill in between still wakes it.
            self.suspend.set_waker(cx.waker());
            match self.is_killed() {
                true => std::task::Poll::Ready(()),
                false => std::task::Poll::Pending,
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A session is asked to park after two idle sweeps; one that came back within 2 s
    /// of parking, or declined, waits twice as many (up to 32); one parked a minute
    /// starts over; a message resets the count.
    #[test]
    fn parking_is_asked_after_idle_sweeps_and_backs_off() {
        let c = SessionConsole::default();
        let sweeps_to_ask = |c: &SessionConsole| (1..=64).find(|_| c.sweep_idle()).unwrap_or(0);
        assert_eq!(sweeps_to_ask(&c), 2);
        assert!(c.park_asked());
        assert!(!c.sweep_idle(), "asked once");
        c.set_parked(true);
        assert!(!c.sweep_idle(), "a parked session is not asked");
        c.set_parked(false); // back at once
        assert_eq!(sweeps_to_ask(&c), 4);
        c.decline_park();
        assert_eq!(sweeps_to_ask(&c), 8);
        c.requested();
        c.sweep_idle();
        c.requested();
        assert_eq!(sweeps_to_ask(&c), 8, "a message starts the count again");
        for _ in 0..4 {
            c.decline_park();
        }
        assert_eq!(sweeps_to_ask(&c), 32);
        c.set_parked(true);
        c.parked_at.fetch_sub(120, Ordering::Relaxed);
        c.set_parked(false); // parked two minutes
        assert_eq!(sweeps_to_ask(&c), 2);
    }

    /// KILL reaches a session waiting in `killed()` (and one that looks at the flag
    /// later), wakes it once, and bumps the signal count first so that a session skipping
    /// its checks (same waker, same count) looks again.
    #[test]
    fn a_kill_wakes_the_waiting_session() {
        let c = SessionConsole::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut killed = std::pin::pin!(c.killed());
        assert!(killed.as_mut().poll(&mut cx).is_pending());
        assert!(!c.is_killed());
        let before = crate::frontend::session_signals();
        c.kill();
        assert!(crate::frontend::session_signals() > before);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(c.is_killed());
        assert_eq!(killed.as_mut().poll(&mut cx), Poll::Ready(()));
        // Killed for good: a later wait ends at once.
        assert_eq!(std::pin::pin!(c.killed()).poll(&mut cx), Poll::Ready(()));
    }

    /// Shutdown wakes every registered session (they hold no registration with the
    /// token); a console session without state is skipped.
    #[test]
    fn wake_sessions_reaches_every_session() {
        let reg = ClientRegistry::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        for console in [false, true, false] {
            let state = ClientState::default();
            if !console {
                state.console.suspend.set_waker(&waker);
            }
            reg.register(ClientInfo {
                id: reg.next_id(),
                user: "u".into(),
                database: "d".into(),
                addr: None,
                local_addr: None,
                connect_us: now_us(),
                application_name: "".into(),
                tls: false,
                kill: console.then(CancellationToken::new),
                state,
            });
        }
        reg.wake_sessions();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
