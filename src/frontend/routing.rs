//! The route decision for the first message of a transaction: plan the statement (cached),
//! take the tenant value from the literal or the Bind parameter, hash it as PostgreSQL
//! does, and find the node owning that hash in the current shard map.
//!
//! Reads that no tenant pins (`NoKey`, `MultiTenant`, `ReferenceRead`) go to the
//! coordinator, unless:
//! - `multi_tenant_reads = any`, the plan says the statement certainly reads only
//!   (`Plan::ReadOnly`, or a read-only tenant plan whose values disagree or are missing),
//!   and the caller says it is a transaction of its own ([`Reads::spread`]): then
//!   [`Spread`] picks the next of the coordinator and the workers with Citus metadata
//!   that are not marked down, round-robin (reason `ReadSpread`); with no such worker in
//!   the map it stays on the coordinator under its own reason;
//! - otherwise, a reference read with `reference_reads = local_worker` goes to the first
//!   worker that is up (reason `ReferenceRead`), under the same two conditions: it
//!   certainly reads only, and it is a transaction of its own ([`Reads::local_reference`]).
//!   A BEGIN block never leaves the coordinator this way.
//!
//! A down worker is never chosen ([`NodeHealth::is_down`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::citus::hash::{canonical_text, hash_binary, hash_value};
use crate::citus::{DistType, ShardMap};
use crate::metrics::striped::Striped;
use crate::pool::Node;
use crate::protocol::extended::Bind;
use crate::router::array::{binary_common_element, text_common_element};
use crate::router::{KeySource, Plan, Planner, Reason, TenantValue, TxControl};

/// Where the first statement of a transaction sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A node chosen for the reason: the worker (or coordinator) owning the tenant's shard
    /// (`TenantKey`, `Hint`), a worker for `reference_reads = local_worker`
    /// (`ReferenceRead`), a node of the read spread (`ReadSpread`).
    Node(Node, RouteReason),
    Coordinator(RouteReason),
    /// Touches no table: the coordinator serves it, but it says nothing about tenants.
    Anywhere,
    /// Transaction control the session loop may hold until a statement decides the node.
    Hold(TxControl),
}

/// Why a statement went where it went (the admin console's SHOW ROUTES rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    TenantKey,
    Hint,
    NoKey,
    ReferenceRead,
    MultiTenant,
    /// A read no tenant pins, spread over the nodes (`multi_tenant_reads = any`).
    ReadSpread,
    Ddl,
    Utility,
    SequenceDefault,
    ReferenceWrite,
    Copy,
    ParseFailure,
    TransactionControl,
    NotDistributed,
    WorkerDown,
    NoShard,
    Anywhere,
    NoRouting,
    /// The statement's text is not UTF-8 (the client's encoding is another one): the
    /// router does not read it.
    Encoding,
}

impl RouteReason {
    pub const ALL: [RouteReason; 19] = [
        RouteReason::TenantKey,
        RouteReason::Hint,
        RouteReason::NoKey,
        RouteReason::ReferenceRead,
        RouteReason::MultiTenant,
        RouteReason::ReadSpread,
        RouteReason::Ddl,
        RouteReason::Utility,
        RouteReason::SequenceDefault,
        RouteReason::ReferenceWrite,
        RouteReason::Copy,
        RouteReason::ParseFailure,
        RouteReason::TransactionControl,
        RouteReason::NotDistributed,
        RouteReason::WorkerDown,
        RouteReason::NoShard,
        RouteReason::Anywhere,
        RouteReason::NoRouting,
        RouteReason::Encoding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::TenantKey => "tenant_key",
            RouteReason::Hint => "hint",
            RouteReason::NoKey => "no_key",
            RouteReason::ReferenceRead => "reference_read",
            RouteReason::MultiTenant => "multi_tenant",
            RouteReason::ReadSpread => "read_spread",
            RouteReason::Ddl => "ddl",
            RouteReason::Utility => "utility",
            RouteReason::SequenceDefault => "sequence_default",
            RouteReason::ReferenceWrite => "reference_write",
            RouteReason::Copy => "copy",
            RouteReason::ParseFailure => "parse_failure",
            RouteReason::TransactionControl => "transaction_control",
            RouteReason::NotDistributed => "not_distributed",
            RouteReason::WorkerDown => "worker_down",
            RouteReason::NoShard => "no_shard",
            RouteReason::Anywhere => "anywhere",
            RouteReason::NoRouting => "no_routing",
            RouteReason::Encoding => "encoding",
        }
    }

    fn from_plan(r: &Reason) -> RouteReason {
        match r {
            Reason::TenantKey => RouteReason::TenantKey,
            Reason::Hint => RouteReason::Hint,
            Reason::NoKey => RouteReason::NoKey,
            Reason::ReferenceRead => RouteReason::ReferenceRead,
            Reason::MultiTenant => RouteReason::MultiTenant,
            Reason::Ddl => RouteReason::Ddl,
            Reason::Utility => RouteReason::Utility,
            Reason::SequenceDefault => RouteReason::SequenceDefault,
            Reason::ReferenceWrite => RouteReason::ReferenceWrite,
            Reason::Copy => RouteReason::Copy,
            Reason::ParseFailure => RouteReason::ParseFailure,
            Reason::TransactionControl => RouteReason::TransactionControl,
            Reason::NotDistributed => RouteReason::NotDistributed,
        }
    }
}

