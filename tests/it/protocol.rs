//! The PostgreSQL wire protocol through pgtenant (transaction mode) against a real
//! PostgreSQL: simple and extended query, pipelining, errors and notices, COPY, startup
//! negotiation, and real clients (tokio-postgres, psql, pgbench).
//!
//! The raw-protocol tests speak the protocol over a plain `TcpStream` with the tiny
//! framing helpers below, with pgtenant in `--auth-type trust` mode.

use crate::support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::{connect, pg_bin, startup_packet, PgServer, Pgtenant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------
// Setup helpers
// ---------------------------------------------------------------------------------------

/// pgtenant in transaction mode in front of `pg` (upstream app/secret/app).
fn pgtenant(pg: &PgServer, pool_size: u32, extra: &[&str]) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    let size = pool_size.to_string();
    let mut args = vec![
        "run",
        "--upstream",
        &upstream,
        "--pool-mode",
        "transaction",
        "--pool-size",
        &size,
    ];
    args.extend_from_slice(extra);
    Pgtenant::start(&args, &[])
}

/// pgtenant with `--auth-type trust`, for the raw-protocol tests.
fn pgtenant_trust(pg: &PgServer, pool_size: u32) -> Pgtenant {
    pgtenant(pg, pool_size, &["--auth-type", "trust"])
}

/// A psql command through pgtenant as app/secret on database app.
fn psql(pt: &Pgtenant) -> Command {
    let mut c = Command::new(pg_bin("psql"));
    c.args(["-X", "-h", "127.0.0.1", "-p", &pt.port().to_string()])
        .args(["-U", "app", "-d", "app"])
        .env("PGPASSWORD", "secret")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .env("PGSSLMODE", "disable");
    c
}

/// Run a command with `stdin` fed to it; return its output.
fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------
// Raw protocol: framing helpers
// ---------------------------------------------------------------------------------------

/// One backend message.
#[derive(Debug, Clone)]
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

impl Msg {
    /// CommandComplete tag, ParameterStatus name, ... : the first C string of the body.
    fn cstr(&self) -> String {
        let end = self
            .body
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.body.len());
        text(&self.body[..end])
    }

    /// Columns of a DataRow in text format (None for NULL).
    fn columns(&self) -> Vec<Option<String>> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes(b[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                let len = len as usize;
                out.push(Some(text(&b[at..at + len])));
                at += len;
            }
        }
        out
    }

    /// First column of a DataRow.
    fn value(&self) -> String {
        self.columns()[0].clone().expect("NULL value")
    }

    /// Fields of an ErrorResponse / NoticeResponse by field type.
    fn fields(&self) -> HashMap<u8, String> {
        assert!(
            matches!(self.tag, b'E' | b'N'),
            "not an error/notice: {self:?}"
        );
        let mut out = HashMap::new();
        let mut at = 0;
        while at < self.body.len() && self.body[at] != 0 {
            let t = self.body[at];
            let end = at + 1 + self.body[at + 1..].iter().position(|&b| b == 0).unwrap();
            out.insert(t, text(&self.body[at + 1..end]));
            at = end + 1;
        }
        out
    }

    fn i32_at(&self, at: usize) -> i32 {
        i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap())
    }
}

/// The tags of a list of messages as a string, e.g. "12DCZ".
fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn put_cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, sql);
    frame(b'Q', &b)
}

fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
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
fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, portal);
    put_cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &b)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    put_cstr(&mut b, name);
    frame(b'D', &b)
}

fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    put_cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &b)
}

fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    put_cstr(&mut b, name);
    frame(b'C', &b)
}

fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

/// Parse (unnamed) + Bind + Execute of `sql` with text parameters, no Sync.
fn pbe(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut v = parse("", sql, &[]);
    v.extend(bind("", "", params));
    v.extend(execute("", 0));
    v
}

/// An 8-byte request packet (SSLRequest, GSSENCRequest) or a CancelRequest.
fn request_packet(code: i32, extra: &[i32]) -> Vec<u8> {
    let mut v = (((extra.len() + 2) * 4) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    for x in extra {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v
}

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;

/// What a login returned, up to ReadyForQuery.
struct Greeting {
    msgs: Vec<Msg>,
    params: HashMap<String, String>,
    key: (i32, i32),
}

impl Greeting {
    fn from_msgs(msgs: Vec<Msg>) -> Greeting {
        let mut params = HashMap::new();
        let mut key = None;
        for m in &msgs {
            match m.tag {
                b'S' => {
                    let name = m.cstr();
                    let value = text(&m.body[name.len() + 1..m.body.len() - 1]);
                    params.insert(name, value);
                }
                b'K' => key = Some((m.i32_at(0), m.i32_at(4))),
                b'E' => panic!("login failed: {:?}", m.fields()),
                _ => {}
            }
        }
        Greeting {
            params,
            key: key.expect("no BackendKeyData in the greeting"),
            msgs,
        }
    }
}

struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to pgtenant");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s }
    }

    /// Connect and log in (trust) as `user` on `db`.
    fn login(port: u16, user: &str, db: &str) -> (Raw, Greeting) {
        let mut r = Raw::connect(port);
        r.write(&startup_packet(196608, &[("user", user), ("database", db)]));
        let g = Greeting::from_msgs(r.read_until_ready());
        (r, g)
    }

    fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to pgtenant");
    }

    fn read_byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.s.read_exact(&mut b).expect("read one byte");
        b[0]
    }

    fn read_msg(&mut self) -> Msg {
        let mut head = [0u8; 5];
        self.s
            .read_exact(&mut head)
            .expect("read message header from pgtenant");
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap());
        assert!((4..1 << 24).contains(&len), "bad message length {len}");
        let mut body = vec![0u8; len as usize - 4];
        self.s.read_exact(&mut body).expect("read message body");
        Msg { tag: head[0], body }
    }

    /// Read messages up to and including the next ReadyForQuery.
    fn read_until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.read_msg();
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Read exactly `n` messages.
    fn read_n(&mut self, n: usize) -> Vec<Msg> {
        (0..n).map(|_| self.read_msg()).collect()
    }

    /// Simple query, answers up to ReadyForQuery.
    fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.write(&query(sql));
        self.read_until_ready()
    }

    /// The single value a one-row simple query returns.
    fn value(&mut self, sql: &str) -> String {
        let msgs = self.simple(sql);
        assert_eq!(tags(&msgs), "TDCZ", "{sql}: {msgs:?}");
        msgs[1].value()
    }
}

