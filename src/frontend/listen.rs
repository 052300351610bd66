//! LISTEN/NOTIFY in transaction mode. A client does not keep a server connection between
//! transactions, so it cannot listen on one. Instead pgtenant keeps one listening server
//! connection per pool (database + user), LISTENs there on behalf of its clients and hands
//! each NotificationResponse to every client subscribed to that channel. LISTEN and
//! UNLISTEN from a client are answered by pgtenant; NOTIFY is an ordinary statement.
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
}

impl ListenHub {
    pub fn subscriber(&self) -> Subscriber {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        Subscriber {
            id: self.next_client.fetch_add(1, Ordering::Relaxed) + 1,
            rx,
            tx,
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
    let mut subs: HashMap<String, HashMap<u64, mpsc::Sender<Frame>>> = HashMap::new();
    let mut conn = None;
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        if conn.is_none() && !subs.is_empty() {
            match pool.open_dedicated("listen").await {
                Ok(mut c) => {
                    let mut ok = true;
                    for ch in subs.keys() {
                        ok &= c
                            .run_internal(&format!("LISTEN {}", super::params::ident(ch)))
                            .await
                            .is_ok();
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
                        if c.run_internal(&format!("LISTEN {}", super::params::ident(&channel)))
                            .await
                            .is_ok()
                        {
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
                            if c.run_internal(&format!("UNLISTEN {}", super::params::ident(&ch)))
                                .await
                                .is_err()
                            {
                                conn = None;
                            }
                        }
                    }
                }
            }
            Err(Ok(Some(f))) if f.tag() == b'A' => {
                let Some(channel) = notification_channel(f.body()) else {
                    continue;
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

fn notification_channel(body: &[u8]) -> Option<String> {
    let mut r = Reader::new(body, "NotificationResponse");
    r.i32().ok()?;
    r.cstr().ok().map(str::to_owned)
}
