//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, without channel binding.
//!
//! [`ScramServer`] authenticates a client against a stored [`Secret`]; after success it
//! yields the client's ClientKey, which lets pgtenant log in to the real server with the
//! same SCRAM secret ([`ServerCredential::ScramKeys`]), as PgBouncer does.
//! [`ScramClient`] logs pgtenant in to a PostgreSQL server.
//!
//! Sans-IO: the methods take and return the SASL message payloads; the caller wraps them
//! in AuthenticationSASLContinue/Final and SASLInitialResponse/SASLResponse.
//!
//! No user enumeration: the server-first-message (salt, iterations) a user is shown must
//! not depend on whether the user exists or how its secret is stored. A user without a
//! SCRAM secret of its own (unknown, md5 only, or a plain password) is shown
//! [`mock_salt`] and 4096 iterations: stable per name for the life of the process, as
//! PostgreSQL's `scram_mock_salt`, and never a fresh random salt per try.

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;

use super::secret::{client_key, hi, hmac, server_key, sha256};
use super::{ct_eq, AuthError, ScramSecret, Secret};

/// The SASL mechanism name advertised in AuthenticationSASL.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Iterations used when a cleartext password must be turned into a SCRAM verifier, and
/// shown for a mock secret (PostgreSQL's default, scram_iterations).
const DEFAULT_ITERATIONS: u32 = 4096;
/// Random bytes in a nonce (PostgreSQL uses 18, base64 encoded).
const NONCE_BYTES: usize = 18;
/// Salt length of derived and mock secrets (PostgreSQL's SCRAM_DEFAULT_SALT_LEN).
const SALT_LEN: usize = 16;

/// The salt shown to `user` when it has no SCRAM secret of its own: SHA-256 over the user
/// name and a secret nonce drawn once per process, cut to the salt length (PostgreSQL's
/// `scram_mock_salt` with its `mock_auth_nonce`). The same name always gets the same salt
/// while the process runs, so two tries do not tell an unknown user from a known one, and
/// without the nonce nobody can compute it.
pub fn mock_salt(user: &str) -> [u8; SALT_LEN] {
    use sha2::{Digest, Sha256};
    static NONCE: OnceLock<[u8; 32]> = OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        let mut n = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut n);
        n
    });
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(nonce);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&h.finalize()[..SALT_LEN]);
    salt
}

/// The SCRAM secret for a plain password: 4096 iterations and `user`'s [`mock_salt`], so
/// that the user is shown the same salt at every login (and the same one it would be
/// shown if it did not exist). Costs 4096 PBKDF2 rounds: callers cache it.
pub fn secret_for_password(user: &str, password: &str) -> ScramSecret {
    ScramSecret::from_password(password, &mock_salt(user), DEFAULT_ITERATIONS)
}

fn random_nonce() -> String {
    let mut b = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

fn utf8(data: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(data).map_err(|_| AuthError::Malformed("SCRAM message is not UTF-8"))
}

/// The value of `name=value`, where `name` is given with its `=` (e.g. `"r="`).
fn attr<'a>(part: Option<&'a str>, name: &str, what: &'static str) -> Result<&'a str, AuthError> {
    part.and_then(|p| p.strip_prefix(name))
        .ok_or(AuthError::Malformed(what))
}

/// RFC 5802 `printable` without ','.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Optional extensions must at least look like `x=value`.
fn check_extensions<'a>(parts: impl Iterator<Item = &'a str>) -> Result<(), AuthError> {
    for p in parts {
        let mut it = p.bytes();
        match (it.next(), it.next()) {
            (Some(a), Some(b'=')) if a.is_ascii_alphabetic() => {}
            _ => return Err(AuthError::Malformed("invalid SCRAM attribute")),
        }
    }
    Ok(())
}

