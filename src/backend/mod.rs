//! A server connection: connect (TCP, optional TLS), authenticate, collect ParameterStatus
//! and BackendKeyData, run pgtenant's own queries (reset, check), cancel.
//!
//! It holds no client state: the frontend drives the bytes while a client holds it.
mod cancel;
mod connect;
mod prepared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::net::{ConnError, Connection, Frame, FrameError};
use crate::protocol::{build, decode, ErrorFields, ProtocolError};

pub use cancel::{send_cancel, CancelTarget};
pub use connect::{connect, socket_keepalive, ConnectParams};
pub use prepared::{server_statement_name, PreparedCache};

/// Settings pgtenant applied to a server connection (name → value).
pub type ParamMap = std::collections::BTreeMap<String, String>;

/// Errors on a server connection. Anything but `Server` leaves the connection unusable.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server framing: {0}")]
    Frame(#[from] FrameError),
    #[error("server protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("server authentication: {0}")]
    Auth(String),
    #[error("server TLS: {0}")]
    Tls(String),
    #[error("server refused: {} {}", .0.code, .0.message)]
    Server(ErrorFields),
    #[error("server connect timed out")]
    Timeout,
    #[error("server closed the connection")]
    Closed,
    #[error("pgtenant's own query left the server in transaction state {0}")]
    NotIdle(char),
    #[error("the answer to pgtenant's own query is over {0} bytes")]
    TooLarge(usize),
}

impl From<ConnError> for BackendError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Io(e) => BackendError::Io(e),
            ConnError::Frame(e) => BackendError::Frame(e),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// ParameterStatus names a server connection remembers.
pub const MAX_SERVER_PARAMS: usize = 256;

/// The most a query of pgtenant's own ([`ServerConn::query_rows`]: the shard map, the
/// catalog reads) may return, counted as [`ServerConn::query_rows_within`] does: about a
/// million shard rows, far above a real cluster's, and a bound on what a server that
/// answers without end can make pgtenant keep.
pub const MAX_INTERNAL_ROWS: usize = 256 * 1024 * 1024;
/// Notices kept by [`ServerConn::query_rows_noting`] at most, and the largest kept.
pub const MAX_KEPT_NOTICES: usize = 16;
pub const MAX_KEPT_NOTICE_BYTES: usize = 8192;

/// An authenticated server connection, idle or lent to a client.
pub struct ServerConn {
    pub conn: Connection,
    /// pgtenant's own id for this connection (admin console, logs).
    pub id: u64,
    /// Where to send a CancelRequest for whatever this connection runs.
    pub cancel: Arc<CancelTarget>,
    /// ParameterStatus values the server reported, in arrival order.
    pub params: Vec<(String, String)>,
    /// The role it logged in as (its session_authorization at connect).
    pub login_role: String,
    /// The client session that ran something of unknown effect on it last (a function,
    /// a DO block): settings under names pgtenant does not know may be set, so another
    /// client gets `RESET ALL` first. 0: none.
    pub dirty_by: u64,
    /// The client session whose SQL-level `PREPARE`d statements are on it (see
    /// `prepared.sql`); another client's attach drops them first.
    pub sql_owner: u64,
    /// The client session that parsed the unnamed statement on it last (a Bind of the
    /// unnamed statement by another session is refused).
    pub unnamed_owner: u64,
    /// Which of its owner's unnamed statements it is (`ViewTables::unnamed_gen` then):
    /// the owner may have ended it since where this server did not see it.
    pub unnamed_gen: u32,
    pub created: Instant,
    /// When it last went back to the pool.
    pub last_used: Instant,
    /// Another connection of its pool was ended by the server while this one sat idle
    /// (`Pool::close_idle_after_loss`): server_check_query runs before it is lent.
    pub suspect: bool,
    /// Transaction status from the last ReadyForQuery.
    pub tx_status: u8,
    /// Session settings pgtenant set on this connection (beyond its defaults).
    pub applied: Arc<ParamMap>,
    /// Statements prepared on this connection.
    pub prepared: PreparedCache,
    /// Dropped with the connection: lets its owner (the pool's admin registry) notice
    /// that it is gone, whichever way it was closed.
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// A NotificationResponse arrived while pgtenant's own query read its answer (the
    /// blue-green agent listens on its connection and reads the store again).
    pub notified: bool,
    /// The tenant this connection is counted for while lent (`pool::queue`): given back
    /// exactly once when it returns or closes.
    pub lent_to: Option<Arc<str>>,
}

impl ServerConn {
    pub(crate) fn new(
        conn: Connection,
        cancel: CancelTarget,
        params: Vec<(String, String)>,
    ) -> Self {
        let now = Instant::now();
        let login_role = params
            .iter()
            .find(|(k, _)| k == "session_authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        ServerConn {
            login_role,
            dirty_by: 0,
            sql_owner: 0,
            unnamed_owner: 0,
            unnamed_gen: 0,
            conn,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cancel: Arc::new(cancel),
            params,
            created: now,
            last_used: now,
            suspect: false,
            tx_status: b'I',
            applied: Arc::new(ParamMap::new()),
            prepared: PreparedCache::default(),
            guard: None,
            notified: false,
            lent_to: None,
        }
    }

    /// Update the remembered parameter set from a ParameterStatus body. At most
    /// [`MAX_SERVER_PARAMS`] names are kept (PostgreSQL reports about twenty): a server
    /// that reports ever new ones does not grow the connection without bound.
    pub fn note_parameter(&mut self, body: &[u8]) {
        if let Ok((k, v)) = decode::parameter_status(body) {
            match self.params.iter().position(|(n, _)| *n == k) {
                Some(i) => self.params[i].1 = v,
                None if self.params.len() < MAX_SERVER_PARAMS => self.params.push((k, v)),
                None => {}
            }
        }
    }

