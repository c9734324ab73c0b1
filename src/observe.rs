//! Prometheus metrics: the exporter, the RPC metrics layer, and the collector that publishes
//! figures kept elsewhere (cache counts, pool state).
//!
//! Label cardinality is bounded by construction: service and method come from the descriptor
//! sets of the services this server has (anything else is `unknown`), codes from the 17 gRPC codes, cache
//! namespaces from configuration plus a capped number of others, limits from configuration plus
//! `inline`. Keys and user ids never become labels.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::sync::watch;
use tonic::body::Body;
use tower::{BoxError, Layer, Service};

use crate::store::Backend;

/// Latency buckets, in seconds: 50 µs to 5 s, dense below a millisecond where flowstate lives.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
];

/// Installs the global recorder and serves `/metrics` on `listen`. Call once, inside a Tokio
/// runtime, before the server is built (metric handles created earlier would be no-ops).
pub fn install(listen: SocketAddr, store_kind: &'static str) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), BUCKETS)?
        .install()
        .map_err(|e| anyhow::anyhow!("metrics listener on {listen}: {e}"))?;
    describe();
    metrics::gauge!(
        "flowstate_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "store" => store_kind
    )
    .set(1.0);
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "flowstate_rpc_requests_total",
        "gRPC calls by service, method and status code."
    );
    describe_histogram!(
        "flowstate_rpc_duration_seconds",
        "gRPC call latency by service and method."
    );
    describe_histogram!(
        "flowstate_store_duration_seconds",
        "Store round-trip latency by operation."
    );
    describe_counter!(
        "flowstate_store_errors_total",
        "Store failures by operation and kind."
    );
    describe_gauge!(
        "flowstate_store_up",
        "1 while the store answers its health probes and takes writes."
    );
    describe_gauge!(
        "flowstate_store_pool_connections",
        "Redis pool connections by state (open, idle, in_use)."
    );
    describe_gauge!(
        "flowstate_store_pool_waiting",
        "Callers waiting for a Redis pool connection."
    );
    describe_counter!(
        "flowstate_cache_requests_total",
        "Cache lookups by namespace and result (hit, miss, stale)."
    );
    describe_counter!(
        "flowstate_cache_leases_total",
        "Cache leases granted by namespace."
    );
    describe_counter!(
        "flowstate_cache_sets_total",
        "Cache writes stored by namespace."
    );
    describe_counter!(
        "flowstate_cache_evictions_total",
        "Memory-store cache entries evicted for space, by namespace."
    );
    describe_counter!(
        "flowstate_ratelimit_decisions_total",
        "Rate-limit check results by limit and decision (allowed, denied, not_enforced)."
    );
    describe_counter!(
        "flowstate_sessions_total",
        "Session events: created, rotated, deleted, missed (absent or expired on read)."
    );
    describe_counter!(
        "flowstate_cache_near_requests_total",
        "Near-tier lookups of near namespaces by result (hit: answered with no Redis call)."
    );
    describe_counter!(
        "flowstate_cache_near_invalidations_total",
        "Invalidations Redis pushed to this replica's near tier (keys changed, expired, evicted)."
    );
    describe_counter!(
        "flowstate_cache_near_resyncs_total",
        "Times the near tier's tracking connection was (re)opened, the tier flushed and refilled."
    );
    describe_gauge!(
        "flowstate_cache_near_serving",
        "1 while the near tier serves hits (its tracking connection is up)."
    );
    describe_gauge!(
        "flowstate_cache_near_entries",
        "Entries in this replica's near tier."
    );
    describe_gauge!(
        "flowstate_cache_near_bytes",
        "Bytes (keys and values) in this replica's near tier."
    );
    describe_gauge!(
        "flowstate_build_info",
        "Version and store kind of this process."
    );
    describe_counter!(
        "flowstate_store_retries_total",
        "Store calls resent because Redis refused them without running them (failover, resharding), by op."
    );
    describe_counter!(
        "flowstate_ratelimit_refund_failures_total",
        "Cluster: reservations of a multi-slot Check that could not be refunded (they stay consumed until their window passes)."
    );
    describe_counter!(
        "flowstate_session_write_concern_missed_total",
        "Session writes not confirmed by session.write_concern.replicas replicas in time (answered UNAVAILABLE), by op."
    );
    describe_counter!(
        "flowstate_auth_denied_total",
        "Calls refused by authentication or authorization, by reason (unauthenticated, \
         permission_denied, quota, unknown_method) and tenant (empty when unidentified)."
    );
    describe_gauge!("flowstate_auth_keys", "API keys in force.");
    describe_counter!(
        "flowstate_auth_reloads_total",
        "Keys file reloads after a change, by result (ok, error)."
    );
    describe_gauge!(
        "flowstate_auth_reload_failing",
        "1 while the keys file on disk is invalid and the previous keys stay in force."
    );
    describe_counter!(
        "flowstate_tls_reloads_total",
        "TLS file reloads after a change, by result (ok, error)."
    );
    describe_gauge!(
        "flowstate_tls_reload_failing",
        "1 while the TLS files on disk cannot be used and the previous ones stay in force."
    );
    describe_gauge!(
        "flowstate_tls_certificate_expiry_timestamp_seconds",
        "When the server certificate in force expires (Unix time)."
    );
    describe_counter!(
        "flowstate_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out (plaintext clients included)."
    );
    describe_counter!(
        "flowstate_rls_requests_total",
        "Envoy rate limit requests by domain and overall code (ok, over_limit)."
    );
    describe_counter!(
        "flowstate_rls_hits_total",
        "Envoy rate limit hits (hits_addend units) by domain, rule and result."
    );
    describe_gauge!("flowstate_rls_rules", "Envoy rate limit rules in force.");
    describe_counter!(
        "flowstate_rls_config_loads_total",
        "Envoy rate limit rule reloads after a change, by result."
    );
    describe_gauge!(
        "flowstate_rls_config_reload_failing",
        "1 while the rules files on disk are invalid and the previous rules stay in force."
    );
    describe_counter!(
        "flowstate_rls_global_shadow_mode_total",
        "Requests answered OK by rls.shadow_mode that were over a limit."
    );
    describe_gauge!(
        "flowstate_memory_used_bytes",
        "Memory store: bytes its state is charged (sessions, counters, locks, queues, usage)."
    );
    describe_gauge!(
        "flowstate_memory_max_bytes",
        "Memory store: its budget (memory.max_bytes); new state is refused past it."
    );
    describe_counter!(
        "flowstate_admission_shed_total",
        "Calls refused with RESOURCE_EXHAUSTED at server.max_concurrent_requests (load shedding)."
    );
    describe_counter!(
        "flowstate_usage_events_total",
        "Usage events recorded, by metric (configured ones; others as _other)."
    );
}

