//! Tenant analysis of one DML statement (SELECT, INSERT, UPDATE, DELETE, and the DML inside
//! their CTEs): which tables it touches and whether every distributed one is pinned to one
//! value of its own distribution column.
//!
//! The model: each occurrence of a distributed table gets a node standing for "the value of
//! its distribution column in the rows this statement touches". Equalities in a conjunctive
//! position (the AND-chain of a WHERE, of an inner JOIN's ON, a one-value `IN`) either bind a
//! node to a key (`col = 42`, `col = $1`, `col = '42'::bigint`) or join two nodes
//! (`a.id = o.account_id`: union-find). Some constraints only pin one way, and become directed
//! edges: the nullable side of an outer join is pinned by the preserved side, a correlated
//! subquery's table by the outer column it is compared with, an INSERT … SELECT target by the
//! selected value. Predicates under OR, NOT, CASE … carry nothing. At the end every
//! distributed occurrence must reach a key, and all keys must agree.
//!
//! Columns are matched against each table's own distribution column from the catalog, never
//! by name alone. An unqualified column is looked up only among the innermost query's FROM
//! items (PostgreSQL would report an ambiguity if two tables had it); a qualified one
//! (`o.account_id`, `orders.account_id`, `public.orders.account_id`) walks outwards through
//! the enclosing queries as PostgreSQL does. Derived tables and CTEs expose their selected
//! distribution columns, so a key can reach the tables inside them.
//!
//! A second, independent walk (sqlparser's visitor) counts every table name in the
//! statement; if this walk saw fewer (an expression form it does not descend into), the
//! statement is treated as unknown and goes to the coordinator.
//!
//! Files: this one holds the model (occurrences, union-find, the plan at the end); `from`
//! the queries and their FROM items, `predicates` the conjunctive equalities and the walk
//! through other expressions, `writes` INSERT/UPDATE/DELETE, `scan` the independent walk.
use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    BinaryOperator, Delete, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, InTarget, Insert, JoinConstraint, JoinOperator, ObjectName, OnConflictAction, OnInsert,
    Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, UnaryOperator, Update, UpdateTableFromKind, Value, Visit, Visitor,
};

use super::effects::read_only_call;
use super::plan::{merge_keys, KeySource, Plan, Reason};
use crate::citus::{Catalog, TableInfo, TableKind};

/// Deeper expressions than this are not analysed (the statement goes to the coordinator).
const MAX_DEPTH: usize = 200;

/// Work one statement's analysis may take, in FROM entries and derived columns looked at
/// or copied: past it the statement is not analysed further and goes to the coordinator.
/// Real statements take well under a thousand; without a bound a 16 KB text naming a
/// wide CTE a thousand times made the analysis copy millions of columns (seconds of a
/// worker thread, gigabytes), and name lookups over thousands of FROM items were
/// quadratic.
const MAX_WORK: usize = 200_000;

/// Plan one DML statement. `hint` is the tenant hint of the text, if any.
pub(super) fn plan_dml(stmt: &Statement, catalog: &dyn Catalog, hint: Option<&KeySource>) -> Plan {
    let mut scan = Scan::default();
    let _ = stmt.visit(&mut scan);
    let mut a = Analysis::new(catalog);
    a.statement(stmt);
    if scan.relations != a.relations || a.over_budget() {
        a.opaque = true;
    }
    // Certainly read-only: a query with no DML inside (a data-modifying CTE is a second
    // statement to the visitor), no row locks, only calls known to read, and nothing the
    // analysis could not follow (it may hide a local table).
    let read_only = matches!(stmt, Statement::Query(_))
        && scan.statements == 1
        && !scan.locks
        && !scan.unknown_call
        && !a.opaque;
    match a.finish(&scan, hint, read_only) {
        Plan::Coordinator(r @ (Reason::NoKey | Reason::MultiTenant | Reason::ReferenceRead))
            if read_only =>
        {
            Plan::ReadOnly(r)
        }
        p => p,
    }
}

mod from;
mod predicates;
mod scan;
mod writes;

