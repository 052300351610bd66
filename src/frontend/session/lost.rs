//! A server connection that breaks under its client: one rule for every pool mode and
//! every way a server connection can end (the server's FATAL, as on a fast shutdown or
//! `pg_terminate_backend`; end of stream, as after `kill -9`; a reset or another socket
//! error, as when the network drops the flow; a message pgtenant cannot read).
//!
//! The client gets exactly one ErrorResponse, after whatever the server had already sent
//! it (rows, notices: a backend ended by a crash or an immediate shutdown says so in a
//! `WARNING 57P0x`, relayed as it came), and then pgtenant closes its connection:
//!
//! - severity FATAL, SQLSTATE `08006` (connection_failure), whatever the cause;
//! - message: the server's own FATAL message when it sent one (its hint and context kept,
//!   its SQLSTATE in the DETAIL, after its own detail); otherwise "server closed the
//!   connection unexpectedly", libpq's words for the same event, with the cause in the
//!   DETAIL; when pgtenant cannot read the server any more, what is wrong.
//!
//! Why one code, and that one: every driver treats a FATAL as the end of the connection,
//! and class 08 is what applications and pools check to reconnect and retry
//! (`OperationalError` in Django and psycopg, HikariCP's eviction list, SQLAlchemy's
//! disconnect test on the text). From the client's side its connection is what failed,
//! its transaction is gone, and a new connection will work. The server's SQLSTATE would
//! say something else: `57P01` (admin_shutdown) on a transaction-mode client, whose
//! server connection was one of the pool's, would read as "the database is shutting
//! down" when one worker of many went away. The server's text and code still reach the
//! client (the message, the DETAIL) and the log.
//!
//! Only a client holding the connection is told: inside a transaction, mid-statement,
//! mid-COPY, mid-pipeline, pinned, or in session mode at any time. A transaction-mode
//! client between transactions holds none and hears nothing; the pool drops its dead idle
//! connections, and the client's next transaction gets another server (a worker found
//! down sends its tenants to the coordinator meanwhile). The client is never moved to
//! another server in the middle of what it was doing.
//!
//! A loss that says the server is going away (FATAL 57P01/57P02/57P03, end of stream, a
//! socket error) also has the pool check its idle connections before it lends them
//! (closed without a server_check_query), at most once a second
//! (`Pool::close_idle_after_loss`): on a server ending its backends one by one, an idle
//! one whose FATAL is still on its way would fail the next client it is lent to.
use std::fmt;

use bytes::{BufMut, BytesMut};

use super::*;

/// pgtenant's message when the server went without a FATAL (libpq's words).
pub(super) const CLOSED: &str = "server closed the connection unexpectedly";

/// How the server connection ended.
pub(super) enum Lost<'a> {
    /// The server sent this FATAL (or PANIC) ErrorResponse; it closes next.
    Fatal(&'a Frame),
    /// End of stream, without a FATAL.
    Closed,
    /// A socket error (a reset, a broken pipe, a timeout).
    Io(&'a io::Error),
    /// pgtenant cannot go on reading the server (what is wrong).
    Unreadable(&'a str),
}

impl fmt::Display for Lost<'_> {
    /// For the log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Fatal(frame) => {
                let e = ErrorFields::parse(frame.body()).unwrap_or_default();
                write!(f, "the server sent FATAL {}: {}", e.code, e.message)
            }
            Lost::Closed => f.write_str("the server closed the connection"),
            Lost::Io(e) => write!(f, "server connection failed: {e}"),
            Lost::Unreadable(why) => f.write_str(why),
        }
    }
}

impl Lost<'_> {
    /// Does it say the server (or the way to it) is going away, not just this backend:
    /// a shutdown or crash (FATAL 57P01, 57P02, 57P03; `pg_terminate_backend` says 57P01
    /// too), no word at all, or a socket error? See `Pool::close_idle_after_loss`.
    fn ends_the_server(&self) -> bool {
        match self {
            Lost::Fatal(frame) => ErrorFields::parse(frame.body())
                .is_ok_and(|e| matches!(e.code.as_str(), "57P01" | "57P02" | "57P03")),
            Lost::Closed | Lost::Io(_) => true,
            Lost::Unreadable(_) => false,
        }
    }

    /// The one message the client gets.
    pub(super) fn told(&self) -> Frame {
        match self {
            Lost::Fatal(frame) => from_server(frame.body()),
            Lost::Closed => fatal(
                CLOSED,
                Some("The server closed pgtenant's connection to it without an error message."),
                &[],
            ),
            Lost::Io(e) => fatal(
                CLOSED,
                Some(&format!("pgtenant's connection to the server failed: {e}.")),
                &[],
            ),
            Lost::Unreadable(why) => fatal(why, None, &[]),
        }
    }
}

