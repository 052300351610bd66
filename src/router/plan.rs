//! The planner: one SQL text → where it must run and where its tenant key sits.
//!
//! Pure: it reads the text and the [`Catalog`], nothing else. See [`crate::router`] for the
//! rules; [`super::analyze`] holds the tenant analysis of DML.
use sqlparser::ast::{ContextModifier, Set, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::analyze;
use super::command::{classify, classify_single, Command};
use super::mask;
use crate::citus::{Catalog, DistType};

/// Where a tenant key's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// A literal in the text: its value (string content unescaped, or a number's text with
    /// its sign), ready for `citus::hash::hash_value(dist_type, text)`.
    Literal(String),
    /// Parameter `$n+1` of the statement (0-based index), bound later.
    Param(usize),
    /// Every element of array parameter `$n+1` (0-based index): the value they all hold,
    /// none if they differ (see [`super::array`]; `INSERT … SELECT * FROM UNNEST($1, …)`).
    ParamElements(usize),
}

/// Why a statement runs where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Pinned by a key in the statement.
    TenantKey,
    /// Pinned by a tenant hint comment.
    Hint,
    /// Touches distributed or reference tables without a key pinning all of them.
    NoKey,
    /// Reads only reference tables (every node has a copy; see `reference_reads`).
    ReferenceRead,
    /// Keys of different tenants, or tables of different colocation groups.
    MultiTenant,
    Ddl,
    /// A utility statement (SET, SHOW, VACUUM, LISTEN, …) or a node-specific function.
    Utility,
    /// An INSERT that leaves an int/smallint sequence column to its default, or a call to a
    /// sequence function (nextval, currval, setval, lastval).
    SequenceDefault,
    ReferenceWrite,
    Copy,
    ParseFailure,
    /// Transaction control mixed with other statements in one query string.
    TransactionControl,
    /// Touches a table Citus does not know (it exists on the coordinator only).
    NotDistributed,
}

/// Transaction control statements, handled by the session loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    /// `SET LOCAL …`, `SET TRANSACTION …`, `SET CONSTRAINTS …`.
    SetLocal,
}

/// Where a statement must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Pinned to one value of the distribution column(s) of colocation group `colocation`.
    Tenant {
        colocation: u32,
        dist_type: DistType,
        /// Where the value is.
        key: KeySource,
        /// Other places that must hold the same value (`… o.account_id = $1 AND
        /// i.account_id = $2`): the plan holds only if they do, which only run time can tell
        /// ([`Plan::tenant_value`]). Empty in the common case.
        also: Vec<KeySource>,
        /// [`Reason::TenantKey`] or [`Reason::Hint`].
        reason: Reason,
        /// Certainly read-only (as for [`Plan::ReadOnly`]): when the places in `also`
        /// disagree at run time, or a value is missing, the statement is a read that no
        /// tenant pins.
        read_only: bool,
    },
    /// A tenant hint on a statement that touches no distributed table (only reference
    /// tables, or none): the hint names a tenant but not its colocation group. The caller
    /// resolves it with its configured default group (`hint_table` / `default_colocation`),
    /// or treats the statement as [`Plan::Anywhere`] / `Coordinator(NoKey)` if it has none.
    HintTenant { key: KeySource },
    /// Must run on the coordinator.
    Coordinator(Reason),
    /// Runs on the coordinator for the same reasons (`NoKey`, `MultiTenant` or
    /// `ReferenceRead`), but certainly reads only (see "Read-only statements" in
    /// [`crate::router`]): the caller may send it to any node with Citus metadata
    /// (`multi_tenant_reads = any`) when it is a transaction of its own.
    ReadOnly(Reason),
    /// Touches no table: may run anywhere; does not decide a transaction's node.
    Anywhere,
    /// BEGIN/COMMIT/…: handled by the session loop.
    Transaction(TxControl),
}

/// The result of resolving a plan's key against actual values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantValue<T> {
    /// Not a tenant plan.
    NotTenant,
    /// The tenant key's value.
    Value(T),
    /// A value is missing (unbound parameter, NULL): route as `Coordinator(NoKey)`.
    Unknown,
    /// The places that must agree do not: route as `Coordinator(MultiTenant)`.
    Conflict,
}

impl Plan {
    /// The reason of a plan that runs on the coordinator (`Coordinator` or `ReadOnly`).
    pub fn coordinator_reason(&self) -> Option<Reason> {
        match self {
            Plan::Coordinator(r) | Plan::ReadOnly(r) => Some(*r),
            _ => None,
        }
    }

