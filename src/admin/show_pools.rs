//! SHOW POOLS: one row per pool (node, database, user).
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{is_admin_database, pool_database, ResultSet};
use crate::context::Context;
use crate::pool::Pool;

pub const POOLS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
];

/// Pools sorted as the console lists them: database, node, user.
pub fn sorted_pools(ctx: &Context) -> Vec<Arc<Pool>> {
    let mut pools = ctx.pools.all();
    pools.sort_by(|a, b| {
        (&a.key.database, &a.key.node.name, &a.key.user).cmp(&(
            &b.key.database,
            &b.key.node.name,
            &b.key.user,
        ))
    });
    pools
}

pub fn pools(ctx: &Context) -> ResultSet {
    let s = ctx.settings();
    let mut rs = ResultSet::new(POOLS);
    for p in sorted_pools(ctx) {
        let (idle, total) = p.counts();
        let used = p
            .servers()
            .iter()
            .filter(|(_, st, _)| *st == crate::pool::ServerState::Used)
            .count() as u32;
        let maxwait = p.max_wait();
        let active = p.stats.active.get_gauge() as u32;
        let waiting = p.stats.waiting.load(Ordering::Relaxed);
        // Clients belong to their home pool (they log in to it); worker pools are
        // borrowed per transaction and count no clients of their own. An entry with a
        // forced role has one pool for all its clients.
        let forced = s
            .database_entry(&p.key.database)
            .is_some_and(|e| e.user.is_some());
        let clients = if !p.key.node.is_worker() {
            ctx.admin.clients.count_where(|c| {
                *c.database == *p.key.database
                    && (forced || *c.user == *p.key.user)
                    && !is_admin_database(&c.database)
            }) as u32
        } else {
            0
        };
        rs.push_values([
            pool_database(&p.key),
            p.key.user.to_string(),
            clients.saturating_sub(waiting).to_string(),
            waiting.to_string(),
            "0".into(),
            "0".into(),
            active.to_string(),
            "0".into(),
            "0".into(),
            idle.saturating_sub(used).to_string(),
            used.to_string(),
            "0".into(),
            total.saturating_sub(idle + active).to_string(),
            maxwait.as_secs().to_string(),
            maxwait.subsec_micros().to_string(),
            s.pool_mode_of(&p.key.database, &p.key.user)
                .as_str()
                .to_string(),
            String::new(),
        ]);
    }
    rs
}
