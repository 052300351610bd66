//! PostgreSQL md5 password authentication.

use md5::{Digest, Md5};

use super::{ct_eq, AuthError, Secret};

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in digest.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What PostgreSQL stores for an md5 password: `"md5" + hex(md5(password + user))`.
pub fn md5_password_hash(password: &str, user: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The PasswordMessage a client sends for AuthenticationMD5Password:
/// `"md5" + hex(md5(hex_part + salt))`, where `md5_hash` is `md5_password_hash(…)`
/// (with or without its `md5` prefix).
pub fn md5_salted_response(md5_hash: &str, salt: [u8; 4]) -> String {
    let hex_part = md5_hash.strip_prefix("md5").unwrap_or(md5_hash);
    format!("md5{}", md5_hex(&[hex_part.as_bytes(), &salt]))
}

/// Check a client's md5 response against a stored secret, in constant time.
pub fn md5_verify(
    secret: &Secret,
    user: &str,
    salt: [u8; 4],
    response: &str,
) -> Result<(), AuthError> {
    let hash = match secret {
        Secret::Plain(password) => md5_password_hash(password, user),
        Secret::Md5(hash) => hash.clone(),
        Secret::Scram(_) => {
            return Err(AuthError::UnsupportedSecret(
                "md5 authentication cannot use a SCRAM-SHA-256 secret: \
                 use scram-sha-256 auth or store a plain or md5 password",
            ))
        }
    };
    let expected = md5_salted_response(&hash, salt);
    if ct_eq(expected.as_bytes(), response.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_matches_postgres() {
        // printf secretapp | md5sum → 6a422f785c9e20873908ce25d1736ae2
        assert_eq!(
            md5_password_hash("secret", "app"),
            "md56a422f785c9e20873908ce25d1736ae2"
        );
    }

    #[test]
    fn salted_response_known_value() {
        // printf '6a422f785c9e20873908ce25d1736ae2\x01\x02\x03\x04' | md5sum
        let r = md5_salted_response("md56a422f785c9e20873908ce25d1736ae2", [1, 2, 3, 4]);
        assert_eq!(r, "md5911f527656472583a006e7727877b33e");
        // Without prefix gives the same answer.
        assert_eq!(
            r,
            md5_salted_response("6a422f785c9e20873908ce25d1736ae2", [1, 2, 3, 4])
        );
    }

    #[test]
    fn verify_plain_and_md5() {
        let salt = [9, 8, 7, 6];
        let resp = md5_salted_response(&md5_password_hash("secret", "app"), salt);
        assert!(md5_verify(&Secret::Plain("secret".into()), "app", salt, &resp).is_ok());
        assert!(md5_verify(
            &Secret::parse(&md5_password_hash("secret", "app")),
            "app",
            salt,
            &resp
        )
        .is_ok());
        assert!(matches!(
            md5_verify(&Secret::Plain("wrong".into()), "app", salt, &resp),
            Err(AuthError::WrongPassword)
        ));
        assert!(matches!(
            md5_verify(&Secret::Plain("secret".into()), "other", salt, &resp),
            Err(AuthError::WrongPassword)
        ));
        assert!(matches!(
            md5_verify(&Secret::Plain("secret".into()), "app", [0, 0, 0, 0], &resp),
            Err(AuthError::WrongPassword)
        ));
        assert!(matches!(
            md5_verify(&Secret::Plain("secret".into()), "app", salt, ""),
            Err(AuthError::WrongPassword)
        ));
        let scram = Secret::Scram(crate::auth::ScramSecret::from_password(
            "secret", b"salt", 4096,
        ));
        assert!(matches!(
            md5_verify(&scram, "app", salt, &resp),
            Err(AuthError::UnsupportedSecret(_))
        ));
    }
}
