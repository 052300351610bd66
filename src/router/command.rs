//! A light statement classifier for the commands that change session state (SET, RESET,
//! DISCARD, PREPARE/EXECUTE/DEALLOCATE, LISTEN/UNLISTEN). It reads only the leading
//! keywords of each statement in a query string; it never parses full SQL, so it costs a
//! few hundred nanoseconds and cannot fail.

/// What a statement does to session state, by its leading keywords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET [SESSION] …` (not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`), `RESET …`
    /// or `DISCARD …`, or a call that may change settings: state must be re-read.
    SessionChange,
    /// `SET LOCAL …` and friends: ends with the transaction.
    LocalSet,
    /// `PREPARE name …`
    Prepare { name: String },
    /// `EXECUTE name …`
    Execute { name: String },
    /// `DEALLOCATE [PREPARE] name`; `None` = ALL.
    Deallocate { name: Option<String> },
    /// `DISCARD ALL`
    DiscardAll,
    /// `LISTEN channel`
    Listen { channel: String },
    /// `UNLISTEN channel`; `None` = `*`.
    Unlisten { channel: Option<String> },
    /// `DROP DATABASE [IF EXISTS] name`
    DropDatabase { name: String },
    /// `ALTER …`, `DROP …` (not a database) or `CREATE …` (not a temporary one, which no
    /// other session sees): prepared statements planned before it may be stale, so the
    /// ones pgtenant shares between clients are made afresh for later clients
    /// (`StatementRegistry::new_schema`). `opaque`: it may also change session state as
    /// [`Command::Opaque`] does (a `CREATE` may make a function, a sequence …).
    SchemaChange { opaque: bool },
    /// A statement that may change session state in ways its text does not show (`DO`,
    /// `CALL`, `CREATE` — temp tables —, `DECLARE … WITH HOLD`, `LOAD`, `EXPLAIN
    /// ANALYZE`, anything not known to be harmless): the session is read back after it.
    Opaque,
    /// Anything else: DML (whose calls `router::effects` judges), transaction control,
    /// SHOW, COPY, DDL that leaves the session alone.
    Other,
}

/// Leading keywords of statements that cannot change session state by themselves (DML
/// is judged by its calls, see `router::effects`). Anything else is [`Command::Opaque`].
const HARMLESS_LEADING: &[&str] = &[
    "abort",
    "alter",
    "analyze",
    "begin",
    "checkpoint",
    "cluster",
    "comment",
    "commit",
    "copy",
    "delete",
    "drop",
    "end",
    "fetch",
    "grant",
    "insert",
    "lock",
    "move",
    "notify",
    "refresh",
    "reindex",
    "release",
    "revoke",
    "rollback",
    "savepoint",
    "select",
    "show",
    "start",
    "table",
    "truncate",
    "update",
    "vacuum",
    "values",
    "with",
];

/// The prefix of pgtenant's own server-side statement names: a client may not prepare,
/// execute or deallocate a statement of such a name (`backend::server_statement_name`).
pub const RESERVED_STATEMENT_PREFIX: &str = "pgt_";

