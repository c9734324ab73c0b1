//! Tower layers every request passes through (assembled, with a comment per layer, in
//! [`crate::server`]).

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use tokio::sync::Semaphore;
use tonic::{Status, body::Body};
use tower::{BoxError, Layer, Service};
use tracing::Instrument;

/// The future of every flowstate tower layer: boxed, so a layer's type does not name its inner
/// service's future, and `'static`, as tonic's router requires. Every layer here has the same
/// shape: an `XLayer` (its configuration, cloned per connection), an `X<S>` wrapping the inner
/// service, and `Service::call` returning this.
pub type ResponseFuture<E = BoxError> = BoxFuture<'static, Result<Response<Body>, E>>;

/// Admits at most `limit` calls at once across all connections and answers the rest with
/// RESOURCE_EXHAUSTED at once (a queue would only turn overload into timeouts for everyone).
/// Health checks and reflection are never counted or refused: a probe that fails because the
/// server is busy would make Kubernetes restart a healthy pod, and grpcurl must work on a busy
/// server. (tonic's own concurrency limit is per HTTP/2 connection, hence this layer.)
#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    /// Calls refused (`flowstate_admission_shed_total`): what a load-shedding alert watches.
    shed: metrics::Counter,
}

impl AdmissionLayer {
    /// At most `limit` calls in progress.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            shed: metrics::counter!("flowstate_admission_shed_total"),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            permits: self.permits.clone(),
            shed: self.shed.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    shed: metrics::Counter,
}

/// Whether `path` is a call that must be answered whatever the load or the caller: health
/// checks and reflection.
pub fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if is_probe(req.uri().path()) {
            let call = self.inner.call(req);
            return Box::pin(async move { call.await.map_err(Into::into) });
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(req);
                Box::pin(async move {
                    let response = call.await.map_err(Into::into);
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                self.shed.increment(1);
                Box::pin(async {
                    Ok(Status::resource_exhausted(
                        "server is at its concurrency limit; retry with backoff",
                    )
                    .into_http())
                })
            }
        }
    }
}

/// Runs every call inside a `grpc` span: the server span of a trace (OpenTelemetry's RPC
/// conventions: `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), continuing
/// the caller's trace when its metadata carries a W3C `traceparent`. Outermost but for the
/// metrics, so calls refused by authentication or shed by admission are traced too.
///
/// A `debug` span: with tracing off and logs at `info` it is disabled at its call site and the
/// call costs one atomic load more than without this layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

/// gRPC codes that mark a server span as failed (OpenTelemetry's RPC conventions: the server's
/// fault, not the caller's): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS.
const SERVER_FAULTS: [usize; 6] = [2, 4, 12, 13, 14, 15];

impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let parent = match crate::telemetry::head_sample(req.headers()) {
            crate::telemetry::Decision::Off => None,
            crate::telemetry::Decision::Drop => return Box::pin(self.inner.call(req)),
            crate::telemetry::Decision::Trace(parent) => Some(parent),
        };
        let span = tracing::debug_span!(
            "grpc",
            otel.name = tracing::field::Empty,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = tracing::field::Empty,
            rpc.method = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            tenant = tracing::field::Empty,
            caller = tracing::field::Empty,
        );
        if span.is_disabled() {
            return Box::pin(self.inner.call(req));
        }
        let path = req.uri().path();
        let (service, method) = crate::observe::known_rpc(path).unwrap_or(("unknown", "unknown"));
        span.record(
            "otel.name",
            tracing::field::display(format_args!("{service}/{method}")),
        );
        span.record("rpc.service", service);
        span.record("rpc.method", method);
        if let Some(parent) = parent {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            // Without a traceparent the context is empty and the span starts a trace.
            if let Err(e) = span.set_parent(parent) {
                tracing::debug!(error = %e, "the caller's trace context was not applied");
            }
        }
        let call = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let result = call.await;
                if let Ok(response) = &result {
                    let code = crate::observe::code_index(response);
                    let current = tracing::Span::current();
                    // An int attribute, as the conventions have it (tracing-opentelemetry turns u64 into a string).
                    current.record("rpc.grpc.status_code", i64::try_from(code).unwrap_or(2));
                    if SERVER_FAULTS.contains(&code) {
                        current.record("otel.status_code", "ERROR");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Gives every call a deadline: the client's `grpc-timeout`, capped by `server.request_timeout`
/// (which is also the deadline of calls that send none). A call that runs out is answered with
/// DEADLINE_EXCEEDED; tonic's own `Server::timeout` would answer CANCELLED and a bare tower
/// `TimeoutLayer` would reset the stream. It also names the caller in the call's span (the
/// [`TraceLayer`]'s, opened before authentication knew who calls).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    /// Deadlines capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            max: self.max,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    max: Duration,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let timeout = grpc_timeout(req.headers()).map_or(self.max, |t| t.min(self.max));
        // Who the call is for (set by the auth layer; absent on probes): never a secret. One
        // atomic load when nothing records spans.
        if tracing::level_enabled!(tracing::Level::DEBUG)
            && let Some(caller) = req.extensions().get::<crate::auth::Caller>()
        {
            let span = tracing::Span::current();
            span.record("tenant", tracing::field::display(&caller.tenant));
            span.record("caller", tracing::field::display(&caller.identity));
        }
        let call =
            crate::deadline::scope(std::time::Instant::now() + timeout, self.inner.call(req));
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => {
                    tracing::debug!(?timeout, "deadline exceeded");
                    Ok(Status::deadline_exceeded(format!(
                        "deadline of {} ms exceeded",
                        timeout.as_millis()
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// Parses a `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`); `None` if absent or malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Turns errors raised by layers (not by handlers, which answer with a `Status` themselves)
/// into gRPC answers (INTERNAL) instead of reset streams, and a request message over
/// `server.max_message_bytes` into RESOURCE_EXHAUSTED (tonic answers OUT_OF_RANGE; the gRPC
/// status code spec says a message larger than the server accepts is RESOURCE_EXHAUSTED).
pub fn layer_error_to_status(
    result: Result<Response<Body>, BoxError>,
) -> Result<Response<Body>, BoxError> {
    Ok(match result {
        Ok(response) if is_message_too_large(&response) => Status::resource_exhausted(
            "the request message is larger than server.max_message_bytes",
        )
        .into_http(),
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "request failed in a server layer");
            Status::internal("internal error").into_http()
        }
    })
}

/// Whether `response` is tonic's refusal of a request message over the decoding limit.
fn is_message_too_large(response: &Response<Body>) -> bool {
    let headers = response.headers();
    headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // Percent-encoded by tonic: spaces are %20.
            .is_some_and(|m| m.contains("decoded%20message%20length%20too%20large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().expect("header value"));
        h
    }

    #[test]
    fn probes_are_recognised_by_path() {
        assert!(is_probe("/grpc.health.v1.Health/Check"));
        assert!(is_probe("/grpc.health.v1.Health/Watch"));
        assert!(is_probe(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_probe("/flowstate.v1.SessionService/GetSession"));
        assert!(!is_probe("/grpc.health.v1.HealthX/Check"));
    }

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&headers("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            grpc_timeout(&headers("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(grpc_timeout(&headers("5")), None);
        assert_eq!(grpc_timeout(&headers("5x")), None);
        assert_eq!(
            grpc_timeout(&headers("123456789S")),
            None,
            "more than 8 digits"
        );
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
