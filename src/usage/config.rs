//! Usage metering's configuration (`[usage]`): retention per granularity, bounds, metrics.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::model::Granularity;
use crate::{config::require_positive, time::duration_ms};

/// `[usage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageConfig {
    /// How long a bucket is kept after it ends, per granularity.
    pub retention: Retention,
    /// Most events in one Record.
    pub max_events: usize,
    /// Most dimensions on one event.
    pub max_dimensions: usize,
    /// Distinct dimension values one bucket counts on their own; more count as `_other`.
    pub max_dimension_values: usize,
    /// Most buckets one Query or Top reads.
    pub max_points: usize,
    /// Longest subject, dimension value or unique value, in bytes.
    pub max_value_bytes: usize,
    /// How long a Record's `batch_id` is remembered (a resend within it counts nothing twice).
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Whether metrics not listed in `usage.metrics` may be recorded.
    pub allow_unknown_metrics: bool,
    /// Metrics by name: the dimensions each allows.
    pub metrics: BTreeMap<String, MetricConfig>,
}

/// `[usage.retention]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Retention {
    /// Minute buckets (default 2 days).
    #[serde(with = "humantime_serde")]
    pub minute: Duration,
    /// Hour buckets (default 90 days).
    #[serde(with = "humantime_serde")]
    pub hour: Duration,
    /// Day buckets (default 2 years).
    #[serde(with = "humantime_serde")]
    pub day: Duration,
    /// Month buckets (default 5 years).
    #[serde(with = "humantime_serde")]
    pub month: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            minute: Duration::from_secs(2 * DAY),
            hour: Duration::from_secs(90 * DAY),
            day: Duration::from_secs(730 * DAY),
            month: Duration::from_secs(1826 * DAY),
        }
    }
}

impl Retention {
    /// Milliseconds a bucket of `g` is kept after it ends.
    pub fn ms(&self, g: Granularity) -> i64 {
        duration_ms(match g {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
            Granularity::Month => self.month,
        })
    }
}

/// `[usage.metrics.<name>]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricConfig {
    /// The dimensions events of this metric may carry (empty: any, within the bounds).
    pub dimensions: Vec<String>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            max_events: 10_000,
            max_dimensions: 4,
            max_dimension_values: 100,
            max_points: 1500,
            max_value_bytes: 256,
            dedup_window: Duration::from_secs(600),
            allow_unknown_metrics: true,
            metrics: BTreeMap::new(),
        }
    }
}

impl UsageConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        for (key, ok) in [
            ("usage.retention.minute", !self.retention.minute.is_zero()),
            ("usage.retention.hour", !self.retention.hour.is_zero()),
            ("usage.retention.day", !self.retention.day.is_zero()),
            ("usage.retention.month", !self.retention.month.is_zero()),
            ("usage.max_events", self.max_events > 0),
            ("usage.max_dimension_values", self.max_dimension_values > 0),
            ("usage.max_points", self.max_points > 0),
            ("usage.max_value_bytes", self.max_value_bytes > 0),
            ("usage.dedup_window", !self.dedup_window.is_zero()),
        ] {
            require_positive(bad, key, ok);
        }
        if self.max_points > 5000 {
            bad.push("`usage.max_points` must be at most 5000 (one script reads them all)".into());
        }
        for (name, metric) in &self.metrics {
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`usage.metrics.{name}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
            if metric.dimensions.len() > self.max_dimensions {
                bad.push(format!(
                    "`usage.metrics.{name}.dimensions`: more than usage.max_dimensions ({})",
                    self.max_dimensions
                ));
            }
            for d in &metric.dimensions {
                if !crate::tenant::is_key_safe_name(d) {
                    bad.push(format!(
                        "`usage.metrics.{name}.dimensions`: '{d}' is not 1-64 characters of A-Z a-z 0-9 _ . -"
                    ));
                }
            }
        }
    }
}
