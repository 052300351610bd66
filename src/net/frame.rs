//! The protocol unit: one message, `tag (1) + length (4, includes itself) + body`.
//!
//! A frame keeps its raw bytes, header included, so forwarding it is a reference-count
//! bump and a copy into the peer's write buffer, never a re-encode.
//!
//! A frame longer than [`LARGE_MESSAGE`] carries its reservation from the process's
//! budget of large messages (see `budget`), shared by its clones and given back when the
//! last of them is dropped. Other frames carry none and never touch the budget.
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::budget::{Reservation, LARGE_MESSAGE};
use crate::protocol::sqlstate;

/// Errors in the framing layer. Each costs its connection, never the process.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {size} bytes exceeds max_message_size ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("out of memory: a message of {size} bytes does not fit in max_buffered_message_bytes ({budget} bytes, {in_use} held by other large messages)")]
    OutOfMemory {
        size: usize,
        budget: usize,
        in_use: usize,
    },
}

impl FrameError {
    /// The SQLSTATE a peer is told with FATAL before its connection is closed.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            FrameError::OutOfMemory { .. } => sqlstate::OUT_OF_MEMORY,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

#[derive(Clone)]
pub struct Frame {
    raw: Bytes,
    /// Only for a frame longer than [`LARGE_MESSAGE`] read from a peer.
    reserved: Option<Arc<Reservation>>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame({:?}, {} bytes)",
            self.tag() as char,
            self.raw.len()
        )
    }
}

impl Frame {
    /// Header length: tag + i32 length.
    pub const HEADER: usize = 5;

    /// Try to split one frame off the front of `buf`. `Ok(None)` means more bytes are
    /// needed. The length is checked before anything is buffered for it.
    #[inline]
    pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
        Self::parse_with(buf, max, |_| Ok(()))
    }

    /// [`Frame::parse`], calling `large(total)` while the frame at the front is longer
    /// than [`LARGE_MESSAGE`] and incomplete, before room is made for the rest of it
    /// (its error is returned as is): where a connection reserves it from the budget.
    #[inline]
    pub fn parse_with(
        buf: &mut BytesMut,
        max: usize,
        large: impl FnOnce(usize) -> Result<(), FrameError>,
    ) -> Result<Option<Frame>, FrameError> {
        let Some(header) = buf.get(..Self::HEADER) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            return Err(FrameError::BadLength(len as i64));
        }
        let total = len as usize + 1;
        if total > max {
            return Err(FrameError::TooLarge { size: total, max });
        }
        if buf.len() < total {
            if total > LARGE_MESSAGE {
                large(total)?;
            }
            // Reserve once for the whole frame instead of growing by steps.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        Ok(Some(Frame {
            raw: buf.split_to(total).freeze(),
            reserved: None,
        }))
    }

    /// Does `buf` hold exactly one well-formed frame of at most `max` bytes, and nothing
    /// else? (Then [`Frame::parse`] would return all of it.)
    pub fn exactly_one(buf: &[u8], max: usize) -> bool {
        let Some(header) = buf.get(..Self::HEADER) else {
            return false;
        };
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        len >= 4 && len as usize + 1 == buf.len() && buf.len() <= max
    }

    /// Build a frame from a tag and a body.
    pub fn new(tag: u8, body: &[u8]) -> Frame {
        let mut b = BytesMut::with_capacity(Self::HEADER + body.len());
        b.put_u8(tag);
        b.put_i32((body.len() + 4) as i32);
        b.put_slice(body);
        Frame {
            raw: b.freeze(),
            reserved: None,
        }
    }

    /// Wrap raw bytes that are known to hold exactly one well-formed frame.
    pub fn from_raw_unchecked(raw: Bytes) -> Frame {
        debug_assert!(raw.len() >= Self::HEADER);
        Frame {
            raw,
            reserved: None,
        }
    }

    /// Attach the budget reservation of a large frame (kept until the last clone goes).
    pub(super) fn with_reservation(mut self, r: Reservation) -> Frame {
        self.reserved = Some(Arc::new(r));
        self
    }

    /// The budget reservation this frame holds (only large frames read from a peer).
    pub(super) fn reservation(&self) -> Option<&Reservation> {
        self.reserved.as_deref()
    }

    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[Self::HEADER..]
    }

    /// The body as shared bytes (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(Self::HEADER..)
    }

    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_frame() {
        let one = b"Q\0\0\0\x09abcd\0";
        assert!(Frame::exactly_one(one, 1024));
        // A frame and the start of another, half a frame, a bad length, too large.
        assert!(!Frame::exactly_one(b"Q\0\0\0\x09abcd\0Z", 1024));
        assert!(!Frame::exactly_one(b"Q\0\0\0\x09ab", 1024));
        assert!(!Frame::exactly_one(b"Q\0\0\0\x03", 1024));
        assert!(!Frame::exactly_one(one, 9));
        let mut buf = BytesMut::from(&one[..]);
        let f = Frame::parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&f.raw()[..], &one[..]);
    }

    #[test]
    fn parses_whole_and_partial_frames() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q\0\0\0\x09abcd\0Z");
        let f = Frame::parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"abcd\0");
        assert_eq!(&buf[..], b"Z");
        assert!(Frame::parse(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(b"\0\0\0\x05");
        assert!(Frame::parse(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(b"I");
        let f = Frame::parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.body(), b"I");
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert!(matches!(
            Frame::parse(&mut buf, 1024),
            Err(FrameError::BadLength(3))
        ));
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            Frame::parse(&mut buf, 1024),
            Err(FrameError::BadLength(-1))
        ));
        let mut buf = BytesMut::from(&b"Q\0\x10\0\0"[..]);
        assert!(matches!(
            Frame::parse(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn new_round_trips() {
        let f = Frame::new(b'Z', b"I");
        let mut buf = BytesMut::from(&f.raw()[..]);
        assert_eq!(Frame::parse(&mut buf, 64).unwrap().unwrap(), f);
    }
}