/// Counters of routed transactions: to the coordinator or a worker, by reason. Striped
/// per thread: they sit on the per-transaction path.
#[derive(Default)]
pub struct RouteStats {
    /// [reason][0 = coordinator, 1 = worker].
    by_reason: [[Striped; 2]; RouteReason::ALL.len()],
    /// Statements (Query and Execute messages) by the reason their transaction was
    /// routed: every statement of a transaction goes where its first one went.
    statements: [[Striped; 2]; RouteReason::ALL.len()],
}

impl RouteStats {
    pub fn count(&self, reason: RouteReason, to_worker: bool) {
        if let Some(c) = self.by_reason.get(reason as usize) {
            c[usize::from(to_worker)].add(1);
        }
    }

    /// Transactions routed to workers (`true`) or the coordinator, for every reason.
    pub fn total_to(&self, to_worker: bool) -> u64 {
        RouteReason::ALL
            .iter()
            .map(|&r| self.get_to(r, to_worker))
            .sum()
    }

    /// One statement of a transaction routed for `reason`.
    #[inline]
    pub fn count_statement(&self, reason: RouteReason, to_worker: bool) {
        if let Some(c) = self.statements.get(reason as usize) {
            c[usize::from(to_worker)].add(1);
        }
    }

    /// Statements for `reason` sent to a worker (`to_worker`) or to the coordinator.
    pub fn statements_to(&self, reason: RouteReason, to_worker: bool) -> u64 {
        self.statements
            .get(reason as usize)
            .map_or(0, |c| c[usize::from(to_worker)].get())
    }

    pub fn get(&self, reason: RouteReason) -> u64 {
        self.get_to(reason, false) + self.get_to(reason, true)
    }

    /// Transactions for `reason` sent to a worker (`to_worker`) or to the coordinator.
    pub fn get_to(&self, reason: RouteReason, to_worker: bool) -> u64 {
        self.by_reason
            .get(reason as usize)
            .map_or(0, |c| c[usize::from(to_worker)].get())
    }
}

pub use super::node_health::NodeHealth;

/// The owner of `hash` in `colocation`; `reason` is `TenantKey` or `Hint`.
fn locate(
    map: &ShardMap,
    health: &NodeHealth,
    colocation: u32,
    hash: i32,
    reason: RouteReason,
) -> Decision {
    match map.locate(colocation, hash) {
        Some((_, node)) if health.is_down(node) => Decision::Coordinator(RouteReason::WorkerDown),
        Some((_, node)) => Decision::Node(node.clone(), reason),
        None => Decision::Coordinator(RouteReason::NoShard),
    }
}

fn from_plan(plan: &Plan) -> Option<Decision> {
    match plan {
        Plan::Coordinator(r) | Plan::ReadOnly(r) => {
            Some(Decision::Coordinator(RouteReason::from_plan(r)))
        }
        Plan::HintTenant { .. } => Some(Decision::Coordinator(RouteReason::NoKey)),
        Plan::Anywhere => Some(Decision::Anywhere),
        Plan::Transaction(t) => Some(Decision::Hold(*t)),
        Plan::Tenant { .. } => None,
    }
}

/// How reads that no tenant pins are placed: the settings, and what the session knows.
#[derive(Clone, Copy, Default)]
pub struct Reads<'a> {
    /// `reference_reads = local_worker`, and the statement is a transaction of its own:
    /// read-only reference reads go to a worker's copy.
    pub local_reference: bool,
    /// `multi_tenant_reads = any`, and the statement is a transaction of its own (the
    /// caller's rule, `Session::own_transaction`): read-only ones are spread by this.
    pub spread: Option<&'a Spread>,
}

