//! The extended-protocol messages that name prepared statements (Parse, Bind, Describe,
//! Close), decoded far enough to read and rewrite the statement name, and nothing more:
//! parameter values in Bind are copied as opaque bytes.
use bytes::{BufMut, BytesMut};

use super::{ProtocolError, Reader};
use crate::net::Frame;

/// A Parse message: statement name, query text, and the raw parameter-type block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// The text; not UTF-8 bytes (a client encoding other than UTF-8) read as U+FFFD.
    pub query: std::borrow::Cow<'a, str>,
    /// The text as sent (what a rewritten Parse carries).
    pub query_raw: &'a [u8],
    /// `int16 count + count × int32 oid`, as sent.
    pub param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Parse<'a>, ProtocolError> {
        let mut r = Reader::new(body, "Parse");
        let name = r.cstr()?;
        let query_raw = r.cstr_bytes()?;
        let query = super::reader::text(query_raw);
        let param_types = r.remaining();
        let mut t = Reader::new(param_types, "Parse");
        let n = t.i16()?;
        if n < 0 || t.remaining().len() != n as usize * 4 {
            return Err(ProtocolError::Malformed("Parse"));
        }
        Ok(Parse {
            name,
            query,
            query_raw,
            param_types,
        })
    }

    /// The same Parse under another statement name.
    pub fn encode_as(&self, name: &str) -> Frame {
        let mut b =
            BytesMut::with_capacity(name.len() + self.query_raw.len() + self.param_types.len() + 2);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(self.query_raw);
        b.put_u8(0);
        b.put_slice(self.param_types);
        Frame::new(b'P', &b)
    }
}

/// A Bind parameter: format code (0 text, 1 binary) and value (None = NULL).
pub type BindParam<'a> = (i16, Option<&'a [u8]>);

/// Portal and statement names at the start of a Bind message.
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// Everything after the statement name (formats, values, result formats).
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Bind<'a>, ProtocolError> {
        let mut r = Reader::new(body, "Bind");
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        Ok(Bind {
            portal,
            statement,
            rest: r.remaining(),
        })
    }

    /// The parameters in order, each with its format (0 text, 1 binary) and value
    /// (None = NULL), read as they are asked for.
    fn params(&self) -> Result<Params<'a>, ProtocolError> {
        let mut r = Reader::new(self.rest, "Bind");
        let nformats = r.i16()?;
        if nformats < 0 {
            return Err(ProtocolError::Malformed("Bind"));
        }
        let formats = r.bytes(2 * nformats as usize)?;
        let n = r.i16()?.max(0) as usize;
        Ok(Params {
            r,
            formats,
            n,
            i: 0,
        })
    }

    /// Parameter `idx` (0-based). `Ok(None)` when there is no such parameter.
    pub fn param(&self, idx: usize) -> Result<Option<BindParam<'a>>, ProtocolError> {
        self.params()?.nth(idx).transpose()
    }

    /// Every parameter, decoded in one pass (for a caller that looks at several:
    /// [`Bind::param`] reads the message from its start each time).
    pub fn all_params(&self) -> Result<Vec<BindParam<'a>>, ProtocolError> {
        self.params()?.collect()
    }

    /// The same Bind naming another statement.
    pub fn encode_as(&self, statement: &str) -> Frame {
        let mut b =
            BytesMut::with_capacity(self.portal.len() + statement.len() + self.rest.len() + 2);
        b.put_slice(self.portal.as_bytes());
        b.put_u8(0);
        b.put_slice(statement.as_bytes());
        b.put_u8(0);
        b.put_slice(self.rest);
        Frame::new(b'B', &b)
    }
}

/// Describe or Close: `'S'` statement or `'P'` portal, and its name.
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a str,
}

impl<'a> Target<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Target<'a>, ProtocolError> {
        let mut r = Reader::new(body, "Describe/Close");
        let kind = r.u8()?;
        if kind != b'S' && kind != b'P' {
            return Err(ProtocolError::Malformed("Describe/Close"));
        }
        let name = r.cstr()?;
        Ok(Target { kind, name })
    }

    pub fn encode(tag: u8, kind: u8, name: &str) -> Frame {
        let mut b = BytesMut::with_capacity(name.len() + 2);
        b.put_u8(kind);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        Frame::new(tag, &b)
    }
}

/// A Bind's parameters ([`Bind::params`]).
struct Params<'a> {
    r: Reader<'a>,
    /// The format codes, two bytes each: none (all text), one (for all), or one each.
    formats: &'a [u8],
    n: usize,
    i: usize,
}

impl<'a> Iterator for Params<'a> {
    type Item = Result<BindParam<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.n {
            return None;
        }
        let i = self.i;
        self.i += 1;
        let at = match self.formats.len() {
            0 => None,
            2 => Some(0),
            _ => Some(2 * i),
        };
        let format = match at.map(|at| self.formats.get(at..at + 2)) {
            None => 0,
            Some(Some(b)) => i16::from_be_bytes([b[0], b[1]]),
            Some(None) => return Some(Err(ProtocolError::Malformed("Bind"))),
        };
        let value = match self.r.i32() {
            Ok(len) if len < 0 => Ok(None),
            Ok(len) => self.r.bytes(len as usize).map(Some),
            Err(e) => Err(e),
        };
        Some(value.map(|v| (format, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_rename() {
        let f = Frame::new(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17");
        let p = Parse::decode(f.body()).unwrap();
        assert_eq!((p.name, &*p.query), ("s1", "select $1"));
        let g = p.encode_as("PGT_7");
        let q = Parse::decode(g.body()).unwrap();
        assert_eq!(
            (q.name, &*q.query, q.param_types),
            ("PGT_7", "select $1", p.param_types)
        );
        assert!(Parse::decode(b"s1\0select\0\0\x02\0\0\0\x17").is_err());
        assert!(Parse::decode(b"s1\0select").is_err());
    }

    #[test]
    fn bind_and_target_rename() {
        let f = Frame::new(b'B', b"\0s1\0\0\0\0\0\0\0");
        let b = Bind::decode(f.body()).unwrap();
        assert_eq!((b.portal, b.statement), ("", "s1"));
        let g = b.encode_as("PGT_1");
        let c = Bind::decode(g.body()).unwrap();
        assert_eq!((c.statement, c.rest), ("PGT_1", b.rest));
        // Two text parameters: '42' and NULL; then one binary with format list of 1.
        let body = b"\0s\0\0\x01\0\0\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0";
        let b = Bind::decode(body).unwrap();
        assert_eq!(b.param(0).unwrap(), Some((0, Some(&b"42"[..]))));
        assert_eq!(b.param(1).unwrap(), Some((0, None)));
        assert_eq!(b.param(2).unwrap(), None);
        assert_eq!(
            b.all_params().unwrap(),
            vec![(0, Some(&b"42"[..])), (0, None)]
        );
        let body = b"\0s\0\0\x01\0\x01\0\x01\0\0\0\x08\0\0\0\0\0\0\0\x2a\0\0";
        assert_eq!(
            Bind::decode(body).unwrap().param(0).unwrap(),
            Some((1, Some(&b"\0\0\0\0\0\0\0\x2a"[..])))
        );
        assert!(Bind::decode(b"\0s\0\0\x01\0").unwrap().param(0).is_err());
        let t = Target::decode(b"Ss1\0").unwrap();
        assert_eq!((t.kind, t.name), (b'S', "s1"));
        assert!(Target::decode(b"Xs1\0").is_err());
        assert!(Target::decode(b"S").is_err());
    }
}
