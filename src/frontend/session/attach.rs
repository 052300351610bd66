//! Server attach and release: taking a server connection from a pool, bringing its
//! session in line with the client's, giving it back (or closing it) when the transaction
//! ends or the client leaves.
use super::check;
use super::forward::hidden_query;
use super::*;

/// How long the session check may take before the connection is closed instead.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a lent connection runs before the client's first message: each statement, and
/// the `RESET` of its setting should the server refuse its value.
type Setup = Vec<(String, Option<String>)>;

/// Run one of pgtenant's statements; again (3 tries in all) when it was cancelled, or
/// refused for a lock or a serialization failure: the previous client's timeouts are
/// still in force while the setup runs.
async fn run_retrying(
    server: &mut ServerConn,
    sql: &str,
) -> Result<(), crate::backend::BackendError> {
    rows_retrying(server, sql).await?;
    if server.tx_status != b'I' {
        return Err(crate::backend::BackendError::NotIdle(
            server.tx_status as char,
        ));
    }
    Ok(())
}

/// [`run_retrying`], with the statement's rows (a statement cancelled or refused so
/// changed nothing).
async fn rows_retrying(
    server: &mut ServerConn,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, crate::backend::BackendError> {
    let mut tries = 1;
    loop {
        match server.query_rows(sql).await {
            Err(crate::backend::BackendError::Server(e))
                if tries < 3
                    && matches!(e.code.as_str(), "57014" | "55P03" | "40001" | "40P01") =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}

/// Run the check query. If the client's own `statement_timeout` cancels it (a client may
/// set 1 ms), read that value, run the check with the timeout off, and put the value
/// back: returns it then, since the check saw 0 (`statement_timeout` as the check found
/// it must be replaced by it).
async fn check_rows(
    a: &mut Attached,
    sql: &str,
) -> Result<(Vec<Vec<Option<String>>>, Option<String>), String> {
    let server = &mut a.server;
    let max = check::MAX_SETTINGS_BYTES;
    let first = tokio::time::timeout(CHECK_TIMEOUT, server.query_rows_within(sql, max))
        .await
        .map_err(|_| "timed out".to_string())?;
    let rows = match first {
        Ok(rows) => (rows, None),
        Err(crate::backend::BackendError::Server(e)) if e.code == sqlstate::QUERY_CANCELED => {
            let again = async {
                // Read the client's value and turn it off in one statement, tried again
                // when the timeout cancels even that; then nothing pgtenant runs here
                // can be cancelled by it.
                let was = rows_retrying(
                    server,
                    "SELECT pg_catalog.current_setting('statement_timeout'), \
                     pg_catalog.set_config('statement_timeout', '0', false)",
                )
                .await?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten())
                .unwrap_or_default();
                let rows = server.query_rows_within(sql, max).await?;
                server
                    .run_internal(&format!(
                        "SELECT pg_catalog.set_config('statement_timeout', {}, false)",
                        params::literal(&was)
                    ))
                    .await?;
                Ok::<_, crate::backend::BackendError>((rows, Some(was)))
            };
            tokio::time::timeout(CHECK_TIMEOUT, again)
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(check_failure)?
        }
        Err(e) => return Err(check_failure(e)),
    };
    if server.tx_status != b'I' {
        return Err("the server is not idle after the check".into());
    }
    Ok(rows)
}

/// Why the check failed, as the session reports it: over the bound, the words
/// [`check::TOO_LARGE`] begin it (the client is told 54000, not 08006).
fn check_failure(e: crate::backend::BackendError) -> String {
    match e {
        crate::backend::BackendError::TooLarge(n) => format!(
            "{} ({n} bytes): the session cannot travel between server connections",
            check::TOO_LARGE
        ),
        e => e.to_string(),
    }
}

/// What attaching to a worker came to.
pub(super) enum WorkerAttach {
    Attached,
    /// It could not be reached: the coordinator serves.
    Unreachable,
    /// The statement went in a batch on it (`batched`) and the client has its answer.
    Served(super::batched::Served),
    /// The client was told why not (a full pool, a tenant limit).
    Refused,
}

/// What [`Session::acquire`] got.
pub(super) enum Got {
    Conn(Box<ServerConn>, Instant, Option<Box<crate::limits::Claim>>),
    /// The statement went in a batch, and its answer went to the client.
    Served(super::batched::Served),
}

impl Session {
    /// Attach to a worker pool for the transaction `first` starts. A worker that cannot
    /// be reached is not the client's business (the caller falls back to the
    /// coordinator); a full pool or a tenant limit is: the client gets its error, as on
    /// any pool, and no other node takes the transaction (a saturated worker is not a
    /// down one, and a tenant's limit must not be escaped through the coordinator).
    pub(super) async fn attach_worker(&mut self, first: &Frame, pool: Arc<Pool>) -> WorkerAttach {
        if !pool.has_credential() {
            // A pool on another node logs in as this client's user, with its secret
            // (which its coordinator pool keeps: not a copy in every session).
            pool.set_credential(self.c.pool.credential());
        }
        let claim = self.take_claim(&pool);
        match self.acquire(&pool, claim, first).await {
            Ok(Got::Conn(server, lent, claim)) => {
                if !self.install(server, pool, lent).await {
                    self.refuse_setup(first);
                    return WorkerAttach::Refused;
                }
                self.claimed(claim);
                WorkerAttach::Attached
            }
            Ok(Got::Served(served)) => WorkerAttach::Served(served),
            Err(PoolError::Connect(e)) => {
                tracing::warn!(user = %Escaped(&self.c.user), pool = %pool.name(), error = %e, "worker connection failed");
                WorkerAttach::Unreachable
            }
            Err(e) => {
                self.refuse_pool_error(first, &pool, &e);
                WorkerAttach::Refused
            }
        }
    }

    /// Point the client's cancel key at its server (or at nothing). Waits only while a
    /// cancel is on its way (boxed then: the session's future stays small).
    pub(super) async fn set_cancel_target(&self, t: Option<Arc<crate::backend::CancelTarget>>) {
        if let Err(t) = self.c.key.slot.try_set(t) {
            Box::pin(self.c.key.slot.set(t)).await;
        }
    }

    /// A server connection from `pool` for the transaction `first` starts, counted as
    /// waiting meanwhile. With the time it was lent (the transaction's clock starts
    /// there), and the transaction's tenant claim back (marked when its tenant's limit
    /// made it wait). Or, when it had to wait and `first` is a unit a batch may take, a
    /// place in a batch (`batched`).
    pub(super) async fn acquire(
        &mut self,
        pool: &Arc<Pool>,
        mut claim: Option<Box<crate::limits::Claim>>,
        first: &Frame,
    ) -> Result<Got, PoolError> {
        if let Some(c) = claim.as_deref_mut() {
            if c.max_tps > 0.0 {
                Box::pin(self.take_token(c, pool)).await?;
            }
        }
        let now = Instant::now();
        if let Some(c) = pool.try_acquire_idle(now, claim.as_deref()) {
            return Ok(Got::Conn(c, now, claim));
        }
        let got = loop {
            let waiting = crate::metrics::counters::Waiting::enter_for(Some(self.c.state_ref()));
            let (unit, taken) = match claim {
                None => self.batch_unit(first).unzip(),
                Some(_) => (None, None),
            };
            // Boxed: the slow path (waiting, connecting) stays out of every session's
            // future, which an idle client keeps for as long as it is connected.
            let got = Box::pin(pool.acquire_unit(claim.as_deref_mut(), unit)).await;
            drop(waiting);
            match (&got, taken) {
                (Ok(crate::pool::Lent::Batched(_)), _) => {
                    // Sent with the unit: the Parse held for its Bind too.
                    self.held.clear();
                }
                (_, Some(taken)) => self.give_back_unit(taken),
                (_, None) => {}
            }
            let Ok(crate::pool::Lent::Batched(t)) = got else {
                break got;
            };
            match Box::pin(self.serve_batched(t.clone(), pool)).await {
                Some(served) => return Ok(Got::Served(served)),
                // Its batch's connection ended before its turn: again, as it was.
                None => self.take_back_unit(&t, first),
            }
        };
        let c = match got {
            Ok(crate::pool::Lent::Conn(c)) => c,
            Ok(crate::pool::Lent::Batched(_)) => unreachable!("served above"),
            Err(e) => {
                if let (PoolError::TenantWaitTimeout(_), Some(c)) = (&e, claim.as_deref()) {
                    // The same error for the client; the counts say whose limit it was.
                    self.ctx
                        .tenant_limits
                        .counts
                        .wait_timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.refused_by_limit(c, pool, now.elapsed());
                }
                return Err(e);
            }
        };
        let at = Instant::now();
        if let Some(cl) = claim.as_deref_mut().filter(|c| c.throttled) {
            cl.waited += at.saturating_duration_since(now);
        }
        Ok(Got::Conn(c, at, claim))
    }

    /// Make `server` this client's: cancel target, settings replay.
    /// `lent`: when the pool lent it; the first message forwarded (at once) starts the
    /// query and transaction clocks there.
    /// False: the connection could not be given the client's session (see
    /// [`Session::run_setup`]); it was closed and the client is not attached.
    pub(super) async fn install(
        &mut self,
        server: Box<ServerConn>,
        pool: Arc<Pool>,
        lent: Instant,
    ) -> bool {
        // Adopted first: while the cancel target is set (which may wait for a cancel on its
        // way) the connection is the session's (see `Drop for Session`).
        let cancel = server.cancel.clone();
        let setup = self.adopt(server, pool, Some(lent));
        self.set_cancel_target(Some(cancel)).await;
        if setup.is_empty() {
            return true;
        }
        // Boxed: a session's future stays small for the common case.
        Box::pin(self.run_setup(setup)).await
    }

    /// Run the take-over and settings replay on the connection just attached, each
    /// statement to its end, before the client's first message goes: the previous
    /// client's settings are still in force while they run, and one of them can make a
    /// statement fail (its `statement_timeout = 1` cancels a `RESET` on a busy machine,
    /// its `lock_timeout`, …). Queued blindly ahead of the client's message, such a
    /// failure let the client's statement run with the previous client's setting, or its
    /// role. Rules: a statement cancelled, or refused for a lock or a serialization
    /// failure, runs again (3 tries); a value the server refuses is logged and its
    /// setting reset to the server's default (the client goes on with less, never with
    /// another client's value); anything else closes the connection and the caller
    /// refuses the client's request with an error (it may retry).
    async fn run_setup(&mut self, setup: Setup) -> bool {
        let Some(a) = self.attached.as_mut() else {
            return false;
        };
        let user = self.c.user.clone();
        let steps = async {
            for (q, reset) in &setup {
                let e = match (run_retrying(&mut a.server, q).await, reset) {
                    (Ok(()), _) => continue,
                    (Err(crate::backend::BackendError::Server(e)), Some(reset)) => {
                        tracing::warn!(user = %Escaped(&user), code = %e.code, message = %e.message, "server refused a setting pgtenant replayed; the server's default applies");
                        match run_retrying(&mut a.server, reset).await {
                            Ok(()) => continue,
                            Err(e) => e,
                        }
                    }
                    (Err(e), _) => e,
                };
                return Err(e.to_string());
            }
            Ok(())
        };
        let failed = match tokio::time::timeout(CHECK_TIMEOUT, steps).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_string(),
        };
        self.set_cancel_target(None).await;
        let Some(a) = self.attached.take() else {
            return false;
        };
        tracing::warn!(user = %Escaped(&self.c.user), server = a.server.id, error = %failed, "a server connection could not be given the client's session; closing it");
        a.pool.discard(a.server);
        false
    }

    /// [`Session::install`] of the server connection a session-mode client took at login,
    /// before its session's first poll. Nothing to wait for: its key never had a target,
    /// so no cancel can be on its way. Its clocks start at its first message.
    pub(super) fn install_at_login(&mut self, server: Box<ServerConn>) {
        let set = self.c.key.slot.try_set(Some(server.cancel.clone()));
        debug_assert!(set.is_ok(), "a cancel in flight before the session started");
        let pool = self.c.pool.clone();
        // The client's own new connection: nothing of another client's is on it, so the
        // setup goes ahead of its first message.
        let setup = self.adopt(server, pool, None);
        if let Some(a) = self.attached.as_mut() {
            for (q, _) in &setup {
                hidden_query(a, q);
            }
        }
        // SHOW CLIENTS shows the link before the client's first message.
        self.c
            .state()
            .console
            .publish(self.attached.as_ref().map_or(0, |a| a.server.id), 0);
    }

    /// The rest of [`Session::install`], once the cancel target is set: the connection
    /// becomes the client's, and the take-over and settings replay it needs are returned.
    fn adopt(&mut self, server: Box<ServerConn>, pool: Arc<Pool>, lent: Option<Instant>) -> Setup {
        let mut a = Attached {
            server,
            pool,
            pipe: Pipeline::new(),
            effects: 0,
            query_started: None,
            lent,
            // Set by the transaction's first message (`forward`); a placeholder until then.
            xact_started: lent.unwrap_or_else(Instant::now),
            _active: crate::metrics::counters::Active::enter_for(Some(self.c.state_ref())),
            notified: false,
            unread: None,
            home: None,
            timer: None,
            throttled: None,
        };
        // Notifications this backend sends from now on are this client's (`listen`).
        self.ctx
            .listens
            .note_attach(a.server.cancel.pid, self.c.key.pid);
        let mut setup = Setup::new();
        let reset_all = self.take_over(&mut a, &mut setup);
        let mut replay = Vec::new();
        if !Arc::ptr_eq(&a.server.applied, &self.view.desired) {
            replay = params::replay_steps(&a.server.applied, &self.view.desired);
            setup.extend(replay.iter().cloned());
            a.server.applied = self.view.desired.clone();
        }
        // A reset took the connection back to the server's defaults: the entry's
        // connect_query is its starting point, so it runs again, and the client's own
        // settings after it (they win, as on a connection the client set up itself).
        if reset_all || replay.iter().any(|(q, _)| q.starts_with("RESET")) {
            if let Some(q) = a.pool.connect_query_sql() {
                setup.push((q, None));
                // The steps that set a value (they carry their RESET).
                setup.extend(replay.iter().filter(|(_, r)| r.is_some()).cloned());
            }
        }
        *self.attached = Some(Box::new(a));
        setup
    }

    /// Get a server connection for the transaction `first` starts and bring its session
    /// settings in line with the client's. On failure the client gets an error for this
    /// request and keeps its connection.
    pub(super) async fn attach(&mut self, first: &Frame, pool: Arc<Pool>) -> bool {
        let claim = self.take_claim(&pool);
        match self.acquire(&pool, claim, first).await {
            Ok(Got::Conn(server, lent, claim)) => {
                if !self.install(server, pool, lent).await {
                    self.refuse_setup(first);
                    return false;
                }
                self.claimed(claim);
                true
            }
            Ok(Got::Served(_)) => {
                self.ctx.routes.count_statement(self.route.0, self.route.1);
                false
            }
            Err(e) => {
                self.refuse_pool_error(first, &pool, &e);
                false
            }
        }
    }

    /// The connection lent for the transaction `first` starts could not be given the
    /// client's session (`run_setup`) and was closed: the client gets an error for this
    /// request and keeps its connection.
    fn refuse_setup(&mut self, first: &Frame) {
        self.refuse_first(
            first,
            sqlstate::CONNECTION_FAILURE,
            "a server connection could not be given this session's settings; try again",
        );
    }

    /// The pool had no connection for the transaction `first` starts: the client gets
    /// the error for this request and keeps its connection.
    fn refuse_pool_error(&mut self, first: &Frame, pool: &Pool, e: &PoolError) {
        match e {
            PoolError::WaitTimeout => {
                tracing::warn!(user = %Escaped(&self.c.user), pool = %pool.name(), "query_wait_timeout: pool exhausted")
            }
            PoolError::TenantWaitTimeout(t) => {
                tracing::warn!(user = %Escaped(&self.c.user), pool = %pool.name(), tenant = %Escaped(t), "query_wait_timeout: the tenant held its tenant_max_active connections")
            }
            PoolError::TenantRate(_) => {}
            e => {
                tracing::warn!(user = %Escaped(&self.c.user), pool = %pool.name(), error = %e, "no server connection")
            }
        }
        let fatal = pool_error_frame(e);
        // Same code and text, but ERROR: the client may retry on this connection.
        let fields = ErrorFields::parse(fatal.body()).unwrap_or_default();
        self.refuse_first(first, &fields.code, &fields.message);
    }

    /// The transaction whose first message is `first` gets no server: an ERROR (the
    /// client may retry on this connection), then ReadyForQuery for a simple Query (or
    /// what follows an extended group at its Sync).
    pub(super) fn refuse_first(&mut self, first: &Frame, code: &str, message: &str) {
        self.refused_without_server();
        self.c.conn.queue(&build::error(code, message));
        match first.tag() {
            b'Q' | b'F' | b'S' => self.c.conn.queue(&build::ready_for_query(self.client_tx)),
            _ => self.skip_until_sync = true,
        }
    }

    pub(super) fn arm_idle_tx_timer(&mut self) {
        let t = self.ctx.settings.load().idle_transaction_timeout;
        if !t.is_zero() {
            self.idle_tx_timer = Some(Box::pin(tokio::time::sleep(t)));
        }
    }

    /// Give the server connection back to its pool (it is clean), synchronously when
    /// nothing must be waited for: no settings to read back, no reset query, no cancel on
    /// its way. False: nothing was done, [`Session::release`] must run.
    pub(super) fn try_release(&mut self, now: Option<Instant>) -> bool {
        let Some(a) = self.attached.as_ref() else {
            return true;
        };
        if self.pinned || self.release_runs_queries(a) || self.c.key.slot.try_set(None).is_err() {
            return false;
        }
        if let Some(a) = self.attached.take() {
            give_back(*a, now);
        }
        true
    }

    /// [`Session::try_release`], waiting for a cancel on its way and, if the client
    /// changed settings in this transaction, reading them back first: that is its new
    /// session. `now`: the clock read at the ReadyForQuery, if it was.
    pub(super) async fn release(&mut self, now: Option<Instant>) {
        if self.attached.is_none() {
            return;
        }
        // While it waits, the connection stays the session's (see `Drop for Session`).
        self.set_cancel_target(None).await;
        let Some(a) = self.attached.take() else {
            return;
        };
        if a.pipe.lost_track {
            // Its answers can no longer be told apart (`Pipeline::lost_track`): a check's
            // query would read what the server still owes the client and take it for the
            // session's settings. The connection is closed unread. A transaction that
            // changed nothing leaves the client's view as it was; one that may have (a
            // SET, a function: `effects`), or a pinned client's state there, is lost with
            // it, and the client is told so rather than go on with a wrong session.
            let lost = self.pinned || a.effects != 0;
            a.pool.discard(a.server);
            if lost {
                self.lose_session(None);
            }
            return;
        }
        if self.pinned || self.release_runs_queries(&a) {
            // Boxed: a session's future stays small for the common case.
            let s = self.ctx.settings.load_full();
            Box::pin(self.release_slow(*a, s)).await;
            return;
        }
        give_back(*a, now);
    }

    /// The client's session state is lost with the server connection it was on (closed
    /// by the caller): the client is told (FATAL 08006, or 54000 when its settings are
    /// more than pgtenant keeps, `why`) and its session ends, rather than go on without
    /// it.
    fn lose_session(&mut self, why: Option<&str>) {
        self.pinned = false;
        self.c.state().set_pinned(false);
        let too_large = why.is_some_and(|w| w.starts_with(check::TOO_LARGE));
        self.c.conn.queue(&match (too_large, why) {
            (true, Some(w)) => build::fatal(sqlstate::PROGRAM_LIMIT_EXCEEDED, w),
            _ => build::fatal(
                sqlstate::CONNECTION_FAILURE,
                "the session's state could not be read back from its server connection",
            ),
        });
        self.session_lost = true;
    }

    /// Must the connection run queries before it goes back (the session check, or
    /// server_reset_query_always)?
    pub(super) fn release_runs_queries(&self, a: &Attached) -> bool {
        let s = self.ctx.settings.load();
        a.effects != 0 || s.session_check_always || s.server_reset_query_always
    }

    /// Release after a transaction that may have changed the session (run the session
    /// check: the client's settings, what pins it) or with server_reset_query_always (run
    /// the reset query). A pinned client keeps the connection.
    pub(super) async fn release_slow(&mut self, a: Attached, s: Arc<crate::config::Settings>) {
        let mut a = Taken(Some(a));
        // The client already has its answer queued; let it go out first.
        let _ = self.c.conn.flush().await;
        let always = s.session_check_always;
        if a.effects != 0 || always || self.pinned {
            if let Err(e) = self.check(&mut a, always).await {
                // What the transaction left (settings, temp tables, cursors) is unknown
                // and the connection cannot be lent: the client's session is lost with
                // it, and the client is told so rather than carry on without it.
                tracing::warn!(user = %Escaped(&self.c.user), error = %e, "the session check failed; closing the server connection and the client's session");
                let a = a.give();
                a.pool.discard(a.server);
                self.lose_session(Some(&e));
                return;
            }
            tracing::debug!(
                pinned = self.pinned,
                server = a.server.id,
                "session checked"
            );
        }
        if self.pinned {
            // The connection stays; cancel requests reach it again. The tenant claim ends
            // with its transaction: a pinned connection counts for no tenant and carries
            // no tenant's statement timeout into the client's next transactions (a pinned
            // client is outside transaction pooling, and so outside per-tenant limits).
            let mut a = a.give();
            a.effects = 0;
            a.timer = None;
            a.pool.end_claim(&mut a.server);
            let target = a.server.cancel.clone();
            *self.attached = Some(Box::new(a));
            self.set_cancel_target(Some(target)).await;
            return;
        }
        if s.server_reset_query_always && !s.server_reset_query.is_empty() {
            let r: &mut Attached = &mut a;
            if !run_reset(&mut r.server, &s.server_reset_query).await
                || !r.pool.rerun_connect_query(&mut r.server).await
            {
                let a = a.give();
                a.pool.discard(a.server);
                return;
            }
            a.server.forget_session_state();
        }
        give_back(a.give(), None);
    }

    /// Run the session check on the connection this client's transaction just ended on
    /// and take in what it found: its settings and identity (replayed where it goes
    /// next), whether it is pinned, whether pgtenant's statements there are intact.
    async fn check(&mut self, a: &mut Attached, always: bool) -> Result<(), String> {
        // A pinned client's transactions are all checked, settings too: what it runs
        // there is not replayed elsewhere until the pin lifts.
        let settings = always || self.pinned || a.effects & effect::SETTINGS != 0;
        while self.view.t().custom.len() > MAX_CUSTOM_SETTINGS {
            self.view.t_mut().custom.pop_last();
        }
        let mut names = self.view.t().custom.clone();
        if a.effects & effect::HIDDEN != 0 || always {
            let db = &a.pool.key.database;
            let learned = &self.ctx.setting_names;
            if learned.due(db) {
                // Bounded like the check itself: a server that does not answer must not
                // hold the session (and its connection) for ever.
                let read = tokio::time::timeout(
                    CHECK_TIMEOUT,
                    a.server
                        .query_rows(crate::frontend::setting_names::LEARN_SQL),
                )
                .await
                .map_err(|_| "reading the custom setting names timed out".to_string())?;
                match read {
                    Ok(rows) => learned.store(db, rows),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the custom setting names failed")
                    }
                }
            }
            names.extend(learned.names(db).iter().cloned());
        }
        let sql = check::sql(settings, &a.server.login_role, &names);
        let (rows, timeout_was) = check_rows(a, &sql).await?;
        let mut found = check::parse(rows)?;
        if let Some(v) = timeout_was {
            // The check ran with statement_timeout 0 (the client's own was too short
            // for it): what the client has is the value read before.
            found.settings.insert("statement_timeout".into(), v);
        }
        // What the server holds now is the client's session, exactly: a startup setting
        // the client RESET is gone from it (the client saw the server's default), and
        // later servers must agree with that rather than silently bring the startup
        // value back.
        let now: ParamMap = if settings {
            found.settings
        } else {
            let mut m = (*self.view.desired).clone();
            for k in check::IDENTITY {
                m.remove(k);
            }
            m.extend(found.identity);
            m
        };
        if now != *self.view.desired {
            let now = Arc::new(now);
            self.view.t_mut().session = (*now).clone();
            self.view.set_desired(now.clone());
            a.server.applied = now;
        } else {
            a.server.applied = self.view.desired.clone();
        }
        if a.effects & effect::HIDDEN != 0 || always {
            a.server.dirty_by = self.id;
        }
        let mut pinned = self.pinned;
        if let Some(p) = found.pins {
            let ours = if self.track_prepared {
                a.server.prepared.len() as i64
            } else {
                0
            };
            let sql_gone = p.sql_statements < a.server.prepared.sql.len() as i64;
            if self.track_prepared && (p.protocol_statements != ours || sql_gone) {
                // Someone dropped or replaced pgtenant's statements, or SQL-level ones it
                // tracks there, out of sight (dynamic SQL): drop them all, they are
                // prepared again on demand (a DEALLOCATE of a name no longer there would
                // fail the next client's take-over).
                tracing::warn!(user = %Escaped(&self.c.user), server = a.server.id, expected = ours, found = p.protocol_statements, sql_gone, "prepared statements changed behind pgtenant's back; deallocating all");
                a.server
                    .run_internal("DEALLOCATE ALL")
                    .await
                    .map_err(|e| e.to_string())?;
                a.server.prepared.clear();
                pinned = p.holds_state();
            } else {
                pinned = p.holds_state()
                    || p.protocol_statements > ours
                    || p.sql_statements > a.server.prepared.sql.len() as i64;
            }
        }
        if pinned != self.pinned {
            tracing::debug!(user = %Escaped(&self.c.user), server = a.server.id, pinned, "session pin");
        }
        self.pinned = pinned;
        self.c.state().set_pinned(pinned);
        Ok(())
    }

    /// A server connection lent to this client: what another client left there that
    /// must not reach this one goes first (its SQL-level statements, settings under
    /// names pgtenant does not know).
    /// True when it reset every setting (`RESET ALL`).
    fn take_over(&self, a: &mut Attached, setup: &mut Setup) -> bool {
        let mut reset_all = false;
        if a.server.sql_owner != self.id && !a.server.prepared.sql.is_empty() {
            if a.server.prepared.sql.len() > 4 {
                // One statement, not one round trip per name (a client that left many
                // must not cost the next one a wait): pgtenant's own statements there
                // go too and are prepared again on demand.
                setup.push(("DEALLOCATE ALL".to_owned(), None));
                a.server.prepared.clear();
            } else {
                for n in a.server.prepared.sql.keys() {
                    setup.push((format!("DEALLOCATE {}", params::ident(n)), None));
                }
                a.server.prepared.sql.clear();
            }
        }
        if a.server.dirty_by != 0 && a.server.dirty_by != self.id {
            // RESET ALL leaves the identities alone.
            setup.push(("RESET ALL".to_owned(), None));
            // And random()'s seed, which the last session may have set (setseed, SET
            // seed, in a function) to know what this one's random() will give: a seed of
            // pgtenant's own instead.
            let seed: f64 = rand::Rng::gen_range(&mut rand::thread_rng(), -1.0..=1.0);
            setup.push((format!("SELECT pg_catalog.setseed({seed})"), None));
            let mut kept = ParamMap::new();
            for k in check::IDENTITY {
                if let Some(v) = a.server.applied.get(k) {
                    kept.insert(k.to_owned(), v.clone());
                }
            }
            a.server.applied = Arc::new(kept);
            a.server.dirty_by = 0;
            reset_all = true;
        }
        reset_all
    }

    /// The client is leaving: return or close its server, flush what is queued.
    pub(super) async fn finish(&mut self) {
        // Before its server can go to the next client: in session mode that one gets the
        // same pid (with a secret of its own).
        self.c.key.unregister();
        // Its LISTENs end with its subscription.
        self.listening = None;
        if self.attached.is_some() {
            self.set_cancel_target(None).await;
        }
        if let Some(a) = self.attached.take() {
            let mut a = Taken(Some(*a));
            let s = self.ctx.settings();
            if !a.is_clean() && only_hidden(&a) {
                // A client that left before its first statement (its server taken at
                // login) leaves pgtenant's own settings replay unanswered: wait for it
                // rather than close a good connection.
                let _ = tokio::time::timeout(Duration::from_secs(10), settle_hidden(&mut a)).await;
            }
            let mut clean = a.is_clean();
            // A pinned client's state (temp tables, held cursors, locks) goes with it.
            let reset = if self.pinned && self.mode != PoolMode::Session {
                "DISCARD ALL"
            } else {
                &s.server_reset_query
            };
            if clean
                && !reset.is_empty()
                && (self.mode == PoolMode::Session || s.server_reset_query_always || self.pinned)
            {
                let a: &mut Attached = &mut a;
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    run_reset(&mut a.server, reset).await
                        && a.pool.rerun_connect_query(&mut a.server).await
                })
                .await;
                clean = matches!(r, Ok(true));
                a.server.forget_session_state();
            }
            let a = a.give();
            if clean {
                a.pool.release(a.server, true);
            } else {
                a.pool.discard(a.server);
            }
        }
        if self.c.conn.pending_output() > 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.c.conn.flush()).await;
        }
        // A client ended by pgtenant may have sent more meanwhile (a Close after its last
        // statement): closed at once, its socket would reset and the client lose the FATAL.
        self.c.conn.linger(LINGER).await;
    }
}

