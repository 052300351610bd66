//! LISTEN/NOTIFY in transaction mode. A client does not keep a server connection between
//! transactions, so it cannot listen on one. Instead pgtenant keeps one listening server
//! connection per pool (database + user), LISTENs there on behalf of its clients and hands
//! each NotificationResponse to every client subscribed to that channel. LISTEN and
//! UNLISTEN from a client are answered by pgtenant; NOTIFY is an ordinary statement.
//!
//! A client's own NOTIFY: PostgreSQL delivers the notification of a channel the client
//! listens on before the ReadyForQuery of the transaction that sent it. The session asks
//! the hub for a barrier before it passes that ReadyForQuery on: the hub runs an empty
//! query on its connection, and its server sends every notification committed before it
//! (the committing backend has signalled it) ahead of that query's ReadyForQuery — so
//! once the barrier is passed, the client's notifications are in its queue.
//!
//! If the listening connection breaks, it is reopened and every channel listened again;
//! notifications sent in between are lost (as they would be for a direct connection that
//! reconnects).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::net::Frame;
use crate::pool::{Pool, PoolKey};
use crate::protocol::Reader;

/// Notifications waiting for one client; beyond this, new ones are dropped (logged).
const CLIENT_QUEUE: usize = 1024;

enum Cmd {
    /// `ack` fires once the server listens on the channel.
    Listen {
        client: u64,
        channel: String,
        tx: mpsc::Sender<Frame>,
        ack: oneshot::Sender<()>,
    },
    Unlisten {
        client: u64,
        channel: Option<String>,
    },
    /// Fires once every notification committed before it has been handed out.
    Barrier { ack: oneshot::Sender<()> },
}

/// The listening connections, one task per pool that has listeners.
#[derive(Default)]
pub struct ListenHub {
    hubs: Mutex<HashMap<PoolKey, mpsc::UnboundedSender<Cmd>>>,
    next_client: AtomicU64,
}

/// A client's subscription handle: its notification queue and id.
pub struct Subscriber {
    pub id: u64,
    pub rx: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Frame>,
    /// The channels the client listens to, as its session sees them. The hub learns of
    /// an UNLISTEN through its queue, after the client was answered; a notification the
    /// hub fans out meanwhile is dropped here ([`Subscriber::wants`]), so that nothing
    /// arrives after UNLISTEN, as on a direct connection.
    pub channels: std::collections::HashSet<String>,
}

impl Subscriber {
    /// Does the client still listen to the channel of this NotificationResponse?
    pub fn wants(&self, notification: &Frame) -> bool {
        let body = notification.body();
        let channel = body.get(4..).unwrap_or_default();
        let end = channel
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(channel.len());
        std::str::from_utf8(&channel[..end]).is_ok_and(|c| self.channels.contains(c))
    }
}

impl ListenHub {
    pub fn subscriber(&self) -> Subscriber {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        Subscriber {
            id: self.next_client.fetch_add(1, Ordering::Relaxed) + 1,
            rx,
            tx,
            channels: Default::default(),
        }
    }

    fn hub(&self, pool: &Arc<Pool>) -> mpsc::UnboundedSender<Cmd> {
        let mut g = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.get(&pool.key).filter(|h| !h.is_closed()) {
            return h.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_hub(pool.clone(), rx));
        g.insert(pool.key.clone(), tx.clone());
        tx
    }

    /// Subscribe; the receiver fires when the LISTEN is in effect on the server (a client
    /// must not be told "LISTEN" before a NOTIFY it sends next would reach it).
    pub fn listen(
        &self,
        pool: &Arc<Pool>,
        sub: &Subscriber,
        channel: String,
    ) -> oneshot::Receiver<()> {
        let (ack, rx) = oneshot::channel();
        let _ = self.hub(pool).send(Cmd::Listen {
            client: sub.id,
            channel,
            tx: sub.tx.clone(),
            ack,
        });
        rx
    }

    /// Resolves once every notification committed before this call is in its
    /// subscribers' queues. None: this pool has no listening connection.
    pub fn barrier(&self, pool: &Arc<Pool>) -> Option<oneshot::Receiver<()>> {
        let g = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        let h = g.get(&pool.key)?;
        let (ack, rx) = oneshot::channel();
        h.send(Cmd::Barrier { ack }).ok()?;
        Some(rx)
    }

    /// `channel: None` = UNLISTEN *.
    pub fn unlisten(&self, pool: &Arc<Pool>, sub: &Subscriber, channel: Option<String>) {
        let g = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.get(&pool.key) {
            let _ = h.send(Cmd::Unlisten {
                client: sub.id,
                channel,
            });
        }
    }
}

