//! Rate limiting's configuration (`[ratelimit]`): the named limits and input limits.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::algorithm::{Algorithm, FailureMode, Policy};
use crate::{config::require_positive, time::duration_ms};

/// Rate limiting: the named limits and the bounds on Check requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Most checks in one Check request.
    pub max_checks: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest period an inline policy may have (a counter lives up to two periods).
    #[serde(with = "humantime_serde")]
    pub max_inline_period: Duration,
    /// The named limits requests refer to by name.
    pub limits: BTreeMap<String, LimitConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_checks: 8,
            max_key_bytes: 256,
            max_inline_period: Duration::from_secs(24 * 3600),
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

impl RateLimitConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(bad, "ratelimit.max_checks", self.max_checks > 0);
        require_positive(bad, "ratelimit.max_key_bytes", self.max_key_bytes > 0);
        require_positive(
            bad,
            "ratelimit.max_inline_period",
            !self.max_inline_period.is_zero(),
        );
        for (name, limit) in &self.limits {
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`ratelimit.limits.{name}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
            if let Err((field, why)) = limit.policy().validate() {
                bad.push(format!("`ratelimit.limits.{name}.{field}` {why}"));
            }
        }
    }
}