/// How long a client pgtenant ends (it neither sent Terminate nor closed) has its socket
/// read, and what comes dropped, after its write side is closed, waiting for it to close
/// too (`Connection::linger`). Short: its slot is held meanwhile.
const LINGER: Duration = Duration::from_millis(250);

/// Run the reset query before the connection goes to another client; pgtenant then
/// forgets what it knew of the connection's session (`forget_session_state`: nothing
/// set, nothing prepared). That is so after `DISCARD ALL`; after any other reset query
/// (`DEALLOCATE ALL`, `RESET ALL`, an operator's own), pgtenant makes it so: it goes on
/// with `SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL` (RESET ALL leaves
/// the role). Else the next client would run with the last one's role and settings, since
/// nothing would be reset for it. False: it failed (the connection is closed).
async fn run_reset(server: &mut ServerConn, reset: &str) -> bool {
    if server.run_internal(reset).await.is_err() {
        return false;
    }
    let words: Vec<String> = reset
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    words == ["discard", "all"]
        || server
            .run_internal("SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL")
            .await
            .is_ok()
}

/// Does the server owe answers to pgtenant's own simple queries only (a settings replay,
/// a take-over), outside any transaction of the client's?
fn only_hidden(a: &Attached) -> bool {
    !a.pipe.copy_in
        && a.pipe.q.iter().all(|e| {
            matches!(
                e,
                Expect::Hidden {
                    req: Req::Query { .. },
                    ..
                }
            )
        })
        && a.server.tx_status == b'I'
}