fn decode_key(b64: &str, what: &'static str) -> Result<[u8; 32], AuthError> {
    B64.decode(b64)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or(AuthError::Malformed(what))
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b.iter())) {
        *o = x ^ y;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Server side: pgtenant authenticates a client.
// ---------------------------------------------------------------------------------------

enum ServerState {
    Initial,
    FirstSent {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done {
        client_key: [u8; 32],
    },
    Failed,
}

/// The server half of a SCRAM-SHA-256 exchange.
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    /// Authenticating a user that does not exist: go through the motions, then fail.
    mock: bool,
    state: ServerState,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::Initial => "initial",
            ServerState::FirstSent { .. } => "first-sent",
            ServerState::Done { .. } => "done",
            ServerState::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Start an exchange for `user` with this stored secret. A cleartext password is
    /// derived with [`secret_for_password`] (4096 PBKDF2 rounds at every call: a server
    /// that logs many clients in caches the result and passes `Secret::Scram`); an md5
    /// secret cannot do SCRAM.
    pub fn new(secret: &Secret, user: &str) -> Result<ScramServer, AuthError> {
        let secret = match secret {
            Secret::Scram(s) => s.clone(),
            Secret::Plain(password) => secret_for_password(user, password),
            Secret::Md5(_) => {
                return Err(AuthError::UnsupportedSecret(
                    "SCRAM-SHA-256 authentication cannot use an md5 secret: \
                     use md5 auth or store a plain or SCRAM password",
                ))
            }
        };
        Ok(Self::with_nonce(secret, random_nonce()))
    }

    /// An exchange for a user that does not exist (or has no usable secret): it looks
    /// like a real one to the client (the user's [`mock_salt`], 4096 iterations, the
    /// same on every try) and always ends in `WrongPassword`, so a client cannot probe
    /// which users exist.
    pub fn mock(user: &str) -> ScramServer {
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        let mut rng = rand::thread_rng();
        rng.fill_bytes(&mut stored_key);
        rng.fill_bytes(&mut server_key);
        let secret = ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: mock_salt(user).to_vec(),
            stored_key,
            server_key,
        };
        let mut s = Self::with_nonce(secret, random_nonce());
        s.mock = true;
        s
    }

    /// With a fixed server nonce (tests: RFC vectors).
    pub(crate) fn with_nonce(secret: ScramSecret, server_nonce: String) -> ScramServer {
        ScramServer {
            secret,
            server_nonce,
            mock: false,
            state: ServerState::Initial,
        }
    }

    /// Read client-first-message (the SASLInitialResponse data), return
    /// server-first-message (the AuthenticationSASLContinue data).
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(AuthError::OutOfOrder(
                "client-first-message already received",
            ));
        }
        self.state = ServerState::Failed;
        let msg = utf8(client_first)?;
        let (cbind_flag, rest) = msg
            .split_once(',')
            .ok_or(AuthError::Malformed("missing gs2 header"))?;
        match cbind_flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(AuthError::ChannelBindingNotSupported),
            _ => return Err(AuthError::Malformed("invalid channel-binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() {
            return Err(if authzid.starts_with("a=") {
                AuthError::AuthzidNotSupported
            } else {
                AuthError::Malformed("invalid authorization identity")
            });
        }
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(AuthError::Malformed(
                "mandatory SCRAM extensions are not supported",
            ));
        }
        // The user name is ignored, as in PostgreSQL: the startup packet's user counts.
        let _user = attr(first, "n=", "missing user name attribute")?;
        let client_nonce = attr(parts.next(), "r=", "missing nonce attribute")?;
        if !valid_nonce(client_nonce) {
            return Err(AuthError::Malformed("invalid client nonce"));
        }
        check_extensions(parts)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.secret.salt),
            self.secret.iterations
        );
        let out = server_first.as_bytes().to_vec();
        self.state = ServerState::FirstSent {
            gs2_header: format!("{cbind_flag},,"),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(out)
    }

    /// Read client-final-message (the SASLResponse data), verify the proof, and return
    /// server-final-message (the AuthenticationSASLFinal data).
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ServerState::FirstSent {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err(AuthError::OutOfOrder(
                "client-final-message before client-first-message or after the end",
            ));
        };
        let msg = utf8(client_final)?;
        let (without_proof, proof_attr) = msg
            .rsplit_once(',')
            .ok_or(AuthError::Malformed("missing proof"))?;
        let proof = attr(Some(proof_attr), "p=", "missing proof")?;
        let mut parts = without_proof.split(',');
        let cbind = attr(parts.next(), "c=", "missing channel-binding attribute")?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| AuthError::Malformed("invalid channel-binding data"))?;
        if cbind != gs2_header.as_bytes() {
            return Err(AuthError::ChannelBindingMismatch);
        }
        let their_nonce = attr(parts.next(), "r=", "missing nonce attribute")?;
        if their_nonce != nonce {
            return Err(AuthError::NonceMismatch);
        }
        check_extensions(parts)?;
        let proof = decode_key(proof, "invalid proof")?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !ct_eq(&sha256(&client_key), &self.secret.stored_key) || self.mock {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        self.state = ServerState::Done { client_key };
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    /// True once the client has proven it knows the password.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, ServerState::Done { .. })
    }

    /// The client's ClientKey, recovered from its proof, after a successful exchange.
    /// With the stored ServerKey it lets pgtenant log in to the server as this user.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Done { client_key } => Some(client_key),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client side: pgtenant logs in to a PostgreSQL server.
