//! Buffered framing over a [`Stream`]: read everything that is there, parse as many frames
//! as the buffer holds, write once per batch.
//!
//! The poll-style methods let one task drive a client and a server socket together
//! (see `frontend::session`) without splitting streams or handing frames between tasks.
//!
//! Large messages (over [`budget::LARGE_MESSAGE`]) are counted against the process's
//! budget (`budget`): the read side reserves a message's declared length when its header
//! arrives, before room is made for its body, and hands the reservation to the frame; a
//! frame that carries one and is queued here for writing keeps its bytes counted until
//! the write buffer has drained. Small messages skip all of it.
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::budget::{self, Reservation};
use super::{Frame, FrameError, Stream};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// First allocation of a released write buffer (fits glibc's per-thread cache).
const WRITE_START: usize = 1024;
/// A buffer larger than this is dropped once it is empty, so one big result does not pin
/// memory for the rest of a connection's life.
const KEEP_CAPACITY: usize = 64 * 1024;
/// Held output beyond this goes out anyway, as PostgreSQL's own 8 KiB send buffer does
/// when it fills.
const HELD_MAX: usize = 8192;

pub struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Largest message accepted (`max_message_size`, at most 1 GiB: a u32 keeps the
    /// struct small).
    max_message: u32,
    /// The peer closed its side (read returned 0).
    eof: bool,
    /// Keep the read buffer between messages (server connections: few, and busy);
    /// otherwise it is given back once empty (clients: many, mostly idle).
    keep_rbuf: bool,
    /// Trailing bytes of the write buffer that wait for a flush point (see
    /// [`Connection::queue_held`]); at most [`HELD_MAX`].
    held: u16,
    /// Budget reservations of large messages; boxed, since they are rare and an idle
    /// client should not pay for them.
    large: Option<Box<Large>>,
}

/// A connection's reservations from the budget of large messages.
#[derive(Default)]
struct Large {
    /// The large message being read.
    reading: Option<Reservation>,
    /// Large frames queued in the write buffer, counted until it has drained.
    writing: Option<Reservation>,
}

impl Connection {
    pub fn new(stream: Stream, max_message: usize) -> Connection {
        Connection {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            eof: false,
            keep_rbuf: false,
            held: 0,
            large: None,
        }
    }

    /// Keep the read buffer for the connection's life (a server connection): reads go
    /// straight into it and frames are split off it without an allocation per read.
    pub fn keep_read_buffer(&mut self) {
        self.keep_rbuf = true;
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Take the stream back, e.g. to upgrade it to TLS. Fails if the peer already sent
    /// bytes past the point of the upgrade (they would bypass TLS).
    pub fn into_stream(self) -> Result<Stream, Connection> {
        if self.rbuf.is_empty() && self.wbuf.is_empty() {
            Ok(self.stream)
        } else {
            Err(self)
        }
    }

    pub fn max_message(&self) -> usize {
        self.max_message as usize
    }

    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = u32::try_from(max).unwrap_or(u32::MAX);
    }

    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes received but not yet parsed into frames.
    pub fn buffered_input(&self) -> usize {
        self.rbuf.len()
    }

