//! One cutover: move a tenant of a blue-green database to its other home (`MIGRATE TENANT
//! … TO green|blue` on any instance's admin console, or `pgtenant migrate`).
//!
//! Rules:
//! - Bad input changes nothing: an entry without `blue`, an unknown or reference table,
//!   several colocation groups and no TABLE, a value that is not of the distribution
//!   column's type, a tenant already in that home, a cutover of the same tenant already
//!   running (the store's unique index decides, across instances) — each a clear error
//!   before any row is written.
//! - Phases, each bounded by the request's timeout: *drain* (the cutover row makes every
//!   instance hold the tenant; it is drained when every instance whose lease is valid in
//!   the store has acknowledged; an instance that does not answer is waited out until its
//!   lease ends), *sync* with `WAIT SYNC` (blue's WAL position read after the drain,
//!   reached by the `confirmed_flush_lsn` of blue's logical slots — the subscriber's
//!   flushed, applied position), *flip* (under the store's exclusive lock: the drain
//!   checked again, the home written with the next version, the cutover marked done,
//!   a notification; one transaction).
//! - Past a phase's timeout the cutover is aborted (the home stays; instances release
//!   their holds at their next renewal, woken by the notification) and the error says
//!   which phase and why.
//! - The runner is a task of its own: a console client that leaves does not leave the
//!   cutover half done.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{self, lit};
use super::Home;
use crate::backend::ServerConn;
use crate::context::Context;

/// How often the drain and sync phases look again.
const POLL: Duration = Duration::from_millis(20);

/// What to move, where, how patiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub database: String,
    pub tenant: String,
    pub table: Option<String>,
    pub to: Home,
    pub timeout: Duration,
    pub wait_sync: bool,
    /// Who asked (the console user and this instance, or the command line).
    pub by: String,
}

/// How a cutover ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    pub database: String,
    pub colocation: u32,
    pub tenant: String,
    pub from: Home,
    pub to: Home,
    /// None: done; Some: aborted, and why.
    pub aborted: Option<String>,
    /// From the cutover row's creation (instances start holding) to its end.
    pub pause: Duration,
    pub drain: Duration,
    pub sync: Option<Duration>,
}

/// Resolve the request against the configuration and green's shard map: the colocation
/// group and the canonical value.
pub fn resolve(ctx: &Context, req: &Request) -> Result<(u32, String), String> {
    let s = ctx.settings();
    let Some(entry) = s.databases.get(&req.database) else {
        return Err(format!("no database entry \"{}\"", req.database));
    };
    if entry.blue.is_none() {
        return Err(format!(
            "database \"{}\" has no blue-green entry (no blue place in [databases.{}])",
            req.database, req.database
        ));
    }
    let t = s
        .target(&req.database)
        .ok_or_else(|| format!("no database entry \"{}\"", req.database))?;
    let cluster = crate::citus::cluster::for_target(ctx, &t)
        .ok_or_else(|| format!("database \"{}\": green is not routed", req.database))?;
    let map = cluster.map.get().ok_or_else(|| {
        format!(
            "green's shard map for \"{}\" is not loaded (yet): the tenant's colocation group is unknown",
            req.database
        )
    })?;
    let table = map
        .distributed_table(req.table.as_deref())
        .map_err(|e| format!("green: {e}"))?;
    let value =
        crate::citus::hash::checked_canonical(table.dist_type, &req.tenant).map_err(|e| {
            format!(
                "tenant value '{}' does not fit {}.{} ({:?}): {e}",
                req.tenant, table.name, table.dist_column, table.dist_type
            )
        })?;
    Ok((table.colocation_id, value))
}

