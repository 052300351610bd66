//! admin/parser.rs: the admin console's command parser.
//! Property: a command the parser accepts is one SHOW HELP lists
//! (`admin::parser::USAGE`): its words, split here independently (white space, `'…'`
//! strings with `''`, `=` on its own), match one usage line (`A|B` keywords in any case,
//! `<x>` one word, `<id>` a client id, `[<x>]` an optional last word, `[KW <x>]` optional
//! keyword-value pairs in any order), after an optional trailing `;`. Also: parsing is
//! deterministic and an empty command is `Empty`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgtenant::admin::parser::{parse, Command, USAGE};

fn words(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c.is_whitespace() {
            continue;
        }
        if c == '=' {
            out.push("=".to_string());
            continue;
        }
        let mut w = String::new();
        if c == '\'' {
            loop {
                match it.next()? {
                    '\'' if it.peek() == Some(&'\'') => {
                        it.next();
                        w.push('\'');
                    }
                    '\'' => break,
                    ch => w.push(ch),
                }
            }
        } else {
            w.push(c);
            while let Some(&ch) = it.peek() {
                if ch.is_whitespace() || ch == '=' || ch == '\'' {
                    break;
                }
                w.push(ch);
                it.next();
            }
        }
        out.push(w);
    }
    Some(out)
}

/// `line`'s fixed words and its `[KW <x>]` option groups (keywords).
fn option_groups(line: &str) -> (Vec<&str>, Vec<&str>) {
    let pat: Vec<&str> = line.split(' ').collect();
    let group = |p: &str| p.starts_with('[') && !p.ends_with(']');
    let fixed: Vec<&str> = pat.iter().take_while(|p| !group(p)).copied().collect();
    let groups = pat[fixed.len()..]
        .iter()
        .filter(|p| group(p))
        .map(|p| &p[1..])
        .collect();
    (fixed, groups)
}

fn matches(line: &str, w: &[String]) -> bool {
    let (fixed, groups) = option_groups(line);
    if !groups.is_empty() {
        // Options: keyword-value pairs after the fixed words, any order, each at most once.
        if w.len() < fixed.len() || !matches(&fixed.join(" "), &w[..fixed.len()]) {
            return false;
        }
        let rest = &w[fixed.len()..];
        let mut seen = vec![false; groups.len()];
        return rest.len() % 2 == 0
            && rest.chunks(2).all(|kv| {
                match groups.iter().position(|g| g.eq_ignore_ascii_case(&kv[0])) {
                    Some(i) if !seen[i] => {
                        seen[i] = true;
                        true
                    }
                    _ => false,
                }
            });
    }
    let pat: Vec<&str> = line.split(' ').collect();
    let optional = pat.last().is_some_and(|p| p.starts_with('['));
    let need = pat.len() - usize::from(optional);
    if w.len() < need || w.len() > pat.len() {
        return false;
    }
    pat.iter().zip(w).all(|(p, w)| match *p {
        "<id>" => w.parse::<u64>().is_ok(),
        p if p.starts_with('<') || p.starts_with('[') => true,
        p => p.split('|').any(|k| k.eq_ignore_ascii_case(w)),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let r = parse(text);
    assert_eq!(parse(text), r);
    let Ok(cmd) = r else { return };
    let core = text.trim().trim_end_matches(';').trim();
    if core.is_empty() {
        assert_eq!(cmd, Command::Empty);
        return;
    }
    let w = words(core).expect("accepted, so its quotes are closed");
    assert!(
        USAGE.iter().any(|l| matches(l, &w)),
        "accepted {text:?} ({cmd:?}, words {w:?}), which SHOW HELP does not list"
    );
});
