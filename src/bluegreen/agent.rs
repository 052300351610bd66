//! One blue-green database's agent in this instance: keeps a connection to the homes
//! store on green's coordinator, renews the instance's lease, loads the homes, and holds
//! and drains tenants for the cutovers the store says are running.
//!
//! Rules:
//! - Every renewal reads, in the same transaction, the homes' version and the running
//!   cutovers. Changed homes are loaded before anything else; then holds are placed for
//!   new cutovers and released for ended ones (so a released transaction sees the new
//!   home); only then is the lease renewed locally, from the moment the renewal was sent.
//! - A renewal runs every quarter of `tenant_homes_lease`, at once on a notification on
//!   [`store::CHANNEL`] (also one that arrived while a query was read), and when woken.
//! - A tenant is acknowledged as drained only while this instance still holds it for that
//!   cutover; holds stay until a renewal shows the cutover ended, whatever the clocks say.
//! - Losing the store is logged once per distinct error; the lease then runs out by
//!   itself and sessions hold tenant transactions until a renewal succeeds.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::store::{self, lit};
use super::{Entry, HeldRecord, Home, Homes, TenantKey};
use crate::backend::ServerConn;
use crate::context::Context;

/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

pub fn spawn(ctx: Arc<Context>, e: Arc<Entry>) {
    tokio::spawn(async move { run(ctx, e).await });
}

/// A hold this agent placed for a running cutover.
struct Placed {
    key: TenantKey,
    hold: Arc<super::gate::Hold>,
    acked: bool,
}

