//! Rate limits: resolving named and inline limits, validating requests, all-or-nothing checks
//! and the store failure modes. The counting itself is in [`super::algorithm`].

use std::{collections::HashMap, sync::Arc};

use super::{
    algorithm::{Decision, FailureMode, Policy},
    config::{RateLimitConfig, UsageLimitConfig},
    model::{CheckInput, CheckOutcome, CheckResult, Counter, CounterId, LimitRef, Role, admits},
    store::RateLimitStore,
};
use crate::{
    error::{Error, Violation},
    tenant::Tenant,
    time::{Millis, duration_ms},
    usage::Usage,
};

/// Decision counts of one limit (labelled by limit name, or `inline`), registered once so the
/// hot path only increments.
#[derive(Clone)]
struct DecisionMetrics {
    allowed: metrics::Counter,
    denied: metrics::Counter,
    not_enforced: metrics::Counter,
}

impl DecisionMetrics {
    fn new(limit: &str) -> Self {
        let counter = |decision: &'static str| {
            metrics::counter!(
                "flowstate_ratelimit_decisions_total",
                "limit" => limit.to_owned(),
                "decision" => decision
            )
        };
        Self {
            allowed: counter("allowed"),
            denied: counter("denied"),
            not_enforced: counter("not_enforced"),
        }
    }

    fn record(&self, result: &CheckResult) {
        let counter = if !result.enforced {
            &self.not_enforced
        } else if result.decision.allowed {
            &self.allowed
        } else {
            &self.denied
        };
        counter.increment(1);
    }
}

/// A configured limit: its policy, its counter id (`n.<name>.<period>`, built once, not per check) and
/// its decision counters.
type NamedLimit = (Policy, Arc<str>, DecisionMetrics);

/// Rate-limit operations over a store.
#[derive(Clone)]
pub struct RateLimits {
    store: Arc<dyn RateLimitStore>,
    named: Arc<HashMap<String, NamedLimit>>,
    usage_limits: Arc<HashMap<String, (UsageLimitConfig, DecisionMetrics)>>,
    usage: Option<Usage>,
    inline_metrics: DecisionMetrics,
    max_checks: usize,
    max_key_bytes: usize,
    max_inline_period_ms: Millis,
}

impl RateLimits {
    /// Limits from `config` over `store`.
    pub fn new(store: Arc<dyn RateLimitStore>, config: &RateLimitConfig) -> Self {
        Self {
            store,
            named: Arc::new(
                config
                    .limits
                    .iter()
                    .map(|(name, l)| {
                        // The period is part of the counter: a window index or a refill time
                        // means nothing under another period, so changing it starts afresh.
                        let id = Arc::from(format!("n.{name}.{}", l.policy().period_ms));
                        (name.clone(), (l.policy(), id, DecisionMetrics::new(name)))
                    })
                    .collect(),
            ),
            usage_limits: Arc::new(
                config
                    .usage_limits
                    .iter()
                    .map(|(name, l)| (name.clone(), (l.clone(), DecisionMetrics::new(name))))
                    .collect(),
            ),
            usage: None,
            inline_metrics: DecisionMetrics::new("inline"),
            max_checks: config.max_checks.get(),
            max_key_bytes: config.max_key_bytes.get(),
            max_inline_period_ms: duration_ms(config.max_inline_period.get()),
        }
    }

