//! A socket that may or may not be wrapped in TLS, on either side.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The transport under a [`super::Connection`]. TLS variants are boxed: they are large
/// and rare compared to plain loopback connections.
pub enum Stream {
    Plain(TcpStream),
    /// pgtenant is the TLS server (a client connected with sslmode=require).
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// pgtenant is the TLS client (towards PostgreSQL).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A unix-domain socket (a client on `unix_socket_dir`, or a server reached through
    /// its socket directory). Never TLS, as in PostgreSQL. Boxed like the TLS variants, so
    /// that a plain TCP stream still needs no tag of its own (memory per idle client).
    Unix(Box<UnixStream>),
    /// A TCP socket on the io_uring engine (see [`super::uring`]).
    Uring(super::uring::UringStream),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// A connected TCP socket on the engine this thread runs: io_uring on a ring thread,
    /// tokio's epoll otherwise. (TCP_NODELAY is the caller's: [`connect`] and the accept
    /// loop set it.)
    pub fn plain(tcp: TcpStream) -> io::Result<Stream> {
        if super::uring::on_ring_thread() {
            return Ok(Stream::Uring(super::uring::UringStream::new(
                tcp.into_std()?,
            )?));
        }
        Ok(Stream::Plain(tcp))
    }

    /// Can [`Stream::into_bare`] take it out of its runtime? (Plain TCP, on either
    /// engine, or a unix socket: not TLS, whose state lives above the socket.)
    pub fn can_be_bare(&self) -> bool {
        matches!(self, Stream::Plain(_) | Stream::Unix(_) | Stream::Uring(_))
    }

    /// Get ready for [`Stream::into_bare`]: an io_uring stream takes back its armed
    /// receive ([`super::uring::UringStream::poll_disarm`]; false: bytes came first);
    /// the others are ready.
    pub fn poll_let_go(&self, cx: &mut Context<'_>) -> Poll<bool> {
        match self {
            Stream::Uring(u) => u.poll_disarm(cx),
            _ => Poll::Ready(true),
        }
    }

    /// The socket alone, out of its runtime (a parked client's, see `park`), once
    /// [`Stream::poll_let_go`] said yes. An error: the runtime could not let it go, or
    /// the stream cannot be ([`Stream::can_be_bare`]); the socket is lost either way.
    pub fn into_bare(self) -> io::Result<Bare> {
        match self {
            Stream::Plain(t) => t.into_std().map(Bare::Tcp),
            Stream::Unix(u) => u.into_std().map(Bare::Unix),
            Stream::Uring(u) => u.into_std().map(Bare::Tcp),
            Stream::TlsServer(_) | Stream::TlsClient(_) => {
                Err(io::Error::other("a TLS stream cannot leave its runtime"))
            }
        }
    }

    /// The TCP socket under it, for its options (None for a unix socket).
    pub fn tcp(&self) -> Option<socket2::SockRef<'_>> {
        match self {
            Stream::Plain(s) => Some(socket2::SockRef::from(s)),
            Stream::TlsServer(s) => Some(socket2::SockRef::from(s.get_ref().0)),
            Stream::TlsClient(s) => Some(socket2::SockRef::from(s.get_ref().0)),
            Stream::Uring(s) => Some(socket2::SockRef::from(s)),
            Stream::Unix(_) => None,
        }
    }

    /// The plain TCP socket as tokio's, for a TLS handshake (None if it is not a plain
    /// TCP socket, or bytes are still buffered or in flight on it).
    pub fn into_tcp(self) -> Option<TcpStream> {
        match self {
            Stream::Plain(t) => Some(t),
            Stream::Uring(u) => TcpStream::from_std(u.into_std().ok()?).ok(),
            _ => None,
        }
    }

    /// The peer's address (None for a unix socket).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp()
            .and_then(|t| t.peer_addr().ok())
            .and_then(|a| a.as_socket())
    }

    /// Our own address (None for a unix socket).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp()
            .and_then(|t| t.local_addr().ok())
            .and_then(|a| a.as_socket())
    }

    /// Write without waiting, below TLS (best effort, e.g. a last Terminate).
    pub fn try_write_raw(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(u) => u.try_write(buf),
            Stream::Plain(t) => t.try_write(buf),
            Stream::TlsServer(s) => s.get_ref().0.try_write(buf),
            Stream::TlsClient(s) => s.get_ref().0.try_write(buf),
            Stream::Uring(u) => u.try_write(buf),
        }
    }
}

/// A non-blocking socket held outside any runtime (a parked client's, see `park`).
pub enum Bare {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Bare {
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Bare::Tcp(t) => t.as_raw_fd(),
            Bare::Unix(u) => u.as_raw_fd(),
        }
    }

    /// Back on the engine of the thread that calls (inside a runtime): io_uring on a ring
    /// thread, tokio's epoll otherwise.
    pub fn into_stream(self) -> io::Result<Stream> {
        match self {
            Bare::Tcp(t) if super::uring::on_ring_thread() => {
                Ok(Stream::Uring(super::uring::UringStream::new(t)?))
            }
            Bare::Tcp(t) => Ok(Stream::Plain(TcpStream::from_std(t)?)),
            Bare::Unix(u) => Ok(Stream::Unix(Box::new(UnixStream::from_std(u)?))),
        }
    }
}

/// Where a PostgreSQL server's unix socket is, libpq's way: a host that starts with `/`
/// is a socket directory, and the socket is `.s.PGSQL.<port>` in it.
pub fn unix_socket_path(host: &str, port: u16) -> Option<std::path::PathBuf> {
    host.starts_with('/')
        .then(|| std::path::Path::new(host).join(format!(".s.PGSQL.{port}")))
}

/// Connect to `host:port`, or to the unix socket when `host` is a directory (see
/// [`unix_socket_path`]). TCP sockets get TCP_NODELAY.
pub async fn connect(host: &str, port: u16) -> io::Result<Stream> {
    match unix_socket_path(host, port) {
        Some(path) => Ok(Stream::Unix(Box::new(UnixStream::connect(path).await?))),
        None => {
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(Stream::Plain(tcp))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Uring(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Uring(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
