//! What a server connection owes the client, message by message, in order.
//!
//! Every message sent to the server that gets an answer has an entry; entries pgtenant
//! answers itself (a Parse of a statement the server already has, a Close of a client's
//! statement) sit in the same queue so that answers reach the client in the order it sent
//! the messages. A server connection is clean (may go back to the pool) only when this
//! queue is empty and the last ReadyForQuery said idle.
use std::collections::{HashMap, VecDeque};

use crate::net::Frame;

/// A request whose answer is awaited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    /// Parse; `stmt`: the statement id it prepares on the server (named statements).
    Parse {
        stmt: Option<u64>,
    },
    Bind,
    Describe,
    Execute,
    /// Close; `evicted`: the statement id pgtenant closes to keep the LRU bounded.
    Close {
        evicted: Option<u64>,
    },
    Sync,
    /// A simple query. `prepare`: a client's `PREPARE name AS …` to remember on success.
    Query {
        prepare: Option<(String, std::sync::Arc<str>)>,
    },
    FunctionCall,
}

impl Req {
    /// Extended-protocol messages: after an error the server skips them until Sync.
    pub fn is_extended(&self) -> bool {
        matches!(
            self,
            Req::Parse { .. } | Req::Bind | Req::Describe | Req::Execute | Req::Close { .. }
        )
    }

    /// Does this server message end the answer to this request?
    pub fn ends_with(&self, tag: u8) -> bool {
        match self {
            Req::Parse { .. } => tag == b'1',
            Req::Bind => tag == b'2',
            Req::Describe => tag == b'T' || tag == b'n',
            Req::Execute => matches!(tag, b'C' | b'I' | b's'),
            Req::Close { .. } => tag == b'3',
            Req::Sync | Req::Query { .. } | Req::FunctionCall => tag == b'Z',
        }
    }
}

#[derive(Debug)]
pub enum Expect {
    /// The server answers and the client sees the answer.
    Forward(Req),
    /// The server answers a message pgtenant sent on its own; the client sees nothing
    /// (errors excepted when `show_errors`).
    Hidden { req: Req, show_errors: bool },
    /// No server message: the client gets these frames when their turn comes.
    Synthetic(Vec<Frame>),
    /// A simple query pgtenant answers itself (DEALLOCATE, DISCARD ALL): CommandComplete
    /// with this tag, then ReadyForQuery with the transaction status at that point.
    SyntheticCommand(&'static str),
    /// The client's Flush: answers pgtenant made itself before it may go out (the server
    /// flushes its own).
    Flush,
    /// The client ended COPY data here (CopyDone/CopyFail); Syncs before it that the
    /// server ignores in COPY IN mode are found by it.
    CopyEnd,
}

impl Expect {
    pub fn req(&self) -> Option<&Req> {
        match self {
            Expect::Forward(r) | Expect::Hidden { req: r, .. } => Some(r),
            _ => None,
        }
    }
}

/// A pipeline lives for one transaction; its queue's allocation is reused from a small
/// per-thread stash rather than allocated again for every transaction.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Read it freely; entries go in through [`Pipeline::push`] and out through
    /// [`Pipeline::pop_front`] (they keep `sync_points`).
    pub q: VecDeque<Expect>,
    /// Entries in `q` whose answer ends with a ReadyForQuery the client sees (its Sync,
    /// Query, FunctionCall): counted, not searched for, at each client message.
    sync_points: usize,
    /// COPY IN started (CopyInResponse seen) and the client has not ended it yet: its
    /// Syncs until CopyDone/CopyFail get no answer.
    pub copy_in: bool,
    /// An extended-protocol message went to the server and no ReadyForQuery has come
    /// after it: the server is inside that batch's implicit transaction, or skipping to
    /// a Sync after an error (a simple query sent then is ignored too), even once every
    /// answer is in. Such a connection is not idle: the next client's query would run in
    /// this transaction (and commit it) or be ignored. Cleared by a ReadyForQuery that
    /// leaves nothing owed ([`Pipeline::ready`]).
    pub unsynced: bool,
    /// A simple Query went to the server on this attachment (it destroys the server's
    /// unnamed statement): set by [`Pipeline::push`], cleared by a Parse of the unnamed
    /// statement (`forward`).
    pub query_sent: bool,
    /// pgtenant can no longer tell which of the server's answers belongs to which request
    /// (a ReadyForQuery where none was due; an error ending a COPY IN, after which Syncs
    /// the client sent during the COPY may or may not be answered). The client keeps
    /// getting what the server sends, but the connection is closed, never lent again.
    pub lost_track: bool,
    /// Syncs sent so far: the batch a message belongs to (an error makes the server skip
    /// what follows it up to the next Sync, and no further).
    syncs: u64,
    /// A message that may fail went to the server since the last Sync (an extended-
    /// protocol one other than Close, which never fails): what follows it up to the next
    /// Sync may be skipped.
    batch_may_fail: bool,
    /// Statement ids with a Parse or Close in the queue: the batch of the latest, how
    /// many, and whether the latest may be skipped (see [`Pipeline::unsure`]).
    statements: HashMap<u64, Op>,
    /// SQL-level PREPAREs in the queue (not answered yet): how many, and the bytes of
    /// their names and texts. The client's statement limits count them, or PREPAREs it
    /// pipelines would all pass the check before the first is recorded.
    pub prepares: (usize, usize),
}

