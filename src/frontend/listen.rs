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
//! Another client's NOTIFY: the ReadyForQuery of a transaction whose server said NOTIFY
//! waits the same way for the barrier of every hub listening on that server and
//! database ([`ListenHub::barriers`]; none when nobody listens there), so a listener
//! that hears from the notifier that it has notified finds the notification queued, as
//! it practically always does on a direct connection (psycopg's `test_stop_after`
//! checks it). Only transactions that ran a NOTIFY statement pay it.
//!
//! The notifications the listening connection reads together (a transaction's, which
//! its server sends in one write) go to each listener as one batch, and its session
//! writes them together with whatever else is queued: a client that stops after its
//! first read (psycopg's `notifies(stop_after=1)`) has them all, as on a direct
//! connection.
//!
//! Notifications are never lost without the client knowing. A direct connection that
//! misses notifications is a broken one (its server went away), and its client resyncs
//! after reconnecting; so:
//! - If the listening connection breaks, every client listening through it is ended with
//!   FATAL 08006 once it is between transactions ([`Lost::Connection`]); the next LISTEN
//!   opens a new listening connection.
//! - A client whose queue of undelivered notifications stays full ([`CLIENT_QUEUE`]
//!   notifications or [`CLIENT_QUEUE_BYTES`]) for [`ROOM_WAIT`] (it does not read its
//!   socket, or one statement of its ran while they piled up) is ended the same way with
//!   FATAL 54000 ([`Lost::Overflow`]): its memory stays bounded, and the others wait at
//!   most that long once (it is dropped from all its channels). A session waiting for
//!   the barrier of its own transaction reads its queue meanwhile, so a transaction
//!   that notifies its own channel thousands of times does not end its client.
//! - Either way every notification already queued for it goes out first (as its client
//!   reads them), then the FATAL; a client that stopped listening meanwhile (UNLISTEN *,
//!   DISCARD ALL) is ended all the same. A LISTEN inside a transaction block is answered
//!   before the hub confirms it: if the hub then refuses it or cannot confirm it, the
//!   client is ended the same way, with the refusal's error.
//!
//! A LISTEN the server refuses (a standby: 25006 "cannot execute LISTEN during
//! recovery") fails as on a direct connection: the hub answers the waiting LISTENs of
//! that channel with the server's error and keeps none of their subscriptions, and for
//! [`REFUSAL_KEPT`] after a refusal every LISTEN of the pool gets the same error at once
//! (no server connection opened per attempt).
//!
//! A notification names the backend that sent it (its pid). A client's backend pid is
//! pgtenant's own (BackendKeyData), so once anyone listens, each attach records which
//! client a server connection serves now ([`ListenHub::note_attach`]), and the hub
//! rewrites the pid of a notification from one of pgtenant's connections to that
//! client's: a client that skips its own notifications by comparing pids keeps doing so.
//! (A notification read after its backend has moved on to the next client is named for
//! that one: the hub reads notifications as they come, and a backend serves its next
//! client only after the last one's ReadyForQuery.) Not with `server_pipelining = auto`:
//! a batch runs several clients' statements on a connection no session attached, so a
//! trigger's notification there could be named for the connection's previous client
//! (who might skip it as its own); the server's pid is left as it is.
//!
//! One client must not slow LISTEN for the others of its pool (PostgreSQL scans a
//! backend's channel list per LISTEN and per notification): a client listens to at most
//! `max_listen_channels` channels, a pool's listening connection to at most
//! `max_pool_listen_channels`; a LISTEN beyond either fails (54000) before anything is
//! sent, and an UNLISTEN of a channel the client does not listen to sends nothing.
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::net::Frame;
use crate::pool::{Pool, PoolKey};
use crate::protocol::Reader;

/// Notifications waiting for one client; a queue at it takes no more, and stays so for
/// [`ROOM_WAIT`] ends the client ([`Lost::Overflow`]). (A batch taken while under it may
/// go over by up to [`BATCH_MAX`].)
pub const CLIENT_QUEUE: usize = 4096;

