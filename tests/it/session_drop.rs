//! A client's session dropped in the middle of a transaction (its task panicked, or its
//! runtime went away) gives its server connection back to the pool's accounting: the
//! connection is closed, and the pool's slot is free for the next client. Driven through
//! pgtenant's library (`frontend::handle_client` on a `Context` from
//! `server::build_context`) so that the session's task can be dropped at a chosen point,
//! against a real PostgreSQL.
use crate::support;

use std::time::Duration;

use pgtenant::config::Overrides;
use support::{PgServer, TempDir};
use tokio::net::UnixStream;
use tokio_postgres::NoTls;

/// A client of `ctx` over a socket pair, logged in (auth trust) on the current runtime.
async fn client(
    ctx: &std::sync::Arc<pgtenant::context::Context>,
    listener: &pgtenant::config::Listener,
) -> tokio_postgres::Client {
    let (a, b) = UnixStream::pair().unwrap();
    tokio::spawn(pgtenant::frontend::handle_client(
        pgtenant::net::Stream::Unix(Box::new(b)),
        listener.clone(),
        ctx.clone(),
        tokio_util::task::TaskTracker::new(),
    ));
    let (c, conn) = tokio_postgres::Config::new()
        .user("app")
        .dbname("app")
        .connect_raw(a, NoTls)
        .await
        .expect("log in through pgtenant");
    tokio::spawn(conn);
    c
}

#[test]
fn a_session_dropped_mid_transaction_frees_its_pool_slot() {
    let pg = PgServer::start();
    let dir = TempDir::new("session-drop");
    let cfg = dir.config_file(&format!(
        "listen = \"127.0.0.1:1\"\nupstream = \"{}\"\nauth_type = \"trust\"\nhttp_listen = \"\"\n\
         pool_size = 1\nquery_wait_timeout = 3\n",
        pg.url("app", "secret", "app")
    ));
    let settings = pgtenant::config::load(Some(&cfg), &Overrides::default()).expect("config");
    let ctx = pgtenant::server::build_context(&settings, &Overrides::default()).expect("context");
    let listener = settings.listeners[0].clone();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    // A client holds the pool's one connection inside a transaction (session mode's
    // connection is taken at login, transaction mode's here).
    let first = rt();
    first.block_on(async {
        let c = client(&ctx, &listener).await;
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        std::mem::forget(c);
    });
    // Its task is dropped where it waits (the runtime goes, with every task on it).
    drop(first);

    let second = rt();
    second.block_on(async {
        let c = client(&ctx, &listener).await;
        let r = tokio::time::timeout(Duration::from_secs(10), c.query_one("select 41 + 1", &[]))
            .await
            .expect("answered within 10 s");
        let row =
            r.expect("the dropped session's pool slot is free: a new client gets a connection");
        assert_eq!(row.get::<_, i32>(0), 42);
        // The dropped transaction's backend is gone (its connection was closed, not
        // lent again with a transaction open).
        let n = pg
            .wait_none_idle_in_transaction("app", Duration::from_secs(5))
            .await;
        assert_eq!(
            n, 0,
            "the dropped session's transaction is still open on the server"
        );
    });
}
