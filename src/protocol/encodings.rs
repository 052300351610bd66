//! PostgreSQL's encoding names: every name and alias the server accepts for
//! `client_encoding`, and the canonical spelling it reports back (as
//! `src/common/encnames.c` does: a name is compared with its non-alphanumeric characters
//! removed and letters folded to lower case).

/// (cleaned alias, canonical name), sorted by alias for a binary search.
const ALIASES: &[(&str, &str)] = &[
    ("abc", "WIN1258"),
    ("alt", "WIN866"),
    ("big5", "BIG5"),
    ("euccn", "EUC_CN"),
    ("eucjis2004", "EUC_JIS_2004"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euctw", "EUC_TW"),
    ("gb18030", "GB18030"),
    ("gbk", "GBK"),
    ("iso88591", "LATIN1"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("johab", "JOHAB"),
    ("koi8", "KOI8R"),
    ("koi8r", "KOI8R"),
    ("koi8u", "KOI8U"),
    ("latin1", "LATIN1"),
    ("latin10", "LATIN10"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("mskanji", "SJIS"),
    ("muleinternal", "MULE_INTERNAL"),
    ("shiftjis", "SJIS"),
    ("shiftjis2004", "SHIFT_JIS_2004"),
    ("sjis", "SJIS"),
    ("sqlascii", "SQL_ASCII"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("uhc", "UHC"),
    ("unicode", "UTF8"),
    ("utf8", "UTF8"),
    ("vscii", "WIN1258"),
    ("win", "WIN1251"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win932", "SJIS"),
    ("win936", "GBK"),
    ("win949", "UHC"),
    ("win950", "BIG5"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows932", "SJIS"),
    ("windows936", "GBK"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
];

/// Encodings a client may use but a server may not: their multibyte characters can hold
/// bytes that look like ASCII quotes and backslashes.
const CLIENT_ONLY: &[&str] = &[
    "BIG5",
    "GB18030",
    "GBK",
    "JOHAB",
    "SHIFT_JIS_2004",
    "SJIS",
    "UHC",
];

/// The canonical name of an encoding name or alias; None if PostgreSQL knows no such
/// encoding.
pub fn canonical(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() >= 64 {
        return None;
    }
    let clean: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    ALIASES
        .binary_search_by(|(alias, _)| alias.cmp(&clean.as_str()))
        .ok()
        .map(|i| ALIASES[i].1)
}

/// The value PostgreSQL reports for `client_encoding` after a client set it to `name`:
/// the canonical name, except that exactly `UNICODE` is kept as given (a workaround
/// PostgreSQL keeps for old JDBC drivers).
pub fn reported_client_encoding(name: &str) -> Option<&str> {
    if name == "UNICODE" {
        return Some(name);
    }
    canonical(name)
}

/// Is this (canonical) encoding one whose text pgtenant's lexers cannot read byte-wise?
pub fn is_client_only(canonical: &str) -> bool {
    CLIENT_ONLY.contains(&canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_sorted_and_clean() {
        assert!(ALIASES.windows(2).all(|w| w[0].0 < w[1].0));
        for (alias, canon) in ALIASES {
            assert!(alias
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            // Every canonical name is itself accepted and maps to itself.
            assert_eq!(canonical(canon), Some(*canon), "{canon}");
        }
    }

    #[test]
    fn spellings() {
        assert_eq!(canonical("euc-jp"), Some("EUC_JP"));
        assert_eq!(canonical("ISO-8859-1"), Some("LATIN1"));
        assert_eq!(canonical("iso_8859_5"), Some("ISO_8859_5"));
        assert_eq!(canonical("Windows-1252"), Some("WIN1252"));
        assert_eq!(canonical("utf-8"), Some("UTF8"));
        assert_eq!(canonical("unicode"), Some("UTF8"));
        assert_eq!(canonical("Shift_JIS"), Some("SJIS"));
        assert_eq!(canonical("nosuch"), None);
        assert_eq!(canonical(""), None);
        assert_eq!(reported_client_encoding("UNICODE"), Some("UNICODE"));
        assert_eq!(reported_client_encoding("Unicode"), Some("UTF8"));
        assert!(is_client_only("SJIS") && !is_client_only("EUC_JP"));
    }
}
