//! Forwarding a client message to the attached server: statement names rewritten to the
//! server-side ones, what the server owes recorded in the pipeline.
use super::*;

impl Session {
    /// Send one client message to the attached server, rewriting statement names and
    /// recording what the server owes.
    pub(super) fn forward(&mut self, f: Frame) -> Result<(), FrontendError> {
        if let Some(frames) = self.fake_extended(&f)? {
            if let Some(a) = self.attached.as_mut().filter(|_| !frames.is_empty()) {
                a.pipe.push(Expect::Synthetic(frames));
            }
            return Ok(());
        }
        self.forward_real(f)
    }

    /// Refuse an extended-protocol message. With a server attached the server raises the
    /// error ([`raise_in_batch`]), so that its transaction fails as PostgreSQL's would;
    /// without one pgtenant answers it. Either way the client's messages up to its Sync
    /// are skipped, as after any error.
    pub(super) fn refuse_in_batch(&mut self, refusal: &Refusal) {
        match self.attached.as_deref_mut() {
            Some(a) => raise_in_batch(a, refusal),
            None => {
                self.refused_without_server();
                self.c.conn.queue(&refusal.error());
            }
        }
        self.skip_until_sync = true;
    }

    /// A command of the client's view (DEALLOCATE, DISCARD ALL, LISTEN, …) sent as a
    /// simple query with a server attached: its tag goes out in its turn, or the server
    /// raises its refusal. False: not such a command.
    fn answered_view_command(&mut self, answer: Result<Option<&'static str>, Refusal>) -> bool {
        match answer {
            Ok(None) => false,
            Ok(Some(tag)) => {
                if let Some(a) = self.attached.as_mut() {
                    a.pipe.push(Expect::SyntheticCommand(tag));
                }
                true
            }
            Err(refusal) => {
                raise_on_server(self.attached.as_deref_mut(), &refusal);
                true
            }
        }
    }

