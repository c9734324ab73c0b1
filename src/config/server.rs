//! The server's own sections: `[server]` (listener, deadlines, limits, shutdown), `[log]`,
//! `[metrics]` and `[tracing]`.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{PositiveDuration, nonzero, require_positive};

/// gRPC server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address the gRPC server listens on. Loopback by default; containers bind `0.0.0.0:50051`.
    pub listen: SocketAddr,
    /// Deadline for a call that sends no `grpc-timeout`, and the cap for one that does.
    pub request_timeout: PositiveDuration,
    /// Requests in progress across all connections; beyond it calls get RESOURCE_EXHAUSTED at once.
    pub max_concurrent_requests: NonZeroUsize,
    /// On SIGTERM/SIGINT: how long in-flight calls may take to finish before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: NonZeroUsize,
    /// Connections older than this are asked to reconnect (HTTP/2 GOAWAY; calls in flight get
    /// `request_timeout` to finish): client certificates are verified again, new replicas get
    /// their share of long-lived clients. 0: never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// Tenant every request acts for while authentication is off (`auth.mode = none`).
    pub tenant: String,
    /// Serve gRPC server reflection (grpcurl without proto files). Off hides the API's shape
    /// from anyone who can reach the port.
    pub reflection: bool,
    /// A second, plaintext listener that serves `grpc.health.v1` only, for probes that cannot
    /// speak TLS (the kubelet's gRPC probes) when the main port is TLS. Unset: none.
    pub health_listen: Option<SocketAddr>,
    /// TLS for the gRPC listener.
    pub tls: TlsConfig,
}

/// TLS for the gRPC listener (`[server.tls]`): on when `cert_file` is set. Every file is
/// re-read when it changes (cert-manager rotates them), without a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates (mTLS); unset: no client
    /// certificates are asked for.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: whether a client certificate is `required` or `optional` (then a
    /// caller may use an API key instead).
    pub client_auth: ClientAuth,
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Every connection presents a certificate signed by `client_ca_file`.
    #[default]
    Required,
    /// A certificate is verified when presented; connections without one are accepted.
    Optional,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            request_timeout: PositiveDuration::from_secs(nonzero!(5)),
            max_concurrent_requests: nonzero!(4096),
            shutdown_grace: Duration::from_secs(10),
            max_message_bytes: nonzero!(4 * 1024 * 1024),
            max_connection_age: Duration::from_secs(30 * 60),
            tenant: "default".to_owned(),
            reflection: true,
            health_listen: None,
            tls: TlsConfig::default(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `flowstate=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// The Prometheus endpoint (an admin HTTP listener, apart from gRPC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Address of the metrics listener (containers: `0.0.0.0:9464`).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// OpenTelemetry traces: a span per gRPC call and per store round trip, sent over OTLP/gRPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TracingConfig {
    /// Where to send spans (an OpenTelemetry Collector, Tempo, Jaeger: `http://collector:4317`).
    /// Empty: tracing is off, and costs nothing (no layer is installed).
    pub otlp_endpoint: String,
    /// Share of traces started here that are recorded, 0 to 1. A call whose caller sent a
    /// `traceparent` follows the caller's decision instead (parent-based sampling), so a trace
    /// is never cut in the middle.
    pub sample_ratio: f64,
    /// `service.name` of the spans (`OTEL_RESOURCE_ATTRIBUTES` adds further attributes).
    pub service_name: String,
    /// How long one export may take before it is abandoned (spans are dropped, never queued
    /// without bound).
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Spans kept waiting for export; beyond it new spans are dropped (and counted by the SDK).
    pub max_queue_size: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            sample_ratio: 0.1,
            service_name: "flowstate".to_owned(),
            export_timeout: Duration::from_secs(5),
            max_queue_size: 8192,
        }
    }
}

impl TracingConfig {
    /// Whether spans are exported at all.
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }

    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            bad.push(format!(
                "`tracing.sample_ratio` must be between 0 and 1, not {}",
                self.sample_ratio
            ));
        }
        if self.enabled() {
            let scheme_ok = self.otlp_endpoint.starts_with("http://")
                || self.otlp_endpoint.starts_with("https://");
            if !scheme_ok || self.otlp_endpoint.parse::<http::Uri>().is_err() {
                bad.push(format!(
                    "`tracing.otlp_endpoint` must be an http:// or https:// URL (OTLP over gRPC, e.g. http://collector:4317), not {:?}",
                    self.otlp_endpoint
                ));
            }
            require_positive(
                bad,
                "tracing.export_timeout",
                !self.export_timeout.is_zero(),
            );
            require_positive(bad, "tracing.max_queue_size", self.max_queue_size > 0);
            if self.service_name.trim().is_empty() {
                bad.push("`tracing.service_name` must not be empty".to_owned());
            }
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl ServerConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            bad.push("`server.tls.cert_file` and `server.tls.key_file` go together".to_owned());
        }
        if tls.client_ca_file.is_some() && tls.cert_file.is_none() {
            bad.push("`server.tls.client_ca_file` needs `server.tls.cert_file`".to_owned());
        }
        if crate::tenant::Tenant::new(&self.tenant).is_none() {
            bad.push(
                "`server.tenant` must be 1-64 characters of A-Z a-z 0-9 _ . -, not starting with _"
                    .to_owned(),
            );
        }
    }
}
