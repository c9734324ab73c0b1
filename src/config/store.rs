//! The store sections: `[redis]` and `[memory]`.

use std::{
    fmt,
    num::{NonZeroU64, NonZeroUsize},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{PositiveDuration, REDACTED, nonzero};

/// How flowstate reaches Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server (`redis.url`), possibly behind a Service or a managed endpoint.
    #[default]
    Standalone,
    /// Redis Cluster: seed nodes (`redis.nodes`, or `redis.url` as the one seed); the client
    /// learns the slot map and follows it through resharding and failover.
    Cluster,
    /// Redis Sentinel: the sentinels (`redis.sentinels`) name the master of
    /// `redis.master_name`; connections follow it through failover.
    Sentinel,
}

impl RedisMode {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// Redis store settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `standalone`, `cluster` or `sentinel`.
    pub mode: RedisMode,
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS: the server (standalone)
    /// or the one seed node (cluster). Unset in every mode: the in-memory store.
    pub url: Option<String>,
    /// Cluster: seed node URLs (any reachable one suffices; the rest are learned). In the
    /// environment, comma-separated.
    #[serde(deserialize_with = "list_or_commas")]
    pub nodes: Vec<String>,
    /// Sentinel: sentinel URLs (`redis://[:password@]host:26379`, `rediss://` for TLS). In the
    /// environment, comma-separated.
    #[serde(deserialize_with = "list_or_commas")]
    pub sentinels: Vec<String>,
    /// Sentinel: the name the sentinels monitor the master under.
    pub master_name: Option<String>,
    /// Sentinel: connect to the master with TLS (the sentinels' own TLS is their URLs' scheme).
    pub master_tls: bool,
    /// Username for the data nodes (ACL), overriding any in the URLs.
    pub username: Option<String>,
    /// Password, overriding any in the URL (lets the URL live in a ConfigMap, this in a Secret).
    /// In cluster and sentinel mode, every data node's.
    pub password: Option<String>,
    /// Sentinel: the sentinels' password, when it is not in their URLs.
    pub sentinel_password: Option<String>,
    /// First component of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Connections in the pool. Each is multiplexed: many calls share it in flight.
    pub pool_size: NonZeroUsize,
    /// Time allowed to open a connection (TCP, TLS and AUTH).
    pub connect_timeout: PositiveDuration,
    /// Time allowed for one store call (one round trip); past it the RPC fails with UNAVAILABLE.
    pub command_timeout: PositiveDuration,
    /// How long a call keeps retrying a store that refused it without running it (a failover
    /// or resharding in progress: MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY, LOADING,
    /// MASTERDOWN, a refused connection) before it fails with UNAVAILABLE; always within the
    /// call's own deadline. 0: no such retries.
    #[serde(with = "humantime_serde")]
    pub failover_wait: Duration,
    /// How often the health task pings Redis; readiness follows within about twice this.
    pub health_interval: PositiveDuration,
}

/// A list from a file (`["a", "b"]`) or a comma-separated string (an environment variable).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(items) => items,
        ListOrString::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            master_tls: false,
            username: None,
            password: None,
            sentinel_password: None,
            key_prefix: "fs".to_owned(),
            pool_size: nonzero!(8),
            connect_timeout: PositiveDuration::from_secs(nonzero!(1)),
            command_timeout: PositiveDuration::from_millis(nonzero!(500)),
            failover_wait: Duration::from_secs(1),
            health_interval: PositiveDuration::from_millis(nonzero!(500)),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so a `{:?}` in a log line can never print a password.
        let urls = |list: &[String]| list.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("nodes", &urls(&self.nodes))
            .field("sentinels", &urls(&self.sentinels))
            .field("master_name", &self.master_name)
            .field("master_tls", &self.master_tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| REDACTED),
            )
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("failover_wait", &self.failover_wait)
            .field("health_interval", &self.health_interval)
            .finish()
    }
}