    /// [`Session::forward`] for a message `fake_extended` already declined (the first
    /// message of a transaction and the Parses held for it).
    pub(super) fn forward_real(&mut self, f: Frame) -> Result<(), FrontendError> {
        let track = self.track_prepared;
        let cap = self.max_prepared;
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        a.pool.stats.client_message(f.tag(), f.len());
        if a.query_started.is_none() {
            // The first message after attaching starts its clocks when the pool lent the
            // connection (a moment ago): one clock read less per transaction.
            let now = a.lent.take().unwrap_or_else(Instant::now);
            a.query_started = Some(now);
            if a.server.tx_status == b'I' {
                a.xact_started = now;
            }
            if let Some(t) = a.timer.as_mut() {
                t.arm();
            }
        }
        match f.tag() {
            b'P' => {
                let p = Parse::decode(f.body())?;
                if !track || p.name.is_empty() {
                    // Plain DML (most of it) is no DROP DATABASE nor view command: one
                    // scan for what it may do to the session instead of a classification.
                    let mut e = match screen_parse(&self.ctx, &p.query) {
                        Err(refusal) => {
                            self.refuse_in_batch(&refusal);
                            return Ok(());
                        }
                        Ok(None) => dml_effects(&p.query),
                        // A pinned client's DROP, CLOSE, DISCARD may lift the pin.
                        Ok(Some(cmds)) => effects_of(&p.query, &cmds) | pin_recheck(self.pinned),
                    };
                    if !p.name.is_empty() {
                        // Untracked: the client's own statement lives on this server.
                        e |= effect::STATE;
                    } else {
                        a.server.unnamed_owner = self.id;
                        a.server.unnamed_gen = self.view.t().unnamed_gen;
                        a.pipe.query_sent = false;
                        if track && f.len() <= super::UNNAMED_KEPT_MAX {
                            // A copy of its own: the frame may share the read buffer,
                            // which an idle client must not keep.
                            self.view.t_mut().unnamed = Some(Frame::new(b'P', f.body()));
                        }
                    }
                    note_effects(a, &mut self.view, e, &p.query);
                    a.server.conn.queue(&f);
                    a.pool.stats.server_parse_count.add(1);
                    a.pipe.push(Expect::Forward(Req::Parse { stmt: None }));
                    return Ok(());
                }
                if self.view.t().statements.contains_key(p.name)
                    || self.view.t().sql_prepared.contains_key(p.name)
                {
                    // As PostgreSQL: refused, and the rest of the batch up to Sync skipped.
                    let msg = format!("prepared statement \"{}\" already exists", shown(p.name));
                    self.refuse_in_batch(&Refusal::new("42P05", msg));
                    return Ok(());
                }
                if let Err(refusal) = screen_parse(&self.ctx, &p.query)
                    .and_then(|_| self.view.t().room_for(p.name, &p.query))
                {
                    self.refuse_in_batch(&refusal);
                    return Ok(());
                }
                let key = f.body().get(p.name.len() + 1..).unwrap_or_default();
                let epoch = self.view.t().epoch;
                let def = self.ctx.statements.intern_at(&p, key, epoch);
                note_def_effects(a, &mut self.view, &def);
                self.view.t_mut().add_statement(p.name, def.clone());
                if prepared_on(a, def.id) {
                    a.pipe.push(Expect::Synthetic(vec![Frame::new(b'1', &[])]));
                } else {
                    prepare_on(a, &def, cap, true);
                }
            }
            b'B' => {
                let b = Bind::decode(f.body())?;
                let def = match self.view.t().statements.get(b.statement) {
                    Some(def) if track && !b.statement.is_empty() => Some(def.clone()),
                    _ => None,
                };
                // A statement the client never prepared (on this connection, as far as
                // it knows) is not looked up on the server: it may be another client's.
                let missing = match &def {
                    Some(_) => None,
                    None if b.statement.is_empty()
                        && !unnamed_here(a, &mut self.view, &self.ctx, self.id)? =>
                    {
                        Some("unnamed prepared statement does not exist".to_string())
                    }
                    None if track && !b.statement.is_empty() => Some(format!(
                        "prepared statement \"{}\" does not exist",
                        shown(b.statement)
                    )),
                    None => None,
                };
                if let Some(msg) = missing {
                    self.refuse_in_batch(&Refusal::new("26000", msg));
                    return Ok(());
                }
                match def {
                    Some(def) => {
                        note_def_effects(a, &mut self.view, &def);
                        if !prepared_on(a, def.id) {
                            prepare_on(a, &def, cap, false);
                        }
                        a.server.conn.queue(&b.encode_as(&def.server_name));
                    }
                    None => a.server.conn.queue(&f),
                }
                a.pipe.push(Expect::Forward(Req::Bind));
            }
            b'D' => {
                let t = Target::decode(f.body())?;
                let named = track && t.kind == b'S' && !t.name.is_empty();
                match self
                    .view
                    .t()
                    .statements
                    .get(t.name)
                    .filter(|_| named)
                    .cloned()
                {
                    Some(def) => {
                        if !prepared_on(a, def.id) {
                            prepare_on(a, &def, cap, false);
                        }
                        a.server
                            .conn
                            .queue(&Target::encode(b'D', b'S', &def.server_name));
                    }
                    None if t.kind == b'S'
                        && t.name.is_empty()
                        && !unnamed_here(a, &mut self.view, &self.ctx, self.id)? =>
                    {
                        let msg = "unnamed prepared statement does not exist";
                        self.refuse_in_batch(&Refusal::new("26000", msg.to_owned()));
                        return Ok(());
                    }
                    None if named => {
                        let msg =
                            format!("prepared statement \"{}\" does not exist", shown(t.name));
                        self.refuse_in_batch(&Refusal::new("26000", msg));
                        return Ok(());
                    }
                    None => a.server.conn.queue(&f),
                }
                a.pipe.push(Expect::Forward(Req::Describe));
            }
            b'C' => {
                let t = Target::decode(f.body())?;
                if track && t.kind == b'S' && !t.name.is_empty() {
                    // The client's view only; the server keeps the statement for others.
                    self.view.t_mut().remove_statement(t.name);
                    a.pipe.push(Expect::Synthetic(vec![Frame::new(b'3', &[])]));
                } else {
                    a.server.conn.queue(&f);
                    a.pipe.push(Expect::Forward(Req::Close { evicted: None }));
                }
            }
            b'E' => {
                self.ctx.routes.count_statement(self.route.0, self.route.1);
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::Execute));
            }
            b'S' => {
                a.server.conn.queue(&f);
                if !a.pipe.copy_in {
                    a.pipe.push(Expect::Forward(Req::Sync));
                }
            }
            b'c' | b'f' => {
                a.server.conn.queue(&f);
                a.pipe.client_copy_end();
            }
            b'H' => {
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Flush);
            }
            b'F' => {
                // A function called by oid (set_config, pg_advisory_lock, …): unknown effect.
                a.effects |= effect::ALL;
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::FunctionCall));
            }
            b'Q' => {
                self.ctx.routes.count_statement(self.route.0, self.route.1);
                let sql = decode::query_text(f.body())?;
                let sql: &str = &sql;
                if track {
                    return self.forward_query(&f, sql);
                }
                if self.mode == PoolMode::Session {
                    if !is_plain_dml(sql) {
                        before_forwarding(&self.ctx, &classify(sql));
                    }
                    a.server.conn.queue(&f);
                    a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
                    return Ok(());
                }
                let answer = self.client_view_command(sql);
                if self.answered_view_command(answer) {
                    return Ok(());
                }
                let Some(a) = self.attached.as_mut() else {
                    return Ok(());
                };
                let cmds = classify(sql);
                before_forwarding(&self.ctx, &cmds);
                let mut e = effects_of(sql, &cmds);
                if cmds.iter().any(|c| matches!(c, Command::Prepare { .. })) {
                    // Untracked: the client's own statement lives on this server.
                    e |= effect::STATE;
                }
                note_effects(a, &mut self.view, e, sql);
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
            }
            _ => a.server.conn.queue(&f),
        }
        Ok(())
    }

    /// A simple query in transaction/statement mode with statement tracking: SQL-level
    /// PREPARE/EXECUTE travel with the client; DEALLOCATE/DISCARD ALL act on its view.
    pub(super) fn forward_query(&mut self, f: &Frame, sql: &str) -> Result<(), FrontendError> {
        if is_plain_dml(sql) {
            // Most of the traffic: no command of the client's view, nothing prepared.
            let Some(a) = self.attached.as_mut() else {
                return Ok(());
            };
            let e = dml_effects(sql);
            note_effects(a, &mut self.view, e, sql);
            a.server.conn.queue(f);
            a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
            return Ok(());
        }
        let cmds = classify(sql);
        before_forwarding(&self.ctx, &cmds);
        if let [cmd] = &cmds[..] {
            let answer = self.view_command(cmd.clone());
            if self.answered_view_command(answer) {
                return Ok(());
            }
        }
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        if let ([cmd], b'E') = (&cmds[..], self.client_tx) {
            if matches!(
                cmd,
                Command::Prepare { .. }
                    | Command::Execute { .. }
                    | Command::Deallocate { .. }
                    | Command::DiscardAll
                    | Command::Listen { .. }
                    | Command::Unlisten { .. }
            ) {
                // A failed transaction runs nothing but its end: the server refuses this
                // (25P02), and nothing of the client's statements is prepared, dropped or
                // forgotten for it.
                a.server.conn.queue(f);
                a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
                return Ok(());
            }
        }
        if let Some(refusal) = reserved_refusal(&cmds) {
            raise_on_server(Some(a), &refusal);
            return Ok(());
        }
        let e = effects_of(sql, &cmds) | pin_recheck(self.pinned);
        note_effects(a, &mut self.view, e, sql);
        if let ([Command::DiscardAll], b'I') = (&cmds[..], self.client_tx) {
            // Only a pinned client's DISCARD ALL reaches a server (`view_command`): it
            // drops everything there, pgtenant's statements too; the client's startup
            // settings come back as on a direct connection.
            a.server.conn.queue(f);
            a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
            a.server.forget_session_state();
            a.server.sql_owner = 0;
            a.server.dirty_by = 0;
            self.view.clear(true);
            self.view.t_mut().epoch = self.ctx.statements.next_epoch();
            self.view.set_desired(self.c.startup.clone());
            for q in params::replay(&ParamMap::new(), &self.view.desired) {
                hidden_query(a, &q);
            }
            a.server.applied = self.view.desired.clone();
            return Ok(());
        }
        if let [Command::Prepare { name }] = &cmds[..] {
            let t = self.view.t();
            if !t.sql_prepared.contains_key(name) && !t.statements.contains_key(name) {
                if let Err(refusal) = t.room_for_beside(name, sql, a.pipe.prepares) {
                    raise_on_server(Some(a), &refusal);
                    return Ok(());
                }
            }
        }
        let mut prepare = None;
        let mut deallocate_all = false;
        for c in &cmds {
            match c {
                Command::Deallocate { name: None } => deallocate_all = true,
                Command::Prepare { name } if cmds.len() == 1 => {
                    // Another client's statement of that name may be on this server.
                    if a.server.prepared.sql.remove(name).is_some() {
                        hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                    }
                    prepare = Some((name.clone(), Arc::<str>::from(sql)));
                }
                Command::Execute { name } => {
                    if let Some(text) = self.view.t().sql_prepared.get(name) {
                        if a.server.prepared.sql.get(name) != Some(text) {
                            if a.server.prepared.sql.remove(name).is_some() {
                                hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                            }
                            a.server.prepared.sql.insert(name.clone(), text.clone());
                            a.server.conn.queue(&build::query(text));
                            a.pipe.push(Expect::Hidden {
                                req: Req::Query { prepare: None },
                                show_errors: true,
                            });
                        }
                    } else if a.server.prepared.sql.remove(name).is_some() {
                        // Another client's (or one this client deallocated): not its own.
                        hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                    }
                }
                // Not in the client's view (else answered above): the server must not
                // drop another client's statement of that name, and must answer 26000.
                Command::Deallocate { name: Some(name) }
                    if a.server.prepared.sql.contains_key(name) =>
                {
                    a.server.prepared.sql.remove(name);
                    hidden_query(a, &format!("DEALLOCATE {}", params::ident(name)));
                }
                _ => {}
            }
        }
        a.server.sql_owner = self.id;
        a.server.conn.queue(f);
        a.pipe.push(Expect::Forward(Req::Query { prepare }));
        if deallocate_all {
            // `DEALLOCATE ALL` among other statements reaches the server and drops
            // pgtenant's statements with the client's: make sure of it (it may or may not
            // have run, whatever else failed) and forget them all.
            hidden_query(a, "DEALLOCATE ALL");
            a.server.prepared.clear();
            self.view.clear(false);
            self.view.t_mut().epoch = self.ctx.statements.next_epoch();
        }
        Ok(())
    }
}

