//! The semantic cache's configuration (`[semantic]`): namespaces and bounds.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::require_positive;

/// `[semantic]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SemanticConfig {
    /// Namespaces by name. There is no default: a namespace fixes the dimension of its
    /// embeddings, so a call to a namespace not listed here is NOT_FOUND.
    pub namespaces: BTreeMap<String, SemanticNamespace>,
    /// Largest TTL a Set may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Redis store: how often each replica reads the change log of every namespace it indexes,
    /// whatever Redis pushed. Changes usually arrive within a millisecond (client tracking);
    /// this bounds how long an entry Set elsewhere can stay unfound when a push is lost.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Redis store: changes each namespace's log keeps for replicas catching up; a replica that
    /// fell further behind reloads the namespace whole.
    pub log_length: u64,
    /// Namespaces of at most this many entries are searched exhaustively (exact); larger ones
    /// through a binary-quantised prefilter with an exact re-rank (recall in BENCHMARKS.md).
    pub exact_search_max: usize,
    /// Candidates the prefilter hands to the exact re-rank: more is slower and closer to exact.
    pub rerank: usize,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        Self {
            namespaces: BTreeMap::new(),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            sync_interval: Duration::from_secs(1),
            log_length: 10_000,
            exact_search_max: 20_000,
            rerank: 64,
        }
    }
}

/// `[semantic.namespaces.<name>]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SemanticNamespace {
    /// Dimension of the embeddings (every Set and Get must have exactly this many).
    pub dimension: usize,
    /// Cosine similarity a Get needs when it names none.
    pub min_similarity: f32,
    /// TTL of a Set that names none.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most live entries per tenant; a Set into a full namespace removes the entry closest to
    /// its expiry first.
    pub max_entries: u64,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most metadata entries on one value, and the longest key or value, in bytes.
    pub max_metadata: usize,
}

impl Default for SemanticNamespace {
    fn default() -> Self {
        Self {
            dimension: 0,
            min_similarity: 0.95,
            ttl: Duration::from_secs(24 * 3600),
            max_entries: 100_000,
            max_value_bytes: 256 * 1024,
            max_metadata: 16,
        }
    }
}

/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_BYTES: usize = 256;

/// Largest dimension a namespace may declare.
pub const MAX_DIMENSION: usize = 8192;

impl SemanticConfig {
    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        require_positive(bad, "semantic.max_ttl", !self.max_ttl.is_zero());
        require_positive(bad, "semantic.sync_interval", !self.sync_interval.is_zero());
        require_positive(bad, "semantic.log_length", self.log_length > 0);
        require_positive(bad, "semantic.rerank", self.rerank > 0);
        for (name, ns) in &self.namespaces {
            let key = format!("semantic.namespaces.{name}");
            if !crate::tenant::is_key_safe_name(name) {
                bad.push(format!(
                    "`{key}`: names are 1-64 characters of A-Z a-z 0-9 _ . -"
                ));
            }
            if ns.dimension == 0 || ns.dimension > MAX_DIMENSION {
                bad.push(format!(
                    "`{key}.dimension` must be set, between 1 and {MAX_DIMENSION}"
                ));
            }
            if !(-1.0..=1.0).contains(&ns.min_similarity) {
                bad.push(format!("`{key}.min_similarity` must be within [-1, 1]"));
            }
            if ns.ttl.is_zero() || ns.ttl > self.max_ttl {
                bad.push(format!(
                    "`{key}.ttl` must be between 1 ms and `semantic.max_ttl`"
                ));
            }
            require_positive(bad, &format!("{key}.max_entries"), ns.max_entries > 0);
            require_positive(
                bad,
                &format!("{key}.max_value_bytes"),
                ns.max_value_bytes > 0,
            );
        }
    }
}
