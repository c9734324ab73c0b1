//! Logs and traces: the `tracing` subscriber, and (when `tracing.otlp_endpoint` is set) an
//! OpenTelemetry layer that sends a span per gRPC call and per store round trip over OTLP/gRPC.
//!
//! Tracing off costs nothing: no OpenTelemetry layer is installed, and the spans flowstate opens
//! on every call are `debug` spans, which the usual `info` log filter disables at their call site
//! (one relaxed atomic load). Tracing on gives those spans a second, per-layer filter of their
//! own, so traces never depend on the log level and the log level never fills the traces.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{Context, propagation::Extractor, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{BatchConfigBuilder, Sampler, SdkTracerProvider, span_processor_with_async_runtime},
};
use tracing::{Level, Metadata, subscriber::Interest};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt,
    layer::{self, Filter, SubscriberExt},
    util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat, TracingConfig};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] sends what is still queued.
#[must_use = "dropping it loses the spans still queued at exit"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (bounded by `tracing.export_timeout`). Call it from outside
    /// the runtime's worker threads, while the runtime is still alive: the exporter runs on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
    }
}

/// Installs the global subscriber: `log.level` as the filter (`RUST_LOG` wins when set, for a
/// one-off debug session), pretty or JSON lines on stderr; plus the OpenTelemetry layer when
/// `tracing` is enabled. Call it inside the Tokio runtime that serves: the exporter's batches are
/// sent from a task on it.
pub fn init(log: &LogConfig, traces: &TracingConfig) -> anyhow::Result<Telemetry> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(&log.level)
            .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", log.level))?,
    };
    // Colour codes only for a person at a terminal: never into pipes, files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let lines = match log.format {
        LogFormat::Pretty => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let (provider, spans) = if traces.enabled() {
        let provider = provider(traces)?;
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("flowstate"))
            // Thread names, source locations and idle/busy times: noise in a trace that costs
            // time on every span.
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            // Nothing here reads the OpenTelemetry context of the current thread, so entering a
            // span (every poll of a call's future) need not install it.
            .with_context_activation(false)
            .with_filter(Traced);
        (Some(provider), Some(layer))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))?;
    if traces.enabled() {
        tracing::info!(
            endpoint = %traces.otlp_endpoint,
            sample_ratio = traces.sample_ratio,
            "sending traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

/// What becomes part of a trace: flowstate's own spans (the call, the store round trips) and
/// warnings and errors logged inside them (as span events). Debug events stay out: they would
/// make every span heavier.
fn traced(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        meta.target().starts_with("flowstate")
    } else {
        *meta.level() <= Level::WARN
    }
}

/// [`traced`] as a per-layer filter decided once per call site (a closure filter would be asked
/// again at every span and event, including every debug event the log filter turned off).
struct Traced;

impl<S> Filter<S> for Traced {
    fn enabled(&self, meta: &Metadata<'_>, _: &layer::Context<'_, S>) -> bool {
        traced(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if traced(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::DEBUG)
    }
}

fn provider(traces: &TracingConfig) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&traces.otlp_endpoint)
        .with_timeout(traces.export_timeout);
    if traces.otlp_endpoint.starts_with("https://") {
        exporter = exporter.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .with_webpki_roots()
                .domain_name(
                    traces
                        .otlp_endpoint
                        .parse::<http::Uri>()?
                        .host()
                        .unwrap_or_default()
                        .to_owned(),
                ),
        );
    }
    let exporter = exporter
        .build()
        .map_err(|e| anyhow::anyhow!("tracing.otlp_endpoint {:?}: {e}", traces.otlp_endpoint))?;
    let batches =
        span_processor_with_async_runtime::BatchSpanProcessor::builder(exporter, runtime::Tokio)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(traces.max_queue_size)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .with_max_export_timeout(traces.export_timeout)
                    .build(),
            )
            .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Sampling is decided when a call arrives (`head_sample`): a span that exists is wanted.
    let _ = SAMPLE_RATIO.set(traces.sample_ratio);
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build())
}

/// `tracing.sample_ratio` while traces are exported; unset while tracing is off.
static SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();

/// Whether a call is traced, decided when it arrives (head sampling).
pub enum Decision {
    /// Tracing is off: the call's span exists only for debug logs (disabled at `info`).
    Off,
    /// Not sampled: no span at all, so an unsampled call costs a header lookup and a random
    /// draw rather than spans that would be built and then thrown away.
    Drop,
    /// Traced, as a child of this context (empty: the call starts a trace).
    Trace(Context),
}

/// Samples a call: a caller's `traceparent` decides by its sampled flag (the trace is never cut
/// in the middle); a call without one is traced with probability `tracing.sample_ratio`.
pub fn head_sample(headers: &http::HeaderMap) -> Decision {
    use opentelemetry::trace::TraceContextExt as _;
    let Some(&ratio) = SAMPLE_RATIO.get() else {
        return Decision::Off;
    };
    let parent = remote_context(headers);
    let sampled = {
        let remote = parent.span();
        let remote = remote.span_context();
        if remote.is_valid() {
            remote.is_sampled()
        } else {
            ratio >= 1.0 || rand::random::<f64>() < ratio
        }
    };
    if sampled {
        Decision::Trace(parent)
    } else {
        Decision::Drop
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) a caller sent in its metadata, if any.
/// Without the propagator (tracing off) the context is empty.
pub fn remote_context(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_in_the_metadata_becomes_the_parent() {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = remote_context(&headers);
        let remote = cx.span().span_context().clone();
        assert!(remote.is_remote() && remote.is_sampled());
        assert_eq!(
            remote.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(remote.span_id().to_string(), "00f067aa0ba902b7");
        let none = remote_context(&http::HeaderMap::new());
        assert!(!none.span().span_context().is_valid());
    }
}