async fn run(ctx: Arc<Context>, e: Arc<Entry>) {
    let mut conn: Option<ServerConn> = None;
    let mut placed: HashMap<i64, Placed> = HashMap::new();
    let (drained_tx, mut drained_rx) = mpsc::unbounded_channel::<i64>();
    loop {
        let s = ctx.settings();
        let period = s.tenant_homes_lease / 4;
        if conn.is_none() {
            match connect(&ctx, &e.name).await {
                Ok(c) => {
                    conn = Some(c);
                    set_status(&e, Ok(()));
                }
                Err(err) => {
                    set_status(&e, Err(err));
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = e.stop.cancelled() => return,
                    }
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match renew(&ctx, &e, c, &mut placed, &drained_tx).await {
            Ok(()) => set_status(&e, Ok(())),
            Err(err) => {
                set_status(&e, Err(err));
                conn = None;
                continue;
            }
        }
        match wait(&ctx, &e, c, &mut placed, &mut drained_rx, period).await {
            Wake::Renew => {}
            Wake::Lost(err) => {
                set_status(&e, Err(err));
                conn = None;
            }
            Wake::Stop => {
                for (id, p) in placed.drain() {
                    e.gate.release(&p.key, id);
                }
                return;
            }
        }
    }
}

/// Why [`wait`] returned.
enum Wake {
    /// Time to renew: the period passed, a notification came, or someone woke the agent.
    Renew,
    /// The store's connection failed.
    Lost(String),
    Stop,
}

/// Between renewals: acknowledge drained tenants as they drain, until the next renewal
/// is due.
async fn wait(
    ctx: &Arc<Context>,
    e: &Arc<Entry>,
    c: &mut ServerConn,
    placed: &mut HashMap<i64, Placed>,
    drained: &mut mpsc::UnboundedReceiver<i64>,
    period: Duration,
) -> Wake {
    let until = tokio::time::Instant::now() + period;
    loop {
        // What drained before (or during) the renewal.
        while let Ok(id) = drained.try_recv() {
            if let Err(err) = ack(ctx, e, c, placed, id).await {
                return Wake::Lost(err);
            }
        }
        if c.notified {
            c.notified = false;
            return Wake::Renew;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Wake::Renew,
            _ = e.wake.notified() => return Wake::Renew,
            id = drained.recv() => {
                if let Some(id) = id {
                    if let Err(err) = ack(ctx, e, c, placed, id).await {
                        return Wake::Lost(err);
                    }
                }
            }
            f = c.conn.read_frame() => match f {
                Ok(Some(f)) if f.tag() == b'A' => return Wake::Renew,
                Ok(Some(f)) if f.tag() == b'S' => c.note_parameter(f.body()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Wake::Lost("the store's connection closed".into()),
            },
            _ = e.stop.cancelled() => return Wake::Stop,
        }
    }
}

fn set_status(e: &Entry, r: Result<(), String>) {
    let mut st = e.status.lock().unwrap_or_else(|p| p.into_inner());
    match r {
        Ok(()) => {
            if st.last_error.is_some() {
                tracing::info!(database = %e.name, "tenant homes store reachable again");
            }
            st.connected = true;
            st.last_error = None;
        }
        Err(err) => {
            if st.last_error.as_deref() != Some(err.as_str()) {
                tracing::warn!(database = %e.name, error = %err, "tenant homes store: renewal failed; the lease runs out unless renewed");
            }
            st.connected = false;
            st.last_error = Some(err);
        }
    }
}

/// A connection to green's coordinator as the role that reads its catalog, with the
/// schema in place and LISTEN on the channel.
pub async fn connect(ctx: &Arc<Context>, database: &str) -> Result<ServerConn, String> {
    let mut c = open(ctx, database).await?;
    store::run(&mut c, &store::schema_sql())
        .await
        .map_err(|x| format!("creating the pgtenant schema: {}", store::error_text(&x)))?;
    store::run(&mut c, &format!("LISTEN {}", store::CHANNEL))
        .await
        .map_err(|x| store::error_text(&x))?;
    Ok(c)
}

/// A connection of its own (outside every pool) to the green coordinator of `database`.
pub async fn open(ctx: &Arc<Context>, database: &str) -> Result<ServerConn, String> {
    let s = ctx.settings();
    let t = s
        .target(database)
        .ok_or_else(|| format!("no database entry {database}"))?;
    let cluster = crate::citus::cluster::for_target(ctx, &t)
        .ok_or_else(|| format!("database {database}: green is not a routed Citus cluster"))?;
    cluster
        .open_own(ctx, "tenant homes", "green's coordinator")
        .await
}

/// One renewal (see the module rules).
async fn renew(
    ctx: &Arc<Context>,
    e: &Arc<Entry>,
    c: &mut ServerConn,
    placed: &mut HashMap<i64, Placed>,
    drained: &mpsc::UnboundedSender<i64>,
) -> Result<(), String> {
    let s = ctx.settings();
    let lease = s.tenant_homes_lease;
    let sent = Instant::now();
    let rows = store::run(
        c,
        &store::renew_sql(&e.name, &s.instance_name, lease.as_millis()),
    )
    .await
    .map_err(|x| store::error_text(&x))?;
    let mut version = 0i64;
    let mut running: HashMap<i64, TenantKey> = HashMap::new();
    for r in &rows {
        match r.as_slice() {
            [Some(k), Some(v), ..] if k == "v" => version = v.parse().unwrap_or(0),
            [Some(k), Some(id), Some(col), Some(tenant), _] if k == "c" => {
                if let (Ok(id), Ok(col)) = (id.parse::<i64>(), col.parse::<u32>()) {
                    running.insert(id, (col, tenant.as_str().into()));
                }
            }
            _ => {}
        }
    }
    // 1. The homes first: a transaction released below must see the new home.
    let known = e.homes.load().version;
    if version > known {
        load_homes(e, c, known).await?;
    }
    // 2. Holds for new cutovers; each drains in a task of its own.
    for (id, key) in &running {
        if placed.contains_key(id) {
            continue;
        }
        let Some(hold) = e.gate.hold(key, *id) else {
            // Another cutover of this tenant holds it here: the store's unique index
            // makes that one ended; it is released below and this one held next time.
            continue;
        };
        tracing::info!(database = %e.name, cutover = id, colocation = key.0, tenant = %key.1, "cutover: holding the tenant's new transactions");
        let (e2, k2, h2, tx, id2) = (e.clone(), key.clone(), hold.clone(), drained.clone(), *id);
        tokio::spawn(async move {
            e2.gate.drained(&k2, &h2).await;
            let _ = tx.send(id2);
        });
        placed.insert(
            *id,
            Placed {
                key: key.clone(),
                hold,
                acked: false,
            },
        );
    }
    // 3. Ended cutovers release their holds.
    let ended: Vec<i64> = placed
        .keys()
        .filter(|id| !running.contains_key(id))
        .copied()
        .collect();
    for id in ended {
        if let Some(p) = placed.remove(&id) {
            e.gate.release(&p.key, id);
            let waited = p.hold.waited.load(std::sync::atomic::Ordering::Relaxed);
            let held_for = p.hold.since.elapsed();
            tracing::info!(database = %e.name, cutover = id, tenant = %p.key.1, home = e.home_of(p.key.0, &p.key.1).as_str(), held_ms = held_for.as_millis() as u64, waited, "cutover ended here: tenant released");
            let mut h = e.held.lock().unwrap_or_else(|x| x.into_inner());
            if h.len() >= 100 {
                h.remove(0);
            }
            h.push(HeldRecord {
                cutover: id,
                tenant: p.key,
                held_for,
                waited,
            });
        }
    }
    // 4. Only now: the lease, from when the renewal was sent (less a margin for clocks
    // that run at slightly different rates).
    e.lease.renew(sent, lease - lease / 20);
    Ok(())
}

/// Load the homes changed since `known` into a new map.
async fn load_homes(e: &Entry, c: &mut ServerConn, known: i64) -> Result<(), String> {
    let rows = store::run(c, &store::homes_since_sql(&e.name, known))
        .await
        .map_err(|x| store::error_text(&x))?;
    let mut homes: Homes = (**e.homes.load()).clone();
    for r in rows {
        let [Some(col), Some(tenant), Some(home), Some(v)] = r.as_slice() else {
            continue;
        };
        let (Ok(col), Some(home), Ok(v)) = (col.parse::<u32>(), Home::parse(home), v.parse())
        else {
            continue;
        };
        homes
            .map
            .entry(col)
            .or_default()
            .insert(tenant.as_str().into(), home);
        homes.version = homes.version.max(v);
    }
    let (blue, green) = homes.counts();
    tracing::debug!(database = %e.name, version = homes.version, blue, green, "tenant homes loaded");
    let version = homes.version;
    e.homes.store(Arc::new(homes));
    e.homes_version
        .store(version, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Tell the store this instance drained cutover `id`'s tenant, if it still holds it.
async fn ack(
    ctx: &Arc<Context>,
    e: &Entry,
    c: &mut ServerConn,
    placed: &mut HashMap<i64, Placed>,
    id: i64,
) -> Result<(), String> {
    let Some(p) = placed.get_mut(&id) else {
        return Ok(());
    };
    if p.acked || e.gate.running(&p.key) != 0 {
        return Ok(());
    }
    let s = ctx.settings();
    store::run(c, &store::ack_sql(id, &s.instance_name))
        .await
        .map_err(|x| store::error_text(&x))?;
    p.acked = true;
    tracing::debug!(database = %e.name, cutover = id, instance = %lit(&s.instance_name), "cutover: tenant drained here");
    Ok(())
}
