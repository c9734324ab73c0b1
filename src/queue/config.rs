//! Queues' configuration (`[queues]`): job defaults, bounds, dead-job retention, and per queue
//! pattern overrides.

use std::{
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::model::DeadPolicy;
use crate::{
    config::{PositiveDuration, nonzero},
    events::config::matches,
};

/// Job defaults and bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueuesConfig {
    /// Attempts before a job is dead, unless the job says otherwise.
    pub default_max_attempts: u32,
    /// How long a worker may hold a job before it goes to another, unless the job says.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The first retry's delay (doubling per retry), unless the job says.
    #[serde(with = "humantime_serde")]
    pub default_backoff: Duration,
    /// The longest delay between retries, unless the job says.
    #[serde(with = "humantime_serde")]
    pub default_max_backoff: Duration,
    /// The longest timeout (and Extend) a job may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// The longest delay (or `run_at` ahead) and backoff a job may ask for.
    pub max_delay: PositiveDuration,
    /// Most attempts a job may ask for.
    pub max_attempts_limit: NonZeroU32,
    /// Most jobs one queue holds (ready, scheduled, in flight and dead); an enqueue beyond it
    /// is RESOURCE_EXHAUSTED.
    pub max_jobs: NonZeroU64,
    /// How long dead jobs are kept.
    #[serde(with = "humantime_serde")]
    pub dead_max_age: Duration,
    /// Most dead jobs kept per queue (the oldest go first).
    pub dead_max_count: NonZeroU64,
    /// Largest payload, in bytes.
    pub max_payload_bytes: NonZeroUsize,
    /// Longest error kept with a failed job, in bytes (longer is cut).
    pub max_error_bytes: NonZeroUsize,
    /// Longest queue name, in bytes.
    pub max_name_bytes: NonZeroUsize,
    /// Longest unique key, in bytes.
    pub max_unique_key_bytes: NonZeroUsize,
    /// Most jobs per EnqueueMany.
    pub max_batch: NonZeroUsize,
    /// Most jobs per Fetch.
    pub max_fetch: u32,
    /// Most queues per Fetch.
    pub max_fetch_queues: NonZeroUsize,
    /// How often a waiting Fetch looks again while the signal connection is down (when it is
    /// up, waiting workers are woken by each enqueue).
    pub poll_interval: PositiveDuration,
    /// Overrides per queue pattern (`*` matches any run of characters), first match wins. A
    /// pattern is also the `queue` label of the queue metrics (queues matching none: `other`).
    pub queues: Vec<QueuePolicy>,
}

/// Overrides for queues matching `pattern` (`[[queues.queues]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicy {
    /// A queue name where `*` matches any run of characters, e.g. `emails*`.
    pub pattern: String,
    /// Default attempts for its jobs.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Default timeout for its jobs.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Default backoff for its jobs.
    #[serde(default, with = "humantime_serde")]
    pub backoff: Option<Duration>,
    /// Default longest backoff for its jobs.
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// How long its dead jobs are kept.
    #[serde(default, with = "humantime_serde")]
    pub dead_max_age: Option<Duration>,
    /// Most dead jobs kept.
    #[serde(default)]
    pub dead_max_count: Option<u64>,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        Self {
            default_max_attempts: 5,
            default_timeout: Duration::from_secs(60),
            default_backoff: Duration::from_secs(1),
            default_max_backoff: Duration::from_secs(600),
            max_timeout: Duration::from_secs(12 * 3600),
            max_delay: PositiveDuration::from_secs(nonzero!(365 * 24 * 3600)),
            max_attempts_limit: nonzero!(1000),
            max_jobs: nonzero!(1_000_000),
            dead_max_age: Duration::from_secs(7 * 24 * 3600),
            dead_max_count: nonzero!(10_000),
            max_payload_bytes: nonzero!(256 * 1024),
            max_error_bytes: nonzero!(8 * 1024),
            max_name_bytes: nonzero!(128),
            max_unique_key_bytes: nonzero!(256),
            max_batch: nonzero!(1000),
            max_fetch: 100,
            max_fetch_queues: nonzero!(16),
            poll_interval: PositiveDuration::from_millis(nonzero!(100)),
            queues: Vec::new(),
        }
    }
}

/// A queue's settings: the defaults with its pattern's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// The metrics label: the matching pattern, or `other`.
    pub label: String,
    /// Default attempts.
    pub max_attempts: u32,
    /// Default timeout.
    pub timeout: Duration,
    /// Default backoff.
    pub backoff: Duration,
    /// Default longest backoff.
    pub max_backoff: Duration,
    /// Dead-job retention.
    pub dead: DeadPolicy,
}