/// Bytes of notifications waiting for one client, likewise (over by one batch at most).
pub const CLIENT_QUEUE_BYTES: usize = 4 << 20;

/// How long the hub waits, per batch of notifications, for full queues to make room.
const ROOM_WAIT: Duration = Duration::from_millis(250);

/// Notifications read together handed out as one batch at most.
const BATCH_MAX: usize = 256;

/// Why a client's notifications were lost: its session ends with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The listening connection broke.
    Connection,
    /// The client's queue was full.
    Overflow,
}

impl Lost {
    /// The SQLSTATE of the client's FATAL.
    pub fn code(self) -> &'static str {
        match self {
            Lost::Connection => crate::protocol::sqlstate::CONNECTION_FAILURE,
            Lost::Overflow => crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED,
        }
    }

    /// The error a client gets for it (its FATAL, or a LISTEN's refusal).
    pub fn refusal(self) -> ListenRefused {
        ListenRefused {
            code: self.code().into(),
            message: self.to_string(),
        }
    }

    /// As kept in an [`Inbox`]'s flag (0 is "not lost").
    fn tag(self) -> u8 {
        match self {
            Lost::Connection => 1,
            Lost::Overflow => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Lost> {
        match tag {
            0 => None,
            1 => Some(Lost::Connection),
            _ => Some(Lost::Overflow),
        }
    }
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Connection => f.write_str(
                "the server connection listening for this client's channels was lost; notifications may have been missed",
            ),
            Lost::Overflow => write!(
                f,
                "too many notifications waiting for this client (over {CLIENT_QUEUE} or {} MiB); notifications were lost",
                CLIENT_QUEUE_BYTES >> 20
            ),
        }
    }
}

/// Where the hub hands a client's notifications: its queue (of batches: the
/// notifications the listening connection read together, which the session writes
/// together), the notifications and bytes in it, and the flag that says its
/// notifications were lost ([`Lost::tag`]).
#[derive(Clone)]
struct Inbox {
    tx: mpsc::Sender<Vec<Frame>>,
    queued: Arc<Queued>,
    lost: Arc<std::sync::atomic::AtomicU8>,
}

/// What waits in a client's queue: notifications, and their bytes.
#[derive(Default)]
struct Queued {
    frames: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

impl Queued {
    /// Count `frames` more notifications of `bytes`; false (nothing counted) if the
    /// queue is at [`CLIENT_QUEUE`] or [`CLIENT_QUEUE_BYTES`] already. A batch is taken
    /// whole while the queue is under both (a client with room for one notification
    /// has room for the batch: it goes over by at most one batch, [`BATCH_MAX`]
    /// notifications), so a slow reader is not ended for the size of one transaction's.
    fn add(&self, frames: usize, bytes: usize) -> bool {
        let f = self.frames.fetch_add(frames, Ordering::Relaxed);
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if f >= CLIENT_QUEUE || b >= CLIENT_QUEUE_BYTES {
            self.sub(frames, bytes);
            return false;
        }
        true
    }

