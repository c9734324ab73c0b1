//! The cache's configuration (`[cache]`): namespace policies, leases, input limits.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::require_positive;

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
    /// Redis store: bytes (keys and values) each replica's near tier may hold, for the
    /// namespaces with `near = true`; least recently used entries go.
    pub near_max_bytes: u64,
    /// Redis store: the longest a replica serves a value from its near tier after reading it.
    /// Invalidations from Redis usually drop a changed value within a millisecond; this bound
    /// holds even when they cannot arrive (a lost connection stops near hits at once).
    #[serde(with = "humantime_serde")]
    pub near_max_staleness: Duration,
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
            near_max_bytes: 64 * 1024 * 1024,
            near_max_staleness: Duration::from_secs(1),
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
    /// Serve fresh hits from each replica's memory (the near tier), kept coherent with Redis
    /// (`cache.near_max_staleness`). Redis standalone or sentinel.
    pub near: bool,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            stale: Duration::ZERO,
            max_value_bytes: 1024 * 1024,
            near: false,
        }
    }
}

impl CacheConfig {
    /// Whether any namespace (or the default policy) asks for the near tier.
    pub fn any_near(&self) -> bool {
        self.default_policy.near || self.namespaces.values().any(|p| p.near)
    }

    /// Whether `namespace` is served from the near tier.
    pub fn is_near(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .map_or(self.default_policy.near, |p| p.near)
    }

    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(bad, "cache.max_ttl", !self.max_ttl.is_zero());
        require_positive(bad, "cache.lease_ttl", !self.lease_ttl.is_zero());
        require_positive(bad, "cache.max_key_bytes", self.max_key_bytes > 0);
        require_positive(bad, "cache.max_batch", self.max_batch > 0);
        require_positive(bad, "cache.max_tags", self.max_tags > 0);
        require_positive(bad, "cache.max_tag_bytes", self.max_tag_bytes > 0);
        require_positive(bad, "cache.memory_max_bytes", self.memory_max_bytes > 0);
        require_positive(bad, "cache.near_max_bytes", self.near_max_bytes > 0);
        require_positive(
            bad,
            "cache.near_max_staleness",
            !self.near_max_staleness.is_zero(),
        );
        let policies = std::iter::once(("cache.default_policy".to_owned(), &self.default_policy))
            .chain(
                self.namespaces
                    .iter()
                    .map(|(n, p)| (format!("cache.namespaces.{n}"), p)),
            );
        for (key, policy) in policies {
            if policy.ttl.is_zero() || policy.ttl > self.max_ttl {
                bad.push(format!(
                    "`{key}.ttl` must be between 1 ms and `cache.max_ttl`"
                ));
            }
            if policy.max_value_bytes == 0 {
                bad.push(format!("`{key}.max_value_bytes` must be greater than zero"));
            }
        }
        for name in self.namespaces.keys() {
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`cache.namespaces.{name}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
        }
    }
}