/// Is the server's unnamed statement this client's (the last one parsed on this
/// connection, now or when the client last held it)? Another client's must not be bound.
fn unnamed_ours(a: &Attached, id: u64, view: &View) -> bool {
    a.server.unnamed_owner == id
        && a.server.unnamed_gen == view.t().unnamed_gen
        && !a.pipe.query_sent
}

/// Is the client's unnamed statement on this server, or sent there now (its kept Parse,
/// see [`reparse_unnamed`])? False: it has none pgtenant may use, and a Bind or Describe
/// of it fails with 26000.
fn unnamed_here(
    a: &mut Attached,
    view: &mut View,
    ctx: &Context,
    id: u64,
) -> Result<bool, FrontendError> {
    if unnamed_ours(a, id, view) {
        return Ok(true);
    }
    match view.t().unnamed.clone() {
        Some(p) => reparse_unnamed(a, view, ctx, &p, id),
        None => Ok(false),
    }
}

/// Parse the client's unnamed statement again on this server (see `ViewTables::unnamed`),
/// its ParseComplete hidden, its errors shown (the client's Bind or Describe then fails
/// as the statement would now). What it may do to the session counts for this
/// transaction, as at its first Parse. False (nothing sent) if pgtenant refuses the
/// statement now (its rules changed since the first Parse).
fn reparse_unnamed(
    a: &mut Attached,
    view: &mut View,
    ctx: &Context,
    parse: &Frame,
    id: u64,
) -> Result<bool, FrontendError> {
    let p = Parse::decode(parse.body())?;
    let e = match screen_parse(ctx, &p.query) {
        Err(_) => return Ok(false),
        Ok(None) => dml_effects(&p.query),
        Ok(Some(cmds)) => effects_of(&p.query, &cmds),
    };
    note_effects(a, view, e, &p.query);
    a.server.conn.queue(parse);
    a.pool.stats.server_parse_count.add(1);
    a.server.unnamed_owner = id;
    a.server.unnamed_gen = view.t().unnamed_gen;
    a.pipe.query_sent = false;
    a.pipe.push(Expect::Hidden {
        req: Req::Parse { stmt: None },
        show_errors: true,
    });
    Ok(true)
}