use scan::Scan;

/// PostgreSQL's identifier folding: unquoted names are lower-cased.
pub(super) fn fold(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

/// The key an expression stands for: a literal or a parameter, possibly cast and signed.
pub(super) fn key_source(e: &Expr) -> Option<KeySource> {
    match e {
        Expr::Value(v) => value_key(&v.value),
        Expr::Nested(x) => key_source(x),
        Expr::Cast { expr, .. } => key_source(expr),
        Expr::TypedString(t) => value_key(&t.value.value),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) if !n.starts_with('-') => {
                    Some(KeySource::Literal(format!("-{n}")))
                }
                _ => None,
            },
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => match expr.as_ref() {
            // `+5`, or `+$1` (a masked number): the value is the number's.
            Expr::Value(v) if matches!(v.value, Value::Number(..) | Value::Placeholder(_)) => {
                value_key(&v.value)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The key every element of an array expression stands for: an array literal
/// (`'{42,42}'::bigint[]`, possibly cast again) whose elements are all one value, or an
/// array parameter (`$1::bigint[]`, also a masked literal), resolved when bound.
pub(super) fn array_key(e: &Expr) -> Option<KeySource> {
    match e {
        Expr::Nested(x) => array_key(x),
        Expr::Cast { expr, .. } => array_key(expr),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => {
                crate::router::array::text_common_element(s).map(KeySource::Literal)
            }
            Value::Placeholder(p) => param_index(p).map(KeySource::ParamElements),
            _ => None,
        },
        _ => None,
    }
}

fn value_key(v: &Value) -> Option<KeySource> {
    match v {
        Value::Number(n, _) => Some(KeySource::Literal(n.clone())),
        Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
            Some(KeySource::Literal(s.clone()))
        }
        Value::DollarQuotedString(d) => Some(KeySource::Literal(d.value.clone())),
        Value::Placeholder(p) => param_index(p).map(KeySource::Param),
        _ => None,
    }
}

/// `$3` → 2.
pub(super) fn param_index(p: &str) -> Option<usize> {
    let n: usize = p.strip_prefix('$')?.parse().ok()?;
    n.checked_sub(1)
}

/// One distributed-table occurrence.
struct Inst<'c> {
    info: &'c TableInfo,
    node: usize,
    /// Touches rows whose key is not known (an INSERT row without a usable key).
    poisoned: bool,
}

/// What a query exposes to its outer query, by position.
#[derive(Clone, Default)]
struct Outs {
    cols: Vec<(Option<String>, OutVal)>,
    /// False when a `*` made positions unknown (names still hold).
    exact: bool,
}

#[derive(Clone)]
enum OutVal {
    Node(usize),
    Key(KeySource),
    Other,
}

#[derive(Clone)]
enum EntryKind {
    /// A distributed table occurrence (index into `insts`).
    Table(usize),
    /// A subquery or CTE reference.
    Derived(Outs),
    /// A reference table, a local table, a table function: no distribution column.
    Other,
}

/// A FROM item, as the statement names it.
struct Entry<'c> {
    /// The alias, or else the table's name (folded).
    name: String,
    /// The schema it was qualified with (no alias only).
    schema: Option<String>,
    info: Option<&'c TableInfo>,
    kind: EntryKind,
}

/// A column reference resolved to a distribution-column node.
#[derive(Clone, Copy)]
struct Col {
    node: usize,
    /// Scope depth of the FROM item it belongs to.
    depth: usize,
    /// Index of that FROM item in its scope.
    entry: usize,
}

enum Term {
    Col(Col),
    Key(KeySource),
    /// A scalar subquery and the node of its single selected column, if it is one.
    Sub(Option<usize>),
    Other,
}

enum JoinKind {
    Inner,
    /// Outer join: `nullable` entries are pinned by `preserved` ones (ON only pins them).
    Outer {
        preserved: Range<usize>,
        nullable: Range<usize>,
    },
    Full,
}

