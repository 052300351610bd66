//! The parking lot: sockets of idle clients, watched by one thread, with no task each.
//!
//! An idle client's session costs its task (the session's state inline, ~770 bytes) and
//! its socket's registration with the runtime (~250). A parked one costs an entry here
//! and what its owner chose to keep (see `frontend::session::park`): PgBouncer's few
//! hundred bytes of struct per idle client, not a task's.
//!
//! Rules:
//! - Parking is two steps. [`Lot::reserve`] keeps the owner and gives back the waker that
//!   unparks it, before anything watches the socket; the owner puts that waker where
//!   others wake it (the admin console's KILL, SUSPEND, shutdown), then calls
//!   [`Lot::watch`], then looks at its flags once more (a wake-up meant for its task may
//!   have come just before the waker was in place) and wakes the waker itself if one is
//!   up.
//! - A socket is registered with the lot's epoll set (edge-triggered, readable or hung
//!   up: a socket that is readable already when registered reports at once) only inside
//!   the lot's lock, which unparking also takes: an entry is watched, or gone, never
//!   both.
//! - The waker owns no memory: its data word is the entry's key and generation.
//! - The first of: the socket turns readable or hangs up, or the waker is woken, takes the
//!   entry out (deregistering the socket) and calls [`Unpark::unpark`] on it, once, on
//!   the thread that noticed (the lot's, or the waker's). A stale waker or event (the
//!   entry went, its slot may hold another: each has a generation) does nothing.
//! - The owner's `unpark` only spawns: it must not block or wait for anything.
//! - Without a lot (its thread or epoll set could not be made) nothing parks:
//!   [`lot`] answers None and owners keep their tasks.
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{RawWaker, RawWakerVTable, Waker};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

/// What a parked socket belongs to: called once, when the socket wakes or its waker does.
pub trait Unpark: Send {
    /// The socket this owner parked (registered with the lot while it is parked).
    fn fd(&self) -> RawFd;
    /// Take up the owner's work again (spawn its task). Must not block.
    fn unpark(self: Box<Self>);
}

struct Slot {
    owner: Box<dyn Unpark>,
    gen: u32,
    watched: bool,
}

/// Idle sockets and what they belong to.
pub struct Lot {
    registry: Registry,
    slots: Mutex<Slab<Slot>>,
    next_gen: AtomicU32,
}

/// One entry of the lot, as the owner names it between [`Lot::reserve`] and [`Lot::watch`].
#[derive(Clone, Copy)]
pub struct Ticket {
    key: u32,
    gen: u32,
}

impl Ticket {
    fn bits(self) -> usize {
        token(self.key, self.gen).0
    }

    fn from_bits(b: usize) -> Ticket {
        let b = b as u64;
        Ticket {
            key: b as u32,
            gen: (b >> 32) as u32,
        }
    }

    /// The waker that unparks this entry. It carries the entry's key and generation in
    /// its data word and owns no memory (a parked client costs no allocation for it).
    fn waker(self) -> Waker {
        // SAFETY: the vtable's functions never dereference the data word: it is the
        // ticket's bits, not a pointer, and cloning or dropping it owns nothing. They
        // are safe to call from any thread.
        unsafe { Waker::from_raw(RawWaker::new(self.bits() as *const (), &TICKET_VTABLE)) }
    }
}

static TICKET_VTABLE: RawWakerVTable =
    RawWakerVTable::new(ticket_clone, ticket_wake, ticket_wake, ticket_drop);

fn ticket_clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &TICKET_VTABLE)
}

fn ticket_wake(data: *const ()) {
    let t = Ticket::from_bits(data as usize);
    if let Some(l) = lot() {
        l.unpark(t.key, t.gen);
    }
}

fn ticket_drop(_: *const ()) {}

static LOT: OnceLock<Option<&'static Lot>> = OnceLock::new();

/// The process's lot, started on first use; None if it could not be.
pub fn lot() -> Option<&'static Lot> {
    *LOT.get_or_init(|| match start() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "idle clients cannot be parked (no epoll set or thread for them); each keeps its task");
            None
        }
    })
}

fn start() -> io::Result<&'static Lot> {
    let poll = Poll::new()?;
    let lot: &'static Lot = Box::leak(Box::new(Lot {
        registry: poll.registry().try_clone()?,
        slots: Mutex::new(Slab::new()),
        next_gen: AtomicU32::new(1),
    }));
    std::thread::Builder::new()
        .name("pgtenant-park".into())
        .spawn(move || watch_loop(poll, lot))?;
    Ok(lot)
}

fn watch_loop(mut poll: Poll, lot: &'static Lot) {
    let mut events = Events::with_capacity(256);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Nothing else can fail here but a broken epoll set: the parked sockets then
            // are woken only by their wakers. Keep trying, slowly.
            tracing::error!(error = %e, "the parking lot cannot wait for its sockets");
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        }
        for ev in events.iter() {
            let t = ev.token().0 as u64;
            lot.unpark(t as u32, (t >> 32) as u32);
        }
    }
}

// A token (and a waker's data word) holds an entry's key and generation.
const _: () = assert!(usize::BITS >= 64, "the parking lot needs 64-bit tokens");

