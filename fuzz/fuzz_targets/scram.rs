//! auth/scram.rs: both halves of SCRAM-SHA-256.
//! Properties:
//! - honest client and server with the right password both finish, and the ClientKey the
//!   server recovers logs in to the server (`ServerCredential::from_secret`); with a
//!   wrong password the server refuses;
//! - any change to any message in flight (one byte xor'ed, or the message cut) and the
//!   exchange does not finish on both sides;
//! - the server fed arbitrary client messages never authenticates (forging a proof
//!   would need the SHA-256 preimage); the client fed arbitrary server messages never
//!   finishes; neither panics. (The client is given SCRAM keys there, not a password: a
//!   server may ask for any iteration count, which is documented as trusted.)
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::auth::{ScramClient, ScramSecret, ScramServer, Secret, ServerCredential};

#[derive(Arbitrary, Debug)]
struct Tamper {
    /// Which message: 0 client-first, 1 server-first, 2 client-final, 3 server-final.
    which: u8,
    at: u16,
    xor: u8,
    cut: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Honest {
        password: String,
        wrong: Option<String>,
        salt: Vec<u8>,
        iterations: u8,
        tamper: Option<Tamper>,
    },
    ServerGetsJunk {
        first: Vec<u8>,
        last: Vec<u8>,
        honest_first: bool,
    },
    ClientGetsJunk {
        first: Vec<u8>,
        last: Vec<u8>,
    },
}

fn tamper(msg: &mut Vec<u8>, t: &Tamper) -> bool {
    if msg.is_empty() {
        return false;
    }
    let at = usize::from(t.at) % msg.len();
    if t.cut {
        msg.truncate(at);
        true
    } else if t.xor != 0 {
        msg[at] ^= t.xor;
        true
    } else {
        false
    }
}

fuzz_target!(|input: Input| match input {
    Input::Honest {
        password,
        wrong,
        salt,
        iterations,
        tamper: t,
    } => {
        // A password is a C string in PostgreSQL (and HMAC pads a short key with zeros:
        // "" and "\0" are the same key).
        if salt.is_empty()
            || password.contains('\0')
            || wrong.as_ref().is_some_and(|w| w.contains('\0'))
        {
            return;
        }
        let secret = ScramSecret::from_password(&password, &salt, u32::from(iterations % 8) + 1);
        let stored = Secret::Scram(secret);
        let mut server = ScramServer::new(&stored, "app").unwrap();
        let used = wrong.clone().unwrap_or_else(|| password.clone());
        let mut client = ScramClient::new(ServerCredential::Password(used.clone())).unwrap();
        let mut changed = false;
        let mut hit = |i: u8, m: &mut Vec<u8>| {
            if let Some(t) = &t {
                if t.which % 4 == i {
                    changed |= tamper(m, t);
                }
            }
        };
        let mut m = client.client_first();
        hit(0, &mut m);
        let Ok(mut m) = server.handle_client_first(&m) else {
            assert!(changed);
            return;
        };
        hit(1, &mut m);
        let Ok(mut m) = client.handle_server_first(&m) else {
            assert!(changed);
            return;
        };
        hit(2, &mut m);
        let r = server.handle_client_final(&m);
        let Ok(mut m) = r else {
            assert!(
                changed || used != password,
                "the right password was refused: {r:?}"
            );
            assert!(!server.is_authenticated());
            return;
        };
        assert!(server.is_authenticated());
        hit(3, &mut m);
        let done = client.handle_server_final(&m).is_ok();
        assert_eq!(done, client.is_done());
        if changed {
            assert!(!done, "a tampered exchange finished on both sides ({t:?})");
            return;
        }
        assert_eq!(used, password, "a wrong password was accepted");
        assert!(done, "the client refused an honest server");
        let key = server.client_key().unwrap();
        assert!(ServerCredential::from_secret(&stored, "app", Some(key)).is_some());
    }
    Input::ServerGetsJunk {
        first,
        last,
        honest_first,
    } => {
        let secret = ScramSecret::from_password("secret", b"salt", 1);
        let mut server = ScramServer::new(&Secret::Scram(secret), "app").unwrap();
        let first = if honest_first {
            ScramClient::new(ServerCredential::Password("x".into()))
                .unwrap()
                .client_first()
        } else {
            first
        };
        if let Ok(sf) = server.handle_client_first(&first) {
            let s = String::from_utf8(sf).expect("server-first is text");
            assert!(s.starts_with("r="), "{s}");
            let _ = server.handle_client_final(&last);
        }
        assert!(!server.is_authenticated(), "authenticated by junk");
        assert!(server.client_key().is_none());
        assert!(
            server.handle_client_first(&first).is_err(),
            "a second client-first"
        );
    }
    Input::ClientGetsJunk { first, last } => {
        let mut client = ScramClient::new(ServerCredential::ScramKeys {
            client_key: [7; 32],
            server_key: [9; 32],
        })
        .unwrap();
        let _ = client.client_first();
        if client.handle_server_first(&first).is_ok() {
            let _ = client.handle_server_final(&last);
        }
        assert!(!client.is_done(), "finished against a junk server");
    }
});