    /// The key sources of a tenant plan (`key` first), or none.
    pub fn key_sources(&self) -> impl Iterator<Item = &KeySource> {
        let (key, also): (Option<&KeySource>, &[KeySource]) = match self {
            Plan::Tenant { key, also, .. } => (Some(key), also),
            Plan::HintTenant { key } => (Some(key), &[]),
            _ => (None, &[]),
        };
        key.into_iter().chain(also)
    }

    /// Resolve the tenant value with `get` (which reads literals and Bind parameters),
    /// checking that every place in `also` agrees.
    pub fn tenant_value<T: PartialEq>(
        &self,
        mut get: impl FnMut(&KeySource) -> Option<T>,
    ) -> TenantValue<T> {
        let mut it = self.key_sources();
        let Some(first) = it.next() else {
            return TenantValue::NotTenant;
        };
        let Some(v) = get(first) else {
            return TenantValue::Unknown;
        };
        for k in it {
            match get(k) {
                None => return TenantValue::Unknown,
                Some(o) if o != v => return TenantValue::Conflict,
                Some(_) => {}
            }
        }
        TenantValue::Value(v)
    }
}

/// Merge key sources that must all hold one value: literals must be equal text (else
/// `None`: different tenants); parameters are kept for the run-time check.
pub(super) fn merge_keys(keys: Vec<KeySource>) -> Option<(KeySource, Vec<KeySource>)> {
    let mut literal: Option<String> = None;
    let mut params: Vec<KeySource> = Vec::new();
    // Linear however many parameters a statement names (tens of thousands in a bulk
    // INSERT): a set, not a search of the list.
    let mut seen = std::collections::HashSet::new();
    for k in keys {
        match k {
            KeySource::Literal(s) => match &literal {
                Some(l) if *l != s => return None,
                Some(_) => {}
                None => literal = Some(s),
            },
            p @ (KeySource::Param(_) | KeySource::ParamElements(_)) => {
                if seen.insert(p.clone()) {
                    params.push(p);
                }
            }
        }
    }
    let mut params = params.into_iter();
    let key = match literal {
        Some(l) => KeySource::Literal(l),
        None => params.next()?,
    };
    Some((key, params.collect()))
}

/// Texts with more binary operators than this are not parsed (`Coordinator(ParseFailure)`):
/// sqlparser builds a long operator chain as a tree as deep as the chain, and builds, walks
/// and drops it recursively, so an unbounded chain could overflow a thread's stack (2 MiB
/// for tokio's workers; debug builds use far bigger frames).
pub const MAX_OPERATORS: usize = if cfg!(debug_assertions) { 120 } else { 1000 };

/// sqlparser's own nesting limit (subqueries, parentheses, prefix operators; its default is
/// 50), lowered for the same reason: its frames are large, in debug builds very large.
pub const MAX_NESTING: usize = if cfg!(debug_assertions) { 16 } else { 40 };

/// Longer texts are not planned (`Coordinator(ParseFailure)`, the coordinator runs
/// anything): planning costs ~100 ns a byte of a worker thread, and texts over the plan
/// cache's limit are planned at every Bind.
pub const MAX_PLANNED_TEXT: usize = 256 * 1024;

/// Plan a query string (one statement, or several: each is planned and the plans combined).
pub fn plan(sql: &str, catalog: &dyn Catalog) -> Plan {
    if sql.len() > MAX_PLANNED_TEXT {
        return Plan::Coordinator(Reason::ParseFailure);
    }
    let m = mask::mask_spans(sql);
    if m.operators > MAX_OPERATORS {
        return Plan::Coordinator(Reason::ParseFailure);
    }
    let hint = m.hint.and_then(|k| hint_key(&m, sql, k));
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(MAX_NESTING)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    let stmts = match parsed {
        Ok(s) => s,
        Err(_) => return unparsed(sql, &m.key),
    };
    let plans = stmts
        .iter()
        .map(|s| plan_statement(s, catalog, hint.as_ref()));
    combine(plans)
}

/// The key a hint stands for: the parameter `$n` it names (see [`mask::Masked::hint_param`]),
/// or its value.
fn hint_key(m: &mask::Masked, sql: &str, k: usize) -> Option<KeySource> {
    if let Some(p) = m.hint_param(sql, k) {
        return Some(KeySource::Param(p));
    }
    Some(KeySource::Literal(m.literal(sql, k)?.into_owned()))
}

