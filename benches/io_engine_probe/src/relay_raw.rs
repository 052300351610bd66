//! Raw `io-uring` relay: one ring per thread (thread-per-core, SO_REUSEPORT listener each),
//! multishot accept, multishot recv on every socket with a provided-buffer ring, sends
//! batched into one io_uring_enter per loop turn.  No tasks, no wakers: a plain state machine.
//!
//! Wait policy ("batched"): when a turn submits k sends and no data sits queued behind an
//! in-flight send, wait for k+1 completions (the k sends usually complete inline during the
//! submit) so that a send completion alone does not cost another io_uring_enter.  A 10 ms
//! timeout is the safety net.  "naive" waits for 1 completion every turn.
use crate::common::{reuseport_listener, RelayCfg};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

const BGID: u16 = 7;
const NBUFS: u16 = 2048; // power of two
const BUF_SZ: usize = 4096;

const K_ACCEPT: u64 = 1;
const K_RECV_C: u64 = 2;
const K_RECV_S: u64 = 3;
const K_SEND_C: u64 = 4; // send towards the client
const K_SEND_S: u64 = 5; // send towards the server

struct BufRing {
    ring: *mut types::BufRingEntry,
    tail: u16,
    mem: Vec<u8>,
}

impl BufRing {
    fn new(ring_u: &IoUring) -> std::io::Result<Self> {
        let bytes = NBUFS as usize * std::mem::size_of::<types::BufRingEntry>();
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        assert!(ring != libc::MAP_FAILED);
        let mut br = BufRing { ring: ring as *mut types::BufRingEntry, tail: 0, mem: vec![0u8; NBUFS as usize * BUF_SZ] };
        unsafe { ring_u.submitter().register_buf_ring_with_flags(ring as u64, NBUFS, BGID, 0)? };
        for bid in 0..NBUFS {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }
    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (NBUFS - 1)) as usize;
        let e = unsafe { &mut *self.ring.add(idx) };
        e.set_addr(self.mem.as_ptr() as u64 + bid as u64 * BUF_SZ as u64);
        e.set_len(BUF_SZ as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }
    fn publish(&self) {
        unsafe {
            let t = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }
    fn data(&self, bid: u16, len: usize) -> &[u8] {
        &self.mem[bid as usize * BUF_SZ..bid as usize * BUF_SZ + len]
    }
}

#[derive(Default)]
struct Dir {
    pending: Vec<u8>,
    inflight: Vec<u8>,
    off: usize,
    sending: bool,
}

struct Conn {
    cfd: RawFd,
    sfd: RawFd,
    to_c: Dir,
    to_s: Dir,
    closed: bool,
}

struct Loop {
    ring: IoUring,
    conns: Vec<Conn>,
    listen_fd: RawFd,
    backend: std::net::SocketAddr,
    sends_this_turn: usize,
    dirs_with_pending: usize,
}

fn ud(conn: usize, kind: u64) -> u64 {
    ((conn as u64) << 8) | kind
}

impl Loop {
    fn push(&mut self, e: squeue::Entry) {
        unsafe {
            while self.ring.submission().push(&e).is_err() {
                self.ring.submit().unwrap();
            }
        }
    }
    fn arm_recv(&mut self, i: usize, client: bool) {
        let (fd, k) = if client { (self.conns[i].cfd, K_RECV_C) } else { (self.conns[i].sfd, K_RECV_S) };
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID).build().user_data(ud(i, k));
        self.push(e);
    }
    fn start_send(&mut self, i: usize, to_client: bool) {
        let c = &mut self.conns[i];
        let (fd, d, k) = if to_client { (c.cfd, &mut c.to_c, K_SEND_C) } else { (c.sfd, &mut c.to_s, K_SEND_S) };
        if d.sending || d.pending.is_empty() {
            return;
        }
        std::mem::swap(&mut d.pending, &mut d.inflight);
        d.pending.clear();
        d.off = 0;
        d.sending = true;
        self.dirs_with_pending -= 1;
        let e = opcode::Send::new(types::Fd(fd), d.inflight.as_ptr(), d.inflight.len() as u32)
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(i, k));
        self.sends_this_turn += 1;
        self.push(e);
    }
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.closed {
            c.closed = true;
            unsafe {
                libc::shutdown(c.cfd, libc::SHUT_RDWR);
                libc::shutdown(c.sfd, libc::SHUT_RDWR);
            }
            // fds are leaked on purpose (benchmark relay is restarted per run); in-flight ops
            // referencing the conn's buffers stay valid because Conn is never freed.
        }
    }
    fn on_accept(&mut self, res: i32, more: bool) {
        if !more {
            let e = opcode::AcceptMulti::new(types::Fd(self.listen_fd)).build().user_data(ud(0, K_ACCEPT));
            self.push(e);
        }
        if res < 0 {
            return;
        }
        let cfd = res;
        let s = match std::net::TcpStream::connect(self.backend) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("backend connect: {e}");
                unsafe { libc::close(cfd) };
                return;
            }
        };
        s.set_nodelay(true).unwrap();
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(cfd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &one as *const _ as *const libc::c_void, 4);
        }
        let i = self.conns.len();
        self.conns.push(Conn { cfd, sfd: s.into_raw_fd(), to_c: Dir::default(), to_s: Dir::default(), closed: false });
        self.arm_recv(i, true);
        self.arm_recv(i, false);
    }
    fn on_recv(&mut self, i: usize, from_client: bool, res: i32, flags: u32, br: &mut BufRing) {
        let more = cqueue::more(flags);
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0 && !self.conns[i].closed {
                let data = br.data(bid, res as usize);
                let c = &mut self.conns[i];
                let d = if from_client { &mut c.to_s } else { &mut c.to_c };
                if d.pending.is_empty() {
                    self.dirs_with_pending += 1;
                }
                d.pending.extend_from_slice(data);
            }
            br.push(bid);
        }
        if res == 0 || (res < 0 && res != -libc::ENOBUFS) {
            self.close(i);
            return;
        }
        if res > 0 {
            self.start_send(i, !from_client);
        }
        if !more && !self.conns[i].closed {
            self.arm_recv(i, from_client);
        }
    }
    fn on_send(&mut self, i: usize, to_client: bool, res: i32) {
        if res < 0 {
            self.close(i);
            return;
        }
        let c = &mut self.conns[i];
        let (fd, d, k) = if to_client { (c.cfd, &mut c.to_c, K_SEND_C) } else { (c.sfd, &mut c.to_s, K_SEND_S) };
        d.off += res as usize;
        if d.off < d.inflight.len() {
            // short send: push the rest
            let e = opcode::Send::new(types::Fd(fd), unsafe { d.inflight.as_ptr().add(d.off) }, (d.inflight.len() - d.off) as u32)
                .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud(i, k));
            self.push(e);
            return;
        }
        d.sending = false;
        d.inflight.clear();
        self.start_send(i, to_client);
    }
}

