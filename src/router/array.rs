//! Arrays whose elements are all one tenant's key: Django 5.2's `bulk_create` writes
//! `INSERT INTO t (account_id, …) SELECT * FROM UNNEST('{42,42,42}'::bigint[], …)`, one
//! array per column, so the tenant of every row is an element of the first array. A
//! `KeySource::Elements` names such an array (a literal or a parameter); its value is the
//! element they all share, and there is none when the array is empty, has a NULL, is
//! multidimensional or holds two different values (then the statement is not pinned).
//!
//! Two encodings: PostgreSQL's text form (`array_in`: `{a,b}`, elements optionally
//! double-quoted with backslash escapes, `NULL` unquoted) and the binary form of a Bind
//! parameter (`array_recv`: ndim, flags, element type, dimensions, then length-prefixed
//! elements).

/// The one value every element of the text-form array `s` holds, unquoted.
pub fn text_common_element(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut common: Option<String> = None;
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut value = String::new();
        match chars.peek() {
            // An empty array, a nested one, or an empty element: none.
            None | Some('{') | Some('}') | Some(',') => return None,
            Some('"') => {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => value.push(chars.next()?),
                        c => value.push(c),
                    }
                }
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
            }
            Some(_) => {
                while let Some(c) = chars.next_if(|c| *c != ',') {
                    match c {
                        '\\' => value.push(chars.next()?),
                        '"' | '{' | '}' => return None,
                        c => value.push(c),
                    }
                }
                let trimmed = value.trim_end_matches(|c: char| c.is_ascii_whitespace());
                if trimmed.eq_ignore_ascii_case("null") {
                    return None;
                }
                value.truncate(trimmed.len());
            }
        }
        match &common {
            Some(c) if *c != value => return None,
            Some(_) => {}
            None => common = Some(value),
        }
        match chars.next() {
            None => return common,
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// The one element (its binary bytes) every element of the binary-form array `v` holds:
/// one dimension, at least one element, no NULL.
pub fn binary_common_element(v: &[u8]) -> Option<&[u8]> {
    let int = |at: usize| -> Option<i32> {
        Some(i32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?))
    };
    if int(0)? != 1 {
        return None;
    }
    let count = usize::try_from(int(12)?).ok().filter(|n| *n > 0)?;
    let mut at = 20;
    let mut common: Option<&[u8]> = None;
    for _ in 0..count {
        let len = usize::try_from(int(at)?).ok()?; // -1 (NULL) fails here
        let elem = v.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        match common {
            Some(c) if c != elem => return None,
            Some(_) => {}
            None => common = Some(elem),
        }
    }
    (at == v.len()).then_some(common?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays() {
        assert_eq!(text_common_element("{42,42,42}").as_deref(), Some("42"));
        assert_eq!(text_common_element("{7}").as_deref(), Some("7"));
        assert_eq!(text_common_element(" { 7 , 7 } ").as_deref(), Some("7"));
        assert_eq!(
            text_common_element(r#"{"a b","a b",a\ b}"#).as_deref(),
            Some("a b")
        );
        assert_eq!(
            text_common_element(r#"{"x\"y","x\"y"}"#).as_deref(),
            Some("x\"y")
        );
        assert_eq!(text_common_element(r#"{"NULL"}"#).as_deref(), Some("NULL"));
        for none in [
            "{1,2}",
            "{}",
            "{NULL}",
            "{1,null}",
            "{{1},{1}}",
            "{1,,1}",
            "{1,1",
            "1,1",
            "[1:2]={1,1}",
            r#"{"1"x,1}"#,
            r#"{"1}"#,
            "{1,1}x",
        ] {
            assert_eq!(text_common_element(none), None, "{none}");
        }
    }

    fn binary(elems: &[Option<&[u8]>]) -> Vec<u8> {
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
                    v.extend(*b);
                }
                None => v.extend((-1i32).to_be_bytes()),
            }
        }
        v
    }

    #[test]
    fn binary_arrays() {
        let k = 42i64.to_be_bytes();
        let o = 43i64.to_be_bytes();
        assert_eq!(
            binary_common_element(&binary(&[Some(&k), Some(&k)])),
            Some(&k[..])
        );
        assert_eq!(binary_common_element(&binary(&[Some(&k), Some(&o)])), None);
        assert_eq!(binary_common_element(&binary(&[Some(&k), None])), None);
        assert_eq!(binary_common_element(&binary(&[])), None);
        let mut trailing = binary(&[Some(&k)]);
        trailing.push(0);
        assert_eq!(binary_common_element(&trailing), None);
        let mut two_dims = binary(&[Some(&k)]);
        two_dims[3] = 2;
        assert_eq!(binary_common_element(&two_dims), None);
        assert_eq!(binary_common_element(&[0, 0, 0, 1]), None);
    }
}
