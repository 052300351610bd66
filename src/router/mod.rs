//! Where a statement goes.
//!
//! - [`plan()`] (`plan.rs`, `analyze.rs`): one SQL text and the [`Catalog`] → a [`Plan`]:
//!   pinned to one tenant of a colocation group (and where that tenant's key value sits), the
//!   coordinator (and why; and whether it only reads), anywhere, or transaction control.
//!   Pure: no I/O.
//! - [`Planner`] (`cache.rs`, `mask.rs`): the same behind a bounded plan cache, keyed by the
//!   exact text (extended protocol) or the text with its literals masked (simple protocol).
//! - [`command`]: a light keyword classifier for the statements that change session state.
//! - [`Router`]: holds the shared planner; `frontend::routing` turns a plan into a node.
//!
//! # Rules
//!
//! For each distributed table a statement reads or writes, the planner decides whether the
//! rows it touches are pinned to ONE value of that table's own distribution column (from the
//! catalog; a column of the same name that is not the distribution column pins nothing):
//! - `col = literal | $n | literal::type | $n::type | type 'literal'` (either side, with a
//!   leading minus on numbers), `col IN (one value)`; qualified and aliased names
//!   (`o.account_id`, `orders.account_id`, `public.orders.account_id`, `"shop_order"."account_id"`);
//! - in AND-chains of WHERE and of inner JOIN … ON (an OR, NOT or CASE above a predicate
//!   breaks it); `JOIN … USING (col)`;
//! - equalities between distribution columns of colocated tables carry the key between them
//!   (`orders o JOIN accounts a ON a.id = o.account_id WHERE o.account_id = 5`); the nullable
//!   side of an outer join is pinned through its ON clause by the preserved side;
//! - subqueries (`IN (SELECT …)`, `EXISTS`, scalar), derived tables and CTEs: each table in
//!   them must be pinned by its own predicates, by a correlated equality with a pinned outer
//!   column, or through the distribution column it exposes to the outer query;
//! - INSERT … VALUES with a column list holding the distribution column (every row must carry
//!   the same key); INSERT … SELECT pinned by the selected key; UPDATE and DELETE … WHERE
//!   (with FROM / USING); RETURNING and ON CONFLICT are fine; SELECT … FOR UPDATE stays pinned.
//!
//! A conjunct that limits a distribution column to a list of keys — `col IN (k1, k2, …)`, or
//! an OR of `col = k` / `col IN (…)` over that one column — names several tenants: unless
//! another conjunct pins the column to one key, the statement is `MultiTenant` (even with
//! a hint, and even if the values happen to be equal: a masked text cannot tell), carried
//! to colocated tables like a key. A table with no constraint at all makes it `NoKey`.
//!
//! All distributed tables of a statement must be in one colocation group and pinned to the
//! same value: two different literal values → `Coordinator(MultiTenant)`; values from
//! parameters (or masked literals) that must agree are listed in `Plan::Tenant::also` and
//! checked at run time ([`Plan::tenant_value`]). Reference tables read next to pinned
//! distributed tables keep the pin; reading only reference tables → `Coordinator(ReferenceRead)` (the
//! caller applies `reference_reads`); writing one → `Coordinator(ReferenceWrite)`. A table
//! missing from the catalog exists only on the coordinator → `Coordinator(NotDistributed)`;
//! a statement that touches no table (`select 1`, `select now()`) → `Anywhere`. An INSERT that
//! omits (or sets to DEFAULT) an int/smallint sequence column, or any call of nextval,
//! currval, setval or lastval → `Coordinator(SequenceDefault)`. Calls whose effect depends
//! on the node (Citus administration functions `citus_*`, `create_distributed_table`, …,
//! advisory locks, large objects, `set_config`, `pg_notify`) → `Coordinator(Utility)`.
//!
//! Statement kinds: BEGIN/START, COMMIT/END, ROLLBACK/ABORT, SAVEPOINT, RELEASE, ROLLBACK TO,
//! SET LOCAL / SET TRANSACTION / SET CONSTRAINTS → `Transaction(…)`; DDL (CREATE, ALTER, DROP,
//! TRUNCATE, GRANT, REVOKE, COMMENT, REFRESH, SELECT … INTO) → `Coordinator(Ddl)`; COPY →
//! `Coordinator(Copy)`; other utility statements (SET, RESET, SHOW, VACUUM, ANALYZE, LISTEN,
//! NOTIFY, DISCARD, PREPARE/EXECUTE, cursors, LOCK, CALL, MERGE) → `Coordinator(Utility)`;
//! `EXPLAIN [ANALYZE] stmt` → the plan of `stmt` (a pinned query is explained, or run, on the
//! worker that would run it); anything sqlparser cannot read → `Coordinator(ParseFailure)`
//! (unless its first words make the kind certain, e.g. `SET CONSTRAINTS`, `COMMIT PREPARED`).
//! Several statements in one string are planned one by one and combined: tenant parts must
//! agree; `Anywhere` parts do not count; transaction control next to other statements →
//! `Coordinator(TransactionControl)`; otherwise the first coordinator reason.
//!
//! # Tenant hint
//!
//! A block comment anywhere in the text holding the key `tenant_id`, sqlcommenter style:
//! `/* tenant_id=42 */`, `/*tenant_id='acme',route='%2Fa'*/` (comma-separated `key=value`
//! pairs; quoted values may use sqlcommenter's `\'` and URL %-escapes). The first hint counts
//! and applies to every statement of the text. It pins statements that carry no key for some
//! of their distributed tables (`Plan::Tenant` with `Reason::Hint`; a key in the statement
//! still counts and must agree with the hint). A statement that touches no distributed table
//! (reference tables only, or no table) gets `Plan::HintTenant { key }`: the hint names a
//! tenant but no colocation group, which the caller supplies from its configuration. A hint
//! never moves DDL, utility statements, writes to reference tables or local tables off the
//! coordinator. `--` comments are not read.
//!
//! # Read-only statements
//!
//! A statement that would be `Coordinator(NoKey | MultiTenant | ReferenceRead)` is
//! `ReadOnly(same reason)` when it certainly reads only; a tenant plan carries the same
//! fact (`Plan::Tenant::read_only`), so that a run-time conflict or missing value gives
//! `ReadOnly(MultiTenant | NoKey)`. The caller may run such a statement on any node with
//! Citus metadata (`multi_tenant_reads = any`, `frontend::routing`). Certainly read-only:
//! - a query (SELECT, VALUES, set operations, EXPLAIN of one), with no INSERT / UPDATE /
//!   DELETE inside (a data-modifying CTE), no `FOR UPDATE | NO KEY UPDATE | SHARE | KEY
//!   SHARE` at any level, no `SELECT … INTO`;
//! - every function it calls (in expressions and in FROM) is a built-in known to read only
//!   and to mean the same on every node (`effects::read_only_call`: unqualified or
//!   `pg_catalog.`; not sequences, transaction ids, advisory locks, relation sizes,
//!   `set_config`, Citus functions — most of those are already `Utility` or
//!   `SequenceDefault`); any other call (an application's function may write) makes it
//!   not read-only;
//! - the analysis followed all of it (nothing `opaque`, which could hide a local table);
//! - in a text of several statements, every one is read-only (a statement that touches no
//!   table is `Anywhere` and may call anything: it makes the text not read-only).
//!
//! What rules, row-level-security policies, user-defined operators and casts run is not
//! visible in the text (as for `effects`); a SELECT fires no trigger, and a view is not in
//! the catalog (a local table to the planner: `NotDistributed`).
mod analyze;
pub mod array;
pub mod cache;
pub mod command;
pub mod corpus;
pub mod effects;
pub mod mask;
pub mod plan;

pub use cache::{PlanMemo, Planner, Routed, DEFAULT_CAPACITY};
pub use mask::{mask, LITERAL_PARAM_BASE};
pub use plan::{plan, KeySource, Plan, Reason, TenantValue, TxControl};

/// The router's shared state: the planner and its plan cache (the route decision itself
/// is `frontend::routing`, which adds the shard map and node health). Does no I/O.
#[derive(Debug, Default)]
pub struct Router {
    planner: Planner,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// A router whose plan cache holds about `plan_cache_size` plans (0: no caching).
    pub fn with_capacity(plan_cache_size: usize) -> Router {
        Router {
            planner: Planner::new(plan_cache_size),
        }
    }

    /// The shared planner and plan cache.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }
}

#[cfg(test)]
mod tests;
