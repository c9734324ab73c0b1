//! TLS (and mTLS) for the gRPC listener: rustls, configured from PEM files that are re-read
//! whenever they change, so a certificate rotated by cert-manager is served without a restart.
//!
//! Connections are accepted here, TLS-handshaken (bounded in time and in number, off the
//! accept loop) and handed to tonic as a stream; tonic exposes each connection's verified
//! client certificates to the auth layer (`TlsConnectInfo`). A plaintext client gets its
//! connection closed.
//!
//! Metrics say when the certificate expires (`flowstate_tls_certificate_expiry_timestamp_seconds`)
//! and whether the files on disk are unusable while the previous ones stay in force
//! (`flowstate_tls_reload_failing`), so a broken rotation is seen before the old certificate
//! runs out.

use std::{
    io,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use x509_cert::der::Decode as _;

use crate::config::{ClientAuth, TlsConfig};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once. Past it the accept loop waits (new connections queue in
/// the kernel's backlog), so clients that open connections and never finish a handshake hold
/// at most this many sockets and tasks, each for at most [`HANDSHAKE_TIMEOUT`].
const MAX_HANDSHAKES: usize = 1024;
/// A certificate this close to its end is logged as a warning at every load.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest pause after a failed accept (e.g. out of file descriptors), doubling from 5 ms.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The bytes of the TLS files, read once: what is loaded is exactly what was compared.
#[derive(Debug)]
struct Contents {
    cert: io::Result<Vec<u8>>,
    key: io::Result<Vec<u8>>,
    client_ca: Option<io::Result<Vec<u8>>>,
}

/// `io::Result` compared by its bytes (any error equals any error: no change to act on).
trait SameBytes {
    fn same(&self, other: &Self) -> bool;
}

impl SameBytes for io::Result<Vec<u8>> {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        }
    }
}

impl Contents {
    fn same(&self, other: &Self) -> bool {
        self.cert.same(&other.cert)
            && self.key.same(&other.key)
            && match (&self.client_ca, &other.client_ca) {
                (Some(a), Some(b)) => a.same(b),
                (None, None) => true,
                _ => false,
            }
    }
}

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

    /// Everything the files hold now.
    fn read(&self) -> Contents {
        Contents {
            cert: std::fs::read(&self.cert),
            key: std::fs::read(&self.key),
            client_ca: self.client_ca.as_ref().map(std::fs::read),
        }
    }

    /// A rustls server configuration from `contents`, and when its certificate expires.
    fn load(&self, contents: &Contents) -> anyhow::Result<(Arc<ServerConfig>, SystemTime)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = certs_from(&contents.cert, "server.tls.cert_file", &self.cert)?;
        let expires = not_after(&certs[0])
            .with_context(|| format!("server.tls.cert_file {}", self.cert.display()))?;
        let key = contents
            .key
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|pem| PrivateKeyDer::from_pem_slice(pem).map_err(anyhow::Error::from))
            .with_context(|| format!("server.tls.key_file {}", self.key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match (&self.client_ca, &contents.client_ca) {
            (Some(ca), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for cert in certs_from(pem, "server.tls.client_ca_file", ca)? {
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
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .context("server.tls: the certificate and key do not go together")?;
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok((Arc::new(config), expires))
    }
}

/// The certificates of a PEM file's bytes (at least one).
fn certs_from(
    pem: &io::Result<Vec<u8>>,
    setting: &str,
    path: &std::path::Path,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let context = || format!("{setting} {}", path.display());
    let pem = pem
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(context)?;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(context)?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate", context());
    Ok(certs)
}

/// When `cert` stops being valid.
fn not_after(cert: &CertificateDer<'_>) -> anyhow::Result<SystemTime> {
    let parsed = x509_cert::Certificate::from_der(cert).context("not an X.509 certificate")?;
    Ok(UNIX_EPOCH
        + parsed
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration())
}

/// Publishes when the certificate in force expires, and says so when that is soon or past.
fn report_expiry(expires: SystemTime) {
    let at = expires.duration_since(UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!("flowstate_tls_certificate_expiry_timestamp_seconds").set(at.as_secs_f64());
    match expires.duration_since(SystemTime::now()) {
        Err(_) => tracing::error!(
            not_after = at.as_secs(),
            "the TLS certificate has EXPIRED: clients will refuse it until it is replaced"
        ),
        Ok(left) if left < EXPIRY_WARNING => tracing::warn!(
            not_after = at.as_secs(),
            hours_left = left.as_secs() / 3600,
            "the TLS certificate expires soon; is its rotation working?"
        ),
        Ok(_) => {}
    }
}

/// The TLS acceptor in force, replaced when the files change.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<TlsAcceptor>>,
    files: TlsFiles,
    /// What the files held when last read (loaded or refused).
    seen: Arc<Mutex<Contents>>,
}

impl Acceptor {
    /// An acceptor from `files`; fails (naming the file) when they cannot be used.
    pub fn new(files: TlsFiles) -> anyhow::Result<Self> {
        let contents = files.read();
        let (config, expires) = files.load(&contents)?;
        report_expiry(expires);
        metrics::gauge!("flowstate_tls_reload_failing").set(0.0);
        Ok(Self {
            current: Arc::new(RwLock::new(TlsAcceptor::from(config))),
            files,
            seen: Arc::new(Mutex::new(contents)),
        })
    }

    fn get(&self) -> TlsAcceptor {
        self.current.read().clone()
    }

    /// Checks the files every `every` until `stop` turns true; when they changed and load,
    /// new connections use them (open ones keep theirs). Files that do not load keep the
    /// configuration in force, and say why.
    pub async fn watch(self, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = self.files.read();
            let loaded = {
                let mut seen = self.seen.lock();
                if now.same(&seen) {
                    continue;
                }
                // Retried on the next change only: a rotation may write cert and key in turn.
                let loaded = self.files.load(&now);
                *seen = now;
                loaded
            };
            match loaded {
                Ok((config, expires)) => {
                    *self.current.write() = TlsAcceptor::from(config);
                    metrics::counter!("flowstate_tls_reloads_total", "result" => "ok").increment(1);
                    metrics::gauge!("flowstate_tls_reload_failing").set(0.0);
                    tracing::info!("TLS certificate files reloaded");
                    report_expiry(expires);
                }
                Err(e) => {
                    metrics::counter!("flowstate_tls_reloads_total", "result" => "error")
                        .increment(1);
                    metrics::gauge!("flowstate_tls_reload_failing").set(1.0);
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
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            let mut backoff = Duration::ZERO;
            loop {
                let permit = tokio::select! {
                    permit = handshakes.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                };
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => {
                            backoff = Duration::ZERO;
                            pair
                        }
                        Err(e) => {
                            // Out of file descriptors, typically: retrying at once would spin.
                            backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                            tracing::warn!(error = %e, retry_in = ?backoff, "accepting a connection failed");
                            tokio::time::sleep(backoff).await;
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
                    let _permit = permit;
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
