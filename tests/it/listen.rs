//! LISTEN/NOTIFY through pgtenant: in transaction mode pgtenant listens on behalf of its
//! clients (one listening server connection per pool) and delivers notifications to each
//! subscribed client; in session mode LISTEN works on the client's own connection.
use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{PgServer, Pgtenant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

/// pgtenant (transaction mode unless `extra` says otherwise) in front of `pg`, with
/// `pool_size` server connections.
fn start(pg: &PgServer, pool_size: u32, extra: &[&str]) -> Pgtenant {
    let upstream = pg.url("app", "secret", "app");
    let size = pool_size.to_string();
    let mut args = vec!["run", "--upstream", &upstream, "--pool-size", &size];
    args.extend_from_slice(extra);
    Pgtenant::start(&args, &[])
}

/// A client whose notifications arrive on a channel.
async fn listener(url: &str) -> (Client, mpsc::UnboundedReceiver<Notification>) {
    let (client, rx, _) = watched_listener(url).await;
    (client, rx)
}

/// [`listener`], and how its connection ended (the error, if it ended with one).
async fn watched_listener(
    url: &str,
) -> (
    Client,
    mpsc::UnboundedReceiver<Notification>,
    oneshot::Receiver<Option<tokio_postgres::Error>>,
) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    let (end_tx, end) = oneshot::channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        let mut error = None;
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let _ = end_tx.send(error);
    });
    (client, rx, end)
}

