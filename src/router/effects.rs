//! What a DML statement may do to the session that its leading keywords do not show.
//!
//! A `SELECT` can change the session through the functions it calls: `set_config`, a
//! function of the application's that runs `set_config(…, false)` or `SET ROLE`, takes a
//! session advisory lock, creates a temp table or prepares a statement through dynamic
//! SQL. pgtenant cannot see inside functions, so it treats every call of a function it
//! does not know to be harmless as "may have changed the session": the session loop then
//! reads the session back when the transaction ends (see `frontend::session::check`).
//!
//! Rules:
//! - A call is an identifier (optionally qualified) followed by `(`. It is harmless when
//!   its name is a SQL keyword that takes parentheses, a type name (a cast), or a
//!   built-in function known to leave the session alone (`KNOWN_HARMLESS`), unqualified
//!   or qualified with `pg_catalog`. Anything else — a quoted name, another schema, an
//!   unknown name — counts as opaque.
//! - `INSERT INTO t (…)` and `… AS alias (…)` / `::type(…)` are column lists and type
//!   modifiers, not calls.
//! - `SELECT … INTO` creates a table (a temp one, maybe): opaque.
//! - Strings, quoted identifiers, dollar quotes and comments are skipped, never read as
//!   code. Unknown input errs on the side of "opaque": a false positive costs one
//!   read-back query, a false negative costs isolation.
//! - What triggers, rules, views, user-defined operators and row-level-security policies
//!   run is not visible in the text (only a table's owner can create them); the
//!   `session_check = always` setting covers them.
//!
//! The scan is one pass over the bytes with no allocation; statements without a `(` and
//! without `into` (most of `pgbench -S`) are answered by a `memchr` and a short search.

/// Function and keyword names (lower case) that take parentheses and cannot change
/// session state. Sorted for binary search.
const KNOWN_HARMLESS: &[&str] = &[
    "abs",
    "acos",
    "age",
    "all",
    "and",
    "any",
    "array",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_lower",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "as",
    "ascii",
    "asin",
    "atan",
    "atan2",
    "avg",
    "between",
    "bigint",
    "bit",
    "bit_and",
    "bit_length",
    "bit_or",
    "bool_and",
    "bool_or",
    "boolean",
    "btrim",
    "by",
    "cardinality",
    "case",
    "cast",
    "cbrt",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "character_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "conflict",
    "corr",
    "cos",
    "count",
    "cube",
    "cume_dist",
    "current_setting",
    "currval",
    "date",
    "date_bin",
    "date_part",
    "date_trunc",
    "decimal",
    "decode",
    "degrees",
    "dense_rank",
    "distinct",
    "div",
    "do",
    "double",
    "else",
    "encode",
    "every",
    "except",
    "exists",
    "exp",
    "extract",
    "factorial",
    "filter",
    "first_value",
    "float",
    "float4",
    "float8",
    "floor",
    "format",
    "from",
    "gcd",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "group",
    "grouping",
    "hashtext",
    "having",
    "ilike",
    "in",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isfinite",
    "join",
    "json",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_populate_record",
    "json_strip_nulls",
    "json_typeof",
    "jsonb",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_populate_record",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_value",
    "lateral",
    "lcm",
    "lead",
    "least",
    "left",
    "length",
    "like",
    "limit",
    "ln",
    "log",
    "log10",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "mode",
    "nextval",
    "normalize",
    "not",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "numeric",
    "octet_length",
    "offset",
    "on",
    "or",
    "over",
    "overlaps",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_backend_pid",
    "pg_column_size",
    "pg_current_xact_id",
    "pg_is_in_recovery",
    "pg_relation_size",
    "pg_sleep",
    "pg_total_relation_size",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_typeof",
    "pi",
    "plainto_tsquery",
    "position",
    "pow",
    "power",
    "precision",
    "radians",
    "random",
    "rank",
    "real",
    "regexp_count",
    "regexp_instr",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_substr",
    "repeat",
    "replace",
    "returning",
    "reverse",
    "right",
    "rollup",
    "round",
    "row",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "select",
    "set",
    "sets",
    "setweight",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sign",
    "similar",
    "sin",
    "smallint",
    "some",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "string_to_array",
    "string_to_table",
    "strpos",
    "substr",
    "substring",
    "sum",
    "tan",
    "text",
    "then",
    "time",
    "timeofday",
    "timestamp",
    "timestamptz",
    "timezone",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "to_tsquery",
    "to_tsvector",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "ts_headline",
    "ts_rank",
    "ts_rank_cd",
    "txid_current",
    "union",
    "unnest",
    "upper",
    "using",
    "uuid",
    "uuid_generate_v4",
    "values",
    "var_pop",
    "var_samp",
    "varchar",
    "variance",
    "varying",
    "version",
    "websearch_to_tsquery",
    "when",
    "where",
    "width_bucket",
    "with",
    "within",
    "xor",
];

