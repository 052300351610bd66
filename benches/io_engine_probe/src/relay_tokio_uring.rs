//! tokio-uring relay: thread-per-core, one tokio-uring runtime per thread (a current-thread
//! tokio runtime whose driver also polls an io_uring fd), two tasks per client.
use crate::common::{reuseport_listener, RelayCfg, BUF};
use std::rc::Rc;
use tokio_uring::net::{TcpListener, TcpStream};

async fn pipe(r: Rc<TcpStream>, w: Rc<TcpStream>) {
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
    let s = match TcpStream::connect(backend).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backend connect: {e}");
            return;
        }
    };
    let _ = s.set_nodelay(true);
    let (c, s) = (Rc::new(c), Rc::new(s));
    tokio_uring::spawn(pipe(s.clone(), c.clone()));
    pipe(c, s).await;
}

pub fn run(cfg: RelayCfg) {
    let hs: Vec<_> = (0..cfg.threads)
        .map(|_| {
            std::thread::spawn(move || {
                tokio_uring::builder().entries(1024).start(async move {
                    let l = TcpListener::from_std(reuseport_listener(cfg.listen));
                    loop {
                        let (c, _) = l.accept().await.unwrap();
                        tokio_uring::spawn(serve_client(c, cfg.backend));
                    }
                });
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
