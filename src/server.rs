//! Wires config, store, health, reflection and the gRPC services into one server.
//!
//! [`run`] takes the listener and the shutdown signal as arguments so tests can bind
//! `127.0.0.1:0` and stop the server when they like; `main` passes a real socket and SIGTERM/SIGINT.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::server::TcpIncoming;
use tower::ServiceBuilder;

use crate::{
    auth::{self, AuthLayer, Authenticator, config::AuthMode},
    config::Config,
    health::{self, Health},
    middleware::{AdmissionLayer, DeadlineLayer, TraceLayer, layer_error_to_status},
    observe::{self, RpcMetricsLayer},
    proto,
    services::{self, Wiring},
    store::Backend,
    tls::{Acceptor, TlsFiles},
};

/// Opens the backend the configuration asks for and says loudly which one it is.
pub fn open_backend(config: &Config) -> anyhow::Result<Backend> {
    let backend = Backend::open(config).context("setting up the store")?;
    match &backend {
        Backend::Redis(r) => tracing::info!(
            store = "redis",
            url = r.display_url(),
            pool_size = config.redis.pool_size,
            "store: Redis"
        ),
        Backend::Memory(_) => tracing::warn!(
            store = "memory",
            "store: embedded in-memory store. State is process-local and lost on restart; \
             set redis.url (FLOWSTATE_REDIS__URL) to use Redis"
        ),
    }
    Ok(backend)
}

/// Quota settings that cannot do what they seem to: overrides for tenants no key or client
/// certificate names (a typo applies nothing), and tenants sharing the memory store without
/// per-tenant caps (one of them can fill it for all).
fn warn_about_quotas(config: &Config, auth: &Authenticator, backend: &Backend) {
    let tenants = auth.tenants();
    for name in config.quota.tenants.keys() {
        if !tenants.contains(name) {
            tracing::warn!(
                tenant = %name,
                "quota.tenants.{name}: no API key or auth.clients entry acts for this tenant \
                 (yet); the override applies to nobody until one does"
            );
        }
    }
    let quota = &config.quota;
    if matches!(backend, Backend::Memory(_))
        && auth.mode() == AuthMode::Required
        && (quota.memory_sessions == 0
            || quota.memory_cache_bytes == 0
            || quota.memory_counters == 0)
    {
        tracing::warn!(
            "tenants share the memory store without a cap each: set quota.memory_sessions, \
             quota.memory_cache_bytes and quota.memory_counters, or one tenant can fill it for all"
        );
    }
}

/// Reflection over every descriptor a caller may meet: flowstate's own, grpc.health.v1 (or
/// grpcurl cannot describe Health) and google.rpc (so error details such as BadRequest decode).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Serves gRPC on `listener` until `shutdown` completes, then drains: health turns NOT_SERVING,
/// no new connections are accepted, and in-flight calls get `server.shutdown_grace` to finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let backend = open_backend(&config)?;
    serve(config, backend, listener, shutdown).await
}