fn harmless(name: &[u8]) -> bool {
    if name.len() > 40 {
        return false;
    }
    let mut buf = [0u8; 40];
    let lower = &mut buf[..name.len()];
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    KNOWN_HARMLESS
        .binary_search_by(|k| k.as_bytes().cmp(lower))
        .is_ok()
}

/// Known-harmless calls that still must not leave the coordinator for a read to move to
/// another node (`router` rules, "Read-only statements"): sequences, transaction ids and
/// transaction-level advisory locks act on the node that runs them, and relation sizes
/// measure that node's storage. Sorted.
const NODE_BOUND: &[&str] = &[
    "currval",
    "nextval",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_current_xact_id",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "txid_current",
];

/// Read-only calls that are not in `KNOWN_HARMLESS` because they need no parentheses (the
/// session scan only looks at `name(`) or are told apart by the parser: the SQL-standard
/// value functions, and the functions that name the server answering. Sorted.
const READ_ONLY_EXTRA: &[&str] = &[
    "current_catalog",
    "current_database",
    "current_date",
    "current_role",
    "current_schema",
    "current_schemas",
    "current_time",
    "current_timestamp",
    "current_user",
    "inet_server_addr",
    "inet_server_port",
    "localtime",
    "localtimestamp",
    "session_user",
    "user",
];

/// Is a call of `name` (folded as PostgreSQL folds it, unqualified or `pg_catalog.`)
/// certainly read-only, with the same effect on whichever node of the cluster runs it? A
/// read may then leave the coordinator (`multi_tenant_reads = any`). Functions that answer
/// which server ran them (`inet_server_port`, `pg_backend_pid`, `version`) count: that is
/// what they are asked.
pub fn read_only_call(name: &str) -> bool {
    // A quoted name keeps its case: `"Lower"` is another function than `lower`.
    if name.bytes().any(|b| b.is_ascii_uppercase()) || NODE_BOUND.binary_search(&name).is_ok() {
        return false;
    }
    harmless(name.as_bytes()) || READ_ONLY_EXTRA.binary_search(&name).is_ok()
}

/// May this DML text change the session through what it calls (see the module rules)?
pub fn opaque(sql: &str) -> bool {
    let b = sql.as_bytes();
    if memchr::memchr(b'(', b).is_none() && !contains_word(b, b"into") {
        return false;
    }
    if b.len() > CACHED_MAX {
        return Scan { s: b, i: 0 }.opaque();
    }
    // Applications send the same texts again and again (an unnamed Parse per execution):
    // the answer is kept per thread, keyed by the whole text (compared in full, so a
    // client cannot make one text pass for another).
    let slot = (hash(b) as usize) % CACHE_SLOTS;
    let hit = CACHE.with(|c| {
        let c = c.borrow();
        c.get(slot)
            .and_then(|e| e.as_ref())
            .filter(|(t, _)| &t[..] == b)
            .map(|(_, v)| *v)
    });
    if let Some(v) = hit {
        return v;
    }
    let v = Scan { s: b, i: 0 }.opaque();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_empty() {
            c.resize_with(CACHE_SLOTS, || None);
        }
        c[slot] = Some((b.into(), v));
    });
    v
}

/// Could this plain DML text wait on another transaction, or sleep, for as long as that
/// pleases (server-side pipelining puts nothing behind such a statement: `pool::batch`)?
/// False only for a plain read the scan can vouch for: the first word is `SELECT`,
/// `VALUES` or `WITH`, and no word of it outside strings, quoted names and comments is
/// `INSERT`, `UPDATE`, `DELETE` or `MERGE` (a write, or a data-modifying `WITH`: it may
/// wait on a row lock or a unique-index conflict), `SHARE` (`FOR UPDATE`, `FOR NO KEY
/// UPDATE`, `FOR SHARE`, `FOR KEY SHARE`: row locks), or names a sleep or an advisory
/// lock (`pg_sleep…`, `…advisory…`). What only DDL's ACCESS EXCLUSIVE lock blocks (a read
/// of a table) is not counted: it blocks every connection alike. Unknown input errs on
/// the side of "may wait" (a column named `share` costs a batch place, nothing more).
/// What views, rules and user-defined operators run is not visible in the text, as for
/// [`opaque`].
pub fn may_wait(sql: &str) -> bool {
    Scan {
        s: sql.as_bytes(),
        i: 0,
    }
    .may_wait()
}