fn thread_main(cfg: RelayCfg, naive: bool) -> std::io::Result<()> {
    let mut b = IoUring::builder();
    b.setup_cqsize(16384);
    // RAW_URING_SETUP=plain|coop|defer (default defer: SINGLE_ISSUER|DEFER_TASKRUN)
    match std::env::var("RAW_URING_SETUP").as_deref() {
        Ok("plain") => {}
        Ok("coop") => {
            b.setup_coop_taskrun().setup_single_issuer();
        }
        _ => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    let ring = b.build(1024)?;
    let mut br = BufRing::new(&ring)?;
    let l = reuseport_listener(cfg.listen);
    let listen_fd = l.as_raw_fd();
    let mut lp = Loop { ring, conns: Vec::new(), listen_fd, backend: cfg.backend, sends_this_turn: 0, dirs_with_pending: 0 };
    let e = opcode::AcceptMulti::new(types::Fd(listen_fd)).build().user_data(ud(0, K_ACCEPT));
    lp.push(e);
    let ts = types::Timespec::new().nsec(10_000_000);
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(4096);
    loop {
        br.publish();
        let want = if naive || lp.dirs_with_pending > 0 { 1 } else { 1 + lp.sends_this_turn };
        lp.sends_this_turn = 0;
        if want > 1 {
            let args = types::SubmitArgs::new().timespec(&ts);
            match lp.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        } else {
            match lp.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        cqes.clear();
        cqes.extend(lp.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for &(u, res, flags) in &cqes {
            let (i, k) = ((u >> 8) as usize, u & 0xff);
            match k {
                K_ACCEPT => lp.on_accept(res, cqueue::more(flags)),
                K_RECV_C => lp.on_recv(i, true, res, flags, &mut br),
                K_RECV_S => lp.on_recv(i, false, res, flags, &mut br),
                K_SEND_C => lp.on_send(i, true, res),
                K_SEND_S => lp.on_send(i, false, res),
                _ => {}
            }
        }
    }
}

pub fn run(cfg: RelayCfg, naive: bool) {
    let hs: Vec<_> = (0..cfg.threads)
        .map(|_| {
            std::thread::spawn(move || {
                if let Err(e) = thread_main(cfg, naive) {
                    eprintln!("raw-uring thread failed: {e}");
                    std::process::exit(1);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
