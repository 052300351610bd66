//! The unnamed prepared statement in transaction mode: a direct connection keeps it
//! across transactions, until the next Parse of it, a simple Query or a Close of it.
//! Drivers without a statement cache rely on it (asyncpg with `statement_cache_size=0`
//! or `max_cacheable_statement_size` Parses and Describes in one transaction, looks up
//! the parameter types, then Binds in another). Every case runs directly and through
//! pgtenant (one server connection, shared with another client) and the two must agree.
use crate::support;

use support::wire::{bind, close, describe, execute, parse, query, sync, Msg, Raw};
use support::{PgServer, Pgtenant};

/// pgtenant in transaction mode with one server connection (the clients share it),
/// clients by trust.
fn start(pg: &PgServer) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    Pgtenant::start(
        &[
            "run",
            "--upstream",
            &upstream,
            "--pool-mode",
            "transaction",
            "--pool-size",
            "1",
            "--auth-type",
            "trust",
        ],
        &[],
    )
}

/// What one exchange gave: the tags, then each DataRow's first value and each error's
/// SQLSTATE.
fn transcript(msgs: &[Msg]) -> String {
    let mut out = support::wire::tags(msgs);
    for m in msgs {
        match m.tag {
            b'D' => out.push_str(&format!(" {}", m.value())),
            b'E' => out.push_str(&format!(" {}", m.field(b'C').unwrap_or_default())),
            _ => {}
        }
    }
    out
}

/// The client's exchanges, and another client's between them (on pgtenant it shares the
/// one server connection); what the client got, exchange by exchange.
fn run(port: u16, user: &str) -> Vec<String> {
    let login = || Raw::login(port, &[("user", user), ("database", "app")]);
    let (mut a, mut b) = (login(), login());
    let mut got = Vec::new();
    let other = |b: &mut Raw| {
        b.exchange(&[
            parse("", "select 'other'", &[]),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]);
    };
    let mut step = |a: &mut Raw, msgs: &[Vec<u8>]| got.push(transcript(&a.exchange(msgs)));
    // Parse and Describe, then Bind in another transaction, another client between.
    step(
        &mut a,
        &[
            parse("", "select $1::int + 100", &[]),
            describe(b'S', ""),
            sync(),
        ],
    );
    other(&mut b);
    step(&mut a, &[bind("", "", &["5"]), execute(""), sync()]);
    // Again, and a Describe of it alone.
    other(&mut b);
    step(&mut a, &[describe(b'S', ""), sync()]);
    step(&mut a, &[bind("", "", &["6"]), execute(""), sync()]);
    // A transaction block in between that changes a setting (pgtenant checks the
    // session after it with a query of its own on the server connection).
    step(
        &mut a,
        &[query("begin; set local work_mem = '8MB'; commit")],
    );
    // ...which, being a simple Query, ends the unnamed statement, as directly.
    other(&mut b);
    step(&mut a, &[bind("", "", &["7"]), execute(""), sync()]);
    // A new one, a setting changed through the extended protocol, then Bind elsewhere.
    step(&mut a, &[parse("", "select $1::text || '!'", &[]), sync()]);
    step(
        &mut a,
        &[
            parse(
                "s1",
                "select set_config('application_name', 'x', false)",
                &[],
            ),
            bind("", "s1", &[]),
            execute(""),
            sync(),
        ],
    );
    other(&mut b);
    step(&mut a, &[bind("", "", &["hi"]), execute(""), sync()]);
    // Another client's simple Query between (it ends that server's unnamed statement).
    b.exchange(&[query("select 1")]);
    step(&mut a, &[bind("", "", &["q"]), execute(""), sync()]);
    // An error early in a batch: the server skips the rest, a parse again of the kept
    // statement included, and still holds another client's unnamed statement; the
    // next Bind must run the client's own.
    other(&mut b);
    step(
        &mut a,
        &[
            parse("s2", "select 1/0", &[]),
            bind("", "s2", &[]),
            execute(""),
            bind("", "", &["y"]),
            execute(""),
            sync(),
        ],
    );
    step(&mut a, &[bind("", "", &["z"]), execute(""), sync()]);
    // A Close of it ends it.
    step(&mut a, &[close(b'S', ""), sync()]);
    other(&mut b);
    step(&mut a, &[bind("", "", &["x"]), execute(""), sync()]);
    // One whose Parse failed is not kept.
    step(&mut a, &[parse("", "select nosuchcolumn", &[]), sync()]);
    other(&mut b);
    step(&mut a, &[bind("", "", &[]), execute(""), sync()]);
    got
}

/// The unnamed statement outlives its transaction through pgtenant as it does directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_lives_as_on_a_direct_connection() {
    let pg = PgServer::start();
    let pt = start(&pg);
    let (direct_port, port) = (pg.port(), pt.port());
    let (direct, pooled) =
        tokio::task::spawn_blocking(move || (run(direct_port, "trustuser"), run(port, "app")))
            .await
            .unwrap();
    // What a direct connection says (the Bind after a Query or Close: 26000).
    assert_eq!(direct[1], "2DCZ 105", "{direct:?}");
    assert_eq!(direct[5], "EZ 26000", "{direct:?}");
    assert_eq!(pooled, direct);
}

/// A Parse of the unnamed statement that pgtenant answers itself (a BEGIN and COMMIT
/// it holds, no server) ends the client's earlier unnamed statement: a Bind after runs
/// what a direct connection runs, or fails with 26000, never the earlier statement still
/// on the server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_statement_the_client_replaced_is_never_run() {
    let pg = PgServer::start();
    let pt = start(&pg);
    let (direct_port, port) = (pg.port(), pt.port());
    let run = move |port: u16, user: &str| {
        let mut a = Raw::login(port, &[("user", user), ("database", "app")]);
        a.exchange(&[parse("", "select 'earlier'", &[]), sync()]);
        for sql in ["begin", "commit"] {
            a.exchange(&[parse("", sql, &[]), bind("", "", &[]), execute(""), sync()]);
        }
        transcript(&a.exchange(&[bind("", "", &[]), execute(""), sync()]))
    };
    let (direct, pooled) =
        tokio::task::spawn_blocking(move || (run(direct_port, "trustuser"), run(port, "app")))
            .await
            .unwrap();
    assert!(!pooled.contains("earlier"), "{pooled}");
    assert!(
        pooled == direct || pooled == "EZ 26000",
        "{pooled} (directly: {direct})"
    );
}
