//! tokio relays: (a) multi-thread runtime, one listener, one task per client that drives both
//! the client and the server socket (pgtenant's model today); (b) one current-thread runtime
//! per core, each with its own SO_REUSEPORT listener, same per-client task.
use crate::common::{reuseport_listener, RelayCfg, BUF};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn serve_client(mut c: TcpStream, backend: std::net::SocketAddr) {
    let _ = c.set_nodelay(true);
    let mut s = match TcpStream::connect(backend).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backend connect: {e}");
            return;
        }
    };
    let _ = s.set_nodelay(true);
    let mut cb = vec![0u8; BUF];
    let mut sb = vec![0u8; BUF];
    // One task, both sockets: read whatever is there on either side, forward it in one write.
    loop {
        tokio::select! {
            biased;
            r = s.read(&mut sb) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if c.write_all(&sb[..n]).await.is_err() { return },
            },
            r = c.read(&mut cb) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if s.write_all(&cb[..n]).await.is_err() { return },
            },
        }
    }
}

async fn accept_loop(l: TcpListener, backend: std::net::SocketAddr) {
    loop {
        let (c, _) = l.accept().await.unwrap();
        tokio::spawn(serve_client(c, backend));
    }
}

pub fn run_mt(cfg: RelayCfg) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = TcpListener::from_std(reuseport_listener(cfg.listen)).unwrap();
        accept_loop(l, cfg.backend).await
    });
}

pub fn run_ct(cfg: RelayCfg) {
    let hs: Vec<_> = (0..cfg.threads)
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let l = TcpListener::from_std(reuseport_listener(cfg.listen)).unwrap();
                    accept_loop(l, cfg.backend).await
                });
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
