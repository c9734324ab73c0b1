//! Envoy's rate limit service over flowstate's counters: rules matched per descriptor, every
//! descriptor of a request decided all-or-nothing in one store step, the over-limit cache, and
//! metrics per domain and rule.
//!
//! A request's descriptors become rate-limit counters ([`crate::ratelimit::Counter`]) in the
//! same store the RateLimitService uses (one Lua script on Redis, one critical section in
//! memory): a `shadow_mode` rule is a [`Role::Shadow`] counter (counted, never decides), a
//! `quota_mode` rule a [`Role::Quota`] one (the request is refused only when every quota rule of
//! it is over), every other rule a [`Role::Enforced`] one. Nothing is consumed unless the
//! request is admitted. Some requests are refused without the store: a zero limit, hits above a
//! limit's capacity, and counters the over-limit cache knows to be over.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use super::{
    cache::OverLimitCache,
    config::RlsConfig,
    metrics::{Metrics, RequestCounters, RuleMetrics},
    rules::{Limit, Matched, Rule, Rules, Unit, counter_id},
};
use crate::{
    error::Error,
    ratelimit::{
        Algorithm, Counter, CounterId, Decision, FailureMode, Policy, RateLimitStore, Role, admits,
    },
    tenant::Tenant,
};

/// One descriptor of a request, as the domain sees it.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// `(key, value)` entries, in order.
    pub entries: Vec<(String, String)>,
    /// A limit given in the request instead of the configured one.
    pub limit_override: Option<(u32, Unit)>,
    /// Hits this descriptor adds (the request's `hits_addend` unless it has its own).
    pub hits: u64,
}

/// A descriptor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// No rule matched it.
    Unknown,
    /// Within its limit (or unlimited, replaced, in shadow mode).
    Ok,
    /// Over its limit.
    OverLimit,
}

/// The limit reported for a descriptor (`current_limit`).
#[derive(Debug, Clone)]
pub struct CurrentLimit {
    /// `rate_limit.name`.
    pub name: String,
    /// `requests_per_unit`.
    pub requests_per_unit: u32,
    /// `unit`.
    pub unit: Unit,
}

/// One descriptor's status.
#[derive(Debug, Clone)]
pub struct Status {
    /// Its code.
    pub code: Code,
    /// The limit that applied, if one did.
    pub current_limit: Option<CurrentLimit>,
    /// What is left in the current window (`u32::MAX` for an unlimited rule).
    pub limit_remaining: u32,
    /// Until the limit is whole again.
    pub until_reset: Option<Duration>,
}

/// The answer to a ShouldRateLimit.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Over the limit as a whole (after the global shadow mode).
    pub over_limit: bool,
    /// Per descriptor, in request order.
    pub statuses: Vec<Status>,
    /// Headers for the response (`rls.response_headers`).
    pub headers: Vec<(String, String)>,
    /// `dynamic_metadata` (`rls.response_dynamic_metadata`).
    pub metadata: Option<prost_types::Struct>,
}

/// The rules in force and everything derived from them.
struct Loaded {
    rules: Rules,
    metrics: Metrics,
    /// Per configured domain; requests for others count under `_unknown`.
    requests: HashMap<String, RequestCounters>,
    unknown_domain: RequestCounters,
    /// Per domain: the metrics of limits given in requests (`limit` overrides).
    overrides: Mutex<HashMap<String, Arc<RuleMetrics>>>,
}

/// What became of one descriptor before the store.
enum Plan {
    /// No rule: UNKNOWN.
    Unmatched,
    /// Matched a rule another matched rule replaces: OK, nothing counted.
    Replaced,
    /// `unlimited`: OK.
    Unlimited(Matched),
    /// Refused without the store: a zero limit, hits above the capacity, or the over-limit
    /// cache; the instant it ends, when known.
    Refused {
        m: Matched,
        until: Option<Instant>,
        cached: bool,
    },
    /// Decided by the store: the counter's position in the store call.
    Counted { m: Matched, at: usize },
}

/// What the store decided for a request's counters, and what a status needs besides its plan.
struct Decided<'a> {
    tenant: &'a Tenant,
    loaded: &'a Loaded,
    counters: &'a [Counter],
    decisions: &'a [Decision],
    admitted: bool,
    /// When the store call was sent (the over-limit cache's entries count from it).
    sent: Instant,
}

