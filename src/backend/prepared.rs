//! What one server connection has prepared: pgtenant's statement ids (LRU, bounded by
//! max_prepared_statements) and the SQL-level PREPARE names with their text.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Server-side name of a protocol-level statement pgtenant prepared.
pub fn server_statement_name(id: u64) -> String {
    format!("pgt_{id}")
}

#[derive(Default)]
pub struct PreparedCache {
    /// Statement id → last use tick.
    ids: HashMap<u64, u64>,
    tick: u64,
    /// SQL-level `PREPARE name AS …` on this server: name → the full PREPARE text.
    pub sql: HashMap<String, Arc<str>>,
    /// How many ids are prepared, for SHOW SERVERS while a client holds the connection
    /// (written when the set changes, never on a cache hit).
    count: Arc<AtomicU32>,
}

impl PreparedCache {
    /// Is statement `id` prepared here? Marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.ids.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Record `id` as prepared; returns the least recently used id to close when the
    /// cache is over `cap`.
    pub fn insert(&mut self, id: u64, cap: usize) -> Option<u64> {
        self.tick += 1;
        self.ids.insert(id, self.tick);
        let victim = if self.ids.len() <= cap.max(1) {
            None
        } else {
            self.ids
                .iter()
                .filter(|(k, _)| **k != id)
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| *k)
        };
        if let Some(v) = victim {
            self.ids.remove(&v);
        }
        self.counted();
        victim
    }

    pub fn remove(&mut self, id: u64) {
        self.ids.remove(&id);
        self.counted();
    }

    fn counted(&self) {
        self.count.store(self.ids.len() as u32, Ordering::Relaxed);
    }

    /// The count of prepared ids, shared (SHOW SERVERS' prepared_statements).
    pub fn shared_count(&self) -> Arc<AtomicU32> {
        self.count.clone()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The server dropped everything (DISCARD ALL / DEALLOCATE ALL ran on it).
    pub fn clear(&mut self) {
        self.ids.clear();
        self.sql.clear();
        self.counted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut c = PreparedCache::default();
        assert_eq!(c.insert(1, 2), None);
        assert_eq!(c.insert(2, 2), None);
        assert!(c.touch(1));
        assert_eq!(c.insert(3, 2), Some(2));
        assert!(c.touch(1) && c.touch(3) && !c.touch(2));
        c.remove(1);
        assert_eq!(c.len(), 1);
        let shared = c.shared_count();
        assert_eq!(shared.load(Ordering::Relaxed), 1);
        assert_eq!(c.insert(4, 2), None);
        assert_eq!(shared.load(Ordering::Relaxed), 2);
        c.clear();
        assert_eq!(shared.load(Ordering::Relaxed), 0);
    }
}
