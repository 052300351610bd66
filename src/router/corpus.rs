//! A corpus of statements as Django, django-multitenant and psql send them, with the plan
//! each must get, over a sample catalog. Shared by the router's tests and `benches/router.rs`.
//!
//! The catalog: colocation group 1 (int8 keys) holds `accounts(id)`, `orders(account_id)`,
//! `items(account_id; int sequence id)` and Django's `shop_account(id)`,
//! `shop_order(account_id; int sequence id)`, `shop_orderitem(account_id; int sequence id)`;
//! group 2 (text) holds `events(tenant)`; group 3 (uuid) holds `devices(org)`; `plans` and
//! `shop_plan` are reference tables. Anything else (`auth_user`, `django_session`, …) is a
//! plain local table.
use crate::citus::catalog::Tables;
use crate::citus::{DistType, TableInfo, TableKind};

use super::plan::{Reason, TxControl};

/// The sample catalog.
pub fn catalog() -> Tables {
    let mut t = Tables::new();
    let dist = |name: &str, col: &str, ty: DistType, group: u32, seq: &[&str]| TableInfo {
        schema: "public".into(),
        name: name.into(),
        kind: TableKind::Distributed,
        dist_column: col.into(),
        dist_type: ty,
        colocation_id: group,
        int_sequence_columns: seq.iter().map(|s| s.to_string()).collect(),
    };
    t.insert(dist("accounts", "id", DistType::Int8, 1, &[]));
    t.insert(dist("orders", "account_id", DistType::Int8, 1, &[]));
    t.insert(dist("items", "account_id", DistType::Int8, 1, &["id"]));
    t.insert(dist("shop_account", "id", DistType::Int8, 1, &[]));
    t.insert(dist("shop_order", "account_id", DistType::Int8, 1, &["id"]));
    t.insert(dist(
        "shop_orderitem",
        "account_id",
        DistType::Int8,
        1,
        &["id"],
    ));
    t.insert(dist("events", "tenant", DistType::Text, 2, &[]));
    t.insert(dist("devices", "org", DistType::Uuid, 3, &[]));
    for name in ["plans", "shop_plan"] {
        t.insert(TableInfo {
            schema: "public".into(),
            name: name.into(),
            kind: TableKind::Reference,
            dist_column: String::new(),
            dist_type: DistType::Other(0),
            colocation_id: 0,
            int_sequence_columns: Vec::new(),
        });
    }
    t
}