/// The Parses and Closes of one statement id in the queue.
#[derive(Debug, Default, Clone, Copy)]
struct Op {
    /// The batch (Syncs sent before it) of the latest.
    batch: u64,
    count: u32,
    /// Something that may fail came before the latest in its batch.
    skippable: bool,
}

thread_local! {
    static SPARE_QUEUES: std::cell::RefCell<Vec<VecDeque<Expect>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Queues kept per thread for reuse, and the largest capacity worth keeping.
const SPARE_MAX: usize = 64;
const SPARE_CAPACITY_MAX: usize = 64;

impl Drop for Pipeline {
    fn drop(&mut self) {
        let cap = self.q.capacity();
        if cap == 0 || cap > SPARE_CAPACITY_MAX {
            return;
        }
        let mut q = std::mem::take(&mut self.q);
        q.clear();
        let _ = SPARE_QUEUES.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_MAX {
                s.push(q);
            }
        });
    }
}

fn is_sync_point(e: &Expect) -> bool {
    matches!(
        e,
        Expect::Forward(Req::Sync | Req::Query { .. } | Req::FunctionCall)
    )
}

impl Pipeline {
    /// An empty pipeline, its queue taken from this thread's stash when there is one.
    pub fn new() -> Pipeline {
        let q = SPARE_QUEUES
            .try_with(|s| s.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        Pipeline {
            q,
            sync_points: 0,
            copy_in: false,
            unsynced: false,
            query_sent: false,
            lost_track: false,
            syncs: 0,
            batch_may_fail: false,
            statements: HashMap::new(),
            prepares: (0, 0),
        }
    }

    /// Nothing owed (CopyEnd and Flush markers owe nothing).
    pub fn is_settled(&self) -> bool {
        !self.copy_in
            && self
                .q
                .iter()
                .all(|e| matches!(e, Expect::CopyEnd | Expect::Flush))
    }

    /// A ReadyForQuery was read and its entry popped: with nothing owed after it, the
    /// server is out of any extended batch (it sends one only at a Sync, or after a
    /// simple query it ran, which ends the batch's transaction).
    pub fn ready(&mut self) {
        if self.is_settled() {
            self.unsynced = false;
        }
    }

    pub fn push(&mut self, e: Expect) {
        self.sync_points += usize::from(is_sync_point(&e));
        if let Some(n) = prepared_bytes(&e) {
            self.prepares.0 += 1;
            self.prepares.1 += n;
        }
        if let Some(req) = e.req() {
            if req.is_extended() {
                self.unsynced = true;
            }
            if matches!(req, Req::Query { .. }) {
                self.query_sent = true;
            }
            match req {
                Req::Parse { stmt: Some(id) } | Req::Close { evicted: Some(id) } => {
                    let op = self.statements.entry(*id).or_default();
                    op.batch = self.syncs;
                    op.count += 1;
                    op.skippable = self.batch_may_fail;
                }
                Req::Sync => {
                    self.syncs += 1;
                    self.batch_may_fail = false;
                }
                _ => {}
            }
            // What may fail makes the rest of its batch skippable (a Close never fails).
            if req.is_extended() && !matches!(req, Req::Close { .. }) {
                self.batch_may_fail = true;
            }
        }
        self.q.push_back(e);
    }

    pub fn pop_front(&mut self) -> Option<Expect> {
        let e = self.q.pop_front();
        if e.as_ref().is_some_and(is_sync_point) {
            self.sync_points -= 1;
        }
        if let Some(n) = e.as_ref().and_then(prepared_bytes) {
            self.prepares.0 -= 1;
            self.prepares.1 -= n;
        }
        if let Some(Req::Parse { stmt: Some(id) } | Req::Close { evicted: Some(id) }) =
            e.as_ref().and_then(Expect::req)
        {
            if let Some(op) = self.statements.get_mut(id) {
                op.count -= 1;
                if op.count == 0 {
                    self.statements.remove(id);
                }
            }
        }
        e
    }

    /// The query at the head failed: a PREPARE there records nothing.
    pub fn front_query_failed(&mut self) {
        let n = self.q.front().and_then(prepared_bytes);
        if let Some(
            Expect::Forward(Req::Query { prepare })
            | Expect::Hidden {
                req: Req::Query { prepare },
                ..
            },
        ) = self.q.front_mut()
        {
            *prepare = None;
        }
        if let Some(n) = n {
            self.prepares.0 -= 1;
            self.prepares.1 -= n;
        }
    }

    /// Is a Parse or Close of statement `id` in the queue?
    pub fn has_statement_op(&self, id: u64) -> bool {
        !self.statements.is_empty() && self.statements.contains_key(&id)
    }

    /// Is a Parse or Close of statement `id` still unanswered in an earlier batch than the
    /// one being sent, behind something there that may fail? An error before it makes
    /// the server skip it, so whether the server will have the statement when this batch
    /// runs is not known yet: a message of this batch that needs it prepares it again
    /// (Close, then Parse, first in the batch: a pipelining client does not get a Parse
    /// in each batch). One first in its batch (as pgtenant's Parse before a batch's first
    /// Bind) runs whatever came before.
    pub fn unsure(&self, id: u64) -> bool {
        !self.statements.is_empty()
            && self
                .statements
                .get(&id)
                .is_some_and(|op| op.skippable && op.batch < self.syncs)
    }

    /// Does the server owe a ReadyForQuery the client will see (for its Sync, Query or
    /// FunctionCall)?
    pub fn owes_sync_point(&self) -> bool {
        debug_assert_eq!(
            self.sync_points,
            self.q.iter().filter(|e| is_sync_point(e)).count()
        );
        self.sync_points > 0
    }

    /// The server started COPY IN for the request at the head: Syncs the client already
    /// sent after it (before its CopyDone/CopyFail) will get no ReadyForQuery.
    pub fn copy_in_started(&mut self) {
        let mut i = 1;
        let mut ended = false;
        while i < self.q.len() {
            match &self.q[i] {
                Expect::Forward(Req::Sync) => {
                    self.q.remove(i);
                    self.sync_points -= 1;
                }
                Expect::CopyEnd => {
                    self.q.remove(i);
                    ended = true;
                    break;
                }
                _ => i += 1,
            }
        }
        self.copy_in = !ended;
    }

    /// The client sent CopyDone or CopyFail.
    pub fn client_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.q.push_back(Expect::CopyEnd);
        }
    }

    /// Drop CopyEnd markers at the head (they owe nothing).
    pub fn skip_markers(&mut self) {
        while matches!(self.q.front(), Some(Expect::CopyEnd)) {
            self.pop_front();
        }
    }

    /// After an error on an extended-protocol request: the server skips everything up to
    /// the next Sync. Returns the entries dropped (so prepared-statement bookkeeping can
    /// be undone).
    pub fn drop_until_sync(&mut self) -> Vec<Expect> {
        let mut dropped = Vec::new();
        while let Some(e) = self.q.front() {
            let is_sync = matches!(e.req(), Some(Req::Sync));
            if is_sync {
                break;
            }
            if let Some(e) = self.pop_front() {
                dropped.push(e);
            }
        }
        dropped
    }
}

