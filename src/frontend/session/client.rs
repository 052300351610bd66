//! Client → server: every complete frame the client sent, in order; what pgtenant answers
//! itself when no server is attached.
use super::forward::{
    close_in_batch, fail_held_transaction, run_in_batch, screen_parse, shown, Refusal,
};
use super::relay::{emit_synthetic, queue_own};
use super::*;

impl Session {
    /// Handle every complete frame the client has sent.
    pub(super) async fn on_client_input(&mut self) -> Result<Flow, FrontendError> {
        self.idle_tx_timer = None;
        self.c.state().console.requested();
        loop {
            if self.input_blocked() {
                // Backpressure: the rest waits in the read buffer (see `paused_input`).
                self.paused_input = true;
                if let Some(a) = self
                    .attached
                    .as_mut()
                    .filter(|a| a.pipe.q.len() >= MAX_OWED)
                {
                    // Owed answers must come without the client's next Sync or Flush,
                    // which waits unread: answers pgtenant makes at the head go out now,
                    // and the server is asked to send what it holds back (a Flush has
                    // no answer of its own), as PostgreSQL sends a full output buffer.
                    emit_synthetic(a, &mut self.c.conn);
                    self.c.conn.release_held();
                    if a.pipe.q.front().is_some_and(|e| e.req().is_some()) {
                        a.server.conn.queue(&Frame::new(b'H', &[]));
                    }
                }
                return Ok(Flow::Continue);
            }
            let next = match self.deferred.pop_front() {
                Some(f) => Ok(Some(f)),
                None => self.c.conn.try_frame(),
            };
            let f = match next {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if self.listening.as_ref().is_some_and(|l| l.ack.is_some()) {
                        self.await_listen().await;
                    }
                    // Answers pgtenant makes itself that nothing precedes go out now (a
                    // Parse the server already has, followed by a Flush, waits for nothing).
                    if let Some(a) = self.attached.as_mut() {
                        emit_synthetic(a, &mut self.c.conn);
                    }
                    return Ok(Flow::Continue);
                }
                Err(e) => {
                    tracing::warn!(user = %Escaped(&self.c.user), error = %e, "bad message from client");
                    self.c
                        .conn
                        .queue(&build::fatal(e.sqlstate(), &e.to_string()));
                    return Ok(Flow::Quit);
                }
            };
            if self.skip_until_sync {
                if f.tag() != b'S' {
                    continue;
                }
                self.skip_until_sync = false;
                if self.attached.is_none() {
                    self.c.conn.queue(&build::ready_for_query(self.client_tx));
                    continue;
                }
                // Earlier messages of the batch are on the server: its ReadyForQuery
                // answers this Sync, in order.
            }
            if self.listening.as_ref().is_some_and(|l| l.ack.is_some()) {
                self.await_listen().await;
            }
            if f.tag() == b'X' {
                // It closes its side itself: no lingering for it (`finish`).
                self.c.conn.peer_left();
                return Ok(Flow::Quit);
            }
            // The client's unnamed statement ends with a simple Query, a Close of it or
            // another Parse of it (kept again where that Parse goes to a server as sent).
            match f.tag() {
                b'Q' => self.view.end_unnamed(false),
                b'P' if f.body().first() == Some(&0) => self.view.end_unnamed(true),
                b'C' if f.body().starts_with(b"S\0") => self.view.end_unnamed(false),
                _ => {}
            }
            if self.must_wait_for_sync_point() {
                // The transaction may end at a Sync/Query already sent: what follows must
                // be routed afresh once ReadyForQuery tells (see `deferred`).
                self.deferred.push_front(f);
                return Ok(Flow::Continue);
            }
            if self.attached.is_none() {
                // With no server attached, nothing is in flight: a Flush has nothing to
                // flush, and CopyData/CopyDone/CopyFail are leftovers of a COPY the server
                // already failed and answered (PostgreSQL drops them too).
                let holding_parse = self.held.iter().any(|h| matches!(h, Held::Parse(_)));
                if matches!(f.tag(), b'd' | b'c' | b'f') {
                    continue;
                }
                if f.tag() == b'H' && !holding_parse {
                    // What pgtenant answered itself (a named Parse) goes out now.
                    self.c.conn.release_held();
                    continue;
                }
                if self.answer_without_server(&f)? {
                    continue;
                }
                if let Some(frames) = self.fake_extended(&f)? {
                    for fr in &frames {
                        queue_own(&mut self.c.conn, fr);
                    }
                    continue;
                }
                // Held full: the transaction goes to the coordinator with this message,
                // whatever it is, and takes everything held with it (see `held_full`).
                let full = self.held_full();
                match self.route_first(f).await {
                    Some(f) => {
                        // Attached: forward what was held (BEGIN and friends hidden, Parses
                        // as the client sent them), then this message.
                        // Only a statement that runs opens the held transaction on the
                        // server; a prepare-only batch (Parse/Describe/Sync, as
                        // tokio-postgres and JDBC send before the Bind) is a side trip that
                        // leaves it held.
                        let runs = full || matches!(f.tag(), b'Q' | b'B' | b'F');
                        let failed = self.client_tx == b'E';
                        let held: Vec<Held> = if runs || failed {
                            std::mem::take(&mut self.held)
                        } else {
                            let (parses, rest) = std::mem::take(&mut self.held)
                                .into_iter()
                                .partition(|h| matches!(h, Held::Parse(_)));
                            self.held = rest;
                            parses
                        };
                        for h in held {
                            match h {
                                Held::Answered(q) => {
                                    if let Some(a) = self.attached.as_mut() {
                                        a.server.conn.queue(&q);
                                        a.pipe.push(Expect::Hidden {
                                            req: Req::Query { prepare: None },
                                            show_errors: true,
                                        });
                                    }
                                }
                                Held::Parse(p) => {
                                    if let Err(e) = self.forward_real(p) {
                                        self.c.conn.queue(&build::fatal(
                                            sqlstate::PROTOCOL_VIOLATION,
                                            &e.to_string(),
                                        ));
                                        return Ok(Flow::Quit);
                                    }
                                }
                            }
                        }
                        if failed {
                            // Everything held came before the failure (nothing is held
                            // after it): the server's transaction fails here.
                            if let Some(a) = self.attached.as_mut() {
                                fail_held_transaction(a);
                            }
                        }
                        if self.attached.is_none() {
                            continue;
                        }
                        if let Err(e) = self.forward_real(f) {
                            tracing::warn!(user = %Escaped(&self.c.user), error = %e, "bad message from client");
                            self.c
                                .conn
                                .queue(&build::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()));
                            return Ok(Flow::Quit);
                        }
                        continue;
                    }
                    None => {
                        if self.session_lost {
                            // A batch's server connection broke under this statement.
                            return Ok(Flow::Quit);
                        }
                        // (A refused batch's held Parses went with it:
                        // `refused_without_server`.)
                        continue;
                    }
                }
            }
            tracing::trace!(tag = %(f.tag() as char), attached = self.attached.is_some(), "client message");
            if self
                .attached
                .as_ref()
                .and_then(|a| a.timer.as_ref())
                .is_some_and(|t| t.stale())
            {
                Box::pin(self.settle_timeout_cancel()).await;
            }
            if matches!(f.tag(), b'B' | b'Q' | b'F') && self.holds_transaction() {
                // A side trip (a prepare-only batch) inside a held transaction meets a
                // statement that runs: the transaction opens here first, or the statement
                // would run (and commit) outside it.
                self.open_held_transaction_mid_batch();
            }
            if let Err(e) = self.forward(f) {
                tracing::warn!(user = %Escaped(&self.c.user), error = %e, "bad message from client");
                self.c
                    .conn
                    .queue(&build::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()));
                return Ok(Flow::Quit);
            }
        }
    }

    /// Send the held BEGIN & co. to the attached server in the middle of the client's
    /// extended-protocol batch: through the extended protocol under a name of pgtenant's
    /// own (a simple query would drop the client's unnamed statement, and a Parse of the
    /// unnamed one would replace it), each answer hidden. PostgreSQL turns the batch's
    /// implicit transaction into the client's transaction block at the BEGIN.
    fn open_held_transaction_mid_batch(&mut self) {
        let held: Vec<Held> = std::mem::take(&mut self.held);
        let Some(a) = self.attached.as_mut() else {
            self.held = held;
            return;
        };
        const NAME: &str = "pgt_tx";
        for h in held {
            let Held::Answered(q) = h else {
                continue;
            };
            let Ok(sql) = decode::query_text(q.body()) else {
                continue;
            };
            // A statement of that name left by an earlier batch that failed half-way (its
            // Close skipped) goes first.
            close_in_batch(a, b'S', NAME);
            run_in_batch(a, NAME, &sql);
            close_in_batch(a, b'S', NAME);
            close_in_batch(a, b'P', NAME);
        }
    }

    /// Routing is on and the attached server still owes a ReadyForQuery for a Sync, Query
    /// or FunctionCall: the client's next message may belong to another transaction.
    pub(super) fn must_wait_for_sync_point(&self) -> bool {
        let Some(a) = self.attached.as_ref() else {
            return false;
        };
        self.mode != PoolMode::Session
            && a.pipe.owes_sync_point()
            && self
                .c
                .cluster
                .as_ref()
                .is_some_and(|c| c.map.current.load().is_some())
    }

    /// Before the ReadyForQuery of a transaction that may have notified: wait (bounded)
    /// until the LISTEN hub has handed out what was committed, then queue this client's
    /// notifications ahead of the ReadyForQuery, as PostgreSQL orders them.
    pub(super) async fn notify_barrier(&mut self) {
        let Some(key) = self.attached.as_ref().map(|a| a.pool.key.clone()) else {
            return;
        };
        // All asked at once, under one deadline.
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        let Some(l) = self.listening.as_mut() else {
            // Not listening: wait until the server's listeners have it queued.
            if !passed_by(self.ctx.listens.barriers(&key, None), until).await {
                tracing::warn!(user = %Escaped(&self.c.user), "LISTEN hub barrier not passed within 2 s");
            }
            return;
        };
        // Other roles' listeners of the same server and database, as for a client that
        // does not listen.
        let others = self.ctx.listens.barriers(&key, Some(&l.sub));
        if let Some(mut passed) = l.sub.barrier() {
            // The queue is read meanwhile: the hub may be waiting for room in it (a
            // transaction that notified its own channel thousands of times).
            let conn = &mut self.c.conn;
            loop {
                if conn.pending_output() >= HIGH_WATER {
                    // The client reads: it waits for its ReadyForQuery.
                    match tokio::time::timeout_at(until, conn.flush()).await {
                        Ok(Ok(())) => continue,
                        _ => break,
                    }
                }
                let next = tokio::select! {
                    _ = &mut passed => break,
                    _ = tokio::time::sleep_until(until) => {
                        tracing::warn!(user = %Escaped(&self.c.user), "LISTEN hub barrier not passed within 2 s");
                        break;
                    }
                    f = std::future::poll_fn(|cx| l.sub.poll_next(cx)) => f,
                };
                if l.sub.wants(&next) {
                    conn.queue(&next);
                }
            }
        }
        passed_by(others, until).await;
        while let Some(f) = l.sub.try_next() {
            if l.sub.wants(&f) {
                self.c.conn.queue(&f);
            }
        }
    }

    /// A LISTEN is answered only once the listening connection listens: a NOTIFY the
    /// client (or anyone it tells) sends next must reach it. A LISTEN the server refuses
    /// fails with its error where the answer is not out yet (`ListenAnswer`), and the
    /// client does not listen to that channel.
    pub(super) async fn await_listen(&mut self) {
        let Some(l) = self.listening.as_mut() else {
            return;
        };
        let Some((channel, ack)) = l.ack.take() else {
            return;
        };
        let answer = std::mem::replace(&mut l.answer, super::ListenAnswer::Queued);
        let refused = match tokio::time::timeout(Duration::from_secs(10), ack).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(r))) => Some(r),
            // Not listening is not answered "LISTEN": the client would wait for
            // notifications that cannot come.
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(user = %Escaped(&self.c.user), "LISTEN not confirmed by the listening connection within 10 s");
                Some(crate::frontend::listen::ListenRefused {
                    code: sqlstate::CONNECTION_FAILURE.into(),
                    message:
                        "LISTEN could not be confirmed: no listening server connection within 10 s"
                            .into(),
                })
            }
        };
        if let Some(r) = &refused {
            tracing::info!(user = %Escaped(&self.c.user), code = %r.code, message = %Escaped(&r.message), "LISTEN refused by the server");
            l.sub.unlisten(Some(&channel));
        }
        match (answer, refused) {
            (super::ListenAnswer::Simple, None) => {
                self.c.conn.queue(&build::command_complete("LISTEN"));
                self.c.conn.queue(&build::ready_for_query(self.client_tx));
            }
            (super::ListenAnswer::Simple, Some(r)) => {
                self.c
                    .conn
                    .queue(&Refusal::from_server(&r.code, r.message).error());
                self.c.conn.queue(&build::ready_for_query(self.client_tx));
            }
            (super::ListenAnswer::Extended, r) => l.refused = r,
            (super::ListenAnswer::Queued, Some(r)) => {
                // Told "LISTEN" already: it must not go on believing it listens.
                tracing::warn!(user = %Escaped(&self.c.user), "LISTEN refused after the client was answered (inside a transaction); the client is ended");
                l.fatal = Some(r);
            }
            (super::ListenAnswer::Queued, None) => {}
        }
        if self
            .listening
            .as_ref()
            .is_some_and(|l| l.sub.is_empty() && l.ack.is_none() && l.refused.is_none())
        {
            // Nothing listened to: no subscription is kept (as for a LISTEN over a limit).
            self.drop_listening();
        }
    }

    /// The client listens to nothing any more: its subscription goes, unless
    /// notifications meant for it were lost meanwhile; then it stays, for nothing, until
    /// the client is ended for them (`listen` rules).
    pub(super) fn drop_listening(&mut self) {
        match self.listening.as_mut() {
            Some(l) if l.is_lost() => l.sub.unlisten(None),
            _ => self.listening = None,
        }
    }

    /// The LISTEN just answered by the client's view is waiting for the listening
    /// connection: mark where its answer goes.
    fn listen_answer_waits(&mut self, answer: super::ListenAnswer) -> bool {
        match self.listening.as_mut() {
            Some(l) if l.ack.is_some() => {
                l.answer = answer;
                true
            }
            _ => false,
        }
    }

    /// Messages pgtenant answers itself when no server is attached: closing a client's
    /// statement, DEALLOCATE, DISCARD ALL, and a Sync right after them.
    pub(super) fn answer_without_server(&mut self, f: &Frame) -> Result<bool, FrontendError> {
        if self.mode == PoolMode::Session {
            return Ok(false);
        }
        match f.tag() {
            b'C' if self.track_prepared => {
                let t = Target::decode(f.body())?;
                if t.kind == b'S' && !t.name.is_empty() {
                    self.view.t_mut().remove_statement(t.name);
                    self.c.conn.queue_held(&Frame::new(b'3', &[]));
                    return Ok(true);
                }
            }
            // The unnamed statement (an empty name: the body starts with its NUL) goes to
            // the server; no need to decode it here.
            // In a held transaction that failed, a Parse goes to the server, which
            // refuses it as PostgreSQL does in a failed transaction (25P02).
            b'P' if self.track_prepared
                && f.body().first() != Some(&0)
                && self.client_tx != b'E' =>
            {
                // A named statement is only recorded (as PgBouncer does): it is prepared
                // on a server when a Bind or Describe needs it there. Taking a server just
                // to answer Parse+Sync (PQprepare) would also deadlock clients that prepare
                // synchronously while another of their connections holds the last server
                // connection in a transaction (pgbench -M prepared -j < -c).
                let p = Parse::decode(f.body())?;
                if p.name.is_empty() {
                    return Ok(false);
                }
                let exists = self.view.t().statements.contains_key(p.name)
                    || self.view.t().sql_prepared.contains_key(p.name);
                let refused = screen_parse(&self.ctx, &p.query).and_then(|_| match exists {
                    true => Err(Refusal::new(
                        "42P05",
                        format!("prepared statement \"{}\" already exists", shown(p.name)),
                    )),
                    false => self.view.t().room_for(p.name, &p.query),
                });
                if let Err(refusal) = refused {
                    self.refuse_in_batch(&refusal);
                    return Ok(true);
                }
                let key = f.body().get(p.name.len() + 1..).unwrap_or_default();
                let epoch = self.view.t().epoch;
                let def = self.ctx.statements.intern_at(&p, key, epoch);
                self.view.t_mut().add_statement(p.name, def);
                self.c.conn.queue_held(&Frame::new(b'1', &[]));
                return Ok(true);
            }
            b'S' if !self.held.iter().any(|h| matches!(h, Held::Parse(_))) => {
                // Nothing is in flight and no server holds state for this client.
                self.c.conn.queue(&build::ready_for_query(self.client_tx));
                return Ok(true);
            }
            b'Q' if self.client_tx == b'I' => {
                let sql = decode::query_text(f.body())?;
                let sql: &str = &sql;
                match self.client_view_command(sql) {
                    // Answered once the listening connection listens, or refused
                    // (`await_listen`).
                    Ok(Some("LISTEN")) if self.listen_answer_waits(super::ListenAnswer::Simple) => {
                        return Ok(true);
                    }
                    Ok(Some(tag)) => self.c.conn.queue(&build::command_complete(tag)),
                    Ok(None) => return Ok(false),
                    // Outside a transaction: the error is all there is to it.
                    Err(refusal) => self.c.conn.queue(&refusal.error()),
                }
                self.c.conn.queue(&build::ready_for_query(b'I'));
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    /// DEALLOCATE / DISCARD ALL sent through the extended protocol with the unnamed
    /// statement act on the client's view too: pgtenant answers Parse, Bind, Describe and
    /// Execute of it itself (the Sync still goes to the server, if one is attached).
    /// Returns the answers for `f`, or None when `f` is not part of such a command.
    pub(super) fn fake_extended(&mut self, f: &Frame) -> Result<Option<Vec<Frame>>, FrontendError> {
        if self.mode == PoolMode::Session {
            return Ok(None);
        }
        // Nothing faked in flight (nearly always): only a Parse can start it, and the
        // other messages need no decoding here (`forward` decodes them).
        let faking = self.fake_statement.is_some() || self.fake_portal.is_some();
        match f.tag() {
            // A named statement that is a LISTEN or UNLISTEN: the hub's, as a simple one.
            b'B' if !faking && self.view.t().hub_statements > 0 => self.hub_bind(f),
            b'B' | b'D' | b'E' | b'C' if !faking => Ok(None),
            b'P' => {
                let p = Parse::decode(f.body())?;
                if !p.name.is_empty() {
                    return Ok(None);
                }
                self.fake_statement = None;
                let is_view_command = matches!(
                    classify_single(&p.query),
                    Some(
                        Command::Deallocate { .. }
                            | Command::DiscardAll
                            | Command::Listen { .. }
                            | Command::Unlisten { .. }
                    )
                );
                if is_view_command {
                    match self.client_view_command(&p.query) {
                        Ok(Some(tag)) => {
                            if tag == "LISTEN" {
                                self.listen_answer_waits(super::ListenAnswer::Extended);
                            }
                            self.fake_statement = Some(tag);
                            return Ok(Some(vec![Frame::new(b'1', &[])]));
                        }
                        Ok(None) => {}
                        Err(refusal) => {
                            self.refuse_in_batch(&refusal);
                            return Ok(Some(Vec::new()));
                        }
                    }
                }
                Ok(None)
            }
            b'B' => {
                let b = Bind::decode(f.body())?;
                if self.fake_portal_is(b.portal) {
                    // Bound again: the unnamed portal is replaced (a named one PostgreSQL
                    // would refuse with 42P03; the server, which never had it, binds it).
                    self.fake_portal = None;
                }
                match self.fake_statement.filter(|_| b.statement.is_empty()) {
                    Some(tag) => {
                        self.fake_portal = Some(Box::new((b.portal.into(), tag)));
                        Ok(Some(vec![Frame::new(b'2', &[])]))
                    }
                    None => Ok(None),
                }
            }
            b'D' => {
                let t = Target::decode(f.body())?;
                let real = match t.kind {
                    b'S' => !t.name.is_empty() || self.fake_statement.is_none(),
                    _ => !self.fake_portal_is(t.name),
                };
                if real {
                    return Ok(None);
                }
                let mut v = Vec::new();
                if t.kind == b'S' {
                    v.push(Frame::new(b't', &0i16.to_be_bytes()));
                }
                v.push(Frame::new(b'n', &[]));
                Ok(Some(v))
            }
            b'E' => {
                let mut r = crate::protocol::Reader::new(f.body(), "Execute");
                let portal = r.cstr()?;
                match self.fake_portal.as_ref().filter(|p| *p.0 == *portal) {
                    Some(p) if p.1 == "LISTEN" => {
                        match self.listening.as_mut().and_then(|l| l.refused.take()) {
                            // The server refused it (await_listen): the Execute fails.
                            Some(r) => {
                                self.refuse_in_batch(&Refusal::from_server(&r.code, r.message));
                                Ok(Some(Vec::new()))
                            }
                            None => Ok(Some(vec![build::command_complete("LISTEN")])),
                        }
                    }
                    Some(p) => Ok(Some(vec![build::command_complete(p.1)])),
                    None => Ok(None),
                }
            }
            b'C' => {
                // Closing the unnamed statement or portal closes the one pgtenant answers
                // for too (the Close itself goes on as usual): a later Bind or Execute of
                // it fails as on a direct connection.
                let t = Target::decode(f.body())?;
                match t.kind {
                    b'S' if t.name.is_empty() => self.fake_statement = None,
                    b'S' => {}
                    _ if self.fake_portal_is(t.name) => self.fake_portal = None,
                    _ => {}
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// A Bind of the client's named LISTEN or UNLISTEN statement: the client's view
    /// answers it (its portal is then one pgtenant answers for), as for the unnamed
    /// statement; a Bind of anything else is the server's.
    fn hub_bind(&mut self, f: &Frame) -> Result<Option<Vec<Frame>>, FrontendError> {
        let b = Bind::decode(f.body())?;
        let Some(cmd) = self
            .view
            .t()
            .statements
            .get(b.statement)
            .filter(|d| d.hub_tag.is_some() && !b.statement.is_empty())
            .and_then(|d| classify_single(&d.query))
        else {
            return Ok(None);
        };
        match self.view_command(cmd) {
            Ok(Some(tag)) => {
                if tag == "LISTEN" {
                    self.listen_answer_waits(super::ListenAnswer::Extended);
                }
                self.fake_portal = Some(Box::new((b.portal.into(), tag)));
                Ok(Some(vec![Frame::new(b'2', &[])]))
            }
            Ok(None) => Ok(None),
            Err(refusal) => {
                self.refuse_in_batch(&refusal);
                Ok(Some(Vec::new()))
            }
        }
    }

    /// Is `name` the portal pgtenant answers for?
    fn fake_portal_is(&self, name: &str) -> bool {
        self.fake_portal.as_ref().is_some_and(|p| *p.0 == *name)
    }

    /// DEALLOCATE / DISCARD ALL act on the client's view only. Returns the command tag to
    /// answer with, or None when `sql` is not such a command.
    /// `Err`: the command is refused (a LISTEN over a limit).
    pub(super) fn client_view_command(
        &mut self,
        sql: &str,
    ) -> Result<Option<&'static str>, Refusal> {
        match classify_single(sql) {
            Some(cmd) => self.view_command(cmd),
            None => Ok(None),
        }
    }

    /// [`Session::client_view_command`] for a statement already classified.
    pub(super) fn view_command(&mut self, cmd: Command) -> Result<Option<&'static str>, Refusal> {
        if self.client_tx == b'E' {
            // A failed transaction runs nothing but its end: the server refuses the
            // command (25P02) as it would any, and the view stays as it was.
            return Ok(None);
        }
        match cmd {
            Command::Listen { channel } if self.mode != PoolMode::Session => {
                let (max_client, max_pool) = {
                    let s = self.ctx.settings();
                    (s.max_listen_channels, s.max_pool_listen_channels)
                };
                // The pool it first listened through keeps its LISTENs, also after a
                // RELOAD moved its home (`move_home`).
                let l = self.listening.get_or_insert_with(|| {
                    Box::new(super::Listening {
                        sub: self.ctx.listens.subscriber(&self.c.pool),
                        ack: None,
                        answer: super::ListenAnswer::Queued,
                        refused: None,
                        fatal: None,
                    })
                });
                match l.sub.listen(channel.clone(), max_client, max_pool) {
                    Ok(ack) => {
                        l.ack = ack.map(|a| (channel, a));
                        l.answer = super::ListenAnswer::Queued;
                    }
                    Err(limit) => {
                        if l.sub.is_empty() && l.ack.is_none() {
                            // Its first LISTEN: no subscription is kept for it (a listening
                            // client pays a hub round trip per write transaction).
                            self.drop_listening();
                        }
                        tracing::warn!(user = %Escaped(&self.c.user), "LISTEN refused: {limit}");
                        return Err(Refusal::from_server(limit.code(), limit.to_string()));
                    }
                }
                return Ok(Some("LISTEN"));
            }
            Command::Unlisten { channel } if self.mode != PoolMode::Session => {
                if let Some(l) = self.listening.as_mut() {
                    l.sub.unlisten(channel.as_deref());
                }
                return Ok(Some("UNLISTEN"));
            }
            _ if !self.track_prepared => return Ok(None),
            _ => {}
        }
        match cmd {
            Command::Deallocate { name: Some(n) } => {
                let had = self.view.t_mut().remove_sql(&n) | self.view.t_mut().remove_statement(&n);
                // Not the client's: the server answers (26000), as PostgreSQL would.
                Ok(had.then_some("DEALLOCATE"))
            }
            Command::Deallocate { name: None } => {
                self.view.clear(false);
                self.view.t_mut().epoch = self.ctx.statements.next_epoch();
                Ok(Some("DEALLOCATE ALL"))
            }
            // A pinned client's DISCARD ALL goes to its server: its temp tables, held
            // cursors and locks live there (`forward_query`).
            Command::DiscardAll if self.client_tx == b'I' && !self.pinned => {
                // As on the server: UNLISTEN *, and nothing of the session stays. What it
                // left on server connections under names pgtenant cannot read back (a
                // computed set_config name), its SQL-level statements and its unnamed
                // statement there are another session's from now on: cleared or refused
                // before it uses them again.
                self.drop_listening();
                self.id = super::next_session_id();
                self.view.clear(true);
                self.view.t_mut().epoch = self.ctx.statements.next_epoch();
                self.view.set_desired(self.c.startup.clone());
                Ok(Some("DISCARD ALL"))
            }
            _ => Ok(None),
        }
    }
}

/// Wait for every barrier (asked at once) until `until`; false if one was not passed.
async fn passed_by(
    barriers: Vec<tokio::sync::oneshot::Receiver<()>>,
    until: tokio::time::Instant,
) -> bool {
    for passed in barriers {
        if tokio::time::timeout_at(until, passed).await.is_err() {
            return false;
        }
    }
    true
}