/// While pinned, a statement that is not plain DML may have dropped what pins it: the
/// state is counted again after it.
fn pin_recheck(pinned: bool) -> u8 {
    if pinned {
        effect::STATE
    } else {
        0
    }
}

/// Record what a message may do to the session: the read-back at the transaction's end,
/// and the custom settings it names.
pub(super) fn note_effects(a: &mut Attached, view: &mut View, e: u8, sql: &str) {
    note(a, view, e, || custom_setting_names(sql));
}

/// [`note_effects`] of a named statement: its custom setting names were found once.
pub(super) fn note_def_effects(a: &mut Attached, view: &mut View, def: &StatementDef) {
    note(a, view, def.effects, || def.custom.to_vec());
}

fn note(a: &mut Attached, view: &mut View, e: u8, names: impl FnOnce() -> Vec<String>) {
    let e = if view.unreadable { effect::ALL } else { e };
    if e == 0 {
        return;
    }
    a.effects |= e;
    if e & effect::SETTINGS != 0 {
        let custom = &mut view.t_mut().custom;
        for n in names() {
            if custom.len() >= MAX_CUSTOM_SETTINGS && !custom.contains(&n) {
                // Not read back: cleared before the next client instead.
                a.effects |= effect::HIDDEN;
                break;
            }
            custom.insert(n);
        }
    }
}