// ---------------------------------------------------------------------------------------

/// What pgtenant uses to log in to a PostgreSQL server. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerCredential {
    /// A cleartext password: works with every method the server may ask for.
    Password(String),
    /// `md5` + hex(md5(password + user)): works with md5 auth only.
    Md5(String),
    /// SCRAM keys recovered from the client's own SCRAM login (pass-through). They only
    /// work if the server stores the same SCRAM verifier (same salt and iterations).
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerCredential::Password(_) => "ServerCredential::Password(<redacted>)",
            ServerCredential::Md5(_) => "ServerCredential::Md5(<redacted>)",
            ServerCredential::ScramKeys { .. } => "ServerCredential::ScramKeys(<redacted>)",
        })
    }
}

impl ServerCredential {
    /// The credential for logging in to the server as `user`, given the stored secret
    /// and, for SCRAM secrets, the ClientKey from the client's successful SCRAM login.
    /// A SCRAM secret without a (matching) ClientKey gives nothing: the password cannot
    /// be recovered from it. `user` is the role the credential is for; md5 hashes
    /// already include it.
    pub fn from_secret(
        secret: &Secret,
        user: &str,
        client_key: Option<[u8; 32]>,
    ) -> Option<ServerCredential> {
        let _ = user;
        match secret {
            Secret::Plain(p) => Some(ServerCredential::Password(p.clone())),
            Secret::Md5(h) => Some(ServerCredential::Md5(h.clone())),
            Secret::Scram(s) => {
                let client_key = client_key?;
                if !ct_eq(&sha256(&client_key), &s.stored_key) {
                    return None;
                }
                Some(ServerCredential::ScramKeys {
                    client_key,
                    server_key: s.server_key,
                })
            }
        }
    }
}

enum ClientState {
    Initial,
    FirstSent { client_first_bare: String },
    FinalSent { server_signature: [u8; 32] },
    Done,
    Failed,
}

enum ClientCred {
    Password(String),
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

/// The client half of a SCRAM-SHA-256 exchange (pgtenant → PostgreSQL server).
pub struct ScramClient {
    cred: ClientCred,
    user: String,
    nonce: String,
    state: ClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "initial",
            ClientState::FirstSent { .. } => "first-sent",
            ClientState::FinalSent { .. } => "final-sent",
            ClientState::Done => "done",
            ClientState::Failed => "failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Start an exchange. An md5 hash cannot do SCRAM.
    pub fn new(cred: ServerCredential) -> Result<ScramClient, AuthError> {
        Self::with_params(cred, "", random_nonce())
    }

    /// With a fixed user name and nonce (tests: RFC vectors). PostgreSQL clients send an
    /// empty user name; the server takes the one from the startup packet.
    pub(crate) fn with_params(
        cred: ServerCredential,
        user: &str,
        nonce: String,
    ) -> Result<ScramClient, AuthError> {
        let cred = match cred {
            ServerCredential::Password(p) => ClientCred::Password(p),
            ServerCredential::ScramKeys {
                client_key,
                server_key,
            } => ClientCred::Keys {
                client_key,
                server_key,
            },
            ServerCredential::Md5(_) => {
                return Err(AuthError::UnsupportedSecret(
                    "the server asks for SCRAM-SHA-256 but only an md5 hash of the password \
                     is known: store a plain or SCRAM password",
                ))
            }
        };
        Ok(ScramClient {
            cred,
            user: user.to_owned(),
            nonce,
            state: ClientState::Initial,
        })
    }