/// Read the answers to pgtenant's own queries (see [`only_hidden`]) until none is owed.
async fn settle_hidden(a: &mut Attached) {
    if a.server.conn.flush().await.is_err() {
        return;
    }
    while !a.pipe.q.is_empty() {
        match a.server.conn.read_frame().await {
            Ok(Some(f)) => match f.tag() {
                b'Z' => {
                    let Ok(st) = decode::ready_status(f.body()) else {
                        return;
                    };
                    a.server.tx_status = st;
                    a.pipe.pop_front();
                    a.pipe.ready();
                }
                b'S' => a.server.note_parameter(f.body()),
                _ => {}
            },
            _ => return,
        }
    }
}

/// Back to its pool, closed there if not clean. `now`: when it went idle, if known.
pub(super) fn give_back(mut a: Attached, now: Option<Instant>) {
    let clean = a.is_clean();
    if a.pipe.query_sent {
        // A simple Query ended the unnamed statement there.
        a.server.unnamed_owner = 0;
    }
    a.pool
        .release_at(a.server, clean, now.unwrap_or_else(Instant::now));
}

/// A server connection taken out of the session across awaits (the session check, the
/// reset query at the end): if the session's future is dropped at one of them, the
/// connection is closed through its pool, as `Drop for Session` does for the one it
/// holds.
pub(super) struct Taken(Option<Attached>);

impl Taken {
    /// The connection, to give back or close: it is no longer guarded.
    pub(super) fn give(mut self) -> Attached {
        self.0
            .take()
            .expect("a Taken holds its connection until given")
    }
}

impl std::ops::Deref for Taken {
    type Target = Attached;
    fn deref(&self) -> &Attached {
        self.0
            .as_ref()
            .expect("a Taken holds its connection until given")
    }
}

impl std::ops::DerefMut for Taken {
    fn deref_mut(&mut self) -> &mut Attached {
        self.0
            .as_mut()
            .expect("a Taken holds its connection until given")
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.pool.discard(a.server);
        }
    }
}
