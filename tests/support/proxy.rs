//! A TCP proxy on a free loopback port in front of one server, whose connections a test
//! can reset: a network failure between pgtenant and a server, with both processes alive.
//!
//! Blocking threads (two per connection, copying each way). [`ResetProxy::reset_all`]
//! ends every connection with a TCP RST in both directions (SO_LINGER 0, then close), as
//! a middlebox dropping the flow or a peer host rebooting does; new connections are
//! accepted as before.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One proxied connection: both sockets and the threads copying between them.
struct Pair {
    sockets: [TcpStream; 2],
    copiers: Vec<JoinHandle<()>>,
    /// Set before a reset: the copiers must not pass the end on as a FIN.
    resetting: Arc<AtomicBool>,
}

pub struct ResetProxy {
    port: u16,
    upstream: u16,
    pairs: Arc<Mutex<Vec<Pair>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ResetProxy {
    /// Proxy 127.0.0.1:<new port> to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> ResetProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let pairs: Arc<Mutex<Vec<Pair>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (pairs, stop) = (pairs.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let down = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("proxy accept: {e}"),
                    };
                    down.set_nonblocking(false).unwrap();
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        // The server is down: so is the proxied connection.
                        continue;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let resetting = Arc::new(AtomicBool::new(false));
                    let copiers = vec![
                        copy(&down, &up, resetting.clone()),
                        copy(&up, &down, resetting.clone()),
                    ];
                    pairs.lock().unwrap().push(Pair {
                        sockets: [down, up],
                        copiers,
                        resetting,
                    });
                }
            })
        };
        ResetProxy {
            port,
            upstream,
            pairs,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<upstream>" = "127.0.0.1:<proxy>"`, for pgtenant's `node_addresses`.
    pub fn node_address_rewrite(&self) -> String {
        format!(
            "\"127.0.0.1:{}\" = \"127.0.0.1:{}\"",
            self.upstream, self.port
        )
    }

    /// Reset every connection, both ways; returns how many were made since the last reset
    /// (some may have been closed normally already).
    pub fn reset_all(&self) -> usize {
        let pairs: Vec<Pair> = std::mem::take(&mut *self.pairs.lock().unwrap());
        let n = pairs.len();
        for mut p in pairs {
            p.resetting.store(true, Ordering::SeqCst);
            for s in &p.sockets {
                // The last close of a socket with a zero linger time sends RST, not FIN.
                socket2::SockRef::from(s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                // Wake the copiers blocked in read (nothing is sent for this).
                let _ = s.shutdown(Shutdown::Read);
            }
            for c in p.copiers.drain(..) {
                let _ = c.join();
            }
            // Dropped here: the last descriptors of both sockets close, with RST.
        }
        n
    }
}

impl Drop for ResetProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.reset_all();
    }
}

/// Copy `from` → `to` until `from` ends or fails. A normal end is passed on (FIN), unless
/// the pair is being reset: a reset must come as a reset.
fn copy(from: &TcpStream, to: &TcpStream, resetting: Arc<AtomicBool>) -> JoinHandle<()> {
    let mut from = from.try_clone().unwrap();
    let mut to = to.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => {
                    if !resetting.load(Ordering::SeqCst) {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}
