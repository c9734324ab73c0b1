//! The one configuration scheme: built-in defaults < TOML file (`--config`) < environment.
//!
//! Environment variables are `FLOWSTATE_` + the key path in upper case with `__` between levels:
//! `redis.url` is `FLOWSTATE_REDIS__URL`, `server.listen` is `FLOWSTATE_SERVER__LISTEN`.
//! Variables starting with `FLOWSTATE_TEST_` belong to the test suite and are not configuration.
//!
//! Everything is checked once, at start-up: an unknown key or a bad value is an error that names
//! the key and where it came from (the file or the environment variable), because a typo that is
//! silently ignored is how the platform this service replaces ran on mocks for months.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    ratelimit::{Algorithm, FailureMode, Policy},
    time::duration_ms,
};

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "FLOWSTATE_";
/// Environment variables with this prefix are read by the test suite, never as configuration.
const TEST_ENV_PREFIX: &str = "FLOWSTATE_TEST_";
/// Nesting separator in environment variable names.
const ENV_SEPARATOR: &str = "__";

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
    /// Redis store; used when `redis.url` is set.
    pub redis: RedisConfig,
    /// Embedded in-memory store; used when `redis.url` is not set.
    pub memory: MemoryConfig,
    /// Session policy and input limits.
    pub session: SessionConfig,
    /// Cache namespaces, leases and input limits.
    pub cache: CacheConfig,
    /// Named rate limits and input limits.
    pub ratelimit: RateLimitConfig,
}

/// gRPC server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address the gRPC server listens on. Loopback by default; containers bind `0.0.0.0:50051`.
    pub listen: SocketAddr,
    /// Deadline for a call that sends no `grpc-timeout`, and the cap for one that does.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in progress across all connections; beyond it calls get RESOURCE_EXHAUSTED at once.
    pub max_concurrent_requests: usize,
    /// On SIGTERM/SIGINT: how long in-flight calls may take to finish before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Tenant every request acts for while authentication is off.
    pub tenant: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            request_timeout: Duration::from_secs(5),
            max_concurrent_requests: 4096,
            shutdown_grace: Duration::from_secs(10),
            max_message_bytes: 4 * 1024 * 1024,
            tenant: "default".to_owned(),
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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Redis store settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS. Unset: in-memory store.
    pub url: Option<String>,
    /// Password, overriding any in the URL (lets the URL live in a ConfigMap, this in a Secret).
    pub password: Option<String>,
    /// First component of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Connections in the pool. Each is multiplexed: many calls share it in flight.
    pub pool_size: usize,
    /// Time allowed to open a connection (TCP, TLS and AUTH).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one store call (one round trip); past it the RPC fails with UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How often the health task pings Redis; readiness follows within about twice this.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            password: None,
            key_prefix: "fs".to_owned(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            health_interval: Duration::from_millis(500),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so a `{:?}` in a log line can never print the password.
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("health_interval", &self.health_interval)
            .finish()
    }
}

/// In-memory store settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryConfig {
    /// How often expired entries are reclaimed.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// Session policy and the limits on session input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// Idle timeout when CreateSession names none: the session dies this long after its last activity.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Absolute lifetime when CreateSession names none: no activity extends a session past it.
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// Largest idle or absolute timeout a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Live sessions per user; creating one more deletes the oldest.
    pub max_per_user: u32,
    /// Longest user id, in bytes.
    pub max_user_id_bytes: usize,
    /// Most data fields in one session, and most metadata entries.
    pub max_fields: usize,
    /// Longest data or metadata field name, in bytes.
    pub max_field_name_bytes: usize,
    /// Total size of a session's data (names plus values), in bytes.
    pub max_data_bytes: usize,
    /// Total size of a session's metadata (names plus values), in bytes.
    pub max_metadata_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_timeout: Duration::from_secs(30 * 24 * 3600),
            max_timeout: Duration::from_secs(30 * 24 * 3600),
            max_per_user: 64,
            max_user_id_bytes: 256,
            max_fields: 128,
            max_field_name_bytes: 128,
            max_data_bytes: 64 * 1024,
            max_metadata_bytes: 4 * 1024,
        }
    }
}

