//! The other authentication inputs: stored secrets (`Secret::parse`,
//! `ScramSecret::parse`), md5 responses, the auth_file (userlist.txt) and pg_hba.conf.
//! Properties: nothing panics; an md5 response computed from the password verifies
//! against the plain and the md5 secret, and any other response does not; a parsed
//! md5 secret is `md5` + 32 lower-case hex digits; auth_file users keep their order and
//! each secret parses as it would alone; HBA decisions are deterministic.
#![no_main]
#[path = "../common/tmpfile.rs"]
mod tmpfile;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::auth::hba::Hba;
use pgtenant::auth::{
    md5_password_hash, md5_salted_response, md5_verify, parse_auth_file, ScramSecret, Secret,
};

#[derive(Arbitrary, Debug)]
enum Input {
    Secret(String),
    Md5 {
        password: String,
        user: String,
        salt: [u8; 4],
        response: String,
    },
    AuthFile(String),
    Hba {
        text: String,
        local: bool,
        v4: [u8; 4],
        tls: bool,
        db: String,
        user: String,
    },
}

fuzz_target!(|input: Input| match input {
    Input::Secret(s) => {
        match Secret::parse(&s) {
            Secret::Md5(h) => {
                assert_eq!(h.len(), 35);
                assert!(
                    h.starts_with("md5")
                        && h[3..]
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                );
            }
            Secret::Scram(_) => assert!(ScramSecret::parse(&s).is_some()),
            Secret::Plain(p) => assert_eq!(p, s),
        }
        let _ = ScramSecret::parse(&s);
    }
    Input::Md5 {
        password,
        user,
        salt,
        response,
    } => {
        let hash = md5_password_hash(&password, &user);
        let good = md5_salted_response(&hash, salt);
        for secret in [Secret::Plain(password.clone()), Secret::Md5(hash.clone())] {
            assert!(md5_verify(&secret, &user, salt, &good).is_ok());
            assert_eq!(
                md5_verify(&secret, &user, salt, &response).is_ok(),
                response == good
            );
        }
    }
    Input::AuthFile(text) => {
        if let Ok(users) = parse_auth_file(&text) {
            for (name, _) in &users {
                assert!(text.contains(name.as_str()) || text.contains(&name.replace('"', "\"\"")));
            }
        }
    }
    Input::Hba {
        text,
        local,
        v4,
        tls,
        db,
        user,
    } => {
        // `@file` names a file of names, relative to this one: stay in the private dir.
        let leaves = text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '"')
            .any(|w| w.starts_with('@') && (w.contains('/') || w.starts_with("@.")));
        if leaves {
            return;
        }
        let path = tmpfile::dir().join("pg_hba.conf");
        if let Ok(h) = Hba::parse(&text, &path) {
            let addr = (!local).then(|| std::net::IpAddr::from(v4));
            let d = h.decide(local, addr, tls, &db, &user);
            assert_eq!(
                format!("{d:?}"),
                format!("{:?}", h.decide(local, addr, tls, &db, &user))
            );
        }
    }
});
