//! A mock PostgreSQL backend for the `session` target: enough of protocol 3.0 and of a
//! session's state to answer pgtenant and its clients, and to check, on the server side,
//! what pgtenant must never do.
//!
//! It speaks: the startup (trust: AuthenticationOk at once), SSLRequest ('N'),
//! CancelRequest, simple Query (several statements are one implicit transaction, as in
//! PostgreSQL), the extended protocol (Parse, Bind, Describe, Execute, Close, Sync,
//! Flush; an error skips to Sync), Terminate; Copy messages outside COPY are ignored, an
//! unknown message is FATAL 08P01, as PostgreSQL does.
//!
//! It knows the statements of the fuzz clients (`session.rs`, each tagged `/*@cInN@*/`
//! with its client and number) and the ones pgtenant sends itself: `set_config`, `RESET`,
//! `DISCARD ALL`, `DEALLOCATE`, the session check (`frontend/session/check.rs`), the
//! settings-name query. Settings, temp tables and SQL-prepared statements are
//! transactional or not as in PostgreSQL; `application_name` is reported by
//! ParameterStatus.
//!
//! The checks (a failure is pushed to [`World::violations`]; the target panics on it):
//! - a client's statement arrives on a connection in the middle of another client's
//!   transaction or extended-protocol batch (the connection went to the pool busy);
//! - a client's transaction starts on a connection whose settings are not that client's
//!   (another client's SET leaked, or the client's own was lost), or that holds another
//!   client's temp table or SQL-prepared statement;
//! - anything arrives on a connection after its Terminate;
//! - a cancel request hits a connection running another client's statement.
//!
//! Everything runs on the target's single-threaded runtime; the shared state is behind
//! a `std::sync::Mutex` never held across an await.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

/// Settings the mock tracks and checks (others are accepted and forgotten).
pub const TRACKED: [&str; 2] = ["application_name", "work_mem"];

/// A fault the fuzz input asks the mock to inject into the next message it handles.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Drop the socket without a word.
    Close,
    /// `FATAL 57P01` (terminating connection due to administrator command), then close.
    Fatal,
}

/// Per-client session state as the mock has committed it (the truth a client's next
/// transaction must find on whatever connection serves it).
#[derive(Default)]
pub struct ClientTruth {
    pub settings: BTreeMap<String, String>,
    /// The client sent DISCARD ALL, which pgtenant may answer itself: its settings are
    /// then known only to pgtenant, and only leaks are checked, not losses.
    pub discarded: bool,
}

/// The client a tracked setting's value belongs to: `cInN` (application_name) or
/// `I0NNNkB` (work_mem, I·10000 + N kB), as `session.rs` writes them.
pub fn value_owner(v: &str) -> Option<u8> {
    if let Some(r) = v.strip_prefix('c') {
        return r.split_once('n')?.0.parse().ok();
    }
    let n: u32 = v.strip_suffix("kB")?.parse().ok()?;
    u8::try_from(n / 10000).ok()
}

#[derive(Default)]
pub struct World {
    pub violations: Vec<String>,
    pub clients: HashMap<u8, ClientTruth>,
    pub faults: Vec<Fault>,
    /// Open connections: pid → (cancel key, its cancel signal, who runs on it now).
    cancels: HashMap<i32, CancelEntry>,
    next_pid: i32,
    /// Connections still open and not idle at the end are reported by `busy_at_end`.
    conns: HashMap<i32, Arc<Mutex<ConnView>>>,
    pub connections_opened: u32,
    /// The client whose cancel request is on its way (set by the driver).
    pub canceller: Option<u8>,
    /// Messages handled, for the driver's "nothing moves any more".
    pub activity: u64,
}

/// What the end-of-run check reads of a connection.
#[derive(Default, Clone, Debug)]
pub struct ConnView {
    pub idle: bool,
    pub closed: bool,
}

pub type Shared = Arc<Mutex<World>>;

/// FUZZ_SESSION_DEBUG set: print what every server connection receives.
fn debug() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var_os("FUZZ_SESSION_DEBUG").is_some())
}

/// A connection's cancel key, its cancel signal and who runs on it now.
type CancelEntry = (i32, Arc<Notify>, Arc<Mutex<Option<u8>>>);

impl World {
    fn violation(&mut self, v: String) {
        if self.violations.len() < 16 {
            self.violations.push(v);
        }
    }

    /// Connections still open whose state is not idle (in a transaction, a batch).
    pub fn busy_connections(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let c = c.lock().unwrap();
                !c.closed && !c.idle
            })
            .map(|(p, _)| *p)
            .collect();
        v.sort();
        v
    }
}