    /// The SASLInitialResponse data: `n,,n=,r=<nonce>`.
    pub fn client_first(&mut self) -> Vec<u8> {
        let bare = format!("n={},r={}", self.user, self.nonce);
        let out = format!("n,,{bare}").into_bytes();
        self.state = ClientState::FirstSent {
            client_first_bare: bare,
        };
        out
    }

    /// Read server-first-message (AuthenticationSASLContinue data), return
    /// client-final-message (SASLResponse data).
    ///
    /// With a password this runs the server's iteration count of HMACs; a hostile server
    /// can make that large.
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ClientState::FirstSent { client_first_bare } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(AuthError::OutOfOrder(
                "server-first-message before client-first-message or after it",
            ));
        };
        let msg = utf8(data)?;
        let mut parts = msg.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(AuthError::Malformed(
                "mandatory SCRAM extensions are not supported",
            ));
        }
        let nonce = attr(first, "r=", "missing nonce attribute")?;
        if !valid_nonce(nonce) {
            return Err(AuthError::Malformed("invalid server nonce"));
        }
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(AuthError::NonceMismatch);
        }
        let salt = attr(parts.next(), "s=", "missing salt attribute")?;
        let salt = B64
            .decode(salt)
            .map_err(|_| AuthError::Malformed("invalid salt"))?;
        if salt.is_empty() {
            return Err(AuthError::Malformed("empty salt"));
        }
        let iterations: u32 = attr(parts.next(), "i=", "missing iteration count")?
            .parse()
            .map_err(|_| AuthError::Malformed("invalid iteration count"))?;
        if iterations == 0 {
            return Err(AuthError::Malformed("invalid iteration count"));
        }
        check_extensions(parts)?;

        let (client_key, server_key) = match &self.cred {
            ClientCred::Password(p) => {
                let salted = hi(p.as_bytes(), &salt, iterations);
                (client_key(&salted), server_key(&salted))
            }
            // The keys were derived with the salt and iterations the server stores for
            // this user; the server sends exactly those, so they are not needed here.
            ClientCred::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{msg},{without_proof}");
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        self.state = ClientState::FinalSent {
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Read server-final-message (AuthenticationSASLFinal data) and check the server's
    /// signature: the server must prove it knows the verifier too.
    pub fn handle_server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let ClientState::FinalSent { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(AuthError::OutOfOrder(
                "server-final-message before server-first-message or after the end",
            ));
        };
        let msg = utf8(data)?;
        let mut parts = msg.split(',');
        let first = parts.next().unwrap_or("");
        if let Some(err) = first.strip_prefix("e=") {
            let err: String = err.chars().take(100).collect();
            return Err(AuthError::ServerError(err));
        }
        let v = attr(Some(first), "v=", "missing verifier attribute")?;
        let v = decode_key(v, "invalid server signature")?;
        if !ct_eq(&v, &server_signature) {
            return Err(AuthError::ServerSignatureMismatch);
        }
        self.state = ClientState::Done;
        Ok(())
    }

    /// True once the server's signature has been verified.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CNONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SNONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_secret() -> ScramSecret {
        let salt = B64.decode(RFC_SALT).expect("salt");
        ScramSecret::from_password("pencil", &salt, 4096)
    }

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn rfc7677_client() {
        let mut c = ScramClient::with_params(
            ServerCredential::Password("pencil".into()),
            "user",
            RFC_CNONCE.into(),
        )
        .expect("client");
        assert_eq!(s(c.client_first()), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .handle_server_first(RFC_SERVER_FIRST.as_bytes())
            .expect("first");
        assert_eq!(s(fin), RFC_CLIENT_FINAL);
        c.handle_server_final(RFC_SERVER_FINAL.as_bytes())
            .expect("final");
        assert!(c.is_done());
    }

    #[test]
    fn rfc7677_server() {
        let mut srv = ScramServer::with_nonce(rfc_secret(), RFC_SNONCE.into());
        let first = srv
            .handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .expect("first");
        assert_eq!(s(first), RFC_SERVER_FIRST);
        assert_eq!(srv.client_key(), None);
        let fin = srv
            .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
            .expect("final");
        assert_eq!(s(fin), RFC_SERVER_FINAL);
        assert!(srv.is_authenticated());
        // The recovered ClientKey is HMAC(SaltedPassword, "Client Key").
        let salt = B64.decode(RFC_SALT).expect("salt");
        let expected = client_key(&hi(b"pencil", &salt, 4096));
        assert_eq!(srv.client_key(), Some(expected));
    }

    fn run(server: &mut ScramServer, client: &mut ScramClient) -> Result<(), AuthError> {
        let cf = client.client_first();
        let sf = server.handle_client_first(&cf)?;
        let cfin = client.handle_server_first(&sf)?;
        let sfin = server.handle_client_final(&cfin)?;
        client.handle_server_final(&sfin)
    }

    #[test]
    fn round_trip_plain_and_scram_secrets() {
        for secret in [
            Secret::Plain("s3cret".into()),
            Secret::Scram(ScramSecret::from_password(
                "s3cret",
                b"0123456789abcdef",
                4096,
            )),
        ] {
            let mut srv = ScramServer::new(&secret, "u").expect("server");
            let mut cli =
                ScramClient::new(ServerCredential::Password("s3cret".into())).expect("client");
            run(&mut srv, &mut cli).expect("round trip");
            assert!(srv.client_key().is_some());
            assert!(cli.is_done());
        }
    }

    #[test]
    fn scram_pass_through() {
        // The client logs in to pgtenant; pgtenant logs in to the server with the keys.
        let verifier = ScramSecret::from_password("s3cret", b"pass-through-salt", 4096);
        let secret = Secret::Scram(verifier.clone());
        let mut front = ScramServer::new(&secret, "u").expect("server");
        let mut app = ScramClient::new(ServerCredential::Password("s3cret".into())).expect("c");
        run(&mut front, &mut app).expect("client login");

        let cred = ServerCredential::from_secret(&secret, "app", front.client_key())
            .expect("pass-through credential");
        assert!(matches!(cred, ServerCredential::ScramKeys { .. }));
        // The "real server" stores the same verifier.
        let mut backend_server = ScramServer::new(&secret, "u").expect("server");
        let mut backend_client = ScramClient::new(cred).expect("client");
        run(&mut backend_server, &mut backend_client).expect("pass-through login");

        // A server with a different verifier for the same password rejects the keys.
        let other = Secret::Scram(ScramSecret::from_password("s3cret", b"other-salt", 4096));
        let cred = ServerCredential::from_secret(&secret, "app", front.client_key()).expect("c");
        let mut s2 = ScramServer::new(&other, "u").expect("server");
        let mut c2 = ScramClient::new(cred).expect("client");
        assert!(matches!(
            run(&mut s2, &mut c2),
            Err(AuthError::WrongPassword)
        ));
    }

    #[test]
    fn from_secret() {
        let scram = Secret::Scram(ScramSecret::from_password("pw", b"salt", 4096));
        assert_eq!(ServerCredential::from_secret(&scram, "u", None), None);
        assert_eq!(
            ServerCredential::from_secret(&scram, "u", Some([0; 32])),
            None
        );
        assert_eq!(
            ServerCredential::from_secret(&Secret::Plain("pw".into()), "u", None),
            Some(ServerCredential::Password("pw".into()))
        );
        let md5 = Secret::parse("md56a422f785c9e20873908ce25d1736ae2");
        assert!(matches!(
            ServerCredential::from_secret(&md5, "u", None),
            Some(ServerCredential::Md5(_))
        ));
        assert!(ScramClient::new(ServerCredential::Md5("md5abc".into())).is_err());
        assert!(ScramServer::new(&md5, "u").is_err());
        let dbg = format!("{:?}", ServerCredential::Password("pw-xyz".into()));
        assert!(!dbg.contains("pw-xyz"));
    }

    #[test]
    fn wrong_password() {
        let mut srv = ScramServer::new(&Secret::Plain("right".into()), "u").expect("server");
        let mut cli = ScramClient::new(ServerCredential::Password("wrong".into())).expect("c");
        assert!(matches!(
            run(&mut srv, &mut cli),
            Err(AuthError::WrongPassword)
        ));
        assert_eq!(srv.client_key(), None);
        // The exchange is over: more input is out of order.
        assert!(matches!(
            srv.handle_client_final(b"c=biws,r=x,p=AAAA"),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    /// The salt and iteration count in a server-first-message.
    fn salt_and_iterations(srv: &mut ScramServer) -> String {
        let first = s(srv.handle_client_first(b"n,,n=,r=abc").expect("first"));
        first.split_once(",s=").expect("salt").1.to_owned()
    }

    #[test]
    fn salts_are_stable_per_user_and_do_not_tell_mock_from_real() {
        let a1 = salt_and_iterations(&mut ScramServer::mock("alice"));
        let a2 = salt_and_iterations(&mut ScramServer::mock("alice"));
        assert_eq!(
            a1, a2,
            "an unknown user must see the same salt on every try"
        );
        assert!(a1.ends_with(",i=4096"), "{a1}");
        assert_ne!(a1, salt_and_iterations(&mut ScramServer::mock("bob")));
        // A plain password is shown the very salt it would get if the user did not exist.
        let plain = Secret::Plain("pw".into());
        let p1 = salt_and_iterations(&mut ScramServer::new(&plain, "alice").expect("server"));
        let p2 = salt_and_iterations(&mut ScramServer::new(&plain, "alice").expect("server"));
        assert_eq!(p1, a1);
        assert_eq!(p2, a1);
        assert_eq!(mock_salt("alice").len(), 16);
        assert_eq!(
            secret_for_password("alice", "pw"),
            secret_for_password("alice", "pw")
        );
    }

    #[test]
    fn mock_always_fails() {
        let mut srv = ScramServer::mock("nosuchuser");
        let mut cli = ScramClient::new(ServerCredential::Password("x".into())).expect("c");
        assert!(matches!(
            run(&mut srv, &mut cli),
            Err(AuthError::WrongPassword)
        ));
    }

    #[test]
    fn server_with_bad_signature_is_rejected() {
        let mut srv = ScramServer::new(&Secret::Plain("pw".into()), "u").expect("server");
        let mut cli = ScramClient::new(ServerCredential::Password("pw".into())).expect("c");
        let sf = srv.handle_client_first(&cli.client_first()).expect("sf");
        cli.handle_server_first(&sf).expect("cf");
        assert!(matches!(
            cli.handle_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(AuthError::ServerSignatureMismatch)
        ));
    }

    #[test]
    fn client_sees_server_error() {
        let mut cli = ScramClient::new(ServerCredential::Password("pw".into())).expect("c");
        let cf = s(cli.client_first());
        let nonce = cf.rsplit_once("r=").map(|(_, n)| n).unwrap_or("");
        let sf = format!("r={nonce}XYZ,s=c2FsdA==,i=1");
        cli.handle_server_first(sf.as_bytes()).expect("cf");
        assert!(matches!(
            cli.handle_server_final(b"e=invalid-proof"),
            Err(AuthError::ServerError(e)) if e == "invalid-proof"
        ));
    }

    #[test]
    fn y_flag_uses_esws() {
        let mut srv = ScramServer::with_nonce(rfc_secret(), RFC_SNONCE.into());
        srv.handle_client_first(b"y,,n=,r=abc").expect("first");
        // c=biws is wrong for a "y,," header.
        let mut srv2 = ScramServer::with_nonce(rfc_secret(), RFC_SNONCE.into());
        srv2.handle_client_first(b"y,,n=,r=abc").expect("first");
        let nonce = format!("abc{RFC_SNONCE}");
        assert!(matches!(
            srv2.handle_client_final(format!("c=biws,r={nonce},p=AAAA").as_bytes()),
            Err(AuthError::ChannelBindingMismatch)
        ));
        // c=eSws passes the binding check and fails on the (bogus) proof.
        let proof = B64.encode([0u8; 32]);
        assert!(matches!(
            srv.handle_client_final(format!("c=eSws,r={nonce},p={proof}").as_bytes()),
            Err(AuthError::WrongPassword)
        ));
    }

    #[test]
    fn malformed_client_first() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"x,,n=,r=abc",
            b"n,,",
            b"n,,n=",
            b"n,,n=,r=",
            b"n,,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=ab,c",
            b"n,,n=,r=abc,=x",
            b"n,,n=,r=a\x01bc",
            b"n,x,n=,r=abc",
            b"\xff\xfe",
        ];
        for c in cases {
            let mut srv = ScramServer::new(&Secret::Plain("pw".into()), "u").expect("server");
            let r = srv.handle_client_first(c);
            assert!(
                matches!(r, Err(AuthError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(c)
            );
        }
        let mut srv = ScramServer::new(&Secret::Plain("pw".into()), "u").expect("server");
        assert!(matches!(
            srv.handle_client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(AuthError::ChannelBindingNotSupported)
        ));
        let mut srv = ScramServer::new(&Secret::Plain("pw".into()), "u").expect("server");
        assert!(matches!(
            srv.handle_client_first(b"n,a=admin,n=,r=abc"),
            Err(AuthError::AuthzidNotSupported)
        ));
        let mut srv = ScramServer::new(&Secret::Plain("pw".into()), "u").expect("server");
        assert!(matches!(
            srv.handle_client_final(b"c=biws,r=abc,p=AAAA"),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn malformed_client_final() {
        let nonce = format!("abc{RFC_SNONCE}");
        let proof = B64.encode([0u8; 32]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "malformed"),
            ("c=biws".into(), "malformed"),
            (format!("c=biws,r={nonce}"), "malformed"),
            (format!("c=biws,r={nonce},p="), "malformed"),
            (format!("c=biws,r={nonce},p=!!!"), "malformed"),
            (format!("c=biws,r={nonce},p=AAAA"), "malformed"),
            (format!("r={nonce},c=biws,p={proof}"), "malformed"),
            (format!("c=!!,r={nonce},p={proof}"), "malformed"),
            (format!("c=biws,p={proof}"), "malformed"),
            (format!("c=eSws,r={nonce},p={proof}"), "cbind"),
            (format!("c=biws,r=abc,p={proof}"), "nonce"),
            (format!("c=biws,r={nonce}x,p={proof}"), "nonce"),
        ];
        for (msg, kind) in cases {
            let mut srv = ScramServer::with_nonce(rfc_secret(), RFC_SNONCE.into());
            srv.handle_client_first(b"n,,n=,r=abc").expect("first");
            let r = srv.handle_client_final(msg.as_bytes());
            let ok = match kind {
                "malformed" => matches!(r, Err(AuthError::Malformed(_))),
                "cbind" => matches!(r, Err(AuthError::ChannelBindingMismatch)),
                _ => matches!(r, Err(AuthError::NonceMismatch)),
            };
            assert!(ok, "{msg}: {r:?}");
        }
    }

    #[test]
    fn malformed_server_messages() {
        let cases: &[&str] = &[
            "",
            "r=",
            "s=c2FsdA==,i=4096",
            "r={N}X",
            "r={N}X,s=c2FsdA==",
            "r={N}X,s=!!,i=4096",
            "r={N}X,s=,i=4096",
            "r={N}X,s=c2FsdA==,i=0",
            "r={N}X,s=c2FsdA==,i=-1",
            "r={N}X,s=c2FsdA==,i=abc",
            "m=x,r={N}X,s=c2FsdA==,i=1",
            "r={N},s=c2FsdA==,i=1",
            "r=other,s=c2FsdA==,i=1",
        ];
        for case in cases {
            let mut cli = ScramClient::new(ServerCredential::Password("pw".into())).expect("c");
            let cf = s(cli.client_first());
            let nonce = cf
                .rsplit_once("r=")
                .map(|(_, n)| n.to_owned())
                .unwrap_or_default();
            let msg = case.replace("{N}", &nonce);
            assert!(cli.handle_server_first(msg.as_bytes()).is_err(), "{msg}");
        }
        let mut cli = ScramClient::new(ServerCredential::Password("pw".into())).expect("c");
        assert!(matches!(
            cli.handle_server_first(b"r=x,s=c2FsdA==,i=1"),
            Err(AuthError::OutOfOrder(_))
        ));
        for fin in ["", "v=", "v=AAAA", "x=1", "v=!!"] {
            let mut cli = ScramClient::new(ServerCredential::Password("pw".into())).expect("c");
            let cf = s(cli.client_first());
            let nonce = cf
                .rsplit_once("r=")
                .map(|(_, n)| n.to_owned())
                .unwrap_or_default();
            cli.handle_server_first(format!("r={nonce}X,s=c2FsdA==,i=1").as_bytes())
                .expect("cf");
            assert!(cli.handle_server_final(fin.as_bytes()).is_err(), "{fin}");
        }
    }
}
