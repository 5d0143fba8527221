//! HTTPS on loopback: a certificate authority made when the test runs, and a TLS front
//! that serves `https://127.0.0.1:<port>` for a plain HTTP server of the test (a fake
//! payment provider, an identity provider's JWK set) with a certificate that CA signed.
//! A client trusts it only when given the CA's file ([`TestCa::write_pem`]); the front can
//! be given another certificate while it runs ([`HttpsFront::reissue`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority of the test's own, trusted by nothing else.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    /// Writes the CA's certificate as `<dir>/<file>` (PEM): what a CA file setting names.
    pub fn write_pem(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.issuer.pem()).expect("write the CA's PEM file");
        path
    }

    /// A server's TLS configuration with a certificate for `localhost` and `127.0.0.1`
    /// signed by this CA, on the ring provider.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("a server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server parameters");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("a server configuration");
        Arc::new(config)
    }
}

/// TLS on 127.0.0.1 with a certificate a [`TestCa`] signed, in front of the plain HTTP
/// server at `backend`: each connection's bytes are handed on, as a TLS sidecar would.
/// Runs as long as the test's async runtime.
pub struct HttpsFront {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
}

impl HttpsFront {
    pub async fn start(ca: &TestCa, backend: SocketAddr) -> HttpsFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let url = format!("https://{}", listener.local_addr().expect("an address"));
        let config = Arc::new(Mutex::new(ca.server_config()));
        let current = config.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let config = current.lock().expect("not poisoned").clone();
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends the handshake here.
                    let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                    else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        HttpsFront { url, config }
    }

    /// From now on, connections get a certificate `ca` signed (connections already open
    /// keep theirs).
    pub fn reissue(&self, ca: &TestCa) {
        *self.config.lock().expect("not poisoned") = ca.server_config();
    }
}