    fn sub(&self, frames: usize, bytes: usize) {
        self.frames.fetch_sub(frames, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Inbox {
    /// Queue notifications, as one batch. They are counted before they are sent (the
    /// session may take them at once, and takes them off then) and given back if they
    /// are not.
    fn offer(&self, batch: &[Frame]) -> Offer {
        if self.tx.is_closed() {
            return Offer::Gone;
        }
        let bytes = batch.iter().map(|f| f.body().len()).sum();
        if !self.queued.add(batch.len(), bytes) {
            return Offer::Full;
        }
        let r = match self.tx.try_send(batch.to_vec()) {
            Ok(()) => return Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        };
        self.queued.sub(batch.len(), bytes);
        r
    }

    /// Was the client's session told its notifications were lost? (The hub gives it
    /// nothing more, and does not wait for it.)
    fn lost(&self) -> Option<Lost> {
        Lost::from_tag(self.lost.load(Ordering::Acquire))
    }

    /// Mark the client's notifications lost and wake its session (a notification of no
    /// channel, which it drops; a full queue wakes it anyway). Only the first reason
    /// counts, and only the first call wakes.
    fn lose(&self, why: Lost) {
        if self
            .lost
            .compare_exchange(0, why.tag(), Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let _ = self.offer(&[Frame::new(b'A', &[0, 0, 0, 0, 0, 0])]);
    }
}

/// What became of a notification offered to a client's [`Inbox`].
enum Offer {
    Queued,
    /// Its queue is full (count or bytes).
    Full,
    /// Its session is gone.
    Gone,
}

/// After a server refused a LISTEN, the pool's LISTENs get that error without asking
/// again for this long.
pub const REFUSAL_KEPT: Duration = Duration::from_secs(2);

/// The server refused a LISTEN: its SQLSTATE and message, for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRefused {
    pub code: String,
    pub message: String,
}

/// What a LISTEN waits for: Ok once the listening connection listens.
pub type ListenAck = oneshot::Receiver<Result<(), ListenRefused>>;

/// The last refusal of a pool's LISTEN, and when it came.
type LastRefusal = Arc<Mutex<Option<(Instant, ListenRefused)>>>;

/// The pool's refusal, if it came less than [`REFUSAL_KEPT`] ago.
fn recent(last: &LastRefusal) -> Option<ListenRefused> {
    lock(last)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < REFUSAL_KEPT)
        .map(|(_, r)| r.clone())
}

enum Cmd {
    /// `ack` fires once the server listens on the channel (or refused to).
    Listen {
        client: u64,
        channel: String,
        inbox: Inbox,
        ack: oneshot::Sender<Result<(), ListenRefused>>,
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
    hubs: Mutex<HashMap<PoolKey, Hub>>,
    next_client: AtomicU64,
    /// Set once any client listened: from then on attaches are recorded.
    used: std::sync::atomic::AtomicBool,
    /// Server backend pid → the pid its current client was told (bounded, see
    /// [`NOTIFIERS_MAX`]).
    notifiers: Arc<dashmap::DashMap<i32, i32>>,
}

/// Backends remembered for naming notifications; beyond, the map starts afresh.
const NOTIFIERS_MAX: usize = 65_536;

/// One pool's listening connection: its task's queue, and how many of its clients listen
/// to each channel (kept by the subscribers themselves, so that a LISTEN over
/// `max_pool_listen_channels` is refused before anything is sent).
struct Hub {
    cmds: mpsc::UnboundedSender<Cmd>,
    channels: Arc<Mutex<HashMap<String, u32>>>,
    refused: LastRefusal,
    /// Its listening connection is open (a hub that is still opening one, or failing
    /// to, is not asked for barriers by clients that do not listen).
    connected: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a LISTEN is refused before anything is sent.
#[derive(Debug, PartialEq, Eq)]
pub enum ListenLimit {
    /// The client listens to `max_listen_channels` channels already (54000).
    Client(u32),
    /// The pool's listening connection holds `max_pool_listen_channels` channels already
    /// (54000).
    Pool(u32),
    /// The pool's server refused a LISTEN a moment ago ([`REFUSAL_KEPT`]).
    Refused(ListenRefused),
}

impl ListenLimit {
    /// The SQLSTATE the client gets.
    pub fn code(&self) -> &str {
        match self {
            ListenLimit::Refused(r) => &r.code,
            _ => crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED,
        }
    }
}

impl std::fmt::Display for ListenLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenLimit::Client(n) => write!(
                f,
                "too many LISTEN channels: this client listens to {n} (max_listen_channels)"
            ),
            ListenLimit::Pool(n) => write!(
                f,
                "too many LISTEN channels: this pool's clients listen to {n} distinct channels (max_pool_listen_channels)"
            ),
            ListenLimit::Refused(r) => f.write_str(&r.message),
        }
    }
}

/// A client's subscription to one pool's listening connection: its notification queue,
/// its channels. Dropping it unlistens them all (also when its session is dropped
/// without finishing).
pub struct Subscriber {
    id: u64,
    rx: mpsc::Receiver<Vec<Frame>>,
    /// The rest of the batch taken last, in order.
    held: std::collections::VecDeque<Frame>,
    inbox: Inbox,
    hub: mpsc::UnboundedSender<Cmd>,
    pool_channels: Arc<Mutex<HashMap<String, u32>>>,
    refused: LastRefusal,
    /// The channels the client listens to, as its session sees them. The hub learns of
    /// an UNLISTEN through its queue, after the client was answered; a notification the
    /// hub fans out meanwhile is dropped here ([`Subscriber::wants`]), so that nothing
    /// arrives after UNLISTEN, as on a direct connection.
    channels: std::collections::HashSet<String>,
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