// ---------------------------------------------------------------------------------------
// Simple query
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn simple_query_with_several_statements() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let c = connect(&pt.url("app", "secret", "app")).await;

    let msgs = c
        .simple_query(
            "select 1; select 2; create temp table multi (x int); \
             insert into multi values (10), (20); select sum(x) from multi",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for m in &msgs {
        match m {
            SimpleQueryMessage::Row(r) => seen.push(format!("row {}", r.get(0).unwrap())),
            SimpleQueryMessage::CommandComplete(n) => seen.push(format!("done {n}")),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["row 1", "done 1", "row 2", "done 1", "done 0", "done 2", "row 30", "done 1"]
    );

    // An error in the middle aborts the rest of the string (and the implicit
    // transaction); the client keeps working.
    let err = c
        .simple_query("create table before_err (x int); select 1/0; create table after_err (x int)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err:?}");
    let rows = c
        .simple_query("select count(*) from pg_class where relname in ('before_err', 'after_err')")
        .await
        .unwrap();
    let SimpleQueryMessage::Row(r) = rows
        .iter()
        .find(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(r.get(0), Some("0"));
    assert_eq!(
        c.query_one("select 41 + 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
}

#[test]
fn simple_query_command_complete_tags_and_mid_string_error() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 2);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");

    let msgs = r.simple(
        "select 1; select 2 union all select 3; create temp table tags_t (x int); \
         insert into tags_t values (1), (2); update tags_t set x = x + 1; \
         delete from tags_t where x = 3; drop table tags_t",
    );
    assert_eq!(tags(&msgs), "TDCTDDCCCCCCZ", "{msgs:?}");
    let completes: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'C')
        .map(Msg::cstr)
        .collect();
    assert_eq!(
        completes,
        [
            "SELECT 1",
            "SELECT 2",
            "CREATE TABLE",
            "INSERT 0 2",
            "UPDATE 2",
            "DELETE 1",
            "DROP TABLE"
        ]
    );
    assert_eq!(msgs.last().unwrap().body, b"I");

    // Error in the middle: one ErrorResponse, nothing of the rest, then ReadyForQuery.
    let msgs = r.simple("select 1; select 1/0; select 3");
    assert_eq!(tags(&msgs), "TDCEZ", "{msgs:?}");
    let f = msgs[3].fields();
    assert_eq!(f[&b'C'], "22012");
    assert_eq!(f[&b'M'], "division by zero");
    assert_eq!(msgs[4].body, b"I");
    // An empty query string gets EmptyQueryResponse.
    assert_eq!(tags(&r.simple("")), "IZ");
    assert_eq!(r.value("select 'still here'"), "still here");
}

// ---------------------------------------------------------------------------------------
// Errors and notices
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn errors_pass_through_unchanged() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let direct = pg.client("app", "secret", "app").await;
    let c = connect(&pt.url("app", "secret", "app")).await;

    let err = c.query_one("select 1/0", &[]).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::DIVISION_BY_ZERO);
    assert_eq!(db.severity(), "ERROR");
    assert_eq!(db.message(), "division by zero");

    c.batch_execute("create table uniq (id int primary key, v text)")
        .await
        .unwrap();
    c.execute("insert into uniq values (1, 'a')", &[])
        .await
        .unwrap();
    let err = c
        .execute("insert into uniq values (1, 'b')", &[])
        .await
        .unwrap_err();
    let via = err.as_db_error().expect("a server error");
    assert_eq!(via.code(), &SqlState::UNIQUE_VIOLATION);
    assert_eq!(via.constraint(), Some("uniq_pkey"));
    assert_eq!(via.table(), Some("uniq"));
    assert_eq!(via.schema(), Some("public"));

    // Exactly what the server says to a direct client.
    let err = direct
        .execute("insert into uniq values (1, 'b')", &[])
        .await
        .unwrap_err();
    let dir = err.as_db_error().unwrap();
    assert_eq!(via.message(), dir.message());
    assert_eq!(via.detail(), dir.detail());
    assert_eq!(via.detail(), Some("Key (id)=(1) already exists."));
    assert_eq!(via.severity(), dir.severity());
    assert_eq!(via.routine(), dir.routine());

    // A syntax error carries its position.
    let err = c.simple_query("select * fromm uniq").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::SYNTAX_ERROR);
    assert_eq!(db.message(), "syntax error at or near \"fromm\"");
    assert!(db.position().is_some());

    // The connection is fine afterwards.
    let n: i64 = c
        .query_one("select count(*) from uniq", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn notice_reaches_the_client() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let (client, mut conn) =
        tokio_postgres::connect(&pt.url("app", "secret", "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notice(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });

    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notice within 10 s")
        .expect("connection task ended");
    assert_eq!(n.message(), "hello");
    assert_eq!(n.severity(), "NOTICE");
    assert_eq!(n.code(), &SqlState::SUCCESSFUL_COMPLETION);

    // A notice in the extended protocol too, and a warning.
    client
        .execute("DO $$ BEGIN RAISE WARNING 'careful %', 7; END $$", &[])
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no warning within 10 s")
        .unwrap();
    assert_eq!(n.message(), "careful 7");
    assert_eq!(n.severity(), "WARNING");
}

// ---------------------------------------------------------------------------------------
// Extended query through tokio-postgres: pipelining
// ---------------------------------------------------------------------------------------

/// 50 concurrent queries on one client; every answer matches its request.
async fn pipelined_queries(c: &tokio_postgres::Client, tag: i32) {
    let futs = (0..50i32).map(|i| {
        let v = tag * 1000 + i;
        async move {
            let rows = c
                .query("select $1::int, $2::text", &[&v, &format!("q{v}")])
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);
            let got: i32 = rows[0].get(0);
            let s: String = rows[0].get(1);
            assert_eq!(got, v);
            assert_eq!(s, format!("q{v}"));
        }
    });
    futures_util::future::join_all(futs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_query_pipelining_one_client() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 4, &[]);
    let c = connect(&pt.url("app", "secret", "app")).await;
    pipelined_queries(&c, 1).await;
    // Plain `query("select $1::int")` as well, several rounds.
    for round in 0..3 {
        let futs = (0..50i32).map(|i| {
            let c = &c;
            async move {
                let row = c.query_one("select $1::int", &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i, "round {round}");
            }
        });
        futures_util::future::join_all(futs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_query_pipelining_ten_clients_pool_of_one() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 1, &[]);
    let url = pt.url("app", "secret", "app");
    let mut tasks = Vec::new();
    for t in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for round in 0..2 {
                pipelined_queries(&c, t * 10 + round).await;
            }
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("10 pipelining clients did not finish within 60 s");
    for r in results {
        r.unwrap();
    }
    // Only one server connection was ever used.
    assert!(pg.count_backends("app", "app").await <= 1);
}

// ---------------------------------------------------------------------------------------
// Raw extended protocol
// ---------------------------------------------------------------------------------------

#[test]
fn raw_many_executes_before_one_sync() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");

    let mut batch = Vec::new();
    for i in 0..30 {
        batch.extend(pbe("select $1::int * 2", &[Some(&i.to_string())]));
    }
    // A named statement, bound twice, in the same batch.
    batch.extend(parse("twice", "select $1::text || '!'", &[25]));
    batch.extend(bind("", "twice", &[Some("a")]));
    batch.extend(execute("", 0));
    batch.extend(bind("p2", "twice", &[Some("b")]));
    batch.extend(execute("p2", 0));
    batch.extend(sync());
    r.write(&batch);

    let msgs = r.read_until_ready();
    let expect = format!("{}12DC2DCZ", "12DC".repeat(30));
    assert_eq!(tags(&msgs), expect);
    let values: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(Msg::value)
        .collect();
    let mut want: Vec<String> = (0..30).map(|i| (i * 2).to_string()).collect();
    want.push("a!".into());
    want.push("b!".into());
    assert_eq!(values, want);
    assert_eq!(msgs.last().unwrap().body, b"I");
}

#[test]
fn raw_flush_returns_answers_before_sync() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");

    let mut batch = parse("", "select $1::int + 1 as n", &[]);
    batch.extend(bind("", "", &[Some("41")]));
    batch.extend(describe(b'P', ""));
    batch.extend(execute("", 0));
    batch.extend(flush());
    r.write(&batch);
    // Everything up to CommandComplete arrives without a Sync.
    let msgs = r.read_n(5);
    assert_eq!(tags(&msgs), "12TDC", "{msgs:?}");
    assert_eq!(msgs[3].value(), "42");

    // Another step of the same batch, flushed again.
    let mut batch = bind("", "", &[Some("99")]);
    batch.extend(execute("", 0));
    batch.extend(flush());
    r.write(&batch);
    let msgs = r.read_n(3);
    assert_eq!(tags(&msgs), "2DC", "{msgs:?}");
    assert_eq!(msgs[1].value(), "100");

    r.write(&sync());
    let msgs = r.read_until_ready();
    assert_eq!(tags(&msgs), "Z");
    assert_eq!(r.value("select 'after flush'"), "after flush");
}

