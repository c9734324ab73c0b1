//! The one configuration scheme: built-in defaults < TOML file (`--config`) < environment.
//!
//! Environment variables are `FLOWSTATE_` + the key path in upper case with `__` between levels:
//! `redis.url` is `FLOWSTATE_REDIS__URL`, `server.listen` is `FLOWSTATE_SERVER__LISTEN`.
//! Variables starting with `FLOWSTATE_TEST_` belong to the test suite and are not configuration.
//!
//! Everything is checked once, at start-up: an unknown key or a bad value is an error that names
//! the key and where it came from (the file or the environment variable), because a typo that is
//! silently ignored is how the platform this service replaces ran on mocks for months.
//!
//! Each section lives with what it configures: the server's and the stores' here, each domain's
//! in its own folder (`session/config.rs`, …), re-exported below.

mod load;
mod positive;
mod server;
mod store;

use serde::{Deserialize, Serialize};

pub(crate) use self::positive::nonzero;
pub use self::{
    load::ENV_PREFIX,
    positive::PositiveDuration,
    server::{
        ClientAuth, LogConfig, LogFormat, MetricsConfig, ServerConfig, TlsConfig, TracingConfig,
    },
    store::{MemoryConfig, RedisConfig, RedisMode, redact_url},
};
pub use crate::{
    auth::config::{AuthConfig, AuthMode, ClientIdentity, QuotaConfig, TenantQuota},
    cache::config::{CacheConfig, NamespacePolicy},
    events::config::{EventsConfig, TopicRetention},
    lock::config::LockConfig,
    queue::config::{QueuePolicy, QueuesConfig},
    ratelimit::config::{LimitConfig, RateLimitConfig, UsageLimitConfig, UsageWindow},
    rls::config::RlsConfig,
    semantic::config::{SemanticConfig, SemanticNamespace},
    session::config::SessionConfig,
    usage::config::{MetricConfig, Retention, UsageConfig},
};

/// The whole effective configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listener, deadlines, limits, shutdown.
    pub server: ServerConfig,
    /// Log format and filter.
    pub log: LogConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// OpenTelemetry traces over OTLP (off unless `tracing.otlp_endpoint` is set).
    pub tracing: TracingConfig,
    /// Redis store; used when `redis.url` is set or `redis.mode` is cluster or sentinel.
    pub redis: RedisConfig,
    /// Embedded in-memory store; used when no Redis is configured.
    pub memory: MemoryConfig,
    /// Session policy and input limits.
    pub session: SessionConfig,
    /// Cache namespaces, leases and input limits.
    pub cache: CacheConfig,
    /// Semantic cache namespaces (dimension, threshold, TTL, size) and index settings.
    pub semantic: SemanticConfig,
    /// Named rate limits and input limits.
    pub ratelimit: RateLimitConfig,
    /// Envoy's rate limit service: rules file, reloads, over-limit cache.
    pub rls: RlsConfig,
    /// Usage metering: retention, bounds, metrics.
    pub usage: UsageConfig,
    /// Lock bounds.
    pub locks: LockConfig,
    /// Event topics: retention, bounds.
    pub events: EventsConfig,
    /// Job queues: defaults, bounds, dead-job retention.
    pub queues: QueuesConfig,
    /// Authentication: API keys, client certificates.
    pub auth: AuthConfig,
    /// Per-tenant quotas.
    pub quota: QuotaConfig,
}

/// A configuration problem, naming the key and the source it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a value has the wrong type.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// Keys that flowstate does not know (typos, or settings of another version).
    #[error("unknown configuration key{}: {}", if .0.len() > 1 { "s" } else { "" }, .0.join(", "))]
    UnknownKeys(Vec<String>),
    /// Values that parsed but make no sense.
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

const REDACTED: &str = "***";

/// Adds "`key` must be greater than zero" to `bad` unless `ok`.
pub(crate) fn require_positive(bad: &mut Vec<String>, key: &str, ok: bool) {
    if !ok {
        bad.push(format!("`{key}` must be greater than zero"));
    }
}

