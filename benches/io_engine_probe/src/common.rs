use std::collections::HashMap;
use std::net::SocketAddr;

pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse(v: Vec<String>) -> Self {
        let mut m = HashMap::new();
        let mut it = v.into_iter();
        while let Some(k) = it.next() {
            let k = k.trim_start_matches("--").to_string();
            let val = it.next().unwrap_or_default();
            m.insert(k, val);
        }
        Args(m)
    }
    pub fn get(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_string())
    }
    pub fn get_num<T: std::str::FromStr>(&self, k: &str, d: T) -> T {
        self.0.get(k).and_then(|s| s.parse().ok()).unwrap_or(d)
    }
}

#[derive(Clone, Copy)]
pub struct RelayCfg {
    pub listen: SocketAddr,
    pub backend: SocketAddr,
    pub threads: usize,
}

/// Buffer size per read. pgtenant reads "whatever is there" into a buffer of about this size.
pub const BUF: usize = 16 * 1024;

/// A non-blocking std listener with SO_REUSEPORT so thread-per-core engines can each own one.
pub fn reuseport_listener(addr: SocketAddr) -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(1024).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}