/// The read spread (`multi_tenant_reads = any`): a turn counter shared by all sessions.
#[derive(Default)]
pub struct Spread {
    next: AtomicUsize,
}

impl Spread {
    /// The node for the next spread read: round-robin over the coordinator and the
    /// workers with Citus metadata that are not marked down. None when the map has no
    /// such worker (the read keeps its reason on the coordinator).
    pub fn pick(&self, map: &ShardMap, health: &NodeHealth) -> Option<Decision> {
        let workers = &map.metadata_workers;
        if workers.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let node = if health.none_marked() {
            match turn % (workers.len() + 1) {
                0 => None,
                k => workers.get(k - 1),
            }
        } else {
            let up = |n: &&Node| !health.is_down(n);
            match turn % (workers.iter().filter(up).count() + 1) {
                0 => None,
                k => workers.iter().filter(up).nth(k - 1),
            }
        };
        Some(match node {
            Some(n) => Decision::Node(n.clone(), RouteReason::ReadSpread),
            None => Decision::Coordinator(RouteReason::ReadSpread),
        })
    }
}

/// `reference_reads = local_worker`: a worker that is up (every worker has a copy).
fn reference_worker(map: &ShardMap, health: &NodeHealth) -> Option<Decision> {
    map.nodes
        .iter()
        .find(|(group, n)| *group != 0 && !health.is_down(n))
        .map(|(_, n)| Decision::Node(n.clone(), RouteReason::ReferenceRead))
}

/// Place a coordinator-bound decision that may be a read no tenant pins (see the module
/// rules). `read_only`: the plan says it reads only.
fn place_read(
    d: Decision,
    read_only: bool,
    map: &ShardMap,
    health: &NodeHealth,
    reads: Reads<'_>,
) -> Decision {
    match (&d, reads.spread) {
        (
            Decision::Coordinator(
                RouteReason::NoKey | RouteReason::MultiTenant | RouteReason::ReferenceRead,
            ),
            Some(spread),
        ) if read_only => {
            if let Some(spread) = spread.pick(map, health) {
                return spread;
            }
        }
        _ => {}
    }
    match d {
        Decision::Coordinator(RouteReason::ReferenceRead) if reads.local_reference && read_only => {
            reference_worker(map, health).unwrap_or(d)
        }
        d => d,
    }
}

/// The tenant a statement was routed by: its colocation group and value text.
pub type TenantOf = Option<(u32, String)>;

/// The route reason of a tenant plan's reason.
fn tenant_reason(r: &Reason) -> RouteReason {
    match r {
        Reason::Hint => RouteReason::Hint,
        _ => RouteReason::TenantKey,
    }
}

/// A simple query, with the tenant (colocation group, value text) when a key decided.
pub fn decide_simple_keyed(
    planner: &Planner,
    map: &ShardMap,
    health: &NodeHealth,
    sql: &str,
    reads: Reads<'_>,
) -> (Decision, TenantOf) {
    let routed = planner.plan_simple(sql, &map.tables, map.version);
    if let Some(d) = from_plan(&routed.plan) {
        let read_only = matches!(*routed.plan, Plan::ReadOnly(_));
        return (place_read(d, read_only, map, health, reads), None);
    }
    let Plan::Tenant {
        colocation,
        dist_type,
        reason,
        ..
    } = &*routed.plan
    else {
        return (Decision::Coordinator(RouteReason::NoKey), None);
    };
    match routed
        .key
        .as_deref()
        .map(|k| (hash_value(*dist_type, k), k))
    {
        Some((Ok(h), k)) => (
            locate(map, health, *colocation, h, tenant_reason(reason)),
            Some((*colocation, canonical_text(*dist_type, k).into_owned())),
        ),
        _ => (Decision::Coordinator(RouteReason::NoKey), None),
    }
}