    /// Run a query of pgtenant's own (reset, check) and wait for ReadyForQuery. Fails if
    /// the server reports an error or the connection is not idle afterwards.
    pub async fn run_internal(&mut self, sql: &str) -> Result<(), BackendError> {
        self.query_rows(sql).await?;
        if self.tx_status != b'I' {
            return Err(BackendError::NotIdle(self.tx_status as char));
        }
        Ok(())
    }

    /// Run a query of pgtenant's own and return its rows as text (NULL = None). For
    /// metadata and settings reads, never on the per-statement path. At most
    /// [`MAX_INTERNAL_ROWS`] of rows (see [`Self::query_rows_within`]).
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.query_rows_within(sql, MAX_INTERNAL_ROWS).await
    }

    /// [`Self::query_rows`] whose rows may take at most `max` bytes (their values, and
    /// what pgtenant keeps per column, so that a million NULLs count too): beyond, the
    /// rest is read and dropped (the connection stays in step) and the query fails with
    /// [`BackendError::TooLarge`].
    pub async fn query_rows_within(
        &mut self,
        sql: &str,
        max: usize,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        // A simple Query destroys the server's unnamed statement.
        self.unnamed_owner = 0;
        self.conn.send(&build::query(sql)).await?;
        self.read_rows(max, None).await
    }

    /// [`Self::query_rows`] that also keeps the server's NoticeResponses (at most
    /// [`MAX_KEPT_NOTICES`], in order, each at most [`MAX_KEPT_NOTICE_BYTES`]; others are
    /// dropped): a check pgtenant runs for a client whose direct connection would have
    /// shown them.
    pub async fn query_rows_noting(
        &mut self,
        sql: &str,
        notices: &mut Vec<Frame>,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.unnamed_owner = 0;
        self.conn.send(&build::query(sql)).await?;
        self.read_rows(MAX_INTERNAL_ROWS, Some(notices)).await
    }

    /// [`Self::query_rows_within`] with parameters (`$1`, …, sent as text with the
    /// extended protocol, so a value is never read as SQL).
    pub async fn query_params_within(
        &mut self,
        sql: &str,
        params: &[&str],
        max: usize,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        // Its Parse is of the unnamed statement.
        self.unnamed_owner = 0;
        for f in build::extended_query(sql, params) {
            self.conn.queue(&f);
        }
        self.conn.flush().await?;
        self.read_rows(max, None).await
    }

    /// The rows up to ReadyForQuery (at most `max` bytes of values, see
    /// [`Self::query_rows_within`]); the first error of the server, if any. Notices go to
    /// `notices` when given (bounded, see [`Self::query_rows_noting`]).
    async fn read_rows(
        &mut self,
        max: usize,
        mut notices: Option<&mut Vec<Frame>>,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut rows = Vec::new();
        let mut failed = None;
        let mut bytes = 0usize;
        loop {
            let f = self.conn.read_frame().await?.ok_or(BackendError::Closed)?;
            match f.tag() {
                b'Z' => {
                    self.tx_status = decode::ready_status(f.body())?;
                    break;
                }
                b'D' if failed.is_none() => {
                    let row = data_row(f.body())?;
                    let kept = std::mem::size_of::<Vec<Option<String>>>()
                        + row.len() * std::mem::size_of::<Option<String>>();
                    bytes = bytes.saturating_add(f.body().len() + kept);
                    if bytes > max {
                        rows = Vec::new();
                        failed = Some(Err(BackendError::TooLarge(max)));
                    } else {
                        rows.push(row);
                    }
                }
                b'D' => {}
                b'E' if failed.is_none() => {
                    failed = Some(Ok(ErrorFields::parse(f.body())?));
                }
                b'S' => self.note_parameter(f.body()),
                b'A' => self.notified = true,
                b'N' => {
                    if let Some(n) = notices.as_deref_mut() {
                        if n.len() < MAX_KEPT_NOTICES && f.body().len() <= MAX_KEPT_NOTICE_BYTES {
                            n.push(f);
                        }
                    }
                }
                _ => {}
            }
        }
        match failed {
            Some(Ok(e)) => Err(BackendError::Server(e)),
            Some(Err(e)) => Err(e),
            None => Ok(rows),
        }
    }

    /// [`Self::query_rows`] for two-column results.
    pub async fn query_pairs(&mut self, sql: &str) -> Result<Vec<(String, String)>, BackendError> {
        let rows = self.query_rows(sql).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match &r[..] {
                [Some(a), Some(b)] => Some((a.clone(), b.clone())),
                _ => None,
            })
            .collect())
    }

    /// After server_reset_query (DISCARD ALL): nothing set, nothing prepared.
    pub fn forget_session_state(&mut self) {
        self.applied = Arc::new(ParamMap::new());
        self.prepared.clear();
        self.dirty_by = 0;
        self.sql_owner = 0;
    }

    /// Best-effort goodbye without waiting: a Terminate if the socket takes it now.
    pub fn terminate(self) {
        let f: Frame = build::terminate();
        if self.conn.pending_output() == 0 {
            let _ = self.conn.stream().try_write_raw(f.raw());
        }
    }
}

/// A DataRow's columns as text (NULL = None).
pub fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, crate::protocol::ProtocolError> {
    let mut r = crate::protocol::Reader::new(body, "DataRow");
    let n = r.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        cols.push(if len < 0 {
            None
        } else {
            Some(String::from_utf8_lossy(r.bytes(len as usize)?).into_owned())
        });
    }
    Ok(cols)
}
