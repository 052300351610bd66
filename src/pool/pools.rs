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
    /// max_db_connections counters by (node, database entry).
    pub(super) dbs: DashMap<(Node, Arc<str>), Arc<Counter>>,
    /// max_user_connections counters by (node, server role).
    pub(super) roles: DashMap<(Node, Arc<str>), Arc<Counter>>,
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
            roles: DashMap::new(),
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
            if !p.is_stale() {
                return p.clone();
            }
        }
        let counter = || {
            Arc::new(Counter {
                count: AtomicU32::new(0),
                freed: Notify::new(),
                pools: Mutex::new(Vec::new()),
            })
        };
        let db = self
            .dbs
            .entry((key.node.clone(), key.database.clone()))
            .or_insert_with(counter)
            .clone();
        let role = self
            .roles
            .entry((key.node.clone(), key.user.clone()))
            .or_insert_with(counter)
            .clone();
        let make = || {
            let pool = Arc::new_cyclic(|me| Pool {
                key: key.clone(),
                inner: Mutex::new(Inner {
                    idle: VecDeque::new(),
                    total: 0,
                    queue: Default::default(),
                    exhausted_logged: None,
                    exhausted_since_log: 0,
                    unused_since: None,
                    idle_suspected: None,
                }),
                db: db.clone(),
                role: role.clone(),
                settings: self.settings.clone(),
                credential: Mutex::new(None),
                server_params: Mutex::new(None),
                tls: (**self.tls.load()).clone(),
                stats: PoolStats::new(&key.node.name),
                servers: DashMap::new(),
                close_needed_upto: AtomicU64::new(0),
                stale: std::sync::atomic::AtomicBool::new(false),
                me: me.clone(),
            });
            for c in [&db, &role] {
                c.pools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arc::downgrade(&pool));
            }
            pool
        };
        match self.map.entry(key.clone()) {
            dashmap::Entry::Occupied(mut o) if o.get().is_stale() => {
                // An entry changed and changed back: a fresh pool; the stale one lives on
                // with the clients still on it, its counters go to the node's totals.
                let old = o.insert(make());
                self.retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(old.key.node.name.clone())
                    .or_default()
                    .add(&old.stats);
                o.get().clone()
            }
            dashmap::Entry::Occupied(o) => o.get().clone(),
            dashmap::Entry::Vacant(v) => v.insert(make()).clone(),
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Per tenant, over every pool now: (connections counted for it, transactions
    /// waiting). Only tenants under a limit are counted; see [`Pool::tenant_load`].
    pub fn tenant_load(&self) -> std::collections::HashMap<Arc<str>, (u32, u32)> {
        let mut m: std::collections::HashMap<Arc<str>, (u32, u32)> = Default::default();
        for p in self.all() {
            for (t, (a, w)) in p.tenant_load() {
                let e = m.entry(t).or_default();
                e.0 += a;
                e.1 += w;
            }
        }
        m
    }

    /// Transactions waiting per tenant now, over every pool (SHOW TENANTS).
    pub fn tenant_waiting(&self) -> std::collections::HashMap<Arc<str>, u32> {
        self.tenant_load()
            .into_iter()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(t, (_, w))| (t, w))
            .collect()
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
            if !free || g.total > 0 || g.queue.any_open() {
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
        let counters: Vec<Arc<Counter>> = removed
            .iter()
            .flat_map(|p| [p.db.clone(), p.role.clone()])
            .collect();
        drop(removed);
        for c in &counters {
            c.pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|w| w.strong_count() > 0);
        }
        drop(counters);
        // A counter no pool refers to any more (`get` clones it before it makes a pool,
        // so one being used is never removed).
        self.dbs.retain(|_, c| Arc::strong_count(c) > 1);
        self.roles.retain(|_, c| Arc::strong_count(c) > 1);
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
    /// Close the idle connections of one `[databases]` entry (RECONNECT db); lent ones
    /// are marked by the caller.
    pub fn close_idle_entry(&self, entry: &str) {
        self.close_idle_where(|p| *p.key.database == *entry);
    }

    pub fn close_idle_database(&self, database: &str) {
        for p in self
            .all()
            .into_iter()
            .filter(|p| &*p.key.dbname == database)
        {
            p.mark_close_needed();
        }
        self.close_idle_where(|p| *p.key.dbname == *database);
    }

    /// After a reload: the pools whose database entry now leads elsewhere (another
    /// server, database or forced role) or nowhere are marked stale: their idle
    /// connections close now, lent ones when they come back, and their clients move to
    /// the new place at their next transaction (or are told the database is gone).
    /// Returns how many pools were marked.
    ///
    /// Pools whose entry still leads to the same place but opens connections differently
    /// now (its connect_query or startup settings changed) keep their clients; their
    /// connections are closed (idle now, lent on return) so that new ones are made the
    /// new way, as PgBouncer does for a changed entry.
    pub fn retire_changed(&self, old: &Settings, s: &Settings) -> usize {
        let mut n = 0;
        for p in self.all() {
            if p.is_stale() {
                continue;
            }
            let made = |s: &Settings| {
                s.database_entry(&p.key.database)
                    .map(|e| (e.connect_query.clone(), e.startup.clone()))
            };
            if made(old) != made(s) {
                tracing::info!(pool = %p.name(), "database entry's connect_query or startup settings changed: closing its server connections");
                p.mark_close_needed();
                p.close_idle();
            }
            let same = s.target(&p.key.database).is_some_and(|t| {
                let server = if p.key.node.is_worker() {
                    // A worker pool stays while its entry is routed with the same cluster.
                    if is_primary_worker(&p.key.node) {
                        t.routed && !t.own_cluster
                    } else {
                        let prefix = format!("{}/", p.key.database.replace(':', "_"));
                        t.own_cluster && p.key.node.name.starts_with(&prefix)
                    }
                } else {
                    (&*p.key.node.host, p.key.node.port) == (t.host.as_str(), t.port)
                };
                let role = match &t.user {
                    Some(u) => p.key.forced && *p.key.user == **u,
                    None => !p.key.forced,
                };
                server && *p.key.dbname == t.dbname && role
            });
            if !same {
                tracing::info!(pool = %p.name(), "database entry changed or removed: closing its server connections");
                p.mark_stale();
                n += 1;
            }
        }
        self.close_idle_where(|p| p.is_stale());
        n
    }

    /// After a new shard map: close the idle connections of pools on nodes that are no
    /// longer in it (a removed or replaced worker). Busy ones close when they come back,
    /// since nothing routes there any more.
    /// Only the workers of that map's cluster (names beginning with `worker_prefix`).
    pub fn close_idle_on_nodes_except(&self, worker_prefix: &str, keep: &[Node]) {
        let primary = worker_prefix == "worker-";
        self.close_idle_where(|p| {
            p.key.node.is_worker()
                && p.key.node.name.starts_with(worker_prefix)
                && (!primary || is_primary_worker(&p.key.node))
                && !keep.contains(&p.key.node)
        });
    }

    fn close_idle_where(&self, pick: impl Fn(&Pool) -> bool) {
        for p in self.all().into_iter().filter(|p| pick(p)) {
            p.close_idle();
        }
    }
}

/// A worker of the primary cluster (`worker-<group>`); an entry's own cluster's workers
/// are `<entry>/worker-<group>`.
fn is_primary_worker(n: &Node) -> bool {
    n.name.starts_with("worker-") && !n.name.contains('/')
}