struct Analysis<'c> {
    catalog: &'c dyn Catalog,
    insts: Vec<Inst<'c>>,
    /// Union-find parents of the nodes.
    uf: Vec<usize>,
    binds: Vec<(usize, KeySource)>,
    /// Directed pinning: `from` pinned ⇒ `to` pinned (to the same value).
    edges: Vec<(usize, usize)>,
    /// Nodes a conjunct limits to a list of keys (`IN (1, 2)`, `= 1 OR = 2`): several
    /// tenants, unless another conjunct pins them to one.
    choices: Vec<usize>,
    scopes: Vec<Vec<Entry<'c>>>,
    /// CTEs visible here, innermost last.
    ctes: Vec<(String, Outs)>,
    relations: usize,
    has_reference: bool,
    local: bool,
    reference_write: bool,
    sequence_default: bool,
    ddl: bool,
    opaque: bool,
    depth: usize,
    /// Work spent so far (see [`MAX_WORK`]).
    work: std::cell::Cell<usize>,
}

impl<'c> Analysis<'c> {
    fn new(catalog: &'c dyn Catalog) -> Analysis<'c> {
        Analysis {
            catalog,
            insts: Vec::new(),
            uf: Vec::new(),
            binds: Vec::new(),
            edges: Vec::new(),
            choices: Vec::new(),
            scopes: Vec::new(),
            ctes: Vec::new(),
            relations: 0,
            has_reference: false,
            local: false,
            reference_write: false,
            sequence_default: false,
            ddl: false,
            opaque: false,
            depth: 0,
            work: std::cell::Cell::new(0),
        }
    }

    /// Count `n` units of work; false once the statement is over [`MAX_WORK`] (the
    /// caller stops, the statement goes to the coordinator).
    fn spend(&self, n: usize) -> bool {
        let w = self.work.get().saturating_add(n);
        self.work.set(w);
        w <= MAX_WORK
    }

    fn over_budget(&self) -> bool {
        self.work.get() > MAX_WORK
    }

    // ---- the result ----------------------------------------------------------------

    fn finish(mut self, scan: &Scan, hint: Option<&KeySource>, read_only: bool) -> Plan {
        if self.ddl {
            return Plan::Coordinator(Reason::Ddl);
        }
        if scan.admin_fn {
            return Plan::Coordinator(Reason::Utility);
        }
        if self.local {
            return Plan::Coordinator(Reason::NotDistributed);
        }
        if self.reference_write {
            return Plan::Coordinator(Reason::ReferenceWrite);
        }
        if self.sequence_default || scan.sequence_fn {
            return Plan::Coordinator(Reason::SequenceDefault);
        }
        if self.opaque {
            return Plan::Coordinator(Reason::NoKey);
        }
        let Some(first) = self.insts.first().map(|i| i.info) else {
            return match hint {
                Some(h) => Plan::HintTenant { key: h.clone() },
                None if self.has_reference => Plan::Coordinator(Reason::ReferenceRead),
                None => Plan::Anywhere,
            };
        };
        if self.insts.iter().any(|i| {
            i.info.colocation_id != first.colocation_id || i.info.dist_type != first.dist_type
        }) {
            return Plan::Coordinator(Reason::MultiTenant);
        }
        if !first.dist_type.is_hashable() {
            return Plan::Coordinator(Reason::NoKey);
        }

        // Keys per class, then along the directed edges until nothing changes.
        let n = self.uf.len();
        let mut keys: Vec<Vec<KeySource>> = vec![Vec::new(); n];
        for (node, k) in std::mem::take(&mut self.binds) {
            let r = self.find(node);
            keys[r].push(k);
        }
        let edges: Vec<(usize, usize)> = std::mem::take(&mut self.edges)
            .into_iter()
            .map(|(a, b)| (self.find(a), self.find(b)))
            .collect();
        // Classes limited to a list of keys (`IN (1, 2)`, `= 1 OR = 2`) and no single one.
        let mut several = vec![false; n];
        for node in std::mem::take(&mut self.choices) {
            let r = self.find(node);
            several[r] = true;
        }
        let mut changed = true;
        while changed {
            changed = false;
            for &(a, b) in &edges {
                if !keys[a].is_empty() && keys[b].is_empty() {
                    keys[b] = keys[a].clone();
                    changed = true;
                } else if several[a] && keys[a].is_empty() && !several[b] {
                    several[b] = true;
                    changed = true;
                }
            }
        }
        let mut all = Vec::new();
        let mut unpinned = false;
        let mut multi = false;
        let mut seen = vec![false; n];
        for i in 0..self.insts.len() {
            let (node, poisoned) = (self.insts[i].node, self.insts[i].poisoned);
            let r = self.find(node);
            if poisoned || keys[r].is_empty() {
                if !poisoned && several[r] {
                    multi = true;
                } else {
                    unpinned = true;
                }
            }
            if !seen[r] {
                seen[r] = true;
                all.extend(keys[r].iter().cloned());
            }
        }
        if unpinned && hint.is_none() {
            return Plan::Coordinator(Reason::NoKey);
        }
        if multi {
            // The statement names its tenants, and they are several: a hint cannot pin it.
            return Plan::Coordinator(Reason::MultiTenant);
        }
        let reason = match hint {
            Some(h) if unpinned => {
                all.push(h.clone());
                Reason::Hint
            }
            _ => Reason::TenantKey,
        };
        match merge_keys(all) {
            Some((key, also)) => Plan::Tenant {
                colocation: first.colocation_id,
                dist_type: first.dist_type,
                key,
                also,
                reason,
                read_only,
            },
            None => Plan::Coordinator(Reason::MultiTenant),
        }
    }

    // ---- union-find --------------------------------------------------------------

    fn find(&mut self, mut x: usize) -> usize {
        while self.uf[x] != x {
            self.uf[x] = self.uf[self.uf[x]];
            x = self.uf[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.uf[rb] = ra;
        }
    }

    fn cur(&self) -> usize {
        self.scopes.len().saturating_sub(1)
    }

    // ---- statements --------------------------------------------------------------

    fn statement(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Query(q) => {
                self.subquery(q);
            }
            Statement::Insert(i) => self.insert(i),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            _ => self.opaque = true,
        }
    }
}

/// `DEFAULT` in a VALUES row.
fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

fn last_name(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|p| p.as_ident()).map(fold)
}

