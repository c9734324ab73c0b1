//! TLS (and mTLS) for the gRPC listener: rustls, configured from PEM files that are re-read
//! whenever they change, so a certificate rotated by cert-manager is served without a restart.
//!
//! Connections are accepted here, TLS-handshaken (bounded in time, off the accept loop) and
//! handed to tonic as a stream; tonic exposes each connection's verified client certificates to
//! the auth layer (`TlsConnectInfo`). A plaintext client gets its connection closed.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{ClientAuth, TlsConfig};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

impl TlsFiles {
    /// The files of `config`; `None` when TLS is off.
    pub fn from_config(config: &TlsConfig) -> Option<Self> {
        Some(Self {
            cert: config.cert_file.clone()?,
            key: config.key_file.clone()?,
            client_ca: config.client_ca_file.clone(),
            client_auth: config.client_auth,
        })
    }

    /// Everything the files hold, to notice a change.
    fn contents(&self) -> Vec<Option<Vec<u8>>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::read(p).ok())
            .collect()
    }

    /// A rustls server configuration from the files as they are now.
    fn load(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("server.tls.key_file {}", self.key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("server.tls.client_ca_file {}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier: Arc<dyn ClientCertVerifier> = match self.client_auth {
                    ClientAuth::Required => verifier.build(),
                    ClientAuth::Optional => verifier.allow_unauthenticated().build(),
                }
                .context("client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .context("server.tls: the certificate and key do not go together")?;
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// The TLS acceptor in force, replaced when the files change.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<TlsAcceptor>>,
    files: TlsFiles,
}

impl Acceptor {
    /// An acceptor from `files`; fails (naming the file) when they cannot be used.
    pub fn new(files: TlsFiles) -> anyhow::Result<Self> {
        let config = files.load()?;
        Ok(Self {
            current: Arc::new(RwLock::new(TlsAcceptor::from(config))),
            files,
        })
    }

    fn get(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the files every `every` until `stop` turns true; when they changed and load,
    /// new connections use them (open ones keep theirs). Files that do not load keep the
    /// configuration in force, and say why.
    pub async fn watch(self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut seen = self.files.contents();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = self.files.contents();
            if now == seen {
                continue;
            }
            match self.files.load() {
                Ok(config) => {
                    seen = now;
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                        TlsAcceptor::from(config);
                    metrics::counter!("flowstate_tls_reloads_total", "result" => "ok").increment(1);
                    tracing::info!("TLS certificate files reloaded");
                }
                Err(e) => {
                    // Retried on the next change: a rotation may write cert and key in turn.
                    seen = now;
                    metrics::counter!("flowstate_tls_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::error!(error = %format!("{e:#}"), "TLS files changed but cannot be used: the certificate in force stays");
                }
            }
        }
    }

    /// Accepts connections on `listener` and yields them once their TLS handshake succeeds.
    /// Ends when the stream is dropped.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                // Small gRPC replies must not wait for the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let acceptor = self.get();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("flowstate_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("flowstate_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
