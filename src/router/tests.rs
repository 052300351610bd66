//! The planner's rules, one test per rule, plus the corpus through both paths.
use std::sync::Arc;

use super::corpus::{catalog, Expect, CORPUS};
use super::*;
use crate::citus::DistType;

fn p(sql: &str) -> Plan {
    plan(sql, &catalog())
}

/// The plan's group and literal key, or panic with the plan.
fn tenant(sql: &str) -> (u32, String) {
    match p(sql) {
        Plan::Tenant {
            colocation,
            key: KeySource::Literal(k),
            also,
            reason: Reason::TenantKey,
            ..
        } if also.is_empty() => (colocation, k),
        other => panic!("{sql}\n  expected a tenant literal, got {other:?}"),
    }
}

/// The reason of a coordinator plan, read-only or not (the read-only rules have their own
/// tests).
fn coord(sql: &str) -> Reason {
    let plan = p(sql);
    plan.coordinator_reason()
        .unwrap_or_else(|| panic!("{sql}\n  expected coordinator, got {plan:?}"))
}

fn lit(s: &str) -> KeySource {
    KeySource::Literal(s.into())
}

#[test]
fn equality_with_literals_params_and_casts() {
    assert_eq!(
        tenant("select * from orders where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders where 5 = account_id"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders where account_id = '5'::bigint"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders where account_id = CAST('5' AS bigint)"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders where account_id = -5"),
        (1, "-5".into())
    );
    assert_eq!(
        tenant("select * from orders where account_id = (5)"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from events where tenant = E'a\\'b'"),
        (2, "a'b".into())
    );
    assert_eq!(
        tenant("select * from events where tenant = $$x'y$$"),
        (2, "x'y".into())
    );
    assert_eq!(
        tenant("select * from devices where org = uuid '00000000-0000-0000-0000-00000000002a'"),
        (3, "00000000-0000-0000-0000-00000000002a".into())
    );
    for sql in [
        "select * from orders where account_id = $1",
        "select * from orders where account_id = $1::int8",
        "select * from orders where $1 = account_id",
    ] {
        assert_eq!(
            p(sql),
            Plan::Tenant {
                colocation: 1,
                dist_type: DistType::Int8,
                key: KeySource::Param(0),
                also: vec![],
                reason: Reason::TenantKey,
                read_only: true,
            },
            "{sql}"
        );
    }
}

#[test]
fn in_with_one_value_pins_more_does_not() {
    assert_eq!(
        tenant("select * from orders where account_id in (7)"),
        (1, "7".into())
    );
    assert_eq!(
        coord("select * from orders where account_id in (7, 8)"),
        Reason::MultiTenant
    );
    assert_eq!(
        coord("select * from orders where account_id not in (7)"),
        Reason::NoKey
    );
    assert_eq!(
        coord("select * from orders where account_id > 7"),
        Reason::NoKey
    );
    assert_eq!(
        coord("select * from orders where account_id = any(array[7])"),
        Reason::NoKey
    );
}

/// Issue 13: `IN (a, b)` and `OR` over tenants of one distribution column are
/// `MultiTenant`, not `NoKey`, in every position where a single key would pin.
#[test]
fn key_lists_and_ors_are_several_tenants() {
    for sql in [
        "select * from orders where account_id in (7, 8)",
        "select * from orders where account_id in ($1, $2)",
        "select * from orders where account_id in ('7', 8::bigint, -9)",
        "select * from orders where account_id = 7 or account_id = 8",
        "select * from orders where (account_id = 7 or 8 = account_id) and status = 'x'",
        "select * from orders where account_id = $1 or account_id in ($2, $3)",
        "select * from orders o where o.account_id = 1 or (o.account_id = 2 or o.account_id = 3)",
        "select * from events where tenant in ('a', 'b')",
        // Carried to colocated tables by joins and correlated subqueries.
        "select * from orders o join items i on i.account_id = o.account_id where o.account_id in (1, 2)",
        "select * from orders o where o.account_id in (1, 2) and exists (select 1 from items i where i.account_id = o.account_id)",
        // Writes are several tenants too.
        "update orders set status = 'x' where account_id in (1, 2)",
        "delete from orders where account_id = 1 or account_id = 2",
        // A hint does not pin a statement that names its tenants.
        "select * from orders where account_id in (1, 2) /* tenant_id=1 */",
    ] {
        assert_eq!(coord(sql), Reason::MultiTenant, "{sql}");
    }
    // Not a list of keys of one column: no key.
    for sql in [
        "select * from orders where account_id in (7, id)",
        "select * from orders where account_id = 7 or status = 'x'",
        "select * from orders where account_id in (select account_id from items)",
        "select * from orders where account_id not in (7, 8)",
        "select * from orders o join items i on i.order_id = o.id where o.account_id = 1 or i.account_id = 2",
        "select * from orders where account_id > 7 or account_id = 1",
        // Another table of the statement is not constrained at all.
        "select * from orders o, items i where o.account_id in (1, 2)",
    ] {
        assert_eq!(coord(sql), Reason::NoKey, "{sql}");
    }
    // A single key next to the list still pins.
    assert_eq!(
        tenant("select * from orders where account_id = 7 and account_id in (7, 8)"),
        (1, "7".into())
    );
    assert_eq!(
        tenant("select * from orders where account_id in (7, 8) and account_id = 7"),
        (1, "7".into())
    );
    // The cached (masked) path agrees.
    let planner = Planner::new(16);
    let cat = catalog();
    for sql in [
        "select * from orders where account_id in (7, 8)",
        "select * from orders where account_id = 7 or account_id = 8",
    ] {
        let r = planner.plan_simple(sql, &cat, 1);
        assert_eq!(*r.plan, Plan::ReadOnly(Reason::MultiTenant), "{sql}");
    }
}

/// What may leave the coordinator (`multi_tenant_reads = any`): a query that reads only.
#[test]
fn read_only_statements() {
    for sql in [
        "select * from orders",
        "select count(*) from orders where status = 'x'",
        "select * from orders where account_id in (1, 2)",
        "select * from plans",
        "select p.name, count(*) from orders o join plans p on p.id = o.id group by p.name",
        "select inet_server_port(), count(*) from orders",
        "select current_user, current_timestamp, now(), version() from plans",
        "select lower(name), coalesce(x, 0), pg_catalog.upper(name) from plans",
        "with t as (select * from orders) select count(*) from t",
        "select * from orders where account_id in (select account_id from items)",
        "select * from orders o union all select * from orders o2 where o2.status = 'x'",
        "select * from generate_series(1, 3) g join plans p on p.id = g",
        "explain select * from orders",
        "select * from orders; select * from plans",
        "select * from orders where account_id = 1; select * from orders",
    ] {
        assert!(matches!(p(sql), Plan::ReadOnly(_)), "{sql}: {:?}", p(sql));
    }
    // Pinned reads are tenant plans; they know they read only.
    assert!(matches!(
        p("select * from orders o, items i where o.account_id = $1 and i.account_id = $2 and i.account_id = o.account_id"),
        Plan::Tenant { read_only: true, .. }
    ));
    assert!(matches!(
        p("update orders set x = 1 where account_id = $1"),
        Plan::Tenant {
            read_only: false,
            ..
        }
    ));
    // What must stay on the coordinator (same reason, not read-only).
    for (sql, reason) in [
        ("update orders set status = 'x'", Reason::NoKey),
        (
            "delete from orders where account_id in (1, 2)",
            Reason::MultiTenant,
        ),
        (
            "insert into orders (account_id, id) select account_id, id from orders",
            Reason::NoKey,
        ),
        ("select * from orders for update", Reason::NoKey),
        (
            "select * from orders o join plans p on p.id = o.id for share of o",
            Reason::NoKey,
        ),
        (
            "select * from (select * from orders for update) t",
            Reason::NoKey,
        ),
        ("select * from plans for update", Reason::ReferenceRead),
        (
            "with d as (delete from orders where status = 'x' returning *) select count(*) from d",
            Reason::NoKey,
        ),
        (
            "with d as (update plans set name = 'x' returning *) select * from d",
            Reason::ReferenceWrite,
        ),
        ("select my_function(id) from orders", Reason::NoKey),
        (
            "select public.lower(name) from plans",
            Reason::ReferenceRead,
        ),
        ("select \"Lower\"(name) from plans", Reason::ReferenceRead),
        (
            "select * from my_srf(1) f join plans p on p.id = f.id",
            Reason::ReferenceRead,
        ),
        ("select txid_current() from plans", Reason::ReferenceRead),
        (
            "select pg_relation_size('orders') from plans",
            Reason::ReferenceRead,
        ),
        (
            "select * from orders; update plans set name = 'x'",
            Reason::NoKey,
        ),
        ("select * from orders; select 1", Reason::NoKey),
    ] {
        assert_eq!(p(sql), Plan::Coordinator(reason), "{sql}");
    }
    // Never read-only whatever they read: sequences, advisory locks, settings.
    for (sql, reason) in [
        ("select nextval('s'), * from plans", Reason::SequenceDefault),
        ("select currval('s') from orders", Reason::SequenceDefault),
        (
            "select pg_advisory_xact_lock(1) from plans",
            Reason::Utility,
        ),
        (
            "select set_config('a.b', 'c', false) from orders",
            Reason::Utility,
        ),
        ("select * into t2 from orders", Reason::Ddl),
    ] {
        assert_eq!(p(sql), Plan::Coordinator(reason), "{sql}");
    }
}

#[test]
fn qualified_aliased_and_quoted_names() {
    assert_eq!(
        tenant("select * from orders o where o.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders where orders.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders where public.orders.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from public.orders where public.orders.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant(r#"select * from "orders" where "orders"."account_id" = 5"#),
        (1, "5".into())
    );
    assert_eq!(
        tenant(r#"SELECT * FROM ORDERS WHERE ORDERS.ACCOUNT_ID = 5"#),
        (1, "5".into())
    );
    // Quoted names keep their case: "ORDERS" is another (local) table.
    assert_eq!(
        coord(r#"select * from "ORDERS" where account_id = 5"#),
        Reason::NotDistributed
    );
    // Under an alias the table's own name no longer qualifies its columns.
    assert_eq!(
        coord("select * from orders o where orders.account_id = 5"),
        Reason::NoKey
    );
    // Another schema's orders is not public.orders.
    assert_eq!(
        coord("select * from other.orders where account_id = 5"),
        Reason::NotDistributed
    );
}

#[test]
fn only_the_distribution_column_pins() {
    assert_eq!(coord("select * from orders where id = 5"), Reason::NoKey);
    assert_eq!(
        coord("select * from orders o where o.id = 5"),
        Reason::NoKey
    );
    assert_eq!(
        tenant("select * from accounts where id = 5"),
        (1, "5".into())
    );
    // `account_id` is not accounts' distribution column.
    assert_eq!(
        coord("select * from accounts a where a.account_id = 5"),
        Reason::NoKey
    );
}

#[test]
fn and_chains_pin_or_breaks() {
    assert_eq!(
        tenant("select * from orders where status = 'x' and (account_id = 5 and id > 3)"),
        (1, "5".into())
    );
    assert_eq!(
        coord("select * from orders where status = 'x' or account_id = 5"),
        Reason::NoKey
    );
    // An OR of keys of one column names several tenants (equal values too: a masked
    // simple-protocol text cannot tell them apart).
    assert_eq!(
        coord("select * from orders where (account_id = 5 or account_id = 5)"),
        Reason::MultiTenant
    );
    assert_eq!(
        coord("select * from orders where not (account_id = 5)"),
        Reason::NoKey
    );
    assert_eq!(
        tenant("select * from orders where account_id = 5 and (status = 'a' or status = 'b')"),
        (1, "5".into())
    );
    assert_eq!(
        coord("select * from orders where account_id = 5 and account_id = 6"),
        Reason::MultiTenant
    );
    assert_eq!(
        tenant("select * from orders where account_id = 5 and account_id = '5'"),
        (1, "5".into())
    );
}

#[test]
fn joins_carry_the_key_between_colocated_tables() {
    assert_eq!(
        tenant(
            "select * from orders o join accounts a on a.id = o.account_id where o.account_id = 5"
        ),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders o join accounts a on a.id = o.account_id where a.id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders o, items i where i.account_id = o.account_id and o.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders join items using (account_id) where orders.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from orders o join items i on i.account_id = o.account_id join accounts a on a.id = i.account_id where a.id = 9"),
        (1, "9".into())
    );
    // Joined on a non-distribution column: items is not pinned.
    assert_eq!(
        coord("select * from orders o join items i on i.order_id = o.id where o.account_id = 5"),
        Reason::NoKey
    );
    // An equality under OR in ON carries nothing.
    assert_eq!(
        coord("select * from orders o join items i on (i.account_id = o.account_id or i.x = 1) where o.account_id = 5"),
        Reason::NoKey
    );
    // Not colocated.
    assert_eq!(
        coord("select * from orders o join events e on e.tenant = o.note where o.account_id = 5 and e.tenant = 'a'"),
        Reason::MultiTenant
    );
}

#[test]
fn outer_joins_pin_the_nullable_side_only() {
    assert_eq!(
        tenant("select * from orders o left join items i on i.account_id = o.account_id where o.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from items i right join orders o on i.account_id = o.account_id where o.account_id = 5"),
        (1, "5".into())
    );
    // A key in a LEFT JOIN's ON restricts the right side, not the left.
    assert_eq!(
        coord("select * from orders o left join items i on i.account_id = o.account_id and o.account_id = 5"),
        Reason::NoKey
    );
    assert_eq!(
        coord("select * from orders o left join items i on i.account_id = o.account_id and i.account_id = 5"),
        Reason::NoKey
    );
    assert_eq!(
        tenant(
            "select * from orders o left join items i on i.account_id = 5 where o.account_id = 5"
        ),
        (1, "5".into())
    );
    assert_eq!(
        coord("select * from orders o full join items i on i.account_id = o.account_id where o.account_id = 5"),
        Reason::NoKey
    );
}

#[test]
fn subqueries_and_ctes() {
    assert_eq!(
        tenant("select * from orders where account_id = 5 and id in (select order_id from items where account_id = 5)"),
        (1, "5".into())
    );
    assert_eq!(
        coord("select * from orders where account_id = 5 and id in (select order_id from items where account_id = 6)"),
        Reason::MultiTenant
    );
    assert_eq!(
        coord("select * from orders where account_id = 5 and id in (select order_id from items)"),
        Reason::NoKey
    );
    // Correlated: the outer key reaches the inner table.
    assert_eq!(
        tenant("select * from orders o where o.account_id = 5 and exists (select 1 from items i where i.account_id = o.account_id)"),
        (1, "5".into())
    );
    // The subquery's output pins the outer column.
    assert_eq!(
        tenant("select * from orders where account_id in (select id from accounts where id = 5)"),
        (1, "5".into())
    );
    assert_eq!(
        tenant(
            "select * from orders where account_id = (select a.id from accounts a where a.id = 5)"
        ),
        (1, "5".into())
    );
    // Derived tables expose their distribution columns.
    assert_eq!(
        tenant("select * from (select account_id, id from orders) x where x.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("select * from (select * from orders where account_id = 5) x join items i on i.account_id = x.account_id"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("with o as (select * from orders where account_id = 5) select * from o join items i on i.account_id = o.account_id"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("with t(a) as (select account_id from orders) select * from t where a = 5"),
        (1, "5".into())
    );
    assert_eq!(
        coord("with o as (select * from orders) select * from o join items i on i.account_id = 5"),
        Reason::NoKey
    );
    // UNION: each branch on its own.
    assert_eq!(
        tenant("select id from orders where account_id = 5 union all select id from items where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        coord("select id from orders where account_id = 5 union select id from items where account_id = 6"),
        Reason::MultiTenant
    );
    // An unqualified column in a subquery means the subquery's own table.
    assert_eq!(
        coord("select * from orders o where exists (select 1 from plans where account_id = 5)"),
        Reason::NoKey
    );
    // A subquery hidden in a function argument is still seen.
    assert_eq!(
        coord("select coalesce((select max(id) from items), 0) from orders where account_id = 5"),
        Reason::NoKey
    );
}

#[test]
fn inserts() {
    assert_eq!(
        tenant("insert into orders (account_id, id) values (5, 1)"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("insert into orders (account_id, id) values (5, 1), (5, 2)"),
        (1, "5".into())
    );
    assert_eq!(
        coord("insert into orders (account_id, id) values (5, 1), (6, 2)"),
        Reason::MultiTenant
    );
    assert_eq!(coord("insert into orders (id) values (1)"), Reason::NoKey);
    assert_eq!(coord("insert into orders values (5, 1)"), Reason::NoKey);
    assert_eq!(
        coord("insert into orders (account_id, id) values (5 + 1, 1)"),
        Reason::NoKey
    );
    assert_eq!(
        coord("insert into orders (account_id, id) values (5, 1), (default, 2)"),
        Reason::NoKey
    );
    assert_eq!(coord("insert into orders default values"), Reason::NoKey);
    // INSERT … SELECT within one tenant.
    assert_eq!(
        tenant("insert into items (account_id, id, order_id) select account_id, id, id from orders where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("insert into items (account_id, id) select 5, 1"),
        (1, "5".into())
    );
    assert_eq!(
        coord("insert into items (account_id, id) select account_id, id from orders"),
        Reason::NoKey
    );
    assert_eq!(
        coord("insert into items (account_id, id) select o.account_id, 1 from orders o where o.account_id = 6 and exists (select 1 from items where account_id = 5)"),
        Reason::MultiTenant
    );
    // RETURNING and ON CONFLICT.
    assert_eq!(
        tenant(
            r#"insert into "orders" as o ("account_id", "id") values (5, 1) on conflict (id) do update set status = excluded.status returning "o"."id""#
        ),
        (1, "5".into())
    );
}

/// Django 5.2's `bulk_create` on PostgreSQL: `INSERT … SELECT * FROM UNNEST(arrays)`, one
/// array per column (found by tests/it/django_multitenant.rs: django-multitenant's
/// `bulk_create` of one tenant's rows went to the coordinator). Pinned when every element
/// of the distribution column's array is one value.
#[test]
fn bulk_create_unnest() {
    let django = |a: &str| {
        format!(
            r#"INSERT INTO "orders" ("account_id", "id", "status") SELECT * FROM UNNEST(('{a}'::int2[])::bigint[], ('{{1,2,3}}'::int2[])::bigint[], ('{{new,new,old}}')::varchar[]) RETURNING "orders"."id""#
        )
    };
    assert_eq!(tenant(&django("{5,5,5}")), (1, "5".into()));
    assert_eq!(
        tenant(
            r#"insert into orders (id, account_id) select * from unnest('{1,2}'::bigint[], '{"5", 5}'::bigint[])"#
        ),
        (1, "5".into())
    );
    assert_eq!(
        tenant("insert into events (tenant, id) select * from unnest('{acme,acme}'::text[], '{1,2}'::bigint[]) with ordinality"),
        (2, "acme".into())
    );
    // Different tenants, a NULL, no rows, an unknown column position: not pinned.
    for sql in [
        django("{5,6,5}"),
        django("{5,NULL,5}"),
        django("{}"),
        "insert into orders (account_id, id) select * from orders o, unnest('{5}'::bigint[])"
            .into(),
        "insert into orders (account_id, id) select * from unnest(array[5, 5], '{1,2}'::bigint[])"
            .into(),
    ] {
        assert_eq!(coord(&sql), Reason::NoKey, "{sql}");
    }
    // A parameter (extended protocol): resolved from the bound array.
    match p("insert into orders (account_id, id) select * from unnest($1::bigint[], $2::bigint[])")
    {
        Plan::Tenant {
            key: KeySource::ParamElements(0),
            also,
            ..
        } if also.is_empty() => {}
        other => panic!("expected a tenant plan keyed by $1's elements, got {other:?}"),
    }
    // The cache plans the masked text once and reads each text's array.
    let planner = Planner::new(16);
    let cat = catalog();
    for (arr, key) in [
        ("{5,5,5}", Some("5")),
        ("{7,7,7}", Some("7")),
        ("{7,8,7}", None),
    ] {
        let r = planner.plan_simple(&django(arr), &cat, 1);
        assert_eq!(r.key.as_deref(), key, "{arr}: {:?}", r.plan);
        if key.is_none() {
            assert_eq!(*r.plan, Plan::Coordinator(Reason::NoKey), "{arr}");
        }
    }
}

#[test]
fn sequence_defaults() {
    assert_eq!(
        coord("insert into items (account_id) values (5)"),
        Reason::SequenceDefault
    );
    assert_eq!(
        coord("insert into items (account_id, id) values (5, default)"),
        Reason::SequenceDefault
    );
    assert_eq!(
        coord("insert into items values (5, 1)"),
        Reason::SequenceDefault
    );
    assert_eq!(
        tenant("insert into items (account_id, id) values (5, 1)"),
        (1, "5".into())
    );
    assert_eq!(
        coord("select nextval('items_id_seq')"),
        Reason::SequenceDefault
    );
    assert_eq!(
        coord("insert into orders (account_id, id) values (5, nextval('orders_id_seq'))"),
        Reason::SequenceDefault
    );
}

#[test]
fn updates_and_deletes() {
    assert_eq!(
        tenant("update orders set status = 'x' where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("update orders o set status = 'x' where o.account_id = 5 and o.id = 1"),
        (1, "5".into())
    );
    assert_eq!(coord("update orders set status = 'x'"), Reason::NoKey);
    assert_eq!(
        coord("update orders set status = 'x' where id = 1"),
        Reason::NoKey
    );
    assert_eq!(
        tenant("update orders set status = 'x' from items where items.account_id = orders.account_id and orders.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("delete from orders where account_id = 5 returning id"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("delete from orders o using items i where i.account_id = o.account_id and i.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(coord("delete from orders"), Reason::NoKey);
    assert_eq!(
        tenant("with d as (delete from items where account_id = 5 returning id) select count(*) from d"),
        (1, "5".into())
    );
}

#[test]
fn reference_and_local_tables() {
    assert_eq!(
        tenant("select * from orders o join plans p on p.id = o.plan_id where o.account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(coord("select * from plans"), Reason::ReferenceRead);
    assert_eq!(
        coord("select * from plans where id = 5"),
        Reason::ReferenceRead
    );
    assert_eq!(
        coord("insert into plans (id) values (1)"),
        Reason::ReferenceWrite
    );
    assert_eq!(coord("update plans set x = 1"), Reason::ReferenceWrite);
    assert_eq!(
        coord("delete from plans where id = 1"),
        Reason::ReferenceWrite
    );
    assert_eq!(
        coord("insert into plans (id) select account_id from orders where account_id = 5"),
        Reason::ReferenceWrite
    );
    assert_eq!(
        coord("select * from django_session"),
        Reason::NotDistributed
    );
    assert_eq!(
        coord("select * from orders o join auth_user u on u.id = o.user_id where o.account_id = 5"),
        Reason::NotDistributed
    );
    assert_eq!(
        coord("insert into auth_user (id) values (1)"),
        Reason::NotDistributed
    );
}

#[test]
fn no_table_is_anywhere() {
    for sql in [
        "select 1",
        "select now()",
        "select $1::int",
        "SELECT 1; SELECT 2",
        "select current_setting('server_version_num')",
        "",
        "/* nothing */",
        "select * from generate_series(1, 3)",
        "values (1), (2)",
    ] {
        assert_eq!(p(sql), Plan::Anywhere, "{sql}");
    }
}

#[test]
fn statement_kinds() {
    use TxControl::*;
    for (sql, tx) in [
        ("BEGIN", Begin),
        ("begin transaction isolation level serializable", Begin),
        ("START TRANSACTION", Begin),
        ("COMMIT", Commit),
        ("END", Commit),
        ("ROLLBACK", Rollback),
        ("ABORT", Rollback),
        (r#"SAVEPOINT "s123_x1""#, Savepoint),
        (r#"RELEASE SAVEPOINT "s123_x1""#, Release),
        (r#"ROLLBACK TO SAVEPOINT "s123_x1""#, RollbackTo),
        ("SET LOCAL work_mem = '64MB'", SetLocal),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SetLocal),
        ("SET CONSTRAINTS ALL DEFERRED", SetLocal),
    ] {
        assert_eq!(p(sql), Plan::Transaction(tx), "{sql}");
    }
    for (sql, r) in [
        ("CREATE TABLE t (id int)", Reason::Ddl),
        ("ALTER TABLE orders ADD COLUMN x int", Reason::Ddl),
        ("DROP TABLE orders", Reason::Ddl),
        ("TRUNCATE orders", Reason::Ddl),
        ("GRANT SELECT ON orders TO bob", Reason::Ddl),
        (
            "CREATE INDEX CONCURRENTLY i ON orders (status)",
            Reason::Ddl,
        ),
        ("COMMENT ON TABLE orders IS 'x'", Reason::Ddl),
        (
            "select * into t2 from orders where account_id = 5",
            Reason::Ddl,
        ),
        ("VACUUM orders", Reason::Utility),
        ("ANALYZE orders", Reason::Utility),
        ("SHOW work_mem", Reason::Utility),
        ("SET work_mem = '64MB'", Reason::Utility),
        ("SET SESSION work_mem = '64MB'", Reason::Utility),
        ("RESET ALL", Reason::Utility),
        ("DISCARD ALL", Reason::Utility),
        ("LISTEN chan", Reason::Utility),
        ("NOTIFY chan", Reason::Utility),
        ("COPY orders FROM STDIN", Reason::Copy),
        (
            "COPY (select * from orders where account_id = 5) TO STDOUT",
            Reason::Copy,
        ),
        ("COMMIT PREPARED 'x'", Reason::Utility),
        ("select citus_version()", Reason::Utility),
        ("select set_config('a.b', '1', false)", Reason::Utility),
        ("this is not sql", Reason::ParseFailure),
        ("select * from orders where", Reason::ParseFailure),
    ] {
        assert_eq!(p(sql), Plan::Coordinator(r), "{sql}");
    }
}

#[test]
fn explain_follows_the_statement() {
    assert_eq!(
        tenant("EXPLAIN select * from orders where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        tenant("EXPLAIN ANALYZE select * from orders where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(coord("EXPLAIN select * from orders"), Reason::NoKey);
    assert_eq!(p("EXPLAIN select 1"), Plan::Anywhere);
}

#[test]
fn several_statements_combine() {
    assert_eq!(
        tenant("update orders set status = 'a' where account_id = 5; select * from items where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        coord(
            "select * from orders where account_id = 5; select * from items where account_id = 6"
        ),
        Reason::MultiTenant
    );
    assert_eq!(
        coord("select * from orders where account_id = 5; select * from plans"),
        Reason::ReferenceRead
    );
    assert_eq!(
        tenant("select 1; select * from orders where account_id = 5"),
        (1, "5".into())
    );
    assert_eq!(
        coord("BEGIN; update orders set status = 'a' where account_id = 5; COMMIT"),
        Reason::TransactionControl
    );
    assert_eq!(
        coord("select * from orders where account_id = 5; select * from events where tenant = 'a'"),
        Reason::MultiTenant
    );
    assert_eq!(
        p("select * from orders where account_id = $1; select * from items where account_id = $2"),
        Plan::Tenant {
            colocation: 1,
            dist_type: DistType::Int8,
            key: KeySource::Param(0),
            also: vec![KeySource::Param(1)],
            reason: Reason::TenantKey,
            read_only: true,
        }
    );
}

#[test]
fn parameters_that_must_agree_are_checked_at_run_time() {
    let plan = p("select * from orders o join items i on i.order_id = o.id where o.account_id = $1 and i.account_id = $2");
    assert_eq!(
        plan,
        Plan::Tenant {
            colocation: 1,
            dist_type: DistType::Int8,
            key: KeySource::Param(0),
            also: vec![KeySource::Param(1)],
            reason: Reason::TenantKey,
            read_only: true,
        }
    );
    let params = ["5", "5"];
    let get = |k: &KeySource| match k {
        KeySource::Param(i) => params.get(*i).copied(),
        KeySource::Literal(_) | KeySource::ParamElements(_) => None,
    };
    assert_eq!(plan.tenant_value(get), TenantValue::Value("5"));
    let params2 = ["5", "6"];
    let get2 = |k: &KeySource| match k {
        KeySource::Param(i) => params2.get(*i).copied(),
        KeySource::Literal(_) | KeySource::ParamElements(_) => None,
    };
    assert_eq!(plan.tenant_value(get2), TenantValue::Conflict);
    assert_eq!(plan.tenant_value(|_| None::<&str>), TenantValue::Unknown);
    assert_eq!(
        Plan::Anywhere.tenant_value(|_| Some(1)),
        TenantValue::NotTenant
    );
    // A literal and a parameter.
    let plan = p("select * from orders where account_id = 5 and account_id = $1");
    assert_eq!(
        plan.key_sources().cloned().collect::<Vec<_>>(),
        vec![lit("5"), KeySource::Param(0)]
    );
}

#[test]
fn hints() {
    let hinted = |sql: &str| match p(sql) {
        Plan::Tenant {
            colocation,
            key: KeySource::Literal(k),
            reason: Reason::Hint,
            ..
        } => (colocation, k),
        other => panic!("{sql}: {other:?}"),
    };
    assert_eq!(
        hinted("select * from orders /* tenant_id=42 */"),
        (1, "42".into())
    );
    assert_eq!(
        hinted("/*tenant_id='acme'*/ select * from events where kind = 'x'"),
        (2, "acme".into())
    );
    assert_eq!(
        hinted("select * from orders o join items i on i.order_id = o.id /*db_driver='psycopg2',tenant_id='42'*/"),
        (1, "42".into())
    );
    // A key in the statement wins; it must agree with the hint where both count.
    assert_eq!(
        tenant("select * from orders where account_id = 7 /* tenant_id=42 */"),
        (1, "7".into())
    );
    assert_eq!(
        coord("select * from orders o, items i where o.account_id = 7 /* tenant_id=42 */"),
        Reason::MultiTenant
    );
    assert_eq!(
        p("select * from plans /* tenant_id=42 */"),
        Plan::HintTenant { key: lit("42") }
    );
    assert_eq!(
        p("select 1 /* tenant_id=42 */"),
        Plan::HintTenant { key: lit("42") }
    );
    assert_eq!(
        p("select * from orders /* tenant_id=$1 */"),
        Plan::Tenant {
            colocation: 1,
            dist_type: DistType::Int8,
            key: KeySource::Param(0),
            also: vec![],
            reason: Reason::Hint,
            read_only: true,
        }
    );
    // Hints never move what must stay on the coordinator.
    assert_eq!(
        coord("select * from django_session /* tenant_id=42 */"),
        Reason::NotDistributed
    );
    assert_eq!(
        coord("update plans set x = 1 /* tenant_id=42 */"),
        Reason::ReferenceWrite
    );
    assert_eq!(
        coord("create table x (id int) /* tenant_id=42 */"),
        Reason::Ddl
    );
    assert_eq!(
        coord("select * from orders o join events e on true /* tenant_id=42 */"),
        Reason::MultiTenant
    );
    // A hint inside a string, or a -- comment, is no hint.
    assert_eq!(
        coord("select * from orders where note = '/* tenant_id=42 */'"),
        Reason::NoKey
    );
    assert_eq!(coord("select * from orders -- tenant_id=42"), Reason::NoKey);
}

#[test]
fn django_style_sql() {
    assert_eq!(
        tenant(
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."account_id" IN (42) LIMIT 21"#
        ),
        (1, "42".into())
    );
    assert_eq!(
        tenant(
            r#"INSERT INTO "shop_order" ("id", "account_id") VALUES (1, 42) RETURNING "shop_order"."id""#
        ),
        (1, "42".into())
    );
    assert_eq!(
        p(r#"SAVEPOINT "s123_x1""#),
        Plan::Transaction(TxControl::Savepoint)
    );
}

#[test]
fn deep_expressions_do_not_overflow() {
    // Up to the limit the planner parses and walks them (on a test thread's 2 MiB stack);
    // beyond it the text goes to the coordinator unparsed.
    let n = plan::MAX_OPERATORS - 8;
    let shapes = [
        format!(
            "select * from orders where account_id = 5 and x = {}",
            vec!["1"; n - 2].join(" + ")
        ),
        format!(
            "select * from orders where account_id = 5 {}",
            " and x = 1".repeat((n - 1) / 2)
        ),
        format!(
            "select * from orders where account_id = 5 and ({})",
            vec!["x = 1"; (n - 1) / 2].join(" or ")
        ),
        format!(
            "select x{} from orders where account_id = 5",
            "::text".repeat((n - 1) / 2)
        ),
        format!(
            "select * from orders where account_id = 5 and x = 'a'{}",
            " || 'a'".repeat(n / 2 - 1)
        ),
    ];
    for sql in &shapes {
        assert!(
            crate::router::mask::mask_spans(sql).operators <= plan::MAX_OPERATORS,
            "{sql}"
        );
        assert!(
            matches!(
                p(sql),
                Plan::Tenant { .. } | Plan::Coordinator(Reason::NoKey)
            ),
            "{sql}"
        );
    }
    let over = format!(
        "select * from orders where account_id = 5 and x = {}",
        vec!["1"; n + 10].join(" + ")
    );
    assert_eq!(p(&over), Plan::Coordinator(Reason::ParseFailure));
    let nested = format!("select {}1{}", "(".repeat(500), ")".repeat(500));
    assert_eq!(p(&nested), Plan::Coordinator(Reason::ParseFailure));
    let subqueries = |k: usize| {
        format!(
            "select * from orders where account_id in {}5{}",
            "(select ".repeat(k),
            ")".repeat(k)
        )
    };
    assert_eq!(p(&subqueries(100)), Plan::Coordinator(Reason::ParseFailure));
    // The deepest nesting that still parses.
    let mut k = 1;
    while p(&subqueries(k + 1)) != Plan::Coordinator(Reason::ParseFailure) {
        k += 1;
    }
    assert!(k >= 5, "{k}");
    let parens = |k: usize| {
        format!(
            "select * from orders where account_id = {}5{}",
            "(".repeat(k),
            ")".repeat(k)
        )
    };
    let mut k = 1;
    while p(&parens(k + 1)) != Plan::Coordinator(Reason::ParseFailure) {
        k += 1;
    }
    assert!(k >= 10, "{k}");
    let nots = format!("select * from orders where {} true", "not ".repeat(100));
    assert_eq!(p(&nots), Plan::Coordinator(Reason::ParseFailure));
}

fn check(expect: Expect, plan: &Plan, key: Option<&str>, sql: &str) {
    match expect {
        Expect::Tenant(g, v) => match plan {
            Plan::Tenant { colocation, .. } if *colocation == g && key == Some(v) => {}
            other => panic!("{sql}\n  expected tenant {g}/{v}, got {other:?} key {key:?}"),
        },
        Expect::Param(g, i) => match plan {
            Plan::Tenant {
                colocation,
                key: KeySource::Param(k),
                ..
            } if *colocation == g && *k == i => {}
            other => panic!("{sql}\n  expected tenant {g}/${i}, got {other:?}"),
        },
        Expect::HintTenant(v) => match plan {
            Plan::HintTenant { .. } if key == Some(v) => {}
            other => panic!("{sql}\n  expected hint {v}, got {other:?} key {key:?}"),
        },
        Expect::Coordinator(r) => assert_eq!(*plan, Plan::Coordinator(r), "{sql}"),
        Expect::ReadOnly(r) => assert_eq!(*plan, Plan::ReadOnly(r), "{sql}"),
        Expect::Anywhere => assert_eq!(*plan, Plan::Anywhere, "{sql}"),
        Expect::Transaction(t) => assert_eq!(*plan, Plan::Transaction(t), "{sql}"),
    }
}

fn direct_key(plan: &Plan) -> Option<String> {
    match plan.tenant_value(|k| match k {
        KeySource::Literal(s) => Some(s.clone()),
        KeySource::Param(_) | KeySource::ParamElements(_) => None,
    }) {
        TenantValue::Value(v) => Some(v),
        _ => None,
    }
}

#[test]
fn corpus_plans_directly() {
    assert!(CORPUS.len() >= 50);
    let cat = catalog();
    for &(sql, expect) in CORPUS {
        let plan = plan(sql, &cat);
        check(expect, &plan, direct_key(&plan).as_deref(), sql);
    }
}

#[test]
fn corpus_plans_through_the_cache() {
    let cat = catalog();
    let planner = Planner::new(1000);
    for round in 0..2 {
        for &(sql, expect) in CORPUS {
            if matches!(expect, Expect::Param(..)) {
                let plan = planner.plan_extended(sql, &cat, 1);
                check(expect, &plan, None, sql);
            } else {
                let r = planner.plan_simple(sql, &cat, 1);
                check(
                    expect,
                    &r.plan,
                    r.key.as_deref(),
                    &format!("{sql} (round {round})"),
                );
            }
        }
    }
    let (hits, misses, len) = planner.stats();
    assert_eq!(hits as usize, CORPUS.len());
    assert_eq!(misses as usize, CORPUS.len());
    assert!(len <= CORPUS.len());
}

#[test]
fn cached_plans_serve_other_literals() {
    let cat = catalog();
    let planner = Planner::new(100);
    let a = planner.plan_simple(
        r#"SELECT * FROM "orders" WHERE "orders"."account_id" = 42 LIMIT 21"#,
        &cat,
        1,
    );
    let b = planner.plan_simple(
        r#"SELECT * FROM "orders" WHERE "orders"."account_id" = 43 LIMIT 5"#,
        &cat,
        1,
    );
    assert_eq!(a.key.as_deref(), Some("42"));
    assert_eq!(b.key.as_deref(), Some("43"));
    assert!(Arc::ptr_eq(&a.plan, &b.plan));
    assert_eq!(planner.stats(), (1, 1, 1));
    // Masked literals that must agree are compared on every call.
    let same = planner.plan_simple("select * from orders o, items i where o.account_id = 1 and i.account_id = 1 and i.account_id = o.account_id", &cat, 1);
    assert_eq!(same.key.as_deref(), Some("1"));
    let diff = planner.plan_simple("select * from orders o, items i where o.account_id = 1 and i.account_id = 2 and i.account_id = o.account_id", &cat, 1);
    assert_eq!(*diff.plan, Plan::ReadOnly(Reason::MultiTenant));
    assert_eq!(diff.key, None);
    let diff_write = planner.plan_simple("delete from items i using orders o where o.account_id = 1 and i.account_id = 2 and i.account_id = o.account_id", &cat, 1);
    assert_eq!(*diff_write.plan, Plan::Coordinator(Reason::MultiTenant));
    // Hints of different tenants share the plan, not the value.
    let h1 = planner.plan_simple("select * from orders /* tenant_id=42 */", &cat, 1);
    let h2 = planner.plan_simple(
        "select * from orders /*tenant_id='43',route='/x/7'*/",
        &cat,
        1,
    );
    assert_eq!(
        (h1.key.as_deref(), h2.key.as_deref()),
        (Some("42"), Some("43"))
    );
    assert!(Arc::ptr_eq(&h1.plan, &h2.plan));
    // E'' strings are unescaped on the cached path too.
    let e = planner.plan_simple(r"select * from events where tenant = E'o\'b'", &cat, 1);
    assert_eq!(e.key.as_deref(), Some("o'b"));
    let e = planner.plan_simple(r"select * from events where tenant = E'x\ty'", &cat, 1);
    assert_eq!(e.key.as_deref(), Some("x\ty"));
}

#[test]
fn both_paths_read_literals_alike() {
    let cat = catalog();
    let planner = Planner::new(100);
    for (sql, want) in [
        (r"select * from events where tenant = 'a\b'", r"a\b"),
        ("select * from events where tenant = 'it''s'", "it's"),
        (r"select * from events where tenant = E'it\'s\n'", "it's\n"),
        ("select * from events where tenant = $q$a'b$q$", "a'b"),
        ("select * from events where tenant = 'ünï'", "ünï"),
        (
            "select * from orders where account_id = -9223372036854775808",
            "-9223372036854775808",
        ),
        ("select * from orders where account_id = +5", "5"),
    ] {
        let direct = p(sql);
        assert_eq!(direct.key_sources().next(), Some(&lit(want)), "{sql}");
        let r = planner.plan_simple(sql, &cat, 1);
        assert_eq!(r.key.as_deref(), Some(want), "{sql}");
    }
}

#[test]
fn texts_whose_mask_does_not_parse_are_planned_in_full() {
    let cat = catalog();
    let planner = Planner::new(100);
    let sql = "select * from orders where account_id = 5 and note::varchar(10) = 'x'";
    for _ in 0..2 {
        let r = planner.plan_simple(sql, &cat, 1);
        assert_eq!(r.key.as_deref(), Some("5"));
    }
    let r = planner.plan_simple(
        "select * from orders where account_id = 6 and note::varchar(10) = 'x'",
        &cat,
        1,
    );
    assert_eq!(r.key.as_deref(), Some("6"));
    let ddl = planner.plan_simple("create table t (x varchar(10))", &cat, 1);
    assert_eq!(*ddl.plan, Plan::Coordinator(Reason::Ddl));
}

#[test]
fn extended_statements_are_cached_by_text() {
    let cat = catalog();
    let planner = Planner::new(100);
    let sql = "select * from orders where account_id = $1";
    let a = planner.plan_extended(sql, &cat, 1);
    let b = planner.plan_extended(sql, &cat, 1);
    assert!(Arc::ptr_eq(&a, &b));
    // Literal texts are exact keys: no masking.
    let c = planner.plan_extended("select * from orders where account_id = 5", &cat, 1);
    assert_eq!(c.key_sources().next(), Some(&lit("5")));
    assert_eq!(planner.stats(), (1, 2, 2));
}

/// Statement texts over MAX_CACHED_TEXT are planned, routed as any other, and never
/// kept: the cache is shared by every client.
#[test]
fn long_statement_texts_are_not_cached() {
    let cat = catalog();
    let planner = Planner::new(100);
    let pad = "x".repeat(super::cache::MAX_CACHED_TEXT);
    let sql = format!("select * from orders where account_id = $1 /* {pad} */");
    let a = planner.plan_extended(&sql, &cat, 1);
    let b = planner.plan_extended(&sql, &cat, 1);
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(a, b);
    // The simple protocol's key is the masked text (comments and literals gone): a long
    // one is made of what stays, here an identifier.
    let simple = format!("select 1 as \"{pad}\" from orders where account_id = 7");
    let r = planner.plan_simple(&simple, &cat, 1);
    assert_eq!(r.key.as_deref(), Some("7"));
    let r = planner.plan_simple(&simple, &cat, 1);
    assert_eq!(r.key.as_deref(), Some("7"));
    assert_eq!(planner.stats(), (0, 4, 0));
}

/// A named statement too long for the shared cache is planned once per catalog version
/// and tenant hint, and kept with the statement: a client binding it again and again does
/// not make pgtenant plan its text at each Bind.
#[test]
fn long_named_statements_are_planned_once() {
    let cat = catalog();
    let planner = Planner::new(100);
    let memo = super::PlanMemo::default();
    let pad = "x".repeat(super::cache::MAX_CACHED_TEXT);
    let sql = format!("select * from orders where account_id = $1 /* {pad} */");
    let a = planner.plan_named(&sql, None, &cat, 1, &memo);
    let b = planner.plan_named(&sql, None, &cat, 1, &memo);
    assert!(Arc::ptr_eq(&a, &b), "the second Bind uses the kept plan");
    assert_eq!(a.key_sources().next(), Some(&KeySource::Param(0)));
    assert_eq!(
        planner.stats(),
        (1, 1, 0),
        "one plan, one hit, nothing shared"
    );
    // Another hint or catalog version is planned afresh (and kept in its place).
    let hint = " /* account_id = 9 */";
    let c = planner.plan_named(&sql, Some(hint), &cat, 1, &memo);
    assert!(!Arc::ptr_eq(&a, &c));
    assert!(Arc::ptr_eq(
        &c,
        &planner.plan_named(&sql, Some(hint), &cat, 1, &memo)
    ));
    let d = planner.plan_named(&sql, Some(hint), &cat, 2, &memo);
    assert!(!Arc::ptr_eq(&c, &d));
    assert_eq!(planner.stats().1, 3);
    // Short texts use the shared cache, as plan_extended does.
    let short = "select * from orders where account_id = $1";
    let e = planner.plan_named(short, None, &cat, 2, &memo);
    assert!(Arc::ptr_eq(&e, &planner.plan_extended(short, &cat, 2)));
}

#[test]
fn a_new_catalog_version_replans() {
    let mut cat = catalog();
    let planner = Planner::new(100);
    let sql = "select * from newt where k = 5";
    assert_eq!(
        *planner.plan_simple(sql, &cat, 1).plan,
        Plan::Coordinator(Reason::NotDistributed)
    );
    cat.insert(crate::citus::TableInfo {
        schema: "public".into(),
        name: "newt".into(),
        kind: crate::citus::TableKind::Distributed,
        dist_column: "k".into(),
        dist_type: DistType::Int4,
        colocation_id: 9,
        int_sequence_columns: vec![],
    });
    // Same version: the cached plan stands.
    assert_eq!(
        *planner.plan_simple(sql, &cat, 1).plan,
        Plan::Coordinator(Reason::NotDistributed)
    );
    let r = planner.plan_simple(sql, &cat, 2);
    assert!(matches!(*r.plan, Plan::Tenant { colocation: 9, .. }));
    assert_eq!(planner.stats().2, 1);
}

#[test]
fn the_cache_is_bounded() {
    let cat = catalog();
    let planner = Planner::new(64);
    for i in 0..1000 {
        planner.plan_simple(
            &format!("select c{i} from orders where account_id = 1"),
            &cat,
            1,
        );
    }
    let (_, misses, len) = planner.stats();
    assert_eq!(misses, 1000);
    assert!(len <= 64, "{len}");
    // Recently used entries survive.
    let hot = "select hot from orders where account_id = 1";
    planner.plan_simple(hot, &cat, 1);
    for i in 0..40 {
        planner.plan_simple(hot, &cat, 1);
        planner.plan_simple(
            &format!("select d{i} from orders where account_id = 1"),
            &cat,
            1,
        );
    }
    let before = planner.stats().0;
    planner.plan_simple(hot, &cat, 1);
    assert_eq!(planner.stats().0, before + 1);
    // Capacity 0: no caching at all.
    let none = Planner::new(0);
    none.plan_simple(hot, &cat, 1);
    none.plan_simple(hot, &cat, 1);
    assert_eq!(none.stats(), (0, 2, 0));
}

#[test]
fn the_planner_is_shared_between_threads() {
    let cat = catalog();
    let planner = Planner::new(1000);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (planner, cat) = (&planner, &cat);
            s.spawn(move || {
                for i in 0..200 {
                    let r = planner.plan_simple(
                        &format!("select * from orders where account_id = {}", t * 1000 + i),
                        cat,
                        1,
                    );
                    assert_eq!(r.key, Some((t * 1000 + i).to_string()));
                }
            });
        }
    });
    assert_eq!(planner.stats().2, 1);
}

/// `plan_cache_size` reaches the planner: 0 caches nothing (every plan a miss, the
/// answers unchanged), a size bounds what is kept.
#[test]
fn router_capacity_comes_from_plan_cache_size() {
    let cat = catalog();
    let none = super::Router::with_capacity(0);
    let some = super::Router::with_capacity(10_000);
    for _ in 0..2 {
        for &(sql, expect) in CORPUS {
            if matches!(expect, Expect::Param(..)) {
                continue;
            }
            for r in [&none, &some] {
                let routed = r.planner().plan_simple(sql, &cat, 1);
                check(expect, &routed.plan, routed.key.as_deref(), sql);
            }
        }
    }
    let (hits, _, len) = none.planner().stats();
    assert_eq!((hits, len), (0, 0));
    let (hits, _, len) = some.planner().stats();
    assert!(hits > 0 && len > 0);
}

/// Found by the `plan` fuzz target: with the plan cache, a simple-protocol text whose hint
/// names a parameter (`/* tenant_id=$1 */`, no value in the simple protocol) was routed
/// to the tenant `$1`; uncached it is a statement no key pins. Both must agree.
#[test]
fn cached_and_uncached_agree_on_parameter_hints() {
    let cat = catalog();
    for sql in [
        "select * from orders /* tenant_id=$1 */",
        "select * from events /* tenant_id=$1 */",
        "select * from orders where account_id = 5 /* tenant_id=$2 */",
        "select 1 /* tenant_id=$1 */",
        "select * from events /* tenant_id=%241 */",
    ] {
        let direct = Planner::new(0).plan_simple(sql, &cat, 1);
        let cached = Planner::new(64);
        let miss = cached.plan_simple(sql, &cat, 1);
        let hit = cached.plan_simple(sql, &cat, 1);
        assert_eq!(miss, hit, "{sql}");
        assert_eq!(direct.key, miss.key, "{sql}");
        if direct.key.is_none() {
            assert_eq!(direct.plan, miss.plan, "{sql}");
        }
    }
    // `%24` is a %-escaped `$`: the tenant named `$1`, not a parameter.
    let r = Planner::new(64).plan_simple("select * from events /* tenant_id=%241 */", &cat, 1);
    assert_eq!(r.key.as_deref(), Some("$1"));
}

/// Found by the `plan` fuzz target: two read-only statements of different tenants in one
/// text were `Coordinator(MultiTenant)` when planned as written but `ReadOnly(MultiTenant)`
/// through the plan cache (keys as parameters, checked at run time). Reads are reads.
#[test]
fn several_tenants_in_reads_only_are_read_only() {
    let cat = catalog();
    let sql = "select * from orders where account_id = 5; select * from items where account_id = 6";
    assert_eq!(plan(sql, &cat), Plan::ReadOnly(Reason::MultiTenant));
    let groups =
        "select * from orders where account_id = 5; select * from events where tenant = 'a'";
    assert_eq!(plan(groups, &cat), Plan::ReadOnly(Reason::MultiTenant));
    let write = "select * from orders where account_id = 5; delete from items where account_id = 6";
    assert_eq!(plan(write, &cat), Plan::Coordinator(Reason::MultiTenant));
    let direct = Planner::new(0).plan_simple(sql, &cat, 1);
    let cached = Planner::new(64).plan_simple(sql, &cat, 1);
    assert_eq!(direct, cached);
}

/// One statement's analysis is bounded whatever its shape: a wide CTE named thousands of
/// times (each reference copied its columns: quadratic time and memory, gigabytes for a
/// 32 KB text) and thousands of FROM items with thousands of column references (each
/// looked up in every item) stop at the analysis's work budget and go to the coordinator.
#[test]
fn pathological_statements_are_analysed_in_bounded_work() {
    let cat = catalog();
    let n = 3000;
    let cols = vec!["a"; n].join(",");
    let refs = vec!["c"; n].join(",");
    let sql = format!("with c as (select {cols}) select 1 from {refs}");
    let t = std::time::Instant::now();
    let p = plan(&sql, &cat);
    let took = t.elapsed();
    assert!(matches!(p, Plan::Coordinator(_)), "{p:?}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");

    let tables = vec!["orders"; n].join(",");
    let sql = format!("select {cols} from {tables}");
    let t = std::time::Instant::now();
    let p = plan(&sql, &cat);
    let took = t.elapsed();
    assert!(matches!(p, Plan::Coordinator(_)), "{p:?}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");

    // Ordinary statements are far from the budget and keep their routing.
    let p = plan(
        "with x as (select * from orders where account_id = 5) select * from x, x y",
        &cat,
    );
    assert_eq!(p.key_sources().next(), Some(&lit("5")));
}

/// Texts over MAX_PLANNED_TEXT are not planned: the coordinator takes them.
#[test]
fn texts_too_long_to_plan_go_to_the_coordinator() {
    let cat = catalog();
    let pad = "x".repeat(super::plan::MAX_PLANNED_TEXT);
    let sql = format!("select * from orders where account_id = 5 /* {pad} */");
    assert_eq!(plan(&sql, &cat), Plan::Coordinator(Reason::ParseFailure));
}
