//! A TCP socket driven through the io_uring of whichever thread polls it.
//!
//! Rules:
//! - Reads: when the reader finds nothing buffered, one receive is armed on the polling
//!   thread's ring (never two at once); its data lands in `inbox` and the reader takes
//!   it from there. Nothing is read ahead of the reader: the socket's own buffer holds
//!   what the reader did not ask for yet, as with epoll.
//! - Writes are accepted into `outbox` (at most [`OUTBOX_MAX`] bytes) and sent by one
//!   send at a time; `poll_flush` waits until the kernel took everything. An error of a
//!   send is reported by the next write or flush.
//! - Dropping the stream cancels its operations (on this thread's ring, or by shutting
//!   the socket down when they run on another one); the socket is closed when the last
//!   of them completed, never while the kernel may still use its descriptor.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ring::{with_ring, OpId, Subm};

/// Bytes a writer may have queued beyond what the kernel took before it must wait.
pub const OUTBOX_MAX: usize = 64 * 1024;

/// A TCP stream on the io_uring engine.
pub struct UringStream {
    s: Arc<Shared>,
}

/// What the stream and its operations in flight share.
pub struct Shared {
    sock: std::net::TcpStream,
    st: Mutex<State>,
}

#[derive(Default)]
struct State {
    inbox: BytesMut,
    eof: bool,
    read_err: Option<i32>,
    recv: Option<OpId>,
    reader: Option<Waker>,
    outbox: BytesMut,
    send: Option<OpId>,
    write_err: Option<i32>,
    writer: Option<Waker>,
    dropped: bool,
    /// The armed receive is being cancelled ([`UringStream::poll_disarm`]).
    disarming: bool,
}

