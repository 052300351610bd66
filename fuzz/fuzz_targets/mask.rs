//! router/mask.rs: `mask_spans` / `mask` over arbitrary text (the plan-cache key of every
//! simple-protocol statement).
//! Properties:
//! - every literal span lies inside the text on character boundaries and has a value;
//! - a cacheable key holds exactly one mark per literal, and the hint index is a literal;
//! - masking keeps the statement's shape: put an empty string literal where each mark is
//!   (and a quoted hint value in the canonical hint comment), mask again, and the key is
//!   the same text (marks spaced out) with the same number of literals, no more operators.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgtenant::router::mask::{mask, mask_spans, MARK};

const HINT: &str = " /*tenant_id=\u{1}*/ ";

fn spaced(key: &str) -> (String, String) {
    let m = MARK.to_string();
    (
        key.replace(MARK, " '' "),
        key.replace(MARK, &format!(" {m} ")),
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let m = mask_spans(sql);
    for (k, l) in m.lits.iter().enumerate() {
        assert!(l.start <= l.end && l.end <= sql.len(), "span {l:?}");
        assert!(
            sql.is_char_boundary(l.start) && sql.is_char_boundary(l.end),
            "span {l:?}"
        );
        assert!(m.literal(sql, k).is_some());
    }
    if let Some(h) = m.hint {
        assert!(h < m.lits.len());
    }
    let (key, values) = mask(sql);
    assert_eq!(key, m.key);
    assert_eq!(values.len(), m.lits.len());
    if !m.cacheable {
        return;
    }
    assert_eq!(
        m.key.matches(MARK).count(),
        m.lits.len(),
        "marks vs literals"
    );

    // Re-mask the key with the marks turned back into (empty) literals.
    let (text, want) = match m.hint {
        None => spaced(&m.key),
        Some(_) => {
            let (a, b) = m
                .key
                .split_once(HINT)
                .expect("a hint leaves its canonical comment");
            let (ta, wa) = spaced(a);
            let (tb, wb) = spaced(b);
            (
                format!("{ta} /*tenant_id='h'*/ {tb}"),
                format!("{wa} {HINT} {wb}"),
            )
        }
    };
    let m2 = mask_spans(&text);
    assert!(m2.cacheable, "re-masked text is not cacheable: {text:?}");
    assert_eq!(m2.key, want, "masking does not keep the shape of {text:?}");
    assert_eq!(m2.lits.len(), m.lits.len());
    assert_eq!(m2.hint, m.hint);
    assert!(m2.operators <= m.operators);
    for k in 0..m2.lits.len() {
        let v = m2.literal(&text, k).unwrap();
        let want = if Some(k) == m.hint { "h" } else { "" };
        assert_eq!(v, want);
    }
});
