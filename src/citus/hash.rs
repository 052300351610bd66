//! PostgreSQL-identical 32-bit hash functions of the distribution column types.
//!
//! Citus places a row in the shard whose `[shardminvalue, shardmaxvalue]` range holds the
//! hash of its distribution value, computed with the type's standard hash function (the
//! hash opclass support proc 1, returning `int4`), NOT the 64-bit "extended" one that
//! declarative partitioning uses. So pgtenant must compute exactly what PostgreSQL 15
//! computes:
//!
//! | type | PostgreSQL function | here |
//! |---|---|---|
//! | int2 | `hashint2` = `hash_uint32((int32) v)` | [`hashint2`] |
//! | int4 | `hashint4` = `hash_uint32(v)` | [`hashint4`] |
//! | int8 | `hashint8` (high half folded into the low half) | [`hashint8`] |
//! | text, varchar | `hashtext` = `hash_any(bytes)` (deterministic collation) | [`hashtext`] |
//! | bpchar | `hashbpchar` = `hash_any(bytes without trailing blanks)` | [`hashbpchar`] |
//! | uuid | `uuid_hash` = `hash_any(16 bytes)` | [`uuid_hash`] |
//!
//! `hash_any` is Bob Jenkins' lookup3 `hash_bytes` from PostgreSQL's
//! `src/common/hashfn.c`. PostgreSQL has an aligned path (word loads) and an unaligned
//! path (byte loads); on a little-endian machine both read the key as little-endian 32-bit
//! words, which is what this module does for any input. The result depends on the
//! server's byte order: this is the little-endian one (x86_64, aarch64), which is what
//! every Citus deployment runs on.
//!
//! The router calls [`hash_value`] (a value's text form: an SQL literal or a text-format
//! Bind parameter) or [`hash_binary`] (a binary-format Bind parameter). Both parse the
//! value exactly as PostgreSQL's input / receive functions would and never panic; a value
//! PostgreSQL would reject is an error, and the statement then goes to the coordinator
//! (which gives the client PostgreSQL's own error).
//!
//! Text values are hashed as the bytes the server stores. That equals the bytes the client
//! sent only when `client_encoding` is the server encoding (UTF8 for text coming from a
//! Rust `&str`); with any other client encoding the server converts first, so the router
//! must not hash text from such a session.
use super::DistType;

