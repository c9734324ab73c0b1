//! Locks' configuration (`[locks]`).

use std::{
    num::{NonZeroU32, NonZeroUsize},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{PositiveDuration, nonzero, require_positive};

/// Bounds on lock requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LockConfig {
    /// Longest TTL a holding may ask for (and be extended by, per Extend).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Most holders a semaphore may allow.
    pub max_limit: NonZeroU32,
    /// Most callers waiting for one lock; more try once without a place in the queue.
    pub max_waiters: NonZeroU32,
    /// Longest lock name, in bytes.
    pub max_name_bytes: NonZeroUsize,
    /// How long a lock's last fencing token is remembered after its last grant. Tokens stay
    /// increasing after it is forgotten too (they are at least the store's clock in µs), as
    /// long as the store's clock does not go back by more than this.
    pub fence_retention: PositiveDuration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(3600),
            max_limit: nonzero!(1000),
            max_waiters: nonzero!(1000),
            max_name_bytes: nonzero!(256),
            fence_retention: PositiveDuration::from_secs(nonzero!(30 * 24 * 3600)),
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
        if self.max_limit.get() > 100_000 {
            bad.push("`locks.max_limit` is at most 100000".to_owned());
        }
    }
}
