//! Start-up detection of io_uring, and a seccomp filter that refuses the io_uring syscalls the
//! way container runtimes do, so the fallbacks of each crate can be observed on this machine.
//!
//! `IO_ENGINE_DENY_URING=EPERM|ENOSYS` (read by main before any thread starts) installs a
//! seccomp filter making io_uring_setup/enter/register fail with that errno: Docker's and
//! containerd's default profiles (moby >= 25, containerd >= 1.7.x) answer EPERM.

use std::io;

const SYS_IO_URING_SETUP: u32 = 425;
const SYS_IO_URING_ENTER: u32 = 426;
const SYS_IO_URING_REGISTER: u32 = 427;

pub fn maybe_deny_uring_from_env() {
    let errno = match std::env::var("IO_ENGINE_DENY_URING").as_deref() {
        Ok("EPERM") => libc::EPERM,
        Ok("ENOSYS") => libc::ENOSYS,
        _ => return,
    };
    install_deny_filter(errno as u32).expect("install seccomp filter");
    eprintln!("seccomp: io_uring_* syscalls now fail with errno {errno}");
}

fn install_deny_filter(errno: u32) -> io::Result<()> {
    // classic BPF over struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }
    const LD_W_ABS: u16 = 0x20; // BPF_LD|BPF_W|BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP|BPF_JEQ|BPF_K
    const RET_K: u16 = 0x06; // BPF_RET|BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        f(LD_W_ABS, 0, 0, 4),                       // A = arch
        f(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),          // if x86_64 skip next
        f(RET_K, 0, 0, RET_ALLOW),                  // other arch: allow (not expected)
        f(LD_W_ABS, 0, 0, 0),                       // A = nr
        f(JEQ_K, 3, 0, SYS_IO_URING_SETUP),
        f(JEQ_K, 2, 0, SYS_IO_URING_ENTER),
        f(JEQ_K, 1, 0, SYS_IO_URING_REGISTER),
        f(RET_K, 0, 0, RET_ALLOW),
        f(RET_K, 0, 0, RET_ERRNO | (errno & 0xffff)),
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut _ };
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const _) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What pgtenant would run at start: can we get a ring, with the opcodes and features the
/// engine needs?  Returns Ok(description) or Err(reason) -> fall back to epoll.
pub fn probe_raw() -> Result<String, String> {
    use io_uring::{opcode, IoUring, Probe};
    let ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .map_err(|e| format!("io_uring_setup: {e} (errno {:?})", e.raw_os_error()))?;
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| format!("register_probe: {e}"))?;
    for (name, code) in [
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ] {
        if !p.is_supported(code) {
            return Err(format!("opcode {name} unsupported"));
        }
    }
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err("no IORING_FEAT_EXT_ARG (< 5.11)".into());
    }
    // provided buffer ring (5.19) + multishot recv (6.0): try registering a tiny ring
    let mem = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_ANONYMOUS | libc::MAP_PRIVATE, -1, 0)
    };
    unsafe { ring.submitter().register_buf_ring_with_flags(mem as u64, 8, 1, 0) }
        .map_err(|e| format!("register_buf_ring: {e} (< 5.19?)"))?;
    Ok(format!(
        "io_uring ok: single_issuer+defer_taskrun ring, buf_ring, ext_arg={}, skip_cqe={}, recvsend_bundle={}, min_timeout={}",
        params.is_feature_ext_arg(),
        params.is_feature_skip_cqe_on_success(),
        params.is_feature_recvsend_bundle(),
        params.is_feature_min_timeout()
    ))
}

pub fn run() {
    println!(
        "kernel.io_uring_disabled = {}",
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim().to_string()).unwrap_or("n/a".into())
    );
    match probe_raw() {
        Ok(s) => println!("raw probe: {s}"),
        Err(s) => println!("raw probe: FALLBACK to epoll: {s}"),
    }
    println!("monoio::utils::detect_uring() = {}", monoio::utils::detect_uring());
    match monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build() {
        Ok(rt) => println!(
            "monoio FusionDriver runtime built: {}",
            match rt {
                monoio::FusionRuntime::Uring(_) => "io_uring",
                monoio::FusionRuntime::Legacy(_) => "legacy (epoll via mio)",
            }
        ),
        Err(e) => println!("monoio FusionDriver: error {e}"),
    }
    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build() {
        Ok(_) => println!("monoio IoUringDriver: built"),
        Err(e) => println!("monoio IoUringDriver: error {e}"),
    }
    match compio::runtime::Runtime::new() {
        Ok(rt) => println!("compio Runtime::new(): driver_type = {:?}", rt.driver_type()),
        Err(e) => println!("compio Runtime::new(): error {e}"),
    }
    {
        let mut pb = compio::driver::ProactorBuilder::new();
        pb.driver_type(compio::driver::DriverType::IoUring);
        match compio::runtime::RuntimeBuilder::new().with_proactor(pb).build() {
            Ok(rt) => println!("compio forced IoUring: driver_type = {:?}", rt.driver_type()),
            Err(e) => println!("compio forced IoUring: error {e}"),
        }
    }
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| tokio_uring::start(async { "started" }));
    match r {
        Ok(s) => println!("tokio-uring: {s}"),
        Err(e) => println!(
            "tokio-uring: PANIC ({})",
            e.downcast_ref::<String>().cloned().or(e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        ),
    }
}
