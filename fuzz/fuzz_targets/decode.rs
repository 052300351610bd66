//! decode.rs: the startup packet and the backend/frontend messages pgtenant reads.
//! Properties: every decoder either fails or returns a value that, encoded again with
//! pgtenant's own builders (`protocol::build`), gives back the bytes it was read from
//! (a prefix of the body where the decoder ignores trailing bytes) and decodes to the
//! same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::decode::{self, AuthRequest, ErrorFields, StartupPacket};
use pgtenant::protocol::{build, PROTOCOL_3_0};

fn startup(body: &[u8]) {
    let Ok(p) = StartupPacket::parse(body) else {
        return;
    };
    let enc: Vec<u8> = match &p {
        StartupPacket::Startup {
            major,
            minor,
            params,
        } => {
            assert_eq!(*major, 3);
            let mut b = ((3i32 << 16) | i32::from(*minor)).to_be_bytes().to_vec();
            for (k, v) in params {
                assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
                b.extend_from_slice(k.as_bytes());
                b.push(0);
                b.extend_from_slice(v.as_bytes());
                b.push(0);
            }
            b.push(0);
            if *minor == 0 {
                let pairs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let built = build::startup_message(&pairs);
                assert_eq!(&built[4..], &b[..], "build::startup_message");
                assert_eq!(
                    i32::from_be_bytes([built[0], built[1], built[2], built[3]]) as usize,
                    built.len()
                );
                assert_eq!(&b[..4], &PROTOCOL_3_0.to_be_bytes());
            }
            b
        }
        StartupPacket::SslRequest => build::ssl_request()[4..].to_vec(),
        StartupPacket::GssEncRequest => decode::GSSENC_REQUEST_CODE.to_be_bytes().to_vec(),
        StartupPacket::Cancel { pid, secret } => build::cancel_request(*pid, *secret)[4..].to_vec(),
    };
    assert_eq!(&body[..enc.len()], &enc[..], "re-encoded {p:?}");
    assert_eq!(StartupPacket::parse(&enc).as_ref(), Ok(&p));
}

fn error_fields(body: &[u8]) {
    let Ok(e) = ErrorFields::parse(body) else {
        return;
    };
    for f in [&e.severity, &e.code, &e.message] {
        assert!(!f.contains('\0'));
    }
    // The fields pgtenant builds its own errors from read back as they were.
    let code: String = e.code.chars().take(5).collect();
    let f = build::error(&code, &e.message);
    let back = ErrorFields::parse(f.body()).unwrap();
    assert_eq!(
        (back.code.as_str(), back.message.as_str()),
        (code.as_str(), e.message.as_str())
    );
}

fn auth(body: &[u8]) {
    let Ok(a) = AuthRequest::parse(body) else {
        return;
    };
    let f = match &a {
        AuthRequest::Ok => build::auth_ok(),
        AuthRequest::Cleartext => build::auth_cleartext(),
        AuthRequest::Md5 { salt } => build::auth_md5(*salt),
        AuthRequest::Sasl { mechanisms } => {
            let m: Vec<&str> = mechanisms.iter().map(String::as_str).collect();
            build::auth_sasl(&m)
        }
        AuthRequest::SaslContinue(d) => build::auth_sasl_continue(d),
        AuthRequest::SaslFinal(d) => build::auth_sasl_final(d),
        AuthRequest::Other(n) => {
            assert!(![0, 3, 5, 10, 11, 12].contains(n));
            return;
        }
    };
    let enc = f.body();
    assert_eq!(&body[..enc.len()], enc, "re-encoded {a:?}");
    if matches!(a, AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_)) {
        assert_eq!(enc.len(), body.len());
    }
    assert_eq!(AuthRequest::parse(enc).as_ref(), Ok(&a));
}

fn small(sel: u8, body: &[u8]) {
    match sel {
        0 => {
            if let Ok(s) = decode::ready_status(body) {
                assert_eq!(body, [s]);
                assert_eq!(build::ready_for_query(s).body(), body);
            }
        }
        1 => {
            if let Ok((k, v)) = decode::parameter_status(body) {
                let f = build::parameter_status(&k, &v);
                let enc = f.body();
                // The value is read lossily (a server's bytes need not be UTF-8).
                let rest = &body[k.len() + 1..];
                if std::str::from_utf8(&rest[..memchr(rest)]).is_ok() {
                    assert_eq!(&body[..enc.len()], enc);
                }
                assert_eq!(decode::parameter_status(enc), Ok((k, v)));
            }
        }
        2 => {
            if let Ok((pid, secret)) = decode::backend_key_data(body) {
                assert_eq!(build::backend_key_data(pid, secret).body(), &body[..8]);
            }
        }
        3 => {
            if let Ok((mech, data)) = decode::sasl_initial_response(body) {
                let f = build::sasl_initial_response(mech, data);
                let enc = f.body();
                let len_at = mech.len() + 1;
                let declared = i32::from_be_bytes(body[len_at..len_at + 4].try_into().unwrap());
                if declared >= 0 {
                    assert_eq!(&body[..enc.len()], enc);
                } else {
                    assert!(data.is_empty());
                }
                assert_eq!(decode::sasl_initial_response(enc), Ok((mech, data)));
            }
        }
        4 => {
            if let Ok(p) = decode::password_message(body) {
                assert!(!p.contains(&0));
                assert_eq!(body[p.len()], 0);
                assert_eq!(&body[..p.len()], p);
                let f = build::password_message(p);
                assert_eq!(decode::password_message(f.body()), Ok(p));
            }
        }
        _ => {
            if let Ok(q) = decode::query_text(body) {
                let end = memchr(body);
                assert!(!q.contains('\0'));
                if let Ok(s) = std::str::from_utf8(&body[..end]) {
                    assert_eq!(&*q, s);
                    assert_eq!(decode::query_text(build::query(s).body()).unwrap(), s);
                } else {
                    assert!(q.contains('\u{fffd}'));
                }
            }
        }
    }
}

fn memchr(b: &[u8]) -> usize {
    b.iter().position(|&c| c == 0).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 9 {
        0 => startup(body),
        1 => error_fields(body),
        2 => auth(body),
        s => small(s - 3, body),
    }
});