/// A client that leaves in the middle of an extended-protocol batch (answers flushed, no
/// Sync) leaves its server connection inside that batch's implicit transaction, or
/// skipping to a Sync after an error. Such a connection is closed, not lent: the next
/// client's query would commit the leaver's uncommitted INSERT, or be ignored by the
/// server and hang. (Found by the `session` fuzz target.)
#[test]
fn a_client_leaving_mid_batch_leaves_nothing_behind() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");
    r.write(&query("create table leftover (x int)"));
    r.read_until_ready();

    // An INSERT executed and flushed, never synced: uncommitted on the server.
    let mut batch = parse("", "insert into leftover values (1)", &[]);
    batch.extend(bind("", "", &[]));
    batch.extend(execute("", 0));
    batch.extend(flush());
    r.write(&batch);
    let msgs = r.read_n(3);
    assert_eq!(tags(&msgs), "12C", "{msgs:?}");
    drop(r);

    let (mut r2, _) = Raw::login(pt.port(), "app", "app");
    assert_eq!(r2.value("select count(*) from leftover"), "0");
    drop(r2);
    let (mut r3, _) = Raw::login(pt.port(), "app", "app");
    assert_eq!(
        r3.value("select count(*) from leftover"),
        "0",
        "the leaver's INSERT was committed by another client's query"
    );

    // An error in a batch with no Sync: the server skips everything until one.
    r3.write(&[describe(b'P', "no_such_portal"), flush()].concat());
    let msgs = r3.read_n(1);
    assert_eq!(msgs[0].tag, b'E', "{msgs:?}");
    drop(r3);
    let (mut r4, _) = Raw::login(pt.port(), "app", "app");
    assert_eq!(r4.value("select 'answered'"), "answered");
}