    /// The next notification waiting for the client, if any (registers `cx` otherwise).
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Frame> {
        if let Some(f) = self.held.pop_front() {
            return std::task::Poll::Ready(self.taken(f));
        }
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(batch)) => {
                self.held.extend(batch);
                match self.held.pop_front() {
                    Some(f) => std::task::Poll::Ready(self.taken(f)),
                    // An empty batch is never sent; taken as nothing.
                    None => {
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    }
                }
            }
            // Never closed: the subscriber holds a sender itself.
            _ => std::task::Poll::Pending,
        }
    }

    /// Nothing waits for the client (a `Pending` from [`Subscriber::poll_next`] may also
    /// be tokio's cooperative budget).
    pub fn drained(&self) -> bool {
        self.held.is_empty() && self.rx.is_empty()
    }

    /// The next notification waiting for the client, if any.
    pub fn try_next(&mut self) -> Option<Frame> {
        if self.held.is_empty() {
            let batch = self.rx.try_recv().ok()?;
            self.held.extend(batch);
        }
        let f = self.held.pop_front()?;
        Some(self.taken(f))
    }

    fn taken(&self, f: Frame) -> Frame {
        self.inbox.queued.sub(1, f.body().len());
        f
    }

    /// Were notifications meant for this client lost (see the module's rules)? Its
    /// session ends with this error once it is between transactions.
    pub fn lost(&self) -> Option<Lost> {
        self.inbox.lost()
    }

    /// Listens to no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// LISTEN `channel` (limits: 0 = none). `Ok(Some(rx))`: `rx` fires once the listening
    /// connection listens (a client must not be told "LISTEN" before a NOTIFY it sends
    /// next would reach it), or with the server's refusal (then call
    /// [`Subscriber::unlisten`] for it); `Ok(None)`: it listens to that channel already.
    pub fn listen(
        &mut self,
        channel: String,
        max_client: u32,
        max_pool: u32,
    ) -> Result<Option<ListenAck>, ListenLimit> {
        if self.channels.contains(&channel) {
            return Ok(None);
        }
        if let Some(r) = recent(&self.refused) {
            return Err(ListenLimit::Refused(r));
        }
        if max_client != 0 && self.channels.len() >= max_client as usize {
            return Err(ListenLimit::Client(max_client));
        }
        {
            let mut counts = lock(&self.pool_channels);
            let full = max_pool != 0 && counts.len() >= max_pool as usize;
            match counts.get_mut(&channel) {
                Some(n) => *n += 1,
                None if full => return Err(ListenLimit::Pool(max_pool)),
                None => {
                    counts.insert(channel.clone(), 1);
                }
            }
        }
        self.channels.insert(channel.clone());
        let (ack, rx) = oneshot::channel();
        let _ = self.hub.send(Cmd::Listen {
            client: self.id,
            channel,
            inbox: self.inbox.clone(),
            ack,
        });
        Ok(Some(rx))
    }

