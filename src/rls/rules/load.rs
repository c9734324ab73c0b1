//! Reading rules files: envoyproxy/ratelimit's YAML, parsed with positions, into the match
//! tree of `tree.rs`.
//!
//! Kept apart from the model and the matching because it is the half that changes with the
//! format: which keys exist, what each accepts, and the exact words of every error. Every
//! problem is reported with its `file:line`, all of them at once (one pass finds every typo),
//! and a key the format does not have is an error (as envoyproxy/ratelimit rejects it), so a
//! typo never turns a limit off silently. Scalars are kept as written (`value: 1.50` stays
//! `1.50`, as Go's YAML reads it into a string), so descriptor values match as envoyproxy's do.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use saphyr::{MarkedYaml, YamlData, YamlLoader};

use super::{Limit, Rule, Rules, RulesError, Unit, counter_id, tree::Node};
use crate::ratelimit::{Algorithm, FailureMode, Policy};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls::rules::{Matched, dangling_replaces};

    fn load(text: &str) -> Result<Rules, RulesError> {
        Rules::from_texts(&[(PathBuf::from("t.yaml"), text.to_owned())], false)
    }

    fn find(rules: &Rules, domain: &str, entries: &[(&str, &str)]) -> Option<Matched> {
        rules.find(domain, entries)
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
