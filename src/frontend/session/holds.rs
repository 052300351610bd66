//! Routing holds: the first message of a transaction decides the node; BEGIN and friends
//! and Parses are held (answered out of sight) until a statement tells.
use super::attach::WorkerAttach;
use super::limits::limited_tenant;
use super::*;
use crate::citus::ShardMap;
use crate::router::Plan;

impl Session {
    /// The first message with no server attached: decide the node (tenant routing in
    /// transaction/statement mode once a shard map is loaded; the coordinator otherwise)
    /// and attach. Returns the message back when a server is attached and it must be
    /// forwarded; None when it was held, answered, or refused.
    pub(super) async fn route_first(&mut self, f: Frame) -> Option<Frame> {
        if self.c.blue.is_none() {
            return self.route_first_once(f).await;
        }
        // Blue-green: the home was looked up before the wait for a server connection; if
        // this instance's lease lapsed meanwhile and the tenant moved, nothing was sent
        // yet: route again (see `homes::settle_home`).
        for _ in 0..3 {
            let r = self.route_first_once(f.clone()).await;
            if r.is_none() {
                return r;
            }
            match self.settle_home(&f).await {
                Some(true) => return r,
                Some(false) => continue,
                None => return None,
            }
        }
        self.route_first_once(f).await
    }

