//! Usage metering's configuration (`[usage]`): retention per granularity, bounds, metrics.

use std::{collections::BTreeMap, num::NonZeroUsize};

use serde::{Deserialize, Serialize};

use super::model::Granularity;
use crate::{
    config::{PositiveDuration, nonzero},
    time::duration_ms,
};

/// `[usage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageConfig {
    /// How long a bucket is kept after it ends, per granularity.
    pub retention: Retention,
    /// Most events in one Record.
    pub max_events: NonZeroUsize,
    /// Most dimensions on one event.
    pub max_dimensions: usize,
    /// Distinct dimension values one bucket counts on their own; more count as `_other`.
    pub max_dimension_values: NonZeroUsize,
    /// Most buckets one Query or Top reads.
    pub max_points: NonZeroUsize,
    /// Longest subject, dimension value or unique value, in bytes.
    pub max_value_bytes: NonZeroUsize,
    /// How long a Record's `batch_id` is remembered (a resend within it counts nothing twice).
    pub dedup_window: PositiveDuration,
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
    pub minute: PositiveDuration,
    /// Hour buckets (default 90 days).
    pub hour: PositiveDuration,
    /// Day buckets (default 2 years).
    pub day: PositiveDuration,
    /// Month buckets (default 5 years).
    pub month: PositiveDuration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            minute: PositiveDuration::from_secs(nonzero!(2 * DAY)),
            hour: PositiveDuration::from_secs(nonzero!(90 * DAY)),
            day: PositiveDuration::from_secs(nonzero!(730 * DAY)),
            month: PositiveDuration::from_secs(nonzero!(1826 * DAY)),
        }
    }
}

impl Retention {
    /// Milliseconds a bucket of `g` is kept after it ends.
    pub fn ms(&self, g: Granularity) -> i64 {
        duration_ms(
            match g {
                Granularity::Minute => self.minute,
                Granularity::Hour => self.hour,
                Granularity::Day => self.day,
                Granularity::Month => self.month,
            }
            .get(),
        )
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
            max_events: nonzero!(10_000),
            max_dimensions: 4,
            max_dimension_values: nonzero!(100),
            max_points: nonzero!(1500),
            max_value_bytes: nonzero!(256),
            dedup_window: PositiveDuration::from_secs(nonzero!(600)),
            allow_unknown_metrics: true,
            metrics: BTreeMap::new(),
        }
    }
}

impl UsageConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        if self.max_points.get() > 5000 {
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