/// Is `name` (as PostgreSQL folds it) one of pgtenant's own statement names?
pub fn is_reserved_statement_name(name: &str) -> bool {
    name.strip_prefix(RESERVED_STATEMENT_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A single SELECT/INSERT/UPDATE/DELETE/WITH/VALUES statement (no `;` before its end):
/// none of the commands above. Checked first because it is most of the traffic and costs
/// one scan for `;` instead of a lexer pass with allocations.
pub fn is_plain_dml(sql: &str) -> bool {
    // Bytes, not chars: this runs on every simple Query.
    let t = sql.as_bytes();
    let start = t
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(t.len());
    let t = &t[start..];
    let word_end = t
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(t.len());
    let word = &t[..word_end];
    let dml = [
        &b"select"[..],
        b"insert",
        b"update",
        b"delete",
        b"with",
        b"values",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k));
    if !dml {
        return false;
    }
    // A `;` anywhere but at the very end may start another statement (or sit in a
    // literal: then the full lexer decides).
    match memchr::memchr(b';', t) {
        None => true,
        Some(i) => t[i + 1..].iter().all(|c| c.is_ascii_whitespace()),
    }
}

/// Classify every statement of a query string, in order.
pub fn classify(sql: &str) -> Vec<Command> {
    if is_plain_dml(sql) {
        return vec![Command::Other];
    }
    classify_lexed(sql)
}

/// [`classify`] without the plain-DML shortcut (the caller took it already).
fn classify_lexed(sql: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let mut lx = Lexer {
        s: sql.as_bytes(),
        i: 0,
    };
    loop {
        let words = lx.statement_words(5);
        if words.is_empty() {
            if lx.at_end() {
                break;
            }
            continue;
        }
        out.push(classify_words(&words));
        if lx.at_end() {
            break;
        }
    }
    out
}

/// Classify a string that must hold exactly one statement; `None` if it holds several.
pub fn classify_single(sql: &str) -> Option<Command> {
    if is_plain_dml(sql) {
        return Some(Command::Other);
    }
    let mut v = classify_lexed(sql);
    match v.len() {
        0 => Some(Command::Other),
        1 => v.pop(),
        _ => None,
    }
}

/// Does one of these statements change the schema ([`Command::SchemaChange`])?
pub fn changes_schema(cmds: &[Command]) -> bool {
    cmds.iter()
        .any(|c| matches!(c, Command::SchemaChange { .. }))
}

/// Custom settings a session keeps track of (and reads back by name); a client naming
/// more gets the first ones.
pub const MAX_CUSTOM_SETTINGS: usize = 64;

/// Names of custom (dotted) settings a query string sets: `SET [SESSION] app.x …` and
/// `set_config('app.x', …)` with a literal name, the first [`MAX_CUSTOM_SETTINGS`]
/// distinct ones (one pass over the text however many it names). PostgreSQL's
/// pg_settings does not list such placeholder settings, so the session loop reads them
/// back by name.
pub fn custom_setting_names(sql: &str) -> Vec<String> {
    scan_setting_names(sql).0
}

/// Does this text set a custom setting whose name the session cannot read back as the
/// server spells it (so that the next client must not find it: the server connection is
/// cleared with `RESET ALL` instead)? A `SET` of a name that is not bare ASCII dotted
/// parts written together (quoted, split by spaces or comments around its dot, with a
/// byte over 0x7F, a part over 63 bytes, which PostgreSQL cuts), `SET seed` (no check
/// reads it back, and RESET ALL does not reset it), a `set_config` whose name is not one
/// plain quoted literal (`set_config('app.' || x, …)`, `set_config(E'…'`, `($1`), and
/// texts naming more custom settings than [`MAX_CUSTOM_SETTINGS`].
pub fn unreadable_setting_names(sql: &str) -> bool {
    scan_setting_names(sql).1
}

/// The one scan behind [`custom_setting_names`] and [`unreadable_setting_names`]: the
/// names read back, and whether some name cannot be.
fn scan_setting_names(sql: &str) -> (Vec<String>, bool) {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut unreadable = false;
    // Past the cap, a name is not read back.
    let mut add = |out: &mut Vec<String>, name: &str| -> bool {
        if seen.contains(name) {
            return true;
        }
        if out.len() >= MAX_CUSTOM_SETTINGS {
            return false;
        }
        seen.insert(name.to_owned());
        out.push(name.to_owned());
        true
    };
    let mut lx = Lexer {
        s: sql.as_bytes(),
        i: 0,
    };
    while !unreadable {
        let w = lx.statement_words(3);
        if w.first().is_some_and(|x| x.keyword == "set") {
            let i = if w.get(1).is_some_and(|x| x.keyword == "session") {
                2
            } else {
                1
            };
            if let Some(n) = w.get(i) {
                let bare = !n.keyword.is_empty();
                if !bare || n.dot_after || n.ident == "seed" {
                    unreadable = true;
                } else if n.ident.contains('.') {
                    unreadable = !readable_name(&n.ident) || !add(&mut out, &n.ident);
                }
            }
        }
        if lx.at_end() {
            break;
        }
    }
    // `set_config(` calls: a byte scan (it may see one inside a literal or comment, which
    // costs only a `RESET ALL` or a name read back for nothing).
    let b = sql.as_bytes();
    let mut from = 0;
    while !unreadable {
        let Some(p) = b[from..]
            .windows(10)
            .position(|w| w.eq_ignore_ascii_case(b"set_config"))
        else {
            break;
        };
        let mut i = from + p + 10;
        from = i;
        let skip = |i: &mut usize| {
            while b.get(*i).is_some_and(|c| c.is_ascii_whitespace()) {
                *i += 1;
            }
        };
        skip(&mut i);
        if b.get(i) != Some(&b'(') {
            continue;
        }
        i += 1;
        skip(&mut i);
        // A plain literal: a quote, bytes without a quote or backslash, a quote, a comma.
        let literal = (b.get(i) == Some(&b'\'')).then(|| {
            let end = b[i + 1..].iter().position(|&c| c == b'\'')?;
            let name = &b[i + 1..i + 1 + end];
            let mut j = i + 2 + end;
            skip(&mut j);
            (!name.contains(&b'\\') && b.get(j) == Some(&b',')).then_some(name)
        });
        match literal.flatten() {
            Some(name) => {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                if name.contains('.') && !add(&mut out, &name) {
                    unreadable = true;
                }
            }
            None => unreadable = true,
        }
    }
    (out, unreadable)
}

/// A dotted name as a `SET` reads it back: ASCII parts of at most 63 bytes, none empty.
fn readable_name(name: &str) -> bool {
    name.split('.').all(|p| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    })
}

