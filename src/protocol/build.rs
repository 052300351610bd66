//! Builders for the messages pgtenant writes itself.
use bytes::{BufMut, BytesMut};

use crate::net::Frame;

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// An ErrorResponse (or, with `tag = b'N'`, a NoticeResponse).
pub fn error_with_tag(tag: u8, severity: &str, code: &str, message: &str) -> Frame {
    let mut b = BytesMut::with_capacity(32 + message.len());
    b.put_u8(b'S');
    cstr(&mut b, severity);
    b.put_u8(b'V');
    cstr(&mut b, severity);
    b.put_u8(b'C');
    cstr(&mut b, code);
    b.put_u8(b'M');
    cstr(&mut b, message);
    b.put_u8(0);
    Frame::new(tag, &b)
}

/// ErrorResponse with severity ERROR.
pub fn error(code: &str, message: &str) -> Frame {
    error_with_tag(b'E', "ERROR", code, message)
}

/// ErrorResponse with severity ERROR and a DETAIL field.
pub fn error_with_detail(code: &str, message: &str, detail: &str) -> Frame {
    let e = error(code, message);
    let body = e.body();
    let mut b = BytesMut::with_capacity(body.len() + detail.len() + 2);
    // Before the final terminator.
    b.put_slice(&body[..body.len() - 1]);
    b.put_u8(b'D');
    cstr(&mut b, detail);
    b.put_u8(0);
    Frame::new(b'E', &b)
}

/// ErrorResponse with severity FATAL (the connection closes after it).
pub fn fatal(code: &str, message: &str) -> Frame {
    error_with_tag(b'E', "FATAL", code, message)
}

pub fn notice(message: &str) -> Frame {
    error_with_tag(b'N', "NOTICE", "00000", message)
}

pub fn auth_ok() -> Frame {
    Frame::new(b'R', &0i32.to_be_bytes())
}

pub fn auth_cleartext() -> Frame {
    Frame::new(b'R', &3i32.to_be_bytes())
}

pub fn auth_md5(salt: [u8; 4]) -> Frame {
    let mut b = BytesMut::with_capacity(8);
    b.put_i32(5);
    b.put_slice(&salt);
    Frame::new(b'R', &b)
}

pub fn auth_sasl(mechanisms: &[&str]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i32(10);
    for m in mechanisms {
        cstr(&mut b, m);
    }
    b.put_u8(0);
    Frame::new(b'R', &b)
}

pub fn auth_sasl_continue(data: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(4 + data.len());
    b.put_i32(11);
    b.put_slice(data);
    Frame::new(b'R', &b)
}

pub fn auth_sasl_final(data: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(4 + data.len());
    b.put_i32(12);
    b.put_slice(data);
    Frame::new(b'R', &b)
}

pub fn parameter_status(name: &str, value: &str) -> Frame {
    let mut b = BytesMut::with_capacity(name.len() + value.len() + 2);
    cstr(&mut b, name);
    cstr(&mut b, value);
    Frame::new(b'S', &b)
}

pub fn backend_key_data(pid: i32, secret: i32) -> Frame {
    let mut b = BytesMut::with_capacity(8);
    b.put_i32(pid);
    b.put_i32(secret);
    Frame::new(b'K', &b)
}

/// CommandComplete with a command tag ("SELECT 1", "BEGIN", …).
pub fn command_complete(tag: &str) -> Frame {
    let mut b = BytesMut::with_capacity(tag.len() + 1);
    cstr(&mut b, tag);
    Frame::new(b'C', &b)
}

pub fn ready_for_query(status: u8) -> Frame {
    Frame::new(b'Z', &[status])
}

/// NegotiateProtocolVersion: the newest minor version we speak, and the `_pq_.` options we
/// did not recognise.
pub fn negotiate_protocol_version(minor: i32, unrecognized: &[String]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i32(minor);
    b.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        cstr(&mut b, o);
    }
    Frame::new(b'v', &b)
}

/// A simple Query message.
pub fn query(sql: &str) -> Frame {
    let mut b = BytesMut::with_capacity(sql.len() + 1);
    cstr(&mut b, sql);
    Frame::new(b'Q', &b)
}

/// A Parse of `sql` as statement `name`, with no parameter types.
pub fn parse(name: &str, sql: &str) -> Frame {
    let mut b = BytesMut::with_capacity(name.len() + sql.len() + 4);
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.put_i16(0);
    Frame::new(b'P', &b)
}

/// Parse, Bind, Execute and Sync of the unnamed statement with text parameters (their
/// types left to the server): a query of pgtenant's own whose values never become SQL.
pub fn extended_query(sql: &str, params: &[&str]) -> [Frame; 4] {
    let mut bind = BytesMut::new();
    cstr(&mut bind, "");
    cstr(&mut bind, "");
    bind.put_i16(0); // every parameter in text format
    bind.put_i16(params.len() as i16);
    for p in params {
        bind.put_i32(p.len() as i32);
        bind.put_slice(p.as_bytes());
    }
    bind.put_i16(0); // every result column in text format
    let mut execute = BytesMut::with_capacity(5);
    cstr(&mut execute, "");
    execute.put_i32(0);
    [
        parse("", sql),
        Frame::new(b'B', &bind),
        Frame::new(b'E', &execute),
        Frame::new(b'S', &[]),
    ]
}

pub fn terminate() -> Frame {
    Frame::new(b'X', &[])
}

/// The frontend's password message ('p') carrying a cleartext password or md5 hash.
pub fn password_message(password: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(password.len() + 1);
    b.put_slice(password);
    b.put_u8(0);
    Frame::new(b'p', &b)
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Frame {
    let mut b = BytesMut::new();
    cstr(&mut b, mechanism);
    b.put_i32(data.len() as i32);
    b.put_slice(data);
    Frame::new(b'p', &b)
}

pub fn sasl_response(data: &[u8]) -> Frame {
    Frame::new(b'p', data)
}

/// An untagged startup packet (protocol 3.0) with the given parameters.
pub fn startup_message(params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(super::decode::PROTOCOL_3_0);
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.put_u8(0);
    let mut b = BytesMut::with_capacity(body.len() + 4);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(&body);
    b
}

/// An untagged SSLRequest or CancelRequest packet.
pub fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8i32.to_be_bytes());
    b[4..].copy_from_slice(&super::decode::SSL_REQUEST_CODE.to_be_bytes());
    b
}

pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&super::decode::CANCEL_REQUEST_CODE.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..].copy_from_slice(&secret.to_be_bytes());
    b
}