/// The bytes of the name and text an entry's SQL-level PREPARE records, if it is one.
fn prepared_bytes(e: &Expect) -> Option<usize> {
    match e {
        Expect::Forward(Req::Query {
            prepare: Some((name, text)),
        })
        | Expect::Hidden {
            req: Req::Query {
                prepare: Some((name, text)),
            },
            ..
        } => Some(name.len() + text.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_op_is_unsure_for_later_batches_only() {
        let mut p = Pipeline::default();
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Hidden {
            req: Req::Parse { stmt: Some(7) },
            show_errors: true,
        });
        assert!(
            !p.unsure(7),
            "same batch: skipped together with what needs it"
        );
        assert!(p.has_statement_op(7));
        p.push(Expect::Forward(Req::Bind));
        p.push(Expect::Forward(Req::Sync));
        assert!(
            p.unsure(7),
            "a later batch runs even if that Parse is skipped"
        );
        assert!(!p.unsure(8));
        // A second op of the same id in this batch: still in flight after the first pops.
        p.push(Expect::Hidden {
            req: Req::Close { evicted: Some(7) },
            show_errors: false,
        });
        assert!(!p.unsure(7), "the latest op is in this batch");
        p.pop_front();
        p.pop_front();
        assert!(p.has_statement_op(7));
        assert_eq!(p.drop_until_sync().len(), 1, "the Bind");
        p.pop_front(); // the Sync
        p.pop_front(); // the Close
        assert!(!p.has_statement_op(7) && !p.unsure(7));
        assert!(p.statements.is_empty());
    }

    /// A Parse first in its batch (only a Close before it, which never fails) is never
    /// skipped: later batches rely on it, and a pipelining client does not get a Parse in
    /// each batch.
    #[test]
    fn a_statement_op_first_in_its_batch_is_sure() {
        let mut p = Pipeline::default();
        for _ in 0..3 {
            p.push(Expect::Hidden {
                req: Req::Close { evicted: Some(9) },
                show_errors: false,
            });
            p.push(Expect::Hidden {
                req: Req::Parse { stmt: Some(8) },
                show_errors: true,
            });
            p.push(Expect::Forward(Req::Bind));
            p.push(Expect::Forward(Req::Execute));
            p.push(Expect::Forward(Req::Sync));
            assert!(!p.unsure(8) && !p.unsure(9));
        }
        assert!(p.has_statement_op(8));
    }

    #[test]
    fn copy_in_voids_syncs_sent_before_the_data() {
        let mut p = Pipeline::default();
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        p.copy_in_started();
        assert!(p.copy_in);
        assert_eq!(p.q.len(), 1);
        p.client_copy_end();
        p.push(Expect::Forward(Req::Sync));
        assert_eq!(p.q.len(), 2);
        assert!(!p.is_settled());

        let mut p = Pipeline::default();
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        p.client_copy_end();
        p.push(Expect::Forward(Req::Sync));
        p.copy_in_started();
        assert!(!p.copy_in);
        assert_eq!(p.q.len(), 2);
    }

    #[test]
    fn errors_skip_to_sync() {
        let mut p = Pipeline::default();
        p.push(Expect::Forward(Req::Bind));
        p.push(Expect::Synthetic(vec![]));
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        p.push(Expect::Forward(Req::Bind));
        assert_eq!(p.drop_until_sync().len(), 3);
        assert_eq!(p.q.len(), 2);
        assert!(Req::Describe.ends_with(b'n') && !Req::Query { prepare: None }.ends_with(b'C'));
    }
}