/// After an error in an extended batch the server ignores everything until a Sync, a
/// simple query too: a client that sends one there and leaves without a Sync must not
/// keep its server connection (pool of one: the next client is served).
#[test]
fn a_client_leaving_while_its_query_is_ignored_frees_the_connection() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");
    r.write(&[describe(b'P', "no_such_portal"), query("select 1")].concat());
    let msgs = r.read_n(1);
    assert_eq!(msgs[0].tag, b'E', "{msgs:?}");
    drop(r);
    let (mut r2, _) = Raw::login(pt.port(), "app", "app");
    assert_eq!(r2.value("select 'answered'"), "answered");
}

/// `DEALLOCATE ALL` parsed as the unnamed statement is answered by pgtenant (it acts on
/// the client's view); once the client closes that statement, binding it fails as on a
/// direct connection (it was bound from pgtenant's stale record; found by the `session`
/// fuzz target).
#[test]
fn a_closed_unnamed_view_command_cannot_be_bound() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");
    r.write(
        &[
            parse("", "DEALLOCATE ALL", &[]),
            close(b'S', ""),
            bind("", "", &[]),
            execute("", 0),
            sync(),
        ]
        .concat(),
    );
    let msgs = r.read_until_ready();
    assert_eq!(tags(&msgs), "13EZ", "{msgs:?}");
    assert_eq!(msgs[2].fields()[&b'C'], "26000", "{msgs:?}");
    assert_eq!(r.value("select 'still here'"), "still here");

    // Bound to a named portal, it runs as on a direct connection (it failed with 26000:
    // only the unnamed portal was followed).
    r.write(
        &[
            parse("", "DEALLOCATE ALL", &[]),
            bind("p1", "", &[]),
            describe(b'P', "p1"),
            execute("p1", 0),
            close(b'P', "p1"),
            sync(),
        ]
        .concat(),
    );
    let msgs = r.read_until_ready();
    assert_eq!(tags(&msgs), "12nC3Z", "{msgs:?}");
    assert_eq!(msgs[3].cstr(), "DEALLOCATE ALL", "{msgs:?}");
}

/// A bad row ends a COPY IN with an error; PostgreSQL then reads the client's next
/// messages normally, so a Sync the client sent behind the data is answered, though
/// pgtenant did not count it (it took the COPY for running). The `session` fuzz target
/// found that this mispairing could send a connection back to the pool while its server
/// skipped to a Sync (fixed: an error during COPY IN marks the connection, closed at
/// release). On a real server this sequence did not go wrong before the fix either (the
/// connection was not lent); it guards the path: the client's own answers, then the next
/// client served.
#[test]
fn an_error_ending_copy_in_does_not_lend_a_confused_connection() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");
    r.write(&query("create table copied (x int)"));
    r.read_until_ready();
    r.write(&query("copy copied from stdin"));
    let msgs = r.read_n(1);
    assert_eq!(msgs[0].tag, b'G', "{msgs:?}");
    r.write(
        &[
            copy_data(b"not a number\n"),
            sync(),
            execute("q1", 0),
            sync(),
            execute("q1", 0),
            flush(),
        ]
        .concat(),
    );
    // The COPY's error and ReadyForQuery, the Sync's, the first Execute's error and its
    // Sync's; then the second Execute's error (no Sync: the server skips to one).
    // The connection is closed once pgtenant lost track of it: the last error may not
    // reach this client (on a direct connection it would), but nothing reaches the next.
    let msgs = r.read_n(5);
    assert_eq!(tags(&msgs), "EZZEZ", "{msgs:?}");
    drop(r);
    let (mut r2, _) = Raw::login(pt.port(), "app", "app");
    assert_eq!(r2.value("select 'answered'"), "answered");
}

