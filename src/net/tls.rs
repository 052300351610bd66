//! rustls configurations for both sides.
//!
//! Every config is built with the ring provider passed explicitly, so nothing depends on
//! a process-wide default provider being installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::ServerTls;

/// Errors building TLS configurations. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("no certificates found in {path}")]
    NoCertificates { path: PathBuf },
    #[error("cannot read a private key from {path}: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not form a usable server identity: {source}")]
    ServerIdentity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("server_tls = {mode} needs server_tls_ca_file")]
    MissingCaFile { mode: &'static str },
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM section of the expected kind".into(),
        other => format!("{other:?}"),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e| TlsError::Certificates {
        path: path.to_owned(),
        reason: pem_reason(e),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The server side (clients connecting to pgtenant): a PEM certificate chain (leaf
/// first) and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::PrivateKey {
        path: key.to_owned(),
        reason: pem_reason(e),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|source| TlsError::ServerIdentity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// The client side (pgtenant connecting to PostgreSQL servers), following libpq's
/// sslmode: `Disable` gives no config; `Prefer`/`Require` encrypt without checking the
/// certificate; `VerifyCa` checks the chain against the CA file; `VerifyFull` also checks
/// the host name.
pub fn client_config(
    mode: ServerTls,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        ServerTls::Disable => return Ok(None),
        ServerTls::Prefer | ServerTls::Require => Arc::new(NoCertificateCheck {
            algorithms: provider.signature_verification_algorithms,
        }),
        ServerTls::VerifyCa | ServerTls::VerifyFull => {
            let name = if mode == ServerTls::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            };
            let path = ca_file.ok_or(TlsError::MissingCaFile { mode: name })?;
            let roots = load_roots(path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::CaFile {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
            if mode == ServerTls::VerifyCa {
                Arc::new(IgnoreHostName { inner: webpki })
            } else {
                webpki
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(path).map_err(|e| match e {
        TlsError::NoCertificates { path } => TlsError::CaFile {
            path,
            reason: "no certificates found".into(),
        },
        other => other,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The name to verify a server's certificate against: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::InvalidServerName(host.to_owned()))
}

/// sslmode=prefer/require: accept any certificate, but still check that the server
/// holds the key of the certificate it sent (handshake signatures).
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// sslmode=verify-ca: the full WebPKI check, except that a host-name mismatch is
/// accepted. rustls checks the name only after the chain, so a name error means the
/// chain was good.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CNF: &str = "[req]\n\
        distinguished_name = dn\n\
        prompt = no\n\
        [dn]\n\
        CN = unused\n\
        [v3_ca]\n\
        basicConstraints = critical,CA:TRUE\n\
        keyUsage = critical,keyCertSign,cRLSign\n\
        subjectKeyIdentifier = hash\n";

    const SERVER_EXT: &str = "basicConstraints = CA:FALSE\n\
        keyUsage = critical,digitalSignature,keyEncipherment\n\
        extendedKeyUsage = serverAuth\n\
        subjectAltName = DNS:db.example.test,IP:127.0.0.1\n\
        authorityKeyIdentifier = keyid\n";

    struct Pki {
        dir: PathBuf,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Two CAs (ca, other-ca) and a server certificate for db.example.test / 127.0.0.1
    /// signed by `ca`. The server key is written as PKCS#8 (server.key) and SEC1
    /// (server-ec.key).
    fn make_pki() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgtenant-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("openssl.cnf"), CNF).expect("cnf");
        std::fs::write(dir.join("server.ext"), SERVER_EXT).expect("ext");
        let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        for ca in ["ca", "other-ca"] {
            let key = format!("{ca}.key");
            let crt = format!("{ca}.crt");
            let subj = format!("/CN=pgtenant test {ca}");
            let mut args = vec!["genpkey"];
            args.extend(ec);
            args.extend(["-out", &key]);
            openssl(&dir, &args);
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &key,
                    "-subj",
                    &subj,
                    "-days",
                    "2",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "v3_ca",
                    "-out",
                    &crt,
                ],
            );
        }
        let mut args = vec!["genpkey"];
        args.extend(ec);
        args.extend(["-out", "server.key"]);
        openssl(&dir, &args);
        openssl(&dir, &["ec", "-in", "server.key", "-out", "server-ec.key"]);
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-subj",
                "/CN=db.example.test",
                "-config",
                "openssl.cnf",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        Pki { dir }
    }

    /// Handshake over an in-memory pipe and exchange a byte each way.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<(), String> {
        let (c_io, s_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = server_name(name).map_err(|e| e.to_string())?;
        let srv = async move {
            let mut s = acceptor.accept(s_io).await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            s.write_all(&b).await?;
            s.flush().await?;
            Ok::<_, std::io::Error>(())
        };
        let cli = async move {
            let mut c = connector.connect(name, c_io).await?;
            c.write_all(b"x").await?;
            c.flush().await?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>(b)
        };
        let (s, c) = tokio::join!(srv, cli);
        let echoed = c.map_err(|e| format!("client: {e}"))?;
        s.map_err(|e| format!("server: {e}"))?;
        if echoed != *b"x" {
            return Err("wrong echo".into());
        }
        Ok(())
    }

    #[tokio::test]
    async fn verification_modes() {
        let pki = make_pki();
        let server =
            server_config(&pki.path("server.crt"), &pki.path("server.key")).expect("server");
        let ca = pki.path("ca.crt");
        let other = pki.path("other-ca.crt");
        let cfg = |mode, ca: &Path| {
            client_config(mode, Some(ca))
                .expect("client config")
                .expect("some config")
        };

        let full = cfg(ServerTls::VerifyFull, &ca);
        handshake(server.clone(), full.clone(), "db.example.test")
            .await
            .expect("verify-full, right name");
        handshake(server.clone(), full.clone(), "127.0.0.1")
            .await
            .expect("verify-full, right IP");
        let e = handshake(server.clone(), full.clone(), "wrong.example.test")
            .await
            .expect_err("verify-full, wrong name");
        assert!(e.contains("not valid for name"), "{e}");

        let verify_ca = cfg(ServerTls::VerifyCa, &ca);
        handshake(server.clone(), verify_ca.clone(), "wrong.example.test")
            .await
            .expect("verify-ca ignores the name");
        handshake(server.clone(), verify_ca, "127.0.0.2")
            .await
            .expect("verify-ca ignores the IP");

        for mode in [ServerTls::VerifyCa, ServerTls::VerifyFull] {
            let c = cfg(mode, &other);
            let e = handshake(server.clone(), c, "db.example.test")
                .await
                .expect_err("another CA is rejected");
            assert!(e.contains("UnknownIssuer"), "{e}");
        }

        for mode in [ServerTls::Prefer, ServerTls::Require] {
            let c = client_config(mode, None).expect("config").expect("some");
            handshake(server.clone(), c, "anything.example")
                .await
                .expect("no certificate check");
        }

        // A SEC1 ("EC PRIVATE KEY") key works too.
        let server_ec =
            server_config(&pki.path("server.crt"), &pki.path("server-ec.key")).expect("sec1 key");
        handshake(server_ec, full, "db.example.test")
            .await
            .expect("sec1 key handshake");
    }

    #[test]
    fn config_errors_name_the_file() {
        let pki = make_pki();
        assert!(client_config(ServerTls::Disable, None)
            .expect("ok")
            .is_none());
        assert!(matches!(
            client_config(ServerTls::VerifyFull, None),
            Err(TlsError::MissingCaFile { .. })
        ));
        let missing = pki.path("nope.crt");
        let e = server_config(&missing, &pki.path("server.key")).expect_err("missing cert");
        assert!(e.to_string().contains("nope.crt"), "{e}");
        let e = server_config(&pki.path("server.crt"), &pki.path("nope.key")).expect_err("key");
        assert!(e.to_string().contains("nope.key"), "{e}");
        // A certificate file given as the key: no key in it.
        let e = server_config(&pki.path("server.crt"), &pki.path("server.crt")).expect_err("k");
        assert!(matches!(e, TlsError::PrivateKey { .. }), "{e}");
        // A key given as the certificate: no certificates.
        let e = server_config(&pki.path("server.key"), &pki.path("server.key")).expect_err("c");
        assert!(e.to_string().contains("server.key"), "{e}");
        // Mismatched key and certificate.
        let e = server_config(&pki.path("server.crt"), &pki.path("ca.key")).expect_err("pair");
        assert!(e.to_string().contains("ca.key"), "{e}");
        let e = client_config(ServerTls::VerifyCa, Some(&pki.path("server.key"))).expect_err("ca");
        assert!(e.to_string().contains("server.key"), "{e}");
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("db.local"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("not a host").is_err());
        assert!(server_name("").is_err());
    }
}