    /// UNLISTEN `channel`, or every channel (`None`, UNLISTEN *). A channel it does not
    /// listen to costs nothing (the hub hears only of real changes).
    pub fn unlisten(&mut self, channel: Option<&str>) {
        let gone: Vec<String> = match channel {
            Some(c) => self.channels.take(c).into_iter().collect(),
            None => self.channels.drain().collect(),
        };
        if gone.is_empty() {
            return;
        }
        {
            let mut counts = lock(&self.pool_channels);
            for c in &gone {
                if let Some(n) = counts.get_mut(c) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(c);
                    }
                }
            }
        }
        let _ = self.hub.send(Cmd::Unlisten {
            client: self.id,
            channel: channel.map(str::to_owned),
        });
    }

    /// Resolves once every notification committed before this call is in its
    /// subscribers' queues. None: the listening connection's task is gone.
    pub fn barrier(&self) -> Option<oneshot::Receiver<()>> {
        ask_barrier(&self.hub)
    }
}

/// Ask a hub for a barrier (see [`Subscriber::barrier`]); None if its task is gone.
fn ask_barrier(hub: &mpsc::UnboundedSender<Cmd>) -> Option<oneshot::Receiver<()>> {
    let (ack, rx) = oneshot::channel();
    hub.send(Cmd::Barrier { ack }).ok()?;
    Some(rx)
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.unlisten(None);
    }
}

impl ListenHub {
    /// Resolves (each) once every notification committed before this call is in the
    /// queues of the clients listening on `key`'s server and database, through any of
    /// its pools (other roles' pools listen on the same server), but `except`'s own.
    /// Empty when nobody listens there (or its listening connection is not open yet:
    /// nothing it could hand out).
    pub fn barriers(
        &self,
        key: &PoolKey,
        except: Option<&Subscriber>,
    ) -> Vec<oneshot::Receiver<()>> {
        if !self.used.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let hubs = lock(&self.hubs);
        hubs.iter()
            .filter(|(k, h)| {
                k.node == key.node
                    && k.dbname == key.dbname
                    && h.connected.load(Ordering::Relaxed)
                    && !except.is_some_and(|s| s.hub.same_channel(&h.cmds))
                    && !lock(&h.channels).is_empty()
            })
            .filter_map(|(_, h)| ask_barrier(&h.cmds))
            .collect()
    }

    /// A client whose BackendKeyData says `client_pid` now uses the server backend
    /// `server_pid` (nothing until some client listens: one flag read).
    pub fn note_attach(&self, server_pid: i32, client_pid: i32) {
        if !self.used.load(Ordering::Relaxed) || server_pid == client_pid {
            return;
        }
        if self.notifiers.len() >= NOTIFIERS_MAX {
            self.notifiers.clear();
        }
        self.notifiers.insert(server_pid, client_pid);
    }

    /// A subscription to `pool`'s listening connection (its task starts with the first).
    pub fn subscriber(&self, pool: &Arc<Pool>) -> Subscriber {
        self.used.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let mut g = lock(&self.hubs);
        if g.get(&pool.key).is_none_or(|h| h.cmds.is_closed()) {
            let (cmds, queue) = mpsc::unbounded_channel();
            let refused = LastRefusal::default();
            let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
            tokio::spawn(run_hub(
                pool.clone(),
                queue,
                refused.clone(),
                self.notifiers.clone(),
                connected.clone(),
            ));
            let channels = Default::default();
            g.insert(
                pool.key.clone(),
                Hub {
                    cmds,
                    channels,
                    refused,
                    connected,
                },
            );
        }
        let h = &g[&pool.key];
        Subscriber {
            id: self.next_client.fetch_add(1, Ordering::Relaxed) + 1,
            rx,
            held: Default::default(),
            inbox: Inbox {
                tx,
                queued: Default::default(),
                lost: Default::default(),
            },
            hub: h.cmds.clone(),
            pool_channels: h.channels.clone(),
            refused: h.refused.clone(),
            channels: Default::default(),
        }
    }
}

