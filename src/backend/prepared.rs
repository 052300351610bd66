//! What one server connection has prepared: pgtenant's statement ids (LRU, bounded by
//! max_prepared_statements) and the SQL-level PREPARE names with their text.
use std::collections::{HashMap, HashSet};
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
    /// Ids whose Parse or Close the server skipped (an error before it in its batch):
    /// whether the server has them is not known, so the next Parse of one closes it
    /// first. Past [`MAX_DOUBTS`], every id is in doubt (`all_doubt`).
    doubts: HashSet<u64>,
    all_doubt: bool,
}

/// Ids kept in doubt one by one; past this many, every Parse on the connection closes
/// the statement first, and the connection is not lent again.
pub const MAX_DOUBTS: usize = 1024;

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

    /// The server skipped a Parse or Close of `id`: whether it has the statement is not
    /// known.
    pub fn doubt(&mut self, id: u64) {
        self.remove(id);
        if self.all_doubt {
            return;
        }
        if self.doubts.len() >= MAX_DOUBTS {
            self.doubts = HashSet::new();
            self.all_doubt = true;
        } else {
            self.doubts.insert(id);
        }
    }

    /// Must a Parse of `id` close the statement first (it may be there)? Ends the doubt:
    /// the Close and Parse are on their way (a skip of those doubts it again).
    pub fn take_doubt(&mut self, id: u64) -> bool {
        self.all_doubt || (!self.doubts.is_empty() && self.doubts.remove(&id))
    }

    /// Too many doubts to keep one by one: the connection's statements are not known.
    pub fn overflowed(&self) -> bool {
        self.all_doubt
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
        self.doubts = HashSet::new();
        self.all_doubt = false;
        self.counted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubted_statements_are_closed_before_their_next_parse() {
        let mut c = PreparedCache::default();
        assert_eq!(c.insert(1, 10), None);
        c.doubt(1);
        assert!(!c.touch(1), "a doubted statement is not used as is");
        assert!(c.take_doubt(1));
        assert!(!c.take_doubt(1), "the Close and Parse end the doubt");
        assert!(!c.take_doubt(2));
        for id in 0..MAX_DOUBTS as u64 + 1 {
            c.doubt(id);
        }
        assert!(c.overflowed());
        assert!(
            c.doubts.is_empty(),
            "bounded: past the limit, every id is in doubt"
        );
        assert!(c.take_doubt(12345) && c.take_doubt(12345));
        c.clear();
        assert!(!c.overflowed() && !c.take_doubt(1));
    }

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