/// Whether the request is refused before the store: any enforced refusal refuses it, and so do
/// quota rules that are all refused. Then nothing is asked (or consumed).
fn refused_up_front(plans: &[Plan]) -> bool {
    let mut enforced_refused = false;
    let (mut quotas, mut quotas_refused) = (0usize, 0usize);
    for plan in plans {
        match plan {
            Plan::Refused { m, .. } if m.rule.shadow => {}
            Plan::Refused { m, .. } if m.rule.quota => {
                quotas += 1;
                quotas_refused += 1;
            }
            Plan::Refused { .. } => enforced_refused = true,
            Plan::Counted { m, .. } if m.rule.quota && !m.rule.shadow => quotas += 1,
            _ => {}
        }
    }
    enforced_refused || (quotas > 0 && quotas_refused == quotas)
}

/// Envoy's rate limit service (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Rls {
    store: Arc<dyn RateLimitStore>,
    loaded: Arc<RwLock<Arc<Loaded>>>,
    cache: OverLimitCache,
    config: Arc<RlsConfig>,
}

impl Rls {
    /// The service over `store` with `rules` in force.
    pub fn new(store: Arc<dyn RateLimitStore>, rules: Rules, config: RlsConfig) -> Self {
        let loaded = Self::derive(rules, &config);
        Self {
            store,
            loaded: Arc::new(RwLock::new(Arc::new(loaded))),
            cache: OverLimitCache::new(config.local_cache_entries),
            config: Arc::new(config),
        }
    }

    fn derive(rules: Rules, config: &RlsConfig) -> Loaded {
        let rule_count = rules.rules().len();
        metrics::gauge!("flowstate_rls_rules").set(rule_count as f64);
        Loaded {
            metrics: Metrics::new(&rules, config.detailed_metric_values),
            requests: rules
                .domain_names()
                .into_iter()
                .map(|d| (d.to_owned(), RequestCounters::new(d)))
                .collect(),
            unknown_domain: RequestCounters::new("_unknown"),
            rules,
            overrides: Mutex::new(HashMap::new()),
        }
    }

    /// Puts `rules` in force and forgets the over-limit cache (limits may have changed).
    pub fn replace_rules(&self, rules: Rules) {
        let loaded = Arc::new(Self::derive(rules, &self.config));
        *self.loaded.write() = loaded;
        self.cache.clear();
    }

