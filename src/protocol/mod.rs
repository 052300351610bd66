//! Typed views of the few messages pgtenant looks inside, and builders for the ones it
//! sends itself. Everything a peer sent is read through [`Reader`], which checks every
//! length: a malformed message is an error, never a panic.
//!
//! (pgwire's message decoders index and `get_u16()` without checking that the bytes are
//! there, which panics on a truncated body, so the handful of decoders needed here are
//! written against a checked cursor instead.)
pub mod build;
pub mod decode;
pub mod encodings;
pub mod extended;
mod reader;

pub use decode::{AuthRequest, ErrorFields, StartupPacket, PROTOCOL_3_0};
pub use reader::Reader;

/// The longest start of `s` of at most `max` bytes that ends on a character boundary
/// (PostgreSQL cuts identifiers so; pgtenant cuts what a peer sent it so).
pub fn prefix_within(s: &str, max: usize) -> &str {
    let end = (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// `s` whole up to `max` bytes, else its start cut there with "…" (what a peer sent,
/// kept or shown by pgtenant in bounded room).
pub fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    format!("{}…", prefix_within(s, max)).into()
}

/// Protocol decode errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unexpected message {0:?} during {1}")]
    Unexpected(char, &'static str),
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedVersion(u16, u16),
}

/// SQLSTATE codes pgtenant produces itself.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
}
