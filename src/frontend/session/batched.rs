//! A client's statement served in a batch (server-side pipelining, `pool::batch`).
//!
//! Rules:
//! - Only a unit that is its own implicit transaction and leaves the session as it was
//!   may go in a batch: one simple Query of plain DML without session effects (the same
//!   test as the forwarding fast path: `is_plain_dml`, `dml_effects`), or an
//!   extended-protocol group of the unnamed statement and portal (Parse, Bind, at most one
//!   Describe, an unlimited Execute, Sync: all already sent) of such a statement, from a
//!   client idle
//!   outside any transaction, not pinned, holding nothing, whose text pgtenant reads as
//!   the server does, not listening, without a tenant claim and without blue-green homes;
//!   with `session_check = auto` and no `server_reset_query_always` (no query runs between
//!   two clients' transactions). The ticket is made only once the pool has no idle
//!   connection for it (the fast path pays nothing).
//! - The ticket says whether the statement may wait on another transaction or sleep
//!   (`router::effects::may_wait`: anything but a plain read the scan can vouch for); a
//!   batch sends nothing behind such a unit (`pool::batch` rules).
//! - The client's answer is exactly the server's, frame by frame; a ParameterStatus in it
//!   reaches the client (and the connection, which notes it) but not the client's view.
//! - A broken server connection ends the client's session as `lost` says, as if the
//!   connection had been its own; so does a batch that gave up waiting for this client to
//!   read its answer (`pool::batch::STALL_MAX`, in all over the answer). A unit its batch
//!   never ran (the server ended the backend first, the connection failed its health
//!   check, or a batch-mate's cancel rolled it back with a unit that may wait still to
//!   come) is the client's again, as before it was taken.
use std::sync::Arc;

use super::*;
use crate::pool::batch::{End, LostServer, Ticket};
use crate::router::effects;

/// What a batched statement came to (the tenant sketches take it where the route is known).
pub(super) struct Served {
    pub took: Duration,
    pub errors: u32,
}

impl Session {
    /// A ticket for the unit `first` starts when it may go in a batch (see the module
    /// rules), with the messages of the unit taken from the client's input after `first`
    /// (given back with [`Session::give_back_unit`] when no batch takes it).
    pub(super) fn batch_unit(&mut self, first: &Frame) -> Option<(Arc<Ticket>, Vec<Frame>)> {
        let s = self.ctx.settings.load();
        if !s.server_pipelining
            || s.session_check_always
            || s.server_reset_query_always
            || self.mode == PoolMode::Session
            || self.client_tx != b'I'
            || self.pinned
            || self.skip_until_sync
            || self.view.unreadable
            || self.listening.is_some()
            || self.c.blue.is_some()
            || !self.deferred.is_empty()
        {
            return None;
        }
        drop(s);
        let (frames, taken, waits) = match first.tag() {
            b'Q' if self.held.is_empty() => {
                let sql = decode::query_text(first.body()).ok()?;
                if !plain(&sql) {
                    return None;
                }
                (vec![first.clone()], Vec::new(), effects::may_wait(&sql))
            }
            b'P' | b'B' => {
                let taken = self.take_group(first)?;
                let mut frames = Vec::with_capacity(taken.len() + 2);
                if let [Held::Parse(p)] = &self.held[..] {
                    frames.push(p.clone());
                }
                frames.push(first.clone());
                frames.extend(taken.iter().cloned());
                let Some(waits) = unnamed_group(&frames) else {
                    self.give_back_unit(taken);
                    return None;
                };
                (frames, taken, waits)
            }
            _ => return None,
        };
        let cancel: Arc<dyn crate::pool::batch::UnitCancel> = self.c.key.slot.clone();
        Some((
            Ticket::new(frames, self.view.desired.clone(), cancel, waits),
            taken,
        ))
    }

    /// The rest of an extended-protocol group after `first` (a Parse with nothing held, or
    /// a Bind after a held Parse), taken from the client's input: Bind (after a Parse),
    /// at most one Describe, Execute, Sync, all already there. None (nothing taken) when
    /// the group is not that, or not complete yet.
    fn take_group(&mut self, first: &Frame) -> Option<Vec<Frame>> {
        let after_parse = match (first.tag(), &self.held[..]) {
            (b'P', []) => true,
            (b'B', [Held::Parse(_)]) => false,
            _ => return None,
        };
        let n = {
            let mut tags = self.c.conn.buffered_tags();
            let mut n = 0;
            if after_parse {
                if tags.next()? != b'B' {
                    return None;
                }
                n += 1;
            }
            let mut t = tags.next()?;
            if t == b'D' {
                n += 1;
                t = tags.next()?;
            }
            if t != b'E' || tags.next()? != b'S' {
                return None;
            }
            n + 2
        };
        let mut taken = Vec::with_capacity(n);
        for _ in 0..n {
            match self.c.conn.try_frame() {
                Ok(Some(f)) => taken.push(f),
                _ => {
                    // Cannot happen (the frames were complete); nothing is lost either way.
                    self.give_back_unit(taken);
                    return None;
                }
            }
        }
        Some(taken)
    }

    /// Messages [`Session::batch_unit`] took from the client's input, back in front of
    /// what it sends next (no batch took the unit: they go the usual way).
    pub(super) fn give_back_unit(&mut self, taken: Vec<Frame>) {
        for f in taken.into_iter().rev() {
            self.deferred.push_front(f);
        }
    }

