//! extended.rs: Parse, Bind, Describe and Close as pgtenant decodes and rewrites them.
//! Properties: decode → encode (under the same name) gives back the exact body (Parse,
//! Bind) or its prefix (Describe/Close); renaming keeps everything else; a Parse built
//! from parts decodes to those parts; `Bind::param` agrees with an independent reading of
//! the parameter block, before and after a rename.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::extended::{Bind, BindParam, Parse, Target};

/// The first byte picks the case; the rest is a message body as the client sent it
/// (seeds are real messages: `fuzz/seeds/extended`), or, for the two `Build` cases, the
/// raw material `arbitrary` shapes into the parts of a well-formed message.
#[derive(Debug)]
enum Input<'a> {
    Parse { body: &'a [u8], rename: &'a str },
    Bind { body: &'a [u8], rename: &'a str },
    Target { body: &'a [u8], tag_close: bool },
    Build(Built<'a>),
}

#[derive(Arbitrary, Debug)]
enum Built<'a> {
    Parse {
        name: &'a str,
        query: &'a [u8],
        oids: Vec<u32>,
    },
    Bind {
        portal: &'a str,
        stmt: &'a str,
        formats: Vec<i16>,
        params: Vec<Option<&'a [u8]>>,
        results: Vec<i16>,
    },
}

const RENAMES: [&str; 4] = [
    "PGT_1",
    "",
    "a_much_longer_statement_name_than_before",
    "s1",
];

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (&sel, body) = data.split_first()?;
    let rename = RENAMES[usize::from(sel >> 4) % RENAMES.len()];
    Some(match sel % 4 {
        0 => Input::Parse { body, rename },
        1 => Input::Bind { body, rename },
        2 => Input::Target {
            body,
            tag_close: sel & 0x10 != 0,
        },
        _ => Input::Build(Built::arbitrary(&mut arbitrary::Unstructured::new(body)).ok()?),
    })
}

fn clean(s: &str) -> bool {
    !s.contains('\0')
}

/// The parameter block read the obvious way: formats, then every value.
/// Formats and values (None = NULL) of a Bind's parameter block.
type Params<'a> = (Vec<i16>, Vec<Option<&'a [u8]>>);

fn model_params(rest: &[u8]) -> Option<Params<'_>> {
    let i16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|x| i16::from_be_bytes([x[0], x[1]]));
    let mut at = 0;
    let nf = i16_at(rest, at)?;
    at += 2;
    if nf < 0 {
        return None;
    }
    let mut formats = Vec::new();
    for _ in 0..nf {
        formats.push(i16_at(rest, at)?);
        at += 2;
    }
    let np = i16_at(rest, at)?;
    at += 2;
    let mut values = Vec::new();
    for _ in 0..np.max(0) {
        let l = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if l < 0 {
            values.push(None);
        } else {
            values.push(Some(rest.get(at..at + l as usize)?));
            at += l as usize;
        }
    }
    Some((formats, values))
}

fn check_params(b: &Bind) {
    let model = model_params(b.rest);
    for idx in 0..70usize {
        let got = b.param(idx);
        match &model {
            Some((formats, values)) => {
                let want: Result<Option<BindParam>, ()> = match values.get(idx) {
                    None => Ok(None),
                    Some(v) => match formats.len() {
                        0 => Ok(Some((0, *v))),
                        1 => Ok(Some((formats[0], *v))),
                        n if idx < n => Ok(Some((formats[idx], *v))),
                        _ => Err(()),
                    },
                };
                assert_eq!(got.map_err(|_| ()), want, "param {idx}");
            }
            // The block is malformed somewhere: a parameter before the flaw may still read.
            None => {
                if let Ok(Some((_, Some(v)))) = got {
                    assert!(v.len() <= b.rest.len());
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| match input(data) {
    None => {}
    Some(Input::Parse { body, rename }) => {
        let Ok(p) = Parse::decode(body) else { return };
        assert_eq!(p.encode_as(p.name).body(), body);
        if clean(rename) {
            let f = p.encode_as(rename);
            let q = Parse::decode(f.body()).expect("renamed Parse decodes");
            assert_eq!(q.name, rename);
            assert_eq!(
                (q.query_raw, q.param_types, &q.query),
                (p.query_raw, p.param_types, &p.query)
            );
        }
    }
    Some(Input::Bind { body, rename }) => {
        let Ok(b) = Bind::decode(body) else { return };
        assert_eq!(b.encode_as(b.statement).body(), body);
        check_params(&b);
        if clean(rename) {
            let f = b.encode_as(rename);
            let c = Bind::decode(f.body()).expect("renamed Bind decodes");
            assert_eq!((c.portal, c.statement, c.rest), (b.portal, rename, b.rest));
            for i in 0..8 {
                assert_eq!(c.param(i), b.param(i));
            }
        }
    }
    Some(Input::Target { body, tag_close }) => {
        let Ok(t) = Target::decode(body) else { return };
        assert!(t.kind == b'S' || t.kind == b'P');
        let tag = if tag_close { b'C' } else { b'D' };
        let f = Target::encode(tag, t.kind, t.name);
        assert_eq!(f.tag(), tag);
        assert_eq!(&body[..f.body().len()], f.body());
    }
    Some(Input::Build(Built::Parse { name, query, oids })) => {
        if !clean(name) || query.contains(&0) || oids.len() > i16::MAX as usize {
            return;
        }
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(query);
        body.push(0);
        body.extend_from_slice(&(oids.len() as i16).to_be_bytes());
        for o in &oids {
            body.extend_from_slice(&o.to_be_bytes());
        }
        let p = Parse::decode(&body).expect("a well-formed Parse decodes");
        assert_eq!((p.name, p.query_raw), (name, query));
        assert_eq!(p.param_types.len(), 2 + 4 * oids.len());
        if let Ok(s) = std::str::from_utf8(query) {
            assert_eq!(&*p.query, s);
        }
    }
    Some(Input::Build(Built::Bind {
        portal,
        stmt,
        formats,
        params,
        results,
    })) => {
        if !clean(portal) || !clean(stmt) || formats.len() > 100 || params.len() > 100 {
            return;
        }
        let mut body = Vec::new();
        for s in [portal, stmt] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in &formats {
            body.extend_from_slice(&f.to_be_bytes());
        }
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in &params {
            match p {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        body.extend_from_slice(&(results.len() as i16).to_be_bytes());
        for f in &results {
            body.extend_from_slice(&f.to_be_bytes());
        }
        let b = Bind::decode(&body).expect("a well-formed Bind decodes");
        assert_eq!((b.portal, b.statement), (portal, stmt));
        check_params(&b);
        for (i, p) in params.iter().enumerate() {
            let f = match formats.len() {
                0 => 0,
                1 => formats[0],
                n if i < n => formats[i],
                _ => {
                    assert!(b.param(i).is_err());
                    continue;
                }
            };
            assert_eq!(b.param(i), Ok(Some((f, *p))));
        }
        assert_eq!(b.param(params.len()), Ok(None));
    }
});