impl Session {
    /// The server connection broke under this client: discard it, tell the client (see
    /// the module doc), and end the session.
    pub(super) fn server_lost(&mut self, why: Lost<'_>) -> Flow {
        // A late cancel must not reach the closed backend's pid (PostgreSQL may give it
        // to another backend). If one is on its way, it already has its target.
        let _ = self.c.key.slot.try_set(None);
        if let Some(a) = self.attached.take() {
            tracing::warn!(user = %Escaped(&self.c.user), pool = %a.pool.name(), server = a.server.id, reason = %why, "server connection lost");
            if why.ends_the_server() {
                a.pool.close_idle_after_loss(Instant::now());
            }
            a.pool.discard(a.server);
        }
        self.c.conn.queue(&why.told());
        Flow::Quit
    }

    /// A write to the server failed. The server may have said why before it closed (a
    /// pipelining client keeps pgtenant writing after the server's FATAL came in): that
    /// FATAL, if it is already there to read, is what the client is told.
    pub(super) fn server_write_failed(&mut self, e: io::Error) -> Flow {
        let fatal = self
            .attached
            .as_mut()
            .and_then(|a| buffered_fatal(&mut a.server.conn));
        match fatal {
            Some(f) => self.server_lost(Lost::Fatal(&f)),
            None => self.server_lost(Lost::Io(&e)),
        }
    }
}

