//! Events' configuration (`[events]`): retention per topic pattern, subscriber bounds.

use std::{
    num::{NonZeroU64, NonZeroUsize},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::model::Retention;
use crate::config::{PositiveDuration, nonzero, require_positive};

/// Event topics: what they keep, and the bounds on publishers and subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// Most events a topic keeps unless a pattern in `topics` says otherwise.
    pub max_len: NonZeroU64,
    /// Longest a topic keeps an event unless a pattern in `topics` says otherwise.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Retention per topic pattern (`*` matches any run of characters), first match wins.
    pub topics: Vec<TopicRetention>,
    /// Largest payload, in bytes.
    pub max_payload_bytes: NonZeroUsize,
    /// Longest event key, in bytes.
    pub max_key_bytes: NonZeroUsize,
    /// Longest topic name, in bytes.
    pub max_topic_bytes: NonZeroUsize,
    /// Most topics in one Subscribe.
    pub max_topics_per_subscribe: NonZeroUsize,
    /// Events a subscriber may fall behind before it is cut off (RESOURCE_EXHAUSTED, with the
    /// position to resume from), so one slow subscriber never holds up the others.
    pub subscriber_buffer: NonZeroUsize,
    /// How often a topic's reader looks for new events while the signal connection is down
    /// (when it is up, readers are woken by each publish).
    pub poll_interval: PositiveDuration,
}

/// Retention for topics matching `pattern` (`[[events.topics]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRetention {
    /// A topic name where `*` matches any run of characters, e.g. `campaign:*`.
    pub pattern: String,
    /// Most events kept (default: `events.max_len`).
    #[serde(default)]
    pub max_len: Option<u64>,
    /// Longest age kept (default: `events.max_age`).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_len: nonzero!(10_000),
            max_age: Duration::from_secs(24 * 3600),
            topics: Vec::new(),
            max_payload_bytes: nonzero!(64 * 1024),
            max_key_bytes: nonzero!(256),
            max_topic_bytes: nonzero!(256),
            max_topics_per_subscribe: nonzero!(64),
            subscriber_buffer: nonzero!(1024),
            poll_interval: PositiveDuration::from_millis(nonzero!(100)),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `topic` matches `pattern`, where `*` matches any run of characters.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = topic.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl EventsConfig {
    /// The retention of `topic`: the first matching pattern's, else the defaults.
    pub fn retention(&self, topic: &str) -> Retention {
        let found = self.topics.iter().find(|t| matches(&t.pattern, topic));
        Retention {
            max_len: found.and_then(|t| t.max_len).unwrap_or(self.max_len.get()),
            max_age_ms: ms(found.and_then(|t| t.max_age).unwrap_or(self.max_age)),
        }
    }

    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(
            bad,
            "events.max_age",
            self.max_age >= Duration::from_secs(1),
        );
        for (i, t) in self.topics.iter().enumerate() {
            if t.pattern.is_empty() {
                bad.push(format!("`events.topics[{i}].pattern` must not be empty"));
            }
            if t.max_len == Some(0) {
                bad.push(format!(
                    "`events.topics[{i}].max_len` must be greater than zero"
                ));
            }
            if t.max_age.is_some_and(|a| a < Duration::from_secs(1)) {
                bad.push(format!("`events.topics[{i}].max_age` must be at least 1s"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_runs_of_characters() {
        assert!(matches("campaign:*", "campaign:42"));
        assert!(matches("campaign:*", "campaign:"));
        assert!(!matches("campaign:*", "campaigns:42"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXbY"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(matches("*:live", "campaign:42:live"));
        assert!(!matches("ab*ba", "aba"));
    }

    #[test]
    fn the_first_matching_pattern_decides_retention() {
        let c = EventsConfig {
            topics: vec![
                TopicRetention {
                    pattern: "campaign:*".into(),
                    max_len: Some(5),
                    max_age: None,
                },
                TopicRetention {
                    pattern: "*".into(),
                    max_len: Some(7),
                    max_age: Some(Duration::from_secs(60)),
                },
            ],
            ..EventsConfig::default()
        };
        assert_eq!(
            c.retention("campaign:1"),
            Retention {
                max_len: 5,
                max_age_ms: 24 * 3600 * 1000
            }
        );
        assert_eq!(
            c.retention("other"),
            Retention {
                max_len: 7,
                max_age_ms: 60_000
            }
        );
    }
}