/// What a Parse's text needs before it is recorded or forwarded: plain DML (most of it)
/// needs nothing (`Ok(None)`, one scan, no classification); anything else is classified
/// once (`Ok(Some(commands))`), a `DROP DATABASE` among it closes pgtenant's connections
/// first, and one of pgtenant's reserved statement names is refused (`Err`).
pub(super) fn screen_parse(ctx: &Context, sql: &str) -> Result<Option<Vec<Command>>, Refusal> {
    if is_plain_dml(sql) {
        return Ok(None);
    }
    let cmds = classify(sql);
    before_forwarding(ctx, &cmds);
    match reserved_refusal(&cmds) {
        Some(refusal) => Err(refusal),
        None => Ok(Some(cmds)),
    }
}

/// What a statement about to be forwarded asks of pgtenant itself. `DROP DATABASE`
/// among `cmds` (however it arrives: simple query, extended protocol,
/// any mode): pgtenant's idle connections to that database (the pools', and auth_query's
/// kept ones) would make the server wait for them and refuse, so they are closed first.
/// Any other schema change (`Command::SchemaChange`) makes the statements clients prepare
/// from now on new ones on the servers (`StatementRegistry::new_schema`): a statement
/// another client prepared before it would be planned against the old schema.
pub(super) fn before_forwarding(ctx: &Context, cmds: &[Command]) {
    if crate::router::command::changes_schema(cmds) {
        ctx.statements.new_schema();
    }
    for c in cmds {
        if let Command::DropDatabase { name } = c {
            ctx.pools.close_idle_database(name);
            ctx.auth_query.close_database(name);
        }
    }
}