/// Serve every connection of `listener` until the runtime ends.
pub async fn serve(listener: UnixListener, world: Shared) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let w = world.clone();
        tokio::spawn(async move {
            let _ = Conn::run(sock, w).await;
        });
    }
}

// -------------------------------------------------------------------------------------
// Frames
// -------------------------------------------------------------------------------------

fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

fn param_status(out: &mut Vec<u8>, k: &str, v: &str) {
    let mut b = Vec::new();
    cstr(&mut b, k);
    cstr(&mut b, v);
    msg(out, b'S', &b);
}

fn error(out: &mut Vec<u8>, severity: &str, code: &str, text: &str) {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', text),
    ] {
        b.push(t);
        cstr(&mut b, v);
    }
    b.push(0);
    msg(out, b'E', &b);
}

fn row_description(out: &mut Vec<u8>, cols: &[&str]) {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for c in cols {
        cstr(&mut b, c);
        b.extend_from_slice(&0i32.to_be_bytes()); // table oid
        b.extend_from_slice(&0i16.to_be_bytes()); // column
        b.extend_from_slice(&25i32.to_be_bytes()); // text
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    msg(out, b'T', &b);
}

fn data_row(out: &mut Vec<u8>, vals: &[Option<&str>]) {
    let mut b = (vals.len() as i16).to_be_bytes().to_vec();
    for v in vals {
        match v {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    msg(out, b'D', &b);
}

fn complete(out: &mut Vec<u8>, tag: &str) {
    let mut b = Vec::new();
    cstr(&mut b, tag);
    msg(out, b'C', &b);
}

fn read_cstr(b: &[u8], at: &mut usize) -> Option<String> {
    let rest = b.get(*at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    *at += end + 1;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

// -------------------------------------------------------------------------------------
// SQL the mock understands
// -------------------------------------------------------------------------------------

/// The fuzz client tag `@cInN@` in a statement: (client, number).
pub fn tag_of(sql: &str) -> Option<(u8, u32)> {
    let at = sql.find("/*@c")?;
    let rest = &sql[at + 4..];
    let end = rest.find("@*/")?;
    let (c, n) = rest[..end].split_once('n')?;
    Some((c.parse().ok()?, n.parse().ok()?))
}

/// Split a simple query at `;` outside quotes and comments.
fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.into_iter()
        .filter(|s| !strip_comments(s).trim().is_empty())
        .collect()
}

fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(a) = rest.find("/*") {
        out.push_str(&rest[..a]);
        rest = match rest[a..].find("*/") {
            Some(e) => &rest[a + e + 2..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The first quoted literal's content.
fn first_literal(s: &str) -> Option<String> {
    let a = s.find('\'')?;
    let e = s[a + 1..].find('\'')?;
    Some(s[a + 1..a + 1 + e].to_string())
}

fn literals(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find('\'') {
        let Some(e) = rest[a + 1..].find('\'') else {
            break;
        };
        out.push(rest[a + 1..a + 1 + e].to_string());
        rest = &rest[a + e + 2..];
    }
    out
}

/// An identifier as pgtenant writes one (`params::ident`): quoted or bare, lower case.
fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => s.to_ascii_lowercase(),
    }
}

// -------------------------------------------------------------------------------------
// A connection
// -------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Idle,
    InBlock,
    Failed,
}

/// What a transaction changed, applied at commit.
#[derive(Default, Clone)]
struct Tx {
    settings: BTreeMap<String, Option<String>>,
    /// SET LOCAL: gone at the transaction's end.
    local: BTreeMap<String, Option<String>>,
    temp: u32,
    /// The client whose statements ran in it, for ClientTruth.
    client: Option<u8>,
    /// An implicit transaction (simple query, extended batch) or a block.
    explicit: bool,
}

struct Conn {
    sock: UnixStream,
    world: Shared,
    pid: i32,
    out: Vec<u8>,
    status: Status,
    /// Messages of the extended protocol since the last Sync.
    in_batch: bool,
    /// An error in the batch: skip to Sync.
    skipping: bool,
    tx: Option<Tx>,
    /// Committed session settings (name → value), tracked ones only.
    settings: BTreeMap<String, String>,
    reported_app: String,
    /// application_name of the startup packet (source `client`, not `session`).
    default_app: String,
    temp: u32,
    temp_owner: Option<u8>,
    /// Prepared statements (protocol and SQL share one namespace): name → (sql, from_sql).
    stmts: HashMap<String, (String, bool)>,
    portals: HashMap<String, String>,
    /// The client whose transaction or batch is open on this connection.
    owner: Arc<Mutex<Option<u8>>>,
    cancel: Arc<Notify>,
    view: Arc<Mutex<ConnView>>,
    terminated: bool,
    /// COPY FROM STDIN running (a simple query's): rows received so far.
    copy: Option<u64>,
    /// Running a simple query of several statements (an implicit transaction block).
    multi: bool,
}

enum Flow {
    Go,
    Close,
}

impl Conn {
    async fn run(mut sock: UnixStream, world: Shared) -> std::io::Result<()> {
        // Startup, SSLRequest or CancelRequest.
        let params = loop {
            let len = sock.read_i32().await?;
            if !(8..=10_000).contains(&len) {
                return Ok(());
            }
            let mut body = vec![0u8; len as usize - 4];
            sock.read_exact(&mut body).await?;
            let code = i32::from_be_bytes(body[..4].try_into().unwrap());
            match code {
                80877103 => sock.write_all(b"N").await?,
                80877102 if body.len() >= 12 => {
                    let pid = i32::from_be_bytes(body[4..8].try_into().unwrap());
                    let key = i32::from_be_bytes(body[8..12].try_into().unwrap());
                    let mut w = world.lock().unwrap();
                    if let Some((k, n, owner)) = w.cancels.get(&pid).cloned() {
                        if k == key {
                            let running = *owner.lock().unwrap();
                            if let (Some(o), Some(c)) = (running, w.canceller) {
                                if o != c {
                                    w.violation(format!(
                                        "server pid {pid}: client {c}'s cancel request reached client {o}'s transaction"
                                    ));
                                }
                            }
                            n.notify_waiters();
                        }
                    }
                    return Ok(());
                }
                196608 => {
                    let mut at = 4;
                    let mut p = BTreeMap::new();
                    while let (Some(k), Some(v)) =
                        (read_cstr(&body, &mut at), read_cstr(&body, &mut at))
                    {
                        if k.is_empty() {
                            break;
                        }
                        p.insert(k, v);
                    }
                    break p;
                }
                _ => return Ok(()),
            }
        };
        let (pid, key, cancel, owner, view) = {
            let mut w = world.lock().unwrap();
            w.next_pid += 1;
            w.connections_opened += 1;
            let pid = 1000 + w.next_pid;
            let key = pid.wrapping_mul(7919);
            let cancel = Arc::new(Notify::new());
            let owner = Arc::new(Mutex::new(None));
            let view = Arc::new(Mutex::new(ConnView {
                idle: true,
                closed: false,
            }));
            w.cancels.insert(pid, (key, cancel.clone(), owner.clone()));
            w.conns.insert(pid, view.clone());
            (pid, key, cancel, owner, view)
        };
        let mut c = Conn {
            sock,
            world,
            pid,
            out: Vec::new(),
            status: Status::Idle,
            in_batch: false,
            skipping: false,
            tx: None,
            settings: BTreeMap::new(),
            reported_app: String::new(),
            default_app: String::new(),
            temp: 0,
            temp_owner: None,
            stmts: HashMap::new(),
            portals: HashMap::new(),
            owner,
            cancel,
            view,
            terminated: false,
            copy: None,
            multi: false,
        };
        let app = params.get("application_name").cloned().unwrap_or_default();
        c.reported_app = app.clone();
        c.default_app = app.clone();
        msg(&mut c.out, b'R', &0i32.to_be_bytes());
        for (k, v) in [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("IntervalStyle", "postgres"),
            ("is_superuser", "off"),
            ("application_name", app.as_str()),
        ] {
            param_status(&mut c.out, k, v);
        }
        let user = params.get("user").cloned().unwrap_or_default();
        param_status(&mut c.out, "session_authorization", &user);
        let mut kd = pid.to_be_bytes().to_vec();
        kd.extend_from_slice(&key.to_be_bytes());
        msg(&mut c.out, b'K', &kd);
        msg(&mut c.out, b'Z', b"I");
        c.flush().await?;
        let r = c.serve().await;
        c.view.lock().unwrap().closed = true;
        c.world.lock().unwrap().cancels.remove(&pid);
        r
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.sock.write_all(&out).await?;
        }
        Ok(())
    }

    fn violation(&self, v: String) {
        self.world
            .lock()
            .unwrap()
            .violation(format!("server pid {}: {v}", self.pid));
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            let n = self.sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            if self.terminated {
                self.violation(format!("{n} bytes after Terminate"));
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while buf.len() - at >= 5 {
                let len = i32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap());
                if !(4..=64 << 20).contains(&len) {
                    self.violation(format!("a frame of length {len}"));
                    return Ok(());
                }
                let end = at + 1 + len as usize;
                if buf.len() < end {
                    break;
                }
                let tag = buf[at];
                let body = buf[at + 5..end].to_vec();
                at = end;
                if self.terminated {
                    self.violation(format!("message {:?} after Terminate", tag as char));
                    return Ok(());
                }
                let fault = {
                    let mut w = self.world.lock().unwrap();
                    if w.faults.is_empty() {
                        None
                    } else {
                        Some(w.faults.remove(0))
                    }
                };
                match fault {
                    Some(Fault::Close) => return Ok(()),
                    Some(Fault::Fatal) => {
                        error(
                            &mut self.out,
                            "FATAL",
                            "57P01",
                            "terminating connection due to administrator command",
                        );
                        let _ = self.flush().await;
                        return Ok(());
                    }
                    None => {}
                }
                if let Flow::Close = self.message(tag, &body).await {
                    let _ = self.flush().await;
                    return Ok(());
                }
            }
            buf.drain(..at);
            self.flush().await?;
        }
    }

    fn set_view(&self) {
        self.view.lock().unwrap().idle =
            self.status == Status::Idle && !self.in_batch && self.copy.is_none();
    }

    /// A message while COPY FROM STDIN runs, as PostgreSQL's CopyGetData takes it: data,
    /// its end or its failure; Flush and Sync ignored; anything else fails the COPY
    /// (the message is consumed). The query's ReadyForQuery follows its end.
    fn copy_message(&mut self, tag: u8, body: &[u8]) {
        let Some(rows) = self.copy.as_mut() else {
            return;
        };
        match tag {
            b'd' => {
                *rows += 1;
                return;
            }
            b'H' | b'S' => return,
            b'c' => {
                let n = *rows;
                self.copy = None;
                complete(&mut self.out, &format!("COPY {n}"));
            }
            b'f' => {
                self.copy = None;
                self.fail("57014", "COPY from stdin failed");
            }
            other => {
                if let (b'Q' | b'P', Some((c, n))) = (other, tag_of(&String::from_utf8_lossy(body)))
                {
                    let owner = *self.owner.lock().unwrap();
                    if owner.is_some_and(|o| o != c) {
                        self.violation(format!(
                            "client {c}'s statement n{n} arrived during client {owner:?}'s COPY"
                        ));
                    }
                }
                self.copy = None;
                self.fail("08P01", "unexpected message type during COPY from stdin");
            }
        }
        if self.tx.as_ref().is_some_and(|t| !t.explicit) {
            self.commit();
        }
        self.ready();
    }

    async fn message(&mut self, tag: u8, body: &[u8]) -> Flow {
        self.world.lock().unwrap().activity += 1;
        if debug() {
            eprintln!(
                "server pid {}: <- {} {}",
                self.pid,
                tag as char,
                String::from_utf8_lossy(body).replace('\0', "|")
            );
        }
        let flow = match tag {
            _ if self.copy.is_some() && tag != b'X' => {
                self.copy_message(tag, body);
                Flow::Go
            }
            // After an error in an extended batch everything is ignored until Sync,
            // a simple query too; otherwise it ends the batch's implicit transaction.
            b'Q' if self.skipping => Flow::Go,
            b'Q' => {
                let sql =
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body)).into_owned();
                self.simple(&sql).await;
                self.in_batch = false;
                Flow::Go
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => {
                self.extended(tag, body).await;
                Flow::Go
            }
            b'X' => {
                self.terminated = true;
                Flow::Go
            }
            b'd' | b'c' | b'f' => Flow::Go,
            _ => {
                error(
                    &mut self.out,
                    "FATAL",
                    "08P01",
                    "invalid frontend message type",
                );
                Flow::Close
            }
        };
        self.set_view();
        flow
    }

    /// A client's statement begins here: the checks of what it must find.
    fn arrive(&mut self, sql: &str) {
        let Some((client, n)) = tag_of(sql) else {
            return;
        };
        let mut owner = self.owner.lock().unwrap();
        let busy = self.status != Status::Idle || self.in_batch;
        if busy {
            if let Some(o) = *owner {
                if o != client {
                    drop(owner);
                    self.violation(format!(
                        "client {client}'s statement n{n} arrived while client {o}'s transaction or batch is open ({:?}, batch {})",
                        self.status, self.in_batch
                    ));
                    return;
                }
            }
            *owner = Some(client);
            return;
        }
        *owner = Some(client);
        drop(owner);
        // A transaction of `client` starts: the session must be its own.
        let w = self.world.lock().unwrap();
        let (truth, discarded) = w
            .clients
            .get(&client)
            .map(|t| (t.settings.clone(), t.discarded))
            .unwrap_or_default();
        drop(w);
        for name in TRACKED {
            let here = self.settings.get(name).filter(|v| !v.is_empty());
            let want = truth.get(name).filter(|v| !v.is_empty());
            if let Some(o) = here.and_then(|v| value_owner(v)).filter(|o| *o != client) {
                self.violation(format!(
                    "client {client}'s transaction (n{n}) starts with client {o}'s {name} = {here:?}"
                ));
            } else if here != want && !discarded {
                self.violation(format!(
                    "client {client}'s transaction (n{n}) starts with {name} = {here:?}, its session has {want:?}"
                ));
            }
        }
        if self.temp > 0 && self.temp_owner != Some(client) {
            self.violation(format!(
                "client {client}'s transaction (n{n}) runs on a connection holding client {:?}'s temp tables",
                self.temp_owner
            ));
        }
        for (name, (sql, from_sql)) in &self.stmts {
            if let (true, Some((c, _))) = (*from_sql, tag_of(sql)) {
                if c != client {
                    self.violation(format!(
                        "client {client}'s transaction (n{n}) runs on a connection holding client {c}'s prepared statement {name}"
                    ));
                }
            }
        }
    }

    fn begin_implicit(&mut self, client: Option<u8>) {
        let tx = self.tx.get_or_insert_with(Tx::default);
        if tx.client.is_none() {
            tx.client = client;
        }
    }

    fn commit(&mut self) {
        self.portals.clear();
        let Some(tx) = self.tx.take() else { return };
        for (k, v) in tx.settings {
            match v {
                Some(v) => {
                    self.settings.insert(k, v);
                }
                None => {
                    self.settings.remove(&k);
                }
            }
        }
        if tx.temp > 0 {
            self.temp += tx.temp;
            self.temp_owner = tx.client;
        }
        self.status = Status::Idle;
        self.publish_truth(tx.client);
    }

    fn rollback(&mut self) {
        self.portals.clear();
        let tx = self.tx.take();
        self.status = Status::Idle;
        self.publish_truth(tx.and_then(|t| t.client));
    }

    /// After a transaction of `client` ended: its session's settings are this
    /// connection's.
    fn publish_truth(&self, client: Option<u8>) {
        let Some(c) = client else { return };
        let mut w = self.world.lock().unwrap();
        let t = w.clients.entry(c).or_default();
        t.settings = TRACKED
            .iter()
            .filter_map(|n| self.settings.get(*n).map(|v| (n.to_string(), v.clone())))
            .collect();
    }

    fn effective(&self, name: &str) -> Option<String> {
        if let Some(tx) = &self.tx {
            if let Some(v) = tx.local.get(name) {
                return v.clone();
            }
            if let Some(v) = tx.settings.get(name) {
                return v.clone();
            }
        }
        self.settings.get(name).cloned()
    }

    fn set(&mut self, name: &str, value: Option<String>, local: bool) {
        if !TRACKED.contains(&name) {
            return;
        }
        let tx = self.tx.get_or_insert_with(Tx::default);
        if local {
            tx.local.insert(name.to_string(), value);
        } else {
            tx.local.remove(name);
            tx.settings.insert(name.to_string(), value);
        }
    }

    fn report(&mut self) {
        let app = self
            .effective("application_name")
            .unwrap_or_else(|| self.default_app.clone());
        if app != self.reported_app {
            param_status(&mut self.out, "application_name", &app);
            self.reported_app = app;
        }
    }

    fn ready(&mut self) {
        self.report();
        let s = match self.status {
            Status::Idle => b'I',
            Status::InBlock => b'T',
            Status::Failed => b'E',
        };
        msg(&mut self.out, b'Z', &[s]);
        if self.status == Status::Idle {
            *self.owner.lock().unwrap() = None;
        }
    }

    /// Fail the statement: in a block the transaction is failed; an implicit one rolls back.
    fn fail(&mut self, code: &str, text: &str) {
        error(&mut self.out, "ERROR", code, text);
        if self.tx.as_ref().is_some_and(|t| t.explicit) {
            self.status = Status::Failed;
        } else {
            self.rollback();
        }
    }

    async fn simple(&mut self, sql: &str) {
        let stmts = split_statements(sql);
        if stmts.is_empty() {
            msg(&mut self.out, b'I', &[]);
            self.ready();
            return;
        }
        self.multi = stmts.len() > 1;
        for s in stmts {
            self.arrive(s);
            self.begin_implicit(tag_of(s).map(|t| t.0));
            if !self.statement(s, true).await {
                break;
            }
            if self.copy.is_some() {
                // The rest comes with the COPY's end (`copy_message`); the fuzz
                // clients send COPY alone in its query.
                return;
            }
        }
        if self.tx.as_ref().is_some_and(|t| !t.explicit) {
            self.commit();
        }
        self.ready();
    }

    /// Run one statement; false if it failed.
    async fn statement(&mut self, s: &str, describe: bool) -> bool {
        let plain = strip_comments(s);
        let words: Vec<String> = plain
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let w0 = words.first().map(String::as_str).unwrap_or("");
        let w1 = words.get(1).map(String::as_str).unwrap_or("");
        if self.status == Status::Failed && !matches!(w0, "ROLLBACK" | "COMMIT" | "END" | "ABORT") {
            self.fail(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            return false;
        }
        let in_block = self.tx.as_ref().is_some_and(|t| t.explicit);
        match w0 {
            "BEGIN" | "START" => {
                if in_block {
                    // A warning, as PostgreSQL: there is already a transaction in progress.
                } else {
                    let tx = self.tx.get_or_insert_with(Tx::default);
                    tx.explicit = true;
                    self.status = Status::InBlock;
                }
                complete(&mut self.out, "BEGIN");
            }
            "COMMIT" | "END" | "ROLLBACK" | "ABORT" if !in_block && !self.multi => {
                // No transaction block: a warning, and the implicit transaction (and its
                // portals) goes on, as PostgreSQL. (In a query of several statements it
                // ends the implicit block: the arms below.)
                let tag = if matches!(w0, "COMMIT" | "END") {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                complete(&mut self.out, tag);
            }
            "COMMIT" | "END" => {
                let failed = self.status == Status::Failed;
                if failed {
                    self.rollback();
                } else {
                    self.commit();
                }
                complete(&mut self.out, if failed { "ROLLBACK" } else { "COMMIT" });
            }
            "ROLLBACK" | "ABORT" => {
                self.rollback();
                complete(&mut self.out, "ROLLBACK");
            }
            "SET" => {
                let local = w1 == "LOCAL";
                let rest = plain.trim_start()[3..].trim_start();
                let rest = if local { rest[5..].trim_start() } else { rest };
                let (name, value) = match rest.split_once('=').or_else(|| rest.split_once(" TO ")) {
                    Some((n, v)) => (unquote(n), v.trim().trim_matches('\'').to_string()),
                    None => (unquote(rest), String::new()),
                };
                // SET LOCAL outside a block: a warning and no effect, as PostgreSQL.
                if !local || in_block {
                    self.set(&name, Some(value), local);
                }
                complete(&mut self.out, "SET");
            }
            "RESET" => {
                if w1 == "ALL" {
                    for n in TRACKED {
                        self.set(n, None, false);
                    }
                } else {
                    let name = unquote(plain.trim_start()[5..].trim());
                    self.set(&name, None, false);
                }
                complete(&mut self.out, "RESET");
            }
            "DISCARD" => {
                if in_block {
                    self.fail("25001", "DISCARD ALL cannot run inside a transaction block");
                    return false;
                }
                for n in TRACKED {
                    self.set(n, None, false);
                }
                self.temp = 0;
                self.temp_owner = None;
                if let Some(tx) = &mut self.tx {
                    tx.temp = 0;
                }
                self.stmts.clear();
                self.portals.clear();
                complete(&mut self.out, "DISCARD ALL");
            }
            "DEALLOCATE" => {
                let name = words.iter().skip(1).find(|w| *w != "PREPARE");
                match name.map(String::as_str) {
                    Some("ALL") => self.stmts.clear(),
                    Some(_) => {
                        let raw = plain.split_whitespace().last().unwrap_or("");
                        if self.stmts.remove(&unquote(raw)).is_none() {
                            self.fail(
                                "26000",
                                &format!("prepared statement \"{}\" does not exist", unquote(raw)),
                            );
                            return false;
                        }
                    }
                    None => {}
                }
                complete(&mut self.out, "DEALLOCATE");
            }
            "PREPARE" => {
                let name = unquote(plain.split_whitespace().nth(1).unwrap_or(""));
                let body = match s.find(" AS ") {
                    Some(i) => s[i + 4..].to_string(),
                    None => String::new(),
                };
                if self.stmts.contains_key(&name) {
                    self.fail(
                        "42P05",
                        &format!("prepared statement \"{name}\" already exists"),
                    );
                    return false;
                }
                self.stmts.insert(name, (body, true));
                complete(&mut self.out, "PREPARE");
            }
            "EXECUTE" => {
                let name = unquote(plain.split_whitespace().nth(1).unwrap_or(""));
                let Some((body, _)) = self.stmts.get(&name).cloned() else {
                    self.fail(
                        "26000",
                        &format!("prepared statement \"{name}\" does not exist"),
                    );
                    return false;
                };
                return Box::pin(self.statement(&body, describe)).await;
            }
            "CREATE" if words.iter().any(|w| w == "TEMP" || w == "TEMPORARY") => {
                if let Some(tx) = &mut self.tx {
                    tx.temp += 1;
                }
                complete(&mut self.out, "CREATE TABLE");
            }
            "COPY" if describe && words.iter().any(|w| w == "STDIN") => {
                // CopyInResponse: text, one column.
                msg(&mut self.out, b'G', &[0, 0, 1, 0, 0]);
                self.copy = Some(0);
            }
            "SELECT" => return self.select(s, &plain, describe).await,
            "DO" if plain.contains("RAISE EXCEPTION USING ERRCODE = '") => {
                // pgtenant's own refusals (`forward::Refusal::raise_sql`), raised as
                // PL/pgSQL raises them.
                let (code, message) = raised(s);
                self.fail(&code, &message);
                return false;
            }
            "" => {
                msg(&mut self.out, b'I', &[]);
            }
            other => complete(&mut self.out, other),
        }
        true
    }

    async fn select(&mut self, s: &str, plain: &str, describe: bool) -> bool {
        let p = plain.trim();
        if p.contains("1/0") {
            self.fail("22012", "division by zero");
            return false;
        }
        let rows: Vec<Vec<Option<String>>>;
        let cols: usize;
        if p.starts_with("SELECT 'i', 'role'") {
            // The session check: role and session_authorization are never changed here.
            let mut r = Vec::new();
            if p.contains("'s', pg_catalog.lower(name)") {
                for (k, v) in &self.settings {
                    r.push(vec![Some("s".into()), Some(k.clone()), Some(v.clone())]);
                }
            }
            if p.contains("'p', 'pins'") {
                let sqls = self.stmts.values().filter(|s| s.1).count();
                let protos = self
                    .stmts
                    .iter()
                    .filter(|(n, s)| !s.1 && !n.is_empty())
                    .count();
                r.push(vec![
                    Some("p".into()),
                    Some("pins".into()),
                    Some(format!("{},0,0,0,{sqls},{protos}", self.temp)),
                ]);
            }
            rows = r;
            cols = 3;
        } else if p.contains("pg_catalog.set_config(") {
            let l = literals(p);
            let (name, value) = (
                l.first().cloned().unwrap_or_default(),
                l.get(1).cloned().unwrap_or_default(),
            );
            self.set(&name, Some(value.clone()), false);
            rows = vec![vec![Some(value)]];
            cols = 1;
        } else if p.contains("current_setting('statement_timeout')") {
            rows = vec![vec![Some("0".into())]];
            cols = 1;
        } else if p.contains("pg_sleep(") {
            let cancel = self.cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.notified() => {
                    self.fail("57014", "canceling statement due to user request");
                    return false;
                }
            }
            rows = vec![vec![Some(String::new())]];
            cols = 1;
        } else if let (Some(_), Some(v)) = (tag_of(s), first_literal(p)) {
            rows = vec![vec![Some(v)]];
            cols = 1;
        } else {
            rows = Vec::new();
            cols = 1;
        }
        if describe {
            let names: Vec<&str> = ["a", "b", "c"][..cols].to_vec();
            row_description(&mut self.out, &names);
        }
        for r in &rows {
            let v: Vec<Option<&str>> = r.iter().map(|x| x.as_deref()).collect();
            data_row(&mut self.out, &v);
        }
        complete(&mut self.out, &format!("SELECT {}", rows.len()));
        true
    }

    async fn extended(&mut self, tag: u8, body: &[u8]) {
        self.multi = false;
        if tag == b'S' {
            self.skipping = false;
            self.in_batch = false;
            if self.tx.as_ref().is_some_and(|t| !t.explicit) {
                self.commit();
            }
            self.ready();
            return;
        }
        if tag == b'H' {
            return;
        }
        self.in_batch = true;
        if self.skipping {
            return;
        }
        let mut at = 0;
        let ok = match tag {
            b'P' => {
                let name = read_cstr(body, &mut at).unwrap_or_default();
                let sql = read_cstr(body, &mut at).unwrap_or_default();
                self.arrive(&sql);
                self.begin_implicit(tag_of(&sql).map(|t| t.0));
                if split_statements(&sql).len() > 1 {
                    self.fail(
                        "42601",
                        "cannot insert multiple commands into a prepared statement",
                    );
                    false
                } else if !name.is_empty() && self.stmts.contains_key(&name) {
                    self.fail(
                        "42P05",
                        &format!("prepared statement \"{name}\" already exists"),
                    );
                    false
                } else {
                    self.stmts.insert(name, (sql, false));
                    msg(&mut self.out, b'1', &[]);
                    true
                }
            }
            b'B' => {
                let portal = read_cstr(body, &mut at).unwrap_or_default();
                let stmt = read_cstr(body, &mut at).unwrap_or_default();
                match self.stmts.get(&stmt).cloned() {
                    _ if !portal.is_empty() && self.portals.contains_key(&portal) => {
                        self.fail("42P03", &format!("portal \"{portal}\" already exists"));
                        false
                    }
                    Some((sql, _)) => {
                        self.arrive(&sql);
                        self.begin_implicit(tag_of(&sql).map(|t| t.0));
                        self.portals.insert(portal, sql);
                        msg(&mut self.out, b'2', &[]);
                        true
                    }
                    None => {
                        self.fail(
                            "26000",
                            &format!("prepared statement \"{stmt}\" does not exist"),
                        );
                        false
                    }
                }
            }
            b'D' => {
                let kind = body.first().copied().unwrap_or(0);
                at = 1;
                let name = read_cstr(body, &mut at).unwrap_or_default();
                let sql = if kind == b'S' {
                    self.stmts.get(&name).map(|s| s.0.clone())
                } else {
                    self.portals.get(&name).cloned()
                };
                match sql {
                    Some(sql) => {
                        if kind == b'S' {
                            msg(&mut self.out, b't', &0i16.to_be_bytes());
                        }
                        if strip_comments(&sql)
                            .trim_start()
                            .to_ascii_uppercase()
                            .starts_with("SELECT")
                        {
                            row_description(&mut self.out, &["a"]);
                        } else {
                            msg(&mut self.out, b'n', &[]);
                        }
                        true
                    }
                    None if kind == b'S' => {
                        self.fail(
                            "26000",
                            &format!("prepared statement \"{name}\" does not exist"),
                        );
                        false
                    }
                    None => {
                        self.fail("34000", &format!("portal \"{name}\" does not exist"));
                        false
                    }
                }
            }
            b'E' => {
                let portal = read_cstr(body, &mut at).unwrap_or_default();
                match self.portals.get(&portal).cloned() {
                    Some(sql) => {
                        let stmts = split_statements(&sql);
                        match stmts.first() {
                            Some(s) => Box::pin(self.statement(s, false)).await,
                            None => {
                                msg(&mut self.out, b'I', &[]);
                                true
                            }
                        }
                    }
                    None => {
                        self.fail("34000", &format!("portal \"{portal}\" does not exist"));
                        false
                    }
                }
            }
            b'C' => {
                let kind = body.first().copied().unwrap_or(0);
                at = 1;
                let name = read_cstr(body, &mut at).unwrap_or_default();
                if kind == b'S' {
                    self.stmts.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                msg(&mut self.out, b'3', &[]);
                true
            }
            _ => true,
        };
        if !ok {
            self.skipping = true;
        }
    }
}

/// The SQLSTATE and message of `DO … RAISE EXCEPTION USING ERRCODE = 'x', MESSAGE = '…'`.
fn raised(s: &str) -> (String, String) {
    let code = s
        .split("ERRCODE = '")
        .nth(1)
        .and_then(|r| r.get(..5))
        .unwrap_or("P0001")
        .to_string();
    let mut message = String::new();
    if let Some(r) = s.split("MESSAGE = ").nth(1) {
        let r = r.strip_prefix('E').unwrap_or(r);
        let mut chars = r.strip_prefix('\'').unwrap_or(r).chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                } else {
                    break;
                }
            }
            message.push(c);
        }
    }
    (code, message)
}
