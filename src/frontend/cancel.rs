//! Cancel requests: a CancelRequest carrying a client's BackendKeyData is forwarded to the
//! server connection that client holds right now.
//!
//! In transaction and statement mode each client gets a key of pgtenant's own. In session
//! mode it gets its own server's pid with a secret of its own (`register_as`), so that
//! `pg_backend_pid()` and its key agree, unless another client holds that pid already (two
//! upstream servers may hand out the same pid numbers): then it gets a key of pgtenant's
//! own too. Never the server's real secret: a server connection outlives its client, and
//! a client that kept the secret could cancel the queries of every later client of that
//! connection (through pgtenant, or straight at the server). A key is unregistered before
//! its server connection can go to the next client (`unregister`), who gets the same pid
//! and a new secret.
//!
//! Safety: the session sets and clears its target under the slot's lock, and never while a
//! cancel taken from the slot is still on its way (it waits until the postmaster has
//! closed the cancel socket, i.e. has signalled the backend). So a server connection is
//! never handed to the next client while a cancel meant for the previous one is still
//! travelling; a signal that lands after the query finished finds the backend idle, and
//! PostgreSQL ignores cancels while idle. A cancel is sent from a task of its own that
//! holds it in flight, so dropping the connection that asked (pushed out of the login
//! queue, shutdown) does not end its count early.
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use rand::Rng;
use tokio::sync::Notify;

use crate::backend::{send_cancel, CancelTarget};

/// Where a client's cancel requests go. Set and cleared twice per transaction, so the
/// common case is one uncontended std mutex round trip; only a cancel in flight makes
/// the session wait (on `DELIVERED`).
#[derive(Default)]
pub struct CancelSlot {
    state: Mutex<SlotState>,
}

/// Notified whenever a cancel in flight has been delivered, whoever's: a session waiting
/// for one (rare) looks at its own slot again. One for all rather than one per client
/// (memory per idle client).
static DELIVERED: Notify = Notify::const_new();

#[derive(Default)]
struct SlotState {
    target: Option<Arc<CancelTarget>>,
    /// Cancels taken from this slot and not yet delivered.
    in_flight: u32,
    /// Cancels taken from this slot, ever (a batch tells whose a 57014 was).
    taken: u32,
    /// The client's statement waits in a batch (`pool::batch`): a cancel now is kept for
    /// when it starts (`wanted`).
    queued: bool,
    wanted: bool,
    /// The client asked for a cancel while one of its own was on its way: it is sent once
    /// that one is delivered, to the target then (see [`InFlight`]'s drop).
    again: bool,
    /// The target is where the client's batched unit runs (`pool::batch`), for this run
    /// only (`epoch`): a cancel taken now is sent again if the run still goes on a moment
    /// after it was delivered ([`RESEND_AFTER`]).
    unit: bool,
    /// Counts the runs of the client's batched units (each pointing at a server).
    epoch: u32,
    /// A resend is scheduled ([`RESEND_AFTER`]): at most one per slot, however many
    /// cancels the client asks meanwhile.
    resend_due: bool,
}

/// A cancel aimed at a batched unit that still runs this long after it was delivered is
/// sent again: PostgreSQL drops a cancel that lands while the backend reads its next
/// statement (a batch's statements follow each other at once, and the first one's backend
/// may not have woken up when the cancel lands on a loaded machine). Only while the key
/// still points at the same run of the same unit and the client took no cancel since; at
/// most [`UNIT_RESENDS`] times per cancel. One that lands after the unit ended is a late
/// cancel like any other (`pool::batch` runs the batch-mate it hit again).
const RESEND_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
const UNIT_RESENDS: u8 = 2;