/// Texts longer than this are scanned every time (and not kept).
const CACHED_MAX: usize = 2048;
/// Entries per thread (direct-mapped: a text replaces the one in its slot).
const CACHE_SLOTS: usize = 256;

/// A text and whether it is opaque.
type Cached = Option<(Box<[u8]>, bool)>;

thread_local! {
    static CACHE: std::cell::RefCell<Vec<Cached>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// FNV-1a over 8-byte words: cheap, and only picks a slot (the text is compared in full).
fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &x in chunks.remainder() {
        h = (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// Does `b` contain `word` (ASCII letters, any case) anywhere? A cheap pre-filter only.
fn contains_word(b: &[u8], word: &[u8]) -> bool {
    let (lo, up) = (word[0].to_ascii_lowercase(), word[0].to_ascii_uppercase());
    memchr::memchr2_iter(lo, up, b).any(|i| {
        b.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })
}

/// A token as the scan remembers it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    /// A bare word (keyword or identifier) at s[a..b].
    Word(usize, usize),
    /// A quoted identifier.
    Quoted,
    /// `::`
    Cast,
    /// `.`
    Dot,
    /// `;`
    Semi,
    /// Any other symbol or literal.
    Other,
}

struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn word_eq(&self, t: Tok, w: &[u8]) -> bool {
        matches!(t, Tok::Word(a, b) if self.s[a..b].eq_ignore_ascii_case(w))
    }

    fn opaque(&mut self) -> bool {
        // The last two tokens before the current one, and the statement's first word.
        // last[0] is the latest token.
        let mut last = [Tok::None; 4];
        let mut first: Tok = Tok::None;
        while self.i < self.s.len() {
            let c = self.peek(0);
            let tok = match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                    self.i += 1;
                    continue;
                }
                b'-' if self.peek(1) == b'-' => {
                    self.line_comment();
                    continue;
                }
                b'/' if self.peek(1) == b'*' => {
                    self.block_comment();
                    continue;
                }
                b'\'' => {
                    // E'…' (prev is the bare word `e` right before the quote) takes
                    // backslash escapes.
                    let escapes = matches!(last[0], Tok::Word(a, b) if b == self.i && b - a == 1
                        && self.s[a].eq_ignore_ascii_case(&b'e'));
                    self.string(escapes);
                    Tok::Other
                }
                b'"' => {
                    self.string(false);
                    Tok::Quoted
                }
                b'$' => {
                    self.dollar();
                    Tok::Other
                }
                b';' => {
                    self.i += 1;
                    Tok::Semi
                }
                b':' if self.peek(1) == b':' => {
                    self.i += 2;
                    Tok::Cast
                }
                b'.' if !self.peek(1).is_ascii_digit() => {
                    self.i += 1;
                    Tok::Dot
                }
                b'(' => {
                    self.i += 1;
                    if self.is_call(last) {
                        return true;
                    }
                    Tok::Other
                }
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let (a, b) = self.word();
                    Tok::Word(a, b)
                }
                c if c.is_ascii_digit() => {
                    while self.i < self.s.len()
                        && (self.peek(0).is_ascii_alphanumeric() || self.peek(0) == b'.')
                    {
                        self.i += 1;
                    }
                    Tok::Other
                }
                _ => {
                    self.i += 1;
                    Tok::Other
                }
            };
            if tok == Tok::Semi {
                first = Tok::None;
                last = [Tok::None; 4];
                continue;
            }
            if first == Tok::None {
                first = tok;
            } else if self.word_eq(tok, b"into")
                && !self.word_eq(first, b"insert")
                && !self.word_eq(first, b"merge")
            {
                // SELECT … INTO creates a table; `INSERT … INTO` is the only other INTO
                // in DML (WITH … INSERT INTO is found by the word before it).
                if !self.word_eq(last[0], b"insert") {
                    return true;
                }
            }
            last = [tok, last[0], last[1], last[2]];
        }
        false
    }

    /// Past a `--` comment, to the end of its line.
    fn line_comment(&mut self) {
        while self.i < self.s.len() && !matches!(self.peek(0), b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// The identifier or key word starting here (its first byte is a letter, `_` or a
    /// non-ASCII byte): its bounds, the scan moved past it.
    fn word(&mut self) -> (usize, usize) {
        let a = self.i;
        while self.i < self.s.len() {
            let c = self.peek(0);
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
                self.i += 1;
            } else {
                break;
            }
        }
        (a, self.i)
    }

    /// See [`may_wait`].
    fn may_wait(&mut self) -> bool {
        let mut first = true;
        while self.i < self.s.len() {
            match self.peek(0) {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'(' => self.i += 1,
                b'-' if self.peek(1) == b'-' => self.line_comment(),
                b'/' if self.peek(1) == b'*' => self.block_comment(),
                b'\'' => {
                    // E'…' takes backslash escapes: the word `e` right before the quote.
                    let escapes = self.i > 0
                        && self.s[self.i - 1].eq_ignore_ascii_case(&b'e')
                        && (self.i < 2
                            || !(self.s[self.i - 2].is_ascii_alphanumeric()
                                || matches!(self.s[self.i - 2], b'_' | b'$')
                                || self.s[self.i - 2] >= 0x80));
                    self.string(escapes);
                    first = false;
                }
                b'"' => {
                    self.string(false);
                    first = false;
                }
                b'$' => {
                    self.dollar();
                    first = false;
                }
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let (a, b) = self.word();
                    let w = &self.s[a..b];
                    let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
                    if first && !(is(b"select") || is(b"values") || is(b"with")) {
                        return true;
                    }
                    first = false;
                    if is(b"insert")
                        || is(b"update")
                        || is(b"delete")
                        || is(b"merge")
                        || is(b"share")
                        || (w.len() >= 8 && w[..8].eq_ignore_ascii_case(b"pg_sleep"))
                        || w.windows(8).any(|x| x.eq_ignore_ascii_case(b"advisory"))
                    {
                        return true;
                    }
                }
                c if c.is_ascii_digit() => {
                    while self.i < self.s.len()
                        && (self.peek(0).is_ascii_alphanumeric() || self.peek(0) == b'.')
                    {
                        self.i += 1;
                    }
                    first = false;
                }
                _ => {
                    if first {
                        return true;
                    }
                    self.i += 1;
                }
            }
        }
        // Nothing at all: not a statement the scan can vouch for.
        first
    }

    /// A `(` follows `last[0]` (the latest token first): is this an opaque call?
    fn is_call(&self, last: [Tok; 4]) -> bool {
        let name = last[0];
        if !matches!(name, Tok::Word(..) | Tok::Quoted) {
            return false;
        }
        // The schema of a qualified name, and the token before the (qualified) name.
        let (qualifier, before) = if last[1] == Tok::Dot {
            (last[2], last[3])
        } else {
            (Tok::None, last[1])
        };
        // `INTO [s.]t (cols)`, `AS alias (cols)`, `::type(n)`: column lists and type
        // modifiers, not calls.
        if self.word_eq(before, b"into") || self.word_eq(before, b"as") || before == Tok::Cast {
            return false;
        }
        match (name, qualifier) {
            (Tok::Word(a, b), Tok::None) => !harmless(&self.s[a..b]),
            (Tok::Word(a, b), q) => !(self.word_eq(q, b"pg_catalog") && harmless(&self.s[a..b])),
            _ => true,
        }
    }

    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.i < self.s.len() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.i += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth = depth.saturating_sub(1);
                self.i += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.i += 1;
            }
        }
    }

    /// A quoted string or identifier starting at the quote; a doubled quote is one quote.
    fn string(&mut self, escapes: bool) {
        let q = self.peek(0);
        self.i += 1;
        while self.i < self.s.len() {
            let c = self.peek(0);
            if escapes && c == b'\\' {
                self.i += 2;
                continue;
            }
            self.i += 1;
            if c == q {
                if self.peek(0) == q {
                    self.i += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// `$tag$ … $tag$`, or `$1`.
    fn dollar(&mut self) {
        let start = self.i;
        let mut j = self.i + 1;
        // PostgreSQL's tag bytes: letters, digits (not first), `_`, and any byte over 0x7F
        // (`$é$…$é$` is a quote: a scan that missed it would read its body as SQL).
        while j < self.s.len()
            && (self.s[j].is_ascii_alphanumeric() || self.s[j] == b'_' || self.s[j] >= 0x80)
        {
            j += 1;
        }
        let digit = self.s.get(start + 1).is_some_and(|c| c.is_ascii_digit());
        if j < self.s.len() && self.s[j] == b'$' && !digit {
            let tag = &self.s[start..=j];
            let body = j + 1;
            self.i = match memchr::memmem::find(&self.s[body..], tag) {
                Some(p) => body + p + tag.len(),
                None => self.s.len(),
            };
            return;
        }
        self.i = j.max(self.i + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_answers_are_per_text() {
        let harmless_q = "select count(*) from t where a in (1, 2)";
        let opaque_q = "select count(*) from t where a in (evil())";
        for _ in 0..3 {
            assert!(!opaque(harmless_q));
            assert!(opaque(opaque_q));
        }
    }

    #[test]
    fn word_prefilter() {
        assert!(contains_word(b"select a InTo t", b"into"));
        assert!(!contains_word(b"select int from t", b"into"));
        assert!(!contains_word(b"i", b"into"));
    }

    #[test]
    fn the_list_is_sorted() {
        assert!(KNOWN_HARMLESS.windows(2).all(|w| w[0] < w[1]));
        assert!(NODE_BOUND.windows(2).all(|w| w[0] < w[1]));
        assert!(READ_ONLY_EXTRA.windows(2).all(|w| w[0] < w[1]));
        assert!(!harmless(b"set_config") && !harmless(b"pg_advisory_lock"));
    }

    #[test]
    fn harmless_statements() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5",
            "select count(*), COALESCE(max(x), 0) from t where y in (1, 2) and z = any($1)",
            "INSERT INTO \"app_task\" (\"title\", \"done\") VALUES ('a(b)', false) RETURNING \"app_task\".\"id\"",
            "insert into public.t (a, b) values (1, 2)",
            "INSERT INTO \"s\".\"t\" (\"a\") VALUES (1)",
            "select x::numeric(10,2), cast(y as varchar(20)) from t as g(a, b)",
            "select 'f(x)', \"weird\" from t -- evil(1)\n /* f( /* g( */ */",
            "select pg_catalog.lower(name) from t",
            "UPDATE t SET (a, b) = (1, 2) WHERE id = 3",
            "insert into t values (1) on conflict (id) do update set a = excluded.a",
            "select E'\\'evil(' from t",
            "select $$ evil() $$, $1 from t",
            "select date_trunc('day', now()) at time zone 'UTC', extract(year from d) from t",
            "WITH q AS (SELECT 1) SELECT * FROM q",
            "with x as (select 1) insert into t (a) select * from x",
            "select exists (select 1 from t) and not (a or b)",
            "select row_number() over (partition by a order by b) from t",
        ] {
            assert!(!opaque(sql), "{sql}");
        }
    }

    #[test]
    fn statements_that_may_wait() {
        for sql in [
            "insert into t values (1)",
            "UPDATE t SET a = 1 WHERE id = 3",
            "delete from t",
            "with x as (delete from t returning *) select * from x",
            "WITH x AS (SELECT 1) UPDATE t SET a = 1",
            "select * from t for update",
            "select * from t where id = 1 FOR NO KEY UPDATE",
            "select * from t for share skip locked",
            "select * from t for key share",
            "select pg_sleep(1)",
            "select 1, pg_catalog.pg_sleep(0.001)",
            "select pg_sleep_for('1 s')",
            "select pg_advisory_xact_lock(1)",
            "SELECT PG_ADVISORY_XACT_LOCK_SHARED(1)",
            "select x from t /* c */ for/**/update",
            "merge into t using s on t.a = s.a when matched then delete",
            "table t",
            "",
            "   ",
            ";",
        ] {
            assert!(may_wait(sql), "{sql:?}");
        }
    }

    #[test]
    fn plain_reads_do_not_wait() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 5",
            "select count(*) from generate_series(1, 1000000)",
            "(select 1) union (select 2)",
            "values (1), (2)",
            "WITH q AS (SELECT 1) SELECT * FROM q",
            "select 'update', \"delete\", $$ for update $$ from t -- for update\n",
            "select E'\\' for update' from t",
            "select 1 /* pg_sleep(1) */",
            "select updated_at, shares from t",
            "select $1::int + 1",
        ] {
            assert!(!may_wait(sql), "{sql:?}");
        }
    }

    #[test]
    fn opaque_statements() {
        for sql in [
            "select use_tenant('acme')",
            "select set_config('app.' || 'x', 'v', false)",
            "SELECT pg_advisory_lock(1)",
            "select public.lower(x) from t",
            "select \"MyFunc\"(1)",
            "select * from t where id = f (1)",
            "select a, b into temp t2 from t",
            "select 1; select dblink_connect('c', 'x')",
            "select 1 --\r, pg_advisory_lock(7)",
            "select x from t where y = any(evil())",
            "select lower(evil(x)) from t",
            // A dollar-quote tag may hold bytes over 0x7F: the quote hides nothing.
            "SELECT $é$'$é$ AS a, pg_advisory_lock(8), become_admin(), $é$'$é$ AS b",
            "SELECT $é$'$é$ AS a INTO TEMP payments FROM pg_class LIMIT 0 --$é$'$é$",
        ] {
            assert!(opaque(sql), "{sql}");
        }
    }
}