    async fn route_first_once(&mut self, f: Frame) -> Option<Frame> {
        let pause = &self.ctx.admin.pause;
        if pause.is_paused(&self.c.pool.key.database) {
            // PAUSE: the new transaction waits for RESUME (or for its end: KILL, SHUTDOWN).
            Box::pin(async {
                tokio::select! {
                    _ = pause.wait(&self.c.pool.key.database) => {}
                    _ = self.c.state().console.killed() => {}
                    _ = self.ctx.shutdown.cancelled() => {}
                }
            })
            .await;
        }
        // After any PAUSE (PgBouncer's switchover is PAUSE, RELOAD, RESUME): a RELOAD or
        // SET since this client's home was looked up may have moved its database entry or
        // changed its routing.
        let epoch = self
            .ctx
            .config_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        let cluster_ended = self
            .c
            .cluster
            .as_ref()
            .is_some_and(|c| c.stop.is_cancelled());
        if (epoch != self.c.home_epoch || self.c.pool.is_stale() || cluster_ended)
            && !self.move_home(epoch)
        {
            return None;
        }
        let map = match self.mode {
            PoolMode::Session => None,
            _ => self.c.cluster.as_ref().and_then(|c| c.map.get()),
        };
        let Some(map) = map else {
            self.ctx.routes.count(RouteReason::NoRouting, false);
            self.route = (RouteReason::NoRouting, false);
            let mut pool = self.c.pool.clone();
            if let Some(bh) = self.c.blue.clone() {
                if self.home_without_map(&f, &bh)? == crate::bluegreen::Home::Blue {
                    pool = bh.pool.clone();
                }
            }
            return self.attach(&f, pool).await.then_some(f);
        };
        let planner = self.ctx.router.planner();
        let health = &self.ctx.node_health;
        // Reads may leave the coordinator (a worker's reference copy, or the spread) only
        // as a transaction of their own: a BEGIN block that starts with one must not take
        // its later writes to a worker.
        let own = self.own_transaction();
        let (local_reference, spread, limits_on) = {
            let s = self.ctx.settings.load();
            (
                s.reference_reads == crate::config::ReferenceReads::LocalWorker,
                s.multi_tenant_reads == crate::config::MultiTenantReads::Any,
                self.ctx.tenant_limits.on(&s),
            )
        };
        let reads = |own: bool| Reads {
            local_reference: local_reference && own,
            spread: (spread && own).then_some(&self.ctx.read_spread),
        };
        // `SET pgtenant.tenant = '42'`: a session-wide hint for statements without a key,
        // given to the planner as the sqlcommenter comment it already understands.
        let session_hint = session_hint(
            self.view
                .desired
                .get(SESSION_TENANT_SETTING)
                .map(|v| v.as_str()),
        );
        let mut tenant = None;
        let decision = match f.tag() {
            // Held too much already (Parse after Parse and no Bind, SAVEPOINT after
            // SAVEPOINT): the coordinator, which runs anything, takes the transaction now
            // (with everything held) rather than pgtenant keeping what the client sends.
            _ if self.held_full() => Decision::Coordinator(RouteReason::NoKey),
            // A held transaction that failed in pgtenant (`refuse_in_batch`): it is opened
            // and failed on the coordinator, which answers the rest as PostgreSQL would.
            // Its COMMIT or ROLLBACK needs no server: pgtenant answers it (`end_failed_held`).
            _ if self.client_tx == b'E' => {
                if self.end_failed_held(&f, &map, session_hint.as_deref()) {
                    return None;
                }
                Decision::Coordinator(RouteReason::TransactionControl)
            }
            b'Q' => match decode::query_text(f.body()) {
                Ok(sql) if !self.routable(&sql) => Decision::Coordinator(RouteReason::Encoding),
                Ok(sql) => match keep_tenant(
                    &mut tenant,
                    decide_simple_keyed(
                        planner,
                        &map,
                        health,
                        &hinted(&sql, session_hint.as_deref()),
                        reads(own),
                    ),
                ) {
                    Decision::Hold(t) => {
                        let tag = tx_tag(t, &sql);
                        if self.hold_transaction_control(t, tag, &f) {
                            return None;
                        }
                        Decision::Coordinator(RouteReason::TransactionControl)
                    }
                    d => d,
                },
                Err(_) => Decision::Coordinator(RouteReason::NoKey),
            },
            b'P' => {
                // The node depends on the Bind's values: hold the Parse until then.
                self.held.push(Held::Parse(f));
                return None;
            }
            b'B' => match Bind::decode(f.body()) {
                Ok(b) => match self.statement_text(b.statement) {
                    Some((sql, _)) if !self.routable(&sql) => {
                        Decision::Coordinator(RouteReason::Encoding)
                    }
                    Some((sql, def)) => match keep_tenant(
                        &mut tenant,
                        decide_bind_keyed(
                            self.plan_bound(&sql, def.as_deref(), &map, session_hint.as_deref()),
                            &map,
                            health,
                            &b,
                            reads(own && self.bind_ends_its_group()),
                        ),
                    ) {
                        Decision::Hold(t) => {
                            let tag = tx_tag(t, &sql);
                            let unnamed = b.statement.is_empty();
                            if b.portal.is_empty()
                                && self.hold_extended_transaction_control(t, tag, &sql, unnamed)
                            {
                                return None;
                            }
                            Decision::Coordinator(RouteReason::TransactionControl)
                        }
                        d => d,
                    },
                    None => Decision::Coordinator(RouteReason::NoKey),
                },
                Err(_) => Decision::Coordinator(RouteReason::NoKey),
            },
            _ => Decision::Coordinator(RouteReason::NoKey),
        };
        let (pool, reason) = match decision {
            Decision::Node(node, reason) if node != self.c.pool.key.node => {
                let key = crate::pool::PoolKey {
                    node,
                    database: self.c.pool.key.database.clone(),
                    dbname: self.c.pool.key.dbname.clone(),
                    user: self.c.pool.key.user.clone(),
                    forced: self.c.pool.key.forced,
                };
                (self.ctx.pools.get(&key), reason)
            }
            Decision::Node(_, reason) => (self.c.pool.clone(), reason),
            Decision::Coordinator(r) => (self.c.pool.clone(), r),
            Decision::Anywhere => (self.c.pool.clone(), RouteReason::Anywhere),
            Decision::Hold(_) => (self.c.pool.clone(), RouteReason::TransactionControl),
        };
        if limits_on {
            self.claim_tenant = limited_tenant(reason, &tenant);
        }
        // Blue-green: the tenant's home (or the default one) decides between blue and
        // the decision above (green).
        let mut running = None;
        if let Some(bh) = self.c.blue.clone() {
            let placed = self.tenant_home(&f, &bh, &tenant).await?;
            running = placed.running;
            if placed.home == crate::bluegreen::Home::Blue {
                let blue = bh.pool.clone();
                self.note_route(reason, false, tenant, &blue);
                return self.attach_home(&f, blue, running).await.then_some(f);
            }
        }
        let to_worker = !Arc::ptr_eq(&pool, &self.c.pool);
        let worker = match to_worker {
            true => self.attach_worker(&f, pool.clone()).await,
            false => WorkerAttach::Attached,
        };
        if let WorkerAttach::Refused = worker {
            return None;
        }
        if let WorkerAttach::Served(served) = worker {
            // Its statement went in a batch on the worker and its answer is out.
            self.note_route(reason, true, tenant, &pool);
            self.ctx.routes.count_statement(self.route.0, self.route.1);
            self.ctx.node_health.mark_up(&pool.key.node);
            if let Some(k) = self.tenant.take() {
                self.served_for(&k, &served);
            }
            return None;
        }
        if let WorkerAttach::Unreachable = worker {
            // The worker is unreachable: mark it down (probed in the background until it
            // answers) and let the coordinator serve.
            let base = self.ctx.settings.load().worker_retry_delay;
            if self.ctx.node_health.mark_down(&pool.key.node, base) {
                crate::frontend::node_health::spawn_probe(self.ctx.clone(), pool.clone());
            }
            self.ctx.routes.count(RouteReason::WorkerDown, false);
            self.route = (RouteReason::WorkerDown, false);
            let coord = self.c.pool.clone();
            return self.attach_home(&f, coord, running).await.then_some(f);
        }
        self.note_route(reason, to_worker, tenant, &pool);
        if to_worker {
            self.ctx.node_health.mark_up(&pool.key.node);
            if let Some(a) = self.attached.as_mut() {
                a.home = running;
            }
            return Some(f);
        }
        self.attach_home(&f, pool, running).await.then_some(f)
    }

