//! One io_uring per runtime thread, and the task that drives it.
//!
//! Rules:
//! - A ring belongs to the thread that made it ([`install`]): only that thread pushes
//!   submissions, enters the kernel and reaps completions (`IORING_SETUP_SINGLE_ISSUER`).
//!   A stream may be polled from any ring thread; each operation goes to the ring of the
//!   thread that asked for it, and its completion is handled there.
//! - Submissions are not entered one by one: pushing one wakes the ring's driver task,
//!   which runs after the tasks already ready on that thread, so every send and receive
//!   asked for in one turn of the loop goes to the kernel in one `io_uring_enter`. The
//!   one exception is a calm ring (its last [`CALM`] reaps found one completion each: one
//!   request at a time, nothing to gather): a send is entered at once.
//! - The driver learns of completions through tokio's reactor (the ring's fd is readable
//!   when completions wait), so timers and the other sockets keep working unchanged, and
//!   from [`after_unpark`] when the thread's wake-up itself posted them.
//! - Receives take their buffer from the ring's provided-buffer ring when data arrives:
//!   an idle connection with a receive armed holds no buffer. The data is copied out to
//!   its stream during the reap and the buffer is given back at once. Only as many
//!   buffers circulate as a reap's receives need (16 at first, doubled when a reap used
//!   half of them or a receive found none), so that the untouched rest costs no memory.
//! - An operation owns what the kernel may touch (the stream's socket, the bytes being
//!   sent) until its completion is reaped: a socket is closed only after the last of its
//!   operations ended.
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;

use super::stream::Shared;

/// Provided-buffer group of every ring.
const BGID: u16 = 1;
/// Receive buffers per ring (a power of two) and their size: 4 MiB per thread, touched
/// only as data arrives.
const NBUFS: u16 = 256;
pub(super) const BUF_SIZE: usize = 16 * 1024;
/// Buffers offered to the kernel at first (see [`BufRing`]): more only when a turn's
/// receives come near that many.
const OFFER_MIN: u16 = 16;
const SQ_ENTRIES: u32 = 1024;
/// `IORING_RECVSEND_POLL_FIRST` (the crate's `sys` module is private).
const RECVSEND_POLL_FIRST: u16 = 1;
/// Completions can outnumber submissions by far (every idle client has a receive armed);
/// the kernel keeps any overflow (IORING_FEAT_NODROP) until the next reap.
const CQ_ENTRIES: u32 = 16 * 1024;
/// user_data of operations whose completion is ignored (cancels).
const IGNORED: u64 = u64::MAX;

/// Where an operation is: the ring (thread) and its user_data there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OpId {
    pub ring: u32,
    pub user_data: u64,
}

/// What the kernel holds for an operation in flight.
pub(super) enum Op {
    Recv(Arc<Shared>),
    /// The bytes still to send (the stream's outbox taken whole when the send started).
    Send(Arc<Shared>, Bytes),
}

static NEXT_RING_ID: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// The provided-buffer ring: a page of entries the kernel reads and the buffers they name.
///
/// The kernel takes buffers in the order they were offered, so every buffer offered is
/// touched in turn (a page of each at least, even by the smallest receive): 256 offered
/// would make 1 MiB per thread resident under any load, which an idle benchmark counts
/// as memory per client. So only [`BufRing::offered`] buffers are in the ring, 16 at
/// first: a reap that finds at least half of them used (or a receive refused for want of
/// one) offers twice as many, from the untouched rest, up to all 256.
struct BufRing {
    entries: *mut types::BufRingEntry,
    tail: u16,
    mem: Vec<u8>,
    /// Buffers in circulation (offered to the kernel, or being copied out in a reap):
    /// buffers `0..offered`; the rest were never offered (nor touched).
    offered: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<BufRing> {
        let bytes = NBUFS as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping; the kernel requires page alignment.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            entries: p.cast(),
            tail: 0,
            mem: vec![0u8; NBUFS as usize * BUF_SIZE],
            offered: 0,
        };
        // SAFETY: the mapping lives as long as the ring (both are dropped with the thread).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, NBUFS, BGID, 0)?
        };
        br.offer_up_to(OFFER_MIN);
        br.publish();
        Ok(br)
    }

    /// Offer buffers never offered before until `n` are in circulation.
    fn offer_up_to(&mut self, n: u16) {
        while self.offered < n.min(NBUFS) {
            self.push(self.offered);
            self.offered += 1;
        }
    }

    /// A reap gave back `used` buffers (and `short`: a receive found none): offer twice
    /// as many when that came near the number in circulation.
    fn adapt(&mut self, used: u16, short: bool) {
        if short || used >= self.offered / 2 {
            self.offer_up_to(self.offered.saturating_mul(2).max(used.saturating_mul(2)));
        }
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (NBUFS - 1)) as usize;
        // SAFETY: idx < NBUFS, inside the mapping.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(self.mem.as_ptr() as u64 + bid as u64 * BUF_SIZE as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field shares the first entry's slot, as the kernel defines it.
        unsafe {
            let t = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }

    fn data(&self, bid: u16, len: usize) -> &[u8] {
        let at = bid as usize * BUF_SIZE;
        &self.mem[at..at + len.min(BUF_SIZE)]
    }
}