    /// The tags of the complete frames waiting in the input buffer, in order, without
    /// taking them (a frame whose length is not there yet ends the list).
    pub fn buffered_tags(&self) -> impl Iterator<Item = u8> + '_ {
        let b = &self.rbuf[..];
        let mut i = 0usize;
        std::iter::from_fn(move || {
            let h = b.get(i..i + 5)?;
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
            let end = (i + 1).checked_add(len)?;
            if len < 4 || end > b.len() {
                return None;
            }
            i = end;
            Some(h[0])
        })
    }

    /// Bytes queued but not yet written.
    pub fn pending_output(&self) -> usize {
        self.wbuf.len()
    }

    /// Read whatever the socket has. `Ready(Ok(0))` is end of stream.
    ///
    /// A connection without a read buffer (see [`Connection::release_buffers`]) reads into
    /// a scratch area on the stack and keeps only the bytes that came, in a buffer of
    /// their size: an idle client costs no read buffer, and a short request allocates a
    /// few hundred bytes rather than a whole read chunk.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Stream::Uring(u) = &self.stream {
            // The ring's bytes as they came: they become the buffer when it is empty.
            return match u.poll_take(cx) {
                Poll::Ready(Ok(Some(b))) => {
                    let n = b.len();
                    if self.rbuf.is_empty() && (b.len() >= self.rbuf.capacity() || !self.keep_rbuf)
                    {
                        self.rbuf = b;
                    } else {
                        self.rbuf.extend_from_slice(&b);
                    }
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Ok(None)) => {
                    self.eof = true;
                    Poll::Ready(Ok(0))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let r = if self.rbuf.capacity() == 0 && !self.keep_rbuf {
            let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = tokio::io::ReadBuf::uninit(&mut scratch);
            match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.stream), cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n > 0 {
                        self.rbuf = BytesMut::from(rb.filled());
                    }
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        } else {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
        };
        if let Poll::Ready(Ok(0)) = r {
            self.eof = true;
        }
        r
    }

    /// Give back the buffers' memory if nothing is in them (a client going idle): the
    /// next read or write allocates what it needs.
    pub fn release_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }

    /// For a connection that should be silent (an idle server): has the peer closed it
    /// or sent something (e.g. a FATAL before closing)? Never waits. Uses tokio's cached
    /// readiness, so it costs at most one non-blocking read.
    pub fn is_stale(&mut self) -> bool {
        if self.eof || !self.rbuf.is_empty() {
            return true;
        }
        if let Stream::Uring(u) = &self.stream {
            return u.is_stale();
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_fill(&mut cx).is_ready()
    }

    /// The connection goes idle (a server connection back in its pool): under io_uring,
    /// arm a receive so that [`Connection::is_stale`] costs nothing later.
    pub fn watch(&self) {
        if let Stream::Uring(u) = &self.stream {
            u.watch();
        }
    }

    /// The io_uring thread whose ring watches this idle connection (see
    /// [`Connection::watch`]); None under epoll.
    pub fn watched_on(&self) -> Option<u32> {
        match &self.stream {
            Stream::Uring(u) => u.armed_on(),
            _ => None,
        }
    }

    /// Wait for more input. Returns 0 at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Split one complete frame off the input buffer, if there is one.
    ///
    /// A large message reserves its declared length from the budget when it is first seen
    /// incomplete, before the buffer grows for it; `FrameError::OutOfMemory` if it does
    /// not fit (the caller closes the connection).
    pub fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if !self.keep_rbuf && Frame::exactly_one(&self.rbuf, self.max_message as usize) {
            // The buffer holds this one frame (a client's request, read into a buffer of
            // its size): the frame takes the buffer whole, no split and no allocation.
            let raw = std::mem::take(&mut self.rbuf).freeze();
            let f = Frame::from_raw_unchecked(raw);
            if f.len() > budget::LARGE_MESSAGE {
                return self.reserved(f).map(Some);
            }
            return Ok(Some(f));
        }
        let large = &mut self.large;
        let f = Frame::parse_with(&mut self.rbuf, self.max_message as usize, |total| {
            if large.as_ref().is_none_or(|l| l.reading.is_none()) {
                let r = budget::BUDGET.reserve(total)?;
                large.get_or_insert_default().reading = Some(r);
            }
            Ok(())
        })?;
        if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_CAPACITY {
            self.rbuf = BytesMut::new();
        }
        match f {
            Some(f) if f.len() > budget::LARGE_MESSAGE => self.reserved(f).map(Some),
            f => Ok(f),
        }
    }

    /// Hand a complete large frame its reservation (made when it was first seen
    /// incomplete; made now if it arrived whole).
    #[cold]
    fn reserved(&mut self, f: Frame) -> Result<Frame, FrameError> {
        let r = match self.large.as_mut().and_then(|l| l.reading.take()) {
            Some(r) => r,
            None => budget::BUDGET.reserve(f.len())?,
        };
        if self.large.as_ref().is_some_and(|l| l.writing.is_none()) {
            self.large = None;
        }
        Ok(f.with_reservation(r))
    }

    /// Drop the frame at the front of the input whole, reading what has not come yet: for
    /// a frame too large to take (`FrameError::TooLarge`, `OutOfMemory`), so that the
    /// connection stays in step and the frames after it can be read. Nothing of it is
    /// kept beyond one read at a time.
    pub async fn skip_frame(&mut self) -> Result<(), ConnError> {
        while self.rbuf.len() < 5 {
            if self.fill().await? == 0 {
                return Err(FrameError::Truncated.into());
            }
        }
        let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength(i64::from(len)).into());
        }
        let mut left = len as usize + 1;
        loop {
            let n = left.min(self.rbuf.len());
            self.rbuf.advance(n);
            left -= n;
            if left == 0 {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return Err(FrameError::Truncated.into());
            }
        }
    }

    /// Read one frame. `Ok(None)` is a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(Some(f));
            }
            if self.fill().await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated.into())
                };
            }
        }
    }

    /// Read an untagged startup-phase packet (`length + body`), returning the body.
    pub async fn read_startup(&mut self, max: usize) -> Result<Option<Bytes>, ConnError> {
        loop {
            if let Some(h) = self.rbuf.get(..4) {
                let len = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                if !(8..=max as i32).contains(&len) {
                    return Err(FrameError::BadLength(len as i64).into());
                }
                let len = len as usize;
                if self.rbuf.len() >= len {
                    let mut pkt = self.rbuf.split_to(len);
                    pkt.advance(4);
                    return Ok(Some(pkt.freeze()));
                }
            }
            if self.fill().await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated.into())
                };
            }
        }
    }

    /// Queue a frame for writing (copied into the write buffer). The copy of a large
    /// frame stays counted against the budget until the write buffer has drained.
    pub fn queue(&mut self, frame: &Frame) {
        if let Some(r) = frame.reservation() {
            self.hold_for_writing(r, frame.len());
        }
        self.queue_bytes(frame.raw());
    }

    #[cold]
    fn hold_for_writing(&mut self, by: &Reservation, bytes: usize) {
        let large = self.large.get_or_insert_default();
        match &mut large.writing {
            Some(w) => w.grow(bytes),
            None => large.writing = Some(by.budget().hold(bytes)),
        }
    }

    /// The write buffer has drained: what it held of large frames is given back.
    #[cold]
    fn written(&mut self) {
        if let Some(l) = self.large.as_mut() {
            l.writing = None;
            if l.reading.is_none() {
                self.large = None;
            }
        }
    }

    /// Queue raw, already-encoded bytes. They go out with everything queued before them
    /// (held output included).
    #[inline]
    pub fn queue_bytes(&mut self, bytes: &[u8]) {
        self.append(bytes);
        self.held = 0;
    }

    #[inline]
    fn append(&mut self, bytes: &[u8]) {
        if self.wbuf.capacity() == 0 {
            // A released buffer: start with room for a typical answer, not one message.
            self.wbuf.reserve(WRITE_START.max(bytes.len()));
        }
        self.wbuf.extend_from_slice(bytes);
    }

    /// Queue a frame that waits for a flush point: it is written only once something
    /// queued after it is (`queue`), or [`Connection::release_held`] says so. A server
    /// sends the answers to Parse, Bind, Describe, Close and Execute only when the client's
    /// Sync or Flush (or a full send buffer) makes it flush; answers pgtenant makes itself
    /// keep that timing.
    pub fn queue_held(&mut self, frame: &Frame) {
        let total = usize::from(self.held) + frame.len();
        if total > HELD_MAX || frame.reservation().is_some() {
            self.queue(frame);
            return;
        }
        self.append(frame.raw());
        self.held = total as u16;
    }

    /// What is held may go out now (the client's Sync or Flush has been reached).
    pub fn release_held(&mut self) {
        self.held = 0;
    }

    /// Bytes held for a flush point.
    pub fn held_output(&self) -> usize {
        usize::from(self.held)
    }

    /// Write as much queued output as the socket takes. `Ready(Ok(()))` once all of it is
    /// written and flushed.
    /// Held output (see [`Connection::queue_held`]) stays queued.
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let held = usize::from(self.held);
        while self.wbuf.len() > held {
            if let Stream::Uring(u) = &self.stream {
                // The queued bytes go to the ring as they are, without a copy.
                let n = self.wbuf.len() - held;
                match u.poll_send_from(cx, &mut self.wbuf, n) {
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let out = &self.wbuf[..self.wbuf.len() - held];
            match Pin::new(&mut self.stream).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if held > 0 {
            return Pin::new(&mut self.stream).poll_flush(cx);
        }
        if self.wbuf.capacity() > KEEP_CAPACITY {
            self.wbuf = BytesMut::new();
        }
        if self.large.is_some() {
            self.written();
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Write what the socket takes of the queued output now, without waiting: the rest,
    /// and any error, are for the next [`Connection::poll_write_out`], whose waker is the
    /// one registered then.
    pub fn write_now(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll_write_out(&mut cx);
    }

    /// Write everything queued, held output included.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.held = 0;
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Queue a frame and write it out now.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.queue(frame);
        self.flush().await
    }

    /// The peer said it leaves (a client's Terminate): nothing more is read from it, and
    /// [`Connection::linger`] does not wait for it.
    pub fn peer_left(&mut self) {
        self.eof = true;
    }

    /// End the connection gracefully, before it is dropped: close the write side, then
    /// read and drop what the peer still sends until it closes too, for at most `wait`.
    /// A socket closed with unread input is reset, and a reset peer loses what it had not
    /// read yet (the FATAL that says why it was ended).
    pub async fn linger(&mut self, wait: std::time::Duration) {
        if self.eof {
            return;
        }
        let _ = tokio::time::timeout(wait, async {
            let _ = poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx)).await;
            loop {
                self.rbuf.clear();
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Close the write side (best effort).
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx)).await;
    }
}

/// Errors reading from a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: (pgtenant's side as a Connection, the peer's raw socket).
    async fn pair() -> (Connection, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mine, _) = l.accept().await.unwrap();
        (Connection::new(Stream::Plain(mine), 64 << 20), peer)
    }

    fn header(tag: u8, body_len: usize) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body_len + 4) as i32).to_be_bytes());
        m
    }

    /// Read until a frame comes out (or an error).
    async fn next(c: &mut Connection) -> Result<Frame, FrameError> {
        loop {
            if let Some(f) = c.try_frame()? {
                return Ok(f);
            }
            assert!(c.fill().await.unwrap() > 0, "peer closed");
        }
    }

    /// `write_now` writes what the socket takes without a turn of the task, keeps what it
    /// does not take for the next `poll_write_out`, and leaves that poll its error.
    #[tokio::test]
    async fn write_now_writes_what_the_socket_takes_and_leaves_the_rest() {
        use tokio::io::AsyncReadExt;
        let (mut c, mut peer) = pair().await;
        c.queue(&Frame::new(b'Z', b"I"));
        c.write_now();
        assert_eq!(c.pending_output(), 0, "a small answer goes at once");
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"Z\0\0\0\x05I");

        // A peer that reads nothing: the socket takes part, the rest waits its turn.
        let big = vec![b'x'; 64 << 20];
        c.queue(&Frame::new(b'd', &big));
        c.write_now();
        let left = c.pending_output();
        assert!(left > 0 && left < big.len() + 5, "{left} bytes left");
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            peer.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        c.flush().await.unwrap();
        drop(c);
        assert_eq!(reader.await.unwrap(), 6 + big.len() + 5 - 6);

        // An error is not lost: the next poll reports it.
        let (mut c, peer) = pair().await;
        drop(peer);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut failed = false;
        for _ in 0..100 {
            c.queue(&Frame::new(b'd', &[b'x'; 4096]));
            c.write_now();
            let polled = std::future::poll_fn(|cx| Poll::Ready(c.poll_write_out(cx))).await;
            if matches!(polled, Poll::Ready(Err(_))) {
                failed = true;
                break;
            }
        }
        assert!(failed, "writing to a closed peer fails at the next poll");
    }

    /// The only test of this binary that uses the process's budget (it sets its limit).
    #[tokio::test]
    async fn large_messages_are_counted_from_header_to_written() {
        const MIB: usize = 1 << 20;
        budget::set_limit(3 * MIB);
        let base = budget::used();
        let (mut a, mut pa) = pair().await;
        let (mut b, mut pb) = pair().await;
        let (mut out, mut pout) = pair().await;

        // A's header announces 2 MiB: reserved before its body is buffered.
        pa.write_all(&header(b'Q', 2 * MIB)).await.unwrap();
        pa.write_all(&[b'x'; 1000]).await.unwrap();
        while a.buffered_input() < 1005 {
            a.fill().await.unwrap();
        }
        assert!(a.try_frame().unwrap().is_none());
        assert_eq!(budget::used(), base + 2 * MIB + 5);

        // B's 2 MiB do not fit beside it; a small message always does.
        pb.write_all(&header(b'Q', 5)).await.unwrap();
        pb.write_all(b"abcd\0").await.unwrap();
        pb.write_all(&header(b'Q', 2 * MIB)).await.unwrap();
        let small = next(&mut b).await.unwrap();
        assert!(small.reservation().is_none());
        match next(&mut b).await {
            Err(e @ FrameError::OutOfMemory { .. }) => {
                assert_eq!(e.sqlstate(), "53200");
                assert!(e.to_string().starts_with("out of memory: "), "{e}");
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        assert_eq!(budget::used(), base + 2 * MIB + 5);

        // A completes: the frame carries the reservation, shared by its clones.
        let rest = vec![b'x'; 2 * MIB - 1000];
        let w = tokio::spawn(async move {
            pa.write_all(&rest).await.unwrap();
            pa
        });
        let f = next(&mut a).await.unwrap();
        let _pa = w.await.unwrap();
        assert_eq!(f.len(), 2 * MIB + 5);
        assert!(f.reservation().is_some());
        let copy = f.clone();
        assert_eq!(budget::used(), base + 2 * MIB + 5);

        // Forwarded: the copy in `out`'s write buffer stays counted after the frame is
        // gone, until it has been written.
        out.queue(&f);
        drop((f, copy));
        assert_eq!(budget::used(), base + 2 * MIB + 5);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut pout, &mut sink)
                .await
                .unwrap();
            sink.len()
        });
        out.flush().await.unwrap();
        assert_eq!(budget::used(), base, "everything given back once written");
        drop(out);
        assert_eq!(reader.await.unwrap(), 2 * MIB + 5);
        budget::set_limit(budget::DEFAULT_BUDGET);
    }
}