#[test]
fn raw_describe_and_close_statement() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");

    let mut batch = parse("s1", "select $1::int4 as a, $2::text as b", &[]);
    batch.extend(describe(b'S', "s1"));
    batch.extend(close(b'S', "s1"));
    batch.extend(describe(b'S', "s1"));
    batch.extend(sync());
    r.write(&batch);
    let msgs = r.read_until_ready();
    // ParseComplete, ParameterDescription, RowDescription, CloseComplete, then the
    // second Describe fails: the statement is gone.
    assert_eq!(tags(&msgs), "1tT3EZ", "{msgs:?}");

    let pd = &msgs[1];
    assert_eq!(i16::from_be_bytes([pd.body[0], pd.body[1]]), 2);
    assert_eq!(pd.i32_at(2), 23, "int4 oid");
    assert_eq!(pd.i32_at(6), 25, "text oid");

    let rd = &msgs[2];
    assert_eq!(i16::from_be_bytes([rd.body[0], rd.body[1]]), 2);
    let first = Msg {
        tag: b'x',
        body: rd.body[2..].to_vec(),
    }
    .cstr();
    assert_eq!(first, "a");
    // Second field name follows the first field's 18 bytes of attributes.
    let second_at = 2 + first.len() + 1 + 18;
    let second = Msg {
        tag: b'x',
        body: rd.body[second_at..].to_vec(),
    }
    .cstr();
    assert_eq!(second, "b");

    let f = msgs[4].fields();
    assert_eq!(f[&b'C'], "26000", "{f:?}");
    assert_eq!(f[&b'M'], "prepared statement \"s1\" does not exist");

    // Close of a portal, and of something that does not exist: CloseComplete both.
    let mut batch = pbe("select 1", &[]);
    batch.extend(close(b'P', ""));
    batch.extend(close(b'S', "never_was"));
    batch.extend(sync());
    r.write(&batch);
    assert_eq!(tags(&r.read_until_ready()), "12DC33Z");
}

#[test]
fn raw_several_syncs_in_flight() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, _) = Raw::login(pt.port(), "app", "app");

    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend(pbe("select $1::text", &[Some(&format!("batch{i}"))]));
        batch.extend(sync());
        if i == 4 {
            batch.extend(query("select 'simple in between'"));
        }
    }
    r.write(&batch);
    for i in 0..10 {
        let msgs = r.read_until_ready();
        assert_eq!(tags(&msgs), "12DCZ", "batch {i}: {msgs:?}");
        assert_eq!(msgs[2].value(), format!("batch{i}"));
        if i == 4 {
            let msgs = r.read_until_ready();
            assert_eq!(tags(&msgs), "TDCZ");
            assert_eq!(msgs[1].value(), "simple in between");
        }
    }
    // A transaction spanning several syncs stays on one backend.
    let mut batch = query("begin");
    for _ in 0..5 {
        batch.extend(pbe("select pg_backend_pid()", &[]));
        batch.extend(sync());
    }
    batch.extend(query("commit"));
    r.write(&batch);
    let begin = r.read_until_ready();
    assert_eq!(tags(&begin), "CZ");
    assert_eq!(begin[1].body, b"T");
    let mut pids = Vec::new();
    for _ in 0..5 {
        let msgs = r.read_until_ready();
        assert_eq!(tags(&msgs), "12DCZ");
        assert_eq!(msgs[4].body, b"T");
        pids.push(msgs[2].value());
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let commit = r.read_until_ready();
    assert_eq!(commit[0].cstr(), "COMMIT");
    assert_eq!(commit[1].body, b"I");
}

#[test]
fn raw_error_in_extended_batch() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    // The same batches straight to PostgreSQL and through pgtenant give the same answers.
    let (mut direct, _) = Raw::login(pg.port(), "trustuser", "app");
    let (mut r, _) = Raw::login(pt.port(), "trustuser", "app");
    let mut both = |batch: &[u8]| -> Vec<Msg> {
        direct.write(batch);
        r.write(batch);
        let want = direct.read_until_ready();
        let got = r.read_until_ready();
        assert_eq!(tags(&got), tags(&want), "{got:?}");
        got
    };

    let mut batch = pbe("select 1", &[]);
    batch.extend(pbe("select 1/0", &[]));
    batch.extend(pbe("select 3", &[]));
    batch.extend(parse("", "select 4", &[]));
    batch.extend(sync());
    let msgs = both(&batch);
    // The first statement runs; the second fails (at Bind: 1/0 is folded while
    // planning); everything up to Sync is skipped: one ErrorResponse, then ReadyForQuery.
    assert_eq!(tags(&msgs), "12DC1EZ", "{msgs:?}");
    assert_eq!(msgs[5].fields()[&b'C'], "22012");
    assert_eq!(msgs[6].body, b"I");

    // A failure at Execute time (a row that breaks a check), in the middle of a batch.
    both(&query("create temp table chk (x int check (x < 10))"));
    let mut batch = pbe("insert into chk values ($1)", &[Some("1")]);
    batch.extend(pbe("insert into chk values ($1)", &[Some("11")]));
    batch.extend(pbe("insert into chk values ($1)", &[Some("2")]));
    batch.extend(sync());
    let msgs = both(&batch);
    assert_eq!(tags(&msgs), "12C12EZ", "{msgs:?}");
    assert_eq!(msgs[5].fields()[&b'C'], "23514");
    // The batch was one implicit transaction: the first insert is gone too.
    let msgs = both(&query("select count(*) from chk"));
    assert_eq!(msgs[1].value(), "0");

    // The next batch works.
    let mut batch = pbe("select $1::int", &[Some("5")]);
    batch.extend(sync());
    let msgs = both(&batch);
    assert_eq!(tags(&msgs), "12DCZ");
    assert_eq!(msgs[2].value(), "5");

    // Error inside an explicit transaction: state E until rollback.
    assert_eq!(both(&query("begin"))[1].body, b"T");
    let mut batch = pbe("select 1/0", &[]);
    batch.extend(sync());
    let msgs = both(&batch);
    assert_eq!(tags(&msgs), "1EZ");
    assert_eq!(msgs[2].body, b"E");
    let mut batch = pbe("select 1", &[]);
    batch.extend(sync());
    let msgs = both(&batch);
    assert_eq!(tags(&msgs), "EZ");
    assert_eq!(msgs[0].fields()[&b'C'], "25P02");
    let msgs = both(&query("rollback"));
    assert_eq!(msgs[0].cstr(), "ROLLBACK");
    assert_eq!(msgs[1].body, b"I");
    assert_eq!(r.value("select 'ok'"), "ok");
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    frame(b'd', data)
}

