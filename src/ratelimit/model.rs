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

/// A resolved check: the counter it uses and its policy.
#[derive(Debug, Clone)]
pub struct Counter {
    /// Identifies the counter within the tenant (limit identity, algorithm, key).
    pub id: CounterId,
    /// The policy.
    pub policy: Policy,
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
