//! Prepared statements pgtenant shares between clients, after a schema change: a client
//! that prepares a statement after an `ALTER`/`DROP`/`CREATE` gets one planned against
//! the new schema, as on a direct connection, not the copy another client prepared on
//! the same server connection before the change (`StatementRegistry::new_schema`).

use crate::support;

use support::{PgServer, Pgtenant};

/// pgtenant in transaction mode with one server connection (every client on the same
/// backend, where the earlier client's statement is).
fn start(pg: &PgServer) -> Pgtenant {
    Pgtenant::start(
        &[
            "run",
            "--upstream",
            &pg.url("app", "secret", "app"),
            "--pool-mode",
            "transaction",
            "--pool-size",
            "1",
        ],
        &[],
    )
}

/// Client A prepares `select * from t where id = $1` (tokio-postgres names its
/// statements), a column is added and one changes type, then client B prepares the same
/// text: B sees three columns and the new type. Before the change, B was handed A's
/// statement: `0A000 cached plan must not change result type`, and a text parameter
/// still typed as an integer (`22P02`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_after_a_schema_change_sees_the_new_schema() {
    let pg = PgServer::start();
    let p = start(&pg);
    let url = p.url("app", "secret", "app");
    let setup = support::connect(&url).await;
    setup
        .batch_execute("create table t (id int primary key, c int); insert into t values (1, 10)")
        .await
        .unwrap();
    let a = support::connect(&url).await;
    let sel = a.prepare("select * from t where id = $1").await.unwrap();
    assert_eq!(a.query(&sel, &[&1i32]).await.unwrap()[0].len(), 2);
    let ins = a.prepare("insert into t values ($1, $2)").await.unwrap();
    a.execute(&ins, &[&2i32, &20i32]).await.unwrap();

    // The change, by a third client, through the extended protocol as psycopg sends it.
    setup
        .execute("alter table t add column d int", &[])
        .await
        .unwrap();
    setup
        .batch_execute("alter table t alter column c type text")
        .await
        .unwrap();

    let b = support::connect(&url).await;
    let rows = b
        .query("select * from t where id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(rows[0].len(), 3, "B planned against the old table");
    let ins = b.prepare("insert into t values ($1, $2)").await.unwrap();
    assert_eq!(ins.params()[1], tokio_postgres::types::Type::TEXT);
    b.execute(&ins, &[&3i32, &"abc"]).await.unwrap();
    let c: String = b
        .query_one("select c from t where id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(c, "abc");

    // A temp table is no schema change for anyone else: B's statement stays shared.
    use pgtenant::router::command::{changes_schema, classify};
    assert!(!changes_schema(&classify("create temp table x (a int)")));
    assert!(changes_schema(&classify(
        "select 1; drop table if exists x"
    )));
}

/// A schema change made behind pgtenant's back: the first client to meet the stale
/// statement gets the server's error (as the client that prepared it would on a direct
/// connection), and from then on the text is prepared afresh for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outside_schema_change_the_stale_error_comes_once() {
    let pg = PgServer::start();
    let p = start(&pg);
    let url = p.url("app", "secret", "app");
    let a = support::connect(&url).await;
    a.batch_execute("create table u (id int primary key); insert into u values (1)")
        .await
        .unwrap();
    let sel = a.prepare("select * from u where id = $1").await.unwrap();
    assert_eq!(a.query(&sel, &[&1i32]).await.unwrap()[0].len(), 1);
    pg.app_admin("alter table u add column v int").await;
    let b = support::connect(&url).await;
    let first = b.query("select * from u where id = $1", &[&1i32]).await;
    let e = first.expect_err("the statement A prepared before the change is stale");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e:?}");
    // What pgtenant knows it by besides the (translatable) message.
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.routine(), Some("RevalidateCachedQuery"), "{db:?}");
    let rows = b
        .query("select * from u where id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(rows[0].len(), 2);
    let c = support::connect(&url).await;
    let rows = c
        .query("select * from u where id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(rows[0].len(), 2);
}