/// The listening connection of one pool: LISTEN when a channel gets its first subscriber,
/// UNLISTEN when it loses its last, fan out every notification.
async fn run_hub(
    pool: Arc<Pool>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    refused: LastRefusal,
    notifiers: Arc<dashmap::DashMap<i32, i32>>,
    connected: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut subs = Subscribers {
        channels: HashMap::new(),
        notifiers,
        pool: pool.clone(),
    };
    let mut conn = None;
    // LISTENs waiting for a listening connection: (channel, ack).
    let mut acks: Vec<(String, Ack)> = Vec::new();
    // A command taken while gathering barriers, run next.
    let mut next: Option<Cmd> = None;
    loop {
        if conn.is_none() && !subs.channels.is_empty() {
            match pool.open_dedicated("listen").await {
                Ok(mut c) => {
                    let mut broken = false;
                    let channels: Vec<String> = subs.channels.keys().cloned().collect();
                    for ch in channels {
                        let sql = format!("LISTEN {}", super::params::ident(&ch));
                        match hub_query(&mut c, &sql, &mut subs).await {
                            Ok(()) => {}
                            Err(HubError::Refused(r)) => {
                                refuse(&refused, &mut subs, &mut acks, &ch, r);
                            }
                            Err(HubError::Broken) => {
                                broken = true;
                                break;
                            }
                        }
                    }
                    if !broken {
                        tracing::info!(pool = %pool.name(), channels = subs.channels.len(), "listening connection open");
                        conn = Some(c);
                        for (_, a) in acks.drain(..) {
                            let _ = a.send(Ok(()));
                        }
                    } else {
                        tracing::warn!(pool = %pool.name(), "the listening connection failed while listening; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(pool = %pool.name(), error = %e, "cannot open the listening connection; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        connected.store(conn.is_some(), Ordering::Relaxed);
        let event = match (next.take(), conn.as_mut()) {
            (Some(cmd), _) => Ok(Some(cmd)),
            (None, Some(c)) => tokio::select! {
                cmd = cmds.recv() => Ok(cmd),
                f = c.conn.read_frame() => Err(f),
            },
            (None, None) => Ok(cmds.recv().await),
        };
        match event {
            Ok(None) => return,
            Ok(Some(Cmd::Listen {
                client,
                channel,
                inbox,
                ack,
            })) => {
                if let Some(r) = recent(&refused) {
                    if !subs.channels.contains_key(&channel) {
                        let _ = ack.send(Err(r));
                        continue;
                    }
                }
                let entry = subs.channels.entry(channel.clone()).or_default();
                let first = entry.is_empty();
                entry.insert(client, inbox);
                match conn.as_mut() {
                    Some(c) if first => {
                        let sql = format!("LISTEN {}", super::params::ident(&channel));
                        match hub_query(c, &sql, &mut subs).await {
                            Ok(()) => {
                                let _ = ack.send(Ok(()));
                            }
                            Err(HubError::Refused(r)) => {
                                acks.push((channel.clone(), ack));
                                refuse(&refused, &mut subs, &mut acks, &channel, r);
                            }
                            Err(HubError::Broken) => {
                                conn = None;
                                acks.push((channel, ack));
                                lost_connection(&pool, &mut subs, &mut acks);
                            }
                        }
                    }
                    Some(_) => {
                        let _ = ack.send(Ok(()));
                    }
                    None => acks.push((channel, ack)),
                }
            }
            Ok(Some(Cmd::Unlisten { client, channel })) => {
                let chans: Vec<String> = match channel {
                    Some(ch) => vec![ch],
                    None => subs.channels.keys().cloned().collect(),
                };
                for ch in chans {
                    let emptied = match subs.channels.get_mut(&ch) {
                        Some(m) => {
                            m.remove(&client);
                            m.is_empty()
                        }
                        None => false,
                    };
                    if emptied {
                        subs.channels.remove(&ch);
                        if let Some(c) = conn.as_mut() {
                            let sql = format!("UNLISTEN {}", super::params::ident(&ch));
                            if let Err(HubError::Broken) = hub_query(c, &sql, &mut subs).await {
                                conn = None;
                                lost_connection(&pool, &mut subs, &mut acks);
                            }
                        }
                    }
                }
            }
            Ok(Some(Cmd::Barrier { ack })) => {
                // Every barrier asked by now is passed by one query (many clients'
                // NOTIFYs at once cost one round trip, not one each); those whose
                // session stopped waiting cost nothing.
                let mut waiting = vec![ack];
                while let Ok(cmd) = cmds.try_recv() {
                    match cmd {
                        Cmd::Barrier { ack } => waiting.push(ack),
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                waiting.retain(|a| !a.is_closed());
                if let (Some(c), false) = (conn.as_mut(), waiting.is_empty()) {
                    if let Err(HubError::Broken) = hub_query(c, "", &mut subs).await {
                        conn = None;
                        lost_connection(&pool, &mut subs, &mut acks);
                    }
                }
                for a in waiting {
                    let _ = a.send(());
                }
            }
            Err(Ok(Some(f))) if f.tag() == b'A' => {
                // With every notification the same read brought (a transaction's, sent
                // together): its listeners get them in one batch, written together.
                let mut frames = vec![f];
                if let Some(c) = conn.as_mut() {
                    while frames.len() < BATCH_MAX && c.conn.buffered_tags().next() == Some(b'A') {
                        match c.conn.try_frame() {
                            Ok(Some(f)) => frames.push(f),
                            _ => break,
                        }
                    }
                }
                deliver(&mut subs, &frames).await
            }
            Err(Ok(Some(_))) => {}
            Err(Ok(None)) | Err(Err(_)) => {
                conn = None;
                lost_connection(&pool, &mut subs, &mut acks);
            }
        }
        if subs.channels.is_empty() {
            // Nobody listens: give the server connection back.
            conn = None;
        }
    }
}

type Ack = oneshot::Sender<Result<(), ListenRefused>>;

/// The server refused `channel`'s LISTEN: remember it for the pool, answer the LISTENs
/// waiting for that channel with the refusal and keep none of its subscribers (each
/// session takes its channel back when it reads the refusal).
fn refuse(
    last: &LastRefusal,
    subs: &mut Subscribers,
    acks: &mut Vec<(String, Ack)>,
    channel: &str,
    r: ListenRefused,
) {
    *lock(last) = Some((Instant::now(), r.clone()));
    subs.channels.remove(channel);
    let (theirs, others): (Vec<_>, Vec<_>) = acks.drain(..).partition(|(c, _)| c == channel);
    *acks = others;
    for (_, a) in theirs {
        let _ = a.send(Err(r.clone()));
    }
}

/// Each channel's subscribers, and who sent what ([`ListenHub::note_attach`]).
struct Subscribers {
    channels: HashMap<String, HashMap<u64, Inbox>>,
    notifiers: Arc<dashmap::DashMap<i32, i32>>,
    /// Its settings say whether senders are renamed (not with server pipelining).
    pool: Arc<Pool>,
}

/// Hand NotificationResponses (read together, in order) to every client subscribed to
/// their channels, each client's as one batch, naming the sender as its client knows
/// itself when the sender was a client of pgtenant's. A client whose queue is full gets
/// [`ROOM_WAIT`] (all such clients of one batch together) to make room before it is
/// ended ([`Lost::Overflow`]): one that reads its notifications as they come is not
/// ended by a burst.
async fn deliver(subs: &mut Subscribers, frames: &[Frame]) {
    let rename = !subs.pool.settings().server_pipelining;
    // Each client's inbox and batch, found by client.
    let mut batches: Vec<(u64, Inbox, Vec<Frame>)> = Vec::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    let mut gone: Vec<u64> = Vec::new();
    for f in frames {
        let Some(channel) = notification_channel(f.body()) else {
            continue;
        };
        let Some(m) = subs.channels.get(&channel) else {
            continue;
        };
        let sender = f
            .body()
            .get(..4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()));
        let renamed = sender
            .and_then(|pid| subs.notifiers.get(&pid).map(|c| *c))
            .filter(|_| rename)
            .map(|client| {
                let mut body = f.body().to_vec();
                body[..4].copy_from_slice(&client.to_be_bytes());
                Frame::new(b'A', &body)
            });
        let f = renamed.unwrap_or_else(|| f.clone());
        for (client, inbox) in m {
            // Told they lost notifications: dropped from the lists, given nothing more.
            if inbox.lost().is_some() {
                gone.push(*client);
                continue;
            }
            match at.get(client) {
                Some(&i) => batches[i].2.push(f.clone()),
                None => {
                    at.insert(*client, batches.len());
                    batches.push((*client, inbox.clone(), vec![f.clone()]));
                }
            }
        }
    }
    let mut full = Vec::new();
    for (client, inbox, batch) in batches {
        match inbox.offer(&batch) {
            Offer::Queued => {}
            Offer::Full => full.push((client, inbox, batch)),
            Offer::Gone => gone.push(client),
        }
    }
    let until = tokio::time::Instant::now() + ROOM_WAIT;
    for (client, inbox, batch) in full {
        loop {
            match inbox.offer(&batch) {
                Offer::Queued => break,
                Offer::Full if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Offer::Full | Offer::Gone => {
                    tracing::warn!("client notification queue full; the client is ended");
                    inbox.lose(Lost::Overflow);
                    gone.push(client);
                    break;
                }
            }
        }
    }
    // From every channel: the others' notifications do not wait for them.
    if !gone.is_empty() {
        for m in subs.channels.values_mut() {
            m.retain(|client, _| !gone.contains(client));
        }
    }
}

/// The listening connection broke: every client listening through it may have missed
/// notifications. Each is told (its session ends), none stays subscribed, and the
/// LISTENs still waiting are refused with the same error.
fn lost_connection(pool: &Pool, subs: &mut Subscribers, acks: &mut Vec<(String, Ack)>) {
    tracing::warn!(pool = %pool.name(), channels = subs.channels.len(), "listening connection lost; its clients are ended (they may have missed notifications)");
    // A client on several channels is told once (`Inbox::lose`).
    for (_, m) in subs.channels.drain() {
        for inbox in m.into_values() {
            inbox.lose(Lost::Connection);
        }
    }
    for (_, ack) in acks.drain(..) {
        let _ = ack.send(Err(Lost::Connection.refusal()));
    }
}

/// Why one of the hub's own statements failed.
enum HubError {
    /// The server answered with an error (the connection is still usable).
    Refused(ListenRefused),
    /// The connection failed, or was left in a transaction.
    Broken,
}

/// Run one of the hub's own statements; notifications that arrive meanwhile are handed
/// out, not lost.
async fn hub_query(
    c: &mut crate::backend::ServerConn,
    sql: &str,
    subs: &mut Subscribers,
) -> Result<(), HubError> {
    c.conn
        .send(&crate::protocol::build::query(sql))
        .await
        .map_err(|_| HubError::Broken)?;
    let mut failed = None;
    loop {
        let f = match c.conn.read_frame().await {
            Ok(Some(f)) => f,
            _ => return Err(HubError::Broken),
        };
        match f.tag() {
            b'A' => deliver(subs, std::slice::from_ref(&f)).await,
            b'E' if failed.is_none() => {
                let e = crate::protocol::decode::ErrorFields::parse(f.body()).unwrap_or_default();
                failed = Some(ListenRefused {
                    code: e.code,
                    message: e.message,
                });
            }
            b'Z' => {
                let idle = f.body().first() == Some(&b'I');
                return match (failed, idle) {
                    (_, false) => Err(HubError::Broken),
                    (Some(r), true) => Err(HubError::Refused(r)),
                    (None, true) => Ok(()),
                };
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