/// Adds "`key` must be {what}" to `bad` unless `ok`.
fn need(bad: &mut Vec<String>, key: &str, ok: bool, what: &str) {
    if !ok {
        bad.push(format!("`{key}` must be {what}"));
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl QueuesConfig {
    /// The settings of `queue`.
    pub fn settings(&self, queue: &str) -> QueueSettings {
        let p = self.queues.iter().find(|p| matches(&p.pattern, queue));
        let get = |f: fn(&QueuePolicy) -> Option<Duration>, d: Duration| p.and_then(f).unwrap_or(d);
        QueueSettings {
            label: p.map_or_else(|| "other".to_owned(), |p| p.pattern.clone()),
            max_attempts: p
                .and_then(|p| p.max_attempts)
                .unwrap_or(self.default_max_attempts),
            timeout: get(|p| p.timeout, self.default_timeout),
            backoff: get(|p| p.backoff, self.default_backoff),
            max_backoff: get(|p| p.max_backoff, self.default_max_backoff),
            dead: DeadPolicy {
                max_age_ms: ms(get(|p| p.dead_max_age, self.dead_max_age)),
                max_count: p
                    .and_then(|p| p.dead_max_count)
                    .unwrap_or(self.dead_max_count.get()),
            },
        }
    }

    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        let ms10 = Duration::from_millis(10);
        need(
            bad,
            "queues.default_max_attempts",
            self.default_max_attempts > 0
                && self.default_max_attempts <= self.max_attempts_limit.get(),
            "1 to queues.max_attempts_limit",
        );
        need(
            bad,
            "queues.default_timeout",
            self.default_timeout >= ms10 && self.default_timeout <= self.max_timeout,
            "10ms to queues.max_timeout",
        );
        need(
            bad,
            "queues.max_timeout",
            self.max_timeout >= ms10,
            "at least 10ms",
        );
        need(
            bad,
            "queues.default_max_backoff",
            self.default_max_backoff >= self.default_backoff,
            "at least queues.default_backoff",
        );
        need(
            bad,
            "queues.dead_max_age",
            self.dead_max_age >= Duration::from_secs(1),
            "at least 1s",
        );
        need(
            bad,
            "queues.max_fetch",
            self.max_fetch > 0 && self.max_fetch <= 1000,
            "1 to 1000",
        );
        for (i, p) in self.queues.iter().enumerate() {
            let at = format!("queues.queues[{i}]");
            if p.pattern.is_empty() {
                bad.push(format!("`{at}.pattern` must not be empty"));
            }
            if p.max_attempts
                .is_some_and(|a| a == 0 || a > self.max_attempts_limit.get())
            {
                bad.push(format!(
                    "`{at}.max_attempts` must be 1 to queues.max_attempts_limit"
                ));
            }
            if p.timeout.is_some_and(|t| t < ms10 || t > self.max_timeout) {
                bad.push(format!("`{at}.timeout` must be 10ms to queues.max_timeout"));
            }
            if p.dead_max_count == Some(0) {
                bad.push(format!("`{at}.dead_max_count` must be greater than zero"));
            }
            if p.dead_max_age.is_some_and(|a| a < Duration::from_secs(1)) {
                bad.push(format!("`{at}.dead_max_age` must be at least 1s"));
            }
            let s = self.settings(&p.pattern);
            if s.max_backoff < s.backoff {
                bad.push(format!("`{at}.max_backoff` must be at least its backoff"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_pattern_overrides_the_defaults() {
        let c = QueuesConfig {
            queues: vec![QueuePolicy {
                pattern: "emails*".into(),
                max_attempts: Some(3),
                timeout: Some(Duration::from_secs(5)),
                ..QueuePolicy::default()
            }],
            ..QueuesConfig::default()
        };
        let s = c.settings("emails:bulk");
        assert_eq!((s.label.as_str(), s.max_attempts), ("emails*", 3));
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.backoff, Duration::from_secs(1));
        let o = c.settings("rollups");
        assert_eq!((o.label.as_str(), o.max_attempts), ("other", 5));
        let mut bad = Vec::new();
        c.validate(&mut bad);
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn bad_values_are_named() {
        let c = QueuesConfig {
            max_fetch: 0,
            queues: vec![QueuePolicy {
                pattern: String::new(),
                max_attempts: Some(0),
                ..QueuePolicy::default()
            }],
            ..QueuesConfig::default()
        };
        let mut bad = Vec::new();
        c.validate(&mut bad);
        let all = bad.join("\n");
        for field in [
            "queues.max_fetch",
            "queues.queues[0].pattern",
            "queues.queues[0].max_attempts",
        ] {
            assert!(all.contains(field), "{field}: {all}");
        }
    }
}