/// The FATAL a watched listener's connection ended with: its SQLSTATE and message.
async fn ended_with(end: oneshot::Receiver<Option<tokio_postgres::Error>>) -> (String, String) {
    let e = tokio::time::timeout(Duration::from_secs(10), end)
        .await
        .expect("the client is ended within 10 s")
        .expect("its connection task reported")
        .expect("it ended with an error");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error: {e:?}"));
    assert_eq!(db.severity(), "FATAL", "{db:?}");
    (db.code().code().to_owned(), db.message().to_owned())
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Notification>) -> Option<Notification> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_delivers_notifications_to_subscribers() {
    let pg = PgServer::start();
    let p = start(&pg, 1, &[]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx) = listener(&url).await;
    let (b, mut b_rx) = listener(&url).await;
    let c = support::connect(&url).await;

    a.batch_execute("LISTEN jobs").await.unwrap();
    b.batch_execute("LISTEN \"Other Chan\"").await.unwrap();
    // The only server connection keeps serving everyone while A and B listen.
    for i in 0..5 {
        let r = c.query_one("select $1::int + 1", &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), i + 1);
    }
    c.batch_execute("NOTIFY jobs, 'first'").await.unwrap();
    let n = next(&mut a_rx).await.expect("A gets its notification");
    assert_eq!((n.channel(), n.payload()), ("jobs", "first"));
    c.batch_execute("select pg_notify('Other Chan', 'second')")
        .await
        .unwrap();
    let n = next(&mut b_rx).await.expect("B gets its notification");
    assert_eq!((n.channel(), n.payload()), ("Other Chan", "second"));
    // Nobody got the other's.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a_rx.recv())
            .await
            .is_err()
    );

    // A notification sent by the listener itself inside a transaction arrives after commit.
    a.batch_execute("BEGIN; NOTIFY jobs, 'own'; COMMIT")
        .await
        .unwrap();
    let n = next(&mut a_rx).await.expect("own notification");
    assert_eq!(n.payload(), "own");

    // UNLISTEN stops delivery.
    a.batch_execute("UNLISTEN jobs").await.unwrap();
    c.batch_execute("NOTIFY jobs, 'late'").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), a_rx.recv())
            .await
            .is_err(),
        "UNLISTEN ignored"
    );

    // The listening connection is pgtenant's own, named as such.
    let admin = pg.admin_client().await;
    let n: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where application_name = 'pgtenant listen'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_listen_works_on_the_clients_own_connection() {
    let pg = PgServer::start();
    let p = start(&pg, 2, &["--pool-mode", "session"]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx) = listener(&url).await;
    let c = support::connect(&url).await;
    a.batch_execute("LISTEN s").await.unwrap();
    c.batch_execute("NOTIFY s, 'hi'").await.unwrap();
    let n = next(&mut a_rx).await.expect("notification in session mode");
    assert_eq!(n.payload(), "hi");
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn msg(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

/// One client cannot load a pool's listening connection with channels: past
/// `max_listen_channels` (per client) or `max_pool_listen_channels` (distinct, per pool) a
/// LISTEN fails with 54000, through the simple and the extended protocol, outside and
/// inside a transaction (which then fails, as any error would); the others' LISTENs and
/// notifications go on, and channels come back with UNLISTEN and when a client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_channels_are_capped_per_client_and_per_pool() {
    let pg = PgServer::start();
    let dir = support::TempDir::new("listen-caps");
    let conf = dir.config_file("max_listen_channels = 3\nmax_pool_listen_channels = 4\n");
    let p = start(&pg, 2, &["--config", conf.to_str().unwrap()]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx) = listener(&url).await;
    let (b, mut b_rx) = listener(&url).await;
    let c = support::connect(&url).await;

    a.batch_execute("LISTEN a1; ").await.unwrap();
    a.batch_execute("LISTEN a2").await.unwrap();
    a.batch_execute("LISTEN a3").await.unwrap();
    // Listening again to one of its channels takes nothing more.
    a.batch_execute("LISTEN a1").await.unwrap();
    // Simple protocol, outside a transaction.
    let e = a.batch_execute("LISTEN a4").await.unwrap_err();
    assert_eq!(code(&e), "54000", "{e:?}");
    assert!(msg(&e).contains("max_listen_channels"), "{e}");
    // Extended protocol (the unnamed statement), outside a transaction.
    let e = a.query_typed("LISTEN a4", &[]).await.unwrap_err();
    assert_eq!(code(&e), "54000", "{e:?}");
    // Inside a transaction the transaction fails, as on a direct connection.
    a.batch_execute("BEGIN").await.unwrap();
    let e = a.batch_execute("LISTEN a4").await.unwrap_err();
    assert_eq!(code(&e), "54000", "{e:?}");
    let e = a.batch_execute("select 1").await.unwrap_err();
    assert_eq!(
        code(&e),
        "25P02",
        "the transaction goes on after the refusal: {e:?}"
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let e = a.query_typed("LISTEN a4", &[]).await.unwrap_err();
    assert_eq!(code(&e), "54000", "{e:?}");
    let e = a.batch_execute("select 1").await.unwrap_err();
    assert_eq!(code(&e), "25P02", "{e:?}");
    a.batch_execute("ROLLBACK").await.unwrap();
    // The refused client still hears its channels.
    c.batch_execute("NOTIFY a3, 'x'").await.unwrap();
    assert_eq!(next(&mut a_rx).await.expect("a3").channel(), "a3");

    // The pool holds a1..a3; B's first channel is the fourth and last distinct one.
    b.batch_execute("LISTEN b1").await.unwrap();
    let e = b.batch_execute("LISTEN b2").await.unwrap_err();
    assert_eq!(code(&e), "54000", "{e:?}");
    assert!(msg(&e).contains("max_pool_listen_channels"), "{e}");
    // A channel someone listens to already is not a new one.
    b.batch_execute("LISTEN a1").await.unwrap();
    // UNLISTEN gives a channel back (a1 stays: B still listens to it).
    a.batch_execute("UNLISTEN a2").await.unwrap();
    b.batch_execute("LISTEN b2").await.unwrap();
    c.batch_execute("NOTIFY b2, 'y'; NOTIFY a1, 'z'")
        .await
        .unwrap();
    let got = [
        next(&mut b_rx).await.expect("b2"),
        next(&mut b_rx).await.expect("a1 for B"),
    ];
    assert_eq!(
        [got[0].channel(), got[1].channel()],
        ["b2", "a1"],
        "B hears both"
    );
    assert_eq!(next(&mut a_rx).await.expect("a1 for A").channel(), "a1");
    // An UNLISTEN of a channel the client does not listen to is answered and costs nothing.
    b.batch_execute("UNLISTEN nothing").await.unwrap();
    // Fill the pool again (a1 a3 b2 c1), so that B's next LISTEN meets the pool's limit.
    b.batch_execute("UNLISTEN b1").await.unwrap();
    c.batch_execute("LISTEN c1").await.unwrap();
    let e = b.batch_execute("LISTEN b3").await.unwrap_err();
    assert!(msg(&e).contains("max_pool_listen_channels"), "{e:?}");
    // A client that leaves gives its channels back: a3 goes with A (a1 stays, B's).
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match b.batch_execute("LISTEN b3").await {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(code(&e), "54000", "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("A's channels were not given back: {e:?}"),
        }
    }
    // B listens to a1 b2 b3 and hears them.
    c.batch_execute("NOTIFY b3, 'w'").await.unwrap();
    assert_eq!(next(&mut b_rx).await.expect("b3").channel(), "b3");
}

/// A channel named longer than 63 bytes is the channel of its first 63 bytes, as
/// PostgreSQL truncates identifiers: its notifications reach the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_channel_name_is_truncated_as_postgresql_does() {
    let pg = PgServer::start();
    let p = Pgtenant::start(&["run", "--upstream", &pg.url("app", "secret", "app")], &[]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx) = listener(&url).await;
    let c = support::connect(&url).await;
    let long = "c".repeat(70);
    a.batch_execute(&format!("LISTEN {long}")).await.unwrap();
    c.query("select pg_notify($1, 'p')", &[&"c".repeat(63)])
        .await
        .unwrap();
    let n = next(&mut a_rx)
        .await
        .expect("the truncated channel's notification");
    assert_eq!(n.channel(), "c".repeat(63));
    a.batch_execute(&format!("UNLISTEN {long}")).await.unwrap();
    c.batch_execute(&format!("NOTIFY {long}")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a_rx.recv())
            .await
            .is_err(),
        "UNLISTEN of the long name ends the truncated channel"
    );
}

