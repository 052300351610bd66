//! net/connection.rs framing: a byte stream cut at arbitrary points, read by a real
//! `Connection` over a unix socket pair.
//! Properties, against a straightforward model of `tag + i32 length + body` framing:
//! the frames come out in order with exactly the bytes of the stream; a length below 4
//! or a frame over `max_message` is an error at the same frame; `buffered_tags` lists
//! the complete frames waiting; nothing is lost or duplicated at any cut; and once every
//! frame is dropped, the budget of large messages is back to zero.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgtenant::net::{budget, Connection, Frame, FrameError, Stream};
use tokio::io::AsyncWriteExt;

/// `[max: 3 bytes][flags: 1 byte][stream…]`: max_message scaled into 5 ..= 2.5 MiB (over
/// budget::LARGE_MESSAGE); flags bit 0 keeps the read buffer, the rest seeds the lengths
/// of the writer's pieces (seeds are real message streams: `fuzz/seeds/frame`).
#[derive(Debug)]
struct Input<'a> {
    max: u32,
    keep_read_buffer: bool,
    stream: &'a [u8],
    cuts: Vec<u16>,
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (h, stream) = data.split_at_checked(4)?;
    let mut seed = u64::from(h[3] >> 1) + 1;
    let cuts = (0..64)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly small pieces (cuts inside headers), sometimes whole reads.
            match (seed >> 60) as u16 {
                0..=9 => 1 + (seed >> 33) as u16 % 8,
                10..=13 => 1 + (seed >> 33) as u16 % 300,
                _ => u16::MAX,
            }
        })
        .collect();
    Some(Input {
        max: u32::from_be_bytes([0, h[0], h[1], h[2]]),
        keep_read_buffer: h[3] & 1 != 0,
        stream,
        cuts,
    })
}

#[derive(Debug, PartialEq)]
enum End {
    /// The stream ends between frames or inside one.
    Clean,
    BadLength,
    TooLarge,
}

fn model(stream: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let Some(h) = stream.get(i..i + 5) else {
            return (out, End::Clean);
        };
        let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if len < 4 {
            return (out, End::BadLength);
        }
        let total = len as usize + 1;
        if total > max {
            return (out, End::TooLarge);
        }
        let Some(f) = stream.get(i..i + total) else {
            return (out, End::Clean);
        };
        out.push(f);
        i += total;
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else {
        return;
    };
    let max = 5 + (input.max as usize % (5 * budget::LARGE_MESSAGE / 2));
    let (want, want_end) = model(input.stream, max);
    if input.stream.len() > 65536 {
        return;
    }
    let stream = input.stream;
    let (got, end) = runtime().block_on(async {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = Connection::new(Stream::Unix(Box::new(a)), max);
        if input.keep_read_buffer {
            conn.keep_read_buffer();
        }
        let writer = async {
            let mut at = 0;
            for c in input.cuts.iter().chain(std::iter::repeat(&u16::MAX)) {
                if at >= stream.len() {
                    break;
                }
                let n = (*c as usize).max(1).min(stream.len() - at);
                b.write_all(&stream[at..at + n]).await.unwrap();
                at += n;
                tokio::task::yield_now().await;
            }
            b.shutdown().await.unwrap();
            b
        };
        let reader = async {
            let mut frames: Vec<Frame> = Vec::new();
            let mut delivered = 0usize;
            loop {
                let n = conn.fill().await.unwrap();
                delivered += n;
                let consumed: usize = frames.iter().map(Frame::len).sum();
                assert_eq!(
                    conn.buffered_input() + consumed,
                    delivered,
                    "bytes lost or duplicated"
                );
                let tags: Vec<u8> = conn.buffered_tags().collect();
                let mut taken = Vec::new();
                let end = loop {
                    match conn.try_frame() {
                        Ok(Some(f)) => {
                            taken.push(f.tag());
                            frames.push(f);
                        }
                        Ok(None) => break None,
                        Err(FrameError::BadLength(_)) => break Some(End::BadLength),
                        Err(FrameError::TooLarge { .. }) => break Some(End::TooLarge),
                        Err(e) => panic!("unexpected {e}"),
                    }
                };
                // Every frame taken was listed; a listed one not taken is the error's.
                assert!(tags.starts_with(&taken), "tags {tags:?}, frames {taken:?}");
                if end.is_none() {
                    assert_eq!(tags, taken);
                }
                if let Some(e) = end {
                    return (frames, e);
                }
                if n == 0 {
                    return (frames, End::Clean);
                }
            }
        };
        let (_b, r) = tokio::join!(writer, reader);
        drop(conn);
        r
    });
    assert_eq!(end, want_end, "how the stream ends");
    assert_eq!(got.len(), want.len(), "frame count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g.raw()[..], *w);
        assert_eq!(g.body(), &w[5..]);
    }
    drop(got);
    assert_eq!(budget::used(), 0, "large-message budget not given back");
});
