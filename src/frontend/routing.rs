//! The route decision for the first message of a transaction: plan the statement (cached),
//! take the tenant value from the literal or the Bind parameter, hash it as PostgreSQL
//! does, and find the node owning that hash in the current shard map.

use crate::citus::hash::{hash_binary, hash_value};
use crate::citus::{DistType, ShardMap};
use crate::metrics::striped::Striped;
use crate::pool::Node;
use crate::protocol::extended::Bind;
use crate::router::{KeySource, Plan, Planner, Reason, TenantValue, TxControl};

/// Where the first statement of a transaction sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The worker (or coordinator) owning the tenant's shard.
    Node(Node),
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
    pub const ALL: [RouteReason; 18] = [
        RouteReason::TenantKey,
        RouteReason::Hint,
        RouteReason::NoKey,
        RouteReason::ReferenceRead,
        RouteReason::MultiTenant,
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

fn locate(map: &ShardMap, health: &NodeHealth, colocation: u32, hash: i32) -> Decision {
    match map.locate(colocation, hash) {
        Some((_, node)) if health.is_down(node) => Decision::Coordinator(RouteReason::WorkerDown),
        Some((_, node)) => Decision::Node(node.clone()),
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

/// `reference_reads = local_worker`: a worker that is up (every worker has a copy).
fn reference_worker(map: &ShardMap, health: &NodeHealth) -> Option<Decision> {
    map.nodes
        .iter()
        .find(|(group, n)| *group != 0 && !health.is_down(n))
        .map(|(_, n)| Decision::Node(n.clone()))
}

/// Apply `reference_reads` to a plan's decision.
fn with_reference_reads(d: Decision, map: &ShardMap, health: &NodeHealth, local: bool) -> Decision {
    match d {
        Decision::Coordinator(RouteReason::ReferenceRead) if local => {
            reference_worker(map, health).unwrap_or(d)
        }
        d => d,
    }
}

/// The tenant a statement was routed by: its colocation group and value text.
pub type TenantOf = Option<(u32, String)>;

/// A simple query (`local_reference_reads`: `reference_reads = local_worker`), with the tenant (colocation group, value text) when a key decided.
pub fn decide_simple_keyed(
    planner: &Planner,
    map: &ShardMap,
    health: &NodeHealth,
    sql: &str,
    local_reference_reads: bool,
) -> (Decision, TenantOf) {
    let routed = planner.plan_simple(sql, &map.tables, map.version);
    if let Some(d) = from_plan(&routed.plan) {
        return (
            with_reference_reads(d, map, health, local_reference_reads),
            None,
        );
    }
    let Plan::Tenant {
        colocation,
        dist_type,
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
            locate(map, health, *colocation, h),
            Some((*colocation, k.to_owned())),
        ),
        _ => (Decision::Coordinator(RouteReason::NoKey), None),
    }
}

/// A tenant value as text for the console: text parameters as sent, binary integers
/// decoded, other binary values in hex.
fn value_text(dt: DistType, k: &KeySource, bind: &Bind<'_>) -> Option<String> {
    match k {
        KeySource::Literal(s) => Some(s.clone()),
        KeySource::Param(i) => match bind.param(*i) {
            Ok(Some((0, Some(v)))) => std::str::from_utf8(v).ok().map(str::to_owned),
            Ok(Some((1, Some(v)))) => Some(match (dt, v.len()) {
                (DistType::Int2, 2) => i16::from_be_bytes([v[0], v[1]]).to_string(),
                (DistType::Int4, 4) => i32::from_be_bytes(v.try_into().ok()?).to_string(),
                (DistType::Int8, 8) => i64::from_be_bytes(v.try_into().ok()?).to_string(),
                (DistType::Text | DistType::Varchar | DistType::Bpchar, _) => {
                    std::str::from_utf8(v).ok()?.to_owned()
                }
                _ => v.iter().map(|b| format!("{b:02x}")).collect(),
            }),
            _ => None,
        },
    }
}

/// An extended-protocol statement `sql` bound with `bind`, with the tenant (colocation group, value text) when a key decided.
pub fn decide_bind_keyed(
    planner: &Planner,
    map: &ShardMap,
    health: &NodeHealth,
    sql: &str,
    bind: &Bind<'_>,
    local_reference_reads: bool,
) -> (Decision, TenantOf) {
    let plan = planner.plan_extended(sql, &map.tables, map.version);
    if let Some(d) = from_plan(&plan) {
        return (
            with_reference_reads(d, map, health, local_reference_reads),
            None,
        );
    }
    let Plan::Tenant {
        colocation,
        dist_type,
        ..
    } = &*plan
    else {
        return (Decision::Coordinator(RouteReason::NoKey), None);
    };
    let dt: DistType = *dist_type;
    // Values that must agree are compared by hash: equal values hash equally, and two
    // values with one hash live in one shard anyway.
    let mut first: Option<KeySource> = None;
    let value = plan.tenant_value(|k| {
        if first.is_none() {
            first = Some(k.clone());
        }
        match k {
            KeySource::Literal(s) => hash_value(dt, s).ok(),
            KeySource::Param(i) => match bind.param(*i) {
                Ok(Some((0, Some(v)))) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| hash_value(dt, s).ok()),
                Ok(Some((1, Some(v)))) => hash_binary(dt, v).ok(),
                _ => None,
            },
        }
    });
    match value {
        TenantValue::Value(h) => (
            locate(map, health, *colocation, h),
            first
                .and_then(|k| value_text(dt, &k, bind))
                .map(|v| (*colocation, v)),
        ),
        TenantValue::Conflict => (Decision::Coordinator(RouteReason::MultiTenant), None),
        TenantValue::Unknown | TenantValue::NotTenant => {
            (Decision::Coordinator(RouteReason::NoKey), None)
        }
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