/// Run one cutover to its end (done or aborted). Err: bad input or the store could not be
/// reached — nothing changed, unless the message says the cutover was aborted.
pub async fn run(ctx: Arc<Context>, req: Request) -> Result<Outcome, String> {
    let (colocation, tenant) = resolve(&ctx, &req)?;
    let s = ctx.settings();
    let lease = s.tenant_homes_lease;
    let db = req.database.clone();
    let mut c = super::agent::connect(&ctx, &db).await?;
    let err = |x: crate::backend::BackendError| store::error_text(&x);
    // The tenant's home now.
    let rows = store::run(
        &mut c,
        &format!(
            "SELECT home FROM pgtenant.tenant_homes WHERE database = {} AND colocation_id = {colocation} AND tenant = {}",
            lit(&db),
            lit(&tenant)
        ),
    )
    .await
    .map_err(err)?;
    let from = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|h| Home::parse(&h))
        .unwrap_or(Home::Blue);
    if from == req.to {
        return Err(format!(
            "tenant {tenant} (colocation group {colocation}) is already in {}",
            from.as_str()
        ));
    }
    // The cutover row: from here on every instance holds the tenant.
    let deadline = req.timeout * 2 + lease + Duration::from_secs(5);
    let insert = format!(
        "BEGIN;
UPDATE pgtenant.cutovers SET phase = 'aborted', ended_at = now(),
    reason = 'deadline passed: its runner stopped or lost the store'
    WHERE database = {d} AND phase IN ('drain', 'sync') AND deadline < now();
INSERT INTO pgtenant.cutovers (database, colocation_id, tenant, from_home, to_home, phase, requested_by, deadline)
    VALUES ({d}, {colocation}, {t}, '{from}', '{to}', 'drain', {by}, now() + interval '{ms} milliseconds')
    RETURNING id::text;
NOTIFY {ch}, {d};
COMMIT;",
        d = lit(&db),
        t = lit(&tenant),
        from = from.as_str(),
        to = req.to.as_str(),
        by = lit(&req.by),
        ms = deadline.as_millis(),
        ch = store::CHANNEL,
    );
    let started = Instant::now();
    let id: i64 = match store::run(&mut c, &insert).await {
        Ok(rows) => rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .ok_or("the store returned no cutover id")?,
        Err(crate::backend::BackendError::Server(e)) if e.code == "23505" => {
            let who = store::run(
                &mut c,
                &format!(
                    "SELECT id::text, requested_by, phase FROM pgtenant.cutovers WHERE database = {} AND colocation_id = {colocation} AND tenant = {} AND phase IN ('drain', 'sync')",
                    lit(&db),
                    lit(&tenant)
                ),
            )
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
            .map(|r| {
                format!(
                    " (cutover {} by {}, phase {})",
                    r.first().cloned().flatten().unwrap_or_default(),
                    r.get(1).cloned().flatten().unwrap_or_default(),
                    r.get(2).cloned().flatten().unwrap_or_default()
                )
            })
            .unwrap_or_default();
            return Err(format!(
                "a cutover of tenant {tenant} (colocation group {colocation}) is already running{who}"
            ));
        }
        Err(e) => return Err(store::error_text(&e)),
    };
    if let Some(e) = ctx.bluegreen.get(&db) {
        e.wake.notify_one();
    }
    tracing::info!(database = %db, cutover = id, colocation, tenant = %tenant, from = from.as_str(), to = req.to.as_str(), "cutover started: draining");
    let mut out = Outcome {
        id,
        database: db.clone(),
        colocation,
        tenant: tenant.clone(),
        from,
        to: req.to,
        aborted: None,
        pause: Duration::ZERO,
        drain: Duration::ZERO,
        sync: None,
    };
    let result = phases(&ctx, &req, &mut c, &mut out, started).await;
    out.pause = started.elapsed();
    match result {
        Ok(()) => {
            tracing::info!(database = %db, cutover = id, tenant = %tenant, to = req.to.as_str(), pause_ms = out.pause.as_millis() as u64, "cutover done");
            crate::metrics::migration::cutover_ended(true, out.pause, req.timeout);
        }
        Err(why) => {
            let abort = format!(
                "BEGIN;
UPDATE pgtenant.cutovers SET phase = 'aborted', ended_at = now(), reason = {r},
    pause_ms = extract(epoch FROM now() - started_at) * 1000
    WHERE id = {id} AND phase IN ('drain', 'sync');
NOTIFY {ch}, {d};
COMMIT;",
                r = lit(&why),
                ch = store::CHANNEL,
                d = lit(&db),
            );
            if let Err(e) = store::run(&mut c, &abort).await {
                // The row stays running until its deadline; instances end it then.
                tracing::warn!(cutover = id, error = %store::error_text(&e), "could not mark the cutover aborted: instances end it at its deadline");
            }
            tracing::warn!(database = %db, cutover = id, tenant = %tenant, reason = %why, "cutover aborted: the tenant stays in {}", from.as_str());
            crate::metrics::migration::cutover_ended(false, out.pause, req.timeout);
            out.aborted = Some(why);
        }
    }
    if let Some(e) = ctx.bluegreen.get(&db) {
        e.wake.notify_one();
    }
    Ok(out)
}