/// The cache: namespace policies, leases, limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Whether namespaces missing from `cache.namespaces` may be used (with `default_policy`).
    pub allow_unknown_namespaces: bool,
    /// Policy of namespaces not listed in `namespaces`.
    pub default_policy: NamespacePolicy,
    /// Policies by namespace name.
    pub namespaces: BTreeMap<String, NamespacePolicy>,
    /// Largest TTL a Set may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long a lease lets its holder recompute before others may take over.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Most keys in GetMany, SetMany and Delete.
    pub max_batch: usize,
    /// Most tags on one entry, and in one InvalidateTags.
    pub max_tags: usize,
    /// Longest tag, in bytes.
    pub max_tag_bytes: usize,
    /// Memory store only: the cache's size budget in bytes (least recently used entries go).
    pub memory_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            allow_unknown_namespaces: true,
            default_policy: NamespacePolicy::default(),
            namespaces: BTreeMap::new(),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            lease_ttl: Duration::from_secs(5),
            max_key_bytes: 512,
            max_batch: 100,
            max_tags: 16,
            max_tag_bytes: 128,
            memory_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One namespace's policy (`[cache.namespaces.<name>]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespacePolicy {
    /// TTL of a Set that names none.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long past its TTL a value is still served, marked stale, while one caller refreshes.
    #[serde(with = "humantime_serde")]
    pub stale: Duration,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            stale: Duration::ZERO,
            max_value_bytes: 1024 * 1024,
        }
    }
}

/// Rate limiting: the named limits and the bounds on Check requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Most checks in one Check request.
    pub max_checks: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// The named limits requests refer to by name.
    pub limits: BTreeMap<String, LimitConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_checks: 8,
            max_key_bytes: 256,
            limits: BTreeMap::new(),
        }
    }
}

/// One named limit (`[ratelimit.limits.<name>]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitConfig {
    /// `fixed_window`, `sliding_window`, `token_bucket` or `gcra`.
    pub algorithm: Algorithm,
    /// Requests (or cost units) per period.
    pub limit: u64,
    /// The period, e.g. `1m`.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Bucket size for `token_bucket` and `gcra` (0: `limit`).
    #[serde(default)]
    pub burst: u64,
    /// `open` (allow, marked not enforced) or `closed` (UNAVAILABLE) when the store fails.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

impl LimitConfig {
    /// The limit as the domain uses it.
    pub fn policy(&self) -> Policy {
        Policy {
            algorithm: self.algorithm,
            limit: self.limit,
            period_ms: duration_ms(self.period),
            burst: self.burst,
            failure_mode: self.failure_mode,
        }
    }
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

impl Config {
    /// Loads defaults, then `file` (if given), then the `FLOWSTATE_…` variables among `env`, and
    /// validates the result. `env` is passed in (normally `std::env::vars()`) so tests need not
    /// touch the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !k.starts_with(TEST_ENV_PREFIX))
            .collect();
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Config::default())?);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .source(Some(env.clone().into_iter().collect()));
        let merged = builder
            .add_source(env_source)
            .build()
            .map_err(|e| with_source(e, file, &env))?;

        let mut unknown = Vec::new();
        let config: Config =
            serde_ignored::deserialize(merged, |path| unknown.push(path.to_string()))
                .map_err(|e| with_source(e, file, &env))?;
        if !unknown.is_empty() {
            let named = unknown
                .into_iter()
                .map(|key| format!("`{key}` ({})", key_source(&key, file, &env)))
                .collect();
            return Err(ConfigError::UnknownKeys(named));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work, naming every bad key at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bad = Vec::new();
        let mut positive = |key: &str, ok: bool| {
            if !ok {
                bad.push(format!("`{key}` must be greater than zero"));
            }
        };
        positive(
            "server.request_timeout",
            !self.server.request_timeout.is_zero(),
        );
        positive(
            "server.max_concurrent_requests",
            self.server.max_concurrent_requests > 0,
        );
        positive(
            "server.max_message_bytes",
            self.server.max_message_bytes > 0,
        );
        positive("redis.pool_size", self.redis.pool_size > 0);
        positive(
            "redis.connect_timeout",
            !self.redis.connect_timeout.is_zero(),
        );
        positive(
            "redis.command_timeout",
            !self.redis.command_timeout.is_zero(),
        );
        positive(
            "redis.health_interval",
            !self.redis.health_interval.is_zero(),
        );
        positive(
            "memory.sweep_interval",
            !self.memory.sweep_interval.is_zero(),
        );
        let s = &self.session;
        positive("session.idle_timeout", !s.idle_timeout.is_zero());
        positive("session.absolute_timeout", !s.absolute_timeout.is_zero());
        positive("session.max_per_user", s.max_per_user > 0);
        positive("session.max_user_id_bytes", s.max_user_id_bytes > 0);
        positive("session.max_fields", s.max_fields > 0);
        positive("session.max_field_name_bytes", s.max_field_name_bytes > 0);
        positive("session.max_data_bytes", s.max_data_bytes > 0);
        positive("session.max_metadata_bytes", s.max_metadata_bytes > 0);
        positive("ratelimit.max_checks", self.ratelimit.max_checks > 0);
        positive("ratelimit.max_key_bytes", self.ratelimit.max_key_bytes > 0);
        let cache = &self.cache;
        positive("cache.max_ttl", !cache.max_ttl.is_zero());
        positive("cache.lease_ttl", !cache.lease_ttl.is_zero());
        positive("cache.max_key_bytes", cache.max_key_bytes > 0);
        positive("cache.max_batch", cache.max_batch > 0);
        positive("cache.max_tags", cache.max_tags > 0);
        positive("cache.max_tag_bytes", cache.max_tag_bytes > 0);
        positive("cache.memory_max_bytes", cache.memory_max_bytes > 0);
        for (key, value) in [
            ("session.idle_timeout", s.idle_timeout),
            ("session.absolute_timeout", s.absolute_timeout),
        ] {
            if value > s.max_timeout {
                bad.push(format!(
                    "`{key}` ({}) exceeds `session.max_timeout` ({})",
                    humantime::format_duration(value),
                    humantime::format_duration(s.max_timeout)
                ));
            }
        }
        let policies = std::iter::once(("cache.default_policy".to_owned(), &cache.default_policy))
            .chain(
                cache
                    .namespaces
                    .iter()
                    .map(|(n, p)| (format!("cache.namespaces.{n}"), p)),
            );
        for (key, policy) in policies {
            if policy.ttl.is_zero() || policy.ttl > cache.max_ttl {
                bad.push(format!(
                    "`{key}.ttl` must be between 1 ms and `cache.max_ttl`"
                ));
            }
            if policy.max_value_bytes == 0 {
                bad.push(format!("`{key}.max_value_bytes` must be greater than zero"));
            }
        }
        for name in cache.namespaces.keys() {
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`cache.namespaces.{name}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
        }
        for (name, limit) in &self.ratelimit.limits {
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`ratelimit.limits.{name}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
            if let Err((field, why)) = limit.policy().validate() {
                bad.push(format!("`ratelimit.limits.{name}.{field}` {why}"));
            }
        }
        if !crate::tenant::is_key_safe_name(&self.server.tenant) {
            bad.push("`server.tenant` must be 1-64 characters of A-Z a-z 0-9 _ . -".to_owned());
        }
        if !crate::tenant::is_key_safe_name(&self.redis.key_prefix) {
            bad.push(
                "`redis.key_prefix` must be 1-64 characters of A-Z a-z 0-9 _ . - (no ':' or braces)"
                    .to_owned(),
            );
        }
        if let Some(url) = &self.redis.url
            && let Err(e) = redis::Client::open(url.as_str())
        {
            bad.push(format!(
                "`redis.url` ({}) is not a Redis URL: {e}",
                redact_url(url)
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(bad))
        }
    }

    /// The effective configuration as TOML with secrets replaced by `***` (the `config` command).
    pub fn to_redacted_toml(&self) -> String {
        let store = match &self.redis.url {
            Some(_) => "# store: redis\n",
            None => "# store: memory (redis.url is not set)\n",
        };
        let mut shown = self.clone();
        shown.redis.url = shown.redis.url.as_deref().map(redact_url);
        shown.redis.password = shown.redis.password.map(|_| REDACTED.to_owned());
        match toml::to_string_pretty(&shown) {
            Ok(text) => format!("{store}{text}"),
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        }
    }
}

