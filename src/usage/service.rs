//! Usage metering: validating events, summing a batch per metric and subject before the store
//! (a thousand events of one workspace are one script call), series and top lists, and the
//! totals usage quotas read.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::{
    config::UsageConfig,
    model::{Buckets, Granularity, Read, SubjectUsage},
    store::{Keep, UsageStore},
};
use crate::{
    error::{Error, Violation},
    tenant::Tenant,
    time::Millis,
};

/// The largest amount an event or a batch's sum may carry: Redis counts in 64-bit integers and
/// Lua in doubles, exact up to 2^53, and a bucket must stay far from either end.
const MAX_AMOUNT: i64 = 1 << 53;

/// One event, before validation.
#[derive(Debug, Clone)]
pub struct Event {
    /// The metric.
    pub metric: String,
    /// The subject.
    pub subject: String,
    /// The amount (1 when the caller gave none).
    pub amount: i64,
    /// Dimensions.
    pub dimensions: Vec<(String, String)>,
    /// A unique value, or empty.
    pub unique: String,
}

/// A Query, before validation.
#[derive(Debug, Clone)]
pub struct Query {
    /// The metric.
    pub metric: String,
    /// The subject.
    pub subject: String,
    /// Range start (Unix ms).
    pub from: Millis,
    /// Range end (Unix ms); `None`: now.
    pub to: Option<Millis>,
    /// Bucket size.
    pub granularity: Option<Granularity>,
    /// A dimension filter (at most one).
    pub dimensions: Vec<(String, String)>,
    /// A dimension to group by, or empty.
    pub group_by: String,
    /// Distinct counts instead of sums.
    pub unique: bool,
}

/// One series of a Query's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The group's dimension value (empty without `group_by`).
    pub value: String,
    /// (bucket start ms, value) for every bucket of the range.
    pub points: Vec<(Millis, i64)>,
    /// Sum of the points, or the distinct count over the range.
    pub total: i64,
}

/// A Top's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopList {
    /// (subject, total), highest first.
    pub entries: Vec<(String, i64)>,
    /// Start of the first bucket summed (ms).
    pub from: Millis,
    /// End of the last bucket summed (ms).
    pub to: Millis,
}

/// Usage operations over a store. Cheap to clone.
#[derive(Clone)]
pub struct Usage {
    store: Arc<dyn UsageStore>,
    config: Arc<UsageConfig>,
    keep: Keep,
    /// Events recorded per configured metric (others as `_other`): bounded labels.
    events: Arc<HashMap<String, metrics::Counter>>,
    other_events: metrics::Counter,
}

impl Usage {
    /// Usage from `config` over `store`.
    pub fn new(store: Arc<dyn UsageStore>, config: UsageConfig) -> Self {
        let keep = Granularity::ALL.map(|g| config.retention.ms(g));
        let counter =
            |m: &str| metrics::counter!("flowstate_usage_events_total", "metric" => m.to_owned());
        Self {
            events: Arc::new(
                config
                    .metrics
                    .keys()
                    .map(|m| (m.clone(), counter(m)))
                    .collect(),
            ),
            other_events: counter("_other"),
            store,
            keep,
            config: Arc::new(config),
        }
    }

