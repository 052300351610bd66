//! What a pool counts for SHOW POOLS/STATS/SERVERS and /metrics: `PoolStats`, and what a
//! server connection is doing (`ServerState`, `ServerInfo`).
use super::*;

/// What a server connection is doing, as SHOW SERVERS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Lent to a client.
    Active,
    /// In the pool, ready.
    Idle,
    /// In the pool, idle longer than server_check_delay: server_check_query runs
    /// before it is lent again.
    Used,
}
impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
            ServerState::Used => "used",
        }
    }
}
/// Counters the admin console and metrics read; plain atomics, no lock.
pub struct PoolStats {
    pub active: Striped,
    pub waiting: AtomicU32,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub assignments: Striped,
    // PgBouncer's SHOW STATS counters (times in microseconds).
    pub xact_count: Striped,
    pub query_count: Striped,
    /// Bytes from clients to servers.
    pub bytes_received: Striped,
    /// Bytes from servers to clients.
    pub bytes_sent: Striped,
    pub xact_time_us: Striped,
    pub query_time_us: Striped,
    pub wait_time_us: Striped,
    pub client_parse_count: Striped,
    pub server_parse_count: Striped,
    pub bind_count: Striped,
    /// Where this pool records its node's latencies (per-thread HdrHistograms keyed by
    /// node and kind, merged for SHOW LATENCY and /metrics).
    pub query_latency: Latency,
    pub xact_latency: Latency,
    pub wait_latency: Latency,
}
impl PoolStats {
    /// Zeroed counters of a pool of the node named `node` (registers the node's latency
    /// histograms: not for the statement path).
    pub fn new(node: &str) -> PoolStats {
        let id = latency::node_id(node);
        PoolStats {
            active: Striped::new(),
            waiting: AtomicU32::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
            assignments: Striped::new(),
            xact_count: Striped::new(),
            query_count: Striped::new(),
            bytes_received: Striped::new(),
            bytes_sent: Striped::new(),
            xact_time_us: Striped::new(),
            query_time_us: Striped::new(),
            wait_time_us: Striped::new(),
            client_parse_count: Striped::new(),
            server_parse_count: Striped::new(),
            bind_count: Striped::new(),
            query_latency: Latency::new(id, LatencyKind::Query),
            xact_latency: Latency::new(id, LatencyKind::Transaction),
            wait_latency: Latency::new(id, LatencyKind::Wait),
        }
    }

    /// A query answered (ReadyForQuery) after `d`.
    pub fn add_query(&self, d: Duration) {
        self.query_latency.record(d);
        self.query_count.add(1);
        self.query_time_us.add(d.as_micros() as u64);
    }

    /// A client message forwarded to a server (bytes, Parse and Bind counts).
    pub fn client_message(&self, tag: u8, len: usize) {
        self.bytes_received.add(len as u64);
        match tag {
            b'P' => {
                self.client_parse_count.add(1);
            }
            b'B' => {
                self.bind_count.add(1);
            }
            _ => {}
        }
    }

    /// A transaction ended (ReadyForQuery idle) after `d`.
    pub fn add_xact(&self, d: Duration) {
        self.xact_latency.record(d);
        self.xact_count.add(1);
        self.xact_time_us.add(d.as_micros() as u64);
    }
}
/// A server connection as the admin console sees it (SHOW SERVERS).
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub id: u64,
    pub created: std::time::SystemTime,
    pub remote_pid: i32,
    pub local_addr: Option<std::net::SocketAddr>,
    pub tls: bool,
    /// Statements prepared on it (its PreparedCache's count, shared).
    pub prepared: Arc<AtomicU32>,
    /// When it last went back to the pool, if it is in the pool now (set by
    /// [`Pool::servers`]).
    pub last_used: Option<Instant>,
}