/// In front of a hot standby, which refuses LISTEN (25006), a LISTEN fails as on a direct
/// connection, at once, with the server's message, by the simple and by the extended
/// protocol; the client goes on, and a LISTEN right after gets the same answer without a
/// new server connection. It used to answer "LISTEN" after 10 s and deliver nothing.
/// Inside a transaction block (answered before the refusal comes) the client is ended
/// with the server's error once its transaction is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_the_server_refuses_fails_as_on_a_direct_connection() {
    let pg = PgServer::builder().standby().start();
    let direct = support::connect(&pg.url("app", "secret", "app")).await;
    let want = direct.batch_execute("LISTEN jobs").await.unwrap_err();
    assert_eq!(code(&want), "25006", "{want:?}");
    let p = start(&pg, 2, &[]);
    let url = p.url("app", "secret", "app");
    let c = support::connect(&url).await;
    for round in 0..2 {
        let t0 = std::time::Instant::now();
        let simple = c.batch_execute("LISTEN jobs").await.unwrap_err();
        assert_eq!(
            (code(&simple), msg(&simple)),
            (code(&want), msg(&want)),
            "round {round}"
        );
        let extended = c.execute("LISTEN jobs", &[]).await.unwrap_err();
        assert_eq!((code(&extended), msg(&extended)), (code(&want), msg(&want)));
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        let r = c.query_one("select 1 + $1::int", &[&round]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), 1 + round);
        // Past the remembered refusal, the server is asked again, and refuses again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    // Inside a transaction block the LISTEN is answered before the refusal comes: its
    // client is ended with the server's error once the transaction is over, never left
    // believing it listens.
    let (w, _w_rx, w_end) = watched_listener(&url).await;
    w.batch_execute("BEGIN").await.unwrap();
    let listened = w.batch_execute("LISTEN jobs").await;
    let committed = w.batch_execute("COMMIT").await;
    let (ended_code, ended_message) = ended_with(w_end).await;
    assert_eq!(
        (ended_code, ended_message),
        (code(&want), msg(&want)),
        "LISTEN: {listened:?}, COMMIT: {committed:?}"
    );
}

/// A LISTEN sent as a named prepared statement (tokio-postgres' `execute`) is the
/// client's too: its notifications arrive, and nothing listens on the pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_listen_is_the_clients() {
    let pg = PgServer::start();
    let p = start(&pg, 1, &[]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx) = listener(&url).await;
    a.execute("LISTEN jobs", &[]).await.unwrap();
    let c = support::connect(&url).await;
    c.batch_execute("NOTIFY jobs, 'one'").await.unwrap();
    let n = next(&mut a_rx).await.expect("the notification");
    assert_eq!(n.payload(), "one");
    let pooled: i64 = support::connect(&pg.url("app", "secret", "app"))
        .await
        .query_one(
            "select count(*) from pg_stat_activity where query ilike 'listen%' and application_name not like 'pgtenant %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pooled, 0, "a pooled connection ran the client's LISTEN");
}