/// A statement pgtenant refuses: one that names pgtenant's own server-side statements, a
/// LISTEN over a limit.
pub(super) struct Refusal {
    code: std::borrow::Cow<'static, str>,
    message: String,
}

impl Refusal {
    pub(super) fn new(code: &'static str, message: String) -> Refusal {
        Refusal {
            code: code.into(),
            message,
        }
    }

    /// A refusal with a server's SQLSTATE (one that is not five letters or digits is
    /// replaced by XX000: it goes into SQL in [`Refusal::raise_sql`]).
    pub(super) fn from_server(code: &str, message: String) -> Refusal {
        let ok = code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric());
        Refusal {
            code: if ok {
                code.to_ascii_uppercase().into()
            } else {
                sqlstate::INTERNAL_ERROR.into()
            },
            message,
        }
    }

    /// The error as pgtenant's own ErrorResponse.
    pub(super) fn error(&self) -> Frame {
        build::error(&self.code, &self.message)
    }

    /// A statement that makes the server raise this error (so that a transaction block
    /// fails as it would have).
    pub(super) fn raise_sql(&self) -> String {
        let msg = params::literal(&self.message).replace("$pgtenant$", "");
        format!(
            "DO $pgtenant$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {msg}; END$pgtenant$",
            self.code
        )
    }
}

/// A refused extended-protocol message with a server attached: the server raises the
/// error itself (the unnamed statement and portal run a DO block that raises it), so that
/// the transaction block, or the batch's implicit transaction, fails as PostgreSQL's
/// would, and the client gets the error in its place among the answers
/// ([`Session::refuse_in_batch`] skips the client's messages up to its Sync).
fn raise_in_batch(a: &mut Attached, refusal: &Refusal) {
    run_in_batch(a, "", &refusal.raise_sql());
    // The client's unnamed statement there is replaced.
    a.server.unnamed_owner = 0;
}

/// Run `sql` on the server inside the client's extended-protocol batch: Parse, Bind and
/// Execute under statement and portal `name` (the unnamed ones for ""), no parameters,
/// their answers hidden and an error shown to the client in its place.
pub(super) fn run_in_batch(a: &mut Attached, name: &str, sql: &str) {
    a.server.conn.queue(&build::parse(name, sql));
    // Bind portal `name` to statement `name`: no formats, no parameters, no result
    // formats; then Execute it unlimited.
    let mut bind = Vec::with_capacity(2 * name.len() + 8);
    for _ in 0..2 {
        bind.extend_from_slice(name.as_bytes());
        bind.push(0);
    }
    bind.extend_from_slice(&[0; 6]);
    a.server.conn.queue(&Frame::new(b'B', &bind));
    let mut exec = Vec::with_capacity(name.len() + 5);
    exec.extend_from_slice(name.as_bytes());
    exec.extend_from_slice(&[0; 5]);
    a.server.conn.queue(&Frame::new(b'E', &exec));
    for req in [Req::Parse { stmt: None }, Req::Bind, Req::Execute] {
        a.pipe.push(Expect::Hidden {
            req,
            show_errors: true,
        });
    }
}

/// Close statement or portal (`kind` b'S' / b'P') `name` on the server, the answer
/// hidden (a Close never fails: closing what does not exist succeeds).
pub(super) fn close_in_batch(a: &mut Attached, kind: u8, name: &str) {
    a.server.conn.queue(&Target::encode(b'C', kind, name));
    a.pipe.push(Expect::Hidden {
        req: Req::Close { evicted: None },
        show_errors: false,
    });
}

/// The error the server raises, unseen, to fail a held transaction that failed in
/// pgtenant (see [`Session::refuse_in_batch`]) once it is opened there.
pub(super) const HELD_FAILED: &str = "pgtenant: the transaction failed before it reached a server";

/// Open-and-fail: after the held BEGIN (and what followed it) is replayed, the server's
/// transaction is put in the failed state the client was told of.
pub(super) fn fail_held_transaction(a: &mut Attached) {
    let sql = Refusal::new("25P02", HELD_FAILED.to_owned()).raise_sql();
    a.server.conn.queue(&build::query(&sql));
    a.pipe.push(Expect::Hidden {
        req: Req::Query { prepare: None },
        show_errors: false,
    });
}