fn copy_done() -> Vec<u8> {
    frame(b'c', &[])
}

#[test]
fn raw_copy_in_extended_protocol_with_sync_before_data() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut direct, _) = Raw::login(pg.port(), "trustuser", "app");
    let (mut r, _) = Raw::login(pt.port(), "trustuser", "app");
    direct.simple("create table raw_copy (id int, t text)");

    // As libpq and tokio-postgres do: Bind/Execute/Sync, then (after CopyInResponse) the
    // data, CopyDone and another Sync. The first Sync gets no ReadyForQuery.
    for (round, rows) in [(0, "1\ta\n2\tb\n"), (1, "3\tc\nbad\td\n")] {
        let mut start = pbe("copy raw_copy from stdin", &[]);
        start.extend(sync());
        let mut rest = copy_data(rows.as_bytes());
        rest.extend(copy_done());
        rest.extend(sync());
        let mut answers = Vec::new();
        for c in [&mut direct, &mut r] {
            c.write(&start);
            let head = c.read_n(3);
            assert_eq!(tags(&head), "12G", "{head:?}");
            c.write(&rest);
            answers.push(c.read_until_ready());
        }
        assert_eq!(tags(&answers[1]), tags(&answers[0]), "round {round}");
        if round == 0 {
            assert_eq!(tags(&answers[1]), "CZ");
            assert_eq!(answers[1][0].cstr(), "COPY 2");
        } else {
            assert_eq!(tags(&answers[1]), "EZ");
            assert_eq!(answers[1][0].fields()[&b'C'], "22P02");
        }
        assert_eq!(answers[1].last().unwrap().body, b"I");
        // The pool's only server connection went back: another client gets it.
        let (mut other, _) = Raw::login(pt.port(), "trustuser", "app");
        other.write(&query("select count(*) from raw_copy"));
        let msgs = other.read_until_ready();
        assert_eq!(tags(&msgs), "TDCZ");
        assert_eq!(msgs[1].value(), "4");
    }
    assert_eq!(r.value("select 'after copy'"), "after copy");
}

// ---------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------

#[test]
fn raw_negotiate_protocol_version() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let mut r = Raw::connect(pt.port());
    r.write(&startup_packet(
        196609,
        &[("user", "app"), ("database", "app"), ("_pq_.foo", "bar")],
    ));
    let v = r.read_msg();
    assert_eq!(v.tag, b'v', "{v:?}");
    assert_eq!(v.i32_at(0), 0, "newest minor version supported");
    assert_eq!(v.i32_at(4), 1, "number of unrecognized options");
    let opt = Msg {
        tag: b'x',
        body: v.body[8..].to_vec(),
    }
    .cstr();
    assert_eq!(opt, "_pq_.foo");
    // The login continues.
    let g = Greeting::from_msgs(r.read_until_ready());
    assert_eq!(g.msgs[0].tag, b'R');
    assert_eq!(g.msgs[0].i32_at(0), 0, "AuthenticationOk");
    assert_eq!(r.value("select current_user"), "app");

    // Version 3.1 without options gets 'v' with no options.
    let mut r = Raw::connect(pt.port());
    r.write(&startup_packet(
        196609,
        &[("user", "app"), ("database", "app")],
    ));
    let v = r.read_msg();
    assert_eq!(v.tag, b'v');
    assert_eq!(v.i32_at(0), 0);
    assert_eq!(v.i32_at(4), 0);
    Greeting::from_msgs(r.read_until_ready());
    assert_eq!(r.value("select 7"), "7");

    // Plain 3.0 gets no 'v'.
    let (_r, g) = Raw::login(pt.port(), "app", "app");
    assert!(g.msgs.iter().all(|m| m.tag != b'v'));
}

