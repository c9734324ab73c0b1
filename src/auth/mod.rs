//! Who is calling, for which tenant, allowed to do what.
//!
//! [`AuthLayer`] runs before a call reaches its handler: it identifies the caller (an API key
//! sent as `authorization: Bearer <key>`, or a client certificate listed in `auth.clients`),
//! checks the method's permission, applies the tenant's request quota, and hands the handler a
//! [`Caller`] in the request's extensions. Handlers take the tenant from there, so every store
//! key a call touches is its caller's tenant's. Health checks and reflection need no caller.
//!
//! - [`keys`]: the key format and the keys file (hashes only), reloaded on change by
//!   [`watch_keys`]; a bad file keeps the keys in force and says why.
//! - [`permission`]: the permission names.
//! - [`config`]: `[auth]` and `[quota]`.

pub mod config;
pub mod keys;
pub mod permission;
mod quota;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{BoxError, Layer, Service};

use self::{
    config::AuthMode,
    keys::KeySet,
    permission::{Permission, Permissions},
    quota::RequestQuotas,
};
use crate::{config::Config, tenant::Tenant};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant every key of the call belongs to.
    pub tenant: Tenant,
    /// What the caller may do.
    pub permissions: Permissions,
    /// How it was identified (for logs: never a secret).
    pub identity: Identity,
}

/// How a caller was identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off (`auth.mode = none`).
    Anonymous,
    /// An API key, by its public id.
    Key(String),
    /// A client certificate, by the subject alternative name listed in `auth.clients`.
    Certificate(String),
}

/// `anonymous`, `key:<public id>` or `cert:<SAN>`: what logs and spans say about a caller
/// (never a secret).
impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::Key(id) => write!(f, "key:{id}"),
            Identity::Certificate(san) => write!(f, "cert:{san}"),
        }
    }
}

/// The caller of `request`, as [`AuthLayer`] found it.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        // Only reachable if a service were served without the layer: a wiring bug.
        tracing::error!("a call reached a handler without an authenticated caller");
        Status::internal("internal error")
    })
}

/// Refuses the call unless its caller also holds `permission`: for a part of a call that does
/// more than its method's permission says (GetSession with `touch` extends the session, a
/// cache Get with `lease` reserves the key to fill it).
pub fn require<T>(request: &tonic::Request<T>, permission: Permission) -> Result<(), Status> {
    let caller = caller(request)?;
    if caller.permissions.allows(permission) {
        return Ok(());
    }
    metrics::counter!(
        "flowstate_auth_denied_total",
        "reason" => "permission_denied",
        "tenant" => caller.tenant.as_str().to_owned()
    )
    .increment(1);
    tracing::info!(tenant = %caller.tenant, caller = %caller.identity, needs = %permission, "call refused");
    Err(Status::permission_denied(format!(
        "this call needs the {permission} permission"
    )))
}

/// The caller's tenant and the request message.
pub fn tenant_and<T>(request: tonic::Request<T>) -> Result<(Tenant, T), Status> {
    let tenant = caller(&request)?.tenant.clone();
    Ok((tenant, request.into_inner()))
}