impl CancelSlot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn set(&self, mut t: Option<Arc<CancelTarget>>) {
        loop {
            // Registered before looking: a cancel delivered in between still wakes us.
            let delivered = DELIVERED.notified();
            match self.try_set(t) {
                Ok(()) => return,
                Err(back) => t = back,
            }
            delivered.await;
        }
    }

    /// Set without waiting; fails (giving `t` back) only while a cancel is on its way,
    /// which [`CancelSlot::set`] then waits for (see above).
    pub fn try_set(&self, t: Option<Arc<CancelTarget>>) -> Result<(), Option<Arc<CancelTarget>>> {
        let mut g = self.lock();
        if g.in_flight > 0 {
            return Err(t);
        }
        g.target = t;
        g.unit = false;
        Ok(())
    }

    /// The target of a cancel about to be sent, counted in flight until the returned
    /// guard is dropped.
    /// None also while another cancel of this client is on its way: this one is then
    /// sent once that one is delivered (`again`), to the target the slot has then, which
    /// the session cannot have moved meanwhile (so it is the statement the client's
    /// first cancel was aimed at, or a later one of its own on the same connection, as a
    /// cancel asked a moment later would find). Several asked meanwhile make one: they
    /// would all find the same target. A client sending cancel after cancel still cannot
    /// keep its session from moving its target for long: each waits for the one before.
    fn take_for_cancel(self: &Arc<Self>) -> Option<(Arc<CancelTarget>, InFlight)> {
        let mut g = self.lock();
        if g.in_flight > 0 {
            g.again = true;
            return None;
        }
        let Some(t) = g.target.clone() else {
            g.wanted |= g.queued;
            return None;
        };
        Some((t.clone(), Self::taken_locked(self, &mut g, t)))
    }

    /// A cancel to `t` is taken now (under the slot's lock): counted in flight for the
    /// slot and for `t` until the guard is dropped.
    fn taken_locked(self: &Arc<Self>, g: &mut SlotState, t: Arc<CancelTarget>) -> InFlight {
        self.taken_with(g, t, UNIT_RESENDS)
    }

    /// [`CancelSlot::taken_locked`], sent again at most `resends` times while a batched
    /// unit's run it was aimed at goes on (never when the target is not a unit's).
    fn taken_with(
        self: &Arc<Self>,
        g: &mut SlotState,
        t: Arc<CancelTarget>,
        resends: u8,
    ) -> InFlight {
        g.in_flight += 1;
        g.taken = g.taken.wrapping_add(1);
        t.sending();
        InFlight {
            slot: self.clone(),
            target: t,
            resend: (g.unit && resends > 0).then_some(Resend {
                left: resends,
                epoch: g.epoch,
            }),
        }
    }

    /// Send the cancel again (see [`RESEND_AFTER`]) if the key still points at `t` for the
    /// same run of the client's unit, nothing is on its way and nothing was taken since.
    fn resend(self: &Arc<Self>, t: &Arc<CancelTarget>, r: Resend, taken: u32) {
        let in_flight = {
            let mut g = self.lock();
            g.resend_due = false;
            let same = g.unit
                && g.epoch == r.epoch
                && g.taken == taken
                && g.in_flight == 0
                && g.target.as_ref().is_some_and(|x| Arc::ptr_eq(x, t));
            if !same || t.unsettled() {
                return;
            }
            self.taken_with(&mut g, t.clone(), r.left - 1)
        };
        send_detached(t.clone(), in_flight, "a batched unit's repeated");
    }
}

impl CancelSlot {
    /// Cancel what this client's server runs now, on pgtenant's own account (a tenant's
    /// statement_timeout): the target is taken now, under the same rule as a client's
    /// cancel (the session cannot move its target, hence its server connection cannot go
    /// to another client, until the postmaster has signalled the backend), and sent from
    /// a task of its own. False when there is no target or a cancel is on its way already.
    pub fn cancel_detached(self: &Arc<Self>) -> bool {
        self.send_if(|_, _| true, "a statement timeout's")
    }

    /// Take the slot's target and send it a cancel from a task of its own, if no cancel
    /// is on its way and `aim` accepts the slot and its target (under the slot's lock).
    /// False when nothing was sent.
    fn send_if(
        self: &Arc<Self>,
        aim: impl FnOnce(&SlotState, &Arc<CancelTarget>) -> bool,
        why: &'static str,
    ) -> bool {
        let (t, in_flight) = {
            let mut g = self.lock();
            if g.in_flight > 0 {
                return false;
            }
            let Some(t) = g.target.clone().filter(|t| aim(&g, t)) else {
                return false;
            };
            (t.clone(), Self::taken_locked(self, &mut g, t))
        };
        send_detached(t, in_flight, why);
        true
    }
}