/// Every known RPC as `(service, method)`, from the descriptor sets of every service served
/// (so a new service is labelled without edits here).
static RPC_LIST: std::sync::LazyLock<Vec<(String, String)>> = std::sync::LazyLock::new(|| {
    crate::proto::all_services()
        .into_iter()
        .flat_map(|s| {
            let service = s.name;
            s.methods.into_iter().map(move |m| (service.clone(), m))
        })
        .collect()
});

/// The service and method a request path names, if this server has them (so a trace never
/// carries a made-up name a client sent).
pub fn known_rpc(path: &str) -> Option<(&'static str, &'static str)> {
    let (service, method) = &RPC_LIST[rpc_index(path)?];
    Some((service.as_str(), method.as_str()))
}

fn rpc_index(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    RPC_LIST
        .iter()
        .position(|(s, m)| s == service && m == method)
}

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Metric handles for every known RPC (plus one `unknown` slot at the end), registered once so
/// a call costs two atomic adds and a histogram record, not a registry lookup per label set.
struct RpcHandles {
    calls: Vec<[metrics::Counter; 17]>,
    latency: Vec<metrics::Histogram>,
}

impl RpcHandles {
    fn new() -> Self {
        let labels = RPC_LIST
            .iter()
            .map(|(s, m)| (s.as_str(), m.as_str()))
            .chain(std::iter::once(("unknown", "unknown")));
        let (mut calls, mut latency) = (Vec::new(), Vec::new());
        for (service, method) in labels {
            calls.push(CODES.map(|code| {
                metrics::counter!(
                    "flowstate_rpc_requests_total",
                    "service" => service.to_owned(),
                    "method" => method.to_owned(),
                    "code" => code
                )
            }));
            latency.push(metrics::histogram!(
                "flowstate_rpc_duration_seconds",
                "service" => service.to_owned(),
                "method" => method.to_owned()
            ));
        }
        Self { calls, latency }
    }
}

