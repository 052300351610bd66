//! router/command.rs: `classify`, `classify_single`, `is_plain_dml`,
//! `custom_setting_names` and `effects::opaque` over arbitrary text.
//! Properties: deterministic; `classify_single` is `classify` when that has at most one
//! statement and None otherwise; plain DML classifies as one `Other`; there are never
//! more statements than `;`-separated pieces; names it returns are non-empty (except an
//! unnamed statement) and appear in the text (ignoring case and quotes); custom setting
//! names are dotted and appear in the text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgtenant::router::command::{
    classify, classify_single, custom_setting_names, is_plain_dml, Command,
};
use pgtenant::router::effects;

fn appears(name: &str, sql: &str) -> bool {
    let n = name.to_lowercase();
    let s = sql.to_lowercase();
    s.contains(&n) || s.replace("\"\"", "\"").contains(&n)
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let v = classify(sql);
    assert_eq!(classify(sql), v);
    assert!(
        v.len() <= sql.matches(';').count() + 1,
        "{} statements",
        v.len()
    );
    match classify_single(sql) {
        Some(c) => {
            assert!(
                v.len() <= 1,
                "classify_single said one, classify says {v:?}"
            );
            assert_eq!(v.first().unwrap_or(&Command::Other), &c);
        }
        None => assert!(
            v.len() > 1,
            "classify_single said several, classify says {v:?}"
        ),
    }
    if is_plain_dml(sql) {
        assert_eq!(v, vec![Command::Other]);
    }
    for c in &v {
        let name = match c {
            Command::Prepare { name } | Command::Execute { name } => Some(name),
            Command::Deallocate { name: Some(name) } => Some(name),
            Command::Listen { channel }
            | Command::Unlisten {
                channel: Some(channel),
            } => Some(channel),
            Command::DropDatabase { name } => {
                assert!(!name.is_empty());
                Some(name)
            }
            _ => None,
        };
        if let Some(n) = name {
            assert!(appears(n, sql), "{c:?} is not in the text");
        }
    }
    for n in custom_setting_names(sql) {
        assert!(n.contains('.'), "custom setting {n:?} has no dot");
        assert!(appears(&n, sql), "custom setting {n:?} is not in the text");
    }
    let _ = effects::opaque(sql);
});