/// The permission each method of a service needs: (service name, [(method, permission)]).
pub type MethodPermissions = (&'static str, &'static [(&'static str, Permission)]);

/// Decides who a call's caller is and whether it may make the call.
pub struct Authenticator {
    mode: AuthMode,
    /// The caller of every call while authentication is off.
    anonymous: Caller,
    keys: RwLock<Arc<KeySet>>,
    keys_file: Option<PathBuf>,
    /// The keys file's bytes as last read (loaded or refused), so a change is never missed
    /// between loading it and watching it.
    keys_file_seen: Mutex<Option<Vec<u8>>>,
    inline_keys: Option<String>,
    /// Client-certificate identities: subject alternative name → (tenant, permissions).
    clients: HashMap<String, (Tenant, Permissions)>,
    /// `/service/method` → the permission it needs.
    methods: HashMap<String, Permission>,
    quotas: RequestQuotas,
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    /// A path that is no flowstate method, health check or reflection.
    UnknownMethod,
    Unauthenticated,
    Forbidden(Permission),
    OverQuota,
}

/// A refusal, with the caller when it was identified (for the logs and the tenant label).
struct Refusal {
    denied: Denied,
    caller: Option<Caller>,
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Self {
        Self {
            denied,
            caller: None,
        }
    }
}

impl From<(Denied, Caller)> for Refusal {
    fn from((denied, caller): (Denied, Caller)) -> Self {
        Self {
            denied,
            caller: Some(caller),
        }
    }
}

impl Authenticator {
    /// Builds the authenticator of `config` over the methods of `services` (every method of
    /// every flowstate service in the descriptors must be listed: a call without a permission
    /// would otherwise be open). Reads the keys file: a bad one stops start-up, naming its
    /// lines.
    pub fn new(config: &Config, services: &[MethodPermissions]) -> anyhow::Result<Self> {
        let mut methods = HashMap::new();
        for (service, table) in services {
            for (method, permission) in *table {
                methods.insert(format!("/{service}/{method}"), *permission);
            }
        }
        let missing: Vec<String> = crate::proto::flowstate_services()
            .into_iter()
            .flat_map(|s| {
                let service = s.name;
                s.methods
                    .into_iter()
                    .map(move |m| format!("/{service}/{m}"))
            })
            .filter(|path| !methods.contains_key(path))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "methods without a permission: {}",
            missing.join(", ")
        );
        let tenant = Tenant::new(&config.server.tenant)
            .ok_or_else(|| anyhow::anyhow!("server.tenant is not a tenant name"))?;
        let mut clients = HashMap::new();
        for c in &config.auth.clients {
            let tenant = Tenant::new(&c.tenant)
                .ok_or_else(|| anyhow::anyhow!("auth.clients: bad tenant {:?}", c.tenant))?;
            let permissions =
                Permissions::parse(&c.allow).map_err(|e| anyhow::anyhow!("auth.clients: {e}"))?;
            clients.insert(c.san.clone(), (tenant, permissions));
        }
        let auth = Self {
            mode: config.auth.mode,
            anonymous: Caller {
                tenant,
                permissions: Permissions::all(),
                identity: Identity::Anonymous,
            },
            keys: RwLock::new(Arc::new(KeySet::default())),
            keys_file: config.auth.keys_file.clone(),
            keys_file_seen: Mutex::new(None),
            inline_keys: config.auth.keys.clone(),
            clients,
            methods,
            quotas: RequestQuotas::new(config.quota.clone()),
        };
        let file = auth.read_keys_file();
        let keys = auth.parse_keys(file.as_ref()).map_err(|errors| {
            anyhow::anyhow!("the API keys cannot be loaded:\n  {}", errors.join("\n  "))
        })?;
        *auth.keys_file_seen.lock() = file.and_then(Result::ok);
        metrics::gauge!("flowstate_auth_reload_failing").set(0.0);
        metrics::gauge!("flowstate_auth_keys").set(keys.len() as f64);
        *auth.keys.write() = Arc::new(keys);
        Ok(auth)
    }

    /// Whether calls must authenticate.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The tenants callers can act for now: those of the keys in force and of
    /// `auth.clients` (with authentication off, `server.tenant`).
    pub fn tenants(&self) -> std::collections::BTreeSet<String> {
        if self.mode == AuthMode::None {
            return [self.anonymous.tenant.as_str().to_owned()].into();
        }
        let keys = self.keys.read().clone();
        keys.tenants()
            .chain(self.clients.values().map(|(t, _)| t))
            .map(|t| t.as_str().to_owned())
            .collect()
    }

    /// How many keys are in force.
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// The keys file's bytes (`None`: there is no keys file).
    fn read_keys_file(&self) -> Option<std::io::Result<Vec<u8>>> {
        self.keys_file.as_ref().map(std::fs::read)
    }

    /// The keys of `auth.keys` and of the keys file's bytes `file`, parsed.
    fn parse_keys(&self, file: Option<&std::io::Result<Vec<u8>>>) -> Result<KeySet, Vec<String>> {
        let inline = match &self.inline_keys {
            Some(text) => KeySet::parse(&text.replace(';', "\n"), "auth.keys")?,
            None => KeySet::default(),
        };
        let (Some(path), Some(file)) = (&self.keys_file, file) else {
            return Ok(inline);
        };
        let source = path.display().to_string();
        let bytes = file.as_ref().map_err(|e| vec![format!("{source}: {e}")])?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| vec![format!("{source}: not UTF-8 text")])?;
        inline.merge(KeySet::parse(text, &source)?)
    }

    /// Loads the keys from the keys file's bytes `file`; on any error the keys in force stay
    /// and the errors are returned.
    fn reload_keys(&self, file: Option<&std::io::Result<Vec<u8>>>) -> Result<usize, Vec<String>> {
        let keys = self.parse_keys(file)?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        metrics::gauge!("flowstate_auth_keys").set(n as f64);
        Ok(n)
    }

    /// The caller of a request with `headers`, and `certs` (the verified client certificate
    /// chain, if any), for the method at `path`.
    fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<Caller, Refusal> {
        // Every flowstate method is in the table (checked at start-up), so anything else is
        // refused here rather than left to whatever a future router might serve.
        let needed = *self.methods.get(path).ok_or(Denied::UnknownMethod)?;
        let caller = match self.mode {
            AuthMode::None => self.anonymous.clone(),
            AuthMode::Required => self.identify(headers, certs)?,
        };
        if !caller.permissions.allows(needed) {
            return Err((Denied::Forbidden(needed), caller).into());
        }
        if !self.quotas.admit(&caller.tenant) {
            return Err((Denied::OverQuota, caller).into());
        }
        Ok(caller)
    }

    fn identify(
        &self,
        headers: &http::HeaderMap,
        certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<Caller, Denied> {
        if let Some(caller) = certs.and_then(|c| self.certificate_caller(c)) {
            return Ok(caller);
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
            })
            .ok_or(Denied::Unauthenticated)?;
        let keys = self.keys.read().clone();
        let entry = keys.verify(presented).ok_or(Denied::Unauthenticated)?;
        Ok(Caller {
            tenant: entry.tenant.clone(),
            permissions: entry.permissions,
            identity: Identity::Key(entry.id.clone()),
        })
    }

    /// The caller a verified client certificate names, if `auth.clients` lists exactly one
    /// of its subject alternative names. A certificate naming several listed identities is
    /// refused: which one it acts as must never depend on the order of its SANs.
    fn certificate_caller(
        &self,
        chain: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Option<Caller> {
        let leaf = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
        let mut listed = leaf
            .valid_uri_names()
            .chain(leaf.valid_dns_names())
            .filter(|san| self.clients.contains_key(*san));
        let san = listed.next()?;
        if let Some(other) = listed.next() {
            tracing::warn!(
                first = san,
                second = other,
                "a client certificate names several auth.clients identities: refused"
            );
            return None;
        }
        let (tenant, permissions) = self.clients.get(san)?;
        Some(Caller {
            tenant: tenant.clone(),
            permissions: *permissions,
            identity: Identity::Certificate(san.to_owned()),
        })
    }
}

/// Re-reads the keys every `every` while the keys file changes, until `stop` turns true. A bad
/// file keeps the keys in force and logs each bad line.
pub async fn watch_keys(
    auth: Arc<Authenticator>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Some(path) = auth.keys_file.clone() else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let file = auth.read_keys_file();
        {
            let bytes = file.as_ref().and_then(|f| f.as_ref().ok());
            let mut seen = auth.keys_file_seen.lock();
            if bytes == seen.as_ref() {
                continue;
            }
            *seen = bytes.cloned();
        }
        match auth.reload_keys(file.as_ref()) {
            Ok(n) => {
                metrics::counter!("flowstate_auth_reloads_total", "result" => "ok").increment(1);
                metrics::gauge!("flowstate_auth_reload_failing").set(0.0);
                tracing::info!(keys = n, file = %path.display(), "API keys reloaded");
            }
            Err(errors) => {
                metrics::counter!("flowstate_auth_reloads_total", "result" => "error").increment(1);
                metrics::gauge!("flowstate_auth_reload_failing").set(1.0);
                tracing::error!(
                    file = %path.display(),
                    errors = %errors.join("; "),
                    "the keys file is invalid: the keys in force stay"
                );
            }
        }
    }
}

/// Identifies and authorizes every call (see the module docs).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// The layer over `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = crate::middleware::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if crate::middleware::is_probe(path) {
            let call = self.inner.call(req);
            return Box::pin(async move { call.await.map_err(Into::into) });
        }
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let decision =
            self.layer
                .auth
                .authorize(path, req.headers(), certs.as_deref().map(Vec::as_slice));
        match decision {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let call = self.inner.call(req);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Err(Refusal { denied, caller }) => {
                let (reason, status) = match denied {
                    Denied::UnknownMethod => {
                        ("unknown_method", Status::unimplemented("no such method"))
                    }
                    Denied::Unauthenticated => (
                        "unauthenticated",
                        Status::unauthenticated(
                            "send a valid API key as `authorization: Bearer <key>` (or a \
                             listed client certificate)",
                        ),
                    ),
                    Denied::Forbidden(p) => (
                        "permission_denied",
                        Status::permission_denied(format!("this call needs the {p} permission")),
                    ),
                    Denied::OverQuota => (
                        "quota",
                        Status::resource_exhausted(
                            "the tenant is over its request quota; retry with backoff",
                        ),
                    ),
                };
                // The tenant label is bounded by the tenants the keys and auth.clients name;
                // an unidentified caller has none.
                let tenant = caller.as_ref().map_or("", |c| c.tenant.as_str()).to_owned();
                metrics::counter!("flowstate_auth_denied_total", "reason" => reason, "tenant" => tenant)
                    .increment(1);
                match &caller {
                    // A tenant over its quota is refused often and expectedly: debug only.
                    Some(c) if denied == Denied::OverQuota => tracing::debug!(
                        path,
                        reason,
                        tenant = %c.tenant,
                        caller = %c.identity,
                        "call refused"
                    ),
                    Some(c) => tracing::info!(
                        path,
                        reason,
                        tenant = %c.tenant,
                        caller = %c.identity,
                        "call refused"
                    ),
                    None => tracing::debug!(path, reason, "call refused"),
                }
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
