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
//! Every problem is reported with its file and line, all of them at once, and a key the format
//! does not have is an error (as envoyproxy/ratelimit rejects it), so a typo never turns a limit
//! off silently. Matching follows envoyproxy/ratelimit's `GetLimit`: per entry of a request's
//! descriptor, `key_value` first, then wildcard values in file order, then `key` alone; a limit
//! applies only at the depth of the descriptor's last entry.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use saphyr::{MarkedYaml, YamlData, YamlLoader};
use sha2::{Digest, Sha256};

use crate::ratelimit::{Algorithm, FailureMode, Policy};

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

/// One node of a domain's tree: what a descriptor entry can match at one depth.
#[derive(Debug, Default)]
struct Node {
    /// Children by `key_value` or `key`.
    children: HashMap<String, Node>,
    /// Children with a wildcard value, in file order: (`key_value*` pattern, its parts).
    wildcards: Vec<(String, Vec<String>)>,
    /// The rule at this node, if it has a `rate_limit`.
    rule: Option<Arc<Rule>>,
    value_to_metric: bool,
    share_threshold: bool,
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

/// The keys envoyproxy/ratelimit accepts anywhere in a file, and flowstate's two additions.
const KNOWN_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    "algorithm",
    "burst",
];

impl Rules {
    /// Loads `path`: a YAML file, or every `*.yaml` / `*.yml` file of a directory (not its
    /// subdirectories, dot files skipped), in name order. A domain defined twice is an error
    /// unless `merge` (envoyproxy/ratelimit's `MERGE_DOMAIN_CONFIG`).
    pub fn load(path: &Path, merge: bool) -> Result<Self, RulesError> {
        let files = config_files(path).map_err(|e| RulesError(vec![e]))?;
        let mut texts = Vec::with_capacity(files.len());
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| RulesError(vec![format!("{}: {e}", file.display())]))?;
            texts.push((file.clone(), text));
        }
        Self::from_texts(&texts, merge)
    }

    /// Loads configurations given as (file name, text).
    pub fn from_texts(texts: &[(PathBuf, String)], merge: bool) -> Result<Self, RulesError> {
        let mut rules = Rules::default();
        let mut errors = Vec::new();
        for (file, text) in texts {
            rules.files.push(file.clone());
            let mut ctx = Ctx {
                file: file.display().to_string(),
                errors: &mut errors,
            };
            let Some(root) = ctx.parse(text) else {
                continue;
            };
            ctx.load_root(&root, &mut rules, merge);
        }
        if errors.is_empty() {
            Ok(rules)
        } else {
            Err(RulesError(errors))
        }
    }

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

    /// The rule a descriptor (`entries` as key/value pairs) matches in `domain`, if any.
    ///
    /// The request's values are only copied for the rules that need them: a `share_threshold`
    /// wildcard (its counter key) and `detailed_metric` / `value_to_metric` rules (their metric
    /// key); every other match allocates nothing beyond the lookup key it reuses.
    pub fn find<K: AsRef<str>, V: AsRef<str>>(
        &self,
        domain: &str,
        entries: &[(K, V)],
    ) -> Option<Matched> {
        /// How one entry matched: the node, the wildcard pattern it matched by, if any, and
        /// whether it matched by its value (not by its key alone).
        struct Step<'n> {
            child: &'n Node,
            wildcard: Option<&'n str>,
            by_value: bool,
        }
        let mut node = self.domains.get(domain)?;
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(entries.len());
        let mut full = String::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            let (key, value) = (key.as_ref(), value.as_ref());
            full.clear();
            full.push_str(key);
            full.push('_');
            full.push_str(value);
            let mut wildcard = None;
            let mut child = node.children.get(full.as_str());
            if child.is_none()
                && let Some((pattern, _)) = node
                    .wildcards
                    .iter()
                    .find(|(_, parts)| wildcard_match(parts, &full))
            {
                child = node.children.get(pattern);
                wildcard = Some(pattern.as_str());
            }
            let by_value = child.is_some();
            let child = child.or_else(|| node.children.get(key))?;
            steps.push(Step {
                child,
                wildcard,
                by_value,
            });
            if i + 1 == entries.len() {
                break;
            }
            if child.children.is_empty() {
                // envoyproxy/ratelimit stops here: deeper entries cannot match anything.
                return None;
            }
            node = child;
        }
        let rule = steps.last()?.child.rule.clone()?;
        let value_of = |pattern: &str, key: &str| -> String {
            pattern
                .strip_prefix(key)
                .and_then(|p| p.strip_prefix('_'))
                .unwrap_or(pattern)
                .to_owned()
        };
        let shares = |s: &Step<'_>| s.wildcard.is_some() && s.child.share_threshold;
        let shared: Vec<Option<String>> = if steps.iter().any(shares) {
            steps
                .iter()
                .zip(entries)
                .map(|(s, (k, _))| {
                    s.wildcard
                        .filter(|_| s.child.share_threshold)
                        .map(|p| value_of(p, k.as_ref()))
                })
                .collect()
        } else {
            Vec::new()
        };
        let metric_key = if rule.detailed_metric {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}_{}", k.as_ref(), v.as_ref()))
                .collect();
            Some(parts.join("."))
        } else if steps.iter().any(|s| s.child.value_to_metric || shares(s)) {
            // envoyproxy/ratelimit's value_to_metric key: each entry's key, and the value it
            // shows (the request's, or the shared wildcard's prefix).
            let parts: Vec<String> = steps
                .iter()
                .zip(entries)
                .map(|(s, (k, v))| {
                    let (key, value) = (k.as_ref(), v.as_ref());
                    let shown = match s.wildcard {
                        Some(p) if s.child.share_threshold => {
                            value_of(p, key).trim_end_matches('*').to_owned()
                        }
                        Some(_) if s.child.value_to_metric => value.to_owned(),
                        Some(p) => value_of(p, key),
                        None if s.by_value || s.child.value_to_metric => value.to_owned(),
                        None => String::new(),
                    };
                    if shown.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{key}_{shown}")
                    }
                })
                .collect();
            Some(parts.join(".")).filter(|k| *k != rule.path)
        } else {
            None
        };
        Some(Matched {
            rule,
            metric_key,
            shared,
        })
    }
}

