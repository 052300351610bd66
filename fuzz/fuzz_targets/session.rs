//! Whole sessions: up to three clients send messages in any order, cut at any byte,
//! through pgtenant's real session code (`frontend::handle_client` on a `Context` from
//! `server::build_context`) to a mock PostgreSQL (`common/mock_pg.rs`), on a
//! single-threaded tokio runtime with paused time, so that the input alone decides the
//! interleaving.
//!
//! Properties (a failure panics with the transcript):
//! - every client gets the answers to its requests, in order, and only its own: each
//!   answer is matched against a model of what PostgreSQL sends for the messages the
//!   client sent; a row carries the client's tag and the number of the statement that
//!   asked for it; a ParameterStatus never carries another client's value;
//! - a statement the client prepared (Parse, SQL PREPARE) is never missing (26000) while
//!   the client holds it, nor a portal (34000) inside its transaction;
//! - when the input ends, every request of a client still connected is answered
//!   (pgtenant's timeouts included: virtual time runs an hour on), and after every client
//!   left, each server connection pgtenant kept is idle;
//! - on the server side (the mock's checks): nothing after a Terminate, no client's
//!   statement inside another client's transaction or batch, no client's transaction
//!   on a connection holding another client's settings, temp tables or SQL-prepared
//!   statements, no cancel request reaching another client's statement.
#![no_main]
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::config::{Listener, Overrides, Settings};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[path = "../common/mock_pg.rs"]
mod mock_pg;
use mock_pg::{value_owner, Fault, Shared, World};