/// A thread's ring: the submission side (what streams use) and the receive buffers.
pub(super) struct Ring {
    pub sq: Subm,
    bufs: BufRing,
    scratch: Vec<(u64, i32, u32)>,
}

/// The submission side of a ring, and the operations in flight on it.
pub(super) struct Subm {
    pub id: u32,
    uring: IoUring,
    /// Operations in flight by slot; user_data is `generation << 32 | slot`, so a cancel
    /// aimed at an operation that ended never hits the one that took its slot.
    ops: Vec<(u32, Option<Op>)>,
    free: Vec<u32>,
    /// The driver task, woken when the first submission of a turn is pushed.
    driver: Option<Waker>,
    /// Submissions pushed and not yet entered.
    pending: usize,
    /// Entries that found the queue full while the kernel refused more (its completion
    /// queue overflowing): pushed by the driver after its next reap.
    backlog: Vec<squeue::Entry>,
    /// The ring runs completion work cooperatively (`IORING_SETUP_COOP_TASKRUN` with
    /// `TASKRUN_FLAG`): the kernel does not interrupt the running thread to post a
    /// completion, it flags the ring, and the driver enters to have it run.
    coop: bool,
    /// The receive flags (`ioprio`): `IORING_RECVSEND_POLL_FIRST` with `coop` (both came
    /// in Linux 5.19), so that receives wait for data before their first try; 0 for good
    /// once a receive is refused with EINVAL (a kernel that backported one and not the
    /// other).
    pub(super) poll_first: u16,
    /// Reaps in a row (up to [`CALM`]) that found a single completion: the thread serves
    /// one request at a time. At [`CALM`] a send is entered at once rather than at the end
    /// of the turn (see [`Subm::send`]); any reap that finds more starts the count again,
    /// so that under load the turn's sends still go in together.
    calm: u8,
}

/// Single-completion reaps in a row after which a ring counts as lightly loaded.
const CALM: u8 = 8;

impl Drop for BufRing {
    fn drop(&mut self) {
        let bytes = NBUFS as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: mapped in `new` with this length.
        unsafe { libc::munmap(self.entries.cast(), bytes) };
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // With operations still in flight (a thread ending while pgtenant stops, or a test
        // thread), the kernel may still be finishing them while it tears the ring down: the
        // memory they use (bytes being sent, receive buffers) and their sockets are left to
        // the process's exit rather than freed under it.
        if self.sq.ops.iter().any(|(_, op)| op.is_some()) {
            std::mem::forget(std::mem::take(&mut self.sq.ops));
            std::mem::forget(std::mem::take(&mut self.bufs.mem));
        }
    }
}

