//! MIGRATE TENANT and SHOW MIGRATION: the console side of blue-green cutovers
//! (`bluegreen::cutover` runs them).
//!
//! Rules:
//! - A list is checked whole before anything runs (an unknown table or a bad value
//!   changes nothing), then migrated one tenant after another; a cutover that aborts is a
//!   row with its reason, and the next one still runs.
//! - Each cutover runs in a task of its own: a console client that leaves does not leave
//!   it half done.
//! - SHOW MIGRATION reads the store (one truth for every instance) for the cutovers, and
//!   this instance's own state for its lease and holds.
use std::sync::Arc;
use std::time::Duration;

use super::parser::Migrate;
use super::{AdminError, Reply, ResultSet};
use crate::bluegreen::cutover::{self, Request};
use crate::bluegreen::store::{self, lit};
use crate::context::Context;

/// A phase's timeout when MIGRATE names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

pub const MIGRATE: &[&str] = &[
    "cutover",
    "database",
    "tenant",
    "colocation",
    "from_home",
    "to_home",
    "result",
    "pause_ms",
    "drain_ms",
    "sync_ms",
    "reason",
];

/// The blue-green entry a command means: the one named, else the only one.
pub fn database(ctx: &Context, named: Option<&str>) -> Result<String, AdminError> {
    let s = ctx.settings();
    let all: Vec<&String> = s
        .databases
        .iter()
        .filter(|(_, d)| d.blue.is_some())
        .map(|(n, _)| n)
        .collect();
    match (named, all.as_slice()) {
        (Some(n), _) if all.iter().any(|a| *a == n) => Ok(n.to_string()),
        (Some(n), _) => Err(AdminError::new(format!(
            "database \"{n}\" has no blue-green entry (no blue place in [databases.{n}])"
        ))),
        (None, [one]) => Ok(one.to_string()),
        (None, []) => Err(AdminError::new(
            "no database entry has a blue place: nothing to migrate",
        )),
        (None, many) => Err(AdminError::new(format!(
            "several blue-green databases ({}): add DATABASE <db>",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub async fn migrate(ctx: &Arc<Context>, m: Migrate) -> Result<Reply, AdminError> {
    let db = database(ctx, m.database.as_deref())?;
    let by = format!("{} (console)", ctx.settings().instance_name);
    let requests: Vec<Request> = m
        .values
        .iter()
        .map(|v| Request {
            database: db.clone(),
            tenant: v.clone(),
            table: m.table.clone(),
            to: m.to,
            timeout: m.timeout.unwrap_or(DEFAULT_TIMEOUT),
            wait_sync: m.wait_sync,
            by: by.clone(),
        })
        .collect();
    // The whole list is checked first: nothing runs if one value is bad.
    for r in &requests {
        cutover::resolve(ctx, r).map_err(AdminError::new)?;
    }
    let mut rs = ResultSet::new(MIGRATE);
    let single = requests.len() == 1;
    for r in requests {
        let task = tokio::spawn(cutover::run(ctx.clone(), r.clone()));
        let outcome = match task.await {
            Ok(o) => o,
            Err(e) => Err(format!("the cutover task failed: {e}")),
        };
        match outcome {
            Ok(o) => rs.push(vec![
                Some(o.id.to_string()),
                Some(o.database),
                Some(o.tenant),
                Some(o.colocation.to_string()),
                Some(o.from.as_str().into()),
                Some(o.to.as_str().into()),
                Some(
                    if o.aborted.is_some() {
                        "aborted"
                    } else {
                        "done"
                    }
                    .into(),
                ),
                Some(ms(o.pause)),
                Some(ms(o.drain)),
                o.sync.map(ms),
                o.aborted,
            ]),
            // One tenant: its error is the command's. In a list: a row, and go on.
            Err(e) if single => return Err(AdminError::new(e)),
            Err(e) => rs.push(vec![
                None,
                Some(db.clone()),
                Some(r.tenant.clone()),
                None,
                None,
                Some(r.to.as_str().into()),
                Some("refused".into()),
                None,
                None,
                None,
                Some(e),
            ]),
        }
    }
    Ok(Reply::Rows(rs))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

pub const MIGRATION: &[&str] = &[
    "type",
    "database",
    "tenant",
    "colocation",
    "home",
    "phase",
    "cutover",
    "started",
    "pause_ms",
    "detail",
];

/// Most past cutovers SHOW MIGRATION lists per database.
const RECENT: u32 = 20;

/// SHOW MIGRATION: per blue-green database, this instance's lease and store, the tenants
/// outside the default home (this instance's copy of the homes), holds placed here now,
/// and the running and latest cutovers from the store.
pub async fn show(ctx: &Arc<Context>) -> Result<ResultSet, AdminError> {
    let s = ctx.settings();
    let mut rs = ResultSet::new(MIGRATION);
    let mut names: Vec<String> = ctx
        .bluegreen
        .entries
        .iter()
        .map(|e| e.key().clone())
        .collect();
    names.sort();
    for name in names {
        let Some(e) = ctx.bluegreen.get(&name) else {
            continue;
        };
        let default_home = s
            .databases
            .get(&name)
            .and_then(|d| d.default_home)
            .unwrap_or(crate::config::Home::Blue);
        let st = e.status();
        let homes = e.homes.load();
        let (blue, green) = homes.counts();
        rs.push(vec![
            Some("instance".into()),
            Some(name.clone()),
            None,
            None,
            Some(default_home.as_str().into()),
            Some(if e.lease.valid() { "lease valid" } else { "lease expired" }.into()),
            None,
            None,
            None,
            Some(format!(
                "{}: lease {} ms left, homes version {}, {} tenant rows ({blue} blue, {green} green), store {}",
                s.instance_name,
                e.lease.remaining().as_millis(),
                homes.version,
                blue + green,
                match &st.last_error {
                    None if st.connected => "connected".to_string(),
                    None => "not connected yet".to_string(),
                    Some(err) => format!("unreachable: {err}"),
                }
            )),
        ]);
        let mut away: Vec<(u32, &str, crate::config::Home)> = homes
            .map
            .iter()
            .flat_map(|(c, m)| m.iter().map(move |(v, h)| (*c, &**v, *h)))
            .filter(|(_, _, h)| *h != default_home)
            .collect();
        away.sort();
        for (col, v, h) in away {
            rs.push(vec![
                Some("tenant".into()),
                Some(name.clone()),
                Some(v.to_string()),
                Some(col.to_string()),
                Some(h.as_str().into()),
                None,
                None,
                None,
                None,
                None,
            ]);
        }
        for (key, hold) in e.gate.holds() {
            rs.push(vec![
                Some("hold".into()),
                Some(name.clone()),
                Some(key.1.to_string()),
                Some(key.0.to_string()),
                Some(e.home_of(key.0, &key.1).as_str().into()),
                Some("held here".into()),
                Some(hold.cutover.to_string()),
                None,
                Some(ms(hold.since.elapsed())),
                Some(format!(
                    "{} running here, {} waiting",
                    e.gate.running(&key),
                    hold.waiting.load(std::sync::atomic::Ordering::Relaxed)
                )),
            ]);
        }
        match cutovers(ctx, &name).await {
            Ok(rows) => {
                for r in rows {
                    let get = |i: usize| r.get(i).cloned().flatten();
                    rs.push(vec![
                        Some("cutover".into()),
                        Some(name.clone()),
                        get(1),
                        get(2),
                        get(3),
                        get(4),
                        get(0),
                        get(5),
                        get(6),
                        get(7),
                    ]);
                }
            }
            Err(err) => rs.push(vec![
                Some("cutover".into()),
                Some(name.clone()),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(format!("store unreachable: {err}")),
            ]),
        }
    }
    Ok(rs)
}

/// At most this many SHOW MIGRATIONs read the store at once per process (each opens a
/// connection to green's coordinator; stats users may run it in a loop).
static STORE_READERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Running cutovers, then the latest ended ones.
async fn cutovers(ctx: &Arc<Context>, db: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let _permit = STORE_READERS.try_acquire().map_err(|_| {
        "two other SHOW MIGRATIONs are reading the store now; try again".to_string()
    })?;
    let mut c = crate::bluegreen::agent::open(ctx, db).await?;
    let sql = format!(
        "SELECT id::text, tenant, colocation_id::text, from_home || ' -> ' || to_home, phase,
    to_char(started_at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), round(pause_ms::numeric, 1)::text,
    concat_ws('; ', 'by ' || requested_by, reason,
        (SELECT count(*) FROM pgtenant.cutover_acks a WHERE a.cutover_id = c.id) || ' instances drained')
FROM (
    (SELECT * FROM pgtenant.cutovers WHERE database = {d} AND phase IN ('drain', 'sync') ORDER BY id)
    UNION ALL
    (SELECT * FROM pgtenant.cutovers WHERE database = {d} AND phase NOT IN ('drain', 'sync') ORDER BY id DESC LIMIT {RECENT})
) c",
        d = lit(db)
    );
    let r = store::run(&mut c, &sql).await;
    c.terminate();
    r.map_err(|e| {
        let t = store::error_text(&e);
        if t.contains("42P01") {
            "no cutover yet (the pgtenant schema is created by the first instance)".to_string()
        } else {
            t
        }
    })
}