/// The YAML files a path names: the file itself, or a directory's `*.yaml` / `*.yml` files (not
/// its subdirectories, dot files skipped), in name order.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `value` matches a pattern split on `*` (each `*` matches any run of characters).
fn wildcard_match(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return first == value;
    }
    if !value.starts_with(first.as_str()) || !value.ends_with(last.as_str()) {
        return false;
    }
    if value.len() < parts.iter().map(String::len).sum::<usize>() {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Loading state for one file: its name and the errors found so far.
struct Ctx<'a> {
    file: String,
    errors: &'a mut Vec<String>,
}

type Map<'n> = Vec<(&'n str, &'n MarkedYaml<'n>)>;

impl Ctx<'_> {
    fn error(&mut self, node: &MarkedYaml<'_>, message: impl std::fmt::Display) {
        self.errors.push(format!(
            "{}:{}: {message}",
            self.file,
            node.span.start.line()
        ));
    }

    /// Parses one file into its document, keeping scalars as written (`value: 1.50` stays
    /// `1.50`, as Go's YAML reads it into a string).
    fn parse<'t>(&mut self, text: &'t str) -> Option<MarkedYaml<'t>> {
        let mut loader: YamlLoader<'t, MarkedYaml<'t>> = YamlLoader::default();
        loader.early_parse(false);
        let mut parser = saphyr_parser::Parser::new_from_str(text);
        let scanned = parser.load(&mut loader, false);
        if let Some(e) = scanned.err().or_else(|| loader.error().cloned()) {
            self.errors
                .push(format!("{}:{}: {}", self.file, e.marker().line(), e.info()));
            return None;
        }
        let doc = loader.into_documents().into_iter().next();
        if doc.is_none() {
            self.errors.push(format!("{}: empty file", self.file));
        }
        doc
    }

    /// A mapping's entries with string keys; anything else is reported.
    fn mapping<'n>(&mut self, node: &'n MarkedYaml<'n>, what: &str) -> Option<Map<'n>> {
        let YamlData::Mapping(map) = &node.data else {
            self.error(node, format!("{what} must be a mapping"));
            return None;
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            match scalar(k) {
                Some(key) => {
                    if !KNOWN_KEYS.contains(&key) {
                        self.error(k, format!("unknown key '{key}'"));
                        continue;
                    }
                    out.push((key, v));
                }
                None => self.error(k, "keys must be strings"),
            }
        }
        Some(out)
    }

    fn string(&mut self, node: &MarkedYaml<'_>, key: &str) -> Option<String> {
        if is_null(node) {
            return Some(String::new());
        }
        match scalar(node) {
            Some(s) => Some(s.to_owned()),
            None => {
                self.error(node, format!("'{key}' must be a string"));
                None
            }
        }
    }

    fn boolean(&mut self, node: &MarkedYaml<'_>, key: &str) -> bool {
        match scalar(node).map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "yes" | "on" | "y") => true,
            Some("false" | "no" | "off" | "n") => false,
            _ if is_null(node) => false,
            _ => {
                self.error(node, format!("'{key}' must be true or false"));
                false
            }
        }
    }

    fn sequence<'n>(&mut self, node: &'n MarkedYaml<'n>, key: &str) -> Vec<&'n MarkedYaml<'n>> {
        match &node.data {
            YamlData::Sequence(items) => items.iter().collect(),
            _ if is_null(node) => Vec::new(),
            _ => {
                self.error(node, format!("'{key}' must be a list"));
                Vec::new()
            }
        }
    }

    fn load_root(&mut self, root: &MarkedYaml<'_>, rules: &mut Rules, merge: bool) {
        let Some(map) = self.mapping(root, "the file") else {
            return;
        };
        let mut domain = String::new();
        let mut descriptors = Vec::new();
        for (key, value) in map {
            match key {
                "domain" => domain = self.string(value, key).unwrap_or_default(),
                "descriptors" => descriptors = self.sequence(value, key),
                other => self.error(value, format!("'{other}' is not allowed at the top level")),
            }
        }
        if domain.is_empty() {
            self.error(root, "config file cannot have empty domain");
            return;
        }
        let exists = rules.domains.contains_key(&domain);
        if exists && !merge {
            self.error(
                root,
                format!(
                    "duplicate domain '{domain}' in config file (set rls.merge_domains to merge)"
                ),
            );
            return;
        }
        let mut node = rules.domains.remove(&domain).unwrap_or_default();
        let domain_arc: Arc<str> = Arc::from(domain.as_str());
        self.load_descriptors(&descriptors, "", &domain_arc, &mut node, &mut rules.rules);
        rules.domains.insert(domain, node);
    }

    fn load_descriptors(
        &mut self,
        list: &[&MarkedYaml<'_>],
        parent: &str,
        domain: &Arc<str>,
        into: &mut Node,
        all: &mut Vec<Arc<Rule>>,
    ) {
        for item in list {
            let Some(map) = self.mapping(item, "a descriptor") else {
                continue;
            };
            let mut key = String::new();
            let mut value = String::new();
            let mut rate_limit = None;
            let mut children = Vec::new();
            let (mut shadow, mut quota, mut detailed, mut to_metric, mut share) =
                (false, false, false, false, false);
            let mut metadata = None;
            for (k, v) in map {
                match k {
                    "key" => key = self.string(v, k).unwrap_or_default(),
                    "value" => value = self.string(v, k).unwrap_or_default(),
                    "rate_limit" => rate_limit = Some(v),
                    "descriptors" => children = self.sequence(v, k),
                    "shadow_mode" => shadow = self.boolean(v, k),
                    "quota_mode" => quota = self.boolean(v, k),
                    "detailed_metric" => detailed = self.boolean(v, k),
                    "value_to_metric" => to_metric = self.boolean(v, k),
                    "share_threshold" => share = self.boolean(v, k),
                    "metadata" => metadata = self.metadata(v),
                    other => self.error(v, format!("'{other}' is not allowed in a descriptor")),
                }
            }
            if key.is_empty() {
                self.error(item, "descriptor has empty key");
                continue;
            }
            let full = if value.is_empty() {
                key.clone()
            } else {
                format!("{key}_{value}")
            };
            let path = if parent.is_empty() {
                full.clone()
            } else {
                format!("{parent}.{full}")
            };
            if into.children.contains_key(&full) {
                self.error(
                    item,
                    format!("duplicate descriptor composite key '{domain}.{path}'"),
                );
                continue;
            }
            if share && !full.contains('*') {
                self.error(
                    item,
                    format!(
                        "share_threshold can only be used with wildcard values (containing '*'), but found key '{full}'"
                    ),
                );
            }
            let mut node = Node {
                value_to_metric: to_metric,
                share_threshold: share,
                ..Node::default()
            };
            if let Some(rl) = rate_limit {
                node.rule = self
                    .rule(rl, domain, &path, (shadow, quota, detailed), metadata)
                    .map(Arc::new);
                if let Some(rule) = &node.rule {
                    all.push(rule.clone());
                }
            }
            self.load_descriptors(&children, &path, domain, &mut node, all);
            if full.contains('*') {
                into.wildcards
                    .push((full.clone(), full.split('*').map(str::to_owned).collect()));
            }
            into.children.insert(full, node);
        }
    }

    fn rule(
        &mut self,
        node: &MarkedYaml<'_>,
        domain: &Arc<str>,
        path: &str,
        (shadow, quota, detailed_metric): (bool, bool, bool),
        metadata: Option<prost_types::Struct>,
    ) -> Option<Rule> {
        let map = self.mapping(node, "rate_limit")?;
        let (mut unit, mut rpu, mut unlimited, mut name) = (None, None, false, String::new());
        let (mut replaces, mut algorithm, mut burst) = (Vec::new(), Algorithm::FixedWindow, 0u64);
        let errors_before = self.errors.len();
        for (k, v) in map {
            match k {
                "unit" => {
                    let s = self.string(v, k).unwrap_or_default();
                    match Unit::parse(&s) {
                        Some(u) => unit = Some(u),
                        None if s.is_empty() => {}
                        None => self.error(v, format!("invalid rate limit unit '{s}'")),
                    }
                }
                "requests_per_unit" => match scalar(v).and_then(|s| s.parse::<u32>().ok()) {
                    Some(n) => rpu = Some(n),
                    None => {
                        self.error(v, "'requests_per_unit' must be a whole number 0-4294967295")
                    }
                },
                "unlimited" => unlimited = self.boolean(v, k),
                "name" => name = self.string(v, k).unwrap_or_default(),
                "replaces" => {
                    for entry in self.sequence(v, k) {
                        let Some(m) = self.mapping(entry, "a replaces entry") else {
                            continue;
                        };
                        let mut replaced = String::new();
                        for (rk, rv) in m {
                            match rk {
                                "name" => replaced = self.string(rv, rk).unwrap_or_default(),
                                other => {
                                    self.error(rv, format!("'{other}' is not allowed in replaces"))
                                }
                            }
                        }
                        if replaced.is_empty() {
                            self.error(entry, "should not have an empty replaces entry");
                        } else {
                            replaces.push(replaced);
                        }
                    }
                }
                "algorithm" => {
                    let s = self.string(v, k).unwrap_or_default();
                    match s.as_str() {
                        "fixed_window" => algorithm = Algorithm::FixedWindow,
                        "sliding_window" => algorithm = Algorithm::SlidingWindow,
                        "token_bucket" => algorithm = Algorithm::TokenBucket,
                        "gcra" => algorithm = Algorithm::Gcra,
                        _ => self.error(
                            v,
                            format!("algorithm '{s}': choose fixed_window, sliding_window, token_bucket or gcra"),
                        ),
                    }
                }
                "burst" => match scalar(v).and_then(|s| s.parse::<u64>().ok()) {
                    Some(n) => burst = n,
                    None => self.error(v, "'burst' must be a whole number"),
                },
                other => self.error(v, format!("'{other}' is not allowed in rate_limit")),
            }
        }
        if !name.is_empty() && replaces.contains(&name) {
            self.error(node, "replaces should not contain name of same descriptor");
        }
        let limit = if unlimited {
            if unit.is_some() {
                self.error(node, "should not specify rate limit unit when unlimited");
            }
            Limit::Unlimited
        } else {
            let Some(unit) = unit else {
                self.error(
                    node,
                    "invalid rate limit unit '' (second, minute, hour, day, week, month or year)",
                );
                return None;
            };
            let requests_per_unit = rpu.unwrap_or(0);
            let policy = (requests_per_unit > 0).then_some(Policy {
                algorithm,
                limit: u64::from(requests_per_unit),
                period_ms: unit.period_ms(),
                burst,
                failure_mode: FailureMode::Closed,
            });
            if let Some(Err((field, why))) = policy.as_ref().map(Policy::validate) {
                let field = if field == "limit" {
                    "requests_per_unit"
                } else {
                    field
                };
                self.error(node, format!("'{field}' {why}"));
            }
            Limit::Counted {
                requests_per_unit,
                unit,
                policy,
            }
        };
        if self.errors.len() > errors_before {
            return None;
        }
        let period = match &limit {
            Limit::Counted { unit, .. } => unit.period_ms(),
            Limit::Unlimited => 0,
        };
        Some(Rule {
            counter: counter_id(&[domain.as_bytes(), path.as_bytes()], period),
            domain: domain.clone(),
            path: path.to_owned(),
            limit,
            name,
            replaces,
            shadow,
            quota,
            detailed_metric,
            metadata,
            source: format!("{}:{}", self.file, node.span.start.line()),
        })
    }

    fn metadata(&mut self, node: &MarkedYaml<'_>) -> Option<prost_types::Struct> {
        match to_value(node) {
            Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(s)),
            }) => Some(s),
            _ if is_null(node) => None,
            _ => {
                self.error(node, "'metadata' must be a mapping of strings to values");
                None
            }
        }
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

