//! Per-namespace hit, miss and stale counts, kept as plain atomics on the hot path and published
//! by the metrics collector.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::RwLock;

/// Hit, miss and stale counts of one namespace.
#[derive(Debug, Default)]
pub struct NamespaceStats {
    /// Fresh hits.
    pub hits: AtomicU64,
    /// Misses.
    pub misses: AtomicU64,
    /// Stale hits.
    pub stale: AtomicU64,
    /// Leases granted.
    pub leases: AtomicU64,
    /// Writes stored.
    pub sets: AtomicU64,
}

/// Per-namespace counters, readable by metrics. Cardinality is bounded: configured namespaces
/// plus at most [`MAX_TRACKED_UNKNOWN`] others; the rest share the `_other` entry.
#[derive(Debug, Default)]
pub struct CacheStats {
    tracked: RwLock<Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    namespaces: HashMap<String, Arc<NamespaceStats>>,
    /// How many of them are not configured namespaces.
    unknown: usize,
}

/// Unknown namespaces tracked under their own name before they share `_other`.
pub const MAX_TRACKED_UNKNOWN: usize = 64;

impl CacheStats {
    pub(crate) fn for_namespace(&self, name: &str, configured: bool) -> Arc<NamespaceStats> {
        if let Some(s) = self.tracked.read().namespaces.get(name) {
            return s.clone();
        }
        let mut tracked = self.tracked.write();
        if let Some(s) = tracked.namespaces.get(name) {
            return s.clone();
        }
        let label = if configured {
            name
        } else if tracked.unknown < MAX_TRACKED_UNKNOWN {
            tracked.unknown += 1;
            name
        } else {
            "_other"
        };
        tracked
            .namespaces
            .entry(label.to_owned())
            .or_default()
            .clone()
    }

    /// A snapshot: namespace → (hits, misses, stale, leases, sets).
    pub fn snapshot(&self) -> Vec<(String, [u64; 5])> {
        let tracked = self.tracked.read();
        let mut out: Vec<_> = tracked
            .namespaces
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    [
                        s.hits.load(Ordering::Relaxed),
                        s.misses.load(Ordering::Relaxed),
                        s.stale.load(Ordering::Relaxed),
                        s.leases.load(Ordering::Relaxed),
                        s.sets.load(Ordering::Relaxed),
                    ],
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