/// Drain, sync, flip. Err: why the cutover must be aborted.
async fn phases(
    ctx: &Arc<Context>,
    req: &Request,
    c: &mut ServerConn,
    out: &mut Outcome,
    started: Instant,
) -> Result<(), String> {
    let db = lit(&req.database);
    let id = out.id;
    let pending_sql = format!(
        "SELECT i.instance, (extract(epoch FROM i.lease_until - now()) * 1000)::bigint::text
    FROM pgtenant.instances i
    WHERE i.database = {db} AND i.lease_until > now()
      AND NOT EXISTS (SELECT 1 FROM pgtenant.cutover_acks a WHERE a.cutover_id = {id} AND a.instance = i.instance)
    ORDER BY 1"
    );
    let err = |x: crate::backend::BackendError| store::error_text(&x);
    // Drain.
    let drain_until = started + req.timeout;
    wait_drained(c, &pending_sql, drain_until, "drain").await?;
    out.drain = started.elapsed();
    // Sync.
    if req.wait_sync {
        let t0 = Instant::now();
        store::run(
            c,
            &format!(
                "UPDATE pgtenant.cutovers SET phase = 'sync' WHERE id = {id} AND phase = 'drain'"
            ),
        )
        .await
        .map_err(err)?;
        wait_sync(ctx, req, t0 + req.timeout).await?;
        out.sync = Some(t0.elapsed());
    }
    // Flip: the drain checked again under the exclusive lock.
    let flip_until = Instant::now() + req.timeout;
    loop {
        if Instant::now() >= flip_until {
            return Err("flip timed out: instances kept renewing without draining".into());
        }
        store::run(
            c,
            &format!("BEGIN; SELECT pg_advisory_xact_lock({})", store::LOCK),
        )
        .await
        .map_err(err)?;
        let pending = store::run(c, &pending_sql).await.map_err(err)?;
        if !pending.is_empty() {
            store::run(c, "ROLLBACK").await.map_err(err)?;
            // An instance renewed (it was frozen or cut off): it must drain too.
            wait_drained(c, &pending_sql, flip_until, "flip").await?;
            continue;
        }
        let done = store::run(
            c,
            &format!(
                "UPDATE pgtenant.cutovers SET phase = 'done', ended_at = now(),
    pause_ms = extract(epoch FROM now() - started_at) * 1000
    WHERE id = {id} AND phase IN ('drain', 'sync') AND deadline > now() RETURNING id"
            ),
        )
        .await
        .map_err(err)?;
        if done.is_empty() {
            store::run(c, "ROLLBACK").await.map_err(err)?;
            return Err("the cutover passed its deadline or was ended by another runner".into());
        }
        store::run(
            c,
            &format!(
                "INSERT INTO pgtenant.tenant_homes (database, colocation_id, tenant, home, version, changed_by)
    VALUES ({db}, {col}, {t}, '{to}',
        (SELECT coalesce(max(version), 0) + 1 FROM pgtenant.tenant_homes WHERE database = {db}), {by})
    ON CONFLICT (database, colocation_id, tenant) DO UPDATE
    SET home = excluded.home, version = excluded.version, changed_by = excluded.changed_by, changed_at = now();
NOTIFY {ch}, {db};
COMMIT;",
                col = out.colocation,
                t = lit(&out.tenant),
                to = req.to.as_str(),
                by = lit(&req.by),
                ch = store::CHANNEL,
            ),
        )
        .await
        .map_err(err)?;
        return Ok(());
    }
}

