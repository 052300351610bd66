//! The map of pools (one per node, database and user): creation on first use, removal of
//! unused ones, and what removed pools had counted (`Retired`).

use super::*;

/// What the removed pools of one node had counted (see the module doc).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    pub wait_timeouts: u64,
    pub assignments: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub queries: u64,
    pub xacts: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl Retired {
    fn add(&mut self, s: &PoolStats) {
        let r = Ordering::Relaxed;
        self.wait_timeouts += s.wait_timeouts.load(r);
        self.assignments += s.assignments.get();
        self.connects += s.connects.load(r);
        self.connect_failures += s.connect_failures.load(r);
        self.queries += s.query_count.get();
        self.xacts += s.xact_count.get();
        self.bytes_received += s.bytes_received.get();
        self.bytes_sent += s.bytes_sent.get();
    }
}

/// All pools, created on first use.
pub struct Pools {
    pub(super) map: DashMap<PoolKey, Arc<Pool>>,
    pub(super) dbs: DashMap<(Node, Arc<str>), Arc<DbCounter>>,
    /// Counters of removed pools by node name (bounded by the nodes, not the pools).
    pub(super) retired: Mutex<std::collections::HashMap<Arc<str>, Retired>>,
    pub(super) settings: Arc<ArcSwap<Settings>>,
    pub(super) tls: ArcSwap<Option<Arc<rustls::ClientConfig>>>,
}

impl Pools {
    pub fn new(
        settings: Arc<ArcSwap<Settings>>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<Pools> {
        Arc::new(Pools {
            map: DashMap::new(),
            dbs: DashMap::new(),
            retired: Mutex::default(),
            settings,
            tls: ArcSwap::from_pointee(tls),
        })
    }

    /// Parameters for a connection of pgtenant's own that belongs to no pool (the
    /// shard-map reader, auth_query lookups): the pools' TLS and timeouts,
    /// application_name "pgtenant <purpose>".
    pub fn own_connect_params(
        &self,
        node: &Node,
        database: &str,
        user: &str,
        credential: Option<ServerCredential>,
        purpose: &str,
    ) -> ConnectParams {
        let s = self.settings.load();
        ConnectParams {
            host: node.host.to_string(),
            port: node.port,
            user: user.to_string(),
            database: database.to_string(),
            credential,
            tls_mode: s.server_tls,
            tls: (**self.tls.load()).clone(),
            connect_timeout: s.server_connect_timeout,
            max_message: s.max_message_size as usize,
            startup: vec![("application_name".into(), format!("pgtenant {purpose}"))],
            keepalive: (!s.tcp_keepalive.is_zero()).then_some(s.tcp_keepalive),
        }
    }

    pub fn set_tls(&self, tls: Option<Arc<rustls::ClientConfig>>) {
        self.tls.store(Arc::new(tls));
    }

    /// The pool for a key, created if needed.
    pub fn get(&self, key: &PoolKey) -> Arc<Pool> {
        if let Some(p) = self.map.get(key) {
            return p.clone();
        }
        let db = self
            .dbs
            .entry((key.node.clone(), key.database.clone()))
            .or_insert_with(|| {
                Arc::new(DbCounter {
                    count: AtomicU32::new(0),
                    freed: Notify::new(),
                    pools: Mutex::new(Vec::new()),
                })
            })
            .clone();
        self.map
            .entry(key.clone())
            .or_insert_with(|| {
                let pool = Arc::new_cyclic(|me| Pool {
                    key: key.clone(),
                    inner: Mutex::new(Inner {
                        idle: VecDeque::new(),
                        total: 0,
                        waiters: VecDeque::new(),
                        exhausted_logged: None,
                        exhausted_since_log: 0,
                        unused_since: None,
                    }),
                    db: db.clone(),
                    settings: self.settings.clone(),
                    credential: Mutex::new(None),
                    server_params: Mutex::new(None),
                    tls: (**self.tls.load()).clone(),
                    stats: PoolStats::new(&key.node.name),
                    servers: DashMap::new(),
                    close_needed_upto: AtomicU64::new(0),
                    me: me.clone(),
                });
                db.pools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arc::downgrade(&pool));
                pool
            })
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// What the removed pools had counted, by node name.
    pub fn retired(&self) -> Vec<(Arc<str>, Retired)> {
        let g = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(n, r)| (n.clone(), *r)).collect()
    }

