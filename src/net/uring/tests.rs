//! The io_uring stream against real sockets, on rings of their own threads.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Run `f` on a current-thread runtime whose thread has a ring, as the engine does.
fn on_ring<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        install().expect("io_uring works on the test machine");
        assert!(on_ring_thread());
        f.await
    })
}

/// A connected pair: ours on the ring, the peer a plain tokio socket.
async fn pair() -> (UringStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (mine, _) = l.accept().await.unwrap();
    (UringStream::new(mine.into_std().unwrap()).unwrap(), peer)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_probe_finds_io_uring_here_and_epoll_is_always_possible() {
    assert!(probe().is_ok(), "{:?}", probe());
    let c = choose(IoEngine::Epoll).unwrap();
    assert!(!c.uring);
    assert!(choose(IoEngine::Auto).unwrap().uring);
    assert!(choose(IoEngine::IoUring).unwrap().uring);
}

#[test]
fn bytes_cross_both_ways_intact() {
    on_ring(async {
        let (mine, mut peer) = pair().await;
        // 3 MiB each way at once: many receives, partial sends, a full outbox.
        let to_peer = pattern(3 << 20, 1);
        let to_me = pattern(3 << 20, 7);
        let (a, b) = (to_peer.clone(), to_me.clone());
        let peer_side = tokio::spawn(async move {
            let (mut r, mut w) = peer.split();
            let mut got = vec![0u8; a.len()];
            let (x, y) = tokio::join!(r.read_exact(&mut got), w.write_all(&b));
            x.unwrap();
            y.unwrap();
            assert!(got == a, "the peer got other bytes than were written");
            peer
        });
        let (mut r, mut w) = tokio::io::split(mine);
        let mut got = vec![0u8; to_me.len()];
        let (x, y) = tokio::join!(r.read_exact(&mut got), async {
            w.write_all(&to_peer).await?;
            w.flush().await
        });
        x.unwrap();
        y.unwrap();
        assert!(got == to_me);
        let _peer = peer_side.await.unwrap();
    });
}

#[test]
fn end_of_stream_reads_zero_and_shutdown_reaches_the_peer() {
    on_ring(async {
        let (mut mine, mut peer) = pair().await;
        peer.write_all(b"last").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut buf = Vec::new();
        mine.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"last");
        mine.write_all(b"bye").await.unwrap();
        mine.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    });
}

#[test]
fn dropping_a_stream_with_a_receive_armed_closes_the_socket() {
    on_ring(async {
        let (mut mine, mut peer) = pair().await;
        // Arm a receive that will never complete on its own.
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_millis(50), mine.read(&mut buf)).await;
        assert!(r.is_err(), "nothing was sent");
        drop(mine);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
            .await
            .expect("the socket is closed once its receive is cancelled")
            .unwrap();
        assert_eq!(n, 0);
    });
}

#[test]
fn dropping_a_stream_whose_peer_stopped_reading_does_not_keep_the_socket() {
    on_ring(async {
        let (mut mine, mut peer) = pair().await;
        // Fill the socket buffers: the last send stays in flight.
        let big = vec![7u8; 8 << 20];
        let r = tokio::time::timeout(Duration::from_millis(300), mine.write_all(&big)).await;
        assert!(r.is_err(), "the peer reads nothing: the writer must wait");
        drop(mine);
        // The peer drains what reached it and then sees the end (or a reset).
        let mut sink = vec![0u8; 1 << 16];
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match peer.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            end.is_ok(),
            "the socket stayed open after its stream was dropped"
        );
    });
}

#[test]
fn a_writer_is_held_back_when_the_peer_does_not_read() {
    on_ring(async {
        let (mut mine, _peer) = pair().await;
        let chunk = vec![1u8; 64 * 1024];
        let mut accepted = 0usize;
        let r = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                accepted += mine.write(&chunk).await.unwrap();
            }
        })
        .await;
        assert!(r.is_err());
        // Kernel buffers (a few MiB on loopback at most) plus the outbox bound.
        assert!(
            accepted < 32 << 20,
            "{accepted} bytes accepted from a writer whose peer reads nothing"
        );
    });
}