/// A refused simple query with a server attached: the server raises the error itself, so
/// that a transaction block fails as it would have.
fn raise_on_server(a: Option<&mut Attached>, refusal: &Refusal) {
    if let Some(a) = a {
        a.server.conn.queue(&build::query(&refusal.raise_sql()));
        a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
    }
}

/// `PREPARE`, `EXECUTE` or `DEALLOCATE` of a reserved name (`pgt_…`): a client never
/// reaches another client's statements through pgtenant's names.
pub(super) fn reserved_refusal(cmds: &[Command]) -> Option<Refusal> {
    cmds.iter().find_map(|c| match c {
        // `U&"…"` names spell any name (pgtenant's too) in escapes the lexer does not read.
        Command::Prepare { name } | Command::Execute { name } | Command::Deallocate { name: Some(name) }
            if name == "u&" =>
        {
            Some(Refusal {
                code: "0A000".into(),
                message: "prepared statement names written as U&\"…\" are not supported by pgtenant".into(),
            })
        }
        Command::Prepare { name } if is_reserved_statement_name(name) => Some(Refusal {
            code: "42939".into(),
            message: format!(
                "prepared statement names starting with \"{RESERVED_STATEMENT_PREFIX}\" are reserved by pgtenant"
            ),
        }),
        Command::Execute { name } | Command::Deallocate { name: Some(name) }
            if is_reserved_statement_name(name) =>
        {
            Some(Refusal {
                code: "26000".into(),
                message: format!("prepared statement \"{}\" does not exist", shown(name)),
            })
        }
        _ => None,
    })
}

/// Will the server have statement `id` when the batch being sent runs? Yes when it is
/// cached and no Parse or Close of it is still unanswered in an earlier batch (the server
/// skips those after an error, see [`crate::frontend::pipeline::Pipeline::unsure`]).
/// Marks it used.
fn prepared_on(a: &mut Attached, id: u64) -> bool {
    a.server.prepared.touch(id) && !a.pipe.unsure(id)
}

/// Send a Parse for `def` to the server (closing the least recently used statement first
/// when the server's cache is full). `visible`: the client sent this Parse itself. When
/// the server may have it already (a Parse or Close of it that the server skipped, or one
/// not answered yet in an earlier batch), a Close of it goes first: a Parse of a name
/// that exists fails, a Close of one that does not succeeds.
pub(super) fn prepare_on(a: &mut Attached, def: &StatementDef, cap: usize, visible: bool) {
    if a.pipe.unsure(def.id) | a.server.prepared.take_doubt(def.id) {
        close_in_batch(a, b'S', &def.server_name);
    }
    if let Some(victim) = a.server.prepared.insert(def.id, cap) {
        a.server
            .conn
            .queue(&Target::encode(b'C', b'S', &server_statement_name(victim)));
        a.pipe.push(Expect::Hidden {
            req: Req::Close {
                evicted: Some(victim),
            },
            show_errors: false,
        });
    }
    a.server.conn.queue(&def.parse);
    a.pool.stats.server_parse_count.add(1);
    let req = Req::Parse { stmt: Some(def.id) };
    a.pipe.push(if visible {
        Expect::Forward(req)
    } else {
        Expect::Hidden {
            req,
            show_errors: true,
        }
    });
}

/// A query of pgtenant's own (setting replay, DEALLOCATE of another client's statement)
/// whose failure is only logged.
pub(super) fn hidden_query(a: &mut Attached, sql: &str) {
    a.server.conn.queue(&build::query(sql));
    a.pipe.push(Expect::Hidden {
        req: Req::Query { prepare: None },
        show_errors: false,
    });
}

/// A client's statement name as pgtenant's own errors show it: whole up to 128 bytes (as
/// any real name is), cut with "…" beyond, so that an answer pgtenant makes and queues
/// for a client is small however long the name it sent (MAX_OWED bounds their number).
pub(super) fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    crate::protocol::cut(name, 128)
}