    /// The plan of the statement a Bind names (`sql`, and its definition when the client
    /// prepared it by name), with the session's tenant hint.
    fn plan_bound(
        &self,
        sql: &str,
        def: Option<&StatementDef>,
        map: &ShardMap,
        hint: Option<&str>,
    ) -> Arc<Plan> {
        let planner = self.ctx.router.planner();
        match def {
            Some(def) => planner.plan_named(sql, hint, &map.tables, map.version, &def.plan),
            None => planner.plan_extended(&hinted(sql, hint), &map.tables, map.version),
        }
    }

    /// A transaction pgtenant held failed (`fail_held_transaction_if_any`) and nothing of
    /// it ran on a server: its COMMIT or ROLLBACK is answered here, as PostgreSQL answers
    /// both in a failed transaction (`ROLLBACK`, then ReadyForQuery `I`). No server is
    /// needed, so a client whose transaction failed because the pool had none (its
    /// query_wait_timeout) can end it at once. True: answered. Anything else (`ROLLBACK
    /// TO`, `AND CHAIN`, a statement) goes to the coordinator, which replays and fails the
    /// transaction and answers as PostgreSQL would.
    fn end_failed_held(&mut self, f: &Frame, map: &ShardMap, hint: Option<&str>) -> bool {
        if !self.holds_transaction() {
            return false;
        }
        let ends = |p: &Plan| {
            matches!(
                p,
                Plan::Transaction(TxControl::Commit | TxControl::Rollback)
            )
        };
        match f.tag() {
            b'Q' => {
                let Ok(sql) = decode::query_text(f.body()) else {
                    return false;
                };
                let planner = self.ctx.router.planner();
                ends(&planner.plan_simple(&sql, &map.tables, map.version).plan)
                    && self.hold_transaction_control(TxControl::Rollback, "ROLLBACK", f)
            }
            // The Parse of such an end is held for its Bind, as in a transaction that
            // has not failed.
            b'P' => {
                let Ok(parse) = Parse::decode(f.body()) else {
                    return false;
                };
                let planner = self.ctx.router.planner();
                let plan = planner.plan_extended(&parse.query, &map.tables, map.version);
                if ends(&plan) {
                    self.held.push(Held::Parse(f.clone()));
                }
                ends(&plan)
            }
            b'B' => {
                let Ok(b) = Bind::decode(f.body()) else {
                    return false;
                };
                let Some((sql, def)) = self.statement_text(b.statement) else {
                    return false;
                };
                b.portal.is_empty()
                    && ends(&self.plan_bound(&sql, def.as_deref(), map, hint))
                    && self.hold_extended_transaction_control(
                        TxControl::Rollback,
                        "ROLLBACK",
                        &sql,
                        b.statement.is_empty(),
                    )
            }
            _ => false,
        }
    }

