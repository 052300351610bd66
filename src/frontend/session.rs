//! The session loop: one task drives the client socket and, while it holds one, a server
//! socket, with a single poll function (read what is there, write once per batch, no
//! hand-off between tasks).
//!
//! In transaction and statement mode a server connection is taken from the pool when the
//! client sends the first message of a transaction and goes back when ReadyForQuery says
//! idle and nothing the client sent is still unanswered. In session mode it stays until
//! the client leaves.
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::login::{pool_error_frame, Client};
use super::FrontendError;
use crate::backend::ServerConn;
use crate::config::PoolMode;
use crate::context::Context;
use crate::net::Frame;
use crate::pool::{Pool, PoolError};
use crate::protocol::{build, decode, sqlstate};
use crate::router::Route;

/// Stop reading from one side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;

/// A server connection lent to this client.
struct Attached {
    server: ServerConn,
    pool: Arc<Pool>,
    /// ReadyForQuery messages still owed (one per Query, Sync and FunctionCall sent).
    pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    extended: bool,
    /// Syncs sent since the last Execute or Query and before any COPY data. If the server
    /// answers that statement with CopyInResponse, it skips these Syncs without a
    /// ReadyForQuery (PostgreSQL ignores Sync in COPY IN mode; libpq and tokio-postgres
    /// send Bind/Execute/Sync, then the data, CopyDone and another Sync).
    syncs_before_copy: u32,
    /// CopyData/CopyDone/CopyFail sent since the last Execute or Query.
    copy_sent: bool,
}

impl Attached {
    /// Idle and owing nothing: safe to give to another client.
    fn is_clean(&self) -> bool {
        self.pending == 0
            && !self.extended
            && self.server.tx_status == b'I'
            && self.server.conn.pending_output() == 0
            && self.server.conn.buffered_input() == 0
    }
}

enum Event {
    ClientRead(io::Result<usize>),
    ServerRead(io::Result<usize>),
    ClientWrite(io::Error),
    ServerWrite(io::Error),
    IdleTxTimeout,
    Shutdown,
}

/// What to do after handling input.
enum Flow {
    Continue,
    Quit,
}

struct Session<'a> {
    ctx: &'a Arc<Context>,
    c: Client,
    mode: PoolMode,
    attached: Option<Attached>,
    /// After a refused extended-protocol message, drop messages until Sync.
    skip_until_sync: bool,
    /// Armed while the client sits idle inside a transaction.
    idle_tx_timer: Option<Pin<Box<Sleep>>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    draining: bool,
    /// Transaction status the client last saw.
    client_tx: u8,
}

pub async fn run(client: Client, ctx: &Arc<Context>) -> Result<(), FrontendError> {
    let mode = ctx.settings().pool_mode_for(&client.user);
    let mut s = Session {
        ctx,
        mode,
        attached: None,
        skip_until_sync: false,
        idle_tx_timer: None,
        shutdown: Box::pin(ctx.shutdown.clone().cancelled_owned()),
        draining: false,
        client_tx: b'I',
        c: client,
    };
    let r = s.run().await;
    s.finish().await;
    r
}