fn not_on_ring() -> io::Error {
    io::Error::other("an io_uring stream was polled on a thread without a ring")
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// A receive completed with `res` (bytes, 0 at end of stream, or -errno).
    pub(super) fn on_recv(this: &Arc<Shared>, sq: &mut Subm, res: i32, data: &[u8]) {
        let mut st = this.lock();
        st.recv = None;
        if st.dropped {
            return;
        }
        if std::mem::take(&mut st.disarming)
            && matches!(
                -res,
                libc::ECANCELED | libc::ENOBUFS | libc::EINTR | libc::EAGAIN
            )
        {
            // Taken back before anything came: nothing to read, nothing to arm again.
            let w = st.reader.take();
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
            return;
        }
        match res {
            n if n > 0 => st.inbox.extend_from_slice(data),
            0 => st.eof = true,
            e if matches!(-e, libc::ENOBUFS | libc::EINTR | libc::EAGAIN) => {
                // No buffer was free (many receives completed in one turn), or a spurious
                // wake-up: arm again; the reader keeps waiting.
                st.recv = Some(sq.recv(this.clone()));
                return;
            }
            e if -e == libc::EINVAL && sq.poll_first != 0 => {
                // The kernel refuses RECVSEND_POLL_FIRST: receive without it from now on.
                tracing::info!("io_uring: receives without POLL_FIRST (the kernel refuses it)");
                sq.poll_first = 0;
                st.recv = Some(sq.recv(this.clone()));
                return;
            }
            e => st.read_err = Some(-e),
        }
        let w = st.reader.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// A send completed with `res` (bytes taken, or -errno); `bytes` is what it was given.
    pub(super) fn on_send(this: &Arc<Shared>, sq: &mut Subm, res: i32, mut bytes: Bytes) {
        let mut st = this.lock();
        st.send = None;
        if st.dropped {
            return;
        }
        match res {
            n if n >= 0 => {
                bytes.advance((n as usize).min(bytes.len()));
                if !bytes.is_empty() {
                    st.send = Some(sq.send(this.clone(), bytes));
                    return;
                }
                if !st.outbox.is_empty() {
                    let next = st.outbox.split().freeze();
                    st.send = Some(sq.send(this.clone(), next));
                }
            }
            e if matches!(-e, libc::EINTR | libc::EAGAIN) => {
                st.send = Some(sq.send(this.clone(), bytes));
                return;
            }
            e => {
                st.write_err = Some(-e);
                st.outbox = BytesMut::new();
            }
        }
        let w = st.writer.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl UringStream {
    /// Take over a connected socket. It is put in blocking mode: io_uring waits for it
    /// without blocking the thread, and a non-blocking socket would answer EAGAIN.
    pub fn new(sock: std::net::TcpStream) -> io::Result<UringStream> {
        sock.set_nonblocking(false)?;
        Ok(UringStream {
            s: Arc::new(Shared {
                sock,
                st: Mutex::default(),
            }),
        })
    }

    /// The socket (addresses, options).
    pub fn socket(&self) -> &std::net::TcpStream {
        &self.s.sock
    }

    /// Give the socket back as a plain non-blocking one (for a TLS handshake on the
    /// epoll side). Refused while anything is in flight or buffered: those bytes would be
    /// lost or bypass the handshake.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        {
            let st = self.s.lock();
            if st.recv.is_some()
                || st.send.is_some()
                || !st.inbox.is_empty()
                || !st.outbox.is_empty()
            {
                return Err(io::Error::other("bytes in flight on the socket"));
            }
        }
        // Dropping the stream with nothing in flight cancels nothing: the socket is ours.
        let s = self.s.clone();
        drop(self);
        let shared = Arc::try_unwrap(s)
            .map_err(|_| io::Error::other("an io_uring operation still holds the socket"))?;
        shared.sock.set_nonblocking(true)?;
        Ok(shared.sock)
    }

    /// [`AsyncRead::poll_read`] without the copy: the received bytes as they came
    /// (`Some`), or `None` at end of stream.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<io::Result<Option<BytesMut>>> {
        self.poll_inbox(cx, std::mem::take)
    }

    /// `take` what was received (`Some`), or `None` at end of stream; with nothing
    /// received, arm a receive on this thread's ring (one at a time) and wait.
    fn poll_inbox<T>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut BytesMut) -> T,
    ) -> Poll<io::Result<Option<T>>> {
        let mut st = self.s.lock();
        if !st.inbox.is_empty() {
            return Poll::Ready(Ok(Some(take(&mut st.inbox))));
        }
        if let Some(e) = st.read_err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if st.eof {
            return Poll::Ready(Ok(None));
        }
        match &st.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.reader = Some(cx.waker().clone()),
        }
        if st.recv.is_none() {
            match with_ring(|r| r.recv(self.s.clone())) {
                Some(id) => st.recv = Some(id),
                None => return Poll::Ready(Err(not_on_ring())),
            }
        }
        Poll::Pending
    }

    /// [`AsyncWrite::poll_write`] of the first `n` bytes of `buf`, split off it without a
    /// copy when they go to the ring at once.
    pub fn poll_send_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        n: usize,
    ) -> Poll<io::Result<usize>> {
        // The bytes move from the connection's buffer to the ring: nothing new is held.
        self.poll_queue(cx, n, n, |k| buf.split_to(k).freeze())
    }

    /// Accept up to `n` bytes for sending: with nothing in flight, up to `direct` of them
    /// are sent now (`take(k)` gives them), else they wait in the outbox (at most
    /// [`OUTBOX_MAX`]). `take` also consumes them from the caller's buffer.
    fn poll_queue(
        &self,
        cx: &mut Context<'_>,
        n: usize,
        direct: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        let mut st = self.s.lock();
        if let Some(e) = st.write_err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        if st.send.is_none() {
            // Nothing in flight, so nothing waits in the outbox either.
            let k = n.min(direct);
            match with_ring(|r| r.send(self.s.clone(), take(k))) {
                Some(id) => st.send = Some(id),
                None => return Poll::Ready(Err(not_on_ring())),
            }
            return Poll::Ready(Ok(k));
        }
        let k = OUTBOX_MAX.saturating_sub(st.outbox.len()).min(n);
        if k == 0 {
            st.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.outbox.extend_from_slice(&take(k));
        Poll::Ready(Ok(k))
    }

    /// Arm a receive on an idle connection (a server connection going back to the pool),
    /// so that its end or an unexpected message is known when it is next taken, without
    /// a system call then (as tokio's cached readiness does for epoll).
    pub fn watch(&self) {
        let mut st = self.s.lock();
        if st.recv.is_none()
            && st.inbox.is_empty()
            && !st.eof
            && st.read_err.is_none()
            && !st.dropped
        {
            st.recv = with_ring(|r| r.recv(self.s.clone()));
        }
    }

    /// Take back the armed receive, for a stream about to leave its ring (an idle
    /// client parking, see `net::park`). `Ready(true)`: nothing is in flight, buffered
    /// or held by the ring, and [`UringStream::into_std`] will take the socket.
    /// `Ready(false)`: bytes, the end of the stream or an error came first (the reader
    /// finds them as usual), or the receive runs on another thread's ring.
    pub fn poll_disarm(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = self.s.lock();
        if !st.inbox.is_empty()
            || st.eof
            || st.read_err.is_some()
            || st.send.is_some()
            || !st.outbox.is_empty()
            || st.write_err.is_some()
            || st.dropped
        {
            return Poll::Ready(false);
        }
        match st.recv {
            None if Arc::strong_count(&self.s) == 1 => return Poll::Ready(true),
            None => {
                // The ring still holds the completed receive's reference: it lets go of
                // it before this task runs again.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Some(op) if !st.disarming => {
                let here = with_ring(|r| {
                    let here = r.id == op.ring;
                    if here {
                        r.cancel(op);
                    }
                    here
                })
                .unwrap_or(false);
                if !here {
                    return Poll::Ready(false);
                }
                st.disarming = true;
            }
            Some(_) => {}
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The ring its receive is armed on, if one is.
    pub fn armed_on(&self) -> Option<u32> {
        self.s.lock().recv.map(|op| op.ring)
    }

    /// For a connection that should be silent: did the peer close it or send something?
    /// Free when a receive is armed (see [`UringStream::watch`]); otherwise one
    /// non-blocking peek, and a receive is armed for next time.
    pub fn is_stale(&self) -> bool {
        {
            let st = self.s.lock();
            if !st.inbox.is_empty() || st.eof || st.read_err.is_some() {
                return true;
            }
            if st.recv.is_some() {
                return false;
            }
        }
        let mut one = [0u8; 1];
        // SAFETY: a valid one-byte buffer; MSG_DONTWAIT never blocks, MSG_PEEK keeps the
        // byte for the reader.
        let n = unsafe {
            libc::recv(
                self.s.fd(),
                one.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
            self.watch();
            return false;
        }
        true
    }

    /// Write without waiting (best effort, e.g. a last Terminate), only when nothing
    /// else is queued (the bytes would otherwise overtake it).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let st = self.s.lock();
        if st.send.is_some() || !st.outbox.is_empty() {
            return Ok(0);
        }
        // SAFETY: a valid buffer and descriptor; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::send(
                self.s.fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let mut st = self.s.lock();
        st.dropped = true;
        st.reader = None;
        st.writer = None;
        st.inbox = BytesMut::new();
        st.outbox = BytesMut::new();
        let ops = [st.recv, st.send];
        drop(st);
        for op in ops.into_iter().flatten() {
            let here = with_ring(|r| {
                if r.id == op.ring {
                    r.cancel(op);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
            if !here {
                // On another thread's ring: end it from the socket's side.
                // SAFETY: the descriptor is open (this stream's Shared owns it).
                unsafe { libc::shutdown(self.s.fd(), libc::SHUT_RDWR) };
            }
        }
    }
}

impl AsFd for UringStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.s.sock.as_fd()
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        self.poll_inbox(cx, |inbox| {
            let n = inbox.len().min(buf.remaining());
            buf.put_slice(&inbox[..n]);
            inbox.advance(n);
            if inbox.is_empty() {
                // An idle connection keeps no buffer.
                *inbox = BytesMut::new();
            }
        })
        .map_ok(|_| ())
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Copied bytes are new memory: at most OUTBOX_MAX of them per send.
        self.poll_queue(cx, buf.len(), OUTBOX_MAX, |k| {
            Bytes::copy_from_slice(&buf[..k])
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.s.lock();
        if let Some(e) = st.write_err {
            return Poll::Ready(Err(io::Error::from_raw_os_error(e)));
        }
        if st.send.is_none() && st.outbox.is_empty() {
            return Poll::Ready(Ok(()));
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                // SAFETY: the descriptor is open; shutting down the write side only.
                unsafe { libc::shutdown(self.s.fd(), libc::SHUT_WR) };
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
