//! Rate limits: resolving named and inline limits, validating requests, all-or-nothing checks
//! and the store failure modes. The counting itself is in [`super::algorithm`].

use std::{collections::HashMap, sync::Arc};

use super::{
    algorithm::{Decision, FailureMode, Policy},
    config::RateLimitConfig,
    model::{CheckInput, CheckOutcome, CheckResult, Counter, CounterId, LimitRef, Role, admits},
    store::RateLimitStore,
};
use crate::{
    error::{Error, Violation},
    tenant::Tenant,
    time::{Millis, duration_ms},
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
            inline_metrics: DecisionMetrics::new("inline"),
            max_checks: config.max_checks,
            max_key_bytes: config.max_key_bytes,
            max_inline_period_ms: duration_ms(config.max_inline_period),
        }
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
        if key.is_empty() {
            return Err(Error::invalid(field("key"), "must not be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::invalid(
                field("key"),
                format!("longer than {} bytes", self.max_key_bytes),
            ));
        }
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
        for (i, check) in checks.iter().enumerate() {
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
            counters.push(counter);
        }
        let commit = !dry_run && cost > 0;
        let outcome = self.decide(tenant, &counters, commit).await?;
        if !dry_run {
            for (check, result) in checks.iter().zip(&outcome.results) {
                let metrics = match &check.limit {
                    LimitRef::Named(name) => self.named.get(name).map(|(_, _, m)| m),
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
        let counter = self.resolve(None, &limit, key, 0)?;
        Ok(self.store.reset(tenant, &counter.id).await?)
    }
}