/// [`run`] on a backend the caller opened (with [`open_backend`]): a test keeps a clone to look
/// at what the stores hold.
pub async fn serve(
    config: Config,
    backend: Backend,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let auth = Arc::new(Authenticator::new(&config, &services::permissions())?);
    match auth.mode() {
        AuthMode::None => tracing::warn!(
            tenant = %config.server.tenant,
            "authentication is OFF (auth.mode = none): anyone who reaches this port acts for \
             tenant {} with every permission; set auth.mode = required in production",
            config.server.tenant
        ),
        AuthMode::Required => tracing::info!(
            keys = auth.key_count(),
            client_identities = config.auth.clients.len(),
            "authentication required: API keys and client certificates"
        ),
    }
    warn_about_quotas(&config, &auth, &backend);
    let tls = match TlsFiles::from_config(&config.server.tls) {
        Some(files) => Some(Acceptor::new(files).context("setting up TLS")?),
        None => {
            tracing::warn!("TLS is off: calls and API keys travel in plaintext");
            None
        }
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    // Bound before anything else starts, so a taken port stops start-up with its name.
    let health_listener = match config.server.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding server.health_listen {addr}"))?,
        ),
        None => None,
    };
    let health = Health::new(reporter).await;
    let (stop_tasks, tasks_stop) = watch::channel(false);
    let mut tasks = vec![(
        "health",
        tokio::spawn(health::watch_store(
            backend.clone(),
            health.clone(),
            config.redis.health_interval.get(),
            tasks_stop,
        )),
    )];
    tasks.push((
        "keys watcher",
        tokio::spawn(auth::watch_keys(
            auth.clone(),
            config.auth.reload_interval.get(),
            stop_tasks.subscribe(),
        )),
    ));
    if let Some(tls) = &tls {
        tasks.push((
            "TLS watcher",
            tokio::spawn(
                tls.clone()
                    .watch(config.auth.reload_interval.get(), stop_tasks.subscribe()),
            ),
        ));
    }

    // Both reflection versions: grpcurl 1.8 speaks only v1alpha, newer tools prefer v1.
    let (reflection_v1, reflection_v1alpha) = if config.server.reflection {
        (
            Some(reflection().build_v1().context("building reflection v1")?),
            Some(
                reflection()
                    .build_v1alpha()
                    .context("building reflection v1alpha")?,
            ),
        )
    } else {
        (None, None)
    };

    // Every service of the registry: its store, domain, gRPC server, tasks and metric hooks.
    let mut wiring = Wiring::new(&config, &backend, stop_tasks.subscribe())?;
    wiring.mount_all()?;
    let (routes, service_tasks, hooks) = wiring.finish();
    tasks.extend(service_tasks);
    tasks.push((
        "metrics collector",
        tokio::spawn(observe::collect(
            hooks,
            backend.clone(),
            Duration::from_secs(1),
            stop_tasks.subscribe(),
        )),
    ));

    // The one tower stack, outermost first.
    let stack = ServiceBuilder::new()
        // Count and time every call by service, method and final status code, including the
        // ones the layers below answer themselves (refused, shed, timed out).
        .layer(RpcMetricsLayer::new())
        // A `grpc` span around everything below (the server span of a trace, continuing the
        // caller's `traceparent`).
        .layer(TraceLayer)
        // Errors raised by the layers below become proper gRPC statuses instead of reset
        // streams; a message over server.max_message_bytes is RESOURCE_EXHAUSTED.
        .map_result(layer_error_to_status)
        // Who calls, for which tenant, with which permissions, within its tenant's request
        // quota (health and reflection need no caller). Before admission: a refused call must
        // not take a slot from the others.
        .layer(AuthLayer::new(auth))
        // At most max_concurrent_requests calls at once across all connections; the rest get
        // RESOURCE_EXHAUSTED at once. Health checks and reflection are never counted or shed.
        .layer(AdmissionLayer::new(
            config.server.max_concurrent_requests.get(),
        ))
        // Every call gets a deadline (grpc-timeout capped by request_timeout) and a span.
        .layer(DeadlineLayer::new(config.server.request_timeout.get()))
        .into_inner();

    if let Some(listener) = health_listener {
        // Health only, plaintext, no auth: what a probe needs and nothing more. It answers
        // whoever reaches it (the kubelet probes from the node), so it is bounded: few
        // streams per connection, a deadline per call, and connections (Watch streams
        // included) recycled after a minute.
        let health_service = health_service.clone();
        let request_timeout = config.server.request_timeout;
        let mut stop = stop_tasks.subscribe();
        tracing::info!(listen = ?listener.local_addr().ok(), "plaintext health listener for probes");
        tasks.push((
            "health listener",
            tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .concurrency_limit_per_connection(4)
                    .max_concurrent_streams(4)
                    .timeout(request_timeout.get())
                    .max_connection_age(Duration::from_secs(60))
                    .max_connection_age_grace(Duration::from_secs(5))
                    .add_service(health_service)
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    )
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the health listener failed");
                }
            }),
        ));
    }

    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let local = listener
        .local_addr()
        .map_or_else(|_| config.server.listen.to_string(), |a| a.to_string());
    let mut builder = tonic::transport::Server::builder();
    if !config.server.max_connection_age.is_zero() {
        builder = builder
            .max_connection_age(config.server.max_connection_age)
            .max_connection_age_grace(config.server.request_timeout.get());
    }
    let router = builder
        .layer(stack)
        .add_routes(routes)
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);
    let stopped = async {
        let _ = accepting_stopped.await;
    };
    let serve: BoxFuture<'_, Result<(), tonic::transport::Error>> = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener), stopped)),
        // TCP_NODELAY: small gRPC replies must not wait for the peer's delayed ACK (~40 ms).
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )),
    };
    tracing::info!(
        listen = %local,
        store = backend.kind().as_str(),
        tls = config.server.tls.cert_file.is_some(),
        "flowstate serving gRPC"
    );

    tokio::pin!(serve);
    let outcome = tokio::select! {
        result = &mut serve => Some(result.context("gRPC server failed")),
        () = shutdown => None,
    };
    let result = match outcome {
        Some(result) => result,
        None => {
            tracing::info!(
                grace = ?config.server.shutdown_grace,
                "shutdown requested: health NOT_SERVING, draining in-flight calls"
            );
            health.begin_shutdown().await;
            let _ = stop_accepting.send(());
            match tokio::time::timeout(config.server.shutdown_grace, &mut serve).await {
                Ok(result) => result.context("gRPC server failed while draining"),
                Err(_) => {
                    tracing::warn!("shutdown grace period over; abandoning unfinished calls");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tasks.send(true);
    for (name, task) in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, task = name, "background task ended abnormally");
        }
    }
    tracing::info!("flowstate stopped");
    result
}