/// The listening connection of one pool: LISTEN when a channel gets its first subscriber,
/// UNLISTEN when it loses its last, fan out every notification.
async fn run_hub(pool: Arc<Pool>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let mut subs: Subscribers = HashMap::new();
    let mut conn = None;
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        if conn.is_none() && !subs.is_empty() {
            match pool.open_dedicated("listen").await {
                Ok(mut c) => {
                    let mut ok = true;
                    let channels: Vec<String> = subs.keys().cloned().collect();
                    for ch in channels {
                        let sql = format!("LISTEN {}", super::params::ident(&ch));
                        ok &= hub_query(&mut c, &sql, &mut subs).await.is_ok();
                    }
                    if ok {
                        tracing::info!(pool = %pool.name(), channels = subs.len(), "listening connection open");
                        conn = Some(c);
                        for a in acks.drain(..) {
                            let _ = a.send(());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name(), error = %e, "cannot open the listening connection; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let event = match conn.as_mut() {
            Some(c) => tokio::select! {
                cmd = cmds.recv() => Ok(cmd),
                f = c.conn.read_frame() => Err(f),
            },
            None => Ok(cmds.recv().await),
        };
        match event {
            Ok(None) => return,
            Ok(Some(Cmd::Listen {
                client,
                channel,
                tx,
                ack,
            })) => {
                let entry = subs.entry(channel.clone()).or_default();
                let first = entry.is_empty();
                entry.insert(client, tx);
                match conn.as_mut() {
                    Some(c) if first => {
                        let sql = format!("LISTEN {}", super::params::ident(&channel));
                        if hub_query(c, &sql, &mut subs).await.is_ok() {
                            let _ = ack.send(());
                        } else {
                            conn = None;
                            acks.push(ack);
                        }
                    }
                    Some(_) => {
                        let _ = ack.send(());
                    }
                    None => acks.push(ack),
                }
            }
            Ok(Some(Cmd::Unlisten { client, channel })) => {
                let chans: Vec<String> = match channel {
                    Some(ch) => vec![ch],
                    None => subs.keys().cloned().collect(),
                };
                for ch in chans {
                    let emptied = match subs.get_mut(&ch) {
                        Some(m) => {
                            m.remove(&client);
                            m.is_empty()
                        }
                        None => false,
                    };
                    if emptied {
                        subs.remove(&ch);
                        if let Some(c) = conn.as_mut() {
                            let sql = format!("UNLISTEN {}", super::params::ident(&ch));
                            if hub_query(c, &sql, &mut subs).await.is_err() {
                                conn = None;
                            }
                        }
                    }
                }
            }
            Ok(Some(Cmd::Barrier { ack })) => {
                if let Some(c) = conn.as_mut() {
                    if hub_query(c, "", &mut subs).await.is_err() {
                        conn = None;
                    }
                }
                let _ = ack.send(());
            }
            Err(Ok(Some(f))) if f.tag() == b'A' => deliver(&mut subs, &f),
            Err(Ok(Some(_))) => {}
            Err(Ok(None)) | Err(Err(_)) => {
                tracing::warn!(pool = %pool.name(), "listening connection lost; reopening");
                conn = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if subs.is_empty() {
            // Nobody listens: give the server connection back.
            conn = None;
        }
    }
}

type Subscribers = HashMap<String, HashMap<u64, mpsc::Sender<Frame>>>;

/// Hand a NotificationResponse to every client subscribed to its channel.
fn deliver(subs: &mut Subscribers, f: &Frame) {
    let Some(channel) = notification_channel(f.body()) else {
        return;
    };
    if let Some(m) = subs.get_mut(&channel) {
        // Subscribers that left are dropped from the list here.
        m.retain(|_, tx| match tx.try_send(f.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(channel = %crate::logging::Escaped(&channel), "client notification queue full; notification dropped");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

/// Run one of the hub's own statements; notifications that arrive meanwhile are handed
/// out, not lost.
async fn hub_query(
    c: &mut crate::backend::ServerConn,
    sql: &str,
    subs: &mut Subscribers,
) -> Result<(), ()> {
    c.conn
        .send(&crate::protocol::build::query(sql))
        .await
        .map_err(drop)?;
    let mut failed = false;
    loop {
        let f = match c.conn.read_frame().await {
            Ok(Some(f)) => f,
            _ => return Err(()),
        };
        match f.tag() {
            b'A' => deliver(subs, &f),
            b'E' => failed = true,
            b'Z' => {
                let idle = f.body().first() == Some(&b'I');
                return if failed || !idle { Err(()) } else { Ok(()) };
            }
            _ => {}
        }
    }
}

fn notification_channel(body: &[u8]) -> Option<String> {
    let mut r = Reader::new(body, "NotificationResponse");
    r.i32().ok()?;
    r.cstr().ok().map(str::to_owned)
}