fn classify_words(w: &[Word]) -> Command {
    let kw = |i: usize| w.get(i).map(|x| x.keyword.as_str()).unwrap_or("");
    let name = |i: usize| w.get(i).map(|x| x.ident.clone());
    match kw(0) {
        "set" => match kw(1) {
            "local" | "transaction" | "constraints" => Command::LocalSet,
            _ => Command::SessionChange,
        },
        "reset" => Command::SessionChange,
        "discard" => match kw(1) {
            "all" => Command::DiscardAll,
            _ => Command::SessionChange,
        },
        "prepare" if kw(1) != "transaction" => match name(1) {
            Some(n) => Command::Prepare { name: n },
            None => Command::Other,
        },
        "execute" => match name(1) {
            Some(n) => Command::Execute { name: n },
            None => Command::Other,
        },
        "deallocate" => {
            let i = if kw(1) == "prepare" { 2 } else { 1 };
            match kw(i) {
                "all" => Command::Deallocate { name: None },
                _ => Command::Deallocate { name: name(i) },
            }
        }
        "drop" if kw(1) == "database" => {
            let i = if kw(2) == "if" && kw(3) == "exists" {
                4
            } else {
                2
            };
            match name(i) {
                Some(n) if !n.is_empty() => Command::DropDatabase { name: n },
                _ => Command::Other,
            }
        }
        "alter" | "drop" => Command::SchemaChange { opaque: false },
        "create" => {
            let temp = |w: &str| matches!(w, "temp" | "temporary");
            if temp(kw(1)) || (kw(1) == "local" && temp(kw(2))) {
                Command::Opaque
            } else {
                Command::SchemaChange { opaque: true }
            }
        }
        "listen" => match name(1) {
            Some(channel) => Command::Listen {
                channel: truncated_identifier(channel),
            },
            None => Command::Other,
        },
        "unlisten" => match w.get(1) {
            Some(x) if x.ident == "*" => Command::Unlisten { channel: None },
            Some(x) => Command::Unlisten {
                channel: Some(truncated_identifier(x.ident.clone())),
            },
            None => Command::Other,
        },
        "prepare" => Command::Other,
        k if HARMLESS_LEADING.binary_search(&k).is_ok() => Command::Other,
        _ => Command::Opaque,
    }
}