#[test]
fn raw_gssenc_and_ssl_requests_refused_then_startup() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);

    let mut r = Raw::connect(pt.port());
    r.write(&request_packet(GSSENC_REQUEST, &[]));
    assert_eq!(r.read_byte(), b'N');
    r.write(&startup_packet(
        196608,
        &[("user", "app"), ("database", "app")],
    ));
    Greeting::from_msgs(r.read_until_ready());
    assert_eq!(r.value("select 'after gssenc'"), "after gssenc");

    let mut r = Raw::connect(pt.port());
    r.write(&request_packet(SSL_REQUEST, &[]));
    assert_eq!(r.read_byte(), b'N');
    r.write(&startup_packet(
        196608,
        &[("user", "app"), ("database", "app")],
    ));
    Greeting::from_msgs(r.read_until_ready());
    assert_eq!(r.value("select 'after ssl'"), "after ssl");

    // libpq's default order: GSSENCRequest, then SSLRequest, then the startup.
    let mut r = Raw::connect(pt.port());
    r.write(&request_packet(GSSENC_REQUEST, &[]));
    assert_eq!(r.read_byte(), b'N');
    r.write(&request_packet(SSL_REQUEST, &[]));
    assert_eq!(r.read_byte(), b'N');
    r.write(&startup_packet(
        196608,
        &[("user", "app"), ("database", "app")],
    ));
    Greeting::from_msgs(r.read_until_ready());
    assert_eq!(r.value("select 'after both'"), "after both");
}

#[test]
fn raw_greeting_has_own_key_and_server_parameters() {
    let pg = PgServer::start();
    let pt = pgtenant_trust(&pg, 1);
    let (mut r, g) = Raw::login(pt.port(), "app", "app");

    let real_pid: i32 = r.value("select pg_backend_pid()").parse().unwrap();
    assert_ne!(g.key.0, real_pid, "BackendKeyData must be pgtenant's own");

    let real_version = pg.psql_ok("show server_version");
    assert_eq!(
        g.params.get("server_version"),
        Some(&real_version),
        "{:?}",
        g.params
    );
    assert_eq!(r.value("show server_version"), real_version);
    for p in [
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        assert!(g.params.contains_key(p), "missing {p}: {:?}", g.params);
    }
    assert_eq!(g.params["server_encoding"], "UTF8");
    assert_eq!(g.params["integer_datetimes"], "on");
    // Greeting order: AuthenticationOk first, ReadyForQuery (idle) last, K before Z.
    assert_eq!(g.msgs[0].tag, b'R');
    let last = g.msgs.last().unwrap();
    assert_eq!((last.tag, last.body.as_slice()), (b'Z', &b"I"[..]));

    // Two clients get different keys.
    let (_r2, g2) = Raw::login(pt.port(), "trustuser", "app");
    assert_ne!(g.key, g2.key);
}

// ---------------------------------------------------------------------------------------
// COPY
// ---------------------------------------------------------------------------------------

fn copy_rows(n: usize) -> String {
    let mut s = String::new();
    for i in 1..=n {
        s.push_str(&format!("{i}\trow number {i}\t{}\n", i * 7 % 1000));
    }
    s
}