impl Config {
    /// Checks values that parse but cannot work, naming every bad key at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bad = Vec::new();
        self.server.validate(&mut bad);
        self.tracing.validate(&mut bad);
        self.redis.validate(&mut bad);
        self.session.validate(&mut bad);
        self.cache.validate(&mut bad);
        self.semantic.validate(&mut bad);
        self.ratelimit.validate(&mut bad);
        self.rls.validate(&mut bad);
        self.usage.validate(&mut bad);
        self.locks.validate(&mut bad);
        self.events.validate(&mut bad);
        self.queues.validate(&mut bad);
        self.auth
            .validate(self.server.tls.client_ca_file.is_some(), &mut bad);
        self.quota.validate(&mut bad);
        if self.cache.any_near() && self.redis.mode == RedisMode::Cluster {
            bad.push(
                "`near = true` (cache namespaces) needs Redis standalone or sentinel: the near tier's \
                 invalidations come from one server's client tracking, which a cluster spreads over \
                 its nodes"
                    .to_owned(),
            );
        }
        if !self.semantic.namespaces.is_empty() && self.redis.mode == RedisMode::Cluster {
            bad.push(
                "`semantic.namespaces` needs Redis standalone or sentinel: each replica's index \
                 follows the namespaces' change logs over one server's client tracking"
                    .to_owned(),
            );
        }
        if self.session.write_concern.replicas > 0 && !self.redis.is_configured() {
            bad.push(
                "`session.write_concern.replicas` needs Redis: the memory store has no replicas"
                    .to_owned(),
            );
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(bad))
        }
    }

    /// The effective configuration as TOML with secrets replaced by `***` (the `config` command).
    pub fn to_redacted_toml(&self) -> String {
        let store = if self.redis.is_configured() {
            format!("# store: redis ({})\n", self.redis.mode.as_str())
        } else {
            "# store: memory (redis.url is not set)\n".to_owned()
        };
        let mut shown = self.clone();
        shown.redis.url = shown.redis.url.as_deref().map(redact_url);
        for url in shown
            .redis
            .nodes
            .iter_mut()
            .chain(&mut shown.redis.sentinels)
        {
            *url = redact_url(url);
        }
        for secret in [
            &mut shown.redis.password,
            &mut shown.redis.sentinel_password,
        ] {
            *secret = secret.as_ref().map(|_| REDACTED.to_owned());
        }
        match toml::to_string_pretty(&shown) {
            Ok(text) => format!("{store}{text}"),
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::ratelimit::FailureMode;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_use_the_memory_store() {
        let c = Config::load(None, env(&[])).expect("defaults load");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
        assert!(c.redis.url.is_none());
        assert_eq!(c.session.idle_timeout.get(), Duration::from_secs(86_400));
    }

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[redis]\nurl = \"redis://127.0.0.1:7000\"\npool_size = 3\n[session]\nidle_timeout = \"10m\"\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&path),
            env(&[
                ("FLOWSTATE_REDIS__POOL_SIZE", "5"),
                ("FLOWSTATE_TEST_REDIS_URL", "ignored"),
                ("OTHER", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:7000"));
        assert_eq!(c.redis.pool_size.get(), 5);
        assert_eq!(c.session.idle_timeout.get(), Duration::from_secs(600));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_source() {
        let err = Config::load(None, env(&[("FLOWSTATE_REDIS__URLL", "redis://x")]))
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("redis.urll"), "{err}");
        assert!(err.contains("FLOWSTATE_REDIS__URLL"), "{err}");
        let err = Config::load(None, env(&[("FLOWSTATE_METRIX__LISTEN", "0.0.0.0:1")]))
            .expect_err("unknown section")
            .to_string();
        assert!(
            err.contains("`metrix`") && err.contains("FLOWSTATE_METRIX__LISTEN"),
            "{err}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "[sesion]\nidle_timeout = \"1h\"\n").expect("write");
        let err = Config::load(Some(&path), env(&[]))
            .expect_err("unknown section must fail")
            .to_string();
        assert!(err.contains("sesion"), "{err}");
        assert!(err.contains("f.toml"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load(None, env(&[("FLOWSTATE_REDIS__POOL_SIZE", "0")]))
            .expect_err("zero pool")
            .to_string();
        assert!(err.contains("redis.pool_size"), "{err}");

        let err = Config::load(None, env(&[("FLOWSTATE_SERVER__LISTEN", "nope")]))
            .expect_err("bad address")
            .to_string();
        assert!(err.contains("server.listen"), "{err}");

        let err = Config::load(None, env(&[("FLOWSTATE_REDIS__URL", "http://x")]))
            .expect_err("bad scheme")
            .to_string();
        assert!(err.contains("redis.url"), "{err}");
    }

    #[test]
    fn a_zero_where_none_can_be_is_refused_by_the_loader_with_its_key_and_source() {
        let err = Config::load(None, env(&[("FLOWSTATE_SESSION__MAX_FIELDS", "0")]))
            .expect_err("zero fields")
            .to_string();
        assert!(
            err.contains("`session.max_fields`")
                && err.contains("nonzero")
                && err.contains("environment variable FLOWSTATE_SESSION__MAX_FIELDS"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "[rls]\nreload_interval = \"0ms\"\n").expect("write");
        let err = Config::load(Some(&path), env(&[]))
            .expect_err("zero interval")
            .to_string();
        assert!(
            err.contains("\"0ms\", expected a duration greater than zero")
                && err.contains("`rls.reload_interval`")
                && err.contains("f.toml"),
            "{err}"
        );
    }

    #[test]
    fn the_example_config_file_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/flowstate.toml"
        ));
        let c = Config::load(Some(path), env(&[])).expect("examples/flowstate.toml loads");
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6379"));
    }

    #[test]
    fn tracing_is_off_by_default_and_its_settings_are_checked() {
        let c = Config::load(None, env(&[])).expect("defaults load");
        assert!(!c.tracing.enabled());
        let c = Config::load(
            None,
            env(&[
                ("FLOWSTATE_TRACING__OTLP_ENDPOINT", "http://collector:4317"),
                ("FLOWSTATE_TRACING__SAMPLE_RATIO", "0.25"),
            ]),
        )
        .expect("loads");
        assert!(c.tracing.enabled());
        assert!((c.tracing.sample_ratio - 0.25).abs() < f64::EPSILON);
        let err = Config::load(
            None,
            env(&[
                ("FLOWSTATE_TRACING__OTLP_ENDPOINT", "collector:4317"),
                ("FLOWSTATE_TRACING__SAMPLE_RATIO", "1.5"),
            ]),
        )
        .expect_err("no scheme, ratio over 1")
        .to_string();
        assert!(err.contains("tracing.otlp_endpoint"), "{err}");
        assert!(err.contains("tracing.sample_ratio"), "{err}");
    }

    #[test]
    fn named_limits_load_from_file_and_env_and_are_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[ratelimit.limits.api]\nalgorithm = \"gcra\"\nlimit = 100\nperiod = \"1m\"\nburst = 20\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&path),
            env(&[("FLOWSTATE_RATELIMIT__LIMITS__API__FAILURE_MODE", "open")]),
        )
        .expect("loads");
        let api = c.ratelimit.limits["api"].policy();
        assert_eq!((api.limit, api.period_ms, api.burst), (100, 60_000, 20));
        assert_eq!(api.failure_mode, FailureMode::Open);

        std::fs::write(
            &path,
            "[ratelimit.limits.w]\nalgorithm = \"fixed_window\"\nlimit = 0\nperiod = \"1s\"\n",
        )
        .expect("write");
        let err = Config::load(Some(&path), env(&[]))
            .expect_err("zero limit")
            .to_string();
        assert!(err.contains("ratelimit.limits.w.limit"), "{err}");

        std::fs::write(
            &path,
            "[ratelimit.limits.w]\nalgorithm = \"leaky\"\nlimit = 1\nperiod = \"1s\"\n",
        )
        .expect("write");
        let err = Config::load(Some(&path), env(&[]))
            .expect_err("bad algorithm")
            .to_string();
        assert!(err.contains("leaky"), "{err}");
    }

    #[test]
    fn passwords_are_redacted_whatever_characters_they_hold() {
        for (url, secret) in [
            ("redis://user:pa/ss@host:6379/0", "pa/ss"),
            ("redis://:p@ss@host:6379", "p@ss"),
            ("rediss://u:a?b#c@host", "a?b#c"),
            ("redis://u:x%2Fy@host/1", "x%2Fy"),
            ("redis://s3cr/et@host", "s3cr/et"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret&user=fs",
                "s3cret",
            ),
            ("unix:///run/redis.sock?password=s3cret", "s3cret"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(
                shown.contains("host") || shown.contains("redis.sock"),
                "{shown}"
            );
        }
        // Nor does a URL that does not parse leak its password through the error.
        for url in [
            "redis://u:hunter/2@host:notaport",
            "redis://u:hunter/2@",
            "http://:hunter/2@h",
        ] {
            let err = Config::load(None, env(&[("FLOWSTATE_REDIS__URL", url)]))
                .expect_err("bad url")
                .to_string();
            assert!(!err.contains("hunter"), "{err}");
        }
    }

    #[test]
    fn auth_settings_that_lock_everyone_out_or_prove_nothing_are_refused() {
        let err = Config::load(None, env(&[("FLOWSTATE_AUTH__MODE", "required")]))
            .expect_err("required without keys")
            .to_string();
        assert!(err.contains("auth.mode = required"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[auth]\nmode = \"required\"\n[[auth.clients]]\nsan = \"spiffe://x\"\ntenant = \"_bad\"\nallow = \"cache:nope\"\n",
        )
        .expect("write");
        let err = Config::load(Some(&path), env(&[]))
            .expect_err("clients without a client CA, bad tenant, bad permission")
            .to_string();
        for needle in ["client_ca_file", "auth.clients[0].tenant", "cache:nope"] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = Config::load(None, env(&[("FLOWSTATE_SERVER__TLS__CERT_FILE", "/x.crt")]))
            .expect_err("cert without key")
            .to_string();
        assert!(err.contains("key_file"), "{err}");
    }

    #[test]
    fn redis_modes_take_their_own_settings_and_refuse_the_others() {
        let c = Config::load(
            None,
            env(&[
                ("FLOWSTATE_REDIS__MODE", "cluster"),
                ("FLOWSTATE_REDIS__NODES", "redis://a:6379, redis://b:6379"),
            ]),
        )
        .expect("cluster from the environment");
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.nodes, ["redis://a:6379", "redis://b:6379"]);
        assert!(c.redis.is_configured() && c.redis.url.is_none());
        let c = Config::load(
            None,
            env(&[
                ("FLOWSTATE_REDIS__MODE", "sentinel"),
                (
                    "FLOWSTATE_REDIS__SENTINELS",
                    "redis://s1:26379,redis://s2:26379",
                ),
                ("FLOWSTATE_REDIS__MASTER_NAME", "mymaster"),
            ]),
        )
        .expect("sentinel from the environment");
        assert_eq!(c.redis.sentinels.len(), 2);
        for (pairs, named) in [
            (
                &[("FLOWSTATE_REDIS__SENTINELS", "redis://s:26379")][..],
                "redis.sentinels",
            ),
            (&[("FLOWSTATE_REDIS__MODE", "cluster")][..], "no seed node"),
            (
                &[
                    ("FLOWSTATE_REDIS__MODE", "cluster"),
                    ("FLOWSTATE_REDIS__URL", "redis://a:6379"),
                    ("FLOWSTATE_REDIS__NODES", "redis://b:6379"),
                ][..],
                "both set",
            ),
            (
                &[
                    ("FLOWSTATE_REDIS__MODE", "sentinel"),
                    ("FLOWSTATE_REDIS__SENTINELS", "redis://s:26379"),
                ][..],
                "redis.master_name",
            ),
            (
                &[
                    ("FLOWSTATE_REDIS__MODE", "sentinel"),
                    ("FLOWSTATE_REDIS__SENTINELS", "redis://s:26379"),
                    ("FLOWSTATE_REDIS__MASTER_NAME", "m"),
                    ("FLOWSTATE_REDIS__URL", "redis://a:6379"),
                ][..],
                "the sentinels name the master",
            ),
            (&[("FLOWSTATE_REDIS__MODE", "ring")][..], "redis.mode"),
            (
                &[("FLOWSTATE_SESSION__WRITE_CONCERN__REPLICAS", "1")][..],
                "needs Redis",
            ),
        ] {
            let err = Config::load(None, env(pairs))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(named), "{pairs:?}: {err}");
        }
        // The cluster's single seed may be redis.url.
        let c = Config::load(
            None,
            env(&[
                ("FLOWSTATE_REDIS__MODE", "cluster"),
                ("FLOWSTATE_REDIS__URL", "redis://a:6379"),
            ]),
        )
        .expect("a single seed");
        assert!(c.redis.is_configured());
        // Passwords in node and sentinel URLs are redacted like the URL's.
        let mut c = Config::default();
        c.redis.mode = RedisMode::Sentinel;
        c.redis.sentinels = vec!["redis://:hunter2@s:26379".into()];
        c.redis.sentinel_password = Some("s3cret".into());
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(!format!("{:?}", c.redis).contains("hunter2"));
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("redis://user:hunter2@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://hunter2@host"), "rediss://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let c = Config::load(
            None,
            env(&[
                ("FLOWSTATE_REDIS__URL", "redis://:hunter2@localhost:6379"),
                ("FLOWSTATE_REDIS__PASSWORD", "hunter3"),
            ]),
        )
        .expect("loads");
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(shown.contains("***"), "{shown}");
        assert!(!format!("{c:?}").contains("hunter"));
    }
}
