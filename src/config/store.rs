//! The store sections: `[redis]` and `[memory]`.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::{REDACTED, require_positive};

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
    /// Bytes of sessions, session indexes and rate-limit counters kept at most; past it, calls
    /// that would add state fail with RESOURCE_EXHAUSTED (the cache has
    /// `cache.memory_max_bytes` and evicts instead).
    pub max_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(5),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl RedisConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(bad, "redis.pool_size", self.pool_size > 0);
        require_positive(
            bad,
            "redis.connect_timeout",
            !self.connect_timeout.is_zero(),
        );
        require_positive(
            bad,
            "redis.command_timeout",
            !self.command_timeout.is_zero(),
        );
        require_positive(
            bad,
            "redis.health_interval",
            !self.health_interval.is_zero(),
        );
        if !crate::tenant::is_key_safe_name(&self.key_prefix) {
            bad.push(
                "`redis.key_prefix` must be 1-64 characters of A-Z a-z 0-9 _ . - (no ':' or braces)"
                    .to_owned(),
            );
        }
        if let Some(url) = &self.url
            && let Err(e) = redis::Client::open(url.as_str())
        {
            bad.push(format!(
                "`redis.url` ({}) is not a Redis URL: {e}",
                redact_url(url)
            ));
        }
    }
}

impl MemoryConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(bad, "memory.sweep_interval", !self.sweep_interval.is_zero());
        require_positive(bad, "memory.max_bytes", self.max_bytes > 0);
    }
}

/// Replaces the password in a Redis URL with `***`, whatever characters it holds: in the
/// user-info (everything between `://` and the last `@`: a password may hold `/`, `?`, `#` or
/// `@` unescaped; a host or path never holds `@`), and in `pass=` / `password=` query
/// parameters (the form of `redis+unix://` socket URLs).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let redacted = match rest.rfind('@') {
        Some(at) => {
            let hidden = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:{REDACTED}"),
                // `redis://secret@host` puts the password where the user goes.
                None => REDACTED.to_owned(),
            };
            format!("{}{hidden}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    };
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if matches!(name, "pass" | "password") => format!("{name}={REDACTED}"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}
