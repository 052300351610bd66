//! citus/hash.rs against PostgreSQL itself: a differential target over the answers a real
//! server gave (fuzz/oracle/pg_hashes.tsv, captured by fuzz/oracle/capture.sh the way
//! tests/hash.rs asks: `hashint8($1::text::int8)`, …, errors as SQLSTATEs).
//!
//! At start every recorded answer is checked as is. Then each input picks a recorded
//! value and rewrites it in a way PostgreSQL's input functions provably read the same
//! (C white space around an integer, leading zeros after its sign, a uuid's hex digits
//! in either case and its hyphens and braces re-spelt, trailing spaces on a bpchar), and
//! pgtenant must give PostgreSQL's answer: the same hash, or an error of the same kind
//! (22P02 invalid syntax, 22003 out of range). The one leniency: input syntax that only
//! PostgreSQL 16+ accepts (`0x`, `0o`, `0b`, `_`) may be an error in pgtenant, which then
//! routes through the coordinator (see `hash_value`).
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::citus::hash::{hash_value, HashError};
use pgtenant::citus::DistType;

struct Answer {
    ty: DistType,
    input: String,
    pg: Result<i32, String>,
}

fn oracle() -> &'static [Answer] {
    static O: std::sync::OnceLock<Vec<Answer>> = std::sync::OnceLock::new();
    O.get_or_init(|| {
        let mut v = Vec::new();
        for line in include_str!("../oracle/pg_hashes.tsv").lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let ty = match f[0] {
                "int2" => DistType::Int2,
                "int4" => DistType::Int4,
                "int8" => DistType::Int8,
                "text" => DistType::Text,
                "bpchar" => DistType::Bpchar,
                "uuid" => DistType::Uuid,
                t => panic!("oracle: unknown type {t}"),
            };
            let bytes: Vec<u8> = (0..f[1].len() / 2)
                .map(|i| u8::from_str_radix(&f[1][2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let input = String::from_utf8(bytes).unwrap();
            let pg = match f[2].strip_prefix("E:") {
                Some(code) => Err(code.to_string()),
                None => Ok(f[2].parse().unwrap()),
            };
            v.push(Answer { ty, input, pg });
        }
        assert!(v.len() > 500, "oracle too small");
        for a in &v {
            agree(a, &a.input);
        }
        v
    })
}

fn pg16_syntax(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    ["0x", "0o", "0b", "_"].iter().any(|p| l.contains(p))
}

fn agree(a: &Answer, text: &str) {
    let ours = hash_value(a.ty, text);
    match (&ours, &a.pg) {
        (Ok(h), Ok(p)) => assert_eq!(h, p, "{:?} {text:?}: pgtenant {h}, PostgreSQL {p}", a.ty),
        (Err(HashError::InvalidSyntax(_)), Err(c)) if c == "22P02" => {}
        (Err(HashError::OutOfRange(_)), Err(c)) if c == "22003" => {}
        (Err(_), Ok(_)) if pg16_syntax(text) => {}
        _ => panic!(
            "{:?} {text:?}: pgtenant {ours:?}, PostgreSQL {:?}",
            a.ty, a.pg
        ),
    }
}

const C_SPACE: &[u8] = b" \t\n\x0b\x0c\r";

#[derive(Arbitrary, Debug)]
struct Input {
    pick: u16,
    before: Vec<u8>,
    after: Vec<u8>,
    zeros: u8,
    bits: u64,
    braces: bool,
}

fn ws(sel: &[u8]) -> String {
    sel.iter()
        .take(6)
        .map(|b| C_SPACE[usize::from(*b) % C_SPACE.len()] as char)
        .collect()
}

fuzz_target!(|input: Input| {
    let o = oracle();
    let a = &o[usize::from(input.pick) % o.len()];
    let text = match a.ty {
        DistType::Int2 | DistType::Int4 | DistType::Int8 => {
            let mut core = a.input.clone();
            if a.pg.is_ok() && input.zeros > 0 {
                // After the white space and the sign: zeros do not change the value.
                let t =
                    core.trim_start_matches(|c: char| c.is_ascii() && C_SPACE.contains(&(c as u8)));
                let lead = core.len() - t.len();
                let sign = usize::from(t.starts_with(['+', '-']));
                core.insert_str(lead + sign, &"0".repeat(usize::from(input.zeros % 30)));
            }
            format!("{}{core}{}", ws(&input.before), ws(&input.after))
        }
        DistType::Uuid => {
            let mut s: String = a
                .input
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if c.is_ascii_hexdigit() && input.bits & (1 << (i % 64)) != 0 {
                        if c.is_ascii_lowercase() {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    } else {
                        c
                    }
                })
                .collect();
            if a.pg.is_ok() && input.zeros & 1 == 1 {
                let hex: String = s.chars().filter(char::is_ascii_hexdigit).collect();
                let mut r = String::new();
                for (i, c) in hex.chars().enumerate() {
                    r.push(c);
                    if i % 4 == 3 && i < 31 && input.bits & (1 << (32 + i / 4)) != 0 {
                        r.push('-');
                    }
                }
                s = if input.braces { format!("{{{r}}}") } else { r };
            }
            s
        }
        DistType::Bpchar => format!("{}{}", a.input, " ".repeat(usize::from(input.zeros % 20))),
        _ => a.input.clone(),
    };
    agree(a, &text);
});
