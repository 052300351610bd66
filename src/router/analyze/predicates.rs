//! Predicates: resolving column references to distribution columns, the conjunctive
//! positions whose equalities bind keys or join nodes, and the walk through every other
//! expression (subqueries, function arguments, depth limit).
use super::*;

impl<'c> Analysis<'c> {
    /// A column reference that is some table's distribution column.
    pub(super) fn resolve(&self, e: &Expr) -> Option<Col> {
        match e {
            Expr::Nested(x) => self.resolve(x),
            Expr::Cast { expr, .. } => self.resolve(expr),
            Expr::Identifier(id) => {
                let name = fold(id);
                let cur = self.cur();
                let mut found = None;
                for (i, entry) in self.scopes.get(cur)?.iter().enumerate() {
                    if !self.spend(entry_cost(entry)) {
                        return None;
                    }
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

    pub(super) fn term(&mut self, e: &Expr) -> Term {
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
    pub(super) fn conj(&mut self, e: &Expr) {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.opaque = true;
        } else {
            self.conj_inner(e);
        }
        self.depth -= 1;
    }

    pub(super) fn conj_inner(&mut self, e: &Expr) {
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
    pub(super) fn key_choice(&self, e: &Expr) -> Option<usize> {
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

    pub(super) fn equal(&mut self, l: &Expr, r: &Expr) {
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

    pub(super) fn function_arg(&mut self, a: &FunctionArg) {
        let (FunctionArg::Named { arg, .. }
        | FunctionArg::ExprNamed { arg, .. }
        | FunctionArg::Unnamed(arg)) = a;
        if let FunctionArgExpr::Expr(e) = arg {
            self.walk(e);
        }
    }

    /// Look for subqueries anywhere in `e` (no predicate here pins anything).
    pub(super) fn walk(&mut self, e: &Expr) {
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
