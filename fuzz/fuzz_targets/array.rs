//! Arrays whose elements are all one tenant's key (router/array.rs: Django 5.2's
//! `bulk_create` sends `UNNEST('{42,42}'::bigint[], …)`, as a literal or as a text or
//! binary Bind parameter).
//! Properties, against arrays built from known elements: the text form (every element
//! written the ways `array_out` and clients write them: bare, double-quoted, backslash
//! escapes, spaces around) yields the common element exactly when every element is the
//! same non-NULL value; the binary form (`array_send`'s layout) likewise, with its
//! bytes; any text or bytes at all never panic, and a common element found in arbitrary
//! text is one that the text spells.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::router::array::{binary_common_element, text_common_element};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Spell {
    /// Double-quoted, `"` and `\` escaped.
    Quoted,
    /// Bare, every special character backslash-escaped (where a bare element can say it).
    Escaped,
}

#[derive(Arbitrary, Debug)]
struct Elem {
    /// None: NULL.
    value: Option<String>,
    spell: Spell,
    space_before: bool,
    space_after: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Built(Vec<Elem>),
    Binary {
        elems: Vec<Option<Vec<u8>>>,
        /// Damage: change the byte at this index (if any) to this value.
        damage: Option<(u16, u8)>,
    },
    RawText(String),
    RawBytes(Vec<u8>),
}

fn spell(e: &Elem) -> String {
    let mut out = String::new();
    if e.space_before {
        out.push(' ');
    }
    match (&e.value, e.spell) {
        (None, _) => out.push_str("NULL"),
        // Bare only where PostgreSQL reads it back as written: not blank, no white space
        // at the ends, not the word NULL.
        (Some(v), Spell::Escaped)
            if !v.trim().is_empty() && v.trim() == v && !v.eq_ignore_ascii_case("null") =>
        {
            for c in v.chars() {
                if matches!(c, '"' | '\\' | '{' | '}' | ',') || c.is_ascii_whitespace() {
                    out.push('\\');
                }
                out.push(c);
            }
        }
        (Some(v), _) => {
            out.push('"');
            for c in v.chars() {
                if matches!(c, '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    if e.space_after {
        out.push(' ');
    }
    out
}

fn binary(elems: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(1i32.to_be_bytes());
    v.extend(i32::from(elems.iter().any(|e| e.is_none())).to_be_bytes());
    v.extend(20u32.to_be_bytes());
    v.extend((elems.len() as i32).to_be_bytes());
    v.extend(1i32.to_be_bytes());
    for e in elems {
        match e {
            Some(b) => {
                v.extend((b.len() as i32).to_be_bytes());
                v.extend(b);
            }
            None => v.extend((-1i32).to_be_bytes()),
        }
    }
    v
}

/// The one value all elements hold, if they are non-NULL, equal and at least one.
fn common<T: PartialEq + Clone>(elems: &[Option<T>]) -> Option<T> {
    let first = elems.first()?.clone()?;
    elems
        .iter()
        .all(|e| e.as_ref() == Some(&first))
        .then_some(first)
}

fuzz_target!(|input: Input| match input {
    Input::Built(elems) => {
        // NUL cannot be in a PostgreSQL text value; an empty bare element is not valid.
        let elems: Vec<Elem> = elems
            .into_iter()
            .filter(|e| e.value.as_ref().is_none_or(|v| !v.contains('\0')))
            .collect();
        let text = format!(
            "{{{}}}",
            elems.iter().map(spell).collect::<Vec<_>>().join(",")
        );
        let values: Vec<Option<String>> = elems.iter().map(|e| e.value.clone()).collect();
        let got = text_common_element(&text);
        assert_eq!(got, common(&values), "{text:?}");
    }
    Input::Binary { elems, damage } => {
        let mut v = binary(&elems);
        match damage {
            None => {
                let got = binary_common_element(&v).map(<[u8]>::to_vec);
                assert_eq!(got, common(&elems), "{v:?}");
            }
            Some((at, b)) => {
                if let Some(x) = v.get_mut(at as usize) {
                    *x = b;
                }
                let _ = binary_common_element(&v);
            }
        }
    }
    Input::RawText(s) => {
        if let Some(c) = text_common_element(&s) {
            // Every character of the element is in the text (escapes aside).
            assert!(c.chars().all(|ch| s.contains(ch)), "{s:?} -> {c:?}");
        }
    }
    Input::RawBytes(b) => {
        if let Some(e) = binary_common_element(&b) {
            assert!(e.len() <= b.len());
        }
    }
});
