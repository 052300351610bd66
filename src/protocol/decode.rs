//! Decoders for the messages pgtenant must look inside.
use super::{ProtocolError, Reader};

pub const PROTOCOL_3_0: i32 = 196608;
pub const SSL_REQUEST_CODE: i32 = 80877103;
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
pub const CANCEL_REQUEST_CODE: i32 = 80877102;

/// The first packet a client sends (untagged).
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
}

impl StartupPacket {
    /// Parse a startup packet body (after its length word).
    pub fn parse(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
        let mut r = Reader::new(body, "startup");
        let code = r.i32()?;
        match code {
            SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
            GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
            CANCEL_REQUEST_CODE => {
                let pid = r.i32()?;
                let secret = r.i32()?;
                Ok(StartupPacket::Cancel { pid, secret })
            }
            _ => {
                let major = (code >> 16) as u16;
                let minor = (code & 0xffff) as u16;
                if major != 3 {
                    return Err(ProtocolError::UnsupportedVersion(major, minor));
                }
                let mut params = Vec::new();
                loop {
                    let key = r.cstr()?;
                    if key.is_empty() {
                        break;
                    }
                    let value = r.cstr()?;
                    params.push((key.to_owned(), value.to_owned()));
                }
                Ok(StartupPacket::Startup {
                    major,
                    minor,
                    params,
                })
            }
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse that pgtenant cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    /// The server function that raised it (`R`): never translated, unlike the message,
    /// so it names an error whatever the server's `lc_messages`.
    pub routine: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
        let mut r = Reader::new(body, "ErrorResponse");
        let mut out = ErrorFields::default();
        loop {
            let t = r.u8()?;
            if t == 0 {
                return Ok(out);
            }
            let v = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
            match t {
                b'V' => out.severity = v,
                b'S' if out.severity.is_empty() => out.severity = v,
                b'C' => out.code = v,
                b'M' => out.message = v,
                b'R' => out.routine = v,
                _ => {}
            }
        }
    }
}

/// Transaction status from a ReadyForQuery body: b'I', b'T' or b'E'.
pub fn ready_status(body: &[u8]) -> Result<u8, ProtocolError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(ProtocolError::Malformed("ReadyForQuery")),
    }
}

/// (name, value) of a ParameterStatus.
pub fn parameter_status(body: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let k = r.cstr()?.to_owned();
    let v = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
    Ok((k, v))
}

/// (process id, secret key) of a BackendKeyData.
pub fn backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut r = Reader::new(body, "BackendKeyData");
    Ok((r.i32()?, r.i32()?))
}

/// An Authentication* request from a server.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    Other(i32),
}

impl AuthRequest {
    pub fn parse(body: &[u8]) -> Result<AuthRequest, ProtocolError> {
        let mut r = Reader::new(body, "Authentication");
        Ok(match r.i32()? {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => {
                let s = r.bytes(4)?;
                AuthRequest::Md5 {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_owned());
                }
                AuthRequest::Sasl { mechanisms }
            }
            11 => AuthRequest::SaslContinue(r.remaining().to_vec()),
            12 => AuthRequest::SaslFinal(r.remaining().to_vec()),
            n => AuthRequest::Other(n),
        })
    }
}

/// SASLInitialResponse ('p' during SASL): mechanism and initial data.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mech = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 {
        &[][..]
    } else {
        r.bytes(len as usize)?
    };
    Ok((mech, data))
}

/// PasswordMessage ('p' for cleartext/md5): the password or hash, without the NUL.
pub fn password_message(body: &[u8]) -> Result<&[u8], ProtocolError> {
    Reader::new(body, "PasswordMessage").cstr_bytes()
}

/// The SQL text of a Query message (see `Reader::cstr_text` for text that is not UTF-8).
pub fn query_text(body: &[u8]) -> Result<std::borrow::Cow<'_, str>, ProtocolError> {
    Reader::new(body, "Query").cstr_text()
}

/// Is this ErrorResponse's severity FATAL or PANIC (the server closes the connection)?
/// Read in place: most errors are not.
pub fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    let mut severity: Option<&[u8]> = None;
    while let Some((&t, tail)) = rest.split_first() {
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        match t {
            0 => break,
            // The non-localized severity, when the server sends it (9.6 on).
            b'V' => {
                severity = Some(&tail[..end]);
                break;
            }
            b'S' => severity = Some(&tail[..end]),
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    matches!(severity, Some(b"FATAL" | b"PANIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packets() {
        let mut b = PROTOCOL_3_0.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0app\0database\0db\0\0");
        assert_eq!(
            StartupPacket::parse(&b).unwrap(),
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        assert_eq!(
            StartupPacket::parse(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        let mut c = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            StartupPacket::parse(&c).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
        // Truncated parameters, old versions, short cancel requests: errors, not panics.
        let mut t = PROTOCOL_3_0.to_be_bytes().to_vec();
        t.extend_from_slice(b"user\0ap");
        assert!(StartupPacket::parse(&t).is_err());
        assert!(StartupPacket::parse(&(2i32 << 16).to_be_bytes()).is_err());
        assert!(StartupPacket::parse(&CANCEL_REQUEST_CODE.to_be_bytes()).is_err());
        assert!(StartupPacket::parse(b"\0\0").is_err());
    }

    #[test]
    fn error_fields_and_auth() {
        let e = ErrorFields::parse(b"SERROR\0VERROR\0C28P01\0Mbad\0\0").unwrap();
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("ERROR", "28P01", "bad")
        );
        assert!(ErrorFields::parse(b"SERROR").is_err());
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(
            AuthRequest::parse(&sasl).unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into()]
            }
        );
        assert!(AuthRequest::parse(&5i32.to_be_bytes()).is_err());
        assert_eq!(ready_status(b"T").unwrap(), b'T');
        assert!(ready_status(b"").is_err());
    }
}
