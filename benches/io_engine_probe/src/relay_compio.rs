//! compio relay: thread-per-core, one runtime per thread; the fusion driver picks io_uring or
//! `polling` (epoll) at start.  Two tasks per client (one per direction), sharing the streams
//! through Rc (compio implements AsyncRead/AsyncWrite for &TcpStream).
use crate::common::{reuseport_listener, RelayCfg, BUF};
use compio::driver::{DriverType, ProactorBuilder};
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use std::rc::Rc;

async fn pipe(r: Rc<TcpStream>, w: Rc<TcpStream>) {
    let mut buf = Vec::with_capacity(BUF);
    loop {
        buf.clear();
        let compio::BufResult(res, b) = (&*r).read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let compio::BufResult(res, b) = (&*w).write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
    }
}

async fn serve_client(c: TcpStream, backend: std::net::SocketAddr) {
    let _ = c.set_nodelay(true);
    let s = match TcpStream::connect(backend).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backend connect: {e}");
            return;
        }
    };
    let _ = s.set_nodelay(true);
    let (c, s) = (Rc::new(c), Rc::new(s));
    compio::runtime::spawn(pipe(s.clone(), c.clone())).detach();
    pipe(c, s).await;
}

pub fn run(cfg: RelayCfg, force_poll: bool) {
    let hs: Vec<_> = (0..cfg.threads)
        .map(|i| {
            std::thread::spawn(move || {
                let mut pb = ProactorBuilder::new();
                pb.capacity(1024);
                if force_poll {
                    pb.driver_type(DriverType::Poll);
                }
                let rt = compio::runtime::RuntimeBuilder::new().with_proactor(pb).build().unwrap();
                if i == 0 {
                    eprintln!("compio driver_type = {:?}", rt.driver_type());
                }
                rt.block_on(async move {
                    let l = TcpListener::from_std(reuseport_listener(cfg.listen)).unwrap();
                    loop {
                        let (c, _) = l.accept().await.unwrap();
                        compio::runtime::spawn(serve_client(c, cfg.backend)).detach();
                    }
                });
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
