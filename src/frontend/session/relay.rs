//! Server → client: relaying answers in order, hiding pgtenant's own, noticing the end of
//! a transaction.
use super::*;

impl Session {
    // ---------------------------------------------------------------------------------
    // Server → client
    // ---------------------------------------------------------------------------------

    /// Relay every complete frame the server has sent; give the server back when done.
    pub(super) fn on_server_input(&mut self) -> Flow {
        loop {
            let Some(a) = self.attached.as_mut() else {
                return Flow::Continue;
            };
            emit_synthetic(a, &mut self.c.conn);
            let (f, again) = match a.unread.take() {
                Some(f) => (f, true),
                None => match a.server.conn.try_frame() {
                    Ok(Some(f)) => (f, false),
                    Ok(None) => {
                        // Every answer of a batch with no Sync yet is in: the server is
                        // in that batch's transaction until the client goes on, so
                        // idle_transaction_timeout applies as after a BEGIN.
                        if a.pipe.unsynced && a.pipe.is_settled() && self.idle_tx_timer.is_none() {
                            self.arm_idle_tx_timer();
                        }
                        return Flow::Continue;
                    }
                    Err(e) => {
                        let why = format!("server sent a bad message: {e}");
                        return self.server_lost(Lost::Unreadable(&why));
                    }
                },
            };
            a.pool.stats.bytes_sent.add(f.len() as u64);
            let (hidden, show_errors) = match a.pipe.q.front() {
                Some(Expect::Hidden { show_errors, .. }) => (true, *show_errors),
                _ => (false, true),
            };
            let tag = f.tag();
            tracing::trace!(server = a.server.id, tag = %(tag as char), head = ?a.pipe.q.front(), queued = a.pipe.q.len(), "server message");
            match tag {
                b'E' => {
                    if a.pipe.copy_in {
                        // The server ended the COPY IN with an error: Syncs the client sent
                        // during it were dropped from the queue, and whether the server
                        // read them before or after the error (ignored, or answered) is not
                        // known. The COPY is over either way.
                        a.pipe.copy_in = false;
                        a.pipe.lost_track = true;
                    }
                    let fields = ErrorFields::parse(f.body()).unwrap_or_default();
                    if stale_statement(&fields) {
                        // A schema change made outside pgtenant: statements parsed from now
                        // on are planned afresh (`StatementRegistry::new_schema`).
                        self.ctx.statements.new_schema();
                    }
                    if a.pool.key.node != self.c.pool.key.node {
                        // On a worker, a missing relation or an internal error can mean the
                        // shard moved away: check the map now rather than at the next tick.
                        if matches!(fields.code.as_str(), "42P01" | "XX000" | "55000") {
                            if let Some(c) = &self.c.cluster {
                                c.map.request_refresh();
                            }
                        }
                    }
                    if !hidden {
                        if let Some(k) = &self.tenant {
                            self.ctx.tenants.error(k);
                        }
                    }
                    if !hidden || show_errors {
                        // A side trip (a prepare-only batch) inside a transaction
                        // pgtenant holds failed: so does that transaction.
                        // (`Session::fail_held_transaction_if_any`, with the server
                        // connection borrowed.)
                        if super::holds::holds_transaction(&self.held) {
                            self.client_tx = b'E';
                        }
                    }
                    if is_fatal(f.body()) {
                        // The server ends the connection (a shutdown, pg_terminate_backend,
                        // a timeout of its own): the client is told once, in its words,
                        // whatever pgtenant was doing on it (see `lost`).
                        crate::metrics::counters::SERVER_ERRORS.count_body(f.body());
                        return self.server_lost(Lost::Fatal(&f));
                    }
                    if !hidden || show_errors {
                        crate::metrics::counters::SERVER_ERRORS.count_body(f.body());
                        match a.timer.as_mut().and_then(|t| t.rewrite_error(f.body())) {
                            Some(timeout) => self.c.conn.queue(&timeout),
                            None => self.c.conn.queue(&f),
                        }
                    } else {
                        let e = ErrorFields::parse(f.body()).unwrap_or_default();
                        if e.message != super::forward::HELD_FAILED {
                            tracing::warn!(user = %Escaped(&self.c.user), code = %e.code, message = %e.message, "server refused a query pgtenant sent on its own");
                        }
                    }
                    let failed = a.pipe.q.front().and_then(Expect::req).cloned();
                    if let Some(Req::Parse { stmt: None }) = &failed {
                        // A Parse of the unnamed statement failed: the server has none
                        // now. The client's own (not pgtenant's parse again of the kept
                        // one): a direct connection would have none either.
                        a.server.unnamed_owner = 0;
                        if let (Some(Expect::Forward(_)), Some(t)) =
                            (a.pipe.q.front(), self.view.tables.as_mut())
                        {
                            t.unnamed = None;
                        }
                    }
                    match failed {
                        Some(r) if r.is_extended() => {
                            a.pipe.pop_front();
                            undo_prepared(a, Expect::Forward(r));
                            for e in a.pipe.drop_until_sync() {
                                if let Some(Req::Parse { stmt: None }) = e.req() {
                                    // Skipped by the server, which keeps the unnamed
                                    // statement before it, whoever's: not this
                                    // client's as marked.
                                    a.server.unnamed_owner = 0;
                                    if let (Expect::Forward(_), Some(t)) =
                                        (&e, self.view.tables.as_mut())
                                    {
                                        // The client's own: not kept either (a Bind of
                                        // it fails with 26000 rather than run another
                                        // statement).
                                        t.unnamed = None;
                                    }
                                }
                                undo_prepared(a, e);
                            }
                            if a.pipe.q.is_empty() && !a.pipe.copy_in {
                                // The client's Sync has not come yet: the server skips
                                // what it sends until then, so nothing it sends before is
                                // owed an answer (nor gets one of pgtenant's own). In
                                // COPY IN, the COPY's own rules apply (see `pipeline`).
                                self.skip_until_sync = true;
                            }
                        }
                        Some(Req::Query { .. }) => {
                            // The query is answered by ReadyForQuery; remember it failed.
                            a.pipe.front_query_failed();
                        }
                        _ => {}
                    }
                    continue;
                }
                b'Z' => {
                    let Ok(st) = decode::ready_status(f.body()) else {
                        return self.server_lost(Lost::Unreadable(
                            "server sent a malformed ReadyForQuery",
                        ));
                    };
                    if st == b'I' && !hidden && self.listening.is_some() {
                        // A transaction that may have notified a channel the client
                        // listens on: its notifications come first (see `listen`).
                        let notified = std::mem::take(&mut a.notified) || a.effects != 0;
                        if notified && !again {
                            a.unread = Some(f);
                            return Flow::NotifyBarrier;
                        }
                    } else if st == b'I' && !hidden && std::mem::take(&mut a.notified) && !again {
                        // A client that does not listen sent a NOTIFY: its ReadyForQuery
                        // waits until the listeners' queues hold it (see `listen`).
                        a.unread = Some(f);
                        return Flow::NotifyBarrier;
                    }
                    a.server.tx_status = st;
                    // Inside a transaction pgtenant holds (BEGIN answered, no node yet), a
                    // side trip's ReadyForQuery must still say "in transaction".
                    let holding_tx = super::holds::holds_transaction(&self.held);
                    let client_st = match st {
                        b'I' if holding_tx && self.client_tx == b'E' => b'E',
                        b'I' if holding_tx => b'T',
                        _ => st,
                    };
                    match a.pipe.pop_front() {
                        Some(Expect::Forward(Req::Query {
                            prepare: Some((name, text)),
                        })) => {
                            a.server.prepared.sql.insert(name.clone(), text.clone());
                            self.view.t_mut().add_sql(name, text);
                        }
                        Some(Expect::Forward(r) | Expect::Hidden { req: r, .. })
                            if !r.ends_with(b'Z') =>
                        {
                            // A ReadyForQuery where another answer was due.
                            tracing::warn!(server = a.server.id, owed = ?r, "ReadyForQuery where none was due; the connection will be closed");
                            a.pipe.lost_track = true;
                        }
                        None => a.pipe.lost_track = true,
                        Some(Expect::Forward(_) | Expect::Hidden { .. }) => {}
                        Some(other) => {
                            tracing::error!(?other, "ReadyForQuery out of order");
                            return self.server_lost(Lost::Unreadable(
                                "pgtenant lost track of the server's answers",
                            ));
                        }
                    }
                    a.pipe.ready();
                    if hidden {
                        // A query of pgtenant's own after the client's last one (the
                        // DEALLOCATE ALL behind a client's): the transaction ends here.
                        if a.pipe.is_settled() && st == b'I' && self.mode != PoolMode::Session {
                            return Flow::Release(None);
                        }
                        continue;
                    }
                    // Read once: the latencies and the release below share it.
                    let now = a.query_started.take().map(|t| (t, Instant::now()));
                    if let Some(t) = a.timer.as_mut() {
                        t.disarm();
                    }
                    if let Some((t, at)) = now {
                        a.pool.stats.add_query(at.saturating_duration_since(t));
                        if st == b'I' {
                            let xact = at.saturating_duration_since(a.xact_started);
                            a.pool.stats.add_xact(xact);
                            if let Some(k) = self.tenant.take() {
                                if let Some(w) = a.throttled.take() {
                                    self.ctx.tenants.throttled(&k, w);
                                }
                                self.ctx.tenants.transaction(&k, xact);
                                self.ctx.activity.record(k.hash(), at);
                            }
                        }
                    }
                    self.client_tx = client_st;
                    if self.mode == PoolMode::Statement && st != b'I' {
                        // As PgBouncer: the error takes the place of the ReadyForQuery,
                        // so the client sees it as the answer to its BEGIN.
                        self.c.conn.queue(&build::fatal(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "transaction blocks not allowed in statement pooling mode",
                        ));
                        return Flow::Quit;
                    }
                    if client_st == st {
                        self.c.conn.queue(&f);
                    } else {
                        self.c.conn.queue(&build::ready_for_query(client_st));
                    }
                    let Some(a) = self.attached.as_mut() else {
                        return Flow::Continue;
                    };
                    emit_synthetic(a, &mut self.c.conn);
                    if a.pipe.is_settled() {
                        if st != b'I' {
                            self.arm_idle_tx_timer();
                        } else if self.mode != PoolMode::Session {
                            return Flow::Release(now.map(|(_, at)| at));
                        }
                    }
                    continue;
                }
                b'S' => {
                    a.server.note_parameter(f.body());
                    if !hidden {
                        // The client changed a reported setting, however it did it.
                        a.effects |= effect::SETTINGS;
                        if blinds_the_lexers(f.body()) {
                            // From here on the server reads the client's text otherwise
                            // than pgtenant does (`View::unreadable`, known only after the
                            // check): whatever the rest of the transaction does is
                            // checked, state included.
                            a.effects |= effect::ALL;
                        }
                        self.c.conn.queue(&f);
                    }
                    continue;
                }
                b'C' if !hidden => {
                    if f.body().starts_with(b"NOTIFY") {
                        a.notified = true;
                    }
                    // What the server says it ran, whatever pgtenant's reading of the text:
                    // a statement that changes the session always gets its check.
                    let e = tag_effects(f.body());
                    if e != 0 {
                        if e & effect::SETTINGS != 0 && a.effects & effect::SETTINGS == 0 {
                            // Not seen in the text: its names are not known either.
                            a.effects |= effect::HIDDEN;
                        }
                        a.effects |= e;
                    }
                }
                b'G' => a.pipe.copy_in_started(),
                b'A' => {
                    // Notifications are the client's even in the middle of our own work.
                    self.c.conn.queue(&f);
                    continue;
                }
                _ => {}
            }
            if !hidden {
                self.c.conn.queue(&f);
            }
            // Terminal answers pop their request.
            if let Some(r) = a.pipe.q.front().and_then(Expect::req) {
                let describe_statement_part = tag == b't';
                if !describe_statement_part && r.ends_with(tag) {
                    a.pipe.pop_front();
                }
            }
        }
    }
}