/// A scalar as written, or `None` for a collection.
fn scalar<'n>(node: &'n MarkedYaml<'_>) -> Option<&'n str> {
    match &node.data {
        YamlData::Representation(s, _, _) => Some(s.as_ref()),
        _ => None,
    }
}

fn is_null(node: &MarkedYaml<'_>) -> bool {
    match &node.data {
        YamlData::Representation(s, saphyr::ScalarStyle::Plain, _) => {
            matches!(s.as_ref(), "" | "~" | "null" | "Null" | "NULL")
        }
        YamlData::Value(saphyr::Scalar::Null) => true,
        _ => false,
    }
}

/// A YAML node as a protobuf `Value` (for `metadata`).
fn to_value(node: &MarkedYaml<'_>) -> Option<prost_types::Value> {
    use prost_types::value::Kind;
    let kind = match &node.data {
        YamlData::Mapping(map) => {
            let mut fields = std::collections::BTreeMap::new();
            for (k, v) in map {
                fields.insert(scalar(k)?.to_owned(), to_value(v)?);
            }
            Kind::StructValue(prost_types::Struct { fields })
        }
        YamlData::Sequence(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_value).collect::<Option<_>>()?,
        }),
        YamlData::Representation(s, style, _) => {
            let plain = *style == saphyr::ScalarStyle::Plain;
            if plain && is_null(node) {
                Kind::NullValue(0)
            } else if plain && matches!(s.as_ref(), "true" | "false") {
                Kind::BoolValue(s.as_ref() == "true")
            } else if let Some(n) = plain.then(|| s.parse::<f64>().ok()).flatten() {
                Kind::NumberValue(n)
            } else {
                Kind::StringValue(s.to_string())
            }
        }
        _ => return None,
    };
    Some(prost_types::Value { kind: Some(kind) })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Rules, RulesError> {
        Rules::from_texts(&[(PathBuf::from("t.yaml"), text.to_owned())], false)
    }

    fn find(rules: &Rules, domain: &str, entries: &[(&str, &str)]) -> Option<Matched> {
        rules.find(domain, entries)
    }

    const MESSAGING: &str = "
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
  - key: path
    value: /api/*
    rate_limit:
      unit: minute
      requests_per_unit: 7
      algorithm: gcra
      burst: 3
";

    #[test]
    fn matching_follows_envoyproxy_ratelimit() {
        let r = load(MESSAGING).expect("loads");
        let m = find(
            &r,
            "messaging",
            &[("message_type", "marketing"), ("to_number", "206")],
        )
        .expect("nested rule");
        assert_eq!(m.rule.path, "message_type_marketing.to_number");
        let m = find(&r, "messaging", &[("to_number", "206")]).expect("top rule");
        assert!(matches!(
            m.rule.limit,
            Limit::Counted {
                requests_per_unit: 100,
                unit: Unit::Day,
                ..
            }
        ));
        // key_value is tried before key alone.
        let m = find(&r, "messaging", &[("remote_address", "50.0.0.5")]).expect("specific");
        assert!(matches!(
            m.rule.limit,
            Limit::Counted {
                requests_per_unit: 0,
                policy: None,
                ..
            }
        ));
        let m = find(&r, "messaging", &[("remote_address", "1.2.3.4")]).expect("default");
        assert!(matches!(
            m.rule.limit,
            Limit::Counted {
                requests_per_unit: 10,
                ..
            }
        ));
        // Depths must agree: more entries than the tree is deep matches nothing.
        assert!(find(&r, "messaging", &[("to_number", "1"), ("extra", "x")]).is_none());
        assert!(find(&r, "messaging", &[("message_type", "marketing")]).is_none());
        assert!(find(&r, "other", &[("to_number", "1")]).is_none());
        // Wildcards and the algorithm extension.
        let m = find(&r, "messaging", &[("path", "/api/users")]).expect("wildcard");
        match &m.rule.limit {
            Limit::Counted {
                policy: Some(p), ..
            } => {
                assert_eq!((p.algorithm, p.burst), (Algorithm::Gcra, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(find(&r, "messaging", &[("path", "/web/x")]).is_none());
    }

    #[test]
    fn wildcards_match_anywhere() {
        let parts = |p: &str| p.split('*').map(str::to_owned).collect::<Vec<_>>();
        assert!(wildcard_match(&parts("a*"), "abc"));
        assert!(wildcard_match(&parts("a*c"), "abbbc"));
        assert!(wildcard_match(&parts("a*b*c"), "a1b2c"));
        assert!(!wildcard_match(&parts("a*b*c"), "a1c2b"));
        assert!(!wildcard_match(&parts("ab*ba"), "aba"));
        assert!(wildcard_match(&parts("*"), "anything"));
    }

    #[test]
    fn errors_name_the_file_and_line_and_all_are_reported() {
        let err = load(
            "domain: d
descriptors:
  - key: a
    ratelimit:
      unit: day
  - key: b
    rate_limit:
      unit: fortnight
      requests_per_unit: 5
  - value: x
",
        )
        .expect_err("three errors")
        .to_string();
        assert!(err.contains("t.yaml:4: unknown key 'ratelimit'"), "{err}");
        assert!(
            err.contains("t.yaml:8: invalid rate limit unit 'fortnight'"),
            "{err}"
        );
        assert!(err.contains("t.yaml:10: descriptor has empty key"), "{err}");
        let err = load("domain: d\ndescriptors:\n  - key: [\n")
            .expect_err("bad yaml")
            .to_string();
        assert!(err.starts_with("t.yaml:"), "{err}");
        let err = load("domain: d\ndomain: e\n")
            .expect_err("duplicate")
            .to_string();
        assert!(err.contains("duplicated key"), "{err}");
    }

    #[test]
    fn replaces_shadow_and_metadata_load() {
        let r = load(
            "domain: d
descriptors:
  - key: a
    shadow_mode: true
    quota_mode: true
    detailed_metric: true
    metadata:
      owner:
        team: payments
        level: 2
    rate_limit:
      name: base
      unit: minute
      requests_per_unit: 2
  - key: b
    rate_limit:
      replaces:
        - name: base
        - name: missing
      unlimited: true
",
        )
        .expect("loads");
        let a = find(&r, "d", &[("a", "1")]).expect("a");
        assert!(a.rule.shadow && a.rule.quota && a.rule.detailed_metric);
        assert_eq!(a.metric_key.as_deref(), Some("a_1"), "detailed metric key");
        assert!(
            a.rule
                .metadata
                .as_ref()
                .is_some_and(|m| m.fields.contains_key("owner"))
        );
        let b = find(&r, "d", &[("b", "1")]).expect("b");
        assert!(matches!(b.rule.limit, Limit::Unlimited));
        assert_eq!(b.rule.replaces, vec!["base", "missing"]);
        let dangling = dangling_replaces(&r);
        assert_eq!(dangling.len(), 1, "{dangling:?}");
        assert!(dangling[0].contains("'missing'"));
    }

    #[test]
    fn share_threshold_shares_the_pattern() {
        let r = load(
            "domain: d
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit:
      unit: hour
      requests_per_unit: 10
",
        )
        .expect("loads");
        let m = find(&r, "d", &[("files", "files/a.pdf")]).expect("match");
        assert_eq!(m.shared, vec![Some("files/*".to_owned())]);
        assert!(load("domain: d\ndescriptors:\n  - key: f\n    share_threshold: true\n").is_err());
    }

    #[test]
    fn duplicate_domains_need_merging() {
        let a = (PathBuf::from("a.yaml"), "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n".to_owned());
        let b = (PathBuf::from("b.yaml"), "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 1}\n".to_owned());
        let err = Rules::from_texts(&[a.clone(), b.clone()], false).expect_err("duplicate");
        assert!(
            err.to_string().contains("b.yaml:1: duplicate domain 'd'"),
            "{err}"
        );
        let merged = Rules::from_texts(&[a, b], true).expect("merged");
        assert!(find(&merged, "d", &[("a", "1")]).is_some());
        assert!(find(&merged, "d", &[("b", "1")]).is_some());
    }
}
