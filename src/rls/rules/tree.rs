//! The match tree of one domain and [`Rules::find`]: which rule a request's descriptor matches.
//!
//! Matching follows envoyproxy/ratelimit's `GetLimit`, so a configuration behaves as it does
//! there: per entry of a request's descriptor, `key_value` first, then wildcard values in file
//! order, then `key` alone; a limit applies only at the depth of the descriptor's last entry.
//! It is on every request's path, so it is kept apart from the loader (which runs at start-up
//! and on reload) and allocates only what a match needs.

use std::{collections::HashMap, sync::Arc};

use super::{Matched, Rule, Rules};

/// One node of a domain's tree: what a descriptor entry can match at one depth.
#[derive(Debug, Default)]
pub(super) struct Node {
    /// Children by `key_value` or `key`.
    pub(super) children: HashMap<String, Node>,
    /// Children with a wildcard value, in file order: (`key_value*` pattern, its parts).
    pub(super) wildcards: Vec<(String, Vec<String>)>,
    /// The rule at this node, if it has a `rate_limit`.
    pub(super) rule: Option<Arc<Rule>>,
    /// `value_to_metric`: the request's value shows in the metric key.
    pub(super) value_to_metric: bool,
    /// `share_threshold`: every value the wildcard matches shares one counter.
    pub(super) share_threshold: bool,
}

impl Rules {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        ratelimit::Algorithm,
        rls::rules::{Limit, RulesError, Unit},
    };

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
}
