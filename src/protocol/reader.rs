//! A checked cursor over a message body.
use super::ProtocolError;

pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// `what` names the message in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn err(&self) -> ProtocolError {
        ProtocolError::Malformed(self.what)
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.err())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, as raw bytes without the NUL.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let pos = memchr::memchr(0, self.buf).ok_or_else(|| self.err())?;
        let s = &self.buf[..pos];
        self.buf = &self.buf[pos + 1..];
        Ok(s)
    }

    /// A NUL-terminated text in the client's encoding (SQL): UTF-8 as is; otherwise a
    /// copy with every byte that is not UTF-8 replaced by U+FFFD (keywords, which are
    /// ASCII, still read; the original bytes are what gets forwarded).
    pub fn cstr_text(&mut self) -> Result<std::borrow::Cow<'a, str>, ProtocolError> {
        let b = self.cstr_bytes()?;
        Ok(text(b))
    }

    /// A NUL-terminated string that must be UTF-8.
    #[inline]
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let b = self.cstr_bytes()?;
        std::str::from_utf8(b).map_err(|_| self.err())
    }
}

/// Text in the client's encoding: borrowed when it is UTF-8 (checked with the standard
/// library's fast validation: this runs on every Query and Parse), else a lossy copy.
#[inline]
pub fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_refuses_short_input() {
        let mut r = Reader::new(b"ab\0\0\0\0\x07x", "test");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.i32().unwrap(), 7);
        assert_eq!(r.u8().unwrap(), b'x');
        assert!(r.u8().is_err());
        assert!(Reader::new(b"abc", "t").cstr().is_err());
        assert!(Reader::new(b"\0\0\0", "t").i32().is_err());
    }
}