fn plan_statement(stmt: &Statement, catalog: &dyn Catalog, hint: Option<&KeySource>) -> Plan {
    use Statement as S;
    match stmt {
        S::Query(_) | S::Insert(_) | S::Update(_) | S::Delete(_) => {
            analyze::plan_dml(stmt, catalog, hint)
        }
        S::StartTransaction { .. } => Plan::Transaction(TxControl::Begin),
        // `AND CHAIN` starts the next transaction at once (ReadyForQuery `T`): not a plain
        // end that pgtenant could answer for a held transaction; the server runs it.
        // (sqlparser marks `AND NO CHAIN` the same way; it goes to the server too.)
        S::Commit { chain: true, .. } | S::Rollback { chain: true, .. } => {
            Plan::Coordinator(Reason::TransactionControl)
        }
        S::Commit { .. } => Plan::Transaction(TxControl::Commit),
        S::Rollback {
            savepoint: None, ..
        } => Plan::Transaction(TxControl::Rollback),
        S::Rollback {
            savepoint: Some(_), ..
        } => Plan::Transaction(TxControl::RollbackTo),
        S::Savepoint { .. } => Plan::Transaction(TxControl::Savepoint),
        S::ReleaseSavepoint { .. } => Plan::Transaction(TxControl::Release),
        S::Set(
            Set::SingleAssignment {
                scope: Some(ContextModifier::Local),
                ..
            }
            | Set::SetTimeZone { local: true, .. }
            | Set::SetRole {
                context_modifier: Some(ContextModifier::Local),
                ..
            }
            | Set::SetTransaction { session: false, .. },
        ) => Plan::Transaction(TxControl::SetLocal),
        S::Set(_) => Plan::Coordinator(Reason::Utility),
        S::Copy { .. } | S::CopyIntoSnowflake { .. } => Plan::Coordinator(Reason::Copy),
        // EXPLAIN [ANALYZE] follows what it explains: a pinned query is explained (and, with
        // ANALYZE, run) where it would run; the worker's plan is the same router plan.
        S::Explain { statement, .. } => match plan_statement(statement, catalog, hint) {
            Plan::Transaction(_) => Plan::Coordinator(Reason::Utility),
            p => p,
        },
        s if is_ddl(s) => Plan::Coordinator(Reason::Ddl),
        _ => Plan::Coordinator(Reason::Utility),
    }
}

fn is_ddl(s: &Statement) -> bool {
    use Statement as S;
    matches!(
        s,
        S::AlterCollation { .. }
            | S::AlterConnector { .. }
            | S::AlterDefaultPrivileges { .. }
            | S::AlterFunction { .. }
            | S::AlterIndex { .. }
            | S::AlterOperator { .. }
            | S::AlterOperatorClass { .. }
            | S::AlterOperatorFamily { .. }
            | S::AlterPolicy { .. }
            | S::AlterRole { .. }
            | S::AlterSchema { .. }
            | S::AlterTable { .. }
            | S::AlterTextSearch { .. }
            | S::AlterTrigger { .. }
            | S::AlterType { .. }
            | S::AlterUser { .. }
            | S::AlterView { .. }
            | S::Comment { .. }
            | S::CreateAggregate { .. }
            | S::CreateCollation { .. }
            | S::CreateDatabase { .. }
            | S::CreateDomain { .. }
            | S::CreateExtension { .. }
            | S::CreateForeignDataWrapper { .. }
            | S::CreateForeignTable { .. }
            | S::CreateFunction { .. }
            | S::CreateIndex { .. }
            | S::CreateOperator { .. }
            | S::CreateOperatorClass { .. }
            | S::CreateOperatorFamily { .. }
            | S::CreatePolicy { .. }
            | S::CreateProcedure { .. }
            | S::CreateRole { .. }
            | S::CreateRule { .. }
            | S::CreateSchema { .. }
            | S::CreateSequence { .. }
            | S::CreateServer { .. }
            | S::CreateTable { .. }
            | S::CreateTextSearch { .. }
            | S::CreateTrigger { .. }
            | S::CreateType { .. }
            | S::CreateUser { .. }
            | S::CreateUserMapping { .. }
            | S::CreateView { .. }
            | S::CreateVirtualTable { .. }
            | S::Drop { .. }
            | S::DropDomain { .. }
            | S::DropExtension { .. }
            | S::DropFunction { .. }
            | S::DropOperator { .. }
            | S::DropOperatorClass { .. }
            | S::DropOperatorFamily { .. }
            | S::DropPolicy { .. }
            | S::DropProcedure { .. }
            | S::DropRule { .. }
            | S::DropTrigger { .. }
            | S::Grant { .. }
            | S::GrantRole { .. }
            | S::Deny { .. }
            | S::Revoke { .. }
            | S::RevokeRole { .. }
            | S::RefreshMaterializedView { .. }
            | S::RenameTable { .. }
            | S::Truncate { .. }
    )
}