/// Why a value could not be hashed. Every case means "let the coordinator decide".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// pgtenant has no hash function for this type.
    #[error("pgtenant cannot hash values of type {0:?}")]
    Unsupported(DistType),
    /// PostgreSQL's input function would say "invalid input syntax for type …".
    #[error("invalid input syntax for type {0}")]
    InvalidSyntax(&'static str),
    /// PostgreSQL's input function would say "value … is out of range for type …".
    #[error("value out of range for type {0}")]
    OutOfRange(&'static str),
    /// A binary parameter of the wrong length for its type.
    #[error("incorrect binary data format for type {0} ({1} bytes)")]
    BadBinary(&'static str, usize),
    /// Text PostgreSQL cannot store: a NUL byte, or bytes that are not UTF-8.
    #[error("invalid text value (NUL byte or invalid UTF-8)")]
    InvalidText,
}

// ---------------------------------------------------------------------------------------
// lookup3, as in PostgreSQL's src/common/hashfn.c
// ---------------------------------------------------------------------------------------

/// `mix(a,b,c)` of hashfn.c.
#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// `final(a,b,c)` of hashfn.c; the result is `c`.
#[inline(always)]
fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// The initial state of lookup3 for a key of `len` bytes (PostgreSQL's `int keylen`,
/// converted to `uint32`: keys are < 1 GB, so the truncation never happens for a value
/// PostgreSQL can hold).
#[inline(always)]
fn init(len: usize) -> u32 {
    0x9e37_79b9u32
        .wrapping_add(len as u32)
        .wrapping_add(3_923_095)
}

/// PostgreSQL's `hash_bytes` (`hash_any` without the Datum wrapper), little-endian.
pub fn hash_bytes(key: &[u8]) -> u32 {
    let mut a = init(key.len());
    let mut b = a;
    let mut c = a;

    // Whole 12-byte blocks, while at least 12 bytes are left (`while (len >= 12)`).
    let mut rest = key;
    while let Some((block, tail)) = rest.split_first_chunk::<12>() {
        let [k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11] = *block;
        a = a.wrapping_add(u32::from_le_bytes([k0, k1, k2, k3]));
        b = b.wrapping_add(u32::from_le_bytes([k4, k5, k6, k7]));
        c = c.wrapping_add(u32::from_le_bytes([k8, k9, k10, k11]));
        mix(&mut a, &mut b, &mut c);
        rest = tail;
    }

    // The last 0..=11 bytes. hashfn.c's switch adds bytes 0..4 to a and 4..8 to b as
    // little-endian words, and bytes 8..11 to c shifted up by 8 ("the lowest byte of c is
    // reserved for the length"). Absent bytes add nothing, so a zero-padded block gives
    // the same sums as every case of the switch.
    let mut pad = [0u8; 12];
    for (dst, src) in pad.iter_mut().zip(rest) {
        *dst = *src;
    }
    let [k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, _] = pad;
    a = a.wrapping_add(u32::from_le_bytes([k0, k1, k2, k3]));
    b = b.wrapping_add(u32::from_le_bytes([k4, k5, k6, k7]));
    c = c.wrapping_add(u32::from_le_bytes([0, k8, k9, k10]));

    final_mix(a, b, c)
}

/// PostgreSQL's `hash_any(k, len)` as the int4 a hash function returns.
#[inline]
pub fn hash_any(key: &[u8]) -> i32 {
    hash_bytes(key) as i32
}

/// PostgreSQL's `hash_bytes_uint32` (`hash_uint32`): lookup3 of one 32-bit word.
#[inline]
pub fn hash_bytes_uint32(k: u32) -> u32 {
    let a = init(4).wrapping_add(k);
    let b = init(4);
    final_mix(a, b, b)
}

/// PostgreSQL's `hash_uint32(k)` as the int4 a hash function returns.
#[inline]
pub fn hash_uint32(k: u32) -> i32 {
    hash_bytes_uint32(k) as i32
}

// ---------------------------------------------------------------------------------------
// The per-type hash functions (hashfunc.c, varchar.c, uuid.c)
// ---------------------------------------------------------------------------------------

/// `hashint2`: `hash_uint32((int32) v)` (sign-extended).
#[inline]
pub fn hashint2(v: i16) -> i32 {
    hash_uint32(i32::from(v) as u32)
}

/// `hashint4`: `hash_uint32(v)`.
#[inline]
pub fn hashint4(v: i32) -> i32 {
    hash_uint32(v as u32)
}

/// `hashint8`: the high half is folded into the low half so that an int8 holding an int4
/// value hashes as that int4 (cross-type hash joins rely on it):
/// `lohalf ^= (val >= 0) ? hihalf : ~hihalf; return hash_uint32(lohalf)`.
#[inline]
pub fn hashint8(v: i64) -> i32 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    hash_uint32(lo ^ if v >= 0 { hi } else { !hi })
}

/// `hashtext` (text and varchar) under a deterministic collation (C, or any libc / ICU
/// deterministic collation): `hash_any` over the stored bytes.
#[inline]
pub fn hashtext(bytes: &[u8]) -> i32 {
    hash_any(bytes)
}

/// `hashbpchar`: `hash_any` over the bytes without trailing blanks (`bcTruelen`: only
/// ASCII spaces count, not tabs or other white space).
#[inline]
pub fn hashbpchar(bytes: &[u8]) -> i32 {
    hash_any(trim_trailing_spaces(bytes))
}

/// `uuid_hash`: `hash_any` over the 16 bytes.
#[inline]
pub fn uuid_hash(uuid: &[u8; 16]) -> i32 {
    hash_any(uuid)
}

fn trim_trailing_spaces(mut bytes: &[u8]) -> &[u8] {
    while let Some((&b' ', head)) = bytes.split_last() {
        bytes = head;
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// The value-level API the router calls
// ---------------------------------------------------------------------------------------

/// The hash Citus computes for a value of type `t` given in its text form: an SQL literal
/// (`42`, `'acme'`, already unquoted) or a text-format Bind parameter. `text` is parsed as
/// PostgreSQL 15's input function would (`int2in`/`int4in`/`int8in`: optional white space
/// around, optional `+`/`-`, decimal digits, range checked; `uuid_in`: 32 hex digits in
/// either case, optionally in braces, optionally with a hyphen after any group of four;
/// `textin`/`bpcharin`/`varcharin`: the bytes themselves). An input PostgreSQL would
/// reject gives an error.
pub fn hash_value(t: DistType, text: &str) -> Result<i32, HashError> {
    match t {
        DistType::Int2 => parse_int(
            text.as_bytes(),
            "smallint",
            i16::MIN.into(),
            i16::MAX.into(),
        )
        .map(|v| hashint2(v as i16)),
        DistType::Int4 => parse_int(text.as_bytes(), "integer", i32::MIN.into(), i32::MAX.into())
            .map(|v| hashint4(v as i32)),
        DistType::Int8 => parse_int(text.as_bytes(), "bigint", i64::MIN, i64::MAX).map(hashint8),
        DistType::Text | DistType::Varchar => Ok(hashtext(check_text(text.as_bytes())?)),
        DistType::Bpchar => Ok(hashbpchar(check_text(text.as_bytes())?)),
        DistType::Uuid => parse_uuid(text.as_bytes()).map(|u| uuid_hash(&u)),
        DistType::Other(_) => Err(HashError::Unsupported(t)),
    }
}

/// [`canonical_text`] of a value the type accepts; an error for text that is no value of
/// the type (`abc` for a bigint column), as [`hash_value`] says.
pub fn checked_canonical(t: DistType, text: &str) -> Result<String, HashError> {
    hash_value(t, text)?;
    Ok(canonical_text(t, text).into_owned())
}

/// The hash Citus computes for a value of type `t` sent as a binary-format Bind parameter.
///
/// - Integer types: a big-endian two's-complement integer of 2, 4 or 8 bytes. The width
///   is the parameter's own type (int2, int4 or int8), which may differ from the column's
///   (`WHERE bigint_col = $1` with `$1` declared int4): the value is hashed as the
///   column's type, which PostgreSQL makes agree with the other integer hashes for every
///   value both types hold; a value outside the column type's range is an error. Call
///   this only for integer-typed parameters: the length alone cannot tell an int8 from a
///   float8.
/// - text, varchar, bpchar: the raw bytes, which must be UTF-8 without NUL (as
///   `textrecv` checks them against the server encoding).
/// - uuid: exactly 16 bytes.
pub fn hash_binary(t: DistType, bytes: &[u8]) -> Result<i32, HashError> {
    match t {
        DistType::Int2 => binary_int(bytes, "smallint", i16::MIN.into(), i16::MAX.into())
            .map(|v| hashint2(v as i16)),
        DistType::Int4 => binary_int(bytes, "integer", i32::MIN.into(), i32::MAX.into())
            .map(|v| hashint4(v as i32)),
        DistType::Int8 => binary_int(bytes, "bigint", i64::MIN, i64::MAX).map(hashint8),
        DistType::Text | DistType::Varchar => Ok(hashtext(check_binary_text(bytes)?)),
        DistType::Bpchar => Ok(hashbpchar(check_binary_text(bytes)?)),
        DistType::Uuid => match <[u8; 16]>::try_from(bytes) {
            Ok(u) => Ok(uuid_hash(&u)),
            Err(_) => Err(HashError::BadBinary("uuid", bytes.len())),
        },
        DistType::Other(_) => Err(HashError::Unsupported(t)),
    }
}

/// `isspace()` in the C locale, which is what PostgreSQL's integer input uses for bytes.
#[inline]
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// PostgreSQL 15's `pg_strtoint16/32/64`: skip leading white space, an optional sign, at
/// least one decimal digit, trailing white space only. (PostgreSQL 16 also accepts
/// `0x`/`0o`/`0b` prefixes and `_` separators; rejecting them only costs a hop.)
fn parse_int(s: &[u8], ty: &'static str, min: i64, max: i64) -> Result<i64, HashError> {
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        if !is_c_space(b) {
            break;
        }
        rest = tail;
    }
    let neg = match rest.split_first() {
        Some((b'-', tail)) => {
            rest = tail;
            true
        }
        Some((b'+', tail)) => {
            rest = tail;
            false
        }
        _ => false,
    };
    // Accumulate as a negative number so that the type's minimum fits (as PostgreSQL
    // does); `out_of_range` is only reported for well-formed input, so keep scanning.
    let mut acc: i64 = 0;
    let mut digits = 0usize;
    let mut overflow = false;
    while let Some((&b, tail)) = rest.split_first() {
        if !b.is_ascii_digit() {
            break;
        }
        digits += 1;
        let d = i64::from(b - b'0');
        match acc.checked_mul(10).and_then(|x| x.checked_sub(d)) {
            Some(x) if x >= min => acc = x,
            _ => overflow = true,
        }
        rest = tail;
    }
    if digits == 0 {
        return Err(HashError::InvalidSyntax(ty));
    }
    // PostgreSQL jumps to out_of_range as soon as the digits overflow, before looking at
    // what follows: "99999999999x" is out of range, not a syntax error.
    if overflow {
        return Err(HashError::OutOfRange(ty));
    }
    if !rest.iter().all(|&b| is_c_space(b)) {
        return Err(HashError::InvalidSyntax(ty));
    }
    if neg {
        Ok(acc)
    } else {
        match acc.checked_neg() {
            Some(v) if v <= max => Ok(v),
            _ => Err(HashError::OutOfRange(ty)),
        }
    }
}

/// A binary integer parameter of 2, 4 or 8 bytes, range checked for the column's type.
fn binary_int(bytes: &[u8], ty: &'static str, min: i64, max: i64) -> Result<i64, HashError> {
    let v = if let Ok(b) = <[u8; 2]>::try_from(bytes) {
        i64::from(i16::from_be_bytes(b))
    } else if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        i64::from(i32::from_be_bytes(b))
    } else if let Ok(b) = <[u8; 8]>::try_from(bytes) {
        i64::from_be_bytes(b)
    } else {
        return Err(HashError::BadBinary(ty, bytes.len()));
    };
    if v < min || v > max {
        return Err(HashError::OutOfRange(ty));
    }
    Ok(v)
}

/// Text PostgreSQL can hold: no NUL byte (a `&str` is already UTF-8).
#[inline]
fn check_text(bytes: &[u8]) -> Result<&[u8], HashError> {
    if bytes.contains(&0) {
        Err(HashError::InvalidText)
    } else {
        Ok(bytes)
    }
}

/// A binary text parameter: UTF-8 (the server encoding) without NUL.
#[inline]
fn check_binary_text(bytes: &[u8]) -> Result<&[u8], HashError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => check_text(s.as_bytes()),
        Err(_) => Err(HashError::InvalidText),
    }
}

