//! Metrics of the rate limit service: hits per domain and rule (and per detailed value, up to a
//! cap so a descriptor value cannot mint unbounded series), requests per domain and code. Every
//! counter is registered once, when the rules load, never per request.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

use super::rules::{Matched, Rules};

/// Hit counters of one rule (or one detailed value of it), registered once.
pub(super) struct RuleMetrics {
    pub(super) within: metrics::Counter,
    pub(super) near: metrics::Counter,
    pub(super) over: metrics::Counter,
    pub(super) over_cache: metrics::Counter,
    pub(super) shadow: metrics::Counter,
    pub(super) unlimited: metrics::Counter,
}

impl RuleMetrics {
    pub(super) fn new(domain: &str, rule: &str) -> Self {
        let c = |result: &'static str| {
            metrics::counter!(
                "flowstate_rls_hits_total",
                "domain" => domain.to_owned(),
                "rule" => rule.to_owned(),
                "result" => result
            )
        };
        Self {
            within: c("within_limit"),
            near: c("near_limit"),
            over: c("over_limit"),
            over_cache: c("over_limit_local_cache"),
            shadow: c("shadow_mode"),
            unlimited: c("unlimited"),
        }
    }
}

/// Metrics of the rules in force: by rule path, and per rule the detailed values seen so far
/// (at most `rls.detailed_metric_values` each, then the rule's own).
/// (domain, rule path or metric key).
type RuleKey = (Arc<str>, String);

pub(super) struct Metrics {
    rules: HashMap<RuleKey, Arc<RuleMetrics>>,
    detailed: Mutex<HashMap<RuleKey, Arc<RuleMetrics>>>,
    detailed_per_rule: Mutex<HashMap<RuleKey, usize>>,
    cap: usize,
}

impl Metrics {
    pub(super) fn new(rules: &Rules, cap: usize) -> Self {
        let mut by_rule = HashMap::new();
        for rule in rules.rules() {
            by_rule.insert(
                (rule.domain.clone(), rule.path.clone()),
                Arc::new(RuleMetrics::new(&rule.domain, &rule.path)),
            );
        }
        Self {
            rules: by_rule,
            detailed: Mutex::new(HashMap::new()),
            detailed_per_rule: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// The counters for a match: its detailed key's while there is room, else the rule's.
    pub(super) fn of(&self, m: &Matched) -> Option<Arc<RuleMetrics>> {
        let rule = &m.rule;
        let own = self
            .rules
            .get(&(rule.domain.clone(), rule.path.clone()))
            .cloned();
        let Some(key) = &m.metric_key else {
            return own;
        };
        let full = (rule.domain.clone(), key.clone());
        let mut detailed = self.detailed.lock();
        if let Some(found) = detailed.get(&full) {
            return Some(found.clone());
        }
        let mut per_rule = self.detailed_per_rule.lock();
        let count = per_rule
            .entry((rule.domain.clone(), rule.path.clone()))
            .or_default();
        if *count >= self.cap {
            return own;
        }
        *count += 1;
        let made = Arc::new(RuleMetrics::new(&rule.domain, key));
        detailed.insert(full, made.clone());
        Some(made)
    }
}

/// Requests answered OK and OVER_LIMIT, of one domain (registered once, not per request).
pub(super) struct RequestCounters {
    ok: metrics::Counter,
    over_limit: metrics::Counter,
}

impl RequestCounters {
    pub(super) fn new(domain: &str) -> Self {
        let c = |code: &'static str| metrics::counter!("flowstate_rls_requests_total", "domain" => domain.to_owned(), "code" => code);
        Self {
            ok: c("ok"),
            over_limit: c("over_limit"),
        }
    }

    pub(super) fn count(&self, over_limit: bool) {
        if over_limit {
            self.over_limit.increment(1);
        } else {
            self.ok.increment(1);
        }
    }
}