impl Session<'_> {
    async fn run(&mut self) -> Result<(), FrontendError> {
        loop {
            let ev = poll_fn(|cx| self.poll_event(cx)).await;
            let flow = match ev {
                Event::ClientRead(Ok(0)) => Flow::Quit,
                Event::ClientRead(Ok(_)) => self.on_client_input().await?,
                Event::ClientRead(Err(e)) | Event::ClientWrite(e) => return Err(e.into()),
                Event::ServerRead(Ok(0)) => {
                    self.server_lost("server closed the connection unexpectedly")
                }
                Event::ServerRead(Err(e)) | Event::ServerWrite(e) => {
                    self.server_lost(&format!("server connection failed: {e}"))
                }
                Event::ServerRead(Ok(_)) => self.on_server_input().await,
                Event::IdleTxTimeout => {
                    self.c.conn.queue(&build::fatal(
                        sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                        "idle transaction timeout",
                    ));
                    if let Some(a) = self.attached.take() {
                        self.c.key.slot.set(None).await;
                        a.pool.discard(a.server);
                    }
                    Flow::Quit
                }
                Event::Shutdown => {
                    self.draining = true;
                    Flow::Continue
                }
            };
            if let Flow::Quit = flow {
                return Ok(());
            }
            if self.draining && self.attached.as_ref().is_none_or(|a| a.is_clean()) {
                self.c.conn.queue(&build::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "pgtenant is shutting down",
                ));
                return Ok(());
            }
        }
    }

    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Event> {
        // Writes first: whatever was queued by the last batch goes out in one call.
        if let Some(a) = self.attached.as_mut() {
            if a.server.conn.pending_output() > 0 {
                if let Poll::Ready(Err(e)) = a.server.conn.poll_write_out(cx) {
                    return Poll::Ready(Event::ServerWrite(e));
                }
            }
        }
        if self.c.conn.pending_output() > 0 {
            if let Poll::Ready(Err(e)) = self.c.conn.poll_write_out(cx) {
                return Poll::Ready(Event::ClientWrite(e));
            }
        }
        if !self.draining && self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Shutdown);
        }
        let server_out = self
            .attached
            .as_ref()
            .map_or(0, |a| a.server.conn.pending_output());
        if server_out < HIGH_WATER {
            if let Poll::Ready(r) = self.c.conn.poll_fill(cx) {
                return Poll::Ready(Event::ClientRead(r));
            }
        }
        if self.c.conn.pending_output() < HIGH_WATER {
            if let Some(a) = self.attached.as_mut() {
                if let Poll::Ready(r) = a.server.conn.poll_fill(cx) {
                    return Poll::Ready(Event::ServerRead(r));
                }
            }
        }
        if let Some(t) = self.idle_tx_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::IdleTxTimeout);
            }
        }
        Poll::Pending
    }

    /// Handle every complete frame the client has sent.
    async fn on_client_input(&mut self) -> Result<Flow, FrontendError> {
        self.idle_tx_timer = None;
        loop {
            let f = match self.c.conn.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(Flow::Continue),
                Err(e) => {
                    tracing::warn!(user = %self.c.user, error = %e, "bad message from client");
                    self.c
                        .conn
                        .queue(&build::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()));
                    return Ok(Flow::Quit);
                }
            };
            if self.skip_until_sync {
                if f.tag() == b'S' {
                    self.skip_until_sync = false;
                    self.c.conn.queue(&build::ready_for_query(self.client_tx));
                }
                continue;
            }
            if f.tag() == b'X' {
                return Ok(Flow::Quit);
            }
            // With no server attached, nothing is in flight: a Flush has nothing to flush,
            // and CopyData/CopyDone/CopyFail are leftovers of a COPY the server already
            // failed and answered with ReadyForQuery (PostgreSQL drops them too). Taking a
            // server for them would hold it with no ReadyForQuery to give it back.
            if self.attached.is_none() && matches!(f.tag(), b'H' | b'd' | b'c' | b'f') {
                continue;
            }
            if self.attached.is_none() && !self.attach(&f).await {
                continue;
            }
            let Some(a) = self.attached.as_mut() else {
                continue;
            };
            match f.tag() {
                b'Q' | b'F' => {
                    a.pending += 1;
                    a.syncs_before_copy = 0;
                    a.copy_sent = false;
                }
                b'S' => {
                    a.pending += 1;
                    a.extended = false;
                    if !a.copy_sent {
                        a.syncs_before_copy += 1;
                    }
                }
                b'E' => {
                    a.extended = true;
                    a.syncs_before_copy = 0;
                    a.copy_sent = false;
                }
                b'P' | b'B' | b'D' | b'C' => a.extended = true,
                b'd' | b'c' | b'f' => a.copy_sent = true,
                _ => {}
            }
            a.server.conn.queue(&f);
        }
    }

    /// Get a server connection for the transaction `first` starts. On failure the client
    /// gets an error for this request and keeps its connection.
    async fn attach(&mut self, first: &Frame) -> bool {
        let pool = match self.ctx.router.route(first) {
            Route::Coordinator => self.c.pool.clone(),
        };
        match pool.acquire().await {
            Ok(server) => {
                self.c.key.slot.set(Some(server.cancel.clone())).await;
                self.attached = Some(Attached {
                    server,
                    pool,
                    pending: 0,
                    extended: false,
                    syncs_before_copy: 0,
                    copy_sent: false,
                });
                true
            }
            Err(e) => {
                match &e {
                    PoolError::WaitTimeout => {
                        tracing::warn!(user = %self.c.user, pool = %pool.name(), "query_wait_timeout: pool exhausted")
                    }
                    e => {
                        tracing::warn!(user = %self.c.user, pool = %pool.name(), error = %e, "no server connection")
                    }
                }
                let fatal = pool_error_frame(&e);
                // Same code and text, but ERROR: the client may retry on this connection.
                let fields = decode_fields(&fatal);
                self.c
                    .conn
                    .queue(&build::error(&fields.code, &fields.message));
                match first.tag() {
                    b'Q' | b'F' | b'S' => {
                        self.c.conn.queue(&build::ready_for_query(self.client_tx))
                    }
                    _ => self.skip_until_sync = true,
                }
                false
            }
        }
    }

    /// Relay every complete frame the server has sent; give the server back when done.
    async fn on_server_input(&mut self) -> Flow {
        loop {
            let Some(a) = self.attached.as_mut() else {
                return Flow::Continue;
            };
            let f = match a.server.conn.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Flow::Continue,
                Err(e) => return self.server_lost(&format!("server sent a bad message: {e}")),
            };
            match f.tag() {
                b'Z' => {
                    let Ok(st) = decode::ready_status(f.body()) else {
                        return self.server_lost("server sent a malformed ReadyForQuery");
                    };
                    a.server.tx_status = st;
                    a.pending = a.pending.saturating_sub(1);
                    let settled = a.pending == 0 && !a.extended;
                    self.client_tx = st;
                    if self.mode == PoolMode::Statement && st != b'I' {
                        // As PgBouncer: the error takes the place of the ReadyForQuery,
                        // so the client sees it as the answer to its BEGIN.
                        self.c.conn.queue(&build::fatal(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "transaction blocks not allowed in statement pooling mode",
                        ));
                        return Flow::Quit;
                    }
                    self.c.conn.queue(&f);
                    if settled {
                        if st != b'I' {
                            self.arm_idle_tx_timer();
                        } else if self.mode != PoolMode::Session {
                            self.release().await;
                            return Flow::Continue;
                        }
                    }
                }
                b'S' => {
                    a.server.note_parameter(f.body());
                    self.c.conn.queue(&f);
                }
                b'G' => {
                    // COPY IN: the Syncs sent after its Execute get no ReadyForQuery.
                    a.pending = a.pending.saturating_sub(a.syncs_before_copy);
                    a.syncs_before_copy = 0;
                    self.c.conn.queue(&f);
                }
                _ => self.c.conn.queue(&f),
            }
        }
    }

    fn arm_idle_tx_timer(&mut self) {
        let t = self.ctx.settings.load().idle_transaction_timeout;
        if !t.is_zero() {
            self.idle_tx_timer = Some(Box::pin(tokio::time::sleep(t)));
        }
    }

    /// Give the server connection back to its pool (it is clean).
    async fn release(&mut self) {
        let Some(mut a) = self.attached.take() else {
            return;
        };
        self.c.key.slot.set(None).await;
        let s = self.ctx.settings.load();
        if s.server_reset_query_always && !s.server_reset_query.is_empty() {
            // The client already has its answer queued; let it go out first.
            let _ = self.c.conn.flush().await;
            let q = s.server_reset_query.clone();
            if a.server.run_internal(&q).await.is_err() {
                a.pool.discard(a.server);
                return;
            }
        }
        let clean = a.is_clean();
        a.pool.release(a.server, clean);
    }

    /// The server connection broke: the client gets 08006 and is disconnected (its
    /// transaction is gone); the next client gets a fresh server connection.
    fn server_lost(&mut self, why: &str) -> Flow {
        if let Some(a) = self.attached.take() {
            tracing::warn!(user = %self.c.user, pool = %a.pool.name(), server = a.server.id, reason = why, "server connection lost");
            a.pool.discard(a.server);
        }
        self.c
            .conn
            .queue(&build::fatal(sqlstate::CONNECTION_FAILURE, why));
        Flow::Quit
    }

    /// The client is leaving: return or close its server, flush what is queued.
    async fn finish(&mut self) {
        if let Some(mut a) = self.attached.take() {
            self.c.key.slot.set(None).await;
            let s = self.ctx.settings();
            let mut clean = a.is_clean();
            let reset = &s.server_reset_query;
            if clean
                && !reset.is_empty()
                && (self.mode == PoolMode::Session || s.server_reset_query_always)
            {
                let r = tokio::time::timeout(Duration::from_secs(10), a.server.run_internal(reset))
                    .await;
                clean = matches!(r, Ok(Ok(())));
            }
            if clean {
                a.pool.release(a.server, true);
            } else {
                a.pool.discard(a.server);
            }
        }
        if self.c.conn.pending_output() > 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.c.conn.flush()).await;
        }
    }
}

fn decode_fields(f: &Frame) -> crate::protocol::ErrorFields {
    crate::protocol::ErrorFields::parse(f.body()).unwrap_or_default()
}
