//! monoio relay: thread-per-core, one runtime per thread (io_uring driver, or the legacy
//! epoll driver), SO_REUSEPORT listener per thread, two tasks per client (one per direction)
//! because owned-buffer reads cannot be raced in a select! without cancellation.
use crate::common::{reuseport_listener, RelayCfg, BUF};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

async fn pipe<R: AsyncReadRent, W: monoio::io::AsyncWriteRent>(mut r: R, mut w: W) {
    let mut buf = Vec::with_capacity(BUF);
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
    }
}

async fn serve_client(c: TcpStream, backend: std::net::SocketAddr) {
    let _ = c.set_nodelay(true);
    let s = match TcpStream::connect_addr(backend).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backend connect: {e}");
            return;
        }
    };
    let _ = s.set_nodelay(true);
    let (cr, cw) = c.into_split();
    let (sr, sw) = s.into_split();
    monoio::spawn(pipe(sr, cw));
    pipe(cr, sw).await;
}

async fn accept_loop(cfg: RelayCfg) {
    let l = TcpListener::from_std(reuseport_listener(cfg.listen)).unwrap();
    loop {
        let (c, _) = l.accept().await.unwrap();
        monoio::spawn(serve_client(c, cfg.backend));
    }
}

pub fn run(cfg: RelayCfg, legacy: bool) {
    eprintln!("monoio::utils::detect_uring() = {}", monoio::utils::detect_uring());
    let hs: Vec<_> = (0..cfg.threads)
        .map(|_| {
            std::thread::spawn(move || {
                if legacy {
                    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
                    rt.block_on(accept_loop(cfg));
                } else {
                    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .with_entries(1024)
                        .build()
                        .unwrap();
                    rt.block_on(accept_loop(cfg));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