/// An extended-protocol request the server skipped (or that failed): undo what it would
/// have changed in the server's statement cache.
pub(super) fn undo_prepared(a: &mut Attached, e: Expect) {
    match e.req() {
        // The server skipped it (or refused it). A later Parse or Close of the same id
        // still on its way decides what the server has (its own skip is undone in turn);
        // otherwise that depends on what ran before, perhaps another batch's Parse or
        // Close of it, so it is in doubt: the next Parse of it closes it first.
        Some(Req::Parse { stmt: Some(id) } | Req::Close { evicted: Some(id) })
            if !a.pipe.has_statement_op(*id) =>
        {
            a.server.prepared.doubt(*id)
        }
        _ => {}
    }
}

pub(super) use crate::protocol::decode::is_fatal;

/// What a CommandComplete tag says the statement may have done to the session.
fn tag_effects(body: &[u8]) -> u8 {
    let word = body
        .iter()
        .position(|&b| b == b' ' || b == 0)
        .map_or(body, |i| &body[..i]);
    match word {
        b"SET" | b"RESET" => effect::SETTINGS,
        b"DISCARD" | b"DO" | b"CALL" | b"LOAD" => effect::ALL,
        b"PREPARE" | b"DEALLOCATE" | b"LISTEN" | b"UNLISTEN" | b"DECLARE" | b"CLOSE"
        | b"CREATE" | b"DROP" => effect::STATE,
        _ => 0,
    }
}