#[test]
fn into_std_gives_the_socket_back_only_when_nothing_is_in_flight() {
    on_ring(async {
        let (mut mine, mut peer) = pair().await;
        mine.write_all(b"S").await.unwrap();
        mine.flush().await.unwrap();
        let mut one = [0u8; 1];
        peer.read_exact(&mut one).await.unwrap();
        let std = mine.into_std().expect("flushed, no receive armed");
        let mut back = TcpStream::from_std(std).unwrap();
        back.write_all(b"ok").await.unwrap();
        let mut two = [0u8; 2];
        peer.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ok");

        let (mut armed, _p) = pair().await;
        let mut buf = [0u8; 4];
        let _ = tokio::time::timeout(Duration::from_millis(20), armed.read(&mut buf)).await;
        assert!(armed.into_std().is_err(), "a receive is armed");
    });
}

#[test]
fn many_sockets_on_one_ring_share_its_buffers() {
    on_ring(async {
        // More connections than provided buffers, all answering at once.
        let n = 600;
        let mut mine = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..n {
            let (m, p) = pair().await;
            mine.push(m);
            peers.push(p);
        }
        let readers: Vec<_> = mine
            .into_iter()
            .enumerate()
            .map(|(i, mut m)| {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1000];
                    m.read_exact(&mut buf).await.unwrap();
                    assert!(buf.iter().all(|&b| b == i as u8));
                    m.write_all(&buf[..10]).await.unwrap();
                    m.flush().await.unwrap();
                    m
                })
            })
            .collect();
        // Let every reader arm its receive, then answer all of them in one go.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (i, p) in peers.iter_mut().enumerate() {
            p.write_all(&vec![i as u8; 1000]).await.unwrap();
        }
        let mut kept = Vec::new();
        for r in readers {
            kept.push(r.await.unwrap());
        }
        for (i, p) in peers.iter_mut().enumerate() {
            let mut ten = [0u8; 10];
            p.read_exact(&mut ten).await.unwrap();
            assert_eq!(ten, [i as u8; 10]);
        }
    });
}

#[test]
fn a_stream_moves_between_ring_threads() {
    // A server connection is made on one thread and used by clients on others.
    let (tx, rx) = std::sync::mpsc::channel();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let echo = std::thread::spawn(move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        port_tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        loop {
            use std::io::{Read, Write};
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let addr = port_rx.recv().unwrap();
    on_ring(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut s = UringStream::new(s.into_std().unwrap()).unwrap();
        s.write_all(b"one").await.unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        tx.send(s).unwrap();
    });
    let mut s = rx.recv().unwrap();
    on_ring(async move {
        for round in 0..50u8 {
            s.write_all(&[round; 100]).await.unwrap();
            let mut b = [0u8; 100];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [round; 100]);
        }
    });
    echo.join().unwrap();
}

#[test]
fn a_stream_polled_off_the_ring_threads_fails_cleanly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(!on_ring_thread());
        let (mut mine, _peer) = pair().await;
        let mut b = [0u8; 1];
        let e = mine.read(&mut b).await.unwrap_err();
        assert!(e.to_string().contains("without a ring"), "{e}");
    });
}

/// A kernel that refuses the receive flags (EINVAL, as one with COOP_TASKRUN backported
/// but not RECVSEND_POLL_FIRST would): the ring drops them for good and the reader still
/// gets its bytes. Simulated with a flag bit no kernel accepts.
#[test]
fn a_refused_receive_flag_is_dropped_and_the_receive_armed_again() {
    on_ring(async {
        ring::with_ring(|sq| sq.poll_first = 0x4000).unwrap();
        let (mut mine, mut peer) = pair().await;
        peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), mine.read_exact(&mut got))
            .await
            .expect("the receive was armed again")
            .unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(ring::with_ring(|sq| sq.poll_first), Some(0));
    });
}

