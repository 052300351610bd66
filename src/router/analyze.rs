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

/// Plan one DML statement. `hint` is the tenant hint of the text, if any.
pub(super) fn plan_dml(stmt: &Statement, catalog: &dyn Catalog, hint: Option<&KeySource>) -> Plan {
    let mut scan = Scan::default();
    let _ = stmt.visit(&mut scan);
    let mut a = Analysis::new(catalog);
    a.statement(stmt);
    if scan.relations != a.relations {
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

/// What the visitor finds: table names, function calls, statements and row locks.
#[derive(Default)]
struct Scan {
    relations: usize,
    sequence_fn: bool,
    admin_fn: bool,
    /// Statements, the outer one included: more than one means DML inside a query.
    statements: usize,
    /// `FOR UPDATE` / `FOR SHARE` / … somewhere.
    locks: bool,
    /// A call of a function not known to be read-only (`effects::read_only_call`), or of
    /// one qualified with a schema other than `pg_catalog`.
    unknown_call: bool,
}

impl Scan {
    fn call(&mut self, name: &ObjectName) {
        let parts: Vec<_> = name.0.iter().map(|p| p.as_ident()).collect();
        let known = match parts.as_slice() {
            [Some(f)] => read_only_call(&fold(f)),
            [Some(s), Some(f)] => fold(s) == "pg_catalog" && read_only_call(&fold(f)),
            _ => false,
        };
        self.unknown_call |= !known;
    }
}

impl Visitor for Scan {
    type Break = ();

    fn pre_visit_relation(&mut self, _relation: &ObjectName) -> ControlFlow<()> {
        self.relations += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        self.statements += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.locks |= !query.locks.is_empty();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // A set-returning function in FROM: `generate_series(1, 3)`, `f(1)`.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            if let Some(name) = f.name.0.last().and_then(|p| p.as_ident()) {
                let name = name.value.to_ascii_lowercase();
                match function_class(&name) {
                    FnClass::Sequence => self.sequence_fn = true,
                    FnClass::Admin => self.admin_fn = true,
                    FnClass::Plain => {}
                }
            }
            self.call(&f.name);
        }
        ControlFlow::Continue(())
    }
}

enum FnClass {
    Plain,
    /// nextval/currval/setval/lastval: sequences live on the coordinator (a worker hands out
    /// values from its own range, and currval/lastval are per connection).
    Sequence,
    /// Functions whose effect depends on the node they run on: Citus administration,
    /// advisory locks, large objects, notifications, settings.
    Admin,
}

