//! Locks' configuration (`[locks]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::require_positive;

/// Bounds on lock requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LockConfig {
    /// Longest TTL a holding may ask for (and be extended by, per Extend).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Most holders a semaphore may allow.
    pub max_limit: u32,
    /// Most callers waiting for one lock; more try once without a place in the queue.
    pub max_waiters: u32,
    /// Longest lock name, in bytes.
    pub max_name_bytes: usize,
    /// How long a lock's last fencing token is remembered after its last grant. Tokens stay
    /// increasing after it is forgotten too (they are at least the store's clock in µs), as
    /// long as the store's clock does not go back by more than this.
    #[serde(with = "humantime_serde")]
    pub fence_retention: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(3600),
            max_limit: 1000,
            max_waiters: 1000,
            max_name_bytes: 256,
            fence_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl LockConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(
            bad,
            "locks.max_ttl",
            self.max_ttl >= Duration::from_millis(10),
        );
        require_positive(bad, "locks.max_limit", self.max_limit > 0);
        require_positive(bad, "locks.max_waiters", self.max_waiters > 0);
        require_positive(bad, "locks.max_name_bytes", self.max_name_bytes > 0);
        require_positive(
            bad,
            "locks.fence_retention",
            !self.fence_retention.is_zero(),
        );
        if self.max_limit > 100_000 {
            bad.push("`locks.max_limit` is at most 100000".to_owned());
        }
    }
}
