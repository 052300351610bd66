//! Blue-green: the home of the transaction being routed (`bluegreen` has the rules).
//!
//! - With a tenant, the transaction registers with the tenant's gate first (waiting
//!   while a cutover holds the tenant), then reads the tenant's home; the registration
//!   travels with the server connection it gets and ends when that goes back.
//! - Without one, it goes to the entry's default home.
//! - No tenant transaction is routed while this instance's lease is not valid: it waits
//!   for a renewal (up to query_wait_timeout, then an error for this transaction only).
//! - Without green's shard map the tenant is unknown: every transaction goes to the
//!   default home while no tenant lives elsewhere; otherwise it is refused.
use super::*;
use crate::bluegreen::{Enter, Gate, Home, Running};
use crate::frontend::routing::TenantOf;
use crate::frontend::target::BlueHome;

/// Where a blue-green transaction goes.
pub(super) struct Placed {
    pub home: Home,
    pub running: Option<Running>,
}

impl Session {
    /// The home of a transaction of `tenant` (None: of no tenant). None: refused (the
    /// client has its error) or the session ends.
    pub(super) async fn tenant_home(
        &mut self,
        first: &Frame,
        bh: &BlueHome,
        tenant: &TenantOf,
    ) -> Option<Placed> {
        let limit = self.ctx.settings.load().query_wait_timeout;
        let entry = bh.entry.clone();
        let waited = Instant::now();
        let Some((colocation, value)) = tenant else {
            return Some(Placed {
                home: bh.default_home,
                running: None,
            });
        };
        if !entry.lease.valid() && !self.renewed(&entry).await? {
            self.refuse_unconfirmed(first, &entry);
            return None;
        }
        loop {
            match Gate::enter(&entry, (*colocation, value.as_str().into())) {
                Enter::Running(mut r) => {
                    return Some(Placed {
                        home: r.look_up_home(),
                        running: Some(r),
                    })
                }
                Enter::Held(hold) => {
                    tracing::debug!(tenant = %Escaped(value), cutover = hold.cutover, "blue-green: transaction waits for a cutover");
                    let left = limit.saturating_sub(waited.elapsed());
                    tokio::select! {
                        _ = hold.released() => {}
                        _ = tokio::time::sleep(left) => {
                            self.refuse_first(
                                first,
                                sqlstate::QUERY_CANCELED,
                                &format!("canceling statement: tenant {value} is being moved between blue and green and the cutover outlasted query_wait_timeout"),
                            );
                            return None;
                        }
                        _ = self.c.state().console.killed() => return None,
                        _ = self.ctx.shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Wait for this instance's lease on `entry`'s homes to be valid, up to
    /// query_wait_timeout: Some(valid), None when the session is killed or pgtenant shuts
    /// down meanwhile.
    async fn renewed(&self, entry: &crate::bluegreen::Entry) -> Option<bool> {
        let limit = self.ctx.settings.load().query_wait_timeout;
        tokio::select! {
            ok = entry.lease.wait_valid(limit) => Some(ok),
            _ = self.c.state().console.killed() => None,
            _ = self.ctx.shutdown.cancelled() => None,
        }
    }

    /// The transaction whose first message is `first` cannot be placed: the lease was not
    /// renewed within query_wait_timeout.
    fn refuse_unconfirmed(&mut self, first: &Frame, entry: &crate::bluegreen::Entry) {
        let why = entry
            .status()
            .last_error
            .unwrap_or_else(|| "no renewal yet".into());
        tracing::warn!(database = %entry.name, error = %why, "blue-green: lease not renewed within query_wait_timeout: transaction refused");
        self.refuse_first(
            first,
            sqlstate::CANNOT_CONNECT_NOW,
            &format!(
                "pgtenant cannot confirm the tenant homes of database \"{}\" (its store on green is unreachable: {why})",
                entry.name
            ),
        );
    }

    /// Green's shard map is not loaded: the default home, unless a tenant lives elsewhere
    /// (then no transaction can be placed safely). None: refused.
    pub(super) fn home_without_map(&mut self, first: &Frame, bh: &BlueHome) -> Option<Home> {
        let homes = bh.entry.homes.load();
        let elsewhere = homes
            .map
            .values()
            .flat_map(|m| m.values())
            .any(|h| *h != bh.default_home);
        if !elsewhere {
            return Some(bh.default_home);
        }
        self.refuse_first(
            first,
            sqlstate::CANNOT_CONNECT_NOW,
            &format!(
                "green's shard map of database \"{}\" is not loaded: pgtenant cannot tell this transaction's tenant, and some tenants live in {}",
                bh.entry.name,
                bh.default_home.other().as_str()
            ),
        );
        None
    }

    /// Right after a blue-green transaction got its server connection, before anything
    /// is sent: may it write there? Some(true): yes. Some(false): its tenant moved while
    /// this instance's lease had lapsed (it waited for a connection meanwhile): the
    /// connection is dropped and the caller routes again. None: refused (the lease could
    /// not be renewed within query_wait_timeout; the client has its error).
    pub(super) async fn settle_home(&mut self, first: &Frame) -> Option<bool> {
        let Some(r) = self.attached.as_ref().and_then(|a| a.home.as_ref()) else {
            return Some(true);
        };
        if r.may_write() {
            return Some(true);
        }
        let entry = r.entry().clone();
        let valid = self.renewed(&entry).await.unwrap_or(false);
        let still = self
            .attached
            .as_ref()
            .and_then(|a| a.home.as_ref())
            .is_some_and(|r| r.still_home());
        if valid && still {
            return Some(true);
        }
        if let Some(a) = self.attached.take() {
            a.pool.discard(a.server);
        }
        if !valid {
            self.refuse_unconfirmed(first, &entry);
            return None;
        }
        tracing::info!(database = %entry.name, "blue-green: the tenant moved while this transaction waited for a connection: routed again");
        Some(false)
    }

    /// This instance's lease ran out while a tenant transaction had something to send
    /// (the process was frozen, or cut off from the store): nothing goes out until a
    /// renewal has re-read the homes. If the tenant moved meanwhile (a cutover did not
    /// wait for this instance, whose lease had ended), the transaction must not go on in
    /// the old home: its server connection is closed (the server rolls it back) and the
    /// client is told.
    pub(super) async fn lease_lapsed(&mut self) -> Flow {
        let Some(r) = self.attached.as_ref().and_then(|a| a.home.as_ref()) else {
            return Flow::Continue;
        };
        let entry = r.entry().clone();
        let valid = self.renewed(&entry).await.unwrap_or(false);
        let r = self.attached.as_ref().and_then(|a| a.home.as_ref());
        if valid && r.is_some_and(|r| r.still_home()) {
            return Flow::Continue;
        }
        let tenant = r.map(|r| r.tenant().1.to_string()).unwrap_or_default();
        tracing::warn!(database = %entry.name, tenant = %Escaped(&tenant), renewed = valid, "blue-green: lease lapsed during a tenant transaction and its home changed (or could not be confirmed): transaction ended");
        if let Some(a) = self.attached.take() {
            a.pool.discard(a.server);
        }
        self.c.conn.queue(&build::fatal(
            "40001",
            &format!(
                "tenant {tenant} moved between blue and green while this pgtenant instance could not confirm the tenant homes; the transaction was rolled back, retry it"
            ),
        ));
        Flow::Quit
    }

    /// Attach to `pool` for a blue-green transaction, keeping its gate registration with
    /// the connection.
    pub(super) async fn attach_home(
        &mut self,
        f: &Frame,
        pool: Arc<Pool>,
        running: Option<Running>,
    ) -> bool {
        if !self.attach(f, pool).await {
            return false;
        }
        if let Some(a) = self.attached.as_mut() {
            a.home = running;
        }
        true
    }
}