/// A tenant value as text for the console and the tenant sketches, as PostgreSQL prints it
/// (`canonical_text`): text parameters and literals canonicalized, binary integers and
/// uuids decoded, other binary values in hex.
fn value_text(dt: DistType, k: &KeySource, bind: &Bind<'_>) -> Option<String> {
    let canonical = |s: &str| canonical_text(dt, s).into_owned();
    match k {
        KeySource::Literal(s) => Some(canonical(s)),
        KeySource::ParamElements(i) => match bind.param(*i) {
            Ok(Some((0, Some(v)))) => {
                text_common_element(std::str::from_utf8(v).ok()?).map(|s| canonical(&s))
            }
            Ok(Some((1, Some(v)))) => binary_value_text(dt, binary_common_element(v)?),
            _ => None,
        },
        KeySource::Param(i) => match bind.param(*i) {
            Ok(Some((0, Some(v)))) => std::str::from_utf8(v).ok().map(canonical),
            Ok(Some((1, Some(v)))) => binary_value_text(dt, v),
            _ => None,
        },
    }
}

/// A binary parameter's value as text: integers and uuids as PostgreSQL prints them, text
/// as is, others in hex.
fn binary_value_text(dt: DistType, v: &[u8]) -> Option<String> {
    Some(match (dt, v.len()) {
        (DistType::Int2, 2) => i16::from_be_bytes([v[0], v[1]]).to_string(),
        (DistType::Int4, 4) => i32::from_be_bytes(v.try_into().ok()?).to_string(),
        (DistType::Int8, 8) => i64::from_be_bytes(v.try_into().ok()?).to_string(),
        (DistType::Uuid, 16) => crate::citus::hash::uuid_text(v.try_into().ok()?),
        (DistType::Bpchar, _) => std::str::from_utf8(v)
            .ok()?
            .trim_end_matches(' ')
            .to_owned(),
        (DistType::Text | DistType::Varchar, _) => std::str::from_utf8(v).ok()?.to_owned(),
        _ => v.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// An extended-protocol statement planned as `plan` (see [`Planner::plan_named`]) bound
/// with `bind`, with the tenant (colocation group, value text) when a key decided.
pub fn decide_bind_keyed(
    plan: Arc<Plan>,
    map: &ShardMap,
    health: &NodeHealth,
    bind: &Bind<'_>,
    reads: Reads<'_>,
) -> (Decision, TenantOf) {
    if let Some(d) = from_plan(&plan) {
        let read_only = matches!(*plan, Plan::ReadOnly(_));
        return (place_read(d, read_only, map, health, reads), None);
    }
    let Plan::Tenant {
        colocation,
        dist_type,
        reason,
        read_only,
        ..
    } = &*plan
    else {
        return (Decision::Coordinator(RouteReason::NoKey), None);
    };
    let dt: DistType = *dist_type;
    // Values that must agree are compared by hash: equal values hash equally, and two
    // values with one hash live in one shard anyway.
    let mut first: Option<KeySource> = None;
    // The first parameter is read straight from the message; a plan that checks more
    // (a bulk INSERT's thousands) decodes them all once, not once per key.
    let mut all: Option<Vec<crate::protocol::extended::BindParam>> = None;
    let mut param = |i: usize, looked: bool| -> Option<crate::protocol::extended::BindParam> {
        if !looked {
            return bind.param(i).ok().flatten();
        }
        all.get_or_insert_with(|| bind.all_params().unwrap_or_default())
            .get(i)
            .copied()
    };
    let value = plan.tenant_value(|k| {
        let looked = first.is_some();
        if first.is_none() {
            first = Some(k.clone());
        }
        match k {
            KeySource::Literal(s) => hash_value(dt, s).ok(),
            KeySource::Param(i) => match param(*i, looked) {
                Some((0, Some(v))) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| hash_value(dt, s).ok()),
                Some((1, Some(v))) => hash_binary(dt, v).ok(),
                _ => None,
            },
            KeySource::ParamElements(i) => match param(*i, looked) {
                Some((0, Some(v))) => std::str::from_utf8(v)
                    .ok()
                    .and_then(text_common_element)
                    .and_then(|s| hash_value(dt, &s).ok()),
                Some((1, Some(v))) => {
                    binary_common_element(v).and_then(|e| hash_binary(dt, e).ok())
                }
                _ => None,
            },
        }
    });
    let unpinned = |r| place_read(Decision::Coordinator(r), *read_only, map, health, reads);
    match value {
        TenantValue::Value(h) => (
            locate(map, health, *colocation, h, tenant_reason(reason)),
            first
                .and_then(|k| value_text(dt, &k, bind))
                .map(|v| (*colocation, v)),
        ),
        TenantValue::Conflict => (unpinned(RouteReason::MultiTenant), None),
        TenantValue::Unknown | TenantValue::NotTenant => (unpinned(RouteReason::NoKey), None),
    }
}

/// The command tag PostgreSQL answers a transaction-control statement with.
pub fn tx_tag(t: TxControl, sql: &str) -> &'static str {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match t {
        TxControl::Begin if first.eq_ignore_ascii_case("start") => "START TRANSACTION",
        TxControl::Begin => "BEGIN",
        TxControl::Commit => "COMMIT",
        TxControl::Rollback | TxControl::RollbackTo => "ROLLBACK",
        TxControl::Savepoint => "SAVEPOINT",
        TxControl::Release => "RELEASE",
        TxControl::SetLocal if first.eq_ignore_ascii_case("set") => "SET",
        TxControl::SetLocal => "SET",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::citus::catalog::Tables;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 1,
        }
    }

    fn map(workers: &[&str]) -> ShardMap {
        ShardMap {
            version: 1,
            loaded_at: Instant::now(),
            fingerprint: String::new(),
            tables: Tables::new(),
            groups: Default::default(),
            nodes: Vec::new(),
            metadata_workers: workers.iter().map(|w| node(w)).collect(),
        }
    }

    fn names(s: &Spread, m: &ShardMap, h: &NodeHealth, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| match s.pick(m, h) {
                Some(Decision::Node(n, RouteReason::ReadSpread)) => n.name.to_string(),
                Some(Decision::Coordinator(RouteReason::ReadSpread)) => "c".into(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_spread_takes_turns_and_skips_down_workers() {
        let (s, h) = (Spread::default(), NodeHealth::default());
        let m = map(&["w1", "w2"]);
        assert_eq!(names(&s, &m, &h, 6), ["c", "w1", "w2", "c", "w1", "w2"]);
        h.mark_down(&node("w1"), Duration::from_secs(60));
        let got = names(&s, &m, &h, 6);
        assert!(!got.contains(&"w1".to_string()), "{got:?}");
        assert_eq!(got.iter().filter(|n| *n == "c").count(), 3, "{got:?}");
        h.mark_down(&node("w2"), Duration::from_secs(60));
        assert_eq!(names(&s, &m, &h, 3), ["c", "c", "c"]);
        h.mark_up(&node("w1"));
        h.mark_up(&node("w2"));
        assert_eq!(names(&s, &m, &h, 3).len(), 3);
        // No worker with metadata: nothing to spread over.
        assert!(s.pick(&map(&[]), &h).is_none());
    }

    #[test]
    fn only_read_only_coordinator_reads_are_spread() {
        let (s, h) = (Spread::default(), NodeHealth::default());
        let m = map(&["w1"]);
        let reads = Reads {
            local_reference: false,
            spread: Some(&s),
        };
        for r in [
            RouteReason::NoKey,
            RouteReason::MultiTenant,
            RouteReason::ReferenceRead,
        ] {
            let placed: Vec<Decision> = (0..2)
                .map(|_| place_read(Decision::Coordinator(r), true, &m, &h, reads))
                .collect();
            assert!(
                placed
                    .iter()
                    .any(|d| matches!(d, Decision::Node(_, RouteReason::ReadSpread))),
                "{r:?}: {placed:?}"
            );
            // Not known to read only: stays.
            assert_eq!(
                place_read(Decision::Coordinator(r), false, &m, &h, reads),
                Decision::Coordinator(r)
            );
            // Not a transaction of its own (no spread given): stays.
            assert_eq!(
                place_read(Decision::Coordinator(r), true, &m, &h, Reads::default()),
                Decision::Coordinator(r)
            );
        }
        for r in [
            RouteReason::SequenceDefault,
            RouteReason::ReferenceWrite,
            RouteReason::Utility,
            RouteReason::NotDistributed,
        ] {
            assert_eq!(
                place_read(Decision::Coordinator(r), true, &m, &h, reads),
                Decision::Coordinator(r)
            );
        }
        // reference_reads = local_worker still applies to what is not spread, when it
        // certainly reads only (`local_reference` is given only for a transaction of its
        // own).
        let local = Reads {
            local_reference: true,
            spread: None,
        };
        let mut m2 = map(&[]);
        m2.nodes = vec![(0, node("c")), (1, node("w1"))];
        let reference = Decision::Coordinator(RouteReason::ReferenceRead);
        assert_eq!(
            place_read(reference.clone(), true, &m2, &h, local),
            Decision::Node(node("w1"), RouteReason::ReferenceRead)
        );
        assert_eq!(
            place_read(reference.clone(), false, &m2, &h, local),
            reference
        );
    }
}