/// An identifier as PostgreSQL keeps it: at most NAMEDATALEN - 1 = 63 bytes, cut on a
/// character boundary (a channel named longer is the channel of its first 63 bytes).
fn truncated_identifier(mut s: String) -> String {
    let end = crate::protocol::prefix_within(&s, 63).len();
    s.truncate(end);
    s
}

/// A leading token: `keyword` is lower-cased (empty for quoted identifiers), `ident` is
/// the identifier as PostgreSQL folds it (lower-cased unless quoted).
#[derive(Default)]
struct Word {
    keyword: String,
    ident: String,
    /// A bare word followed, past spaces and comments, by a `.`: a dotted name that this
    /// lexer reads as parts (`app /**/ .x`, `app\n.x`).
    dot_after: bool,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            match self.peek(0) {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.i += 1,
                b'-' if self.peek(1) == b'-' => {
                    // As PostgreSQL's lexer: a line comment ends at \n or \r.
                    while !self.at_end() && !matches!(self.peek(0), b'\n' | b'\r') {
                        self.i += 1;
                    }
                }
                b'/' if self.peek(1) == b'*' => {
                    // Block comments nest in PostgreSQL.
                    let mut depth = 0usize;
                    while !self.at_end() {
                        if self.peek(0) == b'/' && self.peek(1) == b'*' {
                            depth += 1;
                            self.i += 2;
                        } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                            depth -= 1;
                            self.i += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            self.i += 1;
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Up to `n` leading words of the next statement; the rest of the statement is
    /// skipped (quotes, dollar quotes and comments respected) up to and past its `;`.
    fn statement_words(&mut self, n: usize) -> Vec<Word> {
        let mut words = Vec::new();
        loop {
            self.skip_space_and_comments();
            if self.at_end() {
                return words;
            }
            let c = self.peek(0);
            if c == b';' {
                self.i += 1;
                return words;
            }
            if words.len() < n && (c.is_ascii_alphabetic() || c == b'_' || c >= 0x80) {
                let start = self.i;
                while !self.at_end() {
                    let c = self.peek(0);
                    // `.` joins dotted names (custom settings like app.tenant).
                    if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'.' || c >= 0x80
                    {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                // PostgreSQL folds ASCII letters only (`Ä` stays `Ä`).
                let mut w = String::from_utf8_lossy(&self.s[start..self.i]).to_ascii_lowercase();
                if w == "u" && self.peek(0) == b'&' {
                    // U&"…" / U&'…': escapes this lexer does not read; named as such.
                    w.push('&');
                }
                if w == "e" && self.peek(0) == b'\'' {
                    self.escaped_string();
                }
                let at = self.i;
                self.skip_space_and_comments();
                let dot_after = self.peek(0) == b'.';
                self.i = at;
                words.push(Word {
                    keyword: w.clone(),
                    ident: w,
                    dot_after,
                });
                continue;
            }
            if words.len() < n && c == b'"' {
                let id = self.quoted(b'"');
                words.push(Word {
                    ident: id,
                    ..Default::default()
                });
                continue;
            }
            if words.len() < n && c == b'*' {
                self.i += 1;
                words.push(Word {
                    keyword: "*".into(),
                    ident: "*".into(),
                    ..Default::default()
                });
                continue;
            }
            // Past the leading words: skip one token of the rest of the statement. Words
            // are read whole (`x$a$` is one identifier, not a dollar quote), and `E'…'`
            // takes backslash escapes.
            match c {
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let start = self.i;
                    while !self.at_end() {
                        let c = self.peek(0);
                        if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                    if self.i - start == 1 && c.eq_ignore_ascii_case(&b'e') && self.peek(0) == b'\''
                    {
                        self.escaped_string();
                    }
                }
                b'\'' => {
                    self.quoted(b'\'');
                }
                b'"' => {
                    self.quoted(b'"');
                }
                b'$' => self.dollar_quoted(),
                _ => self.i += 1,
            }
            // Any non-word token ends the leading-word run.
            while words.len() < n {
                words.push(Word::default());
            }
        }
    }

    /// `E'…'` from its quote: a backslash escapes the next byte, a doubled quote is one.
    fn escaped_string(&mut self) {
        self.i += 1;
        while !self.at_end() {
            match self.peek(0) {
                b'\\' => self.i += 2,
                b'\'' if self.peek(1) == b'\'' => self.i += 2,
                b'\'' => {
                    self.i += 1;
                    return;
                }
                _ => self.i += 1,
            }
        }
    }

    /// A quoted string or identifier (doubled quote = one quote); returns its content.
    fn quoted(&mut self, q: u8) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while !self.at_end() {
            let c = self.peek(0);
            self.i += 1;
            if c == q {
                if self.peek(0) == q {
                    out.push(q);
                    self.i += 1;
                } else {
                    break;
                }
            } else {
                out.push(c);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `$tag$ … $tag$`, or a lone `$` (a parameter like `$1`).
    fn dollar_quoted(&mut self) {
        let start = self.i;
        let mut j = self.i + 1;
        // PostgreSQL's tag bytes: letters, digits (not first), `_`, and any byte over 0x7F.
        while j < self.s.len()
            && (self.s[j].is_ascii_alphanumeric() || self.s[j] == b'_' || self.s[j] >= 0x80)
        {
            j += 1;
        }
        // A tag cannot start with a digit ($1 is a parameter).
        let starts_with_digit = self.s.get(start + 1).is_some_and(|c| c.is_ascii_digit());
        if j < self.s.len() && self.s[j] == b'$' && !starts_with_digit {
            let tag = &self.s[start..=j];
            let body = j + 1;
            if let Some(pos) = self.s[body..].windows(tag.len()).position(|w| w == tag) {
                self.i = body + pos + tag.len();
                return;
            }
            self.i = self.s.len();
            return;
        }
        self.i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_commands() {
        assert_eq!(
            classify("SET TimeZone = 'UTC'"),
            vec![Command::SessionChange]
        );
        assert_eq!(
            classify("set session search_path to a, b"),
            vec![Command::SessionChange]
        );
        assert_eq!(
            classify("SET LOCAL statement_timeout = 5"),
            vec![Command::LocalSet]
        );
        assert_eq!(
            classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            vec![Command::LocalSet]
        );
        assert_eq!(
            classify("  /* c */ -- x\n RESET ALL;"),
            vec![Command::SessionChange]
        );
        assert_eq!(classify("DISCARD ALL"), vec![Command::DiscardAll]);
        assert_eq!(
            classify("select 1; set x.y = '1;2'; select ';'"),
            vec![Command::Other, Command::SessionChange, Command::Other]
        );
        // A dollar-quote tag may hold bytes over 0x7F (`$é$`): its body is a literal, and
        // what follows it is a statement.
        assert_eq!(
            classify("select $é$'$é$; set role admin; select $é$'$é$"),
            vec![Command::Other, Command::SessionChange, Command::Other]
        );
    }

    /// Names the session would not read back as the server spells them.
    #[test]
    fn unreadable_setting_names_are_seen() {
        for sql in [
            "SET app\n.tenant = 'acme'",
            "SET app\t.z = 'v'",
            "SET app/**/.y = 'v'",
            "set session app . x = 1",
            "SET app.Ä = 'v'",
            &format!("SET app.{} = 'v'", "x".repeat(64)),
            "SET \"app\".\"x\" = 'v'",
            "select set_config('app.' || 'u', 'v', false)",
            "select set_config(E'app.u', 'v', false)",
            "select set_config($1, 'v', false)",
            "select set_config('app.u''x', 'v', false)",
            &(0..65)
                .map(|i| format!("set app.s{i} = 1"))
                .collect::<Vec<_>>()
                .join("; "),
        ] {
            assert!(unreadable_setting_names(sql), "{sql}");
        }
        for sql in [
            "SET app.tenant = 'acme'",
            "set session My.X to 1; set timezone = 'UTC'",
            "SET TIME ZONE 'UTC'",
            "select set_config('app.user', $1, false)",
            "SELECT set_config ( 'app.user' , 'x', false)",
            "select 1",
        ] {
            assert!(!unreadable_setting_names(sql), "{sql}");
        }
    }

    #[test]
    fn custom_settings_are_found() {
        assert_eq!(
            custom_setting_names("SET app.tenant = '5'"),
            vec!["app.tenant".to_string()]
        );
        assert_eq!(
            custom_setting_names("set session My.X to 1; set timezone = 'UTC'"),
            vec!["my.x".to_string()]
        );
        assert_eq!(
            custom_setting_names(
                "select set_config( 'app.user', $1, false), set_config('TimeZone', 'UTC', false)"
            ),
            vec!["app.user".to_string()]
        );
        assert!(custom_setting_names("select 1").is_empty());
        // Repeats count once.
        assert_eq!(
            custom_setting_names(
                "set app.a = 1; set app.a = 2; select set_config('app.a', '3', false)"
            ),
            vec!["app.a".to_string()]
        );
    }

    /// A statement naming tens of thousands of settings costs one pass, and yields the
    /// first MAX_CUSTOM_SETTINGS: a client cannot stall a worker thread with it (a
    /// quadratic de-duplication took 1.2 s for 40,000 names), nor grow its session.
    #[test]
    fn many_custom_settings_cost_one_pass_and_are_capped() {
        let calls: Vec<String> = (0..40_000)
            .map(|i| format!("set_config('app.s{i}', 'v', false)"))
            .collect();
        let sql = format!("select {}", calls.join(", "));
        let t = std::time::Instant::now();
        let names = custom_setting_names(&sql);
        let took = t.elapsed();
        assert_eq!(names.len(), MAX_CUSTOM_SETTINGS);
        assert_eq!(names[0], "app.s0");
        assert!(took < std::time::Duration::from_millis(200), "{took:?}");
        let sets: Vec<String> = (0..40_000).map(|i| format!("set app.s{i} = 1")).collect();
        let names = custom_setting_names(&sets.join("; "));
        assert_eq!(names.len(), MAX_CUSTOM_SETTINGS);
    }

    #[test]
    fn plain_dml_is_recognised_cheaply() {
        assert!(is_plain_dml("  SELECT 1"));
        assert!(is_plain_dml("insert into t values (1);  "));
        assert!(!is_plain_dml("select 1; set x = 1"));
        assert!(!is_plain_dml("set x = 1"));
        assert!(!is_plain_dml("/* c */ select 1"));
        assert_eq!(
            classify("select ';'; set a = 1"),
            vec![Command::Other, Command::SessionChange]
        );
    }

    #[test]
    fn prepared_and_listen() {
        assert_eq!(
            classify("PREPARE q1(int) AS select $1"),
            vec![Command::Prepare { name: "q1".into() }]
        );
        assert_eq!(
            classify("prepare \"Q\" as select 1"),
            vec![Command::Prepare { name: "Q".into() }]
        );
        assert_eq!(
            classify("EXECUTE Q1(5)"),
            vec![Command::Execute { name: "q1".into() }]
        );
        assert_eq!(
            classify("DEALLOCATE PREPARE q1"),
            vec![Command::Deallocate {
                name: Some("q1".into())
            }]
        );
        assert_eq!(
            classify("deallocate all"),
            vec![Command::Deallocate { name: None }]
        );
        assert_eq!(
            classify("LISTEN chan"),
            vec![Command::Listen {
                channel: "chan".into()
            }]
        );
        assert_eq!(
            classify("UNLISTEN *"),
            vec![Command::Unlisten { channel: None }]
        );
        // Identifiers over 63 bytes are cut as PostgreSQL cuts them (on a character
        // boundary): the channel the server listens to is the cut one.
        let long = format!("LISTEN {}", "c".repeat(100));
        assert_eq!(
            classify(&long),
            vec![Command::Listen {
                channel: "c".repeat(63)
            }]
        );
        let wide = format!("UNLISTEN \"{}\"", "é".repeat(40));
        assert_eq!(
            classify(&wide),
            vec![Command::Unlisten {
                channel: Some("é".repeat(31))
            }]
        );
        assert_eq!(
            classify("select $$;set x$$; select $a$ ; $a$"),
            vec![Command::Other, Command::Other]
        );
        assert_eq!(classify_single("select 1;"), Some(Command::Other));
        assert_eq!(classify_single("select 1; select 2"), None);
        assert_eq!(classify(""), vec![]);
        assert_eq!(
            classify("DROP DATABASE test_app"),
            vec![Command::DropDatabase {
                name: "test_app".into()
            }]
        );
        assert_eq!(
            classify("drop database if exists \"T\" with (force)"),
            vec![Command::DropDatabase { name: "T".into() }]
        );
        assert_eq!(classify(";;"), vec![]);
    }

    #[test]
    fn opaque_statements_by_leading_keyword() {
        assert!(HARMLESS_LEADING.windows(2).all(|w| w[0] < w[1]));
        for sql in [
            "DO $$ begin perform set_config('app.x', '1', false); end $$",
            "call p()",
            "create temp table t (a int)",
            "declare c cursor with hold for select 1",
            "explain analyze select f()",
            "load 'auto_explain'",
            "merge into t using s on true when matched then delete",
        ] {
            assert_eq!(classify(sql), vec![Command::Opaque], "{sql}");
        }
        for sql in [
            "begin",
            "commit",
            "show timezone",
            "copy t from stdin",
            "select 1",
        ] {
            assert_eq!(classify(sql), vec![Command::Other], "{sql}");
        }
        assert!(is_reserved_statement_name("pgt_12") && !is_reserved_statement_name("PGT_1"));
        assert!(!is_reserved_statement_name("pgt_report"));
        // The lexer agrees with PostgreSQL's on what ends a comment or a string.
        assert_eq!(
            classify("select 1;--\rset role admin"),
            vec![Command::Other, Command::SessionChange]
        );
        assert_eq!(
            classify("select E'\\''; set role admin; -- '"),
            vec![Command::Other, Command::SessionChange]
        );
        assert_eq!(
            classify("select 1 as x$a$; set role admin; select 1 as y$a$"),
            vec![Command::Other, Command::SessionChange, Command::Other]
        );
        assert_eq!(
            classify("deallocate U&\"pgt\\005f5\""),
            vec![Command::Deallocate {
                name: Some("u&".into())
            }]
        );
    }
}

#[cfg(test)]
mod schema_tests {
    use super::{changes_schema, classify};

    #[test]
    fn schema_changes_are_alter_drop_and_lasting_creates() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c int",
            "drop type mood",
            "create type mood as enum ('a')",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "select 1; /* then */ alter table t alter c type text",
            "create unlogged table u (a int)",
        ] {
            assert!(changes_schema(&classify(sql)), "{sql}");
        }
        for sql in [
            "select 1",
            "insert into t values (1)",
            "create temp table x (a int)",
            "CREATE TEMPORARY TABLE x (a int)",
            "create local temp table x (a int)",
            "update t set altered = true",
            "select 'drop table t'",
            "-- alter table t\nselect 1",
        ] {
            assert!(!changes_schema(&classify(sql)), "{sql}");
        }
    }
}
