//! The process-wide budget of large messages held in memory
//! (`max_buffered_message_bytes`).
//!
//! Every connection buffers a message whole before it is handled, up to
//! `max_message_size` (64 MiB). Without a shared limit, a few peers that each announce a
//! big message and send it slowly (or stop half-way) could make pgtenant hold several
//! times its pod's memory. The rules:
//!
//! - **Only large messages count.** A message whose declared length (header included) is
//!   above [`LARGE_MESSAGE`] (1 MiB) reserves its *full declared length* from the budget
//!   as soon as its header has been read, before its body is buffered. Smaller messages
//!   never touch the budget: the common path has no atomic operation and no lock.
//! - **The reservation follows the bytes** (RAII, [`Reservation`]): the connection's read
//!   buffer holds it while the body arrives, then the [`Frame`](super::Frame) (and its
//!   clones), and, when the frame is forwarded, the peer connection's write buffer until
//!   the copy has been written out. It is given back when the last holder lets go:
//!   frame dropped, write buffer drained, connection closed.
//! - **A reservation that does not fit costs its connection only**: the message fails
//!   with [`FrameError::OutOfMemory`](super::FrameError::OutOfMemory); a client gets
//!   `FATAL 53200 out of memory: …` and is disconnected, a server connection is closed
//!   (and its client gets `FATAL 08006`). Everyone else goes on; small messages are never
//!   refused.
//! - **No stall timeout**: a peer that stops inside a large message keeps its
//!   reservation until it finishes, leaves or is closed. The budget bounds the total
//!   whatever the timing, which is what keeps the pod alive; a timeout would not lower
//!   that bound (an attacker reconnects and stalls again) and would cut legitimate slow
//!   uploads. What a staller costs others is only large messages meanwhile (53200 while
//!   the budget is full). One connection holds at most one reservation on its read side
//!   (`max_message_size` caps it), plus what it forwarded and the peer has not yet read.
//! - **Server connections count too.** A 100 MB DataRow is legitimate, but it is a client
//!   that asks for it (`SELECT repeat('x', 100000000)`) and a client that then reads
//!   nothing would pin it in its write buffer; exempting servers would reopen the hole
//!   the budget closes. Raise the budget if such rows are normal for the workload.
//!
//! The budget is read at each reservation, so a reload changes it for the next large
//! message; reservations already held are kept.
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::FrameError;

/// Messages larger than this (header included) are counted against the budget.
pub const LARGE_MESSAGE: usize = 1024 * 1024;

/// Default budget: a quarter of a 256 MiB pod, and one `max_message_size` message.
pub const DEFAULT_BUDGET: usize = 64 * 1024 * 1024;

/// A limit and what is reserved from it.
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

/// The process's budget, which every [`Connection`](super::Connection) uses. Its limit is
/// set from the settings at start and on reload ([`set_limit`]).
pub static BUDGET: Budget = Budget::new(DEFAULT_BUDGET);

/// Set the process's budget (`max_buffered_message_bytes`; 0 = no limit).
pub fn set_limit(bytes: usize) {
    BUDGET.limit.store(bytes, Ordering::Relaxed);
}

/// Bytes reserved now, process-wide (for tests and the admin console).
pub fn used() -> usize {
    BUDGET.used()
}

impl Budget {
    pub const fn new(limit: usize) -> Budget {
        Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserve `bytes` for a message of that length, or fail if the budget cannot hold
    /// it (a limit of 0 means no limit).
    pub fn reserve(&'static self, bytes: usize) -> Result<Reservation, FrameError> {
        let bytes = bytes.max(1);
        let limit = self.limit.load(Ordering::Relaxed);
        let r = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                let after = u.checked_add(bytes)?;
                (limit == 0 || after <= limit).then_some(after)
            });
        match r {
            Ok(_) => Ok(Reservation::counted(self, bytes)),
            Err(in_use) => Err(FrameError::OutOfMemory {
                size: bytes,
                budget: limit,
                in_use,
            }),
        }
    }

    /// Count `bytes` that are already in memory and already reserved by a frame (a copy
    /// of it queued for writing), without a check: it must not fail half-way through
    /// a message. The frame's own reservation goes when it is dropped.
    pub fn hold(&'static self, bytes: usize) -> Reservation {
        let bytes = bytes.max(1);
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Reservation::counted(self, bytes)
    }
}

/// Bytes reserved from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: &'static Budget,
    bytes: NonZeroUsize,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit.load(Ordering::Relaxed))
            .field("used", &self.used())
            .finish()
    }
}

impl Reservation {
    /// `bytes` (at least 1) were added to `budget.used` by the caller.
    fn counted(budget: &'static Budget, bytes: usize) -> Reservation {
        Reservation {
            budget,
            bytes: NonZeroUsize::new(bytes).unwrap_or(NonZeroUsize::MIN),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Count `more` bytes under this reservation too (see [`Budget::hold`]).
    pub fn grow(&mut self, more: usize) {
        self.budget.used.fetch_add(more, Ordering::AcqRel);
        self.bytes = self.bytes.saturating_add(more);
    }

    pub fn budget(&self) -> &'static Budget {
        self.budget
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes.get(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::new(limit)))
    }

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let b = budget(100);
        let r1 = b.reserve(60).unwrap();
        assert_eq!(b.used(), 60);
        let e = b.reserve(60).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::OutOfMemory {
                    size: 60,
                    budget: 100,
                    in_use: 60
                }
            ),
            "{e:?}"
        );
        assert_eq!(b.used(), 60, "a failed reservation takes nothing");
        let r2 = b.reserve(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(r1);
        assert_eq!(b.used(), 40);
        let mut h = b.hold(30);
        h.grow(5);
        assert_eq!(b.used(), 75, "held bytes count without a check");
        drop((r2, h));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn zero_means_no_limit() {
        let b = budget(0);
        let r = b.reserve(usize::MAX / 2).unwrap();
        assert_eq!(b.used(), usize::MAX / 2);
        drop(r);
        assert_eq!(b.used(), 0);
    }
}