    /// Count the route (SHOW ROUTES) and keep the transaction's tenant for the tenant
    /// sketches when a key or hint decided, with the node of `pool`.
    fn note_route(
        &mut self,
        reason: RouteReason,
        to_worker: bool,
        tenant: crate::frontend::routing::TenantOf,
        pool: &Arc<Pool>,
    ) {
        self.ctx.routes.count(reason, to_worker);
        self.route = (reason, to_worker);
        self.tenant = match (reason, tenant) {
            (RouteReason::TenantKey | RouteReason::Hint, Some((colocation, value))) => {
                Some(Box::new(self.ctx.tenants.key(
                    colocation,
                    &value,
                    pool.key.node.name.clone(),
                )))
            }
            _ => None,
        };
    }

    /// Is the statement about to be routed a transaction of its own, which a read may
    /// leave the coordinator for (`multi_tenant_reads = any`)? The client is idle (no
    /// BEGIN, held or on a server), not pinned to a server, and its text reads to pgtenant
    /// as to the server (`View::unreadable`). A simple Query is then one implicit
    /// transaction; an extended-protocol statement must also end its group
    /// ([`Session::bind_ends_its_group`]).
    fn own_transaction(&self) -> bool {
        self.client_tx == b'I' && !self.pinned && !self.view.unreadable && !self.holds_transaction()
    }

    /// The Bind being routed is followed, in what the client already sent, by nothing but
    /// Describe and Execute, then a Sync: its group (one implicit transaction) holds no
    /// other statement. A group not complete yet, a Flush, another Parse or Bind → false.
    fn bind_ends_its_group(&self) -> bool {
        let mut next = self
            .deferred
            .iter()
            .map(Frame::tag)
            .chain(self.c.conn.buffered_tags());
        loop {
            match next.next() {
                Some(b'D' | b'E') => continue,
                Some(b'S') => return true,
                _ => return false,
            }
        }
    }

    /// Is the client in a transaction pgtenant holds (its BEGIN answered, not yet sent to
    /// a server)?
    pub(super) fn holds_transaction(&self) -> bool {
        holds_transaction(&self.held)
    }

    /// An error reached the client inside a transaction pgtenant holds: that transaction
    /// has failed, as PostgreSQL's would. ReadyForQuery says `E`, nothing more is held,
    /// and the next message opens and fails it on the coordinator (see
    /// `forward::fail_held_transaction`), so its statements get 25P02 and its COMMIT
    /// rolls back.
    pub(super) fn fail_held_transaction_if_any(&mut self) {
        if self.holds_transaction() {
            self.client_tx = b'E';
        }
    }

    /// pgtenant refuses a message of the client's batch with no server attached (its
    /// error goes out now, the rest of the batch is skipped). The Parses held for the
    /// batch's Bind go with it: the error is their answer, as if the first of them had
    /// failed, and none is replayed (with a ParseComplete the client no longer waits
    /// for) on the server a later batch takes. A transaction pgtenant holds fails.
    pub(super) fn refused_without_server(&mut self) {
        self.held.retain(|h| !matches!(h, Held::Parse(_)));
        self.fail_held_transaction_if_any();
    }

    /// Messages held while no node is chosen are bounded (by count and bytes): past that
    /// nothing more is held, and the transaction goes to the coordinator.
    pub(super) fn held_full(&self) -> bool {
        const HELD_MAX: usize = 64;
        const HELD_MAX_BYTES: usize = 1024 * 1024;
        self.held.len() >= HELD_MAX
            || self
                .held
                .iter()
                .map(|h| match h {
                    Held::Answered(f) | Held::Parse(f) => f.len(),
                })
                .sum::<usize>()
                >= HELD_MAX_BYTES
    }

