//! Client and server authentication: SCRAM-SHA-256, md5, cleartext, trust; secrets and
//! the PgBouncer-style auth file. Sans-IO: the frontend/backend move the bytes.
//!
//! Nothing here logs, displays or puts a secret into an error message.

pub mod auth_file;
pub mod md5;
pub mod scram;
pub mod secret;

use std::path::PathBuf;

pub use auth_file::{load_auth_file, parse_auth_file, UserStore};
pub use md5::{md5_password_hash, md5_salted_response, md5_verify};
pub use scram::{ScramClient, ScramServer, ServerCredential, SCRAM_SHA_256};
pub use secret::{ScramSecret, Secret};

/// Errors of the auth module. Messages never contain secrets, proofs or keys.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client's proof (SCRAM) or response (md5) does not match the secret.
    #[error("password authentication failed")]
    WrongPassword,
    /// A SCRAM or md5 message does not follow the grammar.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=`), which we never advertise.
    #[error("channel binding is not supported: SCRAM-SHA-256-PLUS was not offered")]
    ChannelBindingNotSupported,
    /// The client sent an authorization identity (`a=`), which PostgreSQL does not support.
    #[error("SCRAM authorization identity is not supported")]
    AuthzidNotSupported,
    /// The nonce in a later message does not continue the one agreed earlier.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The channel-binding attribute does not repeat the gs2 header.
    #[error("SCRAM channel binding data mismatch")]
    ChannelBindingMismatch,
    /// The server's signature does not prove it knows the secret.
    #[error("server SCRAM signature does not match: the server does not know the password")]
    ServerSignatureMismatch,
    /// The server ended the SCRAM exchange with `e=<reason>`.
    #[error("server rejected SCRAM authentication: {0}")]
    ServerError(String),
    /// The kind of secret stored cannot serve the method asked for.
    #[error("{0}")]
    UnsupportedSecret(&'static str),
    /// A method was called out of order (e.g. client-final before client-first).
    #[error("SCRAM exchange out of order: {0}")]
    OutOfOrder(&'static str),
    /// A syntax error in the auth file (userlist.txt).
    #[error("auth file line {line}: {message}")]
    AuthFileSyntax { line: usize, message: &'static str },
    /// A syntax error in a named auth file.
    #[error("auth file {path}, line {line}: {message}")]
    AuthFileSyntaxAt {
        path: PathBuf,
        line: usize,
        message: &'static str,
    },
    /// The auth file could not be read.
    #[error("cannot read auth file {path}: {source}")]
    AuthFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Constant-time equality for secrets, proofs and hashes: the time taken depends only
/// on the lengths, never on where the first difference is.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