/// A notification names its sender as that client knows itself (its BackendKeyData
/// pid), as on a direct connection where it is the sender's backend pid: a client can
/// tell its own notifications from others'. Without pgtenant's renaming they carried the
/// pid of a pooled server connection, which no client knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_names_its_sender_as_the_sender_knows_itself() {
    let pg = PgServer::start();
    let p = start(&pg, 2, &["--auth-type", "trust"]);
    let port = p.port();
    tokio::task::spawn_blocking(move || {
        use support::wire::{query, Raw};
        let notification = |r: &mut Raw| loop {
            let m = r.read_msg();
            if m.tag == b'A' {
                return m.notification();
            }
        };
        let mut a = Raw::connect(port);
        let mut b = Raw::connect(port);
        assert_ne!(a.key.0, b.key.0);
        a.exchange(&[query("LISTEN jobs")]);
        for i in 0..5 {
            b.exchange(&[query(&format!("NOTIFY jobs, 'from b {i}'"))]);
            let (pid, channel, payload) = notification(&mut a);
            assert_eq!((channel.as_str(), payload), ("jobs", format!("from b {i}")));
            assert_eq!(pid, b.key.0, "b's notification {i}");
            // Its own, in the answer to its own NOTIFY (before ReadyForQuery).
            let msgs = a.exchange(&[query(&format!("NOTIFY jobs, 'from a {i}'"))]);
            let own = msgs
                .iter()
                .find(|m| m.tag == b'A')
                .expect("a's own notification")
                .notification();
            assert_eq!(own, (a.key.0, "jobs".to_string(), format!("from a {i}")));
        }
    })
    .await
    .unwrap();
}

/// A direct connection that misses notifications is a broken one, and its client knows to
/// resync. Through pgtenant the listening server connection is shared: when it breaks,
/// every client listening through it is ended with 08006 (never left waiting for
/// notifications that were lost), a pinned one too, clients that do not listen are
/// untouched, and the next
/// LISTEN works on a new listening connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_listening_connection_ends_its_listeners() {
    let pg = PgServer::start();
    let p = start(&pg, 4, &[]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx, a_end) = watched_listener(&url).await;
    let (b, _b_rx, b_end) = watched_listener(&url).await;
    let (e, mut e_rx, e_end) = watched_listener(&url).await;
    let (f, _f_rx, f_end) = watched_listener(&url).await;
    let c = support::connect(&url).await;
    a.batch_execute("LISTEN jobs").await.unwrap();
    // B is pinned to a server connection (its temp table): attached between
    // transactions, it is ended all the same.
    b.batch_execute("CREATE TEMP TABLE mine (x int)")
        .await
        .unwrap();
    b.batch_execute("LISTEN other").await.unwrap();
    e.batch_execute("LISTEN jobs").await.unwrap();
    f.batch_execute("LISTEN other").await.unwrap();
    c.batch_execute("NOTIFY jobs, 'before'").await.unwrap();
    assert_eq!(next(&mut a_rx).await.expect("before").payload(), "before");
    assert_eq!(next(&mut e_rx).await.expect("before").payload(), "before");

    // E is running a statement when a notification comes and the connection breaks: it
    // gets that notification, then the FATAL. F is inside a transaction and says
    // UNLISTEN * before it ends: it is ended all the same.
    let admin = pg.admin_client().await;
    let sleeping =
        tokio::spawn(async move { e.simple_query("select pg_sleep(1.5)").await.map(|_| e) });
    wait_for_sleep(&admin).await;
    f.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("NOTIFY jobs, 'queued'").await.unwrap();
    assert_eq!(next(&mut a_rx).await.expect("queued").payload(), "queued");
    let n: i64 = admin
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where application_name = 'pgtenant listen'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one listening connection");
    let (code, message) = ended_with(a_end).await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("notifications may have been missed"),
        "{message}"
    );
    f.batch_execute("UNLISTEN *").await.unwrap();
    f.batch_execute("COMMIT").await.unwrap();
    let e = sleeping.await.unwrap().expect("E's statement is answered");
    for end in [b_end, e_end, f_end] {
        let (code, message) = ended_with(end).await;
        assert_eq!(code, "08006", "{message}");
    }
    let n = e_rx
        .try_recv()
        .expect("E got what was queued for it before the FATAL");
    assert_eq!(n.payload(), "queued");
    assert_eq!(
        c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    let (d, mut d_rx, _d_end) = watched_listener(&url).await;
    d.batch_execute("LISTEN jobs").await.unwrap();
    c.batch_execute("NOTIFY jobs, 'after'").await.unwrap();
    assert_eq!(next(&mut d_rx).await.expect("after").payload(), "after");
    drop((a, b, e, f));
}