#[inline]
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// PostgreSQL 15's `string_to_uuid`: an optional `{`, then 16 bytes as pairs of hex
/// digits, where a single `-` may follow any even-numbered byte but the last (i.e. after
/// every group of four hex digits), then the matching `}`, then nothing (no white space).
fn parse_uuid(s: &[u8]) -> Result<[u8; 16], HashError> {
    const ERR: HashError = HashError::InvalidSyntax("uuid");
    let (braces, mut rest) = match s.split_first() {
        Some((b'{', tail)) => (true, tail),
        _ => (false, s),
    };
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let Some(([hi, lo], tail)) = rest.split_first_chunk::<2>() else {
            return Err(ERR);
        };
        let (Some(hi), Some(lo)) = (hex_digit(*hi), hex_digit(*lo)) else {
            return Err(ERR);
        };
        *byte = (hi << 4) | lo;
        rest = tail;
        if i % 2 == 1 && i < 15 {
            if let Some((b'-', tail)) = rest.split_first() {
                rest = tail;
            }
        }
    }
    if braces {
        match rest.split_first() {
            Some((b'}', tail)) => rest = tail,
            _ => return Err(ERR),
        }
    }
    if rest.is_empty() {
        Ok(out)
    } else {
        Err(ERR)
    }
}

/// A uuid's 16 bytes as PostgreSQL prints them: lower-case hex, 8-4-4-4-12.
fn uuid_bytes(u: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 15)];
        at += 2;
    }
    out
}