    /// A unit its batch never ran ([`End::NotRun`]) is the client's again, as before
    /// [`Session::batch_unit`] took it: the Parse held for its Bind held again, the rest
    /// of its group (after `first`) first in what the client sends next.
    pub(super) fn take_back_unit(&mut self, t: &Ticket, first: &Frame) {
        let at = t
            .frames
            .iter()
            .position(|f| f.raw() == first.raw())
            .unwrap_or(0);
        if let (1, Some(p)) = (at, t.frames.first()) {
            self.held.push(Held::Parse(p.clone()));
        }
        self.give_back_unit(t.frames[at + 1..].to_vec());
    }

    /// Relay the answer of a statement a batch took to the client. The client's session
    /// ends here when the server connection broke under the batch (`session_lost`).
    /// None: the batch never ran it (its client takes it again, `take_back_unit`).
    pub(super) async fn serve_batched(&mut self, t: Arc<Ticket>, pool: &Pool) -> Option<Served> {
        /// The ticket is left (its batch stops waiting for this client) however this
        /// future ends.
        struct Leave(Arc<Ticket>);
        impl Drop for Leave {
            fn drop(&mut self) {
                self.0.leave();
            }
        }
        let t = Leave(t);
        // Served meanwhile, as a client attached to a server is (SHOW CLIENTS, the
        // clients' metrics): not idle.
        let _active = crate::metrics::counters::Active::enter_for(Some(self.c.state_ref()));
        let mut frames = Vec::new();
        let end = loop {
            let end = t.0.next(&mut frames).await;
            for f in frames.drain(..) {
                self.c.conn.queue(&f);
            }
            if let Some(end) = end {
                break end;
            }
            if self.c.conn.pending_output() >= HIGH_WATER && self.c.conn.flush().await.is_err() {
                // The client is gone: the rest of its answer has nowhere to go.
                self.session_lost = true;
                return Some(Served {
                    took: Duration::ZERO,
                    errors: 0,
                });
            }
        };
        match end {
            End::Done { errors, code, took } => {
                if let (Some(code), Some(c)) = (code, &self.c.cluster) {
                    // On a worker, a missing relation or an internal error can mean the
                    // shard moved away: check the map now (as `relay` does).
                    if pool.key.node != self.c.pool.key.node
                        && matches!(code.as_str(), "42P01" | "XX000" | "55000")
                    {
                        c.map.request_refresh();
                    }
                }
                self.client_tx = b'I';
                let served = Served { took, errors };
                if let Some(k) = self.tenant.take() {
                    self.served_for(&k, &served);
                }
                Some(served)
            }
            End::NotRun => {
                tracing::debug!(user = %Escaped(&self.c.user), pool = %pool.name(), "the batch's server connection ended before this statement's turn; it goes again");
                None
            }
            End::Lost(why) => {
                let told = match &why {
                    LostServer::Fatal(f) => Lost::Fatal(f).told(),
                    LostServer::Closed => Lost::Closed.told(),
                    LostServer::Io(e) => {
                        Lost::Io(&io::Error::new(io::ErrorKind::ConnectionReset, e.clone())).told()
                    }
                    LostServer::Unreadable(e) => Lost::Unreadable(e).told(),
                    LostServer::ClientStalled => Lost::Unreadable(&format!(
                        "the client left its answer unread for {} s in all while other \
                         clients' statements waited behind it on the server connection",
                        crate::pool::batch::STALL_MAX.as_secs()
                    ))
                    .told(),
                };
                tracing::warn!(user = %Escaped(&self.c.user), pool = %pool.name(), reason = ?why, "server connection lost under a batched statement");
                self.c.conn.queue(&told);
                self.session_lost = true;
                Some(Served {
                    took: Duration::ZERO,
                    errors: 1,
                })
            }
        }
    }

    /// Record a batched transaction with its tenant (SHOW TENANTS, activity).
    pub(super) fn served_for(&self, k: &crate::metrics::tenants::TenantKey, s: &Served) {
        if s.errors > 0 {
            self.ctx.tenants.error(k);
        }
        self.ctx.tenants.transaction(k, s.took);
        self.ctx.activity.record(k.hash(), Instant::now());
    }
}

/// Plain DML that leaves the session as it was (the forwarding fast path's test).
fn plain(sql: &str) -> bool {
    is_plain_dml(sql) && dml_effects(sql) == 0
}

/// Parse, Bind, [Describe], Execute, Sync of the unnamed statement and portal, the
/// statement plain (see [`plain`]) and the Execute unlimited: a unit of its own, which
/// leaves nothing behind but the unnamed statement. Whether it may wait (see
/// [`effects::may_wait`]) when it is.
fn unnamed_group(frames: &[Frame]) -> Option<bool> {
    let [p, b, rest @ ..] = frames else {
        return None;
    };
    let (Ok(p), Ok(b)) = (Parse::decode(p.body()), Bind::decode(b.body())) else {
        return None;
    };
    if !p.name.is_empty() || !b.portal.is_empty() || !b.statement.is_empty() || !plain(&p.query) {
        return None;
    }
    rest.iter()
        .all(|f| match f.tag() {
            b'D' => Target::decode(f.body()).is_ok_and(|t| t.name.is_empty()),
            // The unnamed portal, no row limit.
            b'E' => f.body() == [0u8; 5],
            b'S' => true,
            _ => false,
        })
        .then(|| effects::may_wait(&p.query))
}