// -------------------------------------------------------------------------------------
// The input
// -------------------------------------------------------------------------------------

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Transaction,
    Session,
    Statement,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mode: Mode,
    /// pool_size = 1 + this % 2.
    pool: u8,
    /// Settings beyond the defaults, one bit each: session_check = "always";
    /// server_reset_query_always; max_prepared_statements = 2 (pgtenant's statement LRU
    /// evicts); idle_transaction_timeout = 5 s.
    knobs: u8,
    /// Clients = 1 + this % 3.
    clients: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A client writes these messages, in pieces of `cut` bytes (0: at once).
    Send { client: u8, msgs: Vec<Msg>, cut: u8 },
    /// Let everything run until nothing moves.
    Settle,
    /// Virtual time runs on this many tenths of a second, then settle.
    Wait(u8),
    /// The client's socket closes without a Terminate.
    Drop { client: u8 },
    /// The client sends a CancelRequest with its key, on a new connection.
    Cancel { client: u8 },
    /// The mock breaks the next message it handles.
    Fault(FaultKind),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FaultKind {
    Close,
    Fatal,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Sql {
    Value,
    Fail,
    Sleep,
    Begin,
    Commit,
    Rollback,
    SetApp,
    SetWorkMem,
    SetLocalWorkMem,
    ResetAll,
    Discard,
    Temp,
    Prepare(u8),
    Execute(u8),
    Deallocate(u8),
    DeallocateAll,
    Empty,
    /// COPY … FROM STDIN (in a simple query of its own; a Value elsewhere).
    Copy,
}

#[derive(Arbitrary, Debug, Clone)]
enum Msg {
    Query(Sql),
    Multi(Sql, Sql),
    Parse {
        stmt: u8,
        sql: Sql,
    },
    Bind {
        portal: u8,
        stmt: u8,
    },
    DescribeStmt(u8),
    DescribePortal(u8),
    Execute(u8),
    Sync,
    Flush,
    CloseStmt(u8),
    ClosePortal(u8),
    Terminate,
    /// COPY data: one row.
    CopyData,
    CopyDone,
    CopyFail,
    /// A message with any tag and body.
    Junk(u8, Vec<u8>),
}

// -------------------------------------------------------------------------------------
// Statements as sent
// -------------------------------------------------------------------------------------

/// A statement of one client: its kind, client and number (the tag `/*@cInN@*/`).
#[derive(Debug, Clone, Copy)]
struct Inst {
    sql: Sql,
    client: u8,
    n: u32,
}

fn stmt_name(i: u8) -> String {
    match i % 3 {
        0 => String::new(),
        k => format!("s{k}"),
    }
}

fn portal_name(i: u8) -> String {
    match i % 2 {
        0 => String::new(),
        _ => "q1".into(),
    }
}

impl Inst {
    fn tag(&self) -> String {
        format!("c{}n{}", self.client, self.n)
    }

    fn text(&self) -> String {
        let t = format!("/*@{}@*/", self.tag());
        match self.sql {
            Sql::Value => format!("SELECT '{}' {t}", self.tag()),
            Sql::Fail => format!("SELECT 1/0 {t}"),
            Sql::Sleep => format!("SELECT pg_sleep(1) {t}"),
            Sql::Begin => format!("BEGIN {t}"),
            Sql::Commit => format!("COMMIT {t}"),
            Sql::Rollback => format!("ROLLBACK {t}"),
            Sql::SetApp => format!("SET application_name = '{}' {t}", self.tag()),
            Sql::SetWorkMem => format!("SET work_mem = '{}kB' {t}", self.work_mem()),
            Sql::SetLocalWorkMem => format!("SET LOCAL work_mem = '{}kB' {t}", self.work_mem()),
            Sql::ResetAll => format!("RESET ALL {t}"),
            Sql::Discard => format!("DISCARD ALL {t}"),
            Sql::Temp => format!("CREATE TEMP TABLE t{} (x int) {t}", self.n),
            Sql::Prepare(k) => format!("PREPARE p{} AS SELECT '{}' {t}", k % 3, self.tag()),
            Sql::Execute(k) => format!("EXECUTE p{} {t}", k % 3),
            Sql::Deallocate(k) => format!("DEALLOCATE p{} {t}", k % 3),
            Sql::DeallocateAll => format!("DEALLOCATE ALL {t}"),
            Sql::Empty => t,
            Sql::Copy => format!("COPY t FROM STDIN {t}"),
        }
    }

    fn work_mem(&self) -> u32 {
        u32::from(self.client) * 10000 + self.n % 10000
    }
}

// -------------------------------------------------------------------------------------
// Encoding
// -------------------------------------------------------------------------------------

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

fn startup() -> Vec<u8> {
    let mut b = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", "app"), ("database", "app")] {
        cstr(&mut b, k);
        cstr(&mut b, v);
    }
    b.push(0);
    let mut out = ((b.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

// -------------------------------------------------------------------------------------
// What a client expects
// -------------------------------------------------------------------------------------

#[derive(Debug)]
enum Exp {
    Login,
    /// A simple query: its statements still to answer, then ReadyForQuery.
    Query {
        stmts: VecDeque<Inst>,
        rows: bool,
    },
    Parse {
        stmt: u8,
        sql: Inst,
    },
    Bind {
        portal: u8,
        stmt: u8,
    },
    DescribeStmt {
        stmt: u8,
        got_params: bool,
    },
    DescribePortal(u8),
    Execute(u8),
    Close {
        stmt: Option<u8>,
        portal: Option<u8>,
    },
    Sync,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    LoggingIn,
    Ready,
    /// FATAL received, or closed by pgtenant, or dropped, or terminated.
    Gone,
}

struct Client {
    id: u8,
    sock: Option<UnixStream>,
    buf: Vec<u8>,
    n: u32,
    expect: VecDeque<Exp>,
    state: State,
    key: Option<(i32, i32)>,
    /// Protocol statements (by name index) and what they run.
    stmts: HashMap<String, Inst>,
    portals: HashMap<String, Inst>,
    /// SQL-prepared statements p0..p2.
    sql_prepared: HashMap<u8, Inst>,
    skip_to_sync: bool,
    /// Sent a COPY FROM STDIN and not yet its end.
    copying: bool,
    /// Transaction or statement mode: the server connection may change between
    /// transactions.
    pooled: bool,
    /// The unnamed statement of an earlier transaction (pooled modes): it stays where it
    /// was parsed, and the next transaction may run elsewhere or after a reset, so a Bind
    /// of it may fail with 26000 (pgtenant's documented behaviour) or run it.
    stale_unnamed: Option<Inst>,
    /// Expectations pushed, popped, and pushed up to the last Sync, Flush or Query: the
    /// server sends nothing before one of those, so only these are owed.
    pushed: usize,
    popped: usize,
    owed: usize,
    /// Sent something the model cannot follow (junk): answers are not owed any more.
    lawless: bool,
    log: Vec<String>,
}

impl Client {
    fn new(id: u8, sock: UnixStream, pooled: bool) -> Client {
        Client {
            id,
            pooled,
            stale_unnamed: None,
            sock: Some(sock),
            buf: Vec::new(),
            n: 0,
            expect: VecDeque::from([Exp::Login]),
            state: State::LoggingIn,
            key: None,
            stmts: HashMap::new(),
            portals: HashMap::new(),
            sql_prepared: HashMap::new(),
            skip_to_sync: false,
            copying: false,
            pushed: 1,
            popped: 0,
            owed: 1,
            lawless: false,
            log: Vec::new(),
        }
    }

    fn inst(&mut self, sql: Sql) -> Inst {
        self.n += 1;
        Inst {
            sql,
            client: self.id,
            n: self.n,
        }
    }

    fn push(&mut self, e: Exp) {
        if self.lawless {
            // After junk what PostgreSQL answers is not modelled: only rows are checked.
            return;
        }
        if self.skip_to_sync && !matches!(e, Exp::Sync) {
            return;
        }
        let flushes = matches!(e, Exp::Sync | Exp::Query { .. });
        if matches!(e, Exp::Sync) {
            self.skip_to_sync = false;
        }
        self.expect.push_back(e);
        self.pushed += 1;
        if flushes {
            self.owed = self.pushed;
        }
    }

    /// Encode a message and note what it is owed.
    fn encode(&mut self, m: &Msg, out: &mut Vec<u8>, world: &Shared) {
        let mut b = Vec::new();
        if self.copying {
            match m {
                Msg::CopyData | Msg::CopyDone | Msg::CopyFail | Msg::Terminate | Msg::Junk(..) => {}
                // Owes nothing whether the COPY started or failed first.
                Msg::Flush => return frame(out, b'H', &[]),
                // A Sync is ignored during COPY IN and answered if the COPY failed
                // before it started; other messages end it with an error: the model
                // follows neither.
                // Ends the COPY with an error that the model does not follow.
                _ => {
                    self.lawless = true;
                    self.expect.clear();
                }
            }
        }
        match m {
            Msg::Query(sql) => {
                let i = self.inst(*sql);
                self.note(&i, world);
                cstr(&mut b, &i.text());
                frame(out, b'Q', &b);
                self.push(Exp::Query {
                    stmts: VecDeque::from([i]),
                    rows: false,
                });
                if i.sql == Sql::Copy {
                    self.copying = true;
                }
            }
            Msg::Multi(a, c) => {
                let (i, j) = (self.inst(not_copy(*a)), self.inst(not_copy(*c)));
                self.note(&i, world);
                self.note(&j, world);
                cstr(&mut b, &format!("{}; {}", i.text(), j.text()));
                frame(out, b'Q', &b);
                // Empty statements among others get no EmptyQueryResponse (only an
                // empty query string does).
                let mut stmts: VecDeque<Inst> =
                    [i, j].into_iter().filter(|x| x.sql != Sql::Empty).collect();
                if stmts.is_empty() {
                    stmts.push_back(i);
                }
                self.push(Exp::Query { stmts, rows: false });
            }
            Msg::Parse { stmt, sql } => {
                let i = self.inst(not_copy(*sql));
                self.note(&i, world);
                cstr(&mut b, &stmt_name(*stmt));
                cstr(&mut b, &i.text());
                b.extend_from_slice(&0i16.to_be_bytes());
                frame(out, b'P', &b);
                self.push(Exp::Parse {
                    stmt: *stmt,
                    sql: i,
                });
            }
            Msg::Bind { portal, stmt } => {
                cstr(&mut b, &portal_name(*portal));
                cstr(&mut b, &stmt_name(*stmt));
                b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                frame(out, b'B', &b);
                self.push(Exp::Bind {
                    portal: *portal,
                    stmt: *stmt,
                });
            }
            Msg::DescribeStmt(s) => {
                b.push(b'S');
                cstr(&mut b, &stmt_name(*s));
                frame(out, b'D', &b);
                self.push(Exp::DescribeStmt {
                    stmt: *s,
                    got_params: false,
                });
            }
            Msg::DescribePortal(p) => {
                b.push(b'P');
                cstr(&mut b, &portal_name(*p));
                frame(out, b'D', &b);
                self.push(Exp::DescribePortal(*p));
            }
            Msg::Execute(p) => {
                cstr(&mut b, &portal_name(*p));
                b.extend_from_slice(&0i32.to_be_bytes());
                frame(out, b'E', &b);
                self.push(Exp::Execute(*p));
            }
            Msg::Sync => {
                frame(out, b'S', &[]);
                self.push(Exp::Sync);
            }
            Msg::Flush => {
                frame(out, b'H', &[]);
                self.owed = self.pushed;
            }
            Msg::CloseStmt(s) => {
                b.push(b'S');
                cstr(&mut b, &stmt_name(*s));
                frame(out, b'C', &b);
                self.push(Exp::Close {
                    stmt: Some(*s),
                    portal: None,
                });
            }
            Msg::ClosePortal(p) => {
                b.push(b'P');
                cstr(&mut b, &portal_name(*p));
                frame(out, b'C', &b);
                self.push(Exp::Close {
                    stmt: None,
                    portal: Some(*p),
                });
            }
            Msg::CopyData => {
                cstr(&mut b, &format!("row of c{}", self.id));
                frame(out, b'd', &b[..b.len() - 1]);
            }
            Msg::CopyDone => {
                frame(out, b'c', &[]);
                self.copying = false;
            }
            Msg::CopyFail => {
                cstr(&mut b, "the client gave up");
                frame(out, b'f', &b);
                self.copying = false;
            }
            Msg::Terminate => {
                frame(out, b'X', &[]);
                self.lawless = true;
            }
            Msg::Junk(tag, body) => {
                let body = &body[..body.len().min(64)];
                frame(out, *tag, body);
                self.lawless = true;
                self.expect.clear();
            }
        }
    }

    /// What the mock must know of a statement before it runs.
    fn note(&self, i: &Inst, world: &Shared) {
        if i.sql == Sql::Discard {
            world
                .lock()
                .unwrap()
                .clients
                .entry(self.id)
                .or_default()
                .discarded = true;
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "client {}: {what}\nclient's transcript:\n{}\nstill expected: {:?}",
            self.id,
            self.log.join("\n"),
            self.expect
        );
    }

    /// Read what is there and check it.
    fn read(&mut self) -> usize {
        let Some(sock) = &self.sock else { return 0 };
        let mut total = 0;
        let mut chunk = [0u8; 8192];
        let mut eof = false;
        loop {
            match sock.try_read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    total += n;
                }
                Err(_) => break,
            }
        }
        let mut at = 0;
        while self.buf.len() - at >= 5 {
            let len = i32::from_be_bytes(self.buf[at + 1..at + 5].try_into().unwrap());
            if len < 4 {
                self.fail(format!("a frame of length {len} from pgtenant"));
            }
            let end = at + 1 + len as usize;
            if self.buf.len() < end {
                break;
            }
            let tag = self.buf[at];
            let body = self.buf[at + 5..end].to_vec();
            at = end;
            self.answer(tag, &body);
        }
        self.buf.drain(..at);
        if eof {
            self.sock = None;
            self.state = State::Gone;
            self.log.push("<closed by pgtenant>".into());
        }
        total
    }

    fn answer(&mut self, tag: u8, body: &[u8]) {
        self.log.push(format!(
            "<- {} {}",
            tag as char,
            String::from_utf8_lossy(body).replace('\0', "|")
        ));
        if self.lawless {
            // Only whose rows these are is known (see `push`).
            if tag == b'D' {
                let v = row_value(body).unwrap_or_default();
                if let Some(o) = value_owner(&v).filter(|o| *o != self.id) {
                    self.fail(format!("row {v:?} is client {o}'s"));
                }
            }
            return;
        }
        if self.state == State::Gone {
            self.fail(format!("message {:?} after the session ended", tag as char));
        }
        match tag {
            b'N' | b'A' => return,
            b'S' => {
                let mut at = 0;
                let k = cstr_at(body, &mut at);
                let v = cstr_at(body, &mut at);
                if k == "application_name" {
                    if let Some(o) = value_owner(&v).filter(|o| *o != self.id) {
                        self.fail(format!(
                            "ParameterStatus application_name = {v:?} is client {o}'s"
                        ));
                    }
                }
                return;
            }
            b'E' => return self.error(body),
            _ => {}
        }
        let Some(head) = self.expect.front_mut() else {
            if self.lawless {
                return;
            }
            self.fail(format!("unsolicited message {:?}", tag as char));
        };
        let mut pop = false;
        match head {
            Exp::Login => match tag {
                b'R' => {}
                b'K' if body.len() == 8 => {
                    self.key = Some((
                        i32::from_be_bytes(body[..4].try_into().unwrap()),
                        i32::from_be_bytes(body[4..].try_into().unwrap()),
                    ))
                }
                b'Z' => {
                    self.state = State::Ready;
                    pop = true;
                }
                _ => self.fail(format!("{:?} during login", tag as char)),
            },
            Exp::Query { stmts, rows } => {
                let Some(cur) = stmts.front().copied() else {
                    if tag == b'Z' {
                        self.end_of_transaction(body);
                        self.pop();
                        return;
                    }
                    self.fail(format!("{:?} where ReadyForQuery was due", tag as char));
                };
                match tag {
                    b'T' if !*rows => *rows = true,
                    b'D' if *rows => {
                        let want = self.row_of(&cur);
                        self.check_row(body, want, &cur);
                    }
                    b'C' => {
                        *rows = false;
                        stmts.pop_front();
                        self.completed(&cur);
                    }
                    b'G' if cur.sql == Sql::Copy => {}
                    b'I' if cur.sql == Sql::Empty => {
                        stmts.pop_front();
                    }
                    _ => self.fail(format!("{:?} answering {:?}", tag as char, cur)),
                }
            }
            Exp::Parse { stmt, sql } => {
                if tag != b'1' {
                    self.fail(format!("{:?} answering Parse", tag as char));
                }
                let (stmt, sql) = (*stmt, *sql);
                if stmt_name(stmt).is_empty() {
                    self.stale_unnamed = None;
                }
                self.stmts.insert(stmt_name(stmt), sql);
                pop = true;
            }
            Exp::Bind { portal, stmt } => {
                if tag != b'2' {
                    self.fail(format!("{:?} answering Bind", tag as char));
                }
                let (portal, stmt) = (*portal, *stmt);
                let name = stmt_name(stmt);
                let stale = self.stale_unnamed.filter(|_| name.is_empty());
                match self.stmts.get(&name).copied().or(stale) {
                    Some(i) => {
                        self.portals.insert(portal_name(portal), i);
                    }
                    None => self.fail(format!(
                        "BindComplete for statement {:?}, which the client does not have",
                        stmt_name(stmt)
                    )),
                }
                pop = true;
            }
            Exp::DescribeStmt { got_params, .. } => match tag {
                b't' if !*got_params => *got_params = true,
                b'T' | b'n' if *got_params => pop = true,
                _ => self.fail(format!("{:?} answering Describe statement", tag as char)),
            },
            Exp::DescribePortal(_) => match tag {
                b'T' | b'n' => pop = true,
                _ => self.fail(format!("{:?} answering Describe portal", tag as char)),
            },
            Exp::Execute(p) => {
                let p = *p;
                let Some(i) = self.portals.get(&portal_name(p)).copied() else {
                    self.fail(format!(
                        "{:?} answering Execute of portal {:?}, which the client does not have",
                        tag as char,
                        portal_name(p)
                    ));
                };
                match tag {
                    b'D' => {
                        let want = self.row_of(&i);
                        self.check_row(body, want, &i);
                    }
                    b'C' | b's' => {
                        self.completed(&i);
                        pop = true;
                    }
                    b'I' if i.sql == Sql::Empty => pop = true,
                    _ => self.fail(format!("{:?} answering Execute", tag as char)),
                }
            }
            Exp::Close { stmt, portal } => {
                if tag != b'3' {
                    self.fail(format!("{:?} answering Close", tag as char));
                }
                if let Some(s) = stmt {
                    let s = stmt_name(*s);
                    if s.is_empty() {
                        self.stale_unnamed = None;
                    }
                    self.stmts.remove(&s);
                }
                if let Some(p) = portal {
                    let p = portal_name(*p);
                    self.portals.remove(&p);
                }
                pop = true;
            }
            Exp::Sync => {
                if tag != b'Z' {
                    self.fail(format!(
                        "{:?} where ReadyForQuery was due (Sync)",
                        tag as char
                    ));
                }
                self.end_of_transaction(body);
                pop = true;
            }
        }
        if pop {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if self.expect.pop_front().is_some() {
            self.popped += 1;
        }
    }

    fn end_of_transaction(&mut self, body: &[u8]) {
        if body.first() == Some(&b'I') {
            self.portals.clear();
            if self.pooled {
                if let Some(i) = self.stmts.remove("") {
                    self.stale_unnamed = Some(i);
                }
            }
        }
    }

    /// The row a statement answers with, if its value is known.
    fn row_of(&self, i: &Inst) -> Option<String> {
        match i.sql {
            Sql::Value => Some(i.tag()),
            Sql::Execute(k) => match self.sql_prepared.get(&(k % 3)) {
                Some(p) => Some(p.tag()),
                None => Some("<no statement>".into()),
            },
            Sql::Sleep => Some(String::new()),
            _ => None,
        }
    }

    fn check_row(&self, body: &[u8], want: Option<String>, i: &Inst) {
        let got = row_value(body);
        match want {
            Some(w) if got.as_deref() != Some(w.as_str()) => {
                self.fail(format!("row {got:?} answering {i:?}, expected {w:?}"))
            }
            None => self.fail(format!("row {got:?} answering {i:?}, which returns none")),
            _ => {}
        }
    }

    /// A statement completed: what it changed of the client's own view.
    fn completed(&mut self, i: &Inst) {
        match i.sql {
            Sql::Prepare(k) => {
                self.sql_prepared.insert(k % 3, *i);
            }
            Sql::Deallocate(k) => {
                self.sql_prepared.remove(&(k % 3));
            }
            // PostgreSQL keeps the unnamed statement through both; pgtenant may not (it
            // answers them on the client's view): either is accepted.
            Sql::DeallocateAll => {
                self.sql_prepared.clear();
                self.stale_unnamed = self.stmts.remove("").or(self.stale_unnamed);
                self.stmts.clear();
            }
            Sql::Discard => {
                self.sql_prepared.clear();
                self.stale_unnamed = self.stmts.remove("").or(self.stale_unnamed);
                self.stmts.clear();
                self.portals.clear();
            }
            _ => {}
        }
    }

    fn error(&mut self, body: &[u8]) {
        let (mut severity, mut code, mut text) = (String::new(), String::new(), String::new());
        let mut at = 0;
        while at < body.len() && body[at] != 0 {
            let f = body[at];
            at += 1;
            let v = cstr_at(body, &mut at);
            match f {
                b'V' => severity = v,
                b'C' => code = v,
                b'M' => text = v,
                _ => {}
            }
        }
        if severity == "FATAL" || severity == "PANIC" {
            self.state = State::Gone;
            self.expect.clear();
            return;
        }
        let Some(head) = self.expect.front_mut() else {
            if self.lawless {
                return;
            }
            self.fail(format!("unsolicited error {code} {text}"));
        };
        // The statement or message the error answers.
        let held = match head {
            Exp::Query { stmts, .. } => {
                let cur = stmts.front().copied();
                stmts.clear();
                match cur {
                    Some(Inst {
                        sql: Sql::Execute(k),
                        ..
                    }) if code == "26000" => self
                        .sql_prepared
                        .get(&(k % 3))
                        .map(|p| format!("SQL-prepared p{} ({p:?})", k % 3)),
                    None => self.fail(format!("error {code} {text} where ReadyForQuery was due")),
                    _ => None,
                }
            }
            Exp::Login => self.fail(format!("non-fatal error {code} {text} during login")),
            Exp::Sync => self.fail(format!("error {code} {text} answering Sync")),
            e => {
                let held = match e {
                    Exp::Bind { stmt, .. } | Exp::DescribeStmt { stmt, .. } if code == "26000" => {
                        let s = stmt_name(*stmt);
                        self.stmts
                            .get(&s)
                            .map(|i| format!("statement {s:?} ({i:?})"))
                    }
                    Exp::DescribePortal(p) | Exp::Execute(p) if code == "34000" => {
                        let p = portal_name(*p);
                        self.portals
                            .get(&p)
                            .map(|i| format!("portal {p:?} ({i:?})"))
                    }
                    _ => None,
                };
                // Everything up to the Sync is skipped by the server.
                while self.expect.front().is_some_and(|e| !matches!(e, Exp::Sync)) {
                    self.pop();
                }
                if self.expect.is_empty() {
                    self.skip_to_sync = true;
                }
                held
            }
        };
        if let Some(h) = held {
            self.fail(format!("error {code} {text}: the client holds {h}"));
        }
    }
}

/// The first column of a DataRow, if not NULL.
fn row_value(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let v = body.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(v).into_owned())
}

/// COPY only in a simple query of its own (the model follows no other).
fn not_copy(s: Sql) -> Sql {
    if s == Sql::Copy {
        Sql::Value
    } else {
        s
    }
}

fn cstr_at(b: &[u8], at: &mut usize) -> String {
    let rest = b.get(*at..).unwrap_or(&[]);
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    *at += end + 1;
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

// -------------------------------------------------------------------------------------
// The driver
// -------------------------------------------------------------------------------------

fn socket_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("pgt-fuzz-session-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn settings(mode: Mode, pool: u32, knobs: u8) -> Arc<Settings> {
    type Cache = Mutex<HashMap<(Mode, u32, u8), Arc<Settings>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let knobs = knobs & 0xf;
    let mut c = CACHE.get_or_init(Default::default).lock().unwrap();
    c.entry((mode, pool, knobs))
        .or_insert_with(|| {
            let dir = socket_dir();
            let host = dir.to_str().unwrap().replace('/', "%2F");
            let toml = format!(
                "listen = \"127.0.0.1:1\"\n\
                 upstream = \"postgres://app@{host}:5432/app\"\n\
                 auth_type = \"trust\"\n\
                 http_listen = \"\"\n\
                 pool_mode = \"{}\"\n\
                 pool_size = {pool}\n\
                 session_check = \"{}\"\n\
                 server_reset_query_always = {}\n\
                 max_prepared_statements = {}\n\
                 idle_transaction_timeout = {}\n\
                 query_wait_timeout = 30\n",
                match mode {
                    Mode::Transaction => "transaction",
                    Mode::Session => "session",
                    Mode::Statement => "statement",
                },
                if knobs & 1 != 0 { "always" } else { "auto" },
                knobs & 2 != 0,
                if knobs & 4 != 0 { 2 } else { 200 },
                if knobs & 8 != 0 { 5 } else { 0 },
            );
            let path = dir.join(format!("pgtenant-{mode:?}-{pool}-{knobs}.toml"));
            std::fs::write(&path, toml).unwrap();
            let s = pgtenant::config::load(Some(&path), &Overrides::default())
                .unwrap_or_else(|e| panic!("the target's configuration: {e}"));
            Arc::new(s)
        })
        .clone()
}

struct Driver {
    ctx: Arc<pgtenant::context::Context>,
    listener: Listener,
    world: Shared,
    clients: Vec<Client>,
}

impl Driver {
    fn connect(&self) -> UnixStream {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(pgtenant::frontend::handle_client(
            pgtenant::net::Stream::Unix(Box::new(b)),
            self.listener.clone(),
            self.ctx.clone(),
            tokio_util::task::TaskTracker::new(),
        ));
        a
    }

    fn read_all(&mut self) -> usize {
        self.clients.iter_mut().map(|c| c.read()).sum()
    }

    fn check_world(&self) {
        let w = self.world.lock().unwrap();
        if let Some(v) = w.violations.first() {
            let logs: Vec<String> = self
                .clients
                .iter()
                .map(|c| format!("client {}:\n{}", c.id, c.log.join("\n")))
                .collect();
            panic!(
                "{v}\nall violations: {:#?}\n{}",
                w.violations,
                logs.join("\n")
            );
        }
    }

    /// Run until neither the clients nor the mock see anything new.
    async fn settle(&mut self) {
        let mut quiet = 0;
        let mut rounds = 0;
        while quiet < 3 && rounds < 2000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let before = self.world.lock().unwrap().activity;
            tokio::task::yield_now().await;
            let read = self.read_all();
            let after = self.world.lock().unwrap().activity;
            if read == 0 && before == after {
                quiet += 1;
            } else {
                quiet = 0;
            }
            rounds += 1;
        }
        self.check_world();
    }

    async fn send(&mut self, client: usize, msgs: &[Msg], cut: u8) {
        let mut out = Vec::new();
        {
            let c = &mut self.clients[client];
            if c.sock.is_none() || c.state == State::Gone {
                return;
            }
            for m in msgs.iter().take(16) {
                let w = self.world.clone();
                c.encode(m, &mut out, &w);
                c.log.push(format!("-> {m:?} (n up to {})", c.n));
            }
        }
        let piece = if cut == 0 {
            out.len().max(1)
        } else {
            cut as usize
        };
        for chunk in out.chunks(piece) {
            let Some(sock) = &mut self.clients[client].sock else {
                return;
            };
            if sock.write_all(chunk).await.is_err() {
                return;
            }
            if cut != 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                self.read_all();
            }
        }
    }

    async fn cancel(&mut self, client: usize) {
        let Some((pid, key)) = self.clients[client].key else {
            return;
        };
        self.world.lock().unwrap().canceller = Some(self.clients[client].id);
        let mut s = self.connect();
        let mut b = 16i32.to_be_bytes().to_vec();
        b.extend_from_slice(&80877102i32.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&key.to_be_bytes());
        let _ = s.write_all(&b).await;
        self.clients[client].log.push("-> CancelRequest".into());
        self.settle().await;
        self.world.lock().unwrap().canceller = None;
    }
}

