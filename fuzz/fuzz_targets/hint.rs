//! The tenant-hint parser (router/mask.rs `find_hint_value` and its value decoding):
//! sqlcommenter comments (`/*key='value',tenant_id='42'*/`) with values encoded the
//! ways sqlcommenter writers do (URL %-escapes; `\'` for a quote inside quotes; bare).
//! Properties: the hint is the first comment's first `tenant_id` pair, its value decodes
//! to exactly what was encoded, a key that merely ends in `tenant_id` is no hint, and the
//! hint never changes the key text of the statement around it.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::router::mask::{mask_spans, MARK};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Enc {
    /// %-escape everything but unreserved characters, in quotes.
    Percent,
    /// In quotes; `'` as `\'`; `%`, `\`, `*`, `/` %-escaped.
    Minimal,
    /// No quotes; everything but unreserved characters %-escaped.
    Bare,
}

#[derive(Arbitrary, Debug)]
struct Pair {
    key: u8,
    value: String,
    enc: Enc,
    space_around_eq: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    comments: Vec<Vec<Pair>>,
    before: bool,
    stmt: u8,
}

const KEYS: &[&str] = &[
    "tenant_id",
    "route",
    "controller",
    "x_tenant_id",
    "tenant_idx",
    "framework",
    "TENANT_ID",
];
const STMTS: &[&str] = &[
    "select * from orders where account_id = 5",
    "select 1",
    "update events set v = 'x' where tenant = 'a'",
    "insert into t values ($1, 2)",
];

fn pct(b: u8) -> String {
    format!("%{b:02X}")
}

fn encode(v: &str, enc: Enc) -> String {
    let mut out = String::new();
    for ch in v.chars() {
        let unreserved = ch.is_ascii_alphanumeric() || "-_.~".contains(ch);
        match enc {
            Enc::Minimal if ch == '\'' => out.push_str("\\'"),
            Enc::Minimal if !"%\\*/".contains(ch) => out.push(ch),
            _ if unreserved => out.push(ch),
            _ => {
                let mut buf = [0u8; 4];
                for b in ch.encode_utf8(&mut buf).bytes() {
                    out.push_str(&pct(b));
                }
            }
        }
    }
    match enc {
        Enc::Bare => out,
        _ => format!("'{out}'"),
    }
}

fuzz_target!(|input: Input| {
    let stmt = STMTS[usize::from(input.stmt) % STMTS.len()];
    let mut comments = String::new();
    let mut want: Option<String> = None;
    for c in input.comments.iter().take(4) {
        let mut body = Vec::new();
        // Only a comment's first `tenant_id` pair is read; an empty value makes it no hint,
        // and the next comment is looked at.
        let mut first_in_comment = true;
        for p in c.iter().take(6) {
            let key = KEYS[usize::from(p.key) % KEYS.len()];
            let eq = if p.space_around_eq { " = " } else { "=" };
            // sqlcommenter %-escapes every value; only the hint's is written other ways.
            let enc = if key == "tenant_id" {
                p.enc
            } else {
                Enc::Percent
            };
            body.push(format!("{key}{eq}{}", encode(&p.value, enc)));
            if key == "tenant_id" && first_in_comment {
                first_in_comment = false;
                if want.is_none() && !p.value.is_empty() {
                    want = Some(p.value.clone());
                }
            }
        }
        comments.push_str(&format!("/*{}*/ ", body.join(",")));
    }
    let sql = if input.before {
        format!("{comments}{stmt}")
    } else {
        format!("{stmt} {comments}")
    };
    let m = mask_spans(&sql);
    assert!(m.cacheable);
    let got = m.hint.map(|k| m.literal(&sql, k).unwrap().into_owned());
    assert_eq!(got, want, "hint of {sql:?}");
    // The statement's own key does not depend on the comments' content.
    let plain = mask_spans(stmt);
    let stripped: String = m
        .key
        .replace(" /*tenant_id=\u{1}*/ ", "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut plain_key: String = plain.key.split_whitespace().collect::<Vec<_>>().join(" ");
    if plain_key.is_empty() {
        plain_key = String::new();
    }
    assert_eq!(stripped, plain_key);
    assert_eq!(
        m.key.matches(MARK).count(),
        plain.lits.len() + usize::from(want.is_some())
    );
});
