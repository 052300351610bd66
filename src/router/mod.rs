//! Where a statement goes. For now every statement goes to the coordinator; the tenant
//! routing issue fills this in (classification, tenant extraction, plan cache). The seam
//! is here so the session loop already asks the question at the right moment: when a
//! client without a server connection sends the first message of a transaction.
pub mod command;

use crate::net::Frame;

/// The destination the router picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Coordinator,
}

/// Decides the node for the first message of a transaction. Does no I/O.
#[derive(Debug, Default)]
pub struct Router;

impl Router {
    pub fn new() -> Router {
        Router
    }

    /// The node for a transaction that starts with `first`.
    pub fn route(&self, first: &Frame) -> Route {
        let _ = first;
        Route::Coordinator
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;

    #[test]
    fn everything_goes_to_the_coordinator_for_now() {
        let r = Router::new();
        assert_eq!(r.route(&build::query("select 1")), Route::Coordinator);
    }
}