/// [`uuid_bytes`] as a string.
pub fn uuid_text(u: &[u8; 16]) -> String {
    String::from_utf8(uuid_bytes(u).to_vec()).expect("ASCII")
}

/// Already as PostgreSQL prints an integer: `0`, or an optional `-` and digits without a
/// leading zero (the range is checked by the hash of the same text).
fn is_canonical_int(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    match digits {
        [b'0'] => s.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Already as PostgreSQL prints a uuid (checked without parsing it).
fn is_canonical_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// A key value's text as PostgreSQL prints it (`col::text`): integers without sign `+`,
/// leading zeros or white space, uuids in lower case with hyphens, bpchar without trailing
/// blanks (which it ignores), text and varchar as they are. Values that one tenant's rows
/// hold therefore read the same however a statement wrote them (`042`, `'42'`, `42`), and
/// as the database lists them. Input the type would reject is returned as is.
pub fn canonical_text(t: DistType, text: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let int = |ty, min, max| {
        if is_canonical_int(text.as_bytes()) {
            return Cow::Borrowed(text);
        }
        match parse_int(text.as_bytes(), ty, min, max) {
            Ok(v) => Cow::Owned(v.to_string()),
            Err(_) => Cow::Borrowed(text),
        }
    };
    match t {
        DistType::Int2 => int("smallint", i16::MIN.into(), i16::MAX.into()),
        DistType::Int4 => int("integer", i32::MIN.into(), i32::MAX.into()),
        DistType::Int8 => int("bigint", i64::MIN, i64::MAX),
        // Most clients send the canonical form already: a scan, no parse, no new string.
        DistType::Uuid if is_canonical_uuid(text.as_bytes()) => Cow::Borrowed(text),
        DistType::Uuid => match parse_uuid(text.as_bytes()) {
            Ok(u) => Cow::Owned(uuid_text(&u)),
            Err(_) => Cow::Borrowed(text),
        },
        DistType::Bpchar => Cow::Borrowed(text.trim_end_matches(' ')),
        DistType::Text | DistType::Varchar | DistType::Other(_) => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_is_what_postgresql_prints() {
        for (t, input, out) in [
            (DistType::Int8, " +042 ", "42"),
            (DistType::Int8, "-7", "-7"),
            (DistType::Int8, "-0", "0"),
            (DistType::Int8, "0", "0"),
            (DistType::Int8, "100", "100"),
            (DistType::Int4, "99999999999", "99999999999"),
            (DistType::Int2, "0010", "10"),
            (
                DistType::Uuid,
                "{0000000000000000000000000000002A}",
                "00000000-0000-0000-0000-00000000002a",
            ),
            (
                DistType::Uuid,
                "00000000-0000-0000-0000-00000000002A",
                "00000000-0000-0000-0000-00000000002a",
            ),
            (DistType::Uuid, "nope", "nope"),
            (DistType::Bpchar, "ab  ", "ab"),
            (DistType::Text, " Acme ", " Acme "),
        ] {
            assert_eq!(canonical_text(t, input), out, "{t:?} {input:?}");
        }
        // The canonical text hashes as the original.
        assert_eq!(
            hash_value(
                DistType::Uuid,
                &canonical_text(DistType::Uuid, "{0000000000000000000000000000002A}")
            ),
            hash_value(DistType::Uuid, "00000000-0000-0000-0000-00000000002a")
        );
    }

    const UUID_42: &str = "00000000-0000-0000-0000-00000000002a";

    #[test]
    fn measured_values() {
        // Measured on PostgreSQL 15 (Citus 13): see issue 4.
        assert_eq!(hashint8(42), 1509752520);
        assert_eq!(hash_value(DistType::Int8, "42"), Ok(1509752520));
        assert_eq!(hashtext(b"acme"), -1850687378);
        assert_eq!(hash_value(DistType::Text, "acme"), Ok(-1850687378));
        assert_eq!(hash_value(DistType::Varchar, "acme"), Ok(-1850687378));
        assert_eq!(hash_value(DistType::Uuid, UUID_42), Ok(1191735368));
    }

    #[test]
    fn integer_widths_agree() {
        // hashint2/4/8 agree on every value the narrower type holds.
        for v in [
            0i64,
            1,
            -1,
            42,
            -42,
            32767,
            -32768,
            65535,
            1 << 20,
            -(1 << 20),
        ] {
            if let Ok(v2) = i16::try_from(v) {
                assert_eq!(hashint2(v2), hashint8(v));
            }
            if let Ok(v4) = i32::try_from(v) {
                assert_eq!(hashint4(v4), hashint8(v));
            }
        }
        assert_eq!(hashint4(42), 1509752520);
        assert_eq!(hash_value(DistType::Int2, "42"), Ok(1509752520));
        assert_eq!(hash_value(DistType::Int4, "42"), Ok(1509752520));
    }

    #[test]
    fn integer_input_rules() {
        let h42 = Ok(1509752520);
        for s in [
            "42",
            " 42",
            "42 ",
            "\t+42\n",
            "+42",
            "0042",
            " \r\x0b\x0c42",
        ] {
            assert_eq!(hash_value(DistType::Int8, s), h42, "{s:?}");
            assert_eq!(hash_value(DistType::Int4, s), h42, "{s:?}");
            assert_eq!(hash_value(DistType::Int2, s), h42, "{s:?}");
        }
        assert_eq!(hash_value(DistType::Int4, " -7"), Ok(hashint4(-7)));
        assert_eq!(hash_value(DistType::Int4, "-0"), Ok(hashint4(0)));
        for s in [
            "", " ", "-", "+", "+-1", "--1", "4 2", "42x", "x42", "0x2a", "1_000", "4.0", "1e3",
            "٤٢", "42\0",
        ] {
            for t in [DistType::Int2, DistType::Int4, DistType::Int8] {
                assert_eq!(
                    hash_value(t, s),
                    Err(HashError::InvalidSyntax(match t {
                        DistType::Int2 => "smallint",
                        DistType::Int4 => "integer",
                        _ => "bigint",
                    })),
                    "{t:?} {s:?}"
                );
            }
        }
        // Ranges.
        assert_eq!(hash_value(DistType::Int2, "32767"), Ok(hashint2(i16::MAX)));
        assert_eq!(hash_value(DistType::Int2, "-32768"), Ok(hashint2(i16::MIN)));
        assert!(matches!(
            hash_value(DistType::Int2, "32768"),
            Err(HashError::OutOfRange(_))
        ));
        assert!(matches!(
            hash_value(DistType::Int2, "-32769"),
            Err(HashError::OutOfRange(_))
        ));
        assert_eq!(
            hash_value(DistType::Int4, "-2147483648"),
            Ok(hashint4(i32::MIN))
        );
        assert!(matches!(
            hash_value(DistType::Int4, "2147483648"),
            Err(HashError::OutOfRange(_))
        ));
        assert_eq!(
            hash_value(DistType::Int8, "-9223372036854775808"),
            Ok(hashint8(i64::MIN))
        );
        assert_eq!(
            hash_value(DistType::Int8, "9223372036854775807"),
            Ok(hashint8(i64::MAX))
        );
        assert!(matches!(
            hash_value(DistType::Int8, "9223372036854775808"),
            Err(HashError::OutOfRange(_))
        ));
        assert!(matches!(
            hash_value(DistType::Int8, "-9223372036854775809"),
            Err(HashError::OutOfRange(_))
        ));
        assert!(matches!(
            hash_value(DistType::Int8, &"9".repeat(500)),
            Err(HashError::OutOfRange(_))
        ));
        // PostgreSQL reports the overflow before the trailing garbage.
        assert!(matches!(
            hash_value(DistType::Int2, "99999x"),
            Err(HashError::OutOfRange(_))
        ));
    }

    #[test]
    fn uuid_spellings() {
        let h = Ok(1191735368);
        for s in [
            UUID_42,
            "00000000-0000-0000-0000-00000000002A",
            "{00000000-0000-0000-0000-00000000002a}",
            "0000000000000000000000000000002a",
            "{0000000000000000000000000000002a}",
            "0000-0000-0000-0000-0000-0000-0000-002a",
            "00000000000000000000-00000000002a",
        ] {
            assert_eq!(hash_value(DistType::Uuid, s), h, "{s:?}");
        }
        for s in [
            "",
            "{",
            "{}",
            " 00000000-0000-0000-0000-00000000002a",
            "00000000-0000-0000-0000-00000000002a ",
            "{00000000-0000-0000-0000-00000000002a",
            "00000000-0000-0000-0000-00000000002a}",
            "00000000-0000-0000-0000-00000000002a-",
            "-00000000-0000-0000-0000-00000000002a",
            "000-00000-0000-0000-0000-00000000002a",
            "00000000--0000-0000-0000-00000000002a",
            "00000000-0000-0000-0000-00000000002g",
            "00000000-0000-0000-0000-00000000002",
            "00000000-0000-0000-0000-00000000002aa",
            "0000000é-0000-0000-0000-00000000002a",
        ] {
            assert_eq!(
                hash_value(DistType::Uuid, s),
                Err(HashError::InvalidSyntax("uuid")),
                "{s:?}"
            );
        }
    }

    #[test]
    fn bpchar_ignores_trailing_spaces_only() {
        let acme = Ok(-1850687378);
        assert_eq!(hash_value(DistType::Bpchar, "acme"), acme);
        assert_eq!(hash_value(DistType::Bpchar, "acme    "), acme);
        assert_ne!(hash_value(DistType::Bpchar, " acme"), acme);
        assert_ne!(hash_value(DistType::Bpchar, "acme\t"), acme);
        assert_eq!(hash_value(DistType::Bpchar, "   "), Ok(hashtext(b"")));
        // text keeps them.
        assert_ne!(hash_value(DistType::Text, "acme "), acme);
    }

    #[test]
    fn binary_parameters() {
        assert_eq!(
            hash_binary(DistType::Int8, &42i64.to_be_bytes()),
            Ok(1509752520)
        );
        assert_eq!(
            hash_binary(DistType::Int8, &42i32.to_be_bytes()),
            Ok(1509752520)
        );
        assert_eq!(
            hash_binary(DistType::Int4, &42i32.to_be_bytes()),
            Ok(1509752520)
        );
        assert_eq!(
            hash_binary(DistType::Int2, &42i16.to_be_bytes()),
            Ok(1509752520)
        );
        assert_eq!(
            hash_binary(DistType::Int4, &42i64.to_be_bytes()),
            Ok(1509752520)
        );
        assert_eq!(
            hash_binary(DistType::Int8, &(-5i64).to_be_bytes()),
            Ok(hashint8(-5))
        );
        assert_eq!(
            hash_binary(DistType::Int4, &(-5i16).to_be_bytes()),
            Ok(hashint4(-5))
        );
        assert!(matches!(
            hash_binary(DistType::Int4, &(1i64 << 40).to_be_bytes()),
            Err(HashError::OutOfRange(_))
        ));
        assert!(matches!(
            hash_binary(DistType::Int2, &70000i32.to_be_bytes()),
            Err(HashError::OutOfRange(_))
        ));
        for len in [0usize, 1, 3, 5, 7, 9, 16] {
            assert!(matches!(
                hash_binary(DistType::Int8, &vec![0; len]),
                Err(HashError::BadBinary(_, l)) if l == len
            ));
        }
        assert_eq!(hash_binary(DistType::Text, b"acme"), Ok(-1850687378));
        assert_eq!(hash_binary(DistType::Varchar, b"acme"), Ok(-1850687378));
        assert_eq!(hash_binary(DistType::Bpchar, b"acme  "), Ok(-1850687378));
        assert_eq!(
            hash_binary(DistType::Text, b"\xff"),
            Err(HashError::InvalidText)
        );
        assert_eq!(
            hash_binary(DistType::Text, b"a\0b"),
            Err(HashError::InvalidText)
        );
        let mut u = [0u8; 16];
        u[15] = 0x2a;
        assert_eq!(hash_binary(DistType::Uuid, &u), Ok(1191735368));
        assert!(matches!(
            hash_binary(DistType::Uuid, &u[..15]),
            Err(HashError::BadBinary("uuid", 15))
        ));
    }

    #[test]
    fn other_types_are_unsupported() {
        let t = DistType::Other(1700);
        assert_eq!(hash_value(t, "42"), Err(HashError::Unsupported(t)));
        assert_eq!(hash_binary(t, b"42"), Err(HashError::Unsupported(t)));
        assert_eq!(
            hash_value(DistType::Text, "a\0"),
            Err(HashError::InvalidText)
        );
    }

    /// A byte-at-a-time transcription of hashfn.c's unaligned little-endian path, to
    /// check the block/padding shortcut above for every tail length.
    fn reference_hash_bytes(k: &[u8]) -> u32 {
        let mut a = init(k.len());
        let (mut b, mut c) = (a, a);
        let mut k = k;
        while k.len() >= 12 {
            let w = |i: usize| {
                u32::from(k[i])
                    | (u32::from(k[i + 1]) << 8)
                    | (u32::from(k[i + 2]) << 16)
                    | (u32::from(k[i + 3]) << 24)
            };
            a = a.wrapping_add(w(0));
            b = b.wrapping_add(w(4));
            c = c.wrapping_add(w(8));
            mix(&mut a, &mut b, &mut c);
            k = &k[12..];
        }
        let len = k.len();
        if len >= 11 {
            c = c.wrapping_add(u32::from(k[10]) << 24);
        }
        if len >= 10 {
            c = c.wrapping_add(u32::from(k[9]) << 16);
        }
        if len >= 9 {
            c = c.wrapping_add(u32::from(k[8]) << 8);
        }
        if len >= 8 {
            b = b.wrapping_add(u32::from(k[7]) << 24);
        }
        if len >= 7 {
            b = b.wrapping_add(u32::from(k[6]) << 16);
        }
        if len >= 6 {
            b = b.wrapping_add(u32::from(k[5]) << 8);
        }
        if len >= 5 {
            b = b.wrapping_add(u32::from(k[4]));
        }
        if len >= 4 {
            a = a.wrapping_add(u32::from(k[3]) << 24);
        }
        if len >= 3 {
            a = a.wrapping_add(u32::from(k[2]) << 16);
        }
        if len >= 2 {
            a = a.wrapping_add(u32::from(k[1]) << 8);
        }
        if len >= 1 {
            a = a.wrapping_add(u32::from(k[0]));
        }
        final_mix(a, b, c)
    }

    #[test]
    fn block_shortcut_matches_the_byte_switch() {
        let mut x: u32 = 12345;
        let data: Vec<u8> = (0..200)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        for len in 0..=data.len() {
            for start in 0..4 {
                if let Some(k) = data.get(start..start + len) {
                    assert_eq!(hash_bytes(k), reference_hash_bytes(k), "len {len}");
                }
            }
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut x: u64 = 1;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize
        };
        let pieces = [
            "0", "9", "-", "+", " ", "\t", "{", "}", "a", "F", "g", "é", "\0", "日", "_", "x",
        ];
        let types = [
            DistType::Int2,
            DistType::Int4,
            DistType::Int8,
            DistType::Text,
            DistType::Varchar,
            DistType::Bpchar,
            DistType::Uuid,
            DistType::Other(0),
        ];
        for _ in 0..20_000 {
            let n = next() % 45;
            let s: String = (0..n).map(|_| pieces[next() % pieces.len()]).collect();
            let bytes: Vec<u8> = (0..next() % 20).map(|_| next() as u8).collect();
            for t in types {
                let _ = hash_value(t, &s);
                let _ = hash_binary(t, &bytes);
                let _ = hash_binary(t, s.as_bytes());
            }
        }
    }

    #[test]
    fn hash_uint32_is_hash_bytes_of_the_le_word() {
        for v in [0u32, 1, 42, 0xdead_beef, u32::MAX] {
            assert_eq!(hash_bytes_uint32(v), hash_bytes(&v.to_le_bytes()));
        }
    }
}