fn token(key: u32, gen: u32) -> Token {
    Token(((gen as u64) << 32 | key as u64) as usize)
}

impl Lot {
    /// Keep `owner` and give back the waker that unparks it. Its socket is not watched
    /// until [`Lot::watch`].
    pub fn reserve(&'static self, owner: Box<dyn Unpark>) -> (Ticket, Waker) {
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let key = {
            let mut slots = crate::sync::lock(&self.slots);
            slots.insert(Slot {
                owner,
                gen,
                watched: false,
            })
        };
        let ticket = Ticket {
            key: key as u32,
            gen,
        };
        (ticket, ticket.waker())
    }

    /// Watch the entry's socket. Nothing if it was unparked meanwhile. If the socket
    /// cannot be registered, the owner is unparked at once.
    pub fn watch(&'static self, t: Ticket) {
        let mut slots = crate::sync::lock(&self.slots);
        let Some(slot) = slots.get_mut(t.key as usize).filter(|s| s.gen == t.gen) else {
            return;
        };
        let fd = slot.owner.fd();
        match self
            .registry
            .register(&mut SourceFd(&fd), token(t.key, t.gen), Interest::READABLE)
        {
            Ok(()) => slot.watched = true,
            Err(e) => {
                drop(slots);
                tracing::warn!(error = %e, "a parked socket cannot be watched; its client keeps its task");
                self.unpark(t.key, t.gen);
            }
        }
    }

    /// Take the entry out and hand it back to its owner, if it is still there.
    fn unpark(&self, key: u32, gen: u32) {
        let slot = {
            let mut slots = crate::sync::lock(&self.slots);
            if slots.get(key as usize).is_none_or(|s| s.gen != gen) {
                return;
            }
            let slot = slots.remove(key as usize);
            if slot.watched {
                let fd = slot.owner.fd();
                // Deregistered before the owner has its socket back (its runtime
                // registers it anew); an error would mean it was not registered.
                let _ = self.registry.deregister(&mut SourceFd(&fd));
            }
            slot
        };
        slot.owner.unpark();
    }

    /// Sockets parked now (read at a scrape and by the trimmer: the lock is brief).
    pub fn parked(&self) -> usize {
        crate::sync::lock(&self.slots).len()
    }
}

/// Sockets parked now (0 without a lot).
pub fn parked() -> usize {
    LOT.get().copied().flatten().map_or(0, |l| l.parked())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;

    struct Owner {
        sock: std::os::unix::net::UnixStream,
        tx: mpsc::Sender<std::os::unix::net::UnixStream>,
    }

    impl Unpark for Owner {
        fn fd(&self) -> RawFd {
            std::os::fd::AsRawFd::as_raw_fd(&self.sock)
        }
        fn unpark(self: Box<Self>) {
            // The socket lives on with the test (as a session takes it back).
            let _ = self.tx.send(self.sock);
        }
    }

    fn parked_pair(
        tx: &mpsc::Sender<std::os::unix::net::UnixStream>,
    ) -> (std::os::unix::net::UnixStream, Waker) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let l = lot().expect("a lot on this machine");
        let (t, w) = l.reserve(Box::new(Owner {
            sock: a,
            tx: tx.clone(),
        }));
        l.watch(t);
        (b, w)
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// Bytes on a parked socket unpark its owner, once; its waker is stale after.
    #[test]
    fn a_readable_socket_unparks_its_owner_once() {
        let (tx, rx) = mpsc::channel();
        let (mut peer, waker) = parked_pair(&tx);
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        peer.write_all(b"Q").unwrap();
        let _kept = rx.recv_timeout(WAIT).expect("unparked");
        waker.wake_by_ref();
        peer.write_all(b"Q").unwrap();
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
    }

    /// The waker unparks (KILL, shutdown), and a peer that hangs up does too.
    #[test]
    fn the_waker_or_a_hang_up_unparks() {
        let (tx, rx) = mpsc::channel();
        let (_peer, waker) = parked_pair(&tx);
        waker.wake();
        let _kept = rx.recv_timeout(WAIT).expect("unparked");
        let (peer, _waker) = parked_pair(&tx);
        drop(peer);
        let _kept = rx.recv_timeout(WAIT).expect("unparked");
    }

    /// A socket with bytes waiting when it is parked reports at once (no lost wake-up
    /// between the owner's last read and the registration).
    #[test]
    fn bytes_already_there_unpark_at_once() {
        let (tx, rx) = mpsc::channel();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.write_all(b"X").unwrap();
        let l = lot().unwrap();
        let (t, _w) = l.reserve(Box::new(Owner { sock: a, tx }));
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        l.watch(t);
        let _kept = rx.recv_timeout(WAIT).expect("unparked");
    }

    /// A wake between reserve and watch unparks, and the watch then does nothing.
    #[test]
    fn a_wake_before_the_watch_wins() {
        let (tx, rx) = mpsc::channel();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let l = lot().unwrap();
        let (t, w) = l.reserve(Box::new(Owner { sock: a, tx }));
        w.wake();
        let _kept = rx.recv_timeout(WAIT).expect("unparked");
        l.watch(t);
        b.write_all(b"X").unwrap();
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
    }
}
