//! INSERT, UPDATE and DELETE: their target tables, the keys their rows get (VALUES,
//! INSERT … SELECT, ON CONFLICT) and their WHERE clauses.
use super::*;

impl<'c> Analysis<'c> {
    pub(super) fn insert(&mut self, ins: &Insert) {
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

    pub(super) fn update(&mut self, u: &Update) {
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

    pub(super) fn delete(&mut self, d: &Delete) {
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

    pub(super) fn mark_write_target(&mut self, entry: usize) {
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
}