    /// BEGIN (and, inside a held BEGIN, SET LOCAL / SAVEPOINT / RELEASE / ROLLBACK TO,
    /// COMMIT / ROLLBACK) before any statement decided the node: answered by pgtenant.
    /// Returns false when it must go to a server instead.
    pub(super) fn hold_transaction_control(
        &mut self,
        t: TxControl,
        tag: &'static str,
        f: &Frame,
    ) -> bool {
        if self.mode != PoolMode::Transaction {
            return false;
        }
        let in_held_tx = self.holds_transaction();
        match t {
            TxControl::Begin if !in_held_tx && self.client_tx == b'I' && self.held.is_empty() => {
                self.held.push(Held::Answered(f.clone()));
                self.client_tx = b'T';
            }
            TxControl::SetLocal
            | TxControl::Savepoint
            | TxControl::Release
            | TxControl::RollbackTo
                if in_held_tx =>
            {
                self.held.push(Held::Answered(f.clone()));
            }
            TxControl::Commit | TxControl::Rollback if in_held_tx => {
                // Nothing ran: there is nothing to commit or roll back anywhere.
                self.held.retain(|h| !matches!(h, Held::Answered(_)));
                self.client_tx = b'I';
            }
            _ => return false,
        }
        self.c.conn.queue(&build::command_complete(tag));
        self.c.conn.queue(&build::ready_for_query(self.client_tx));
        true
    }

    /// BEGIN & co. sent with the extended protocol (JDBC, tokio-postgres `execute`):
    /// answered by pgtenant like the simple-protocol ones: ParseComplete for the held
    /// unnamed Parse, BindComplete now, CommandComplete at Execute (through the fake
    /// portal), ReadyForQuery at Sync.
    pub(super) fn hold_extended_transaction_control(
        &mut self,
        t: TxControl,
        tag: &'static str,
        sql: &str,
        unnamed: bool,
    ) -> bool {
        if self.mode != PoolMode::Transaction {
            return false;
        }
        let in_held_tx = self.holds_transaction();
        let held_parses = self
            .held
            .iter()
            .filter(|h| matches!(h, Held::Parse(_)))
            .count();
        // Only the simple shape: at most the unnamed Parse of this very statement held.
        if held_parses > usize::from(unnamed) {
            return false;
        }
        match t {
            TxControl::Begin if !in_held_tx && self.client_tx == b'I' => {
                self.client_tx = b'T';
                self.held.retain(|h| !matches!(h, Held::Parse(_)));
                self.held.push(Held::Answered(build::query(sql)));
            }
            TxControl::SetLocal
            | TxControl::Savepoint
            | TxControl::Release
            | TxControl::RollbackTo
                if in_held_tx =>
            {
                self.held.retain(|h| !matches!(h, Held::Parse(_)));
                self.held.push(Held::Answered(build::query(sql)));
            }
            TxControl::Commit | TxControl::Rollback if in_held_tx => {
                self.held.clear();
                self.client_tx = b'I';
            }
            _ => return false,
        }
        if held_parses > 0 {
            self.c.conn.queue_held(&Frame::new(b'1', &[]));
        }
        self.c.conn.queue_held(&Frame::new(b'2', &[]));
        self.fake_statement = None;
        self.fake_portal = Some(Box::new(("".into(), tag)));
        true
    }

    /// Can the router read this text? Text that is not UTF-8 (read with U+FFFD in its
    /// place) or not ASCII in a client encoding other than UTF-8 is not what the server
    /// will see once it converts it: its tenant key would hash wrongly.
    fn routable(&self, sql: &str) -> bool {
        if sql.is_ascii() {
            return true;
        }
        let utf8 = self
            .view
            .desired
            .get("client_encoding")
            .is_none_or(|e| crate::protocol::encodings::canonical(e) == Some("UTF8"));
        utf8 && !sql.contains('\u{FFFD}')
    }

    /// The text of the statement a Bind names: a held Parse, or the client's view.
    pub(super) fn statement_text(
        &self,
        name: &str,
    ) -> Option<(Arc<str>, Option<Arc<StatementDef>>)> {
        for h in self.held.iter().rev() {
            if let Held::Parse(p) = h {
                if let Ok(parse) = Parse::decode(p.body()) {
                    if parse.name == name {
                        return Some((parse.query.into(), None));
                    }
                }
            }
        }
        if name.is_empty() {
            return None;
        }
        self.view
            .t()
            .statements
            .get(name)
            .map(|d| (d.query.clone(), Some(d.clone())))
    }
}

