//! Forwarding a client message to the attached server: statement names rewritten to the
//! server-side ones, what the server owes recorded in the pipeline.
use super::*;

impl Session {
    /// Send one client message to the attached server, rewriting statement names and
    /// recording what the server owes.
    pub(super) fn forward(&mut self, f: Frame) -> Result<(), FrontendError> {
        if let Some(frames) = self.fake_extended(&f)? {
            if let Some(a) = self.attached.as_mut() {
                a.pipe.push(Expect::Synthetic(frames));
            }
            return Ok(());
        }
        self.forward_real(f)
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
        }
        match f.tag() {
            b'P' => {
                let p = Parse::decode(f.body())?;
                if !track || p.name.is_empty() {
                    // Plain DML (most of it) is no DROP DATABASE and changes settings only
                    // through set_config: one scan instead of three.
                    let plain = is_plain_dml(p.query);
                    let changes = if plain {
                        calls_set_config(p.query)
                    } else {
                        changes_session(p.query)
                    };
                    if changes {
                        a.session_changed = true;
                        self.view
                            .t_mut()
                            .custom
                            .extend(custom_setting_names(p.query));
                    }
                    if !plain {
                        if let Some(Command::DropDatabase { name }) = classify_single(p.query) {
                            self.ctx.pools.close_idle_database(&name);
                        }
                    }
                    a.server.conn.queue(&f);
                    a.pool.stats.server_parse_count.add(1);
                    a.pipe.push(Expect::Forward(Req::Parse { stmt: None }));
                    return Ok(());
                }
                if self.view.t().statements.contains_key(p.name)
                    || self.view.t().sql_prepared.contains_key(p.name)
                {
                    // As PostgreSQL: refused, and the rest of the batch up to Sync skipped.
                    let msg = format!("prepared statement \"{}\" already exists", p.name);
                    a.pipe
                        .push(Expect::Synthetic(vec![build::error("42P05", &msg)]));
                    self.skip_until_sync = true;
                    return Ok(());
                }
                let key = f.body().get(p.name.len() + 1..).unwrap_or_default();
                let def = self.ctx.statements.intern(&p, key);
                a.session_changed |= def.changes_session;
                if def.changes_session {
                    self.view
                        .t_mut()
                        .custom
                        .extend(custom_setting_names(&def.query));
                }
                self.view
                    .t_mut()
                    .statements
                    .insert(p.name.to_owned(), def.clone());
                if a.server.prepared.touch(def.id) {
                    a.pipe.push(Expect::Synthetic(vec![Frame::new(b'1', &[])]));
                } else {
                    prepare_on(a, &def, cap, true);
                }
            }
            b'B' => {
                let b = Bind::decode(f.body())?;
                match self
                    .view
                    .t()
                    .statements
                    .get(b.statement)
                    .filter(|_| track && !b.statement.is_empty())
                    .cloned()
                {
                    Some(def) => {
                        a.session_changed |= def.changes_session;
                        if def.changes_session {
                            self.view
                                .t_mut()
                                .custom
                                .extend(custom_setting_names(&def.query));
                        }
                        if !a.server.prepared.touch(def.id) {
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
                match self
                    .view
                    .t()
                    .statements
                    .get(t.name)
                    .filter(|_| track && t.kind == b'S' && !t.name.is_empty())
                {
                    Some(def) => {
                        if !a.server.prepared.touch(def.id) {
                            prepare_on(a, def, cap, false);
                        }
                        a.server
                            .conn
                            .queue(&Target::encode(b'D', b'S', &def.server_name));
                    }
                    None => a.server.conn.queue(&f),
                }
                a.pipe.push(Expect::Forward(Req::Describe));
            }
            b'C' => {
                let t = Target::decode(f.body())?;
                if track && t.kind == b'S' && !t.name.is_empty() {
                    // The client's view only; the server keeps the statement for others.
                    self.view.t_mut().statements.remove(t.name);
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
            b'F' => {
                a.server.conn.queue(&f);
                a.pipe.push(Expect::Forward(Req::FunctionCall));
            }
            b'Q' => {
                self.ctx.routes.count_statement(self.route.0, self.route.1);
                let sql = decode::query_text(f.body())?;
                if track {
                    return self.forward_query(&f, sql);
                }
                if self.mode == PoolMode::Session {
                    a.server.conn.queue(&f);
                    a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
                    return Ok(());
                }
                if let Some(tag) = self.client_view_command(sql) {
                    if let Some(a) = self.attached.as_mut() {
                        a.pipe.push(Expect::SyntheticCommand(tag));
                    }
                    return Ok(());
                }
                let Some(a) = self.attached.as_mut() else {
                    return Ok(());
                };
                if changes_session(sql) {
                    a.session_changed = true;
                    self.view.t_mut().custom.extend(custom_setting_names(sql));
                }
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
            if calls_set_config(sql) {
                a.session_changed = true;
                self.view.t_mut().custom.extend(custom_setting_names(sql));
            }
            a.server.conn.queue(f);
            a.pipe.push(Expect::Forward(Req::Query { prepare: None }));
            return Ok(());
        }
        let cmds = classify(sql);
        if let [Command::DropDatabase { name }] = &cmds[..] {
            // Our idle connections to it would make the server wait and refuse.
            self.ctx.pools.close_idle_database(name);
        }
        if let [cmd] = &cmds[..] {
            if let Some(tag) = self.view_command(cmd.clone()) {
                if let Some(a) = self.attached.as_mut() {
                    a.pipe.push(Expect::SyntheticCommand(tag));
                }
                return Ok(());
            }
        }
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let mut prepare = None;
        if changes_session_of(sql, &cmds) {
            a.session_changed = true;
            self.view.t_mut().custom.extend(custom_setting_names(sql));
        }
        for c in &cmds {
            match c {
                Command::SessionChange | Command::DiscardAll => a.session_changed = true,
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
        a.server.conn.queue(f);
        a.pipe.push(Expect::Forward(Req::Query { prepare }));
        Ok(())
    }
}

/// Send a Parse for `def` to the server (closing the least recently used statement first
/// when the server's cache is full). `visible`: the client sent this Parse itself.
pub(super) fn prepare_on(a: &mut Attached, def: &StatementDef, cap: usize, visible: bool) {
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
