//! The tenant homes store on green's coordinator: pgtenant's own schema `pgtenant`, its
//! tables, and the statements the agents and the cutovers run on it.
//!
//! Rules:
//! - Every statement names its database entry (the `database` column): several entries,
//!   and several pgtenant deployments, may share one coordinator.
//! - Values are sent as quoted literals built by [`lit`] (a name or a tenant value never
//!   reads as SQL): the statements that must be one transaction are sent as one simple
//!   Query (the helpers are `crate::pgschema`'s, shared with the tenant limits' store).
//! - Lease renewals take [`LOCK`] shared, the flip exclusively: a renewal either comes
//!   before the flip (and the flip sees that instance's lease live) or after it (and sees
//!   the new home).
//! - The schema is created under the same lock, so that instances starting together do
//!   not race on `CREATE … IF NOT EXISTS`.
pub use crate::pgschema::{error_text, lit, run, LOCK};

/// The LISTEN/NOTIFY channel of the homes: a notification's payload is the database
/// entry's name.
pub const CHANNEL: &str = "pgtenant_homes";

/// Creates the schema and tables if missing.
pub fn schema_sql() -> String {
    crate::pgschema::create_sql(
        "CREATE TABLE IF NOT EXISTS pgtenant.tenant_homes (
    database text NOT NULL,
    colocation_id integer NOT NULL,
    tenant text NOT NULL,
    home text NOT NULL CHECK (home IN ('blue', 'green')),
    version bigint NOT NULL,
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (database, colocation_id, tenant));
CREATE INDEX IF NOT EXISTS tenant_homes_version ON pgtenant.tenant_homes (database, version);
CREATE TABLE IF NOT EXISTS pgtenant.instances (
    database text NOT NULL,
    instance text NOT NULL,
    lease_until timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (database, instance));
CREATE TABLE IF NOT EXISTS pgtenant.cutovers (
    id bigserial PRIMARY KEY,
    database text NOT NULL,
    colocation_id integer NOT NULL,
    tenant text NOT NULL,
    from_home text NOT NULL,
    to_home text NOT NULL CHECK (to_home IN ('blue', 'green')),
    phase text NOT NULL CHECK (phase IN ('drain', 'sync', 'done', 'aborted')),
    requested_by text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    deadline timestamptz NOT NULL,
    ended_at timestamptz,
    pause_ms double precision,
    reason text);
CREATE UNIQUE INDEX IF NOT EXISTS cutovers_one_running
    ON pgtenant.cutovers (database, colocation_id, tenant) WHERE phase IN ('drain', 'sync');
CREATE TABLE IF NOT EXISTS pgtenant.cutover_acks (
    cutover_id bigint NOT NULL REFERENCES pgtenant.cutovers (id) ON DELETE CASCADE,
    instance text NOT NULL,
    drained_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cutover_id, instance));",
    )
}

/// One lease renewal of `instance` for `database`: also ends cutovers past their deadline
/// (their runner stopped) and forgets instances gone for a day (a restarted pod is a new
/// instance), and returns the homes' version (`v` row) and the running
/// cutovers (`c` rows: id, colocation, tenant, to_home, deadline in ms from now).
pub fn renew_sql(database: &str, instance: &str, lease_ms: u128) -> String {
    let (db, me) = (lit(database), lit(instance));
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock_shared({LOCK});
INSERT INTO pgtenant.instances (database, instance, lease_until)
    VALUES ({db}, {me}, now() + interval '{lease_ms} milliseconds')
    ON CONFLICT (database, instance)
    DO UPDATE SET lease_until = excluded.lease_until, renewed_at = now();
UPDATE pgtenant.cutovers SET phase = 'aborted', ended_at = now(),
    reason = 'deadline passed: its runner stopped or lost the store'
    WHERE database = {db} AND phase IN ('drain', 'sync') AND deadline < now();
DELETE FROM pgtenant.instances
    WHERE database = {db} AND lease_until < now() - interval '1 day';
SELECT 'v', coalesce(max(version), 0)::text, NULL, NULL, NULL
    FROM pgtenant.tenant_homes WHERE database = {db}
UNION ALL
SELECT 'c', id::text, colocation_id::text, tenant,
    (extract(epoch FROM deadline - now()) * 1000)::bigint::text
    FROM pgtenant.cutovers WHERE database = {db} AND phase IN ('drain', 'sync');
COMMIT;"
    )
}

/// The homes changed after `version`: colocation, tenant, home, version.
pub fn homes_since_sql(database: &str, version: i64) -> String {
    format!(
        "SELECT colocation_id::text, tenant, home, version::text FROM pgtenant.tenant_homes \
         WHERE database = {} AND version > {version}",
        lit(database)
    )
}

/// This instance drained the tenant of `cutover` (only while it still runs).
pub fn ack_sql(cutover: i64, instance: &str) -> String {
    format!(
        "INSERT INTO pgtenant.cutover_acks (cutover_id, instance)
    SELECT id, {} FROM pgtenant.cutovers WHERE id = {cutover} AND phase IN ('drain', 'sync')
    ON CONFLICT DO NOTHING",
        lit(instance)
    )
}