/// Queue an answer pgtenant makes itself. Those PostgreSQL sends only when the client's
/// Sync or Flush makes it flush its output (ParseComplete, BindComplete, CloseComplete,
/// descriptions, an Execute's CommandComplete) wait for that point; errors, notices and
/// ReadyForQuery go out at once with everything before them, as PostgreSQL's do.
pub(super) fn queue_own(client: &mut crate::net::Connection, f: &Frame) {
    match f.tag() {
        b'1' | b'2' | b'3' | b'n' | b't' | b'T' | b'C' | b's' | b'I' => client.queue_held(f),
        _ => client.queue(f),
    }
}

/// Hand the client the answers pgtenant makes itself that are now at the head.
pub(super) fn emit_synthetic(a: &mut Attached, client: &mut crate::net::Connection) {
    a.pipe.skip_markers();
    loop {
        match a.pipe.q.front() {
            Some(Expect::Synthetic(_)) => {
                if let Some(Expect::Synthetic(frames)) = a.pipe.pop_front() {
                    for f in &frames {
                        queue_own(client, f);
                    }
                }
            }
            Some(Expect::Flush) => {
                // The client's Flush: what it asked for before it goes out now.
                a.pipe.pop_front();
                client.release_held();
            }
            Some(Expect::SyntheticCommand(tag)) => {
                client.queue(&build::command_complete(tag));
                client.queue(&build::ready_for_query(a.server.tx_status));
                a.pipe.pop_front();
            }
            _ => return,
        }
        a.pipe.skip_markers();
    }
}