    /// Pools in the map now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove the pools nobody uses (the rules are in the module's doc): those that never
    /// connected at once, the others after `idle_for` unused (`pool_idle_timeout`; zero
    /// keeps every pool). Returns how many were removed.
    pub fn remove_unused(&self, idle_for: Duration, now: Instant) -> usize {
        if idle_for.is_zero() {
            return 0;
        }
        let mut removed = Vec::new();
        self.map.retain(|_, p| {
            // Only the map refers to it: nobody can start using it while this shard's
            // lock is held (`get` clones under it).
            let free = Arc::strong_count(p) == 1;
            let Ok(mut g) = p.inner.try_lock() else {
                return true;
            };
            if !free || g.total > 0 || !g.waiters.is_empty() {
                g.unused_since = None;
                return true;
            }
            let since = *g.unused_since.get_or_insert(now);
            let never_connected = p.stats.connects.load(Ordering::Relaxed) == 0;
            if never_connected || now.saturating_duration_since(since) >= idle_for {
                drop(g);
                removed.push(p.clone());
                return false;
            }
            true
        });
        let n = removed.len();
        if n == 0 {
            return 0;
        }
        {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            for p in &removed {
                tracing::debug!(pool = %p.name(), "removing unused pool");
                // Nobody holds it: its counters cannot move any more.
                retired
                    .entry(p.key.node.name.clone())
                    .or_default()
                    .add(&p.stats);
            }
        }
        let dbs: Vec<Arc<DbCounter>> = removed.iter().map(|p| p.db.clone()).collect();
        drop(removed);
        for db in &dbs {
            db.pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|w| w.strong_count() > 0);
        }
        drop(dbs);
        // A database counter no pool refers to any more (`get` clones it under this
        // shard's lock before it makes a pool, so one being used is never removed).
        self.dbs.retain(|_, db| Arc::strong_count(db) > 1);
        n
    }

    /// Close every idle server connection (shutdown, RECONNECT).
    pub fn close_idle(&self) {
        self.close_idle_where(|_| true);
    }

    /// Close the server connections to one database (before a client's `DROP DATABASE`,
    /// which would otherwise wait for them and fail): the idle ones now, the lent ones
    /// when they come back (as RECONNECT does; a session-mode client that just left may
    /// still be on its way back with its connection).
    pub fn close_idle_database(&self, database: &str) {
        for p in self
            .all()
            .into_iter()
            .filter(|p| &*p.key.database == database)
        {
            p.mark_close_needed();
        }
        self.close_idle_where(|k| &*k.database == database);
    }

    /// After a new shard map: close the idle connections of pools on nodes that are no
    /// longer in it (a removed or replaced worker). Busy ones close when they come back,
    /// since nothing routes there any more.
    pub fn close_idle_on_nodes_except(&self, keep: &[Node]) {
        self.close_idle_where(|k| &*k.node.name != "coordinator" && !keep.contains(&k.node));
    }

    fn close_idle_where(&self, pick: impl Fn(&PoolKey) -> bool) {
        for p in self.all().into_iter().filter(|p| pick(&p.key)) {
            let idle: Vec<Box<ServerConn>> = {
                let mut g = p.lock();
                let v: Vec<_> = g.idle.drain(..).collect();
                for _ in &v {
                    p.drop_slot(&mut g);
                }
                v
            };
            for c in idle {
                c.terminate();
            }
        }
    }
}
