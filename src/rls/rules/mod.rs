//! Rules in envoyproxy/ratelimit's YAML format, loaded into one match tree per domain.
//!
//! The format is envoyproxy/ratelimit's, so its configurations load unchanged: `domain`, nested
//! `descriptors` of `key`, optional `value` (with `*` wildcards), `rate_limit {unit,
//! requests_per_unit, unlimited, name, replaces}`, `shadow_mode`, `quota_mode`,
//! `detailed_metric`, `value_to_metric`, `share_threshold` and `metadata`. flowstate adds two
//! optional keys to `rate_limit`: `algorithm` (`fixed_window`, the default as in
//! envoyproxy/ratelimit, or `sliding_window`, `token_bucket`, `gcra`) and `burst` (bucket size
//! for the last two).
//!
//! This module holds the rule model that the service reads: [`Unit`], [`Limit`], [`Rule`],
//! [`Rules`] and what a descriptor [`Matched`], the counter identity ([`counter_id`]) and the
//! start-up check on `replaces` ([`dangling_replaces`]). The two halves of the work live
//! beside it, so each can be read without the other:
//!
//! - `load.rs`: reading the files (YAML with positions) into the tree; every problem is reported
//!   with its file and line, all of them at once, and a key the format does not have is an
//!   error (as envoyproxy/ratelimit rejects it), so a typo never turns a limit off silently.
//! - `tree.rs`: the match tree and [`Rules::find`], which follows envoyproxy/ratelimit's
//!   `GetLimit`: per entry of a request's descriptor, `key_value` first, then wildcard values in
//!   file order, then `key` alone; a limit applies only at the depth of the descriptor's last
//!   entry.

mod load;
mod tree;

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    sync::Arc,
};

use sha2::{Digest, Sha256};

pub use self::load::config_files;
use self::tree::Node;
use crate::ratelimit::Policy;

/// The time unit of a rule (Envoy's `RateLimitResponse.RateLimit.Unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
    /// Seven days.
    Week,
    /// 30 days, as envoyproxy/ratelimit counts a month.
    Month,
    /// 365 days, as envoyproxy/ratelimit counts a year.
    Year,
}

impl Unit {
    /// The unit named `s` (any case), as envoyproxy/ratelimit reads it.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    /// Envoy's enum value (`SECOND = 1` … `YEAR = 6`, `WEEK = 7`).
    pub fn from_proto(n: i32) -> Option<Self> {
        Some(match n {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            _ => return None,
        })
    }

    /// Envoy's enum value.
    pub fn to_proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit's length: windows are this long, aligned to the Unix epoch on the store's clock.
    pub fn period_ms(self) -> i64 {
        const DAY: i64 = 86_400_000;
        match self {
            Unit::Second => 1000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        }
    }
}

/// What a matched rule does.
#[derive(Debug, Clone)]
pub enum Limit {
    /// `unlimited: true`: always OK, never counted in the store.
    Unlimited,
    /// A limit; `requests_per_unit: 0` refuses everything without a store call.
    Counted {
        /// `requests_per_unit`.
        requests_per_unit: u32,
        /// `unit`.
        unit: Unit,
        /// How it counts (`None` for a zero limit, which needs no counter).
        policy: Option<Policy>,
    },
}

/// A rule with a limit: one `rate_limit` block of the configuration.
#[derive(Debug)]
pub struct Rule {
    /// The domain it belongs to.
    pub domain: Arc<str>,
    /// Its place in the tree as envoyproxy/ratelimit names it in statistics, without the
    /// domain: `key_value.key` (configured values only).
    pub path: String,
    /// The limit.
    pub limit: Limit,
    /// `rate_limit.name`, shown in `current_limit.name` and referred to by `replaces`.
    pub name: String,
    /// Names of the rules this one replaces when both match one request.
    pub replaces: Vec<String>,
    /// `shadow_mode`: counted and reported, never denies.
    pub shadow: bool,
    /// `quota_mode`: the request is refused only when all its quota rules are over.
    pub quota: bool,
    /// `detailed_metric`: metrics per request value (bounded, see the service).
    pub detailed_metric: bool,
    /// `metadata`, returned in `dynamic_metadata` when `rls.response_dynamic_metadata` is on.
    pub metadata: Option<prost_types::Struct>,
    /// The counter identity: a digest of domain, path, algorithm and period, so two rules never
    /// share a counter and a changed period or algorithm starts afresh (a changed
    /// `requests_per_unit` keeps counting, as in envoyproxy/ratelimit).
    pub counter: Arc<str>,
    /// Where it is: `file:line`.
    pub source: String,
}

/// Every loaded domain.
#[derive(Debug, Default)]
pub struct Rules {
    domains: HashMap<String, Node>,
    /// Every rule, for metrics and the start-up summary.
    rules: Vec<Arc<Rule>>,
    /// The files it was loaded from.
    files: Vec<PathBuf>,
}

/// What a descriptor matched.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The rule.
    pub rule: Arc<Rule>,
    /// The metric key envoyproxy/ratelimit would use for this request (with request values for
    /// `detailed_metric` and `value_to_metric` rules), without the domain; `None` when it is the
    /// rule's own path.
    pub metric_key: Option<String>,
    /// Per entry, the wildcard pattern shared by every value it matches (`share_threshold`).
    pub shared: Vec<Option<String>>,
}

/// Every problem found in a configuration, each with its file and line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct RulesError(pub Vec<String>);

impl Rules {
    /// The files the rules came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every rule with a limit.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Whether `domain` is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The names of the configured domains, sorted.
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The counter identity of a rule or a request's limit override: a short digest, so that
/// whatever characters a domain or key holds, the identity is safe in a key and outside its
/// hash tag (the algorithm is a part of the counter's key of its own).
pub fn counter_id(parts: &[&[u8]], period_ms: i64) -> Arc<str> {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.update(period_ms.to_be_bytes());
    let digest = h.finalize();
    let mut id = String::from("e.");
    for b in &digest[..8] {
        let _ = write!(id, "{b:02x}");
    }
    Arc::from(id)
}

/// Names of the rules `replaces` refers to that no rule of the domain has: a typo there would
/// silently replace nothing, so they are reported (as warnings; envoyproxy/ratelimit accepts
/// them, and its own example refers to a name no rule has).
pub fn dangling_replaces(rules: &Rules) -> Vec<String> {
    let names: HashSet<(&str, &str)> = rules
        .rules
        .iter()
        .filter(|r| !r.name.is_empty())
        .map(|r| (&*r.domain, r.name.as_str()))
        .collect();
    rules
        .rules
        .iter()
        .flat_map(|r| {
            r.replaces
                .iter()
                .filter(|n| !names.contains(&(&*r.domain, n.as_str())))
                .map(move |n| {
                    format!(
                        "{}: replaces '{n}', which no rule of domain '{}' is named",
                        r.source, r.domain
                    )
                })
        })
        .collect()
}
