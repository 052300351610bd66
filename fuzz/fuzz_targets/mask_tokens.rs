//! router/mask.rs, structure-aware: statements built from SQL tokens (identifiers,
//! keywords, numbers, '…' / E'…' / $tag$…$tag$ strings, quoted identifiers, parameters,
//! operators, comments, tenant hints), joined by spaces.
//! Property: `mask` finds exactly the literals that were put in, in order, with their
//! values (string contents unescaped as PostgreSQL reads them), the first hint's value
//! among them, and nothing else; the key has one mark per literal.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::router::mask::{mask_spans, MARK};

#[derive(Arbitrary, Debug)]
enum Tok {
    Ident(u8),
    Word(String),
    Number {
        int: u64,
        frac: Option<u32>,
        exp: Option<i8>,
    },
    Str(String),
    EStr(String),
    Dollar {
        tag: u8,
        content: String,
    },
    QuotedIdent(String),
    Param(u16),
    Op(u8),
    Comment(String),
    LineComment(String),
    Hint(String),
}

const KEYWORDS: &[&str] = &[
    "select", "from", "where", "and", "or", "insert", "into", "values", "update", "set", "delete",
    "in", "is", "not", "null", "like", "between", "as", "join", "on", "limit",
];
const OPS: &[&str] = &[
    "=", "<", ">", "<>", "+", "*", "/", "(", ")", ",", ";", "::", "||", "%", "[", "]",
];

fn sqlcommenter(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|toks: Vec<Tok>| {
    let mut sql = String::new();
    let mut want: Vec<String> = Vec::new();
    let mut hint_at: Option<usize> = None;
    for t in toks {
        let piece = match t {
            Tok::Ident(i) => format!("t{i}"),
            Tok::Word(w) => {
                if !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()) {
                    w
                } else {
                    KEYWORDS[w.len() % KEYWORDS.len()].to_string()
                }
            }
            Tok::Number { int, frac, exp } => {
                let mut s = int.to_string();
                if let Some(f) = frac {
                    s.push_str(&format!(".{f}"));
                }
                if let Some(e) = exp {
                    s.push_str(&format!("e{e}"));
                }
                want.push(s.clone());
                s
            }
            Tok::Str(s) => {
                want.push(s.clone());
                format!("'{}'", s.replace('\'', "''"))
            }
            Tok::EStr(s) => {
                want.push(s.clone());
                format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
            Tok::Dollar { tag, content } => {
                let tag = ["", "q", "x_1", "tag"][usize::from(tag % 4)];
                let delim = format!("${tag}$");
                // The string ends at the first closing tag, which may begin inside the
                // content (`q$` + `$q$`).
                if format!("{content}{delim}").find(&delim) != Some(content.len()) {
                    continue;
                }
                want.push(content.clone());
                format!("{delim}{content}{delim}")
            }
            Tok::QuotedIdent(s) => {
                if s.contains(MARK) {
                    continue;
                }
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Tok::Param(n) => format!("${}", u32::from(n) + 1),
            Tok::Op(o) => OPS[usize::from(o) % OPS.len()].to_string(),
            Tok::Comment(c) => {
                if c.contains("/*")
                    || c.contains("*/")
                    || c.contains("tenant_id")
                    || c.ends_with('/')
                    || c.starts_with('*')
                {
                    continue;
                }
                format!("/*{c}*/")
            }
            Tok::LineComment(c) => {
                // A `--` comment ends at a line feed or a carriage return (PostgreSQL's
                // lexer, and the masker since bug 6).
                if c.contains(['\n', '\r']) {
                    continue;
                }
                format!("--{c}\n")
            }
            Tok::Hint(v) => {
                if v.is_empty() {
                    continue;
                }
                if hint_at.is_none() {
                    hint_at = Some(want.len());
                    want.push(v.clone());
                }
                format!("/*tenant_id='{}'*/", sqlcommenter(&v))
            }
        };
        sql.push_str(&piece);
        sql.push(' ');
    }
    let m = mask_spans(&sql);
    assert!(m.cacheable, "{sql:?}");
    let got: Vec<String> = (0..m.lits.len())
        .map(|k| m.literal(&sql, k).unwrap().into_owned())
        .collect();
    assert_eq!(got, want, "literals of {sql:?}");
    assert_eq!(m.hint, hint_at, "hint of {sql:?}");
    assert_eq!(m.key.matches(MARK).count(), want.len());
});
