//! Backend "server": answers each `req`-byte request with a `resp`-byte response.
//! Plain tokio, single thread: it stands in for PostgreSQL and is not what we measure.
use crate::common::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn run(args: &Args) {
    let listen: std::net::SocketAddr = args.get("listen", "127.0.0.1:15432").parse().unwrap();
    let req: usize = args.get_num("req", 100);
    let resp: usize = args.get_num("resp", 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen).await.unwrap();
        eprintln!("backend listening on {listen}");
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let out = vec![b'R'; resp];
                let mut pending = 0usize;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending += n;
                    let mut k = pending / req;
                    pending %= req;
                    // one write for however many complete requests arrived
                    while k > 0 {
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        k -= 1;
                    }
                }
            });
        }
    });
}