/// Send a cancel to `t` from a task of its own, which holds `in_flight` (made before the
/// task: counted down even if the task never runs) until the server has taken it: what
/// started it may be dropped meanwhile (the connection that carried a client's request,
/// pushed out by max_startup_clients, shutdown), and the session must not hand its server
/// connection to the next client while the signal may still land. `whose`: for the log.
fn send_detached(
    t: Arc<CancelTarget>,
    in_flight: InFlight,
    whose: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        match send_cancel(&t).await {
            Err(e) => {
                // It may still land (a slow postmaster): the connection must not go to
                // another client. Marked before the count goes down.
                t.mark_unsettled();
                tracing::warn!(error = %e, server_pid = t.pid, "forwarding {whose} cancel request failed or was not seen through; its server connection will be closed, not lent again")
            }
            Ok(()) => tracing::debug!(server_pid = t.pid, "{whose} cancel request forwarded"),
        }
    })
}

/// A statement in a batch (`pool::batch`): the driver points the key at the server while
/// the statement runs there, whatever cancel of the client's may be on its way (the
/// driver, not the slot, keeps such a cancel from reaching a batch-mate).
impl crate::pool::batch::UnitCancel for CancelSlot {
    fn point(&self, t: Option<Arc<CancelTarget>>, queued: bool) -> crate::pool::batch::Pointed {
        let mut g = self.lock();
        let runs = t.is_some();
        g.target = t;
        g.queued = queued;
        g.unit = runs;
        if runs {
            g.epoch = g.epoch.wrapping_add(1);
        }
        let wanted = g.wanted && runs;
        if !queued {
            g.wanted = false;
        }
        crate::pool::batch::Pointed {
            wanted,
            taken: g.taken,
        }
    }
    fn taken(&self) -> u32 {
        self.lock().taken
    }
    fn cancel_now(self: Arc<Self>) {
        self.cancel_detached();
    }
}

/// A cancel on its way to its target: the slot's target stays put until it is dropped
/// (also when the task sending it is dropped half-way); the target counts it in flight
/// meanwhile.
struct InFlight {
    slot: Arc<CancelSlot>,
    target: Arc<CancelTarget>,
    /// Aimed at a batched unit's run: sent again if that run still goes on a moment after
    /// this one is delivered ([`RESEND_AFTER`]).
    resend: Option<Resend>,
}

#[derive(Clone, Copy)]
struct Resend {
    /// Times it may still be sent again.
    left: u8,
    /// The run of the unit it was aimed at (`SlotState::epoch`).
    epoch: u32,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.slot;
        let rt = tokio::runtime::Handle::try_current().ok();
        let (next, again) = {
            let mut g = slot.lock();
            g.in_flight -= 1;
            // A cancel the client asked while this one was on its way: sent now, to the
            // target the slot has now, taken before the session can move it.
            let next = if g.in_flight == 0 && std::mem::take(&mut g.again) {
                match (g.target.clone(), rt.as_ref()) {
                    (Some(t), Some(_)) => Some((t.clone(), slot.taken_locked(&mut g, t))),
                    (None, _) => {
                        g.wanted |= g.queued;
                        None
                    }
                    (Some(_), None) => None,
                }
            } else {
                None
            };
            // Nothing else asked: a batched unit's run that still goes on later is sent
            // this cancel again (`RESEND_AFTER`), if nothing was taken by then. One timer
            // per slot at a time: a client firing cancels cannot pile them up.
            let again = match (next.is_none(), self.resend, rt.is_some()) {
                (true, Some(r), true) if r.left > 0 && !g.resend_due => {
                    g.resend_due = true;
                    Some((r, g.taken))
                }
                _ => None,
            };
            // Counted down after the next one is counted up: the target never looks
            // free in between.
            self.target.delivered();
            (next, again)
        };
        if let Some(rt) = rt {
            let _enter = rt.enter();
            if let Some((t, in_flight)) = next {
                send_detached(t, in_flight, "a client's second");
            }
            if let Some((r, taken)) = again {
                let (slot, t) = (slot.clone(), self.target.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(RESEND_AFTER).await;
                    slot.resend(&t, r, taken);
                });
            }
        }
        DELIVERED.notify_waiters();
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