/// Wait until a backend runs `pg_sleep` (a client's statement reached the server).
async fn wait_for_sleep(admin: &Client) {
    for _ in 0..500 {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity \
                 where state = 'active' and query like 'select pg_sleep%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no backend ran pg_sleep within 5 s");
}

/// A listener that cannot take its notifications as they come (here: a statement of its
/// runs while they pile up) may have at most 4 MiB of them waiting. Beyond (for 250 ms),
/// it is ended with 54000 after every one that was queued, never left to believe it saw
/// them all; its statement is answered first, and another listener of the channel,
/// reading as they come, gets every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_notifications_pile_up_is_ended_not_skipped() {
    let pg = PgServer::start();
    let p = start(&pg, 3, &[]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx, a_end) = watched_listener(&url).await;
    let (b, mut b_rx, _b_end) = watched_listener(&url).await;
    let c = support::connect(&url).await;
    a.batch_execute("LISTEN flood").await.unwrap();
    b.batch_execute("LISTEN flood").await.unwrap();
    // Simple protocol: no statement left to close after it, whose answer would take
    // the FATAL (tokio-postgres hands an error to the oldest request waiting).
    let sleeping =
        tokio::spawn(async move { a.simple_query("select pg_sleep(3)").await.map(|_| a) });
    let admin = pg.admin_client().await;
    wait_for_sleep(&admin).await;
    // 700 notifications of 7,000 bytes: 4.9 MB.
    const N: usize = 700;
    c.batch_execute(&format!(
        "select pg_notify('flood', repeat('x', 7000) || g) from generate_series(1, {N}) g"
    ))
    .await
    .unwrap();
    let pad = "x".repeat(7000);
    for i in 1..=N {
        let n = next(&mut b_rx)
            .await
            .unwrap_or_else(|| panic!("B's notification {i}"));
        assert_eq!(n.payload(), format!("{pad}{i}"));
    }
    let a = sleeping
        .await
        .unwrap()
        .expect("A's statement is answered before it is ended");
    let (code, message) = ended_with(a_end).await;
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("notifications were lost"), "{message}");
    let mut got = 0;
    while let Ok(n) = a_rx.try_recv() {
        got += 1;
        assert_eq!(n.payload(), format!("{pad}{got}"), "in order, none twice");
    }
    // Every one queued before its 4 MiB were full (~598 of 7,014 bytes each), no more.
    assert!(
        (500..N).contains(&got),
        "A was given {got} of {N} and then ended"
    );
    drop((a, b));
}

/// A transaction that notifies its own channel more times than a client's queue holds
/// (a trigger per row of a bulk insert): its session reads the queue while it waits for
/// the hub's barrier, so every notification arrives before the ReadyForQuery, as on a
/// direct connection, and the client is not ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_gets_every_notification_of_its_own_burst() {
    let pg = PgServer::start();
    let p = start(&pg, 2, &[]);
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx, mut a_end) = watched_listener(&url).await;
    a.batch_execute("LISTEN burst").await.unwrap();
    const N: usize = 6000;
    a.batch_execute(&format!(
        "select pg_notify('burst', g::text) from generate_series(1, {N}) g"
    ))
    .await
    .unwrap();
    for i in 1..=N {
        let n = a_rx
            .try_recv()
            .unwrap_or_else(|e| panic!("notification {i} before the ReadyForQuery: {e:?}"));
        assert_eq!(n.payload(), i.to_string());
    }
    assert_eq!(
        a.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    assert!(a_end.try_recv().is_err(), "the client is still connected");
}

