//! Rate-limit types shared by the domain, its store contract and both stores (a leaf module,
//! with [`super::algorithm`]).

use std::sync::Arc;

use super::algorithm::{Decision, Policy};

/// Which limit a check names, before resolution.
#[derive(Debug, Clone)]
pub enum LimitRef {
    /// A limit from `ratelimit.limits`.
    Named(String),
    /// A limit given in the request; validated on use.
    Inline(Policy),
}

/// One check of a request, before validation.
#[derive(Debug, Clone)]
pub struct CheckInput {
    /// The limit.
    pub limit: LimitRef,
    /// What is limited.
    pub key: String,
}

/// A resolved check: the counter it uses, its policy, what it spends and how it counts in the
/// request's decision.
#[derive(Debug, Clone)]
pub struct Counter {
    /// Identifies the counter within the tenant (limit identity, algorithm, key).
    pub id: CounterId,
    /// The policy.
    pub policy: Policy,
    /// What the request spends from this counter (0: a peek).
    pub cost: u64,
    /// How this counter's decision counts in the request's.
    pub role: Role,
}

/// How a counter's decision counts in its request's (see [`admits`]). flowstate's own Check
/// uses only [`Role::Enforced`]; Envoy's rate limit service maps envoyproxy/ratelimit's
/// `quota_mode` and `shadow_mode` rules onto the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Must allow for the request to be admitted.
    #[default]
    Enforced,
    /// Soft: the request is refused only when every quota counter of it denies.
    Quota,
    /// Counted, never decides (a limit being tried out).
    Shadow,
}

impl Role {
    /// The code the scripts take (`lua/algorithm.lua`).
    pub fn code(self) -> u8 {
        match self {
            Role::Enforced => 0,
            Role::Quota => 1,
            Role::Shadow => 2,
        }
    }
}

/// Whether a request whose counters decided `decisions` is admitted: every enforced counter
/// allows and, when there are quota counters, at least one of them does. When it is, every
/// counter that allows consumes (a cost of 0 only records the clock reading); when it is not,
/// none does. The scripts
/// apply the same rule (`run_check` in `lua/algorithm.lua`).
pub fn admits<'a>(roles: impl IntoIterator<Item = (Role, &'a Decision)>) -> bool {
    let (mut enforced, mut quotas, mut quota_ok) = (true, false, false);
    for (role, decision) in roles {
        match role {
            Role::Enforced => enforced &= decision.allowed,
            Role::Quota => {
                quotas = true;
                quota_ok |= decision.allowed;
            }
            Role::Shadow => {}
        }
    }
    enforced && (!quotas || quota_ok)
}

/// The parts a counter's store key is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterId {
    /// `n.<name>.<period>` for named limits, `i.<limit>.<period>.<burst>` for inline ones, so different
    /// inline policies never share a counter.
    pub limit: Arc<str>,
    /// Algorithm code: changing a limit's algorithm starts from fresh state.
    pub algorithm: u8,
    /// The caller's key.
    pub key: String,
}

/// One check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckResult {
    /// The decision (when not enforced: allowed, nothing known about counts).
    pub decision: Decision,
    /// The limit's `limit`.
    pub limit: u64,
    /// False when the store failed and the limit fails open.
    pub enforced: bool,
}

/// A Check's answer.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// Every check allowed.
    pub allowed: bool,
    /// Per check, in request order.
    pub results: Vec<CheckResult>,
}