/// A ParameterStatus after which the server reads text otherwise than pgtenant's lexers
/// do: `standard_conforming_strings` off (backslashes escape in '…'), or a client
/// encoding whose multibyte characters can hold a quote or backslash byte.
fn blinds_the_lexers(body: &[u8]) -> bool {
    let Ok((k, v)) = decode::parameter_status(body) else {
        return false;
    };
    match k.to_ascii_lowercase().as_str() {
        "standard_conforming_strings" => v.eq_ignore_ascii_case("off"),
        "client_encoding" => crate::protocol::encodings::canonical(&v)
            .is_some_and(crate::protocol::encodings::is_client_only),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_fatal;
    use crate::protocol::build;

    #[test]
    fn fatal_errors_are_told_from_the_others() {
        assert!(is_fatal(
            build::fatal("57P01", "terminating connection").body()
        ));
        assert!(!is_fatal(
            build::error("57014", "canceling statement").body()
        ));
        // The localized severity alone (no 'V' field), and a truncated body.
        assert!(is_fatal(b"SFATAL\0C57P01\0\0"));
        assert!(!is_fatal(b"SERROR\0VFATAL"));
        assert!(!is_fatal(b""));
    }
}

/// Does this error say a prepared statement was planned against a schema that changed
/// (`0A000 cached plan must not change result type`, `XX000 cache lookup failed for type
/// …`)?
fn stale_statement(e: &ErrorFields) -> bool {
    // Known by the raising function where the message may be translated (`ereport`);
    // `elog` messages, as the type lookup's, never are.
    (e.code == "0A000"
        && (e.routine == "RevalidateCachedQuery"
            || e.message == "cached plan must not change result type"))
        || (e.code == "XX000" && e.message.starts_with("cache lookup failed for type"))
}

#[cfg(test)]
mod stale_tests {
    #[test]
    fn stale_statement_errors_are_known_by_code_and_message() {
        let body = |code: &str, msg: &str| {
            let b = format!("SERROR\0C{code}\0M{msg}\0\0").into_bytes();
            super::ErrorFields::parse(&b).unwrap()
        };
        assert!(super::stale_statement(&body(
            "0A000",
            "cached plan must not change result type"
        )));
        assert!(super::stale_statement(&body(
            "XX000",
            "cache lookup failed for type 17280"
        )));
        assert!(!super::stale_statement(&body("0A000", "something else")));
        // A server whose lc_messages translates the message: its routine still names it.
        let b = b"SFEHLER\0VERROR\0C0A000\0Mgecachter Plan darf den Ergebnistyp nicht \xc3\xa4ndern\0Fplancache.c\0L720\0RRevalidateCachedQuery\0\0";
        assert!(super::stale_statement(
            &super::ErrorFields::parse(b).unwrap()
        ));
        let b = b"SERROR\0C0A000\0Mnot supported\0RExecInitFoo\0\0";
        assert!(!super::stale_statement(
            &super::ErrorFields::parse(b).unwrap()
        ));
        assert!(!super::stale_statement(&body(
            "42P01",
            "cache lookup failed for type 1"
        )));
    }
}