/// What looking a column up in a FROM item costs (see [`Analysis::spend`]).
fn entry_cost(e: &Entry<'_>) -> usize {
    match &e.kind {
        EntryKind::Derived(outs) => 1 + outs.cols.len(),
        _ => 1,
    }
}

/// The node for column `name` of a FROM item, if it is a distribution column there.
fn entry_col(e: &Entry<'_>, name: &str, insts: &[Inst<'_>]) -> Option<usize> {
    match &e.kind {
        EntryKind::Table(i) => (insts[*i].info.dist_column == name).then_some(insts[*i].node),
        EntryKind::Derived(outs) => {
            let mut found = None;
            for (n, v) in &outs.cols {
                if n.as_deref() == Some(name) {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(match v {
                        OutVal::Node(node) => Some(*node),
                        _ => None,
                    });
                }
            }
            found.flatten()
        }
        EntryKind::Other => None,
    }
}

/// The distribution columns a FROM item exposes (for `*`).
fn entry_cols(e: &Entry<'_>, insts: &[Inst<'_>]) -> Vec<(Option<String>, OutVal)> {
    match &e.kind {
        EntryKind::Table(i) => vec![(
            Some(insts[*i].info.dist_column.clone()),
            OutVal::Node(insts[*i].node),
        )],
        EntryKind::Derived(outs) => outs.cols.clone(),
        EntryKind::Other => Vec::new(),
    }
}

fn and_chain<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    // Iterative: a long AND chain is a deep tree.
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(x) => stack.push(x),
            _ => out.push(e),
        }
    }
}

/// `a = b`, or `a IN (b)` with one value.
fn equality(e: &Expr) -> Option<(&Expr, &Expr)> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => Some((left, right)),
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } if list.len() == 1 => Some((expr, &list[0])),
        _ => None,
    }
}