/// Adds the source to a load error that names a key but not where its value came from
/// (the `config` crate knows it for type errors, not for values a deserializer refused).
fn with_source(
    e: config::ConfigError,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> ConfigError {
    let message = e.to_string();
    let key = message
        .split_once("for key `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_owned());
    match key {
        Some(key) if !message.contains(" in ") => ConfigError::Invalid(vec![format!(
            "{message} (from {})",
            key_source(&key, file, env)
        )]),
        _ => ConfigError::Load(e),
    }
}

/// Says where an unknown key came from: the env var that set it, else the file.
fn key_source(key: &str, file: Option<&Path>, env: &BTreeMap<String, String>) -> String {
    let var = format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', ENV_SEPARATOR)
    );
    let nested = format!("{var}{ENV_SEPARATOR}");
    if let Some(found) = env.keys().find(|k| **k == var || k.starts_with(&nested)) {
        format!("environment variable {found}")
    } else if let Some(path) = file {
        format!("file {}", path.display())
    } else {
        "unknown source".to_owned()
    }
}

/// Replaces the password in a Redis URL's user-info with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or_default();
    let hidden = if userinfo.contains(':') {
        format!("{user}:{REDACTED}")
    } else {
        // `redis://secret@host` puts the password where the user goes.
        REDACTED.to_owned()
    };
    format!("{}{hidden}{}", &url[..scheme_end + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.session.idle_timeout, Duration::from_secs(86_400));
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
        assert_eq!(c.redis.pool_size, 5);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(600));
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
    fn the_example_config_file_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/flowstate.toml"
        ));
        let c = Config::load(Some(path), env(&[])).expect("examples/flowstate.toml loads");
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6379"));
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