impl CancelKey {
    /// No cancel reaches this client from now on; its pid may go to another client (a
    /// session-mode client's server connection, real key and all, once it is back in the
    /// pool).
    pub fn unregister(&self) {
        // Only this client's entry: after an early unregister the pid may be someone
        // else's by the time the key is dropped.
        self.registry
            .map
            .remove_if(&self.pid, |_, (_, slot)| Arc::ptr_eq(slot, &self.slot));
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.unregister();
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

    /// Give a new client a key with this pid (a server connection's) and a new random
    /// secret. `None` when another client holds this pid already.
    pub fn register_as(self: &Arc<Self>, pid: i32) -> Option<CancelKey> {
        let dashmap::Entry::Vacant(v) = self.map.entry(pid) else {
            return None;
        };
        let secret = rand::thread_rng().gen::<i32>();
        let slot = Arc::new(CancelSlot::default());
        v.insert((secret, slot.clone()));
        Some(CancelKey {
            pid,
            secret,
            slot,
            registry: self.clone(),
        })
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
        let Some((t, in_flight)) = slot.take_for_cancel() else {
            return;
        };
        // Awaited, so the client's cancel socket closes once it is delivered, as the
        // postmaster's does.
        let _ = send_detached(t, in_flight, "a client's").await;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn target(pid: i32) -> Option<Arc<CancelTarget>> {
        Some(Arc::new(CancelTarget::new("127.0.0.1".into(), 1, pid, 7)))
    }

    /// A cancel the postmaster does not see through in time (here it accepts and says
    /// nothing) may still land later: its target is marked unsettled before the slot
    /// lets the target move, so that the pool closes that connection instead of lending
    /// it to the next client (`Pool::release_at`).
    #[tokio::test]
    async fn a_cancel_not_seen_through_marks_its_connection() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let slot = Arc::new(CancelSlot::default());
        let t = Arc::new(CancelTarget::new("127.0.0.1".into(), port, 9, 7));
        slot.try_set(Some(t.clone())).unwrap();
        let (taken, in_flight) = slot.take_for_cancel().expect("a target");
        let sending = send_detached(taken, in_flight, "a test's");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!t.unsettled(), "still on its way");
        assert!(slot.try_set(None).is_err(), "the target stays meanwhile");
        tokio::time::timeout(Duration::from_secs(10), sending)
            .await
            .expect("the sender gives up after 5 s")
            .unwrap();
        assert!(t.unsettled());
        assert!(slot.try_set(None).is_ok());
        silent.abort();
    }