    /// The rules in force.
    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().clone()
    }

    /// Validates a request's shape; nothing is counted for a bad one.
    fn validate(&self, domain: &str, descriptors: &[Descriptor]) -> Result<(), Error> {
        if domain.is_empty() {
            return Err(Error::invalid(
                "domain",
                "rate limit domain must not be empty",
            ));
        }
        if descriptors.is_empty() || descriptors.len() > self.config.max_descriptors.get() {
            return Err(Error::invalid(
                "descriptors",
                format!(
                    "give between 1 and {} descriptors",
                    self.config.max_descriptors
                ),
            ));
        }
        // A descriptor without entries, or with an empty key, matches no rule (UNKNOWN), as in
        // envoyproxy/ratelimit: Envoy sends such descriptors when an action finds nothing.
        for (i, d) in descriptors.iter().enumerate() {
            if d.entries.len() > self.config.max_entries.get() {
                return Err(Error::invalid(
                    format!("descriptors[{i}].entries"),
                    format!("at most {} entries", self.config.max_entries),
                ));
            }
            for (j, (k, v)) in d.entries.iter().enumerate() {
                if k.len() > self.config.max_entry_bytes.get()
                    || v.len() > self.config.max_entry_bytes.get()
                {
                    return Err(Error::invalid(
                        format!("descriptors[{i}].entries[{j}]"),
                        format!(
                            "key and value are at most {} bytes",
                            self.config.max_entry_bytes
                        ),
                    ));
                }
            }
            if let Some((_, unit)) = d.limit_override
                && unit.period_ms() <= 0
            {
                return Err(Error::invalid(
                    format!("descriptors[{i}].limit.unit"),
                    "unknown unit",
                ));
            }
        }
        Ok(())
    }

    /// Decides a request (see the module docs).
    pub async fn should_rate_limit(
        &self,
        tenant: &Tenant,
        domain: &str,
        descriptors: Vec<Descriptor>,
    ) -> Result<Outcome, Error> {
        self.validate(domain, &descriptors)?;
        let loaded = self.current();
        if !loaded.rules.has_domain(domain) {
            // As envoyproxy/ratelimit: an unknown domain limits nothing.
            loaded.unknown_domain.count(false);
            return Ok(Outcome {
                over_limit: false,
                statuses: descriptors.iter().map(|_| unknown()).collect(),
                headers: Vec::new(),
                metadata: self.metadata(domain, &descriptors, &[]),
            });
        }
        let (plans, counters) = self.plan(&loaded, tenant, domain, &descriptors);
        let refused_up_front = refused_up_front(&plans);
        let sent = Instant::now();
        let decisions: Vec<Decision> = if refused_up_front || counters.is_empty() {
            Vec::new()
        } else {
            self.store.check(tenant, &counters, true).await?
        };
        let admitted = !refused_up_front && admits(counters.iter().map(|c| c.role).zip(&decisions));
        let decided = Decided {
            tenant,
            loaded: &loaded,
            counters: &counters,
            decisions: &decisions,
            admitted,
            sent,
        };
        let mut statuses = Vec::with_capacity(plans.len());
        let mut passed = Vec::new();
        for (i, (plan, d)) in plans.iter().zip(&descriptors).enumerate() {
            let (status, pass) = self.status(&decided, plan, d);
            if pass {
                passed.push(i);
            }
            statuses.push(status);
        }

        let mut over_limit = !admitted;
        if over_limit && self.config.shadow_mode {
            metrics::counter!("flowstate_rls_global_shadow_mode_total").increment(1);
            over_limit = false;
        }
        loaded
            .requests
            .get(domain)
            .unwrap_or(&loaded.unknown_domain)
            .count(over_limit);
        let headers = if self.config.response_headers {
            self.headers(&statuses)
        } else {
            Vec::new()
        };
        let metadata = self.metadata(domain, &descriptors, &plans_metadata(&plans, &passed));
        Ok(Outcome {
            over_limit,
            statuses,
            headers,
            metadata,
        })
    }

    /// Matches each descriptor to its rule and plans it: what is decided without the store,
    /// and the counters (one per distinct counter, costs summed) the store decides.
    fn plan(
        &self,
        loaded: &Loaded,
        tenant: &Tenant,
        domain: &str,
        descriptors: &[Descriptor],
    ) -> (Vec<Plan>, Vec<Counter>) {
        let matches: Vec<Option<Matched>> = descriptors
            .iter()
            .map(|d| match d.limit_override {
                Some((rpu, unit)) => Some(override_match(domain, rpu, unit)),
                None => loaded.rules.find(domain, &d.entries),
            })
            .collect();
        let replaced: HashSet<String> = matches
            .iter()
            .flatten()
            .flat_map(|m| m.rule.replaces.iter().cloned())
            .collect();

        let mut plans = Vec::with_capacity(descriptors.len());
        let mut counters: Vec<Counter> = Vec::new();
        for (d, m) in descriptors.iter().zip(matches) {
            let Some(m) = m else {
                plans.push(Plan::Unmatched);
                continue;
            };
            if !m.rule.name.is_empty() && replaced.contains(&m.rule.name) {
                plans.push(Plan::Replaced);
                continue;
            }
            let policy = match &m.rule.limit {
                Limit::Unlimited => {
                    plans.push(Plan::Unlimited(m));
                    continue;
                }
                Limit::Counted { policy, .. } => *policy,
            };
            let Some(policy) = policy.filter(|p| d.hits <= p.capacity()) else {
                // A zero limit, or more hits than the limit can ever admit.
                plans.push(Plan::Refused {
                    m,
                    until: None,
                    cached: false,
                });
                continue;
            };
            let role = if m.rule.shadow {
                Role::Shadow
            } else if m.rule.quota {
                Role::Quota
            } else {
                Role::Enforced
            };
            let id = CounterId {
                limit: m.rule.counter.clone(),
                algorithm: policy.algorithm.code(),
                key: counter_key(d, &m.shared),
            };
            if role == Role::Enforced
                && let Some(until) = self.cache.over(tenant, &id, d.hits)
            {
                plans.push(Plan::Refused {
                    m,
                    until: Some(until),
                    cached: true,
                });
                continue;
            }
            // Two descriptors of one counter (the same entries twice, or share_threshold values
            // of one pattern) are one counter with both costs: a script that decided each copy on
            // the same state would admit both.
            if let Some(at) = counters.iter().position(|c| c.id == id) {
                let c = &mut counters[at];
                let cost = c.cost.saturating_add(d.hits);
                if cost > c.policy.capacity() {
                    plans.push(Plan::Refused {
                        m,
                        until: None,
                        cached: false,
                    });
                    continue;
                }
                c.cost = cost;
                c.role = stronger(c.role, role);
                plans.push(Plan::Counted { m, at });
                continue;
            }
            plans.push(Plan::Counted {
                m,
                at: counters.len(),
            });
            counters.push(Counter {
                id,
                policy,
                cost: d.hits,
                role,
            });
        }

        (plans, counters)
    }

    /// The status of one planned descriptor once the store has decided (or was not asked), and
    /// whether it passed (its metadata is returned); counts it in its rule's metrics.
    fn status(&self, decided: &Decided<'_>, plan: &Plan, d: &Descriptor) -> (Status, bool) {
        let mut pass = false;
        let status = match plan {
            Plan::Unmatched => unknown(),
            Plan::Replaced => Status {
                code: Code::Ok,
                current_limit: None,
                limit_remaining: 0,
                until_reset: None,
            },
            Plan::Unlimited(m) => {
                if let Some(metrics) = decided.loaded.metrics_of(m) {
                    metrics.unlimited.increment(d.hits);
                }
                pass = true;
                Status {
                    code: Code::Ok,
                    current_limit: None,
                    limit_remaining: u32::MAX,
                    until_reset: None,
                }
            }
            Plan::Refused { m, until, cached } => {
                let metrics = decided.loaded.metrics_of(m);
                let code = if m.rule.shadow {
                    if let Some(metrics) = &metrics {
                        metrics.shadow.increment(d.hits);
                    }
                    Code::Ok
                } else {
                    if let Some(metrics) = &metrics {
                        metrics.over.increment(d.hits);
                        if *cached {
                            metrics.over_cache.increment(d.hits);
                        }
                    }
                    Code::OverLimit
                };
                let until_reset = until
                    .map(|u| u.saturating_duration_since(Instant::now()))
                    .or_else(|| current_limit(&m.rule).map(|l| window_left(l.unit)));
                Status {
                    code,
                    current_limit: current_limit(&m.rule),
                    limit_remaining: 0,
                    until_reset,
                }
            }
            Plan::Counted { m, at } => {
                let limit = current_limit(&m.rule);
                let Some(decision) = decided.decisions.get(*at) else {
                    // The store was not asked: another descriptor refused the request.
                    return (
                        Status {
                            code: Code::Ok,
                            current_limit: limit,
                            limit_remaining: 0,
                            until_reset: None,
                        },
                        false,
                    );
                };
                let counter = &decided.counters[*at];
                self.record(
                    decided.loaded,
                    m,
                    counter,
                    d.hits,
                    decision,
                    decided.admitted,
                );
                if !decision.allowed && counter.role == Role::Enforced {
                    self.cache.insert(
                        decided.tenant,
                        &counter.id,
                        counter.cost,
                        decided.sent,
                        Duration::from_millis(decision.retry_after_ms.max(0) as u64)
                            .min(self.config.local_cache_max_ttl.get()),
                    );
                }
                pass = decision.allowed;
                Status {
                    code: if decision.allowed || m.rule.shadow {
                        Code::Ok
                    } else {
                        Code::OverLimit
                    },
                    current_limit: limit,
                    limit_remaining: u32::try_from(decision.remaining).unwrap_or(u32::MAX),
                    until_reset: Some(Duration::from_millis(decision.reset_after_ms.max(0) as u64)),
                }
            }
        };
        (status, pass)
    }

    /// Counts a store decision in the rule's metrics (in hits, as envoyproxy/ratelimit does).
    fn record(
        &self,
        loaded: &Loaded,
        m: &Matched,
        c: &Counter,
        hits: u64,
        d: &Decision,
        admitted: bool,
    ) {
        let Some(metrics) = loaded.metrics_of(m) else {
            return;
        };
        if !d.allowed {
            if m.rule.shadow {
                metrics.shadow.increment(hits);
            } else {
                metrics.over.increment(hits);
            }
            return;
        }
        if !admitted {
            // Allowed alone, refused with the request: nothing consumed, nothing to count.
            return;
        }
        let limit = c.policy.limit;
        let used = limit.saturating_sub(d.remaining);
        let near = (limit as f64 * self.config.near_limit_ratio).floor() as u64;
        if used > near {
            metrics.near.increment(hits);
        }
        metrics.within.increment(hits);
    }

    /// `RateLimit-*` headers of the descriptor closest to its limit (an over-limit one first).
    fn headers(&self, statuses: &[Status]) -> Vec<(String, String)> {
        let closest = statuses
            .iter()
            .filter(|s| s.current_limit.is_some())
            .min_by_key(|s| (s.code != Code::OverLimit, s.limit_remaining));
        let Some(s) = closest else {
            return Vec::new();
        };
        let Some(limit) = &s.current_limit else {
            return Vec::new();
        };
        let reset = s
            .until_reset
            .unwrap_or_else(|| window_left(limit.unit))
            .as_secs_f64()
            .ceil() as u64;
        vec![
            (
                self.config.header_limit.clone(),
                limit.requests_per_unit.to_string(),
            ),
            (
                self.config.header_remaining.clone(),
                s.limit_remaining.to_string(),
            ),
            (self.config.header_reset.clone(), reset.to_string()),
        ]
    }

    /// envoyproxy/ratelimit's response metadata: the domain, the descriptors, the hits and the
    /// metadata of the rules that passed.
    fn metadata(
        &self,
        domain: &str,
        descriptors: &[Descriptor],
        passed: &[&prost_types::Struct],
    ) -> Option<prost_types::Struct> {
        use prost_types::{ListValue, Struct, Value, value::Kind};
        if !self.config.response_dynamic_metadata {
            return None;
        }
        let string = |s: String| Value {
            kind: Some(Kind::StringValue(s)),
        };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("domain".to_owned(), string(domain.to_owned()));
        let list = descriptors
            .iter()
            .map(|d| {
                let entries = d
                    .entries
                    .iter()
                    .map(|(k, v)| string(format!("{k}={v}")))
                    .collect();
                let mut f = std::collections::BTreeMap::new();
                f.insert(
                    "entries".to_owned(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue { values: entries })),
                    },
                );
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: f })),
                }
            })
            .collect();
        fields.insert(
            "descriptors".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values: list })),
            },
        );
        let mut merged = Struct::default();
        for m in passed {
            merge(&mut merged, m);
        }
        if !merged.fields.is_empty() {
            fields.insert(
                "metadata".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(merged)),
                },
            );
        }
        Some(Struct { fields })
    }
}