    fn check_metric(&self, field: &str, metric: &str) -> Result<(), Error> {
        if !crate::tenant::is_key_safe_name(metric) {
            return Err(Error::invalid(
                field,
                "1-64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        if !self.config.allow_unknown_metrics && !self.config.metrics.contains_key(metric) {
            // The caller's string is not echoed: the field says which one.
            return Err(Error::invalid(
                field,
                "not a configured metric (usage.allow_unknown_metrics is false)",
            ));
        }
        Ok(())
    }

    fn check_value(&self, field: &str, value: &str, may_be_empty: bool) -> Result<(), Error> {
        if (value.is_empty() && !may_be_empty) || value.len() > self.config.max_value_bytes.get() {
            return Err(Error::invalid(
                field,
                format!("1 to {} bytes", self.config.max_value_bytes),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(Error::invalid(field, "no control characters"));
        }
        Ok(())
    }

    fn check_event(&self, i: usize, e: &Event) -> Result<(), Error> {
        let f = |name: &str| format!("events[{i}].{name}");
        self.check_metric(&f("metric"), &e.metric)?;
        if e.amount.unsigned_abs() > MAX_AMOUNT as u64 {
            return Err(Error::invalid(f("amount"), "at most 2^53 either way"));
        }
        self.check_value(&f("subject"), &e.subject, false)?;
        self.check_value(&f("unique"), &e.unique, true)?;
        if e.dimensions.len() > self.config.max_dimensions {
            return Err(Error::invalid(
                f("dimensions"),
                format!("at most {} dimensions", self.config.max_dimensions),
            ));
        }
        let allowed = self.config.metrics.get(&e.metric).map(|m| &m.dimensions);
        for (k, v) in &e.dimensions {
            if !crate::tenant::is_key_safe_name(k) {
                return Err(Error::invalid(
                    f("dimensions"),
                    "names are 1-64 characters of A-Z a-z 0-9 _ . -",
                ));
            }
            if allowed.is_some_and(|a| !a.is_empty() && !a.contains(k)) {
                return Err(Error::invalid(
                    f("dimensions"),
                    "a dimension the metric's usage.metrics.<name>.dimensions does not list",
                ));
            }
            self.check_value(&f("dimensions"), v, false)?;
        }
        Ok(())
    }

    /// Validates every event (a bad one refuses the whole batch, nothing recorded), sums them
    /// per metric and subject, and records the sums in one store round trip.
    pub async fn record(
        &self,
        tenant: &Tenant,
        events: Vec<Event>,
        batch_id: &str,
    ) -> Result<u32, Error> {
        if !batch_id.is_empty() && !crate::tenant::is_key_safe_name(batch_id) {
            return Err(Error::invalid(
                "batch_id",
                "1-64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        if events.is_empty() || events.len() > self.config.max_events.get() {
            return Err(Error::invalid(
                "events",
                format!("give between 1 and {} events", self.config.max_events),
            ));
        }
        for (i, e) in events.iter().enumerate() {
            self.check_event(i, e)?;
        }
        type Sums = (BTreeMap<String, i64>, BTreeSet<String>);
        let mut sums: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
        let add = |sum: &mut i64, amount: i64| -> Result<(), Error> {
            *sum = sum
                .checked_add(amount)
                .filter(|s| s.unsigned_abs() <= MAX_AMOUNT as u64)
                .ok_or_else(|| {
                    Error::invalid(
                        "events",
                        "one metric and subject add up beyond 2^53 in one batch",
                    )
                })?;
            Ok(())
        };
        for e in &events {
            let (fields, uniques) = sums.entry((&e.metric, &e.subject)).or_default();
            add(fields.entry("_".to_owned()).or_default(), e.amount)?;
            for (k, v) in &e.dimensions {
                add(fields.entry(format!("{k}={v}")).or_default(), e.amount)?;
            }
            if !e.unique.is_empty() {
                uniques.insert(e.unique.clone());
            }
        }
        let batch: Vec<SubjectUsage> = sums
            .into_iter()
            .map(|((metric, subject), (fields, uniques))| SubjectUsage {
                metric: metric.to_owned(),
                subject: subject.to_owned(),
                fields: fields.into_iter().collect(),
                uniques: uniques.into_iter().collect(),
            })
            .collect();
        self.store
            .record(
                tenant,
                &batch,
                self.keep,
                self.config.max_dimension_values.get() + 1,
                (!batch_id.is_empty()).then(|| {
                    (
                        batch_id,
                        crate::time::duration_ms(self.config.dedup_window.get()),
                    )
                }),
            )
            .await?;
        for e in &events {
            self.events
                .get(&e.metric)
                .unwrap_or(&self.other_events)
                .increment(1);
        }
        Ok(events.len() as u32)
    }

    /// The buckets of `g` from `from` to `to`, bounded by `usage.max_points`.
    fn range(&self, g: Granularity, from: Millis, to: Millis) -> Result<(i64, i64), Error> {
        let (first, last) = (g.index(from), g.index(to));
        if last < first {
            return Err(Error::invalid("to", "must not be before from"));
        }
        if last - first >= self.config.max_points.get() as i64 {
            return Err(Error::invalid(
                "from",
                format!(
                    "the range holds more than usage.max_points ({}) buckets",
                    self.config.max_points
                ),
            ));
        }
        Ok((first, last))
    }

    /// A metric's series for one subject.
    pub async fn query(&self, tenant: &Tenant, q: Query) -> Result<Vec<Series>, Error> {
        self.check_metric("metric", &q.metric)?;
        self.check_value("subject", &q.subject, false)?;
        let Some(g) = q.granularity else {
            return Err(Error::invalid(
                "granularity",
                "choose minute, hour, day or month",
            ));
        };
        let mut bad = Vec::new();
        if q.dimensions.len() > 1 {
            bad.push(Violation::new(
                "dimensions",
                "filter by at most one dimension",
            ));
        }
        if q.unique && (!q.dimensions.is_empty() || !q.group_by.is_empty()) {
            bad.push(Violation::new(
                "unique",
                "distinct counts are kept per metric and subject, not per dimension",
            ));
        }
        if !q.group_by.is_empty() && !q.dimensions.is_empty() {
            bad.push(Violation::new(
                "group_by",
                "either group_by or a dimension filter",
            ));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        // Without `to`, the series ends at the store's current bucket. This replica's clock may
        // lag the store's (the store's clock names the buckets): one bucket more is read, and
        // dropped below when it holds nothing (so a lag of up to a bucket loses nothing).
        let (first, last) = match q.to {
            Some(to) => self.range(g, q.from, to)?,
            None => {
                let (first, last) = self.range(g, q.from, crate::time::now_ms())?;
                (first, last + 1)
            }
        };
        let read = if q.unique {
            Read::Unique
        } else if !q.group_by.is_empty() {
            Read::Group(q.group_by.clone())
        } else if let Some((k, v)) = q.dimensions.first() {
            Read::Field(format!("{k}={v}"))
        } else {
            Read::Field("_".to_owned())
        };
        let data = self
            .store
            .query(
                tenant,
                Buckets {
                    metric: &q.metric,
                    subject: &q.subject,
                    granularity: g,
                    first,
                    last,
                },
                &read,
            )
            .await?;
        let mut data = data;
        let mut last = last;
        if q.to.is_none() && data.buckets.last().is_some_and(Vec::is_empty) {
            data.buckets.pop();
            last -= 1;
        }
        let starts: Vec<Millis> = (first..=last).map(|i| g.start(i)).collect();
        if let Read::Group(_) = read {
            let values: BTreeSet<&String> = data.buckets.iter().flatten().map(|(v, _)| v).collect();
            return Ok(values
                .into_iter()
                .map(|value| {
                    let points: Vec<(Millis, i64)> = starts
                        .iter()
                        .zip(&data.buckets)
                        .map(|(s, b)| {
                            (
                                *s,
                                b.iter().find(|(v, _)| v == value).map_or(0, |(_, n)| *n),
                            )
                        })
                        .collect();
                    Series {
                        value: value.clone(),
                        total: points.iter().map(|(_, n)| n).sum(),
                        points,
                    }
                })
                .collect());
        }
        let points: Vec<(Millis, i64)> = starts
            .iter()
            .zip(&data.buckets)
            .map(|(s, b)| (*s, b.first().map_or(0, |(_, n)| *n)))
            .collect();
        let total = data
            .distinct
            .unwrap_or_else(|| points.iter().map(|(_, n)| n).sum());
        Ok(vec![Series {
            value: String::new(),
            points,
            total,
        }])
    }

    /// The `n` subjects with the highest totals over the last `window_ms`.
    pub async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        window_ms: Millis,
        n: u32,
        granularity: Option<Granularity>,
    ) -> Result<TopList, Error> {
        self.check_metric("metric", metric)?;
        if window_ms <= 0 {
            return Err(Error::invalid("window", "must be positive"));
        }
        if n == 0 || n > 1000 {
            return Err(Error::invalid("n", "between 1 and 1000"));
        }
        const HOUR: Millis = 3_600_000;
        let g = granularity.unwrap_or(if window_ms <= 2 * HOUR {
            Granularity::Minute
        } else if window_ms <= 7 * 24 * HOUR {
            Granularity::Hour
        } else if window_ms <= 400 * 24 * HOUR {
            Granularity::Day
        } else {
            Granularity::Month
        });
        let unit = match g {
            Granularity::Month => 30 * 24 * HOUR,
            other => other.max_len_ms(),
        };
        // Rounded up without an addition that could overflow (window_ms may be i64::MAX).
        let count = window_ms / unit + i64::from(window_ms % unit != 0);
        if count > self.config.max_points.get() as i64 {
            return Err(Error::invalid(
                "window",
                format!(
                    "more than usage.max_points ({}) buckets: choose a coarser granularity",
                    self.config.max_points
                ),
            ));
        }
        let (entries, current) = self
            .store
            .top(tenant, metric, g, count as usize, n as usize)
            .await?;
        Ok(TopList {
            entries,
            from: g.start(current - count + 1),
            to: g.start(current + 1),
        })
    }

    /// A subject's total of `metric` in the current bucket of `g` by the store's clock, and the
    /// milliseconds until that bucket ends: what a usage quota reads.
    pub async fn current(
        &self,
        tenant: &Tenant,
        metric: &str,
        subject: &str,
        g: Granularity,
    ) -> Result<(i64, Millis), crate::store::StoreError> {
        self.store.current(tenant, metric, subject, g).await
    }
}