/// What a corpus statement must be planned as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Pinned to colocation group `.0` by the key value `.1` (literal or hint).
    Tenant(u32, &'static str),
    /// Pinned to group `.0` by parameter index `.1` (0-based).
    Param(u32, usize),
    /// A hint on a statement without distributed tables.
    HintTenant(&'static str),
    Coordinator(Reason),
    /// Coordinator-bound for the reason, and certainly read-only.
    ReadOnly(Reason),
    Anywhere,
    Transaction(TxControl),
}

/// The statements (simple-protocol texts unless they hold `$n`).
pub const CORPUS: &[(&str, Expect)] = {
    use Expect::*;
    &[
        // --- Django ORM reads (psycopg2 inlines the values) ---
        (
            r#"SELECT "shop_order"."id", "shop_order"."account_id", "shop_order"."status", "shop_order"."total" FROM "shop_order" WHERE "shop_order"."account_id" = 42 LIMIT 21"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id", "shop_order"."account_id" FROM "shop_order" WHERE ("shop_order"."account_id" = 42 AND "shop_order"."id" = 1001) LIMIT 21"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."account_id" IN (42) ORDER BY "shop_order"."id" DESC"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT COUNT(*) AS "__count" FROM "shop_order" WHERE "shop_order"."account_id" = 42"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT (1) AS "a" FROM "shop_order" WHERE ("shop_order"."account_id" = 42 AND "shop_order"."status" = 'paid') LIMIT 1"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_account"."id", "shop_account"."name" FROM "shop_account" WHERE "shop_account"."id" = 42 LIMIT 21"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id", "shop_order"."account_id", "shop_account"."id", "shop_account"."name" FROM "shop_order" INNER JOIN "shop_account" ON ("shop_order"."account_id" = "shop_account"."id") WHERE "shop_order"."account_id" = 42 LIMIT 21"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_orderitem"."id", "shop_orderitem"."qty" FROM "shop_orderitem" INNER JOIN "shop_order" ON ("shop_orderitem"."order_id" = "shop_order"."id" AND "shop_orderitem"."account_id" = "shop_order"."account_id") WHERE ("shop_order"."account_id" = 42 AND "shop_orderitem"."account_id" = 42)"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE ("shop_order"."account_id" = 42 AND "shop_order"."created" >= '2024-01-01T00:00:00+00:00'::timestamptz AND "shop_order"."note"::text LIKE '%urgent%') ORDER BY "shop_order"."created" DESC LIMIT 20 OFFSET 40"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE ("shop_order"."account_id" = 42 AND "shop_order"."id" IN (SELECT U0."order_id" FROM "shop_orderitem" U0 WHERE (U0."account_id" = 42 AND U0."qty" > 5)))"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE ("shop_order"."account_id" = 42 AND EXISTS(SELECT 1 AS "a" FROM "shop_orderitem" U0 WHERE (U0."account_id" = ("shop_order"."account_id") AND U0."order_id" = ("shop_order"."id")) LIMIT 1))"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."status", COUNT("shop_order"."id") AS "n" FROM "shop_order" WHERE "shop_order"."account_id" = 42 GROUP BY "shop_order"."status" HAVING COUNT("shop_order"."id") > 3"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."account_id" = 42 FOR UPDATE"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id", "shop_plan"."name" FROM "shop_order" INNER JOIN "shop_plan" ON ("shop_order"."plan_id" = "shop_plan"."id") WHERE "shop_order"."account_id" = 42"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" LEFT OUTER JOIN "shop_orderitem" ON ("shop_order"."id" = "shop_orderitem"."order_id" AND "shop_order"."account_id" = "shop_orderitem"."account_id") WHERE "shop_order"."account_id" = 42"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT DISTINCT "shop_order"."status" FROM "shop_order" WHERE ("shop_order"."account_id" = -7)"#,
            Tenant(1, "-7"),
        ),
        (
            r#"SELECT "events"."id", "events"."kind" FROM "events" WHERE "events"."tenant" = 'acme' ORDER BY "events"."id" ASC LIMIT 21"#,
            Tenant(2, "acme"),
        ),
        (
            r#"SELECT "events"."id" FROM "events" WHERE "events"."tenant" = 'o''brien & co'"#,
            Tenant(2, "o'brien & co"),
        ),
        (
            r#"SELECT "devices"."id" FROM "devices" WHERE "devices"."org" = '00000000-0000-0000-0000-00000000002a'::uuid"#,
            Tenant(3, "00000000-0000-0000-0000-00000000002a"),
        ),
        // --- Django writes ---
        (
            r#"INSERT INTO "shop_order" ("id", "account_id", "status", "total") VALUES (1001, 42, 'new', 10.50) RETURNING "shop_order"."id""#,
            Tenant(1, "42"),
        ),
        (
            r#"INSERT INTO "shop_order" ("account_id", "status", "total") VALUES (42, 'new', 10.50) RETURNING "shop_order"."id""#,
            Coordinator(Reason::SequenceDefault),
        ),
        (
            r#"INSERT INTO "shop_orderitem" ("id", "account_id", "order_id", "qty") VALUES (1, 42, 1001, 2), (2, 42, 1001, 3), (3, 42, 1002, 1)"#,
            Tenant(1, "42"),
        ),
        (
            r#"INSERT INTO "shop_orderitem" ("id", "account_id", "order_id", "qty") VALUES (1, 42, 1001, 2), (2, 43, 1001, 3)"#,
            Coordinator(Reason::MultiTenant),
        ),
        (
            r#"INSERT INTO "shop_account" ("id", "name") VALUES (42, 'Acme') ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name""#,
            Tenant(1, "42"),
        ),
        (
            r#"INSERT INTO "events" ("tenant", "kind", "payload") VALUES ('acme', 'login', '{"ip": "10.0.0.1"}'::jsonb)"#,
            Tenant(2, "acme"),
        ),
        (
            r#"UPDATE "shop_order" SET "status" = 'paid', "total" = 12.00 WHERE ("shop_order"."account_id" = 42 AND "shop_order"."id" = 1001)"#,
            Tenant(1, "42"),
        ),
        (
            r#"UPDATE "shop_order" SET "status" = 'void' WHERE "shop_order"."id" IN (SELECT U0."id" FROM "shop_order" U0 WHERE U0."account_id" = 42)"#,
            Coordinator(Reason::NoKey),
        ),
        (
            r#"DELETE FROM "shop_orderitem" WHERE ("shop_orderitem"."account_id" = 42 AND "shop_orderitem"."order_id" IN (1001, 1002))"#,
            Tenant(1, "42"),
        ),
        (
            r#"DELETE FROM "shop_order" WHERE "shop_order"."id" IN (1001)"#,
            Coordinator(Reason::NoKey),
        ),
        (
            r#"UPDATE "shop_plan" SET "price" = 10 WHERE "shop_plan"."id" = 1"#,
            Coordinator(Reason::ReferenceWrite),
        ),
        // --- multi-tenant and unpinned ---
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."account_id" IN (42, 43)"#,
            ReadOnly(Reason::MultiTenant),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE ("shop_order"."account_id" = 42 OR "shop_order"."account_id" = 43)"#,
            ReadOnly(Reason::MultiTenant),
        ),
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."id" = 42"#,
            ReadOnly(Reason::NoKey),
        ),
        (
            r#"SELECT COUNT(*) AS "__count" FROM "shop_order""#,
            ReadOnly(Reason::NoKey),
        ),
        (
            r#"SELECT o.id FROM orders o JOIN items i ON i.account_id = o.account_id WHERE o.account_id = 1 AND i.account_id = 2"#,
            ReadOnly(Reason::MultiTenant),
        ),
        (
            r#"SELECT o.id FROM orders o JOIN events e ON e.id = o.id WHERE o.account_id = 1 AND e.tenant = 'acme'"#,
            ReadOnly(Reason::MultiTenant),
        ),
        (
            r#"SELECT "shop_plan"."id", "shop_plan"."name" FROM "shop_plan" ORDER BY "shop_plan"."price""#,
            ReadOnly(Reason::ReferenceRead),
        ),
        // --- Django's own tables (local on the coordinator) ---
        (
            r#"SELECT "django_session"."session_key", "django_session"."session_data" FROM "django_session" WHERE ("django_session"."expire_date" > '2024-05-01T10:00:00'::timestamp AND "django_session"."session_key" = 'abc123') LIMIT 21"#,
            Coordinator(Reason::NotDistributed),
        ),
        (
            r#"SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."id" = 1 LIMIT 21"#,
            Coordinator(Reason::NotDistributed),
        ),
        (
            r#"SELECT "django_migrations"."app", "django_migrations"."name" FROM "django_migrations""#,
            Coordinator(Reason::NotDistributed),
        ),
        (
            r#"SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)"#,
            Coordinator(Reason::NotDistributed),
        ),
        // --- connection setup, health checks, transactions ---
        ("SELECT 1", Anywhere),
        ("SELECT now()", Anywhere),
        ("SELECT version()", Anywhere),
        ("BEGIN", Transaction(TxControl::Begin)),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Transaction(TxControl::Begin),
        ),
        ("COMMIT", Transaction(TxControl::Commit)),
        ("ROLLBACK", Transaction(TxControl::Rollback)),
        ("COMMIT AND CHAIN", Coordinator(Reason::TransactionControl)),
        (
            "ROLLBACK AND CHAIN",
            Coordinator(Reason::TransactionControl),
        ),
        (
            r#"SAVEPOINT "s140245_x1""#,
            Transaction(TxControl::Savepoint),
        ),
        (
            r#"RELEASE SAVEPOINT "s140245_x1""#,
            Transaction(TxControl::Release),
        ),
        (
            r#"ROLLBACK TO SAVEPOINT "s140245_x1""#,
            Transaction(TxControl::RollbackTo),
        ),
        (
            "SET CONSTRAINTS ALL IMMEDIATE",
            Transaction(TxControl::SetLocal),
        ),
        (
            "SET LOCAL statement_timeout = '5s'",
            Transaction(TxControl::SetLocal),
        ),
        ("SET TIME ZONE 'UTC'", Coordinator(Reason::Utility)),
        ("SET search_path = public", Coordinator(Reason::Utility)),
        ("SHOW server_version", Coordinator(Reason::Utility)),
        ("SELECT pg_advisory_lock(42)", Coordinator(Reason::Utility)),
        // --- migrations ---
        (
            r#"CREATE TABLE "shop_note" ("id" serial NOT NULL PRIMARY KEY, "body" varchar(200) NOT NULL)"#,
            Coordinator(Reason::Ddl),
        ),
        (
            r#"ALTER TABLE "shop_order" ADD COLUMN "note" text NULL"#,
            Coordinator(Reason::Ddl),
        ),
        (
            r#"CREATE INDEX "shop_order_status_idx" ON "shop_order" ("status")"#,
            Coordinator(Reason::Ddl),
        ),
        (
            r#"SELECT create_distributed_table('shop_note', 'account_id')"#,
            Coordinator(Reason::Utility),
        ),
        (r#"TRUNCATE "shop_order""#, Coordinator(Reason::Ddl)),
        (
            "COPY shop_order (id, account_id) FROM STDIN",
            Coordinator(Reason::Copy),
        ),
        ("VACUUM ANALYZE shop_order", Coordinator(Reason::Utility)),
        // --- hints (sqlcommenter) ---
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."status" = 'new' /*controller='orders',tenant_id='42'*/"#,
            Tenant(1, "42"),
        ),
        (
            r#"SELECT "shop_plan"."id" FROM "shop_plan" /* tenant_id=42 */"#,
            HintTenant("42"),
        ),
        // --- extended protocol (psycopg3 server-side binding, asyncpg, JDBC) ---
        (
            r#"SELECT "shop_order"."id" FROM "shop_order" WHERE "shop_order"."account_id" = $1 LIMIT 21"#,
            Param(1, 0),
        ),
        (
            r#"SELECT o.id, i.qty FROM orders o JOIN items i ON i.account_id = o.account_id AND i.order_id = o.id WHERE o.account_id = $2::bigint AND o.id = $1"#,
            Param(1, 1),
        ),
        (
            r#"INSERT INTO "shop_orderitem" ("id", "account_id", "order_id", "qty") VALUES ($1, $2, $3, $4) RETURNING "shop_orderitem"."id""#,
            Param(1, 1),
        ),
        (
            r#"UPDATE "events" SET "kind" = $1 WHERE "events"."tenant" = $2 AND "events"."id" = $3"#,
            Param(2, 1),
        ),
    ]
};
