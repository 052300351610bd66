//! admin/parser.rs: the admin console's command parser.
//! Property: a command the parser accepts is one SHOW HELP lists
//! (`admin::parser::USAGE`): its words, split here independently (white space, `'…'`
//! strings with `''`, `=` on its own), match one usage line (`A|B` keywords in any case,
//! `<x>` one word, `<id>` a client id, `[…]` optional words; a run of optional groups in
//! any order, each at most once), after an optional trailing `;`. `SET TENANT`'s
//! `key = value` pairs are separated by commas that may be glued to a word
//! (`8,max_tps`): after its tenant value, such words are split here at their commas
//! (`,` a word of its own), as the parser does outside quotes (a quoted word with a comma
//! is never a valid key or value). Also: parsing is deterministic and an empty command is `Empty`.
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

/// `SET TENANT <value> …`: the words after the value split at commas.
fn split_set_tenant(w: Vec<String>) -> Vec<String> {
    let is = |i: usize, k: &str| w.get(i).is_some_and(|x| x.eq_ignore_ascii_case(k));
    // `SET tenant = x` (four words) is the generic SET, taken whole.
    let generic = w.len() == 4 && (is(2, "=") || is(2, "to"));
    if !(is(0, "set") && is(1, "tenant")) || w.len() < 4 || generic {
        return w;
    }
    let mut out: Vec<String> = w[..3].to_vec();
    for x in &w[3..] {
        for (i, piece) in x.split(',').enumerate() {
            if i > 0 {
                out.push(",".into());
            }
            if !piece.is_empty() {
                out.push(piece.into());
            }
        }
    }
    out
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

/// Does one element (a keyword or an argument) match one word?
fn one(p: &Pat<'_>, x: &str) -> bool {
    match p {
        Pat::Word(k) => k.split('|').any(|k| k.eq_ignore_ascii_case(x)),
        Pat::Arg(a) => *a != "<id>" || x.parse::<u64>().is_ok(),
        Pat::Optional(_) => false,
    }
}

/// How many words an optional group takes at the start of `w`, if it matches there.
fn prefix(g: &[Pat<'_>], w: &[String]) -> Option<usize> {
    (w.len() >= g.len() && g.iter().zip(w).all(|(p, x)| one(p, x))).then_some(g.len())
}

/// A run of optional groups, in any order, each at most once, then `rest`.
fn match_options(
    opts: &[&Vec<Pat<'_>>],
    used: &mut [bool],
    rest: &[&Pat<'_>],
    w: &[String],
) -> bool {
    if match_from(rest, w) {
        return true;
    }
    for i in 0..opts.len() {
        if used[i] {
            continue;
        }
        if let Some(n) = prefix(opts[i], w) {
            used[i] = true;
            if match_options(opts, used, rest, &w[n..]) {
                return true;
            }
            used[i] = false;
        }
    }
    false
}

fn match_from(pat: &[&Pat<'_>], w: &[String]) -> bool {
    let Some((first, rest)) = pat.split_first() else {
        return w.is_empty();
    };
    match first {
        Pat::Optional(_) => {
            let run = pat
                .iter()
                .take_while(|p| matches!(p, Pat::Optional(_)))
                .count();
            let opts: Vec<&Vec<Pat<'_>>> = pat[..run]
                .iter()
                .filter_map(|p| match p {
                    Pat::Optional(g) => Some(g),
                    _ => None,
                })
                .collect();
            let mut used = vec![false; opts.len()];
            match_options(&opts, &mut used, &pat[run..], w)
        }
        p => match w.split_first() {
            Some((x, more)) => one(p, x) && match_from(rest, more),
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
    let w = split_set_tenant(words(core).expect("accepted, so its quotes are closed"));
    assert!(
        USAGE.iter().any(|l| matches(l, &w)),
        "accepted {text:?} ({cmd:?}, words {w:?}), which SHOW HELP does not list"
    );
});