    #[tokio::test]
    async fn the_target_stays_while_a_cancel_is_on_its_way() {
        let slot = Arc::new(CancelSlot::default());
        slot.try_set(target(1)).unwrap();
        let (t, in_flight) = slot.take_for_cancel().expect("a target");
        assert_eq!(t.pid, 1);
        // A second cancel while the first is on its way is not sent now (it is sent once
        // the first is delivered: `a_cancel_asked_while_one_is_on_its_way_is_sent_after`).
        assert!(slot.take_for_cancel().is_none());
        // The session may not clear or move the target meanwhile.
        assert!(slot.try_set(None).is_err());
        let s2 = slot.clone();
        let setter = tokio::spawn(async move { s2.set(target(2)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !setter.is_finished(),
            "set went ahead of the cancel in flight"
        );
        drop(in_flight);
        tokio::time::timeout(Duration::from_secs(5), setter)
            .await
            .expect("set waits only until the cancel is delivered")
            .unwrap();
        let (t, _g) = slot.take_for_cancel().expect("the new target");
        assert_eq!(t.pid, 2);
    }

    #[test]
    fn a_real_key_is_taken_once_and_freed_only_by_its_holder() {
        let reg = Arc::new(CancelRegistry::default());
        let a = reg.register_as(4242).expect("a free pid");
        assert_eq!(a.pid, 4242);
        assert!(reg.register_as(4242).is_none(), "the pid is taken");
        // The holder leaves early (its server goes back to the pool): the next client of
        // that server gets the same pid with a new secret, and the first key's drop leaves
        // it alone.
        a.unregister();
        let b = reg.register_as(4242).expect("free again");
        assert_eq!(b.pid, 4242);
        assert_ne!(b.secret, a.secret, "a new secret (1 in 2^32 to fail)");
        drop(a);
        assert_eq!(reg.len(), 1);
        assert!(reg
            .map
            .get(&4242)
            .is_some_and(|e| Arc::ptr_eq(&e.1, &b.slot)));
        drop(b);
        assert!(reg.is_empty());
    }

    /// The connection that carried a client's CancelRequest goes away while it is being
    /// forwarded (pushed out by max_startup_clients, or shutdown drops its task): the
    /// request is still on its way, so the session's target stays put until the server
    /// has taken it; the server connection cannot go to another client meanwhile.
    #[tokio::test]
    async fn a_forwarded_cancel_outlives_the_connection_that_asked() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        // A postmaster that takes 300 ms to act on the request, then closes.
        let postmaster = tokio::spawn(async move {
            let (s, _) = server.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(s);
        });
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register();
        key.slot
            .try_set(Some(Arc::new(CancelTarget::new(
                "127.0.0.1".into(),
                port,
                9,
                7,
            ))))
            .unwrap();
        let asked = reg.cancel(key.pid, key.secret);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), asked)
                .await
                .is_err(),
            "the request is with the postmaster"
        );
        // The future that asked is gone; the request is not.
        assert!(key.slot.try_set(None).is_err(), "the target moved");
        postmaster.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), key.slot.set(None))
            .await
            .expect("free once the postmaster closed the cancel connection");
    }

    /// A client asks for a second cancel while its first is on its way (a slow
    /// postmaster): it is not dropped, but sent once the first is delivered, to the same
    /// target (the session cannot move it meanwhile); the target counts both in flight.
    #[tokio::test]
    async fn a_cancel_asked_while_one_is_on_its_way_is_sent_after() {
        // A postmaster that takes 300 ms over each request, and tells when one came.
        let (port, mut heard, postmaster) = postmaster(Duration::from_millis(300)).await;
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register();
        let t = Arc::new(CancelTarget::new("127.0.0.1".into(), port, 9, 7));
        key.slot.try_set(Some(t.clone())).unwrap();
        let r = reg.clone();
        let (pid, secret) = (key.pid, key.secret);
        let first = tokio::spawn(async move { r.cancel(pid, secret).await });
        let (t1, req1) = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("the first cancel")
            .unwrap();
        assert!(t.in_flight());
        // The second, while the first is with the postmaster.
        reg.cancel(key.pid, key.secret).await;
        let (t2, req2) = tokio::time::timeout(Duration::from_secs(5), heard.recv())
            .await
            .expect("the second cancel was dropped")
            .unwrap();
        assert_eq!(req1, req2, "the same target");
        assert!(
            t2.duration_since(t1) >= Duration::from_millis(250),
            "sent while the first was on its way"
        );
        first.await.unwrap();
        assert_eq!(key.slot.lock().taken, 2);
        // The target stays until both are delivered, then is free.
        tokio::time::timeout(Duration::from_secs(5), key.slot.set(None))
            .await
            .expect("free once both are delivered");
        assert!(!t.in_flight());
        // Several asked while one is on its way make one more, not several.
        key.slot.try_set(Some(t.clone())).unwrap();
        let (_, g) = key.slot.take_for_cancel().unwrap();
        assert!(key.slot.take_for_cancel().is_none());
        assert!(key.slot.take_for_cancel().is_none());
        drop(g);
        heard.recv().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), key.slot.set(None))
            .await
            .expect("free once delivered");
        assert_eq!(key.slot.lock().taken, 4);
        assert!(heard.try_recv().is_err(), "a third was sent");
        postmaster.abort();
    }

    /// The counts a batch reads when it points a key at its connection and away: cancels
    /// are taken only towards the key's target, so once the key points away (its unit
    /// over), the client's cancels elsewhere are not taken while pointing here.
    #[test]
    fn a_key_pointed_away_takes_no_cancel_for_the_batch() {
        use crate::pool::batch::UnitCancel;
        let slot = Arc::new(CancelSlot::default());
        let p = slot.point(target(5), false);
        assert_eq!(p.taken, 0);
        let (_, g) = slot.take_for_cancel().unwrap();
        drop(g);
        let p = slot.point(None, false);
        assert_eq!(p.taken, 1, "the cancel taken while its unit ran");
        assert!(slot.take_for_cancel().is_none(), "no target, nothing taken");
        assert_eq!(slot.taken(), 1);
    }

    /// The cancel of `g` is delivered, with no resend scheduled (the test drives it).
    fn delivered_unscheduled(mut g: InFlight) {
        g.resend = None;
        drop(g);
    }

    /// A cancel aimed at a batched unit is sent again only to the same run of that unit,
    /// with nothing on its way and nothing taken since.
    #[tokio::test]
    async fn a_units_cancel_is_sent_again_only_to_the_same_run() {
        use crate::pool::batch::UnitCancel;
        let slot = Arc::new(CancelSlot::default());
        let t = target(6).unwrap();
        slot.point(Some(t.clone()), false);
        let (_, g) = slot.take_for_cancel().expect("a target");
        let r = g.resend.expect("aimed at a unit's run");
        assert_eq!(r.left, UNIT_RESENDS);
        // Still on its way: not again.
        slot.resend(&t, r, 1);
        assert_eq!(slot.taken(), 1);
        delivered_unscheduled(g);
        // Taken since: not again.
        slot.resend(&t, r, 0);
        assert_eq!(slot.taken(), 1);
        // The unit is over, or its client's next unit runs there: not again.
        slot.point(None, false);
        slot.resend(&t, r, 1);
        slot.point(Some(t.clone()), false);
        slot.resend(&t, r, 1);
        assert_eq!(slot.taken(), 1);
        // The same run, nothing taken since: sent, with one resend fewer left.
        slot.point(None, false);
        let slot2 = Arc::new(CancelSlot::default());
        slot2.point(Some(t.clone()), false);
        let (_, g) = slot2.take_for_cancel().unwrap();
        let r = g.resend.unwrap();
        delivered_unscheduled(g);
        slot2.resend(&t, r, 1);
        assert_eq!(slot2.taken(), 2);
        assert!(t.in_flight() || t.unsettled(), "sent");
    }

    /// However many cancels a client fires at its batched unit, one resend at a time
    /// waits for its turn: the timers cannot pile up.
    #[tokio::test]
    async fn cancels_fired_at_a_unit_keep_one_resend_timer() {
        use crate::pool::batch::UnitCancel;
        let slot = Arc::new(CancelSlot::default());
        slot.point(target(7), false);
        let before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        for _ in 0..50 {
            let (_, g) = slot.take_for_cancel().expect("a target");
            drop(g);
        }
        let after = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(after, before + 1, "one resend timer for 50 cancels");
    }

    type Heard = tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, [u8; 16])>;

    /// A postmaster on a free port that reads each cancel request, tells when it came and
    /// what it said, and closes the socket `hold` later (the request then counts as
    /// delivered).
    async fn postmaster(hold: Duration) -> (u16, Heard, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncReadExt;
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let (came, heard) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                let came = came.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 16];
                    let _ = s.read_exact(&mut req).await;
                    let _ = came.send((std::time::Instant::now(), req));
                    tokio::time::sleep(hold).await;
                });
            }
        });
        (port, heard, task)
    }

    /// A cancel that finds its batched unit still running a moment after it was
    /// delivered is sent again (PostgreSQL dropped it if it landed while the backend read
    /// the statement), at most `UNIT_RESENDS` times; one aimed at a session's own server
    /// connection is sent once, as the client asked.
    #[tokio::test]
    async fn a_cancel_that_finds_its_unit_still_running_is_sent_again() {
        use crate::pool::batch::UnitCancel;
        let (port, mut heard, _postmaster) = postmaster(Duration::ZERO).await;
        let t = Arc::new(CancelTarget::new("127.0.0.1".into(), port, 8, 7));
        let mut seen = 0u32;
        let mut count = || {
            while heard.try_recv().is_ok() {
                seen += 1;
            }
            seen
        };
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register();
        key.slot.point(Some(t.clone()), false);
        reg.cancel(key.pid, key.secret).await;
        tokio::time::sleep(RESEND_AFTER * 8).await;
        assert_eq!(
            count(),
            1 + u32::from(UNIT_RESENDS),
            "sent again while it ran"
        );
        // The unit ends before the resend is due: nothing more.
        key.slot.point(Some(t.clone()), false);
        reg.cancel(key.pid, key.secret).await;
        key.slot.point(None, false);
        tokio::time::sleep(RESEND_AFTER * 4).await;
        assert_eq!(count(), 2 + u32::from(UNIT_RESENDS), "the run was over");
        // A session's own connection (not a batched unit): once.
        key.slot.try_set(Some(t.clone())).unwrap();
        reg.cancel(key.pid, key.secret).await;
        tokio::time::sleep(RESEND_AFTER * 4).await;
        assert_eq!(count(), 3 + u32::from(UNIT_RESENDS));
    }

    #[test]
    fn nothing_to_cancel_without_a_target() {
        let slot = Arc::new(CancelSlot::default());
        assert!(slot.take_for_cancel().is_none());
        slot.try_set(target(3)).unwrap();
        slot.try_set(None).unwrap();
        assert!(slot.take_for_cancel().is_none());
    }
}