fn run(input: &Input) {
    let pool = 1 + u32::from(input.pool % 2);
    let settings = settings(input.mode, pool, input.knobs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let path = socket_dir().join(".s.PGSQL.5432");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let world: Shared = Arc::new(Mutex::new(World::default()));
        let mock = tokio::spawn(mock_pg::serve(listener, world.clone()));
        let ctx = pgtenant::server::build_context(&settings, &Overrides::default()).unwrap();
        let mut d = Driver {
            ctx,
            listener: settings.listeners[0].clone(),
            world,
            clients: Vec::new(),
        };
        let n = 1 + input.clients % 3;
        for id in 1..=n {
            let mut sock = d.connect();
            sock.write_all(&startup()).await.unwrap();
            d.clients
                .push(Client::new(id, sock, input.mode != Mode::Session));
        }
        d.settle().await;
        let count = d.clients.len();
        for step in input.steps.iter().take(48) {
            match step {
                Step::Send { client, msgs, cut } => {
                    d.send(*client as usize % count, msgs, *cut).await;
                    d.settle().await;
                }
                Step::Settle => d.settle().await,
                Step::Wait(t) => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(*t))).await;
                    d.settle().await;
                }
                Step::Drop { client } => {
                    let c = &mut d.clients[*client as usize % count];
                    c.sock = None;
                    c.state = State::Gone;
                    c.log.push("-> <drop>".into());
                    d.settle().await;
                }
                Step::Cancel { client } => d.cancel(*client as usize % count).await,
                Step::Fault(f) => d.world.lock().unwrap().faults.push(match f {
                    FaultKind::Close => Fault::Close,
                    FaultKind::Fatal => Fault::Fatal,
                }),
            }
        }
        // The end: faults not yet used are dropped; time runs on until every timeout fired.
        d.world.lock().unwrap().faults.clear();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(200)).await;
            d.settle().await;
        }
        for c in &d.clients {
            if c.state != State::Gone && !c.lawless && !c.copying && c.popped < c.owed {
                c.fail("requests never answered".into());
            }
        }
        // Every client leaves; what the pool keeps must be idle.
        for c in &mut d.clients {
            if let Some(mut s) = c.sock.take() {
                let _ = s.write_all(&[b'X', 0, 0, 0, 4]).await;
            }
        }
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(200)).await;
            d.settle().await;
        }
        let busy = d.world.lock().unwrap().busy_connections();
        if !busy.is_empty() {
            let logs: Vec<String> = d
                .clients
                .iter()
                .map(|c| format!("client {}:\n{}", c.id, c.log.join("\n")))
                .collect();
            panic!(
                "server connections {busy:?} are open and not idle after every client left\n{}",
                logs.join("\n")
            );
        }
        d.ctx.pools.close_idle();
        mock.abort();
    });
}

fuzz_target!(|input: Input| {
    if std::env::var_os("FUZZ_SESSION_DEBUG").is_some() {
        static LOG: std::sync::Once = std::sync::Once::new();
        // FUZZ_SESSION_DEBUG=trace for every session event.
        let level = std::env::var("FUZZ_SESSION_DEBUG").unwrap_or_default();
        let level = if level == "trace" { "trace" } else { "debug" };
        LOG.call_once(|| pgtenant::logging::init(pgtenant::config::LogFormat::Plain, level));
        eprintln!("{input:#?}");
    }
    run(&input);
});
