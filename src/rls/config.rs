//! Envoy's rate limit service's configuration (`[rls]`): where the rules are, how they reload,
//! the over-limit cache and the envoyproxy/ratelimit options it mirrors.

use std::{num::NonZeroUsize, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::rules::Rules;
use crate::config::{PositiveDuration, nonzero};

/// `[rls]`: Envoy's `envoy.service.ratelimit.v3.RateLimitService`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RlsConfig {
    /// A YAML file, or a directory of them, in envoyproxy/ratelimit's format. Unset: no domain is
    /// configured and every descriptor is UNKNOWN (the start-up log says so).
    pub config_path: Option<PathBuf>,
    /// How often the files are re-read; a change that loads replaces the rules in force, one that
    /// does not is logged with its file and line and changes nothing.
    pub reload_interval: PositiveDuration,
    /// Several files may define the same domain (envoyproxy/ratelimit's `MERGE_DOMAIN_CONFIG`).
    pub merge_domains: bool,
    /// Report OVER_LIMIT as OK everywhere, counting what would have been refused
    /// (envoyproxy/ratelimit's `SHADOW_MODE`).
    pub shadow_mode: bool,
    /// Entries of the over-limit cache (keys known to be over their limit until an instant,
    /// refused without a store call); 0 turns it off.
    pub local_cache_entries: u64,
    /// The longest a refusal is cached (at most until the store's `retry_after`): bounds how
    /// long a replica can go on refusing after the counter was freed early (a Reset, a Cluster
    /// reservation refunded, a limit raised on another replica's reload).
    pub local_cache_max_ttl: PositiveDuration,
    /// The share of a limit past which admitted hits also count as `near_limit`
    /// (envoyproxy/ratelimit's `NEAR_LIMIT_RATIO`).
    pub near_limit_ratio: f64,
    /// Add `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` to the response of the
    /// descriptor closest to its limit (envoyproxy/ratelimit's `LIMIT_RESPONSE_HEADERS_ENABLED`).
    /// Envoy's own `x-ratelimit-*` headers (`enable_x_ratelimit_headers`) need nothing here.
    pub response_headers: bool,
    /// Header names for `response_headers`.
    pub header_limit: String,
    /// See `header_limit`.
    pub header_remaining: String,
    /// See `header_limit`.
    pub header_reset: String,
    /// Return the request and the matched rules' `metadata` in `dynamic_metadata`
    /// (envoyproxy/ratelimit's `RESPONSE_DYNAMIC_METADATA`).
    pub response_dynamic_metadata: bool,
    /// Most descriptors in one request.
    pub max_descriptors: NonZeroUsize,
    /// Most entries in one descriptor.
    pub max_entries: NonZeroUsize,
    /// Longest entry key or value, in bytes.
    pub max_entry_bytes: NonZeroUsize,
    /// Distinct request values a `detailed_metric` / `value_to_metric` rule gets its own metric
    /// label for; beyond them its hits count under the rule's own path (bounded labels).
    pub detailed_metric_values: usize,
}

impl Default for RlsConfig {
    fn default() -> Self {
        Self {
            config_path: None,
            reload_interval: PositiveDuration::from_secs(nonzero!(2)),
            merge_domains: false,
            shadow_mode: false,
            local_cache_entries: 100_000,
            local_cache_max_ttl: PositiveDuration::from_secs(nonzero!(1)),
            near_limit_ratio: 0.8,
            response_headers: false,
            header_limit: "RateLimit-Limit".to_owned(),
            header_remaining: "RateLimit-Remaining".to_owned(),
            header_reset: "RateLimit-Reset".to_owned(),
            response_dynamic_metadata: false,
            max_descriptors: nonzero!(64),
            max_entries: nonzero!(16),
            max_entry_bytes: nonzero!(1024),
            detailed_metric_values: 64,
        }
    }
}

impl RlsConfig {
    /// Adds a message per bad value to `bad`, loading the rules so that a broken rules file
    /// stops start-up with its file and line.
    pub fn validate(&self, bad: &mut Vec<String>) {
        if !(self.near_limit_ratio > 0.0 && self.near_limit_ratio <= 1.0) {
            bad.push("`rls.near_limit_ratio` must be above 0 and at most 1".to_owned());
        }
        for (key, name) in [
            ("rls.header_limit", &self.header_limit),
            ("rls.header_remaining", &self.header_remaining),
            ("rls.header_reset", &self.header_reset),
        ] {
            if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                bad.push(format!("`{key}` must be a valid HTTP header name"));
            }
        }
        if let Some(path) = &self.config_path
            && let Err(e) = Rules::load(path, self.merge_domains)
        {
            bad.push(format!("`rls.config_path`: {e}"));
        }
    }
}
