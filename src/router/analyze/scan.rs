//! The independent walk (sqlparser's visitor): every table name, the functions called
//! (sequence, admin, not known read-only), nested statements and row locks.
use super::*;

/// What the visitor finds: table names, function calls, statements and row locks.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) relations: usize,
    pub(super) sequence_fn: bool,
    pub(super) admin_fn: bool,
    /// Statements, the outer one included: more than one means DML inside a query.
    pub(super) statements: usize,
    /// `FOR UPDATE` / `FOR SHARE` / … somewhere.
    pub(super) locks: bool,
    /// A call of a function not known to be read-only (`effects::read_only_call`), or of
    /// one qualified with a schema other than `pg_catalog`.
    pub(super) unknown_call: bool,
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

pub(super) enum FnClass {
    Plain,
    /// nextval/currval/setval/lastval: sequences live on the coordinator (a worker hands out
    /// values from its own range, and currval/lastval are per connection).
    Sequence,
    /// Functions whose effect depends on the node they run on: Citus administration,
    /// advisory locks, large objects, notifications, settings.
    Admin,
}

pub(super) fn function_class(name: &str) -> FnClass {
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