    /// Reads usage limits from `usage` (the metrics UsageService records).
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The key check of every kind: not empty, not too long.
    fn check_key(&self, field: String, key: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::invalid(
                field,
                format!("longer than {} bytes", self.max_key_bytes),
            ));
        }
        Ok(())
    }

    /// Reads every usage limit of a request (at once): allowed while the subject's recorded
    /// usage in the current window plus `cost` fits. Nothing is consumed. A transient store
    /// failure allows (not enforced) only a limit whose failure mode is open.
    async fn read_usage(
        &self,
        tenant: &Tenant,
        checks: &[(&UsageLimitConfig, &str)],
        cost: u64,
    ) -> Result<Vec<CheckResult>, Error> {
        let Some(usage) = &self.usage else {
            return Err(Error::Store(crate::store::StoreError::Protocol(
                "usage limits need the usage store".into(),
            )));
        };
        let reads = futures_util::future::join_all(
            checks
                .iter()
                .map(|(l, key)| usage.current(tenant, &l.metric, key, l.window.granularity())),
        )
        .await;
        checks
            .iter()
            .zip(reads)
            .map(|((l, _), read)| match read {
                Ok((used, left)) => {
                    let used = u64::try_from(used).unwrap_or(0);
                    let allowed = used.saturating_add(cost) <= l.limit.get();
                    Ok(CheckResult {
                        decision: Decision {
                            allowed,
                            remaining: l.limit.get().saturating_sub(used),
                            reset_after_ms: left,
                            retry_after_ms: if allowed { 0 } else { left },
                        },
                        limit: l.limit.get(),
                        enforced: true,
                    })
                }
                Err(e) if e.is_transient() && l.failure_mode == FailureMode::Open => {
                    tracing::warn!(error = %e, "store failed; a usage limit fails open (not enforced)");
                    Ok(CheckResult {
                        decision: Decision {
                            allowed: true,
                            ..Decision::default()
                        },
                        limit: l.limit.get(),
                        enforced: false,
                    })
                }
                Err(e) => Err(e.into()),
            })
            .collect()
    }

    /// `check` is the index of the check in the request (`None` for Reset); it only names
    /// fields in errors, so nothing is formatted on the success path.
    fn resolve(
        &self,
        check: Option<usize>,
        limit: &LimitRef,
        key: &str,
        cost: u64,
    ) -> Result<Counter, Error> {
        let field = |name: &str| match check {
            Some(i) => format!("checks[{i}].{name}"),
            None => name.to_owned(),
        };
        let (limit_id, policy) = match limit {
            LimitRef::Named(name) => match self.named.get(name) {
                Some((policy, id, _)) => (id.clone(), *policy),
                None if name.is_empty() => {
                    return Err(Error::invalid(
                        field("name"),
                        "name a configured limit or give an inline policy",
                    ));
                }
                // The caller's string is not echoed: the field says which one.
                None => {
                    return Err(Error::NotFound(format!(
                        "the rate limit named in {}",
                        field("name")
                    )));
                }
            },
            LimitRef::Inline(policy) => {
                policy
                    .validate()
                    .map_err(|(f, why)| Error::invalid(field(&format!("policy.{f}")), why))?;
                if policy.period_ms > self.max_inline_period_ms {
                    return Err(Error::invalid(
                        field("policy.period"),
                        format!(
                            "longer than ratelimit.max_inline_period ({} ms)",
                            self.max_inline_period_ms
                        ),
                    ));
                }
                (
                    Arc::from(format!(
                        "i.{}.{}.{}",
                        policy.limit, policy.period_ms, policy.burst
                    )),
                    *policy,
                )
            }
        };
        self.check_key(field("key"), key)?;
        Ok(Counter {
            id: CounterId {
                limit: limit_id,
                algorithm: policy.algorithm.code(),
                key: key.to_owned(),
            },
            policy,
            cost,
            role: Role::Enforced,
        })
    }

    /// Checks and (unless `dry_run` or `cost` is 0) consumes, all or nothing.
    pub async fn check(
        &self,
        tenant: &Tenant,
        checks: Vec<CheckInput>,
        cost: u64,
        dry_run: bool,
    ) -> Result<CheckOutcome, Error> {
        if checks.is_empty() || checks.len() > self.max_checks {
            return Err(Error::invalid(
                "checks",
                format!("give between 1 and {} checks", self.max_checks),
            ));
        }
        let mut counters: Vec<Counter> = Vec::with_capacity(checks.len());
        // Per check: Ok(position among counters) or Err(position among usage limits).
        let mut order: Vec<Result<usize, usize>> = Vec::with_capacity(checks.len());
        let mut usage_checks: Vec<(&UsageLimitConfig, &str)> = Vec::new();
        let mut usage_names: Vec<&str> = Vec::new();
        for (i, check) in checks.iter().enumerate() {
            if let LimitRef::Named(name) = &check.limit
                && let Some((limit, _)) = self.usage_limits.get(name)
            {
                self.check_key(format!("checks[{i}].key"), &check.key)?;
                if cost > limit.limit.get() {
                    return Err(Error::invalid(
                        "cost",
                        format!(
                            "{cost} is more than checks[{i}] can ever admit ({})",
                            limit.limit
                        ),
                    ));
                }
                if let Some(j) = usage_checks
                    .iter()
                    .zip(&usage_names)
                    .position(|((_, key), n)| *n == name && *key == check.key)
                {
                    return Err(Error::invalid(
                        format!("checks[{i}]"),
                        format!("same limit and key as usage check {j}"),
                    ));
                }
                order.push(Err(usage_checks.len()));
                usage_checks.push((limit, &check.key));
                usage_names.push(name);
                continue;
            }
            let counter = self.resolve(Some(i), &check.limit, &check.key, cost)?;
            if cost > counter.policy.capacity() {
                return Err(Error::InvalidArgument(vec![Violation::new(
                    "cost",
                    format!(
                        "{cost} is more than checks[{i}] can ever admit ({})",
                        counter.policy.capacity()
                    ),
                )]));
            }
            if let Some(j) = counters.iter().position(|c| c.id == counter.id) {
                return Err(Error::invalid(
                    format!("checks[{i}]"),
                    format!("same limit and key as checks[{j}]"),
                ));
            }
            order.push(Ok(counters.len()));
            counters.push(counter);
        }
        // Usage limits first: one that refuses refuses the request, and then no counter
        // consumes (they are still read, to report them).
        let usage = if usage_checks.is_empty() {
            Vec::new()
        } else {
            self.read_usage(tenant, &usage_checks, cost).await?
        };
        let usage_allows = usage.iter().all(|r| r.decision.allowed);
        let commit = !dry_run && cost > 0 && usage_allows;
        let counted = if counters.is_empty() {
            CheckOutcome {
                allowed: true,
                results: Vec::new(),
            }
        } else {
            self.decide(tenant, &counters, commit).await?
        };
        let outcome = CheckOutcome {
            allowed: counted.allowed && usage_allows,
            results: order
                .iter()
                .map(|at| match at {
                    Ok(c) => counted.results[*c],
                    Err(u) => usage[*u],
                })
                .collect(),
        };
        if !dry_run {
            for (check, result) in checks.iter().zip(&outcome.results) {
                let metrics = match &check.limit {
                    LimitRef::Named(name) => self
                        .named
                        .get(name)
                        .map(|(_, _, m)| m)
                        .or_else(|| self.usage_limits.get(name).map(|(_, m)| m)),
                    LimitRef::Inline(_) => None,
                };
                metrics.unwrap_or(&self.inline_metrics).record(result);
            }
        }
        Ok(outcome)
    }

    /// Asks the store, applying the failure modes when it cannot be reached. Only a transient
    /// failure (timeout, unreachable) fails open: a store that answers with an error (a script
    /// error, a wrong type, a CROSSSLOT) is a fault to fix, never a reason to stop limiting.
    async fn decide(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        commit: bool,
    ) -> Result<CheckOutcome, Error> {
        match self.store.check(tenant, counters, commit).await {
            Ok(decisions) => {
                let allowed = admits(counters.iter().map(|c| c.role).zip(&decisions));
                let results = decisions
                    .into_iter()
                    .zip(counters)
                    .map(|(decision, c)| CheckResult {
                        decision,
                        limit: c.policy.limit,
                        enforced: true,
                    })
                    .collect();
                Ok(CheckOutcome { allowed, results })
            }
            Err(e)
                if e.is_transient()
                    && counters
                        .iter()
                        .all(|c| c.policy.failure_mode == FailureMode::Open) =>
            {
                tracing::warn!(error = %e, "store failed; rate limits fail open (not enforced)");
                let results = counters
                    .iter()
                    .map(|c| CheckResult {
                        decision: Decision {
                            allowed: true,
                            remaining: 0,
                            reset_after_ms: 0,
                            retry_after_ms: 0,
                        },
                        limit: c.policy.limit,
                        enforced: false,
                    })
                    .collect();
                Ok(CheckOutcome {
                    allowed: true,
                    results,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets a counter.
    pub async fn reset(&self, tenant: &Tenant, limit: LimitRef, key: &str) -> Result<(), Error> {
        if let LimitRef::Named(name) = &limit
            && self.usage_limits.contains_key(name)
        {
            return Err(Error::invalid(
                "name",
                "a usage limit has no counter to reset: it reads the usage UsageService records",
            ));
        }
        let counter = self.resolve(None, &limit, key, 0)?;
        Ok(self.store.reset(tenant, &counter.id).await?)
    }
}
