//! citus/hash.rs: the hash of a distribution value from its text form (`hash_value`) and
//! its binary form (`hash_binary`).
//! Properties:
//! - integers: every spelling PostgreSQL accepts (C white space around, `+`, leading
//!   zeros) hashes as the value; int2, int4 and int8 hash a value they all hold alike;
//!   the text form and the 2-, 4- and 8-byte binary forms agree; out of range is an error
//!   in both;
//! - integer text in general follows PostgreSQL 15's `pg_strtoint` rules, written out
//!   here independently (syntax vs out-of-range decided in PostgreSQL's order);
//! - text and varchar: text form = binary form = `hashtext`; bpchar ignores trailing
//!   spaces (only spaces); binary text must be UTF-8 without NUL;
//! - uuid: its spellings (case, braces, hyphens) hash as its 16 bytes do.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::citus::hash::{
    hash_binary, hash_value, hashbpchar, hashint8, hashtext, uuid_hash, HashError,
};
use pgtenant::citus::DistType;

const C_SPACE: &[u8] = b" \t\n\x0b\x0c\r";
const INTS: [(DistType, &str, i64, i64); 3] = [
    (DistType::Int2, "smallint", i16::MIN as i64, i16::MAX as i64),
    (DistType::Int4, "integer", i32::MIN as i64, i32::MAX as i64),
    (DistType::Int8, "bigint", i64::MIN, i64::MAX),
];

#[derive(Arbitrary, Debug)]
enum Input {
    Int {
        v: i64,
        before: Vec<u8>,
        plus: bool,
        zeros: u8,
        after: Vec<u8>,
    },
    IntText(String),
    Binary {
        ty: u8,
        bytes: Vec<u8>,
    },
    Text {
        s: String,
        spaces: u8,
    },
    Uuid {
        u: [u8; 16],
        upper: Vec<bool>,
        braces: bool,
        hyphens: u16,
    },
    UuidText(String),
}

fn spaces(sel: &[u8]) -> String {
    sel.iter()
        .take(8)
        .map(|b| C_SPACE[usize::from(*b) % C_SPACE.len()] as char)
        .collect()
}

/// PostgreSQL 15 `pg_strtoint16/32/64`, the long way round.
fn model_int(s: &str, ty: &'static str, min: i64, max: i64) -> Result<i64, HashError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && C_SPACE.contains(&b[i]) {
        i += 1;
    }
    let neg = b.get(i) == Some(&b'-');
    if matches!(b.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == start {
        return Err(HashError::InvalidSyntax(ty));
    }
    // The magnitude, saturated: PostgreSQL accumulates it negated, so -min fits.
    let mut mag: i128 = 0;
    for &d in &b[start..i] {
        mag = (mag * 10 + i128::from(d - b'0')).min(i128::from(i64::MAX) * 4);
    }
    if mag > -i128::from(min) {
        return Err(HashError::OutOfRange(ty));
    }
    if !b[i..].iter().all(|c| C_SPACE.contains(c)) {
        return Err(HashError::InvalidSyntax(ty));
    }
    let v = if neg { -mag } else { mag };
    if v > i128::from(max) {
        return Err(HashError::OutOfRange(ty));
    }
    Ok(v as i64)
}

fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|input: Input| match input {
    Input::Int {
        v,
        before,
        plus,
        zeros,
        after,
    } => {
        let digits = v.unsigned_abs().to_string();
        let sign = if v < 0 {
            "-"
        } else if plus {
            "+"
        } else {
            ""
        };
        let zeros = "0".repeat(usize::from(zeros % 40));
        let text = format!("{}{sign}{zeros}{digits}{}", spaces(&before), spaces(&after));
        let h = hashint8(v);
        for (ty, name, min, max) in INTS {
            let want = if (min..=max).contains(&v) {
                Ok(h)
            } else {
                Err(HashError::OutOfRange(name))
            };
            assert_eq!(hash_value(ty, &text), want, "{ty:?} {text:?}");
            assert_eq!(hash_value(ty, &v.to_string()), want, "{ty:?} {v}");
            for bytes in [
                i16::try_from(v).ok().map(|x| x.to_be_bytes().to_vec()),
                i32::try_from(v).ok().map(|x| x.to_be_bytes().to_vec()),
                Some(v.to_be_bytes().to_vec()),
            ]
            .into_iter()
            .flatten()
            {
                assert_eq!(hash_binary(ty, &bytes), want, "{ty:?} binary {bytes:?}");
            }
        }
    }
    Input::IntText(s) => {
        for (ty, name, min, max) in INTS {
            let want = model_int(&s, name, min, max).map(hashint8);
            assert_eq!(hash_value(ty, &s), want, "{ty:?} {s:?}");
        }
    }
    Input::Binary { ty, bytes } => {
        let (ty, name, min, max) = INTS[usize::from(ty) % 3];
        let v = match bytes.len() {
            2 => Some(i64::from(i16::from_be_bytes([bytes[0], bytes[1]]))),
            4 => Some(i64::from(i32::from_be_bytes(
                bytes[..4].try_into().unwrap(),
            ))),
            8 => Some(i64::from_be_bytes(bytes[..8].try_into().unwrap())),
            _ => None,
        };
        let want = match v {
            None => Err(HashError::BadBinary(name, bytes.len())),
            Some(v) if !(min..=max).contains(&v) => Err(HashError::OutOfRange(name)),
            Some(v) => Ok(hashint8(v)),
        };
        assert_eq!(hash_binary(ty, &bytes), want);
        for t in [DistType::Text, DistType::Varchar, DistType::Bpchar] {
            let ok = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
            let r = hash_binary(t, &bytes);
            assert_eq!(r.is_ok(), ok, "{t:?} binary {bytes:?}");
        }
        let u = hash_binary(DistType::Uuid, &bytes);
        assert_eq!(u.is_ok(), bytes.len() == 16);
    }
    Input::Text { s, spaces } => {
        let want = if s.contains('\0') {
            Err(HashError::InvalidText)
        } else {
            Ok(hashtext(s.as_bytes()))
        };
        for t in [DistType::Text, DistType::Varchar] {
            assert_eq!(hash_value(t, &s), want);
            assert_eq!(hash_binary(t, s.as_bytes()), want);
        }
        let padded = format!("{s}{}", " ".repeat(usize::from(spaces % 20)));
        let bp = hash_value(DistType::Bpchar, &padded);
        assert_eq!(bp, hash_value(DistType::Bpchar, &s));
        assert_eq!(bp, hash_binary(DistType::Bpchar, padded.as_bytes()));
        if want.is_ok() {
            assert_eq!(bp, Ok(hashtext(s.trim_end_matches(' ').as_bytes())));
            assert_eq!(bp, Ok(hashbpchar(s.as_bytes())));
        }
    }
    Input::Uuid {
        u,
        upper,
        braces,
        hyphens,
    } => {
        let h = uuid_hash(&u);
        assert_eq!(hash_binary(DistType::Uuid, &u), Ok(h));
        let hex = uuid_hex(&u);
        let mut s = String::new();
        for (i, c) in hex.chars().enumerate() {
            s.push(if upper.get(i).copied().unwrap_or(false) {
                c.to_ascii_uppercase()
            } else {
                c
            });
            // A hyphen may follow any group of four hex digits but the last.
            if i % 4 == 3 && i < 31 && hyphens & (1 << (i / 4)) != 0 {
                s.push('-');
            }
        }
        if braces {
            s = format!("{{{s}}}");
        }
        assert_eq!(hash_value(DistType::Uuid, &s), Ok(h), "{s}");
    }
    Input::UuidText(s) => {
        if let Ok(h) = hash_value(DistType::Uuid, &s) {
            let inner = s
                .strip_prefix('{')
                .and_then(|x| x.strip_suffix('}'))
                .unwrap_or(&s);
            let hex: String = inner.chars().filter(|&c| c != '-').collect();
            assert_eq!(hex.len(), 32, "accepted {s:?}");
            assert!(
                !inner.starts_with('-') && !inner.ends_with('-') && !inner.contains("--"),
                "accepted {s:?}"
            );
            let mut u = [0u8; 16];
            for (i, b) in u.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
            }
            assert_eq!(uuid_hash(&u), h);
            assert_eq!(hash_value(DistType::Uuid, &s.to_ascii_uppercase()), Ok(h));
            assert_eq!(hash_value(DistType::Uuid, &s.to_ascii_lowercase()), Ok(h));
        }
    }
});