/// A client that does not listen and sends NOTIFY gets its ReadyForQuery only once the
/// notification is queued for the listeners: a listener told by the notifier that it
/// has notified finds it on its socket without waiting, as on a direct connection
/// (psycopg's `test_stop_after` reads with a timeout of 0 after its notifier is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_with_its_listeners_when_the_notifier_has_its_answer() {
    let pg = PgServer::start();
    let pt = start(&pg, 4, &["--auth-type", "trust"]);
    let [direct, pooled] = count_missed([(pg.port(), "trustuser"), (pt.port(), "app")]).await;
    eprintln!("not there at once: direct {direct}, through pgtenant {pooled}");
    // The last hop is a race on either (the listening backend is signalled; the
    // listener's session is woken by its queue), and a direct connection misses many
    // (19 to 195 of 200 in runs here). Through pgtenant with the barrier 0 to 9 were
    // missed, without it 88 to 177.
    assert!(
        pooled <= 40,
        "not there at once: {pooled} of 200 through pgtenant ({direct} directly)"
    );
}

/// Of 200 NOTIFYs by a client that does not listen, on each target in turn (the same
/// moments of the machine for both), how many a listener did not have on its socket when
/// the notifier had its ReadyForQuery (each target's user logs in by trust).
async fn count_missed(targets: [(u16, &'static str); 2]) -> [usize; 2] {
    use support::wire::{query, Raw};
    tokio::task::spawn_blocking(move || {
        // A channel per target: both reach the same server.
        let mut pairs = [0, 1].map(|k| {
            let (port, user) = targets[k];
            let login = || Raw::login(port, &[("user", user), ("database", "app")]);
            let mut listener = login();
            listener.exchange(&[query(&format!("listen ch{k}"))]);
            (listener, login())
        });
        let mut missed = [0; 2];
        for i in 0..200 {
            for k in [i % 2, 1 - i % 2] {
                let (listener, notifier) = &mut pairs[k];
                notifier.exchange(&[query(&format!("notify ch{k}, '{i}'"))]);
                // What the listener has now, without waiting.
                listener.s.set_nonblocking(true).unwrap();
                let ready = matches!(listener.s.peek(&mut [0u8; 1]), Ok(n) if n > 0);
                listener.s.set_nonblocking(false).unwrap();
                if !ready {
                    missed[k] += 1;
                }
                let m = listener.read_msg();
                assert_eq!(m.tag, b'A', "{m:?}");
                assert!(
                    m.body.ends_with(format!("ch{k}\0{i}\0").as_bytes()),
                    "{m:?}"
                );
            }
        }
        missed
    })
    .await
    .unwrap()
}

/// The notifications of one transaction reach a listener together, as a direct
/// connection's backend sends them (one write): a client that stops reading after the
/// first read has them all (psycopg's `notifies(stop_after=1)` after a transaction that
/// notified twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifications_of_one_transaction_arrive_together() {
    use support::wire::{query, Raw};
    let pg = PgServer::start();
    let pt = start(&pg, 4, &["--auth-type", "trust"]);
    let port = pt.port();
    let mut listener = Raw::connect(port);
    listener.exchange(&[query("listen foo")]);
    // The listener waits on its socket while the notifier commits, as psycopg's
    // `notifies()` does.
    let reader = std::thread::spawn(move || {
        let mut apart = 0;
        for i in 0..100 {
            let first = listener.read_msg();
            assert!(
                first.body.ends_with(format!("foo\0{i}a\0").as_bytes()),
                "{first:?}"
            );
            // The others are there with it, without waiting.
            listener.s.set_nonblocking(true).unwrap();
            let with_it = matches!(listener.s.peek(&mut [0u8; 1]), Ok(n) if n > 0);
            listener.s.set_nonblocking(false).unwrap();
            if !with_it {
                apart += 1;
            }
            let second = listener.read_msg();
            assert!(second.body.ends_with(b"foo\0x\0"), "{second:?}");
            let third = listener.read_msg();
            assert!(
                third.body.ends_with(format!("foo\0{i}b\0").as_bytes()),
                "{third:?}"
            );
        }
        apart
    });
    let apart = tokio::task::spawn_blocking(move || {
        let mut notifier = Raw::connect(port);
        for i in 0..100 {
            notifier.exchange(&[query(&format!(
                "begin; notify foo, '{i}a'; notify foo, 'x'; notify foo, '{i}b'; commit"
            ))]);
            // The listener is back on its socket.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        reader.join().unwrap()
    })
    .await
    .unwrap();
    assert!(
        apart <= 5,
        "{apart} of 100 transactions' notifications came apart"
    );
}
