//! Raw protocol messages for tests that send what drivers do not (or not in that order):
//! frame builders, a parsed backend message, and a blocking client that logs in with
//! trust auth and reads answers message by message.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A message from the server (or pgtenant).
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Msg {
    /// The first C string of the body (CommandComplete tag, ...).
    pub fn cstr(&self) -> String {
        let end = self
            .body
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.body.len());
        text(&self.body[..end])
    }

    /// First column of a DataRow, text format.
    pub fn value(&self) -> String {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let len = i32::from_be_bytes(self.body[2..6].try_into().unwrap());
        assert!(len >= 0, "NULL value");
        text(&self.body[6..6 + len as usize])
    }

    /// A field of an ErrorResponse or NoticeResponse ('C': SQLSTATE, 'M': message, ...).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut at = 0;
        while at < self.body.len() && self.body[at] != 0 {
            let t = self.body[at];
            let end = at + 1 + self.body[at + 1..].iter().position(|&b| b == 0)?;
            if t == code {
                return Some(text(&self.body[at + 1..end]));
            }
            at = end + 1;
        }
        None
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> String {
        assert_eq!(self.tag, b'E', "not an error: {self:?}");
        self.field(b'C')
            .unwrap_or_else(|| panic!("error without SQLSTATE: {self:?}"))
    }

    /// Parameter type oids of a ParameterDescription.
    pub fn param_oids(&self) -> Vec<u32> {
        assert_eq!(self.tag, b't', "not a ParameterDescription: {self:?}");
        let n = i16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        (0..n)
            .map(|i| u32::from_be_bytes(self.body[2 + 4 * i..6 + 4 * i].try_into().unwrap()))
            .collect()
    }

    /// (name, type oid) of each field of a RowDescription.
    pub fn fields(&self) -> Vec<(String, u32)> {
        assert_eq!(self.tag, b'T', "not a RowDescription: {self:?}");
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::new();
        for _ in 0..n {
            let end = at + b[at..].iter().position(|&x| x == 0).unwrap();
            let name = text(&b[at..end]);
            at = end + 1;
            let oid = u32::from_be_bytes(b[at + 6..at + 10].try_into().unwrap());
            at += 18;
            out.push((name, oid));
        }
        out
    }

    /// (process id, channel, payload) of a NotificationResponse.
    pub fn notification(&self) -> (i32, String, String) {
        assert_eq!(self.tag, b'A', "not a notification: {self:?}");
        let pid = i32::from_be_bytes(self.body[0..4].try_into().unwrap());
        let rest = &self.body[4..];
        let end = rest.iter().position(|&b| b == 0).unwrap();
        let channel = text(&rest[..end]);
        let rest = &rest[end + 1..];
        let end = rest.iter().position(|&b| b == 0).unwrap();
        (pid, channel, text(&rest[..end]))
    }
}

/// The messages' tags as a string ("12DCZ").
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn put_cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, name);
    put_cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// Bind with text-format parameters and results.
pub fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, portal);
    put_cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &b)
}

pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    put_cstr(&mut b, name);
    frame(b'D', &b)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &b)
}

pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    put_cstr(&mut b, name);
    frame(b'C', &b)
}

/// FunctionCall with text arguments and a text result.
pub fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&(a.len() as i32).to_be_bytes());
        b.extend_from_slice(a.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'F', &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, sql);
    frame(b'Q', &b)
}

/// Bind + Execute of a named statement, then Sync.
pub fn bes(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut v = bind("", stmt, params);
    v.extend(execute(""));
    v.extend(sync());
    v
}

/// A blocking raw client (trust auth: no password exchange).
pub struct Raw {
    pub s: TcpStream,
    /// The greeting's BackendKeyData: (process id, secret).
    pub key: (i32, i32),
    /// The greeting's ParameterStatus messages.
    pub params: Vec<(String, String)>,
    /// The greeting's NoticeResponses.
    pub notices: Vec<Msg>,
}

impl Raw {
    /// Log in as `app` on database `app`.
    pub fn connect(port: u16) -> Raw {
        Raw::login(port, &[("user", "app"), ("database", "app")])
    }

    /// Log in with these startup parameters.
    pub fn login(port: u16, params: &[(&str, &str)]) -> Raw {
        Raw::try_login(port, params).unwrap_or_else(|m| panic!("login refused: {m:?}"))
    }

    /// Log in; the ErrorResponse if the login is refused.
    pub fn try_login(port: u16, params: &[(&str, &str)]) -> Result<Raw, Msg> {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw {
            s,
            key: (0, 0),
            params: Vec::new(),
            notices: Vec::new(),
        };
        r.s.write_all(&super::startup_packet(196608, params))
            .unwrap();
        loop {
            let m = r.read_msg();
            match m.tag {
                b'K' => {
                    r.key = (
                        i32::from_be_bytes(m.body[0..4].try_into().unwrap()),
                        i32::from_be_bytes(m.body[4..8].try_into().unwrap()),
                    )
                }
                b'S' => {
                    let mut parts = m.body.split(|&b| b == 0);
                    let k = text(parts.next().unwrap_or_default());
                    let v = text(parts.next().unwrap_or_default());
                    r.params.push((k, v));
                }
                b'N' => r.notices.push(m),
                b'E' => return Err(m),
                b'Z' => return Ok(r),
                _ => {}
            }
        }
    }

    /// The value of a ParameterStatus the greeting reported.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn send(&mut self, msgs: &[Vec<u8>]) {
        self.s.write_all(&msgs.concat()).unwrap();
    }

    pub fn read_msg(&mut self) -> Msg {
        let mut h = [0u8; 5];
        self.s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body).unwrap();
        Msg { tag: h[0], body }
    }

    /// Every message until the peer closes the connection (end of stream, or a reset);
    /// panics if it is still open after `timeout`.
    pub fn until_closed(&mut self, timeout: Duration) -> Vec<Msg> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let read = |s: &mut TcpStream, buf: &mut [u8], out: &Vec<Msg>| -> bool {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match s.read_exact(buf) {
                Ok(()) => true,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection still open after {timeout:?}; got {out:?}")
                }
                Err(_) => false,
            }
        };
        loop {
            let mut h = [0u8; 5];
            if !read(&mut self.s, &mut h, &out) {
                break;
            }
            let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 4];
            if !read(&mut self.s, &mut body, &out) {
                break;
            }
            out.push(Msg { tag: h[0], body });
        }
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        out
    }

    /// Nothing arrives within `wait` (the connection stays open).
    pub fn nothing_within(&mut self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        let mut b = [0u8; 1];
        let r = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.s.peek(&mut b) {
                // A recv with a timeout fails with EINTR when the process is interrupted
                // (signal(7)), whatever SA_RESTART says: wait out the rest.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match r {
            Ok(0) => panic!("connection closed"),
            Ok(_) => false,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                true
            }
        }
    }

    /// Messages up to and including ReadyForQuery (ParameterStatus and notices left out).
    pub fn read_until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.read_msg();
            let done = m.tag == b'Z';
            if !matches!(m.tag, b'S' | b'N') {
                out.push(m);
            }
            if done {
                return out;
            }
        }
    }

    /// Send, then read up to ReadyForQuery.
    pub fn exchange(&mut self, msgs: &[Vec<u8>]) -> Vec<Msg> {
        self.send(msgs);
        self.read_until_ready()
    }
}