/// Wait until every instance with a valid lease has acknowledged, until `until`.
async fn wait_drained(
    c: &mut ServerConn,
    pending_sql: &str,
    until: Instant,
    phase: &str,
) -> Result<(), String> {
    loop {
        let pending = store::run(c, pending_sql)
            .await
            .map_err(|x| store::error_text(&x))?;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            let who: Vec<String> = pending
                .iter()
                .map(|r| {
                    format!(
                        "{} (lease valid {} ms more)",
                        r.first().cloned().flatten().unwrap_or_default(),
                        r.get(1).cloned().flatten().unwrap_or_default()
                    )
                })
                .collect();
            return Err(format!(
                "{phase} timed out: not drained on {}",
                who.join(", ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `WAIT SYNC`: blue's WAL position now, reached by its logical slots' confirmed flush.
async fn wait_sync(ctx: &Arc<Context>, req: &Request, until: Instant) -> Result<(), String> {
    let s = ctx.settings();
    let target = s
        .target(&req.database)
        .ok_or("the entry has no blue place")?;
    let blue = target.blue.clone().ok_or("the entry has no blue place")?;
    let cluster = crate::citus::cluster::for_target(ctx, &target).ok_or("green is not routed")?;
    let l = cluster.login(ctx, &s);
    let node = crate::pool::Node::server(&ctx.coordinator.load(), &blue.host, blue.port);
    let params =
        ctx.pools
            .own_connect_params(&node, &blue.dbname, &l.user, l.credential, "cutover sync");
    let mut b = tokio::time::timeout(s.server_connect_timeout, crate::backend::connect(&params))
        .await
        .map_err(|_| "sync: connecting to blue timed out".to_string())?
        .map_err(|e| format!("sync: connecting to blue: {e}"))?;
    let err = |x: crate::backend::BackendError| format!("sync: {}", store::error_text(&x));
    let lsn = store::run(&mut b, "SELECT pg_current_wal_lsn()::text")
        .await
        .map_err(err)?
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .ok_or("sync: blue returned no WAL position")?;
    let only = if blue.slots.is_empty() {
        String::new()
    } else {
        format!(
            " AND slot_name IN ({})",
            blue.slots
                .iter()
                .map(|x| lit(x))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let sql = format!(
        "SELECT slot_name::text, coalesce(confirmed_flush_lsn >= {l}::pg_lsn, false)::text, coalesce(confirmed_flush_lsn::text, '') \
         FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database(){only} ORDER BY 1",
        l = lit(&lsn)
    );
    loop {
        let rows = store::run(&mut b, &sql).await.map_err(err)?;
        if rows.is_empty() {
            return Err(
                "sync: blue has no logical replication slot to wait for (is green subscribed?)"
                    .into(),
            );
        }
        let behind: Vec<String> = rows
            .iter()
            .filter(|r| r.get(1).cloned().flatten().as_deref() != Some("true"))
            .map(|r| {
                format!(
                    "{} at {}",
                    r.first().cloned().flatten().unwrap_or_default(),
                    r.get(2).cloned().flatten().unwrap_or_default()
                )
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "sync timed out: blue is at {lsn}, not confirmed by {}",
                behind.join(", ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