/// A text sqlparser cannot read: classify it by its leading words where that is certain
/// (PostgreSQL syntax sqlparser lacks: `SET CONSTRAINTS`, `COMMIT PREPARED`, some DDL).
fn unparsed(sql: &str, masked: &str) -> Plan {
    if classify(sql).len() > 1 {
        return Plan::Coordinator(Reason::ParseFailure);
    }
    let mut words = masked
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase());
    let first = words.next().unwrap_or_default();
    let second = words.next().unwrap_or_default();
    match first.as_str() {
        "SET" if classify_single(sql) == Some(Command::LocalSet) => {
            Plan::Transaction(TxControl::SetLocal)
        }
        "SET" | "RESET" | "SHOW" | "DISCARD" | "LISTEN" | "UNLISTEN" | "NOTIFY" | "VACUUM"
        | "ANALYZE" | "CHECKPOINT" | "LOAD" | "PREPARE" | "EXECUTE" | "DEALLOCATE" | "DECLARE"
        | "FETCH" | "MOVE" | "CLOSE" | "LOCK" | "CALL" | "DO" => Plan::Coordinator(Reason::Utility),
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" if second == "PREPARED" => {
            Plan::Coordinator(Reason::Utility)
        }
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "GRANT" | "REVOKE" | "COMMENT" | "REINDEX"
        | "CLUSTER" | "SECURITY" | "IMPORT" | "REFRESH" => Plan::Coordinator(Reason::Ddl),
        "COPY" => Plan::Coordinator(Reason::Copy),
        _ => Plan::Coordinator(Reason::ParseFailure),
    }
}

/// Combine the plans of the statements of one query string (sent as one unit):
/// - any `Coordinator(r)` or `ReadOnly(r)` → the first such reason, `ReadOnly` only when
///   every part is (an `Anywhere` part may call anything: it is not known read-only);
/// - transaction control next to anything else → `Coordinator(TransactionControl)`;
/// - `Anywhere` parts do not count; tenant parts must share a group and a key (literals
///   equal; parameters go to `also` for the run-time check), else `Coordinator(MultiTenant)`.
pub(super) fn combine(plans: impl IntoIterator<Item = Plan>) -> Plan {
    let mut coordinator = None;
    let mut tx = None;
    let mut count = 0usize;
    // (colocation group and type if a part names one, the keys, the strongest reason)
    type Acc = (Option<(u32, DistType)>, Vec<KeySource>, Reason);
    let mut tenant: Option<Acc> = None;
    let mut multi = false;
    let mut read_only = true;
    for p in plans {
        count += 1;
        read_only &= matches!(
            p,
            Plan::ReadOnly(_)
                | Plan::Tenant {
                    read_only: true,
                    ..
                }
        );
        match p {
            Plan::Coordinator(r) | Plan::ReadOnly(r) => {
                coordinator.get_or_insert(r);
            }
            Plan::Transaction(t) => {
                tx.get_or_insert(t);
            }
            Plan::Anywhere => {}
            Plan::Tenant {
                colocation,
                dist_type,
                key,
                also,
                reason,
                ..
            } => {
                let t = tenant.get_or_insert((None, Vec::new(), Reason::Hint));
                match t.0 {
                    None => t.0 = Some((colocation, dist_type)),
                    Some(g) if g != (colocation, dist_type) => multi = true,
                    Some(_) => {}
                }
                t.1.push(key);
                t.1.extend(also);
                if reason == Reason::TenantKey {
                    t.2 = Reason::TenantKey;
                }
            }
            Plan::HintTenant { key } => {
                let t = tenant.get_or_insert((None, Vec::new(), Reason::Hint));
                t.1.push(key);
            }
        }
    }
    if let Some(r) = coordinator {
        return if read_only {
            Plan::ReadOnly(r)
        } else {
            Plan::Coordinator(r)
        };
    }
    if let Some(t) = tx {
        return if count == 1 {
            Plan::Transaction(t)
        } else {
            Plan::Coordinator(Reason::TransactionControl)
        };
    }
    // Several tenants in statements that all certainly read: a read no tenant pins, as
    // for one statement (found by the `plan` fuzz target: the plan cache, which sees the
    // keys as parameters, said ReadOnly where planning the text said Coordinator).
    let several = if read_only {
        Plan::ReadOnly(Reason::MultiTenant)
    } else {
        Plan::Coordinator(Reason::MultiTenant)
    };
    if multi {
        return several;
    }
    match tenant {
        None => Plan::Anywhere,
        Some((group, keys, reason)) => match merge_keys(keys) {
            None => several,
            Some((key, also)) => match group {
                Some((colocation, dist_type)) => Plan::Tenant {
                    colocation,
                    dist_type,
                    key,
                    also,
                    reason,
                    read_only,
                },
                None => Plan::HintTenant { key },
            },
        },
    }
}
