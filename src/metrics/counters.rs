//! Process-wide counters the session loop bumps without a lock or an allocation:
//! server errors by SQLSTATE class, and clients attached to a server or waiting for one.
//!
//! - [`SERVER_ERRORS`]: one `AtomicU64` per SQLSTATE class PostgreSQL defines, plus
//!   `other`. The class (the code's first two characters) is read straight from the
//!   ErrorResponse body and mapped to its slot through a 36×36 table built at compile
//!   time: one relaxed add per error.
//! - [`CLIENTS_ACTIVE`], [`CLIENTS_WAITING`]: gauges kept by the guards [`Active`] (held
//!   while a session has a server connection) and [`Waiting`] (held while it waits in a
//!   pool's acquire), so every exit path gives its count back.
use std::sync::atomic::{AtomicU64, Ordering};

/// The SQLSTATE classes of PostgreSQL (errcodes.txt, PostgreSQL 17).
pub const CLASSES: [&str; 43] = [
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22", "23",
    "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42",
    "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX",
];

/// Slot of a class that is not in [`CLASSES`] (or of an error without a code).
pub const OTHER: usize = CLASSES.len();
const SLOTS: usize = CLASSES.len() + 1;

/// `0-9A-Z` → 0..36; anything else → None (SQLSTATEs are upper case).
const fn base36(c: u8) -> Option<usize> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as usize),
        b'A'..=b'Z' => Some((c - b'A') as usize + 10),
        _ => None,
    }
}

/// Two-character class → slot, built at compile time.
const SLOT_OF: [u8; 36 * 36] = {
    let mut t = [OTHER as u8; 36 * 36];
    let mut i = 0;
    while i < CLASSES.len() {
        let b = CLASSES[i].as_bytes();
        match (base36(b[0]), base36(b[1])) {
            (Some(h), Some(l)) => t[h * 36 + l] = i as u8,
            _ => panic!("bad SQLSTATE class"),
        }
        i += 1;
    }
    t
};

/// The slot of a two-character SQLSTATE class (`OTHER` when unknown).
#[inline]
pub fn class_slot(class: [u8; 2]) -> usize {
    match (base36(class[0]), base36(class[1])) {
        (Some(h), Some(l)) => SLOT_OF[h * 36 + l] as usize,
        _ => OTHER,
    }
}

/// The label of a slot: the class, or `other`.
pub fn slot_label(slot: usize) -> &'static str {
    CLASSES.get(slot).copied().unwrap_or("other")
}

/// The class (first two characters of the `C` field) of an ErrorResponse or
/// NoticeResponse body, without allocating. None when the body has no code.
#[inline]
pub fn sqlstate_class(body: &[u8]) -> Option<[u8; 2]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return match tail[..end] {
                [a, b, ..] => Some([a, b]),
                _ => None,
            };
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Errors by SQLSTATE class.
pub struct ErrorClasses {
    counts: [AtomicU64; SLOTS],
}

impl Default for ErrorClasses {
    fn default() -> ErrorClasses {
        ErrorClasses::new()
    }
}

