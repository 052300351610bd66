//! admin/parser.rs: the admin console's command parser.
//! Property: a command the parser accepts is one SHOW HELP lists
//! (`admin::parser::USAGE`): its words, split here independently (white space, `'…'`
//! strings with `''`, `=` on its own), match one usage line (`A|B` keywords in any case,
//! `<x>` one word, `<id>` a client id, `[…]` optional words), after an optional
//! trailing `;`. Also: parsing is deterministic and an empty command is `Empty`.
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

/// One element of a usage line.
enum Pat<'a> {
    /// `A|B`: one of these keywords, in any case.
    Word(&'a str),
    /// `<x>`: any one word (`<id>`: a client id).
    Arg(&'a str),
    /// `[…]`: these elements, or nothing.
    Optional(Vec<Pat<'a>>),
}

fn pattern(line: &str) -> Vec<Pat<'_>> {
    let mut out = Vec::new();
    let mut group: Option<Vec<Pat<'_>>> = None;
    for w in line.split(' ') {
        let opens = w.starts_with('[');
        let closes = w.ends_with(']');
        let core = w.trim_start_matches('[').trim_end_matches(']');
        let p = if core.starts_with('<') {
            Pat::Arg(core)
        } else {
            Pat::Word(core)
        };
        if opens {
            group = Some(Vec::new());
        }
        match group.as_mut() {
            Some(g) => g.push(p),
            None => out.push(p),
        }
        if closes {
            out.extend(group.take().map(Pat::Optional));
        }
    }
    out
}

fn match_from(pat: &[&Pat<'_>], w: &[String]) -> bool {
    let Some((first, rest)) = pat.split_first() else {
        return w.is_empty();
    };
    match first {
        Pat::Optional(g) => {
            let with: Vec<&Pat<'_>> = g.iter().chain(rest.iter().copied()).collect();
            match_from(&with, w) || match_from(rest, w)
        }
        Pat::Arg(a) => match w.split_first() {
            Some((x, more)) => (*a != "<id>" || x.parse::<u64>().is_ok()) && match_from(rest, more),
            None => false,
        },
        Pat::Word(k) => match w.split_first() {
            Some((x, more)) => k.split('|').any(|k| k.eq_ignore_ascii_case(x)) && match_from(rest, more),
            None => false,
        },
    }
}

fn matches(line: &str, w: &[String]) -> bool {
    let pat = pattern(line);
    let refs: Vec<&Pat<'_>> = pat.iter().collect();
    match_from(&refs, w)
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
