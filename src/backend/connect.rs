//! Opening and authenticating a server connection.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BackendError, CancelTarget, ServerConn};
use crate::auth::{self, ScramClient, ServerCredential};
use crate::config::ServerTls;
use crate::net::{Connection, Stream};
use crate::protocol::{build, decode, AuthRequest, ErrorFields};

/// Everything needed to open one server connection.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// None: only trust auth can succeed.
    pub credential: Option<ServerCredential>,
    pub tls_mode: ServerTls,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub max_message: usize,
    /// Extra startup parameters (application_name, …).
    pub startup: Vec<(String, String)>,
    pub keepalive: Option<Duration>,
}

/// Connect, negotiate TLS, authenticate and wait for the first ReadyForQuery.
pub async fn connect(p: &ConnectParams) -> Result<ServerConn, BackendError> {
    let timeout = if p.connect_timeout.is_zero() {
        Duration::from_secs(3600)
    } else {
        p.connect_timeout
    };
    match tokio::time::timeout(timeout, connect_inner(p)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout),
    }
}

async fn connect_inner(p: &ConnectParams) -> Result<ServerConn, BackendError> {
    let stream = crate::net::stream::connect(&p.host, p.port).await?;
    let mut tcp = match stream {
        Stream::Plain(tcp) => tcp,
        // A unix socket: no TLS (as libpq, which ignores sslmode there) nor keepalive.
        unix => return handshake(unix, p).await,
    };
    if let Some(k) = p.keepalive {
        let _ = socket_keepalive(&socket2::SockRef::from(&tcp), k);
    }
    let stream = match (p.tls_mode, &p.tls) {
        (ServerTls::Disable, _) | (_, None) => Stream::plain(tcp)?,
        (mode, Some(cfg)) => {
            tcp.write_all(&build::ssl_request()).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            match answer[0] {
                b'S' => {
                    let name = crate::net::tls::server_name(&p.host)
                        .map_err(|e| BackendError::Tls(e.to_string()))?;
                    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| BackendError::Tls(e.to_string()))?;
                    Stream::TlsClient(Box::new(tls))
                }
                b'N' if mode == ServerTls::Prefer => Stream::plain(tcp)?,
                b'N' => return Err(BackendError::Tls("server does not support TLS".into())),
                other => {
                    return Err(BackendError::Tls(format!(
                        "unexpected answer {other:#x} to SSLRequest"
                    )))
                }
            }
        }
    };
    handshake(stream, p).await
}

/// Startup, authentication and the server's greeting on a connected stream.
async fn handshake(stream: Stream, p: &ConnectParams) -> Result<ServerConn, BackendError> {
    let mut conn = Connection::new(stream, p.max_message);
    conn.keep_read_buffer();

    let mut params: Vec<(&str, &str)> = vec![("user", &p.user), ("database", &p.database)];
    for (k, v) in &p.startup {
        params.push((k, v));
    }
    conn.queue_bytes(&build::startup_message(&params));
    conn.flush().await?;

    authenticate(&mut conn, p).await?;

    let mut server_params = Vec::new();
    let mut key = (0, 0);
    loop {
        let f = conn.read_frame().await?.ok_or(BackendError::Closed)?;
        match f.tag() {
            b'S' => server_params.push(decode::parameter_status(f.body())?),
            b'K' => key = decode::backend_key_data(f.body())?,
            b'N' => {}
            b'E' => return Err(BackendError::Server(ErrorFields::parse(f.body())?)),
            b'Z' => break,
            t => {
                return Err(
                    crate::protocol::ProtocolError::Unexpected(t as char, "server startup").into(),
                )
            }
        }
    }
    let cancel = CancelTarget::new(p.host.clone(), p.port, key.0, key.1);
    Ok(ServerConn::new(conn, cancel, server_params))
}

/// TCP keep-alive with the given idle time (tokio does not expose it; socket2 does).
pub fn socket_keepalive(tcp: &socket2::SockRef<'_>, idle: Duration) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new().with_time(idle);
    tcp.set_tcp_keepalive(&ka)
}

/// Answer the server's Authentication requests until AuthenticationOk.
async fn authenticate(conn: &mut Connection, p: &ConnectParams) -> Result<(), BackendError> {
    let mut scram: Option<ScramClient> = None;
    loop {
        let f = conn.read_frame().await?.ok_or(BackendError::Closed)?;
        match f.tag() {
            b'R' => {}
            b'E' => return Err(BackendError::Server(ErrorFields::parse(f.body())?)),
            b'v' => continue, // NegotiateProtocolVersion: we asked for 3.0 only
            t => {
                return Err(crate::protocol::ProtocolError::Unexpected(
                    t as char,
                    "server authentication",
                )
                .into())
            }
        }
        match AuthRequest::parse(f.body())? {
            AuthRequest::Ok => return Ok(()),
            AuthRequest::Cleartext => match &p.credential {
                Some(ServerCredential::Password(pw)) => {
                    conn.send(&build::password_message(pw.as_bytes())).await?
                }
                _ => return Err(no_secret(p, "a cleartext password")),
            },
            AuthRequest::Md5 { salt } => {
                let hash = match &p.credential {
                    Some(ServerCredential::Password(pw)) => auth::md5_password_hash(pw, &p.user),
                    Some(ServerCredential::Md5(h)) => h.clone(),
                    _ => return Err(no_secret(p, "an md5 password")),
                };
                let resp = auth::md5_salted_response(&hash, salt);
                conn.send(&build::password_message(resp.as_bytes())).await?;
            }
            AuthRequest::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(BackendError::Auth(format!(
                        "server offers SASL mechanisms {mechanisms:?}, pgtenant speaks SCRAM-SHA-256"
                    )));
                }
                let cred = p
                    .credential
                    .clone()
                    .ok_or_else(|| no_secret(p, "SCRAM-SHA-256"))?;
                let mut client =
                    ScramClient::new(cred).map_err(|e| BackendError::Auth(e.to_string()))?;
                let first = client.client_first();
                conn.send(&build::sasl_initial_response("SCRAM-SHA-256", &first))
                    .await?;
                scram = Some(client);
            }
            AuthRequest::SaslContinue(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| BackendError::Auth("unexpected SASLContinue".into()))?;
                let fin = client
                    .handle_server_first(&data)
                    .map_err(|e| BackendError::Auth(e.to_string()))?;
                conn.send(&build::sasl_response(&fin)).await?;
            }
            AuthRequest::SaslFinal(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| BackendError::Auth("unexpected SASLFinal".into()))?;
                client
                    .handle_server_final(&data)
                    .map_err(|e| BackendError::Auth(e.to_string()))?;
            }
            AuthRequest::Other(n) => {
                return Err(BackendError::Auth(format!(
                    "unsupported authentication request {n}"
                )))
            }
        }
    }
}

fn no_secret(p: &ConnectParams, what: &str) -> BackendError {
    BackendError::Auth(format!(
        "server asks user \"{}\" for {what} and pgtenant holds no usable secret for it",
        p.user
    ))
}