impl ErrorClasses {
    pub const fn new() -> ErrorClasses {
        ErrorClasses {
            counts: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    /// Count one error of `class`. Lock-free, allocation-free.
    #[inline]
    pub fn count(&self, class: [u8; 2]) {
        self.counts[class_slot(class)].fetch_add(1, Ordering::Relaxed);
    }

    /// Count the error an ErrorResponse body carries (`other` without a code).
    #[inline]
    pub fn count_body(&self, body: &[u8]) {
        let slot = sqlstate_class(body).map_or(OTHER, class_slot);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors counted for one class label (`"22"`, …, `"other"`).
    pub fn get(&self, label: &str) -> u64 {
        let slot = match label.as_bytes() {
            b"other" => OTHER,
            &[a, b] => class_slot([a, b]),
            _ => return 0,
        };
        self.counts[slot].load(Ordering::Relaxed)
    }

    /// (label, count) for every class counted at least once.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| (slot_label(i), c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// ErrorResponses servers sent that were relayed to clients, by SQLSTATE class.
pub static SERVER_ERRORS: ErrorClasses = ErrorClasses::new();

/// Server-side pipelining (`pool::batch`): batches sent, statements sent in them, and
/// statements run again because a batch-mate's cancel landed on them.
pub static PIPELINE_BATCHES: crate::metrics::striped::Striped =
    crate::metrics::striped::Striped::new();
pub static PIPELINED_STATEMENTS: crate::metrics::striped::Striped =
    crate::metrics::striped::Striped::new();
pub static PIPELINE_RERUNS: crate::metrics::striped::Striped =
    crate::metrics::striped::Striped::new();

/// Client sessions holding a server connection now.
pub static CLIENTS_ACTIVE: crate::metrics::striped::Striped =
    crate::metrics::striped::Striped::new();
/// Client sessions waiting for a server connection now (pool acquire, connect included).
pub static CLIENTS_WAITING: crate::metrics::striped::Striped =
    crate::metrics::striped::Striped::new();

/// Client sessions pinned to their server connection by state that cannot travel (temp
/// tables, held cursors, session advisory locks; see `frontend::session::check`).
pub static CLIENTS_PINNED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// One session's state as SHOW CLIENTS reports it, kept by the same guards as the
/// gauges: waiting while a [`Waiting`] guard lives, active while an [`Active`] one does
/// (a session-mode client keeps its server, so it stays active when idle), idle otherwise.
#[derive(Debug, Default)]
pub struct ClientState {
    active: std::sync::atomic::AtomicU32,
    waiting: std::sync::atomic::AtomicU32,
    /// When the current wait began (µs since the Unix epoch), 0 when not waiting.
    wait_since_us: AtomicU64,
    /// The rest of what the admin console shows of the session (link, request_time,
    /// prepared_statements), and its side of SUSPEND.
    pub console: crate::admin::SessionConsole,
    /// Pinned to its server connection (counted in [`CLIENTS_PINNED`]).
    pinned: std::sync::atomic::AtomicBool,
}

impl Drop for ClientState {
    fn drop(&mut self) {
        self.set_pinned(false);
    }
}

/// What SHOW CLIENTS says of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStateKind {
    Active,
    Waiting,
    Idle,
}

impl ClientStateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStateKind::Active => "active",
            ClientStateKind::Waiting => "waiting",
            ClientStateKind::Idle => "idle",
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl ClientState {
    /// Mark the session pinned or not (moves [`CLIENTS_PINNED`] on a change).
    pub fn set_pinned(&self, on: bool) {
        if self.pinned.swap(on, Ordering::Relaxed) != on {
            CLIENTS_PINNED.fetch_add(if on { 1 } else { -1 }, Ordering::Relaxed);
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    pub fn kind(&self) -> ClientStateKind {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            ClientStateKind::Waiting
        } else if self.active.load(Ordering::Relaxed) > 0 {
            ClientStateKind::Active
        } else {
            ClientStateKind::Idle
        }
    }

    /// How long the session has waited for a server so far (None: not waiting).
    pub fn waited(&self) -> Option<std::time::Duration> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let since = self.wait_since_us.load(Ordering::Relaxed);
        (since > 0).then(|| std::time::Duration::from_micros(now_us().saturating_sub(since)))
    }
}

/// A session's [`ClientState`] as the guards below keep it: inside whatever holds it (the
/// admin console's registry entry of the client), with no allocation of its own.
pub type StateRef = std::sync::Arc<dyn AsRef<ClientState> + Send + Sync>;

/// Counts a session in [`CLIENTS_ACTIVE`] (and its [`ClientState`]) while it lives.
pub struct Active(Option<StateRef>);

impl Active {
    #[inline]
    pub fn enter() -> Active {
        Active::enter_for(None)
    }

    /// Also marks `state` active (SHOW CLIENTS).
    #[inline]
    pub fn enter_for(state: Option<StateRef>) -> Active {
        CLIENTS_ACTIVE.add(1);
        if let Some(s) = &state {
            (**s).as_ref().active.fetch_add(1, Ordering::Relaxed);
        }
        Active(state)
    }
}

impl Drop for Active {
    #[inline]
    fn drop(&mut self) {
        CLIENTS_ACTIVE.sub(1);
        if let Some(s) = &self.0 {
            (**s).as_ref().active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts a session in [`CLIENTS_WAITING`] (and its [`ClientState`]) while it lives.
pub struct Waiting(Option<StateRef>);

impl Waiting {
    #[inline]
    pub fn enter() -> Waiting {
        Waiting::enter_for(None)
    }

    /// Also marks `state` waiting, since now (SHOW CLIENTS' wait, SHOW POOLS' maxwait).
    #[inline]
    pub fn enter_for(state: Option<StateRef>) -> Waiting {
        CLIENTS_WAITING.add(1);
        if let Some(s) = &state {
            let s = (**s).as_ref();
            if s.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
                s.wait_since_us.store(now_us(), Ordering::Relaxed);
            }
        }
        Waiting(state)
    }
}

impl Drop for Waiting {
    #[inline]
    fn drop(&mut self) {
        CLIENTS_WAITING.sub(1);
        if let Some(s) = &self.0 {
            let s = (**s).as_ref();
            if s.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
                s.wait_since_us.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_body(code: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, v) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', code),
            (b'M', "boom"),
        ] {
            b.push(t);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn classes_map_to_their_own_slot() {
        for (i, c) in CLASSES.iter().enumerate() {
            let b = c.as_bytes();
            assert_eq!(class_slot([b[0], b[1]]), i, "{c}");
            assert_eq!(slot_label(i), *c);
        }
        assert_eq!(class_slot(*b"ZZ"), OTHER);
        assert_eq!(class_slot(*b"2a"), OTHER);
        assert_eq!(class_slot([0, 0xff]), OTHER);
        assert_eq!(slot_label(OTHER), "other");
    }

    #[test]
    fn class_is_read_from_the_body() {
        assert_eq!(sqlstate_class(&error_body("22012")), Some(*b"22"));
        assert_eq!(sqlstate_class(&error_body("X")), None);
        assert_eq!(sqlstate_class(b"Mno code\0\0"), None);
        assert_eq!(sqlstate_class(b"C22"), None, "unterminated field");
        assert_eq!(sqlstate_class(b""), None);
    }

    #[test]
    fn counts_by_class() {
        let e = ErrorClasses::new();
        e.count_body(&error_body("22012"));
        e.count_body(&error_body("22P02"));
        e.count_body(&error_body("42P01"));
        e.count_body(&error_body("QQ000"));
        e.count_body(b"Mno code\0\0");
        assert_eq!(e.get("22"), 2);
        assert_eq!(e.get("42"), 1);
        assert_eq!(e.get("other"), 2);
        assert_eq!(e.nonzero(), vec![("22", 2), ("42", 1), ("other", 2)]);
    }

    #[test]
    fn guards_give_their_count_back() {
        let (a0, w0) = (CLIENTS_ACTIVE.get(), CLIENTS_WAITING.get());
        {
            let _a = Active::enter();
            let _w = Waiting::enter();
            assert!(CLIENTS_ACTIVE.get() > a0);
            assert!(CLIENTS_WAITING.get() > w0);
        }
        // No lib test runs a session, so nothing else moves these gauges.
        assert_eq!(CLIENTS_ACTIVE.get(), a0);
        assert_eq!(CLIENTS_WAITING.get(), w0);
    }
}