/// An idle stream with its receive armed takes it back (a client parking): the socket
/// then leaves the ring with nothing lost, and bytes sent after are read from it. Bytes
/// that came before the disarm keep the stream (they are read as usual).
#[test]
fn an_armed_receive_is_taken_back_before_the_socket_leaves() {
    on_ring(async {
        let (mine, mut peer) = pair().await;
        // Arm a receive as an idle reader does.
        let armed = std::future::poll_fn(|cx| std::task::Poll::Ready(mine.poll_take(cx))).await;
        assert!(armed.is_pending());
        assert!(mine.armed_on().is_some());
        let ready = std::future::poll_fn(|cx| mine.poll_disarm(cx)).await;
        assert!(ready, "nothing came: the receive is taken back");
        assert!(mine.armed_on().is_none());
        let std_sock = mine.into_std().expect("the socket leaves the ring");
        peer.write_all(b"after").await.unwrap();
        let mut back = TcpStream::from_std(std_sock).unwrap();
        let mut got = [0u8; 5];
        back.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");

        // Bytes first: the stream stays and reads them.
        let (mine, mut peer) = pair().await;
        let mut mine = mine;
        let armed = std::future::poll_fn(|cx| std::task::Poll::Ready(mine.poll_take(cx))).await;
        assert!(armed.is_pending());
        peer.write_all(b"Q").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ready = std::future::poll_fn(|cx| mine.poll_disarm(cx)).await;
        assert!(!ready, "bytes came first");
        let mut got = [0u8; 1];
        mine.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"Q");
    });
}

/// Receive buffers circulate only as many as a reap's receives need: one stream's
/// traffic keeps the first 16 (the other 240 are never touched), and 300 receives
/// completing at once, some refused for want of a buffer and armed again, make the ring
/// offer more; every byte arrives intact either way.
#[test]
fn receive_buffers_are_offered_as_receives_need_them() {
    on_ring(async {
        let (mut mine, mut peer) = pair().await;
        for i in 0..300u32 {
            peer.write_all(&i.to_le_bytes()).await.unwrap();
            let mut got = [0u8; 4];
            mine.read_exact(&mut got).await.unwrap();
            assert_eq!(u32::from_le_bytes(got), i);
        }
        assert_eq!(ring::offered_buffers(), Some(16), "one stream at a time");

        let mut peers = Vec::new();
        let mut readers = Vec::new();
        for i in 0..300usize {
            let (mut mine, peer) = pair().await;
            peers.push(peer);
            readers.push(tokio::spawn(async move {
                let mut got = vec![0u8; 6000];
                mine.read_exact(&mut got).await.unwrap();
                assert!(got == pattern(6000, i as u8), "stream {i} got other bytes");
            }));
        }
        // Every receive armed; then all the data, with no reap in between.
        tokio::task::yield_now().await;
        for (i, p) in peers.iter_mut().enumerate() {
            p.write_all(&pattern(6000, i as u8)).await.unwrap();
        }
        for r in readers {
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("every receive completes, those refused for want of a buffer too")
                .unwrap();
        }
        let offered = ring::offered_buffers().unwrap();
        assert!(
            offered > 16 && offered <= 256,
            "a burst makes more buffers circulate: {offered}"
        );
    });
}

/// A ring that has served one request at a time for a while sends at once, from inside
/// the task that writes (a lone client's answer leaves before the rest of its turn); a
/// fresh or busy one leaves the send to the driver's turn, where the turn's sends go in
/// together. The peer is a blocking socket read while the ring's thread is held, so that
/// no driver turn can run in between.
#[test]
fn a_calm_ring_sends_at_once_and_a_fresh_one_at_the_end_of_the_turn() {
    use std::io::{Read, Write};
    use std::pin::Pin;
    use std::task::Poll;
    use tokio::io::AsyncWrite;
    on_ring(async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mine, _) = l.accept().unwrap();
        let mut mine = UringStream::new(mine).unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // Queue a write without giving the runtime a turn.
        async fn write_in_turn(mine: &mut UringStream, b: &[u8]) {
            std::future::poll_fn(|cx| {
                let r = Pin::new(&mut *mine).poll_write(cx, b);
                assert!(matches!(r, Poll::Ready(Ok(n)) if n == b.len()), "{r:?}");
                Poll::Ready(())
            })
            .await
        }
        let mut got = [0u8; 1];

        write_in_turn(&mut mine, b"a").await;
        let e = peer
            .read(&mut got)
            .expect_err("a fresh ring waits for its driver's turn");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        tokio::task::yield_now().await;
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a");

        // One request at a time: every reap finds a single completion.
        for i in 0..12u8 {
            peer.write_all(&[i]).unwrap();
            let mut b = [0u8; 1];
            mine.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i);
        }
        write_in_turn(&mut mine, b"b").await;
        peer.read_exact(&mut got)
            .expect("a calm ring's send went to the kernel from inside the writing task");
        assert_eq!(&got, b"b");
    });
}