impl Loaded {
    fn metrics_of(&self, m: &Matched) -> Option<Arc<RuleMetrics>> {
        if m.rule.path.is_empty() {
            let domain = m.rule.domain.to_string();
            let mut overrides = self.overrides.lock();
            return Some(
                overrides
                    .entry(domain.clone())
                    .or_insert_with(|| Arc::new(RuleMetrics::new(&domain, "_override")))
                    .clone(),
            );
        }
        self.metrics.of(m)
    }
}

fn plans_metadata<'a>(plans: &'a [Plan], passed: &[usize]) -> Vec<&'a prost_types::Struct> {
    passed
        .iter()
        .filter_map(|&i| match &plans[i] {
            Plan::Unlimited(m) | Plan::Counted { m, .. } => m.rule.metadata.as_ref(),
            _ => None,
        })
        .collect()
}

/// Merges `src` into `dest`: nested structs merge, otherwise the first value stays (as
/// envoyproxy/ratelimit does).
fn merge(dest: &mut prost_types::Struct, src: &prost_types::Struct) {
    use prost_types::value::Kind;
    for (k, v) in &src.fields {
        match (dest.fields.get_mut(k), &v.kind) {
            (
                Some(prost_types::Value {
                    kind: Some(Kind::StructValue(d)),
                }),
                Some(Kind::StructValue(s)),
            ) => merge(d, s),
            (Some(_), _) => {}
            (None, _) => {
                dest.fields.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The role of a counter two descriptors share: enforced if either is, else quota if either is.
fn stronger(a: Role, b: Role) -> Role {
    match (a, b) {
        (Role::Enforced, _) | (_, Role::Enforced) => Role::Enforced,
        (Role::Quota, _) | (_, Role::Quota) => Role::Quota,
        _ => Role::Shadow,
    }
}

fn unknown() -> Status {
    Status {
        code: Code::Unknown,
        current_limit: None,
        limit_remaining: 0,
        until_reset: None,
    }
}

fn current_limit(rule: &Rule) -> Option<CurrentLimit> {
    match &rule.limit {
        Limit::Counted {
            requests_per_unit,
            unit,
            ..
        } => Some(CurrentLimit {
            name: rule.name.clone(),
            requests_per_unit: *requests_per_unit,
            unit: *unit,
        }),
        Limit::Unlimited => None,
    }
}

/// What is left of the current window of `unit` by this replica's clock: only for statuses the
/// store did not decide (a zero limit), where envoyproxy/ratelimit reports the same.
fn window_left(unit: Unit) -> Duration {
    let period = unit.period_ms() as u128;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Duration::from_millis((period - now % period) as u64)
}

/// A limit given in the request (`descriptor.limit`): fixed windows of its unit, its own
/// counter per domain, unit and entries, never in shadow mode (as envoyproxy/ratelimit).
fn override_match(domain: &str, rpu: u32, unit: Unit) -> Matched {
    let policy = (rpu > 0).then_some(Policy {
        algorithm: Algorithm::FixedWindow,
        limit: u64::from(rpu),
        period_ms: unit.period_ms(),
        burst: 0,
        failure_mode: FailureMode::Closed,
    });
    Matched {
        rule: Arc::new(Rule {
            domain: Arc::from(domain),
            path: String::new(),
            limit: Limit::Counted {
                requests_per_unit: rpu,
                unit,
                policy,
            },
            name: String::new(),
            replaces: Vec::new(),
            shadow: false,
            quota: false,
            detailed_metric: false,
            metadata: None,
            counter: counter_id(&[domain.as_bytes(), b"\0override"], unit.period_ms()),
            source: "request".to_owned(),
        }),
        metric_key: None,
        shared: Vec::new(),
    }
}

/// The counter's key: the descriptor's entries (with a `share_threshold` entry's value replaced
/// by its wildcard pattern), escaped so that distinct descriptors never share a key; a long one
/// is replaced by its digest.
fn counter_key(d: &Descriptor, shared: &[Option<String>]) -> String {
    let mut key = String::new();
    for (i, (k, v)) in d.entries.iter().enumerate() {
        if i > 0 {
            key.push('|');
        }
        escape_into(&mut key, k);
        key.push('=');
        let v = shared.get(i).and_then(Option::as_deref).unwrap_or(v);
        escape_into(&mut key, v);
    }
    if key.len() <= 200 {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut short = String::from("#");
    for b in &digest[..16] {
        let _ = write!(short, "{b:02x}");
    }
    short
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, '\\' | '|' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(entries: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            limit_override: None,
            hits: 1,
        }
    }

    #[test]
    fn counter_keys_never_collide_and_stay_short() {
        let a = counter_key(&d(&[("a", "b|c=d")]), &[]);
        let b = counter_key(&d(&[("a", "b"), ("c", "d")]), &[]);
        assert_ne!(a, b);
        let long = "x".repeat(500);
        let k = counter_key(&d(&[("a", &long)]), &[]);
        assert!(k.starts_with('#') && k.len() == 33, "{k}");
        let shared = counter_key(&d(&[("f", "files/a")]), &[Some("files/*".to_owned())]);
        assert_eq!(shared, "f=files/*");
    }
}