impl Ring {
    /// A ring as the engine uses it (also [`super::probe`]'s test of this kernel).
    pub(super) fn new() -> io::Result<Ring> {
        // Not DEFER_TASKRUN: its deferred completions do not make the ring's fd readable
        // for tokio's epoll (tried: the driver never woke), and running them needs an
        // enter of the driver's own. COOP_TASKRUN (Linux 5.19) where the kernel has it: a
        // completion arriving while the thread runs waits for the thread's next system
        // call instead of interrupting it (an inter-processor interrupt, costly in a VM);
        // a sleeping thread is still woken.
        let build = |coop: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(CQ_ENTRIES).setup_single_issuer();
            if coop {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            b.build(SQ_ENTRIES)
        };
        let (uring, coop) = match build(true) {
            Ok(u) => (u, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (build(false)?, false),
            Err(e) => return Err(e),
        };
        let bufs = BufRing::new(&uring)?;
        Ok(Ring {
            sq: Subm {
                id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
                uring,
                ops: Vec::new(),
                free: Vec::new(),
                driver: None,
                pending: 0,
                backlog: Vec::new(),
                coop,
                poll_first: if coop { RECVSEND_POLL_FIRST } else { 0 },
                calm: 0,
            },
            bufs,
            scratch: Vec::new(),
        })
    }

    /// Does the kernel offer every operation the engine submits?
    pub(super) fn supports_operations(&self) -> Result<(), String> {
        let mut p = io_uring::Probe::new();
        self.sq
            .uring
            .submitter()
            .register_probe(&mut p)
            .map_err(|e| format!("io_uring_register(PROBE): {e}"))?;
        for (name, code) in [
            ("RECV", opcode::Recv::CODE),
            ("SEND", opcode::Send::CODE),
            ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        ] {
            if !p.is_supported(code) {
                return Err(format!("the kernel lacks the {name} operation"));
            }
        }
        Ok(())
    }

    /// Handle every completion waiting, then give the buffers back to the kernel.
    fn reap(&mut self) {
        let Ring { sq, bufs, scratch } = self;
        let mut reaped = 0;
        loop {
            scratch.clear();
            scratch.extend(
                sq.uring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if scratch.is_empty() {
                match reaped {
                    0 => {}
                    1 => sq.calm = sq.calm.saturating_add(1).min(CALM),
                    _ => sq.calm = 0,
                }
                return;
            }
            reaped += scratch.len();
            let (mut used, mut short) = (0u16, false);
            for &(ud, res, flags) in scratch.iter() {
                let bid = cqueue::buffer_select(flags);
                used = used.saturating_add(u16::from(bid.is_some()));
                short |= res == -libc::ENOBUFS;
                match sq.take(ud) {
                    Some(Op::Recv(s)) => {
                        let data = match bid {
                            Some(b) if res > 0 => bufs.data(b, res as usize),
                            _ => &[][..],
                        };
                        Shared::on_recv(&s, sq, res, data);
                    }
                    Some(Op::Send(s, bytes)) => Shared::on_send(&s, sq, res, bytes),
                    None => {}
                }
                if let Some(b) = bid {
                    bufs.push(b);
                }
            }
            bufs.adapt(used, short);
            bufs.publish();
        }
    }
}

impl Subm {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY (for the pushes below): every entry's pointers stay valid until its
        // completion: they point into the `Op` kept in `ops` (the bytes being sent) or
        // into the buffer ring.
        if !self.backlog.is_empty() || unsafe { self.uring.submission().push(&e).is_err() } {
            // The queue is full: enter now rather than wait for the driver.
            self.enter();
            if !self.backlog.is_empty() || unsafe { self.uring.submission().push(&e).is_err() } {
                self.backlog.push(e);
            }
        }
        self.pending += 1;
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Completion work waits for an enter (`coop`).
    fn taskrun(&mut self) -> bool {
        self.coop && self.uring.submission().taskrun()
    }

    fn enter(&mut self) {
        loop {
            match self.uring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY/EAGAIN: the completion queue overflows; the driver reaps and
                // enters again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed");
                    break;
                }
            }
        }
        self.pending = 0;
    }

    /// Push the entries that waited for room (after a reap made some).
    fn push_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let e = self.backlog[0].clone();
            // SAFETY: as in `push`.
            if unsafe { self.uring.submission().push(&e).is_err() } {
                self.enter();
                // SAFETY: as in `push`.
                if unsafe { self.uring.submission().push(&e).is_err() } {
                    return;
                }
            }
            self.backlog.remove(0);
        }
    }

    fn slot(&mut self, op: Op) -> u64 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.ops.push((0, None));
                (self.ops.len() - 1) as u32
            }
        };
        let e = &mut self.ops[slot as usize];
        e.0 = e.0.wrapping_add(1);
        e.1 = Some(op);
        (u64::from(e.0) << 32) | u64::from(slot)
    }

    fn take(&mut self, user_data: u64) -> Option<Op> {
        let slot = (user_data & 0xffff_ffff) as usize;
        let gen = (user_data >> 32) as u32;
        let e = self.ops.get_mut(slot)?;
        if e.0 != gen {
            return None;
        }
        let op = e.1.take()?;
        self.free.push(slot as u32);
        Some(op)
    }

    /// Arm a receive into a provided buffer. A receive is armed when its reader found
    /// nothing buffered, i.e. right after a request went out or its answer was read, so
    /// the peer has rarely answered yet: where the kernel has it (`poll_first`) the
    /// receive waits for data first instead of trying once and failing with EAGAIN.
    pub fn recv(&mut self, s: Arc<Shared>) -> OpId {
        let fd = s.fd();
        let ud = self.slot(Op::Recv(s));
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(BGID)
            .ioprio(self.poll_first)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(ud);
        self.push(e);
        OpId {
            ring: self.id,
            user_data: ud,
        }
    }

    /// Send `bytes` (all of them, or the completion says how many went).
    ///
    /// On a lightly loaded thread the send is entered at once: a lone client's answer
    /// (or its query) then leaves before the rest of its task's turn runs (the release of
    /// its server connection, its statistics) and before the driver's turn, which under
    /// load is where the turn's sends go in together. Its completion is reaped by the
    /// driver as any other.
    pub fn send(&mut self, s: Arc<Shared>, bytes: Bytes) -> OpId {
        let fd = s.fd();
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        let ud = self.slot(Op::Send(s, bytes));
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud);
        self.push(e);
        if self.calm >= CALM && self.backlog.is_empty() {
            self.enter();
        }
        OpId {
            ring: self.id,
            user_data: ud,
        }
    }

    /// Ask the kernel to end an operation of this ring early (it completes with ECANCELED).
    pub fn cancel(&mut self, op: OpId) {
        debug_assert_eq!(op.ring, self.id);
        let e = opcode::AsyncCancel::new(op.user_data)
            .build()
            .user_data(IGNORED);
        self.push(e);
    }
}

