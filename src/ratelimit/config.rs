//! Rate limiting's configuration (`[ratelimit]`): the named limits and input limits.

use std::{
    collections::BTreeMap,
    num::{NonZeroU64, NonZeroUsize},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::algorithm::{Algorithm, FailureMode, Policy};
use crate::{
    config::{PositiveDuration, nonzero},
    time::duration_ms,
};

/// Rate limiting: the named limits and the bounds on Check requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Most checks in one Check request.
    pub max_checks: NonZeroUsize,
    /// Longest key, in bytes.
    pub max_key_bytes: NonZeroUsize,
    /// Longest period an inline policy may have (a counter lives up to two periods).
    pub max_inline_period: PositiveDuration,
    /// The named limits requests refer to by name.
    pub limits: BTreeMap<String, LimitConfig>,
    /// Usage limits (quotas over a usage metric), referred to by name like the limits.
    pub usage_limits: BTreeMap<String, UsageLimitConfig>,
}

/// A usage quota (`[ratelimit.usage_limits.<name>]`): at most `limit` of `metric` per `window` and
/// subject (the check's key), read from the usage recorded with UsageService. It admits while
/// the recorded usage plus the check's cost fits, and consumes nothing (Record does), so billing
/// and enforcement read the same numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageLimitConfig {
    /// The usage metric, e.g. `llm_tokens`.
    pub metric: String,
    /// The most usage per window.
    pub limit: NonZeroU64,
    /// `minute`, `hour`, `day` or `month` (calendar-aligned, UTC, on the store's clock).
    pub window: UsageWindow,
    /// `open` (allow, marked not enforced) or `closed` (UNAVAILABLE) when the store fails.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

/// The window of a usage quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageWindow {
    /// The current minute.
    Minute,
    /// The current hour.
    Hour,
    /// The current day (UTC).
    Day,
    /// The current calendar month (UTC).
    Month,
}

impl UsageWindow {
    /// The usage granularity it reads.
    pub fn granularity(self) -> crate::usage::Granularity {
        use crate::usage::Granularity as G;
        match self {
            UsageWindow::Minute => G::Minute,
            UsageWindow::Hour => G::Hour,
            UsageWindow::Day => G::Day,
            UsageWindow::Month => G::Month,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_checks: nonzero!(8),
            max_key_bytes: nonzero!(256),
            max_inline_period: PositiveDuration::from_secs(nonzero!(24 * 3600)),
            limits: BTreeMap::new(),
            usage_limits: BTreeMap::new(),
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
        for (name, quota) in &self.usage_limits {
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`ratelimit.usage_limits.{name}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
            if self.limits.contains_key(name) {
                bad.push(format!(
                    "`ratelimit.usage_limits.{name}`: a limit has the same name (checks name either)"
                ));
            }
            if !crate::tenant::is_key_safe_name(&quota.metric) {
                bad.push(format!(
                    "`ratelimit.usage_limits.{name}.metric`: 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
        }
    }
}