/// The status code of a response as an index into [`CODES`]. tonic sends a failed unary call as a trailers-only
/// response (`grpc-status` in the headers); a successful one carries its status in trailers, so
/// headers without `grpc-status` mean OK.
pub fn code_index(response: &Response<Body>) -> usize {
    const UNKNOWN: usize = 2;
    match response.headers().get("grpc-status") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|i| *i < CODES.len())
            .unwrap_or(UNKNOWN),
    }
}

/// Counts every call and times it, by service, method and status code. Build it after
/// [`install`]: the handles it registers are no-ops without a recorder.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    handles: Arc<RpcHandles>,
}

impl RpcMetricsLayer {
    /// Registers the handles of every known RPC.
    pub fn new() -> Self {
        Self {
            handles: Arc::new(RpcHandles::new()),
        }
    }
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    handles: Arc<RpcHandles>,
}

impl<S, B> Service<Request<B>> for RpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = crate::middleware::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let rpc = rpc_index(req.uri().path()).unwrap_or(RPC_LIST.len());
        let handles = self.handles.clone();
        let start = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            const INTERNAL: usize = 13;
            let code = result.as_ref().map_or(INTERNAL, code_index);
            handles.calls[rpc][code].increment(1);
            handles.latency[rpc].record(start.elapsed().as_secs_f64());
            result
        })
    }
}

/// Publishes figures kept as plain atomics on the hot path (cache counts) and pool state, every
/// `every`, until `stop` turns true.
pub async fn collect(
    hooks: Vec<crate::services::MetricsHook>,
    backend: Backend,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The process's own CPU seconds, resident memory, threads and file descriptors (Prometheus's
    // standard `process_*` names): the first limit a busy replica meets is usually its CPU.
    let process = metrics_process::Collector::default();
    process.describe();
    loop {
        process.collect();
        // Each service's figures (cache counts, index sizes), from its registration.
        for hook in &hooks {
            hook();
        }
        match &backend {
            Backend::Memory(m) => {
                let budget = m.budget();
                metrics::gauge!("flowstate_memory_used_bytes").set(budget.used() as f64);
                metrics::gauge!("flowstate_memory_max_bytes").set(budget.max_bytes() as f64);
            }
            Backend::Redis(r) => {
                let (open, idle, waiting) = r.pool_status();
                for (state, value) in [
                    ("open", open),
                    ("idle", idle),
                    ("in_use", open.saturating_sub(idle)),
                ] {
                    metrics::gauge!("flowstate_store_pool_connections", "state" => state)
                        .set(value as f64);
                }
                metrics::gauge!("flowstate_store_pool_waiting").set(waiting as f64);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_to_known_rpcs() {
        let i = rpc_index("/flowstate.v1.SessionService/CreateSession").expect("known");
        assert_eq!(
            RPC_LIST[i],
            (
                "flowstate.v1.SessionService".to_owned(),
                "CreateSession".to_owned()
            )
        );
        assert_eq!(rpc_index("/flowstate.v1.SessionService/Nope"), None);
        assert_eq!(rpc_index("/x"), None);
        let r = Response::builder()
            .header("grpc-status", "14")
            .body(Body::empty())
            .expect("response");
        assert_eq!(CODES[code_index(&r)], "UNAVAILABLE");
        assert_eq!(CODES[13], "INTERNAL");
    }
}
