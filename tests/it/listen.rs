//! LISTEN/NOTIFY through pgtenant: in transaction mode pgtenant listens on behalf of its
//! clients (one listening server connection per pool) and delivers notifications to each
//! subscribed client; in session mode LISTEN works on the client's own connection.
use crate::support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{PgServer, Pgtenant};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

/// A client whose notifications arrive on a channel.
async fn listener(url: &str) -> (Client, mpsc::UnboundedReceiver<Notification>) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
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
    let p = Pgtenant::start(
        &[
            "run",
            "--upstream",
            &pg.url("app", "secret", "app"),
            "--pool-size",
            "1",
        ],
        &[],
    );
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
    let p = Pgtenant::start(
        &[
            "run",
            "--upstream",
            &pg.url("app", "secret", "app"),
            "--pool-size",
            "2",
            "--pool-mode",
            "session",
        ],
        &[],
    );
    let url = p.url("app", "secret", "app");
    let (a, mut a_rx) = listener(&url).await;
    let c = support::connect(&url).await;
    a.batch_execute("LISTEN s").await.unwrap();
    c.batch_execute("NOTIFY s, 'hi'").await.unwrap();
    let n = next(&mut a_rx).await.expect("notification in session mode");
    assert_eq!(n.payload(), "hi");
}
