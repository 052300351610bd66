//! Opening server connections: connect parameters, the entry's connect_query, the
//! server_check_query on an idle one, and the registry guard of each connection.
use super::*;

/// Removes a connection from its pool's registry when the connection is dropped.
pub(super) struct ServerGuard {
    pool: Weak<Pool>,
    id: u64,
}
impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pool.upgrade() {
            p.servers.remove(&self.id);
        }
    }
}

impl Pool {
    pub(super) fn connect_params(&self, s: &Settings) -> ConnectParams {
        ConnectParams {
            host: self.key.node.host.to_string(),
            port: self.key.node.port,
            user: self.key.user.to_string(),
            database: self.key.dbname.to_string(),
            credential: self.credential(),
            tls_mode: s.server_tls,
            tls: self.tls.clone(),
            connect_timeout: s.server_connect_timeout,
            max_message: s.max_message_size as usize,
            startup: s
                .database_entry(&self.key.database)
                .map(|e| e.startup.clone())
                .unwrap_or_default(),
            keepalive: (!s.tcp_keepalive.is_zero()).then_some(s.tcp_keepalive),
        }
    }
    /// Open a connection outside the pool's count, for a job of pgtenant's own that
    /// holds it for long (the LISTEN connection of this database and user, the shard-map
    /// reader).
    /// `purpose` becomes its application_name ("pgtenant <purpose>"), so operators (and
    /// tests) can tell it from client traffic in pg_stat_activity.
    pub async fn open_dedicated(&self, purpose: &str) -> Result<ServerConn, BackendError> {
        let s = self.settings();
        let mut p = self.connect_params(&s);
        p.startup
            .push(("application_name".into(), format!("pgtenant {purpose}")));
        backend::connect(&p).await
    }
    /// Open a connection in a slot already counted (for tenant `lent`, if named: the
    /// connection carries it, or the count is given back when opening fails).
    pub(super) async fn open(&self, lent: Option<Arc<str>>) -> Result<Box<ServerConn>, PoolError> {
        let s = self.settings();
        let params = self.connect_params(&s);
        let connected = match backend::connect(&params).await {
            Ok(c) => self.connect_query(c, &s).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(mut c) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.servers.insert(
                    c.id,
                    ServerInfo {
                        id: c.id,
                        created: std::time::SystemTime::now(),
                        remote_pid: c.cancel.pid,
                        local_addr: c.conn.stream().local_addr(),
                        tls: c.conn.stream().is_tls(),
                        prepared: c.prepared.shared_count(),
                        last_used: None,
                    },
                );
                c.lent_to = lent;
                c.guard = Some(Box::new(ServerGuard {
                    pool: self.me.clone(),
                    id: c.id,
                }));
                let mut sp = self.server_params.lock().unwrap_or_else(|p| p.into_inner());
                if sp.is_none() {
                    *sp = Some(Arc::new(c.params.clone()));
                }
                tracing::debug!(pool = %self.name(), server = c.id, "server connection opened");
                Ok(Box::new(c))
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pool = %self.name(), error = %e, "server connection failed");
                let mut g = self.lock();
                if let Some(t) = lent {
                    g.queue.unlend(&t);
                }
                self.drop_slot(&mut g);
                Err(e.into())
            }
        }
    }
    /// Its database entry's connect_query, if any (run again after pgtenant resets a
    /// connection's settings, so that the entry's starting point survives).
    pub fn connect_query_sql(&self) -> Option<String> {
        self.settings
            .load()
            .database_entry(&self.key.database)
            .and_then(|e| e.connect_query.clone())
    }
    /// Run the connect_query again on a connection whose settings were just reset.
    /// False: the connection broke (close it).
    pub async fn rerun_connect_query(&self, c: &mut ServerConn) -> bool {
        let Some(q) = self.connect_query_sql() else {
            return true;
        };
        match c.run_internal(&q).await {
            Ok(()) => true,
            Err(BackendError::Server(_)) => c.tx_status == b'I',
            Err(_) => false,
        }
    }
    /// The entry's connect_query, once on a new connection before anyone uses it (what
    /// it sets is the connection's starting point; see README "Databases" for what a
    /// client's RESET does to it). An error of the query is logged and ignored, as in
    /// PgBouncer; a broken connection is closed.
    pub(super) async fn connect_query(
        &self,
        mut c: ServerConn,
        s: &Settings,
    ) -> Result<ServerConn, BackendError> {
        let Some(q) = s
            .database_entry(&self.key.database)
            .and_then(|e| e.connect_query.as_deref())
        else {
            return Ok(c);
        };
        match c.run_internal(q).await {
            Ok(()) => Ok(c),
            // As PgBouncer: an error of the query itself is logged and otherwise ignored
            // (the connection answered, is idle, and is used).
            Err(BackendError::Server(e)) if c.tx_status == b'I' => {
                tracing::warn!(pool = %self.name(), code = %e.code, error = %e.message, "connect_query failed; the connection is used anyway");
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(pool = %self.name(), error = %e, "connect_query failed; closing the new server connection");
                c.terminate();
                Err(e)
            }
        }
    }
    /// Run server_check_query on a connection that sat idle longer than
    /// server_check_delay, or that is suspect. None: it failed and was closed.
    pub(super) async fn check(&self, c: Box<ServerConn>) -> Option<Box<ServerConn>> {
        let s = self.settings.load();
        if !needs_check(&s, &c, Instant::now()) {
            return Some(c);
        }
        let q = s.server_check_query.clone();
        drop(s);
        Box::pin(self.run_check(c, q)).await
    }
    pub(super) async fn run_check(
        &self,
        mut c: Box<ServerConn>,
        q: String,
    ) -> Option<Box<ServerConn>> {
        match c.run_internal(&q).await {
            Ok(()) => {
                c.suspect = false;
                Some(c)
            }
            Err(e) => {
                tracing::info!(pool = %self.name(), server = c.id, error = %e, "server check failed; closing");
                self.close(c);
                None
            }
        }
    }
}

/// Must server_check_query run on this idle connection before it is lent: it sat idle
/// longer than server_check_delay, or another connection of its pool was lost meanwhile
/// (`suspect`)?
pub(super) fn needs_check(s: &Settings, c: &ServerConn, now: Instant) -> bool {
    !s.server_check_query.is_empty()
        && (c.suspect || now.saturating_duration_since(c.last_used) >= s.server_check_delay)
}