/// A FATAL among what the server sent that is in, or can be read without waiting.
fn buffered_fatal(conn: &mut crate::net::Connection) -> Option<Frame> {
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    loop {
        while let Some(f) = conn.try_frame().ok()? {
            if f.tag() == b'E' && super::relay::is_fatal(f.body()) {
                return Some(f);
            }
        }
        match conn.poll_fill(&mut cx) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// The server's FATAL, as the client gets it: FATAL 08006, the server's message, hint and
/// context; its SQLSTATE in the DETAIL after its own detail; its source location (file,
/// line, routine: where the server raised its own code) left out.
fn from_server(body: &[u8]) -> Frame {
    let mut code: &[u8] = b"";
    let mut message: Option<&[u8]> = None;
    let mut detail: Option<&[u8]> = None;
    let mut rest: Vec<(u8, &[u8])> = Vec::new();
    for (t, v) in fields(body) {
        match t {
            b'C' => code = v,
            b'M' => message = Some(v),
            b'D' => detail = Some(v),
            b'S' | b'V' | b'F' | b'L' | b'R' => {}
            _ => rest.push((t, v)),
        }
    }
    let ours = if code.is_empty() {
        "The server closed pgtenant's connection to it.".to_string()
    } else {
        format!(
            "The server closed pgtenant's connection to it with SQLSTATE {}.",
            String::from_utf8_lossy(code)
        )
    };
    let detail = match detail {
        Some(d) => format!("{}\n{ours}", String::from_utf8_lossy(d)),
        None => ours,
    };
    let message = message.map_or(CLOSED.into(), String::from_utf8_lossy);
    fatal(&message, Some(&detail), &rest)
}

/// FATAL 08006 with this message, detail and further fields.
fn fatal(message: &str, detail: Option<&str>, rest: &[(u8, &[u8])]) -> Frame {
    let mut b = BytesMut::with_capacity(64 + message.len());
    let mut field = |t: u8, v: &[u8]| {
        b.put_u8(t);
        b.put_slice(v);
        b.put_u8(0);
    };
    field(b'S', b"FATAL");
    field(b'V', b"FATAL");
    field(b'C', sqlstate::CONNECTION_FAILURE.as_bytes());
    field(b'M', message.as_bytes());
    if let Some(d) = detail {
        field(b'D', d.as_bytes());
    }
    for (t, v) in rest {
        field(*t, v);
    }
    b.put_u8(0);
    Frame::new(b'E', &b)
}

/// The fields of an ErrorResponse body, up to its terminator or the first malformed one.
/// (A field's value holds no NUL: it is a C string.)
fn fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (&t, tail) = rest.split_first()?;
        if t == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        rest = &tail[end + 1..];
        Some((t, &tail[..end]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(f: &Frame, t: u8) -> Option<String> {
        fields(f.body())
            .find(|(k, _)| *k == t)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn the_servers_fatal_becomes_08006_with_its_text() {
        // A backend ended by SIGTERM, as PostgreSQL 15 sends it.
        let server = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0Fpostgres.c\0L3211\0RProcessInterrupts\0\0";
        let f = Lost::Fatal(&Frame::new(b'E', server)).told();
        assert_eq!(f.tag(), b'E');
        assert_eq!(field(&f, b'S').as_deref(), Some("FATAL"));
        assert_eq!(field(&f, b'V').as_deref(), Some("FATAL"));
        assert_eq!(field(&f, b'C').as_deref(), Some("08006"));
        assert_eq!(
            field(&f, b'M').as_deref(),
            Some("terminating connection due to administrator command")
        );
        assert_eq!(
            field(&f, b'D').as_deref(),
            Some("The server closed pgtenant's connection to it with SQLSTATE 57P01.")
        );
        for t in [b'F', b'L', b'R'] {
            assert_eq!(field(&f, t), None, "{}", t as char);
        }
        // Well formed: pgtenant's own decoder reads it back.
        let e = ErrorFields::parse(f.body()).unwrap();
        assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "08006"));
    }

    #[test]
    fn the_servers_detail_and_hint_are_kept() {
        let server = b"SPANIC\0C57P02\0Mterminating connection because of crash of another server process\0DThe postmaster has commanded this server process to roll back.\0HIn a moment you should be able to reconnect.\0\0";
        let f = Lost::Fatal(&Frame::new(b'E', server)).told();
        assert_eq!(field(&f, b'S').as_deref(), Some("FATAL"));
        assert_eq!(field(&f, b'C').as_deref(), Some("08006"));
        assert_eq!(
            field(&f, b'D').as_deref(),
            Some(
                "The postmaster has commanded this server process to roll back.\n\
                 The server closed pgtenant's connection to it with SQLSTATE 57P02."
            )
        );
        assert_eq!(
            field(&f, b'H').as_deref(),
            Some("In a moment you should be able to reconnect.")
        );
    }

    /// The server's FATAL is found behind other messages in what is already in, once the
    /// server is gone; nothing is found when it sent none.
    #[tokio::test]
    async fn a_fatal_already_in_is_found_after_a_failed_write() {
        use tokio::io::AsyncWriteExt;
        for with_fatal in [true, false] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut server = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let (mine, _) = l.accept().await.unwrap();
            let mut conn = crate::net::Connection::new(crate::net::Stream::Plain(mine), 64 << 20);
            let mut sent = build::notice("before").raw().to_vec();
            if with_fatal {
                sent.extend_from_slice(build::fatal("57P01", "terminating connection").raw());
            }
            server.write_all(&sent).await.unwrap();
            drop(server);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let found = buffered_fatal(&mut conn);
            assert_eq!(found.is_some(), with_fatal);
            if let Some(f) = found {
                let e = ErrorFields::parse(f.body()).unwrap();
                assert_eq!(e.code, "57P01");
            }
        }
    }

    #[test]
    fn without_a_fatal_libpqs_words_and_the_cause() {
        let closed = Lost::Closed.told();
        assert_eq!(field(&closed, b'C').as_deref(), Some("08006"));
        assert_eq!(field(&closed, b'M').as_deref(), Some(CLOSED));
        let e = io::Error::from(io::ErrorKind::ConnectionReset);
        let reset = Lost::Io(&e).told();
        assert_eq!(field(&reset, b'M').as_deref(), Some(CLOSED));
        assert!(field(&reset, b'D').unwrap().contains("reset"), "{reset:?}");
        let bad = Lost::Unreadable("server sent a bad message: x").told();
        assert_eq!(field(&bad, b'C').as_deref(), Some("08006"));
        assert_eq!(
            field(&bad, b'M').as_deref(),
            Some("server sent a bad message: x")
        );
        // A malformed FATAL from the server still makes one well-formed 08006.
        let f = Lost::Fatal(&Frame::new(b'E', b"SFATAL\0C57P01")).told();
        assert_eq!(field(&f, b'C').as_deref(), Some("08006"));
        assert_eq!(field(&f, b'M').as_deref(), Some(CLOSED));
    }
}
