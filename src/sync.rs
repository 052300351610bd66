//! Locking shared by every module: a mutex whose holder panicked is taken anyway. Its
//! data is plain bookkeeping that stays consistent between statements, and one
//! client's panicking task must not make the lock unusable for every other client.
use std::sync::{Mutex, MutexGuard};

/// Lock `m`, whether or not an earlier holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