/// Run `f` on this thread's ring; `None` on a thread without one (the epoll engine, or a
/// blocking-pool thread).
pub(super) fn with_ring<R>(f: impl FnOnce(&mut Subm) -> R) -> Option<R> {
    RING.with(|r| r.borrow_mut().as_mut().map(|r| f(&mut r.sq)))
}

/// Run by the runtime each time its thread wakes (`on_thread_unpark`). A thread asleep in
/// tokio's `epoll_wait` is woken to run the kernel's completion work: the wait returns
/// EINTR before that work makes the ring's fd readable, and tokio would go to sleep again
/// only to be woken at once by the fd. With completions already waiting, the driver is
/// woken here instead and they are handled in this turn.
pub fn after_unpark() {
    RING.with(|r| {
        let Ok(mut r) = r.try_borrow_mut() else {
            return;
        };
        let Some(r) = r.as_mut() else { return };
        if r.sq.driver.is_some() && !r.sq.uring.completion().is_empty() {
            if let Some(w) = r.sq.driver.take() {
                w.wake();
            }
        }
    })
}

/// Does this thread run the io_uring engine?
pub fn on_ring_thread() -> bool {
    RING.with(|r| r.borrow().is_some())
}

/// Receive buffers this thread's ring has in circulation (tests).
#[cfg(test)]
pub(super) fn offered_buffers() -> Option<u16> {
    RING.with(|r| r.borrow().as_ref().map(|r| r.bufs.offered))
}

/// This thread's ring, if it has one.
pub fn this_ring() -> Option<u32> {
    RING.with(|r| r.borrow().as_ref().map(|r| r.sq.id))
}

/// Give this thread a ring and start its driver on the current (current-thread) runtime.
/// Call once per runtime thread, from inside that runtime.
pub fn install() -> io::Result<tokio::task::JoinHandle<()>> {
    let ring = Ring::new()?;
    let fd = ring.sq.uring.as_raw_fd();
    RING.with(|r| *r.borrow_mut() = Some(ring));
    // SAFETY: the ring's fd stays open while the driver (which owns the registration)
    // runs: the ring lives in this thread's local storage, which outlives the runtime.
    let afd = unsafe { AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(drive(afd)))
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The driver: enter the kernel with the turn's submissions, reap the completions, and
/// sleep until either new submissions or new completions.
async fn drive(afd: AsyncFd<RingFd>) {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        loop {
            let more = RING.with(|r| {
                let mut r = r.borrow_mut();
                let Some(r) = r.as_mut() else { return false };
                // Pushes made while reaping are seen below, without waking this task.
                r.sq.driver = None;
                if r.sq.pending > 0 || r.sq.taskrun() {
                    r.sq.enter();
                }
                r.reap();
                r.sq.push_backlog();
                r.sq.driver = Some(cx.waker().clone());
                r.sq.pending > 0 && r.sq.backlog.is_empty()
            });
            if more {
                continue;
            }
            match afd.poll_read_ready(cx) {
                Poll::Ready(Ok(mut g)) => {
                    g.clear_ready();
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "io_uring driver stopped");
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}