fn function_class(name: &str) -> FnClass {
    match name {
        "nextval" | "currval" | "setval" | "lastval" => FnClass::Sequence,
        "create_distributed_table"
        | "create_reference_table"
        | "create_distributed_function"
        | "create_distributed_table_concurrently"
        | "undistribute_table"
        | "alter_distributed_table"
        | "alter_table_set_access_method"
        | "isolate_tenant_to_new_shard"
        | "rebalance_table_shards"
        | "get_rebalance_progress"
        | "truncate_local_data_after_distributing_table"
        | "create_time_partitions"
        | "drop_old_time_partitions"
        | "set_config"
        | "pg_notify" => FnClass::Admin,
        n if n.starts_with("citus_")
            || n.starts_with("master_")
            || n.starts_with("run_command_on_")
            || n.starts_with("pg_advisory")
            || n.starts_with("pg_try_advisory")
            || n.starts_with("lo_") =>
        {
            FnClass::Admin
        }
        _ => FnClass::Plain,
    }
}

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
        }
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

    fn insert(&mut self, ins: &Insert) {
        let TableObject::TableName(name) = &ins.table else {
            self.opaque = true;
            return;
        };
        self.scopes.push(Vec::new());
        self.relations += 1;
        let (kind, info) = self.table_ref(name);
        let entry_name = match &ins.table_alias {
            Some(a) => fold(&a.alias),
            None => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(fold)
                .unwrap_or_default(),
        };
        let inst = match kind {
            EntryKind::Table(i) => Some(i),
            EntryKind::Derived(_) => {
                // INSERT INTO a CTE name: PostgreSQL rejects it; do not guess.
                self.opaque = true;
                None
            }
            EntryKind::Other => None,
        };
        if info.is_some_and(|t| t.kind == TableKind::Reference) {
            self.reference_write = true;
        }
        let cur = self.cur();
        self.scopes[cur].push(Entry {
            name: entry_name,
            schema: None,
            info,
            kind: match inst {
                Some(i) => EntryKind::Table(i),
                None => EntryKind::Other,
            },
        });

        let cols: Vec<String> = ins
            .columns
            .iter()
            .map(|c| {
                c.0.last()
                    .and_then(|p| p.as_ident())
                    .map(fold)
                    .unwrap_or_default()
            })
            .collect();
        let seq_cols: Vec<usize> = match info {
            Some(t) => {
                if !t.int_sequence_columns.is_empty() && cols.is_empty() {
                    // No column list: whether the sequence column gets a value is unknown.
                    self.sequence_default = true;
                }
                if t.int_sequence_columns.iter().any(|s| !cols.contains(s)) && !cols.is_empty() {
                    self.sequence_default = true;
                }
                cols.iter()
                    .enumerate()
                    .filter(|(_, c)| t.int_sequence_columns.contains(c))
                    .map(|(i, _)| i)
                    .collect()
            }
            None => Vec::new(),
        };
        let dist_pos = inst.and_then(|i| {
            cols.iter()
                .position(|c| *c == self.insts[i].info.dist_column)
        });

        match ins.source.as_deref() {
            None => {
                // DEFAULT VALUES or INSERT … SET (not PostgreSQL).
                if let Some(i) = inst {
                    self.insts[i].poisoned = true;
                }
                for a in &ins.assignments {
                    self.walk(&a.value);
                }
            }
            Some(q) => match (&q.with, q.body.as_ref()) {
                (None, SetExpr::Values(v)) => {
                    for row in &v.rows {
                        for (pos, e) in row.content.iter().enumerate() {
                            if seq_cols.contains(&pos) && is_default(e) {
                                self.sequence_default = true;
                            }
                            if let Some(i) = inst {
                                if Some(pos) == dist_pos {
                                    match key_source(e) {
                                        Some(k) => self.binds.push((self.insts[i].node, k)),
                                        None => self.insts[i].poisoned = true,
                                    }
                                }
                            }
                            self.walk(e);
                        }
                    }
                    if let Some(i) = inst {
                        if dist_pos.is_none() || v.rows.is_empty() {
                            self.insts[i].poisoned = true;
                        }
                    }
                }
                _ => {
                    let outs = self.subquery(q);
                    if let Some(i) = inst {
                        let node = self.insts[i].node;
                        match dist_pos
                            .filter(|_| outs.exact)
                            .and_then(|p| outs.cols.get(p))
                        {
                            Some((_, OutVal::Node(n))) => self.edges.push((*n, node)),
                            Some((_, OutVal::Key(k))) => self.binds.push((node, k.clone())),
                            _ => self.insts[i].poisoned = true,
                        }
                    }
                }
            },
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                for a in &du.assignments {
                    self.walk(&a.value);
                }
                if let Some(s) = &du.selection {
                    self.walk(s);
                }
            }
        } else if let Some(OnInsert::DuplicateKeyUpdate(assignments)) = &ins.on {
            for a in assignments {
                self.walk(&a.value);
            }
        }
        if let Some(items) = &ins.returning {
            self.projection(items);
        }
        self.scopes.pop();
    }

    fn update(&mut self, u: &Update) {
        self.scopes.push(Vec::new());
        self.table_with_joins(&u.table);
        self.mark_write_target(0);
        if let Some(UpdateTableFromKind::BeforeSet(v) | UpdateTableFromKind::AfterSet(v)) = &u.from
        {
            for t in v {
                self.table_with_joins(t);
            }
        }
        if let Some(w) = &u.selection {
            self.conj(w);
        }
        for a in &u.assignments {
            self.walk(&a.value);
        }
        if let Some(items) = &u.returning {
            self.projection(items);
        }
        self.scopes.pop();
    }

    fn delete(&mut self, d: &Delete) {
        if !d.tables.is_empty() {
            // MySQL's multi-table DELETE.
            self.opaque = true;
            return;
        }
        self.scopes.push(Vec::new());
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
        for t in from {
            let start = self.scopes[self.cur()].len();
            self.table_with_joins(t);
            self.mark_write_target(start);
        }
        if let Some(using) = &d.using {
            for t in using {
                self.table_with_joins(t);
            }
        }
        if let Some(w) = &d.selection {
            self.conj(w);
        }
        if let Some(items) = &d.returning {
            self.projection(items);
        }
        self.scopes.pop();
    }

    fn mark_write_target(&mut self, entry: usize) {
        let cur = self.cur();
        if let Some(e) = self.scopes[cur].get(entry) {
            if e.info.is_some_and(|t| t.kind == TableKind::Reference) {
                self.reference_write = true;
            }
            if matches!(e.kind, EntryKind::Derived(_)) {
                self.opaque = true;
            }
        }
    }

    // ---- queries -----------------------------------------------------------------

    /// Analyse `q` in a new scope; what it selects.
    fn subquery(&mut self, q: &Query) -> Outs {
        self.scopes.push(Vec::new());
        let outs = self.query_in_scope(q);
        self.scopes.pop();
        outs
    }

    fn query_in_scope(&mut self, q: &Query) -> Outs {
        let mark = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                if with.recursive {
                    self.ctes.push((name.clone(), Outs::default()));
                }
                let mut outs = self.subquery(&cte.query);
                if !cte.alias.columns.is_empty() {
                    if outs.exact {
                        for (c, def) in outs.cols.iter_mut().zip(&cte.alias.columns) {
                            c.0 = Some(fold(&def.name));
                        }
                    } else {
                        outs = Outs::default();
                    }
                }
                if with.recursive {
                    // A recursive CTE's rows come from its recursion too: expose nothing.
                    if let Some(slot) = self.ctes.iter_mut().rev().find(|(n, _)| *n == name) {
                        slot.1 = Outs::default();
                    }
                } else {
                    self.ctes.push((name, outs));
                }
            }
        }
        let outs = self.set_expr(&q.body);
        if let Some(ob) = &q.order_by {
            if let sqlparser::ast::OrderByKind::Expressions(exprs) = &ob.kind {
                for e in exprs {
                    self.walk(&e.expr);
                }
            }
        }
        if let Some(lc) = &q.limit_clause {
            match lc {
                sqlparser::ast::LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    if let Some(l) = limit {
                        self.walk(l);
                    }
                    if let Some(o) = offset {
                        self.walk(&o.value);
                    }
                    for e in limit_by {
                        self.walk(e);
                    }
                }
                sqlparser::ast::LimitClause::OffsetCommaLimit { offset, limit } => {
                    self.walk(offset);
                    self.walk(limit);
                }
            }
        }
        if let Some(f) = &q.fetch {
            if let Some(e) = &f.quantity {
                self.walk(e);
            }
        }
        self.ctes.truncate(mark);
        outs
    }

    fn set_expr(&mut self, body: &SetExpr) -> Outs {
        match body {
            SetExpr::Select(s) => self.select(s),
            SetExpr::Query(q) => self.subquery(q),
            SetExpr::SetOperation { left, right, .. } => {
                // Each branch pins its own tables; the union's columns carry nothing.
                for side in [left, right] {
                    self.scopes.push(Vec::new());
                    self.set_expr(side);
                    self.scopes.pop();
                }
                Outs::default()
            }
            SetExpr::Values(v) => {
                let mut outs = Outs {
                    cols: Vec::new(),
                    exact: true,
                };
                for (r, row) in v.rows.iter().enumerate() {
                    for e in &row.content {
                        if r == 0 && v.rows.len() == 1 {
                            let val = key_source(e).map_or(OutVal::Other, OutVal::Key);
                            outs.cols.push((None, val));
                        }
                        self.walk(e);
                    }
                }
                if v.rows.len() != 1 {
                    outs = Outs::default();
                }
                outs
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => {
                self.statement(s);
                Outs::default()
            }
            SetExpr::Merge(_) | SetExpr::Table(_) => {
                self.opaque = true;
                Outs::default()
            }
        }
    }

    fn select(&mut self, s: &Select) -> Outs {
        if s.into.is_some() {
            // SELECT … INTO creates a table.
            self.ddl = true;
        }
        for t in &s.from {
            self.table_with_joins(t);
        }
        if let Some(w) = &s.selection {
            self.conj(w);
        }
        let outs = self.projection(&s.projection);
        if let sqlparser::ast::GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                self.walk(e);
            }
        }
        for e in [&s.having, &s.qualify, &s.prewhere].into_iter().flatten() {
            self.walk(e);
        }
        outs
    }

    fn projection(&mut self, items: &[SelectItem]) -> Outs {
        let mut outs = Outs {
            cols: Vec::with_capacity(items.len()),
            exact: true,
        };
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = match e {
                        Expr::Identifier(id) => Some(fold(id)),
                        Expr::CompoundIdentifier(ids) => ids.last().map(fold),
                        _ => None,
                    };
                    let val = self.out_val(e);
                    outs.cols.push((name, val));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let val = self.out_val(expr);
                    outs.cols.push((Some(fold(alias)), val));
                }
                SelectItem::ExprWithAliases { expr, .. } => {
                    self.walk(expr);
                    outs.exact = false;
                }
                SelectItem::Wildcard(_) => {
                    outs.exact = false;
                    let cur = self.cur();
                    let mut cols = Vec::new();
                    for e in &self.scopes[cur] {
                        cols.extend(entry_cols(e, &self.insts));
                    }
                    outs.cols.extend(cols);
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    outs.exact = false;
                    if let SelectItemQualifiedWildcardKind::ObjectName(name) = kind {
                        let quals: Vec<String> = name
                            .0
                            .iter()
                            .filter_map(|p| p.as_ident())
                            .map(fold)
                            .collect();
                        if let Some((d, idx)) = self.find_entry(&quals) {
                            let cols = entry_cols(&self.scopes[d][idx], &self.insts);
                            outs.cols.extend(cols);
                        }
                    }
                }
            }
        }
        outs
    }

    fn out_val(&mut self, e: &Expr) -> OutVal {
        if let Some(c) = self.resolve(e) {
            return OutVal::Node(c.node);
        }
        if let Some(k) = key_source(e) {
            return OutVal::Key(k);
        }
        self.walk(e);
        OutVal::Other
    }

    // ---- FROM --------------------------------------------------------------------

    fn table_with_joins(&mut self, t: &TableWithJoins) {
        let cur = self.cur();
        let start = self.scopes[cur].len();
        self.factor(&t.relation);
        for j in &t.joins {
            let mid = self.scopes[cur].len();
            self.factor(&j.relation);
            let end = self.scopes[cur].len();
            let (kind, constraint) = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c) => (JoinKind::Inner, Some(c)),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (
                    JoinKind::Outer {
                        preserved: start..mid,
                        nullable: mid..end,
                    },
                    Some(c),
                ),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (
                    JoinKind::Outer {
                        preserved: mid..end,
                        nullable: start..mid,
                    },
                    Some(c),
                ),
                JoinOperator::FullOuter(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c) => (JoinKind::Full, Some(c)),
                JoinOperator::AsOf {
                    match_condition,
                    constraint,
                } => {
                    self.walk(match_condition);
                    (JoinKind::Full, Some(constraint))
                }
                JoinOperator::CrossApply
                | JoinOperator::OuterApply
                | JoinOperator::ArrayJoin
                | JoinOperator::LeftArrayJoin
                | JoinOperator::InnerArrayJoin => (JoinKind::Full, None),
            };
            if let Some(c) = constraint {
                self.join_constraint(c, start..mid, mid..end, kind);
            }
        }
    }

    fn join_constraint(
        &mut self,
        c: &JoinConstraint,
        left: Range<usize>,
        right: Range<usize>,
        kind: JoinKind,
    ) {
        match c {
            JoinConstraint::On(e) => match kind {
                JoinKind::Inner => self.conj(e),
                JoinKind::Outer {
                    preserved,
                    nullable,
                } => self.outer_on(e, &preserved, &nullable),
                JoinKind::Full => self.walk(e),
            },
            JoinConstraint::Using(cols) | JoinConstraint::UsingAlias(cols, _) => {
                for c in cols {
                    let Some(name) = c.0.last().and_then(|p| p.as_ident()).map(fold) else {
                        continue;
                    };
                    let (Some(l), Some(r)) =
                        (self.col_in(&name, &left), self.col_in(&name, &right))
                    else {
                        continue;
                    };
                    match &kind {
                        JoinKind::Inner => self.union(l, r),
                        JoinKind::Outer { preserved, .. } => {
                            if *preserved == left {
                                self.edges.push((l, r));
                            } else {
                                self.edges.push((r, l));
                            }
                        }
                        JoinKind::Full => {}
                    }
                }
            }
            JoinConstraint::Natural | JoinConstraint::None => {}
        }
    }

    /// The node of distribution column `name` among the current scope's entries `range`.
    fn col_in(&self, name: &str, range: &Range<usize>) -> Option<usize> {
        let cur = self.cur();
        let mut found = None;
        for e in &self.scopes[cur][range.clone()] {
            if let Some(n) = entry_col(e, name, &self.insts) {
                if found.is_some() {
                    return None;
                }
                found = Some(n);
            }
        }
        found
    }

    /// ON of an outer join: only the nullable side is pinned, by keys or by the other side.
    fn outer_on(&mut self, e: &Expr, preserved: &Range<usize>, nullable: &Range<usize>) {
        let mut conjuncts = Vec::new();
        and_chain(e, &mut conjuncts);
        let cur = self.cur();
        for c in conjuncts {
            let Some((l, r)) = equality(c) else {
                self.walk(c);
                continue;
            };
            let (tl, tr) = (self.term(l), self.term(r));
            let side = |t: &Term| match t {
                Term::Col(c) if c.depth == cur && nullable.contains(&c.entry) => {
                    Some((c.node, true))
                }
                Term::Col(c) if c.depth == cur && preserved.contains(&c.entry) => {
                    Some((c.node, false))
                }
                Term::Col(c) if c.depth < cur => Some((c.node, false)),
                _ => None,
            };
            match (side(&tl), side(&tr), &tl, &tr) {
                (Some((a, true)), Some((b, true)), _, _) => self.union(a, b),
                (Some((a, false)), Some((b, true)), _, _)
                | (Some((b, true)), Some((a, false)), _, _) => self.edges.push((a, b)),
                (Some((a, true)), None, _, Term::Key(k))
                | (None, Some((a, true)), Term::Key(k), _) => self.binds.push((a, k.clone())),
                (Some((a, true)), None, _, Term::Sub(Some(n)))
                | (None, Some((a, true)), Term::Sub(Some(n)), _) => self.edges.push((*n, a)),
                _ => {}
            }
        }
    }

    fn factor(&mut self, f: &TableFactor) {
        let cur = self.cur();
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                self.relations += 1;
                let alias_name = alias.as_ref().map(|a| fold(&a.name));
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident())
                    .map(fold)
                    .collect();
                if let Some(args) = args {
                    // A set-returning function called with a table-like name.
                    for a in &args.args {
                        self.function_arg(a);
                    }
                    self.scopes[cur].push(Entry {
                        name: alias_name
                            .or_else(|| parts.last().cloned())
                            .unwrap_or_default(),
                        schema: None,
                        info: None,
                        kind: EntryKind::Other,
                    });
                    return;
                }
                let (kind, info) = self.table_ref(name);
                let schema = if alias_name.is_none() && parts.len() >= 2 {
                    Some(parts[parts.len() - 2].clone())
                } else {
                    None
                };
                self.scopes[cur].push(Entry {
                    name: alias_name
                        .or_else(|| parts.last().cloned())
                        .unwrap_or_default(),
                    schema,
                    info,
                    kind,
                });
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let outs = self.subquery(subquery);
                let outs = match alias {
                    Some(a) if !a.columns.is_empty() => {
                        if outs.exact {
                            let mut o = outs;
                            for (c, def) in o.cols.iter_mut().zip(&a.columns) {
                                c.0 = Some(fold(&def.name));
                            }
                            o
                        } else {
                            Outs::default()
                        }
                    }
                    _ => outs,
                };
                self.scopes[cur].push(Entry {
                    name: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    schema: None,
                    info: None,
                    kind: EntryKind::Derived(outs),
                });
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins),
            TableFactor::Function {
                args, alias, name, ..
            } => {
                for a in args {
                    self.function_arg(a);
                }
                self.push_other(
                    alias
                        .as_ref()
                        .map(|a| fold(&a.name))
                        .or_else(|| last_name(name)),
                );
            }
            TableFactor::TableFunction { expr, alias } => {
                self.walk(expr);
                self.push_other(alias.as_ref().map(|a| fold(&a.name)));
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    self.walk(e);
                }
                self.push_other(alias.as_ref().map(|a| fold(&a.name)));
            }
            _ => self.opaque = true,
        }
    }

    fn push_other(&mut self, name: Option<String>) {
        let cur = self.cur();
        self.scopes[cur].push(Entry {
            name: name.unwrap_or_default(),
            schema: None,
            info: None,
            kind: EntryKind::Other,
        });
    }

    /// Resolve a table name: a CTE in scope, a catalog table, or a local table.
    fn table_ref(&mut self, name: &ObjectName) -> (EntryKind, Option<&'c TableInfo>) {
        let mut parts = Vec::with_capacity(name.0.len());
        for p in &name.0 {
            match p.as_ident() {
                Some(id) => parts.push(fold(id)),
                None => {
                    self.opaque = true;
                    return (EntryKind::Other, None);
                }
            }
        }
        if parts.len() == 1 {
            if let Some((_, outs)) = self.ctes.iter().rev().find(|(n, _)| *n == parts[0]) {
                return (EntryKind::Derived(outs.clone()), None);
            }
        }
        let Some(table) = parts.last() else {
            self.opaque = true;
            return (EntryKind::Other, None);
        };
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].as_str());
        match self.catalog.table(schema, table) {
            Some(info) if info.kind == TableKind::Distributed => {
                let node = self.uf.len();
                self.uf.push(node);
                self.insts.push(Inst {
                    info,
                    node,
                    poisoned: false,
                });
                (EntryKind::Table(self.insts.len() - 1), Some(info))
            }
            Some(info) => {
                self.has_reference = true;
                (EntryKind::Other, Some(info))
            }
            None => {
                self.local = true;
                (EntryKind::Other, None)
            }
        }
    }

    // ---- columns -----------------------------------------------------------------

    /// The FROM item a qualifier names (`o`, `orders`, `public.orders`), innermost first.
    fn find_entry(&self, quals: &[String]) -> Option<(usize, usize)> {
        let (schema, name) = match quals {
            [n] => (None, n),
            [s, n] | [_, s, n] => (Some(s.as_str()), n),
            _ => return None,
        };
        for d in (0..self.scopes.len()).rev() {
            for (i, e) in self.scopes[d].iter().enumerate() {
                if e.name != *name {
                    continue;
                }
                match schema {
                    None => return Some((d, i)),
                    Some(s) => {
                        let entry_schema =
                            e.schema.as_deref().or(e.info.map(|t| t.schema.as_str()));
                        if entry_schema == Some(s) {
                            return Some((d, i));
                        }
                    }
                }
            }
        }
        None
    }

    /// A column reference that is some table's distribution column.
    fn resolve(&self, e: &Expr) -> Option<Col> {
        match e {
            Expr::Nested(x) => self.resolve(x),
            Expr::Cast { expr, .. } => self.resolve(expr),
            Expr::Identifier(id) => {
                let name = fold(id);
                let cur = self.cur();
                let mut found = None;
                for (i, entry) in self.scopes.get(cur)?.iter().enumerate() {
                    if let Some(node) = entry_col(entry, &name, &self.insts) {
                        if found.is_some() {
                            return None;
                        }
                        found = Some(Col {
                            node,
                            depth: cur,
                            entry: i,
                        });
                    }
                }
                found
            }
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 => {
                let quals: Vec<String> = ids[..ids.len() - 1].iter().map(fold).collect();
                let col = fold(&ids[ids.len() - 1]);
                let (d, i) = self.find_entry(&quals)?;
                let node = entry_col(&self.scopes[d][i], &col, &self.insts)?;
                Some(Col {
                    node,
                    depth: d,
                    entry: i,
                })
            }
            _ => None,
        }
    }

    fn term(&mut self, e: &Expr) -> Term {
        if let Some(c) = self.resolve(e) {
            return Term::Col(c);
        }
        if let Some(k) = key_source(e) {
            return Term::Key(k);
        }
        match e {
            Expr::Nested(x) => self.term(x),
            Expr::Subquery(q) => {
                let outs = self.subquery(q);
                match outs.cols.as_slice() {
                    [(_, OutVal::Node(n))] if outs.exact => Term::Sub(Some(*n)),
                    _ => Term::Sub(None),
                }
            }
            _ => {
                self.walk(e);
                Term::Other
            }
        }
    }

    // ---- predicates --------------------------------------------------------------

    /// A predicate in a conjunctive position of the current scope.
    fn conj(&mut self, e: &Expr) {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.opaque = true;
        } else {
            self.conj_inner(e);
        }
        self.depth -= 1;
    }

    fn conj_inner(&mut self, e: &Expr) {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                self.conj(left);
                self.conj(right);
            }
            Expr::Nested(x) => self.conj(x),
            Expr::In {
                expr,
                target: InTarget::Subquery(q),
                negated: false,
                ..
            } => {
                let t = self.term(expr);
                let outs = self.subquery(q);
                if let (Term::Col(c), [(_, OutVal::Node(n))]) = (&t, outs.cols.as_slice()) {
                    if c.depth == self.cur() && outs.exact {
                        self.edges.push((*n, c.node));
                    }
                }
            }
            _ => match equality(e) {
                Some((l, r)) => self.equal(l, r),
                None => match self.key_choice(e) {
                    Some(node) => self.choices.push(node),
                    None => self.walk(e),
                },
            },
        }
    }

    /// `col IN (k1, k2, …)`, or an OR of `col = k` and `col IN (…)` over one distribution
    /// column of the current scope (every value a key): that column's node. Holds no
    /// subquery, so nothing is left to walk.
    fn key_choice(&self, e: &Expr) -> Option<usize> {
        let cur = self.cur();
        let mut node = None;
        let mut stack = vec![e];
        while let Some(e) = stack.pop() {
            let col = match e {
                Expr::Nested(x) => {
                    stack.push(x);
                    continue;
                }
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Or,
                    right,
                } => {
                    stack.push(right);
                    stack.push(left);
                    continue;
                }
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } => match (self.resolve(left), self.resolve(right)) {
                    (Some(c), None) if key_source(right).is_some() => c,
                    (None, Some(c)) if key_source(left).is_some() => c,
                    _ => return None,
                },
                Expr::In {
                    expr,
                    target: InTarget::List(list),
                    negated: false,
                    ..
                } if list.iter().all(|x| key_source(x).is_some()) => self.resolve(expr)?,
                _ => return None,
            };
            if col.depth != cur || node.is_some_and(|n| n != col.node) {
                return None;
            }
            node = Some(col.node);
        }
        node
    }

    fn equal(&mut self, l: &Expr, r: &Expr) {
        let (tl, tr) = (self.term(l), self.term(r));
        let cur = self.cur();
        match (&tl, &tr) {
            (Term::Col(a), Term::Col(b)) => {
                if a.depth == b.depth {
                    if a.depth == cur {
                        self.union(a.node, b.node);
                    }
                } else {
                    let (outer, inner) = if a.depth < b.depth { (a, b) } else { (b, a) };
                    if inner.depth == cur {
                        self.edges.push((outer.node, inner.node));
                    }
                }
            }
            (Term::Col(c), Term::Key(k)) | (Term::Key(k), Term::Col(c)) if c.depth == cur => {
                self.binds.push((c.node, k.clone()));
            }
            (Term::Col(c), Term::Sub(Some(n))) | (Term::Sub(Some(n)), Term::Col(c))
                if c.depth == cur =>
            {
                self.edges.push((*n, c.node));
            }
            _ => {}
        }
    }

    fn function_arg(&mut self, a: &FunctionArg) {
        let (FunctionArg::Named { arg, .. }
        | FunctionArg::ExprNamed { arg, .. }
        | FunctionArg::Unnamed(arg)) = a;
        if let FunctionArgExpr::Expr(e) = arg {
            self.walk(e);
        }
    }

    /// Look for subqueries anywhere in `e` (no predicate here pins anything).
    fn walk(&mut self, e: &Expr) {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.opaque = true;
            self.depth -= 1;
            return;
        }
        match e {
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => {
                self.subquery(q);
            }
            Expr::In { expr, target, .. } => {
                self.walk(expr);
                match target {
                    InTarget::List(list) => list.iter().for_each(|x| self.walk(x)),
                    InTarget::Subquery(q) => {
                        self.subquery(q);
                    }
                    InTarget::Unnest(x) => self.walk(x),
                    InTarget::Table { .. } => {}
                }
            }
            Expr::BinaryOp { left, right, .. }
            | Expr::IsDistinctFrom(left, right)
            | Expr::IsNotDistinctFrom(left, right)
            | Expr::AnyOp { left, right, .. }
            | Expr::AllOp { left, right, .. } => {
                self.walk(left);
                self.walk(right);
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => {
                self.walk(expr);
                self.walk(pattern);
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::Cast { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr)
            | Expr::Collate { expr, .. }
            | Expr::Extract { expr, .. }
            | Expr::Ceil { expr, .. }
            | Expr::Floor { expr, .. }
            | Expr::Named { expr, .. } => self.walk(expr),
            Expr::Between {
                expr, low, high, ..
            } => {
                self.walk(expr);
                self.walk(low);
                self.walk(high);
            }
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => {
                self.walk(timestamp);
                self.walk(time_zone);
            }
            Expr::Function(f) => {
                match &f.args {
                    FunctionArguments::List(l) => {
                        for a in &l.args {
                            self.function_arg(a);
                        }
                    }
                    FunctionArguments::Subquery(q) => {
                        self.subquery(q);
                    }
                    FunctionArguments::None => {}
                }
                if let Some(x) = &f.filter {
                    self.walk(x);
                }
                for o in &f.within_group {
                    self.walk(&o.expr);
                }
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(x) = operand {
                    self.walk(x);
                }
                for c in conditions {
                    self.walk(&c.condition);
                    self.walk(&c.result);
                }
                if let Some(x) = else_result {
                    self.walk(x);
                }
            }
            Expr::Tuple(v) => v.iter().for_each(|x| self.walk(x)),
            Expr::Array(a) => a.elem.iter().for_each(|x| self.walk(x)),
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.walk(expr);
                for x in [substring_from, substring_for].into_iter().flatten() {
                    self.walk(x);
                }
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                self.walk(expr);
                if let Some(x) = trim_what {
                    self.walk(x);
                }
                for x in trim_characters.iter().flatten() {
                    self.walk(x);
                }
            }
            Expr::Position { expr, r#in } => {
                self.walk(expr);
                self.walk(r#in);
            }
            Expr::CompoundFieldAccess { root, .. } => self.walk(root),
            Expr::JsonAccess { value, .. } => self.walk(value),
            Expr::Interval(i) => self.walk(&i.value),
            // Anything else holding a subquery is caught by the relation count.
            _ => {}
        }
        self.depth -= 1;
    }
}

/// `DEFAULT` in a VALUES row.
fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

fn last_name(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|p| p.as_ident()).map(fold)
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