#[tokio::test]
async fn copy_with_psql() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let direct = pg.client("app", "secret", "app").await;
    direct
        .batch_execute(
            "create table copy_a (id int primary key, t text, n int); \
             create table copy_b (id int primary key, t text, n int)",
        )
        .await
        .unwrap();
    let data = copy_rows(10_000);

    // COPY FROM STDIN with data on psql's stdin.
    let mut cmd = psql(&pt);
    cmd.args(["-v", "ON_ERROR_STOP=1", "-c", "COPY copy_a FROM STDIN"]);
    let out = run_with_stdin(cmd, data.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "COPY 10000");

    // \copy reads psql's stdin too.
    let mut cmd = psql(&pt);
    cmd.args(["-v", "ON_ERROR_STOP=1", "-c", "\\copy copy_b from pstdin"]);
    let out = run_with_stdin(cmd, data.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "COPY 10000");

    let n: i64 = direct
        .query_one("select count(*) from copy_a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10_000);

    // COPY TO STDOUT gives the same bytes back.
    for table in ["copy_a", "copy_b"] {
        let mut cmd = psql(&pt);
        cmd.args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("COPY (select * from {table} order by id) TO STDOUT"),
        ]);
        let out = run_with_stdin(cmd, b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout) == data, "{table}: COPY TO STDOUT differs");
    }

    // Bad data: the server's error, and the same connection keeps working.
    let script = "COPY copy_a FROM STDIN;\n\
                  20001\tfine\t1\n\
                  oops\tbad\t2\n\
                  \\.\n\
                  SELECT 'still alive', count(*) FROM copy_a;\n";
    let mut cmd = psql(&pt);
    cmd.args(["-At", "-f", "-"]);
    let out = run_with_stdin(cmd, script.as_bytes());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid input syntax for type integer: \"oops\""),
        "{stderr}"
    );
    assert!(stderr.contains("COPY copy_a, line 2"), "{stderr}");
    assert_eq!(text(&out.stdout).trim(), "still alive|10000", "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_tokio_postgres() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 1, &[]);
    let c = connect(&pt.url("app", "secret", "app")).await;
    c.batch_execute("create table tp_copy (id int primary key, t text, n int)")
        .await
        .unwrap();
    let data = copy_rows(10_000);

    let sink = c.copy_in("COPY tp_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    // In several chunks.
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 10_000);
    // tokio-postgres sends a Sync before the data (which the server skips in COPY mode)
    // and one after CopyDone: the only server connection must still go back to the pool.
    let other = connect(&pt.url("app", "secret", "app")).await;
    let r = tokio::time::timeout(Duration::from_secs(10), other.query_one("select 1", &[]))
        .await
        .unwrap_or_else(|_| panic!("server connection held after COPY\n{}", pt.logs()))
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 1);

    let stream = c
        .copy_out("COPY (select * from tp_copy order by id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut back = Vec::new();
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        back == data.as_bytes(),
        "copy_out differs from what went in"
    );

    // Bad data at the start of a large COPY: the server fails it while the rest is still
    // on its way; the client gets the server's error and keeps working.
    let mut bad = String::from("x\tbad\t1\n");
    bad.push_str(&copy_rows(200_000));
    let sink = c.copy_in("COPY tp_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut err = None;
    for chunk in bad.as_bytes().chunks(64 * 1024) {
        if let Err(e) = sink.send(Bytes::copy_from_slice(chunk)).await {
            err = Some(e);
            break;
        }
    }
    let err = match err {
        Some(e) => e,
        None => sink.finish().await.unwrap_err(),
    };
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code(), &SqlState::INVALID_TEXT_REPRESENTATION);
    assert_eq!(db.message(), "invalid input syntax for type integer: \"x\"");
    let n: i64 = c
        .query_one("select count(*) from tp_copy", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10_000);

    // The only server connection (pool size 1) is free for another client.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        other.query_one("select 'other client'", &[]),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "another client could not get the server connection after a failed COPY\n\
             --- pgtenant ---\n{}",
            pt.logs()
        )
    })
    .unwrap();
    assert_eq!(r.get::<_, &str>(0), "other client");
    assert_eq!(
        c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

// ---------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------

fn pgbench(pt: &Pgtenant, args: &[&str]) -> Output {
    Command::new(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pt.port().to_string(), "-U", "app"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", "secret")
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .output()
        .expect("run pgbench")
}

#[test]
fn pgbench_through_pgtenant() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 4, &[]);

    let out = pgbench(&pt, &["-i", "-s", "2"]);
    assert!(
        out.status.success(),
        "pgbench -i failed:\n{}\n{}\n--- pgtenant ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        pt.logs()
    );
    let out = std::process::Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args([
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            "select count(*) from pgbench_accounts",
        ])
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "200000");

    for mode in ["extended", "simple"] {
        let started = Instant::now();
        let out = pgbench(&pt, &["-M", mode, "-c", "8", "-j", "2", "-T", "5"]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench -M {mode} failed:\n{stdout}\n{}\n--- pgtenant ---\n{}",
            text(&out.stderr),
            pt.logs()
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "-M {mode}:\n{stdout}"
        );
        let processed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no transaction count in:\n{stdout}"));
        assert!(processed > 0, "-M {mode}: nothing processed:\n{stdout}");
        assert!(started.elapsed() < Duration::from_secs(40));
    }
    // Never more server connections than the pool size.
    let n = std::process::Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args(["-U", "app", "-d", "app", "-c"])
        .arg("select count(*) from pg_stat_activity where usename = 'app' and application_name not like 'pgtenant %' and pid <> pg_backend_pid()")
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    let n: i64 = text(&n.stdout).trim().parse().unwrap();
    assert!(n <= 4, "{n} server connections for pool_size 4");
}

// ---------------------------------------------------------------------------------------
// Transaction status tracking
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_stays_on_one_backend() {
    let pg = PgServer::start();
    let pt = pgtenant(&pg, 2, &[]);
    let url = pt.url("app", "secret", "app");
    let direct = pg.client("app", "secret", "app").await;
    direct
        .batch_execute("create table tx_t (id int, who text)")
        .await
        .unwrap();

    // Other clients keep the pool busy.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut busy = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        let stop = stop.clone();
        let running = running.clone();
        busy.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.simple_query("select pg_backend_pid(), pg_sleep(0.005)")
                    .await
                    .unwrap();
                if n == 0 {
                    running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                n += 1;
            }
            n
        }));
    }
    // The transactions below start once every busy client has run a statement (on a
    // loaded machine the three could otherwise still be logging in when they end).
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the busy clients did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut c = connect(&url).await;
    for round in 0..3 {
        let tx = c.transaction().await.unwrap();
        let pid: i32 = tx
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        for i in 0..10i32 {
            tx.execute(
                "insert into tx_t values ($1, 'mine')",
                &[&(round * 100 + i)],
            )
            .await
            .unwrap();
            let row = tx
                .query_one(
                    "select pg_backend_pid(), count(*) from tx_t where id >= $1",
                    &[&(round * 100)],
                )
                .await
                .unwrap();
            assert_eq!(
                row.get::<_, i32>(0),
                pid,
                "backend changed inside a transaction"
            );
            assert_eq!(row.get::<_, i64>(1), i as i64 + 1, "own writes not visible");
            // Simple protocol statements stay there too.
            let m = tx.simple_query("select pg_backend_pid()").await.unwrap();
            let Some(SimpleQueryMessage::Row(r)) =
                m.iter().find(|x| matches!(x, SimpleQueryMessage::Row(_)))
            else {
                panic!("no row")
            };
            assert_eq!(r.get(0).unwrap(), pid.to_string());
        }
        // Nobody else sees the uncommitted rows.
        let others: i64 = direct
            .query_one(
                "select count(*) from tx_t where id >= $1",
                &[&(round * 100)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(others, 0);
        if round == 1 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
    let committed: i64 = direct
        .query_one("select count(*) from tx_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        committed, 20,
        "rounds 0 and 2 committed, round 1 rolled back"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        assert!(b.await.unwrap() > 0, "a busy client never ran");
    }
}
