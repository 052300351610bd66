//! Queries and their FROM items: scopes, set operations, projections (what a derived
//! table or CTE exposes), joins and their constraints, table references.
use super::*;

impl<'c> Analysis<'c> {
    /// Analyse `q` in a new scope; what it selects.
    pub(super) fn subquery(&mut self, q: &Query) -> Outs {
        self.scopes.push(Vec::new());
        let outs = self.query_in_scope(q);
        self.scopes.pop();
        outs
    }

    pub(super) fn query_in_scope(&mut self, q: &Query) -> Outs {
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

    pub(super) fn set_expr(&mut self, body: &SetExpr) -> Outs {
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

    pub(super) fn select(&mut self, s: &Select) -> Outs {
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

    pub(super) fn projection(&mut self, items: &[SelectItem]) -> Outs {
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
                    // Positions stay known only over derived tables whose columns all are
                    // (`SELECT * FROM UNNEST(…)`): a table's `*` has columns not listed.
                    let cur = self.cur();
                    let known = self.scopes[cur]
                        .iter()
                        .all(|e| matches!(&e.kind, EntryKind::Derived(o) if o.exact));
                    if !known {
                        outs.exact = false;
                    }
                    let mut cols = Vec::new();
                    for e in &self.scopes[cur] {
                        if !self.spend(entry_cost(e)) {
                            break;
                        }
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
                            if self.spend(entry_cost(&self.scopes[d][idx])) {
                                let cols = entry_cols(&self.scopes[d][idx], &self.insts);
                                outs.cols.extend(cols);
                            }
                        }
                    }
                }
            }
        }
        outs
    }

    pub(super) fn out_val(&mut self, e: &Expr) -> OutVal {
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

    pub(super) fn table_with_joins(&mut self, t: &TableWithJoins) {
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

    pub(super) fn join_constraint(
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
    pub(super) fn col_in(&self, name: &str, range: &Range<usize>) -> Option<usize> {
        let cur = self.cur();
        let mut found = None;
        for e in &self.scopes[cur][range.clone()] {
            if !self.spend(entry_cost(e)) {
                return None;
            }
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
    pub(super) fn outer_on(&mut self, e: &Expr, preserved: &Range<usize>, nullable: &Range<usize>) {
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

    pub(super) fn factor(&mut self, f: &TableFactor) {
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
                alias,
                array_exprs,
                with_offset,
                with_ordinality,
                ..
            } => {
                // One column per array (PostgreSQL's multi-argument UNNEST), each the
                // arrays' common element when it is a key: Django 5.2's bulk_create is
                // `INSERT … SELECT * FROM UNNEST('{42,42}'::bigint[], …)`.
                let mut cols: Vec<(Option<String>, OutVal)> = Vec::new();
                for e in array_exprs {
                    let val = match array_key(e) {
                        Some(k) => OutVal::Key(k),
                        None => {
                            self.walk(e);
                            OutVal::Other
                        }
                    };
                    cols.push((None, val));
                }
                if *with_ordinality {
                    cols.push((None, OutVal::Other));
                }
                let mut outs = Outs {
                    cols,
                    exact: !*with_offset,
                };
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        if a.columns.len() == outs.cols.len() {
                            for (c, def) in outs.cols.iter_mut().zip(&a.columns) {
                                c.0 = Some(fold(&def.name));
                            }
                        } else {
                            outs = Outs::default();
                        }
                    }
                }
                let cur = self.cur();
                self.scopes[cur].push(Entry {
                    name: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    schema: None,
                    info: None,
                    kind: EntryKind::Derived(outs),
                });
            }
            _ => self.opaque = true,
        }
    }

    pub(super) fn push_other(&mut self, name: Option<String>) {
        let cur = self.cur();
        self.scopes[cur].push(Entry {
            name: name.unwrap_or_default(),
            schema: None,
            info: None,
            kind: EntryKind::Other,
        });
    }

    /// Resolve a table name: a CTE in scope, a catalog table, or a local table.
    pub(super) fn table_ref(&mut self, name: &ObjectName) -> (EntryKind, Option<&'c TableInfo>) {
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
                if !self.spend(1 + outs.cols.len()) {
                    self.opaque = true;
                    return (EntryKind::Other, None);
                }
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
    pub(super) fn find_entry(&self, quals: &[String]) -> Option<(usize, usize)> {
        let (schema, name) = match quals {
            [n] => (None, n),
            [s, n] | [_, s, n] => (Some(s.as_str()), n),
            _ => return None,
        };
        for d in (0..self.scopes.len()).rev() {
            for (i, e) in self.scopes[d].iter().enumerate() {
                if !self.spend(1) {
                    return None;
                }
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
}