/// The longest `pgtenant.tenant` value used as a hint: a tenant key is short, and the
/// hint is appended to every statement text planned (and kept with a long statement's own
/// plan, `StatementDef.plan`). A longer value gives no hint.
pub(super) const MAX_SESSION_HINT: usize = 256;

/// The session's tenant hint (`SET pgtenant.tenant = '42'`), as the sqlcommenter comment
/// the planner already understands; none when the value is empty or over
/// [`MAX_SESSION_HINT`] bytes.
pub(super) fn session_hint(value: Option<&str>) -> Option<String> {
    value
        .filter(|v| !v.is_empty() && v.len() <= MAX_SESSION_HINT)
        .map(|v| {
            format!(
                " /* tenant_id='{}' */",
                v.replace('\\', "\\\\")
                    .replace('\'', "\\'")
                    .replace("*/", "")
            )
        })
}

/// [`Session::holds_transaction`], for a caller that has the session's fields apart.
pub(super) fn holds_transaction(held: &[Held]) -> bool {
    held.iter().any(|h| matches!(h, Held::Answered(_)))
}

/// `sql` with the session's tenant hint appended, if there is one.
pub(super) fn hinted<'a>(sql: &'a str, hint: Option<&str>) -> std::borrow::Cow<'a, str> {
    match hint {
        Some(h) => std::borrow::Cow::Owned(format!("{sql}{h}")),
        None => std::borrow::Cow::Borrowed(sql),
    }
}

/// Keep the tenant of a routing decision aside; return the decision.
pub(super) fn keep_tenant(
    slot: &mut crate::frontend::routing::TenantOf,
    (d, t): (Decision, crate::frontend::routing::TenantOf),
) -> Decision {
    *slot = t;
    d
}

impl Session {
    /// The client's pool went stale on RELOAD (its database entry changed or went away):
    /// take its new home before this transaction, or end the session with the error a new
    /// login would get. False: the session ends.
    fn move_home(&mut self, epoch: u64) -> bool {
        self.c.home_epoch = epoch;
        let s = self.ctx.settings();
        let home = crate::frontend::target::home(
            &self.ctx,
            &s,
            &self.c.database,
            &self.c.user,
            self.c.credential.as_deref().cloned(),
        );
        let Some(home) = home else {
            tracing::info!(user = %Escaped(&self.c.user), database = %Escaped(&self.c.database), "database entry removed on reload: closing its client");
            self.c
                .conn
                .queue(&crate::frontend::target::no_such_database(&self.c.database));
            self.session_lost = true;
            return false;
        };
        if !Arc::ptr_eq(&home.pool, &self.c.pool) {
            tracing::debug!(from = %self.c.pool.name(), to = %home.pool.name(), "database entry changed on reload: client moves");
            // LISTENs were made through the old pool's listening connection
            // (`Listening::sub`): they stay there (notifications from the old place) until
            // the client UNLISTENs or leaves; see README "Databases".
        }
        // The pool mode stays the one the client logged in with (its session's state
        // tracking depends on it); a changed pool_mode applies to new clients.
        self.c.pool = home.pool;
        self.c.cluster = home.cluster;
        self.c.blue = home.blue;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{session_hint, MAX_SESSION_HINT};

    /// A session's tenant hint is a short comment; a value too long for a tenant key gives
    /// none (it would be appended to every text planned, and kept with long statements'
    /// plans).
    #[test]
    fn long_session_hints_are_not_used() {
        assert_eq!(
            session_hint(Some("42")).as_deref(),
            Some(" /* tenant_id='42' */")
        );
        assert_eq!(
            session_hint(Some("a'b*/c")).as_deref(),
            Some(" /* tenant_id='a\\'bc' */")
        );
        assert_eq!(session_hint(Some("")), None);
        assert_eq!(session_hint(None), None);
        let max = "7".repeat(MAX_SESSION_HINT);
        assert!(session_hint(Some(&max)).is_some());
        assert_eq!(session_hint(Some(&format!("{max}7"))), None);
    }
}