/// In-memory store settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryConfig {
    /// How often expired entries are reclaimed.
    pub sweep_interval: PositiveDuration,
    /// Bytes of sessions, session indexes and rate-limit counters kept at most; past it, calls
    /// that would add state fail with RESOURCE_EXHAUSTED (the cache has
    /// `cache.memory_max_bytes` and evicts instead).
    pub max_bytes: NonZeroU64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            sweep_interval: PositiveDuration::from_secs(nonzero!(5)),
            max_bytes: nonzero!(256 * 1024 * 1024),
        }
    }
}

impl RedisConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        if !crate::tenant::is_key_safe_name(&self.key_prefix) {
            bad.push(
                "`redis.key_prefix` must be 1-64 characters of A-Z a-z 0-9 _ . - (no ':' or braces)"
                    .to_owned(),
            );
        }
        for (key, url) in self.urls() {
            if let Err(e) = redis::Client::open(url) {
                bad.push(format!(
                    "`{key}` ({}) is not a Redis URL: {e}",
                    redact_url(url)
                ));
            }
        }
        self.validate_mode(bad);
    }

    /// Whether a Redis store is configured (otherwise the memory store runs).
    pub fn is_configured(&self) -> bool {
        self.mode != RedisMode::Standalone || self.url.is_some()
    }

    /// Every URL of the configuration, with the key it came from.
    fn urls(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.url
            .iter()
            .map(|u| ("redis.url", u.as_str()))
            .chain(self.nodes.iter().map(|u| ("redis.nodes", u.as_str())))
            .chain(
                self.sentinels
                    .iter()
                    .map(|u| ("redis.sentinels", u.as_str())),
            )
    }

    /// Settings that belong to another mode are errors, never silently ignored: a sentinel
    /// list under `mode = standalone` would otherwise run on one server nobody meant.
    fn validate_mode(&self, bad: &mut Vec<String>) {
        let mut only = |key: &str, set: bool, mode: RedisMode| {
            if set && self.mode != mode {
                bad.push(format!(
                    "`{key}` is set but `redis.mode` is {}: it is a {} setting (set redis.mode = \"{}\")",
                    self.mode.as_str(),
                    mode.as_str(),
                    mode.as_str()
                ));
            }
        };
        only("redis.nodes", !self.nodes.is_empty(), RedisMode::Cluster);
        only(
            "redis.sentinels",
            !self.sentinels.is_empty(),
            RedisMode::Sentinel,
        );
        only(
            "redis.master_name",
            self.master_name.is_some(),
            RedisMode::Sentinel,
        );
        only("redis.master_tls", self.master_tls, RedisMode::Sentinel);
        only(
            "redis.sentinel_password",
            self.sentinel_password.is_some(),
            RedisMode::Sentinel,
        );
        match self.mode {
            RedisMode::Standalone => {}
            RedisMode::Cluster => {
                if self.nodes.is_empty() && self.url.is_none() {
                    bad.push(
                        "`redis.mode` is cluster but no seed node is given: set `redis.nodes` \
                         (or `redis.url` for a single seed)"
                            .to_owned(),
                    );
                }
                if !self.nodes.is_empty() && self.url.is_some() {
                    bad.push(
                        "`redis.url` and `redis.nodes` are both set: in cluster mode list every \
                         seed in `redis.nodes`"
                            .to_owned(),
                    );
                }
            }
            RedisMode::Sentinel => {
                if self.sentinels.is_empty() {
                    bad.push("`redis.mode` is sentinel but `redis.sentinels` is empty".to_owned());
                }
                if self.master_name.as_deref().is_none_or(str::is_empty) {
                    bad.push(
                        "`redis.mode` is sentinel but `redis.master_name` is not set".to_owned(),
                    );
                }
                if self.url.is_some() {
                    bad.push(
                        "`redis.url` is set but `redis.mode` is sentinel: the sentinels name the \
                         master (list them in `redis.sentinels`)"
                            .to_owned(),
                    );
                }
            }
        }
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
