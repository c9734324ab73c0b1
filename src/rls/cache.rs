//! The over-limit cache: counters this replica saw over their limit, with the instant until
//! which the store said they stay over, so that Envoy's retries of a client already refused are
//! refused again without a store call (envoyproxy/ratelimit's local cache).
//!
//! It only short-cuts denials and never admits: an entry is written from a store decision that
//! denied a cost `c` with `retry_after` = r, and answers "over" only for costs of at least `c`
//! and only until `sent + r`, where `sent` is when the call left this replica (before the store
//! decided, so the entry ends no later than the store's own answer would change). The store's
//! clock is never compared with this replica's: only the relative `retry_after` is used, on the
//! monotonic clock. What it can miss is an early end of the denial (a `Reset` of the counter, a
//! Cluster reservation that refused it and was refunded, a limit raised on another replica's
//! reload; a reload clears this replica's cache), so an entry also lives at most
//! `rls.local_cache_max_ttl` (1 s): the staleness bound. A client hammering past its limit then
//! costs one store call per second per replica instead of one per request. Memory is bounded by
//! `rls.local_cache_entries` (least recently used entries go first).

use std::time::{Duration, Instant};

use moka::{Expiry, sync::Cache};

use crate::{ratelimit::CounterId, tenant::Tenant};

#[derive(Clone, Copy)]
struct Over {
    until: Instant,
    cost: u64,
}

struct UntilExpiry;

impl Expiry<(Tenant, CounterId), Over> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &(Tenant, CounterId),
        value: &Over,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &(Tenant, CounterId),
        value: &Over,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(updated_at))
    }
}

/// Counters known to be over their limit (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct OverLimitCache {
    entries: Option<Cache<(Tenant, CounterId), Over>>,
}

impl OverLimitCache {
    /// A cache of at most `capacity` entries; 0 turns it off.
    pub fn new(capacity: u64) -> Self {
        Self {
            entries: (capacity > 0).then(|| {
                Cache::builder()
                    .max_capacity(capacity)
                    .expire_after(UntilExpiry)
                    .build()
            }),
        }
    }

    /// Until when a request of `cost` on `counter` is known to be refused, if it is.
    pub fn over(&self, tenant: &Tenant, counter: &CounterId, cost: u64) -> Option<Instant> {
        let entries = self.entries.as_ref()?;
        let key = (tenant.clone(), counter.clone());
        let over = entries.get(&key)?;
        let now = Instant::now();
        (cost >= over.cost && over.until > now).then_some(over.until)
    }

    /// Records that the store refused `cost` on `counter`, for `retry_after` counted from
    /// `sent` (when the call left this replica).
    pub fn insert(
        &self,
        tenant: &Tenant,
        counter: &CounterId,
        cost: u64,
        sent: Instant,
        retry_after: Duration,
    ) {
        let Some(entries) = &self.entries else {
            return;
        };
        let until = sent + retry_after;
        if until <= Instant::now() || cost == 0 {
            return;
        }
        entries.insert((tenant.clone(), counter.clone()), Over { until, cost });
    }

    /// Forgets everything (the rules changed).
    pub fn clear(&self) {
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str) -> CounterId {
        CounterId {
            limit: "e.x".into(),
            algorithm: 1,
            key: key.into(),
        }
    }

    #[test]
    fn answers_only_for_costs_at_least_the_refused_one_and_only_until_then() {
        let cache = OverLimitCache::new(100);
        let t = Tenant::default_tenant();
        let sent = Instant::now();
        cache.insert(&t, &id("a"), 2, sent, Duration::from_secs(60));
        assert!(cache.over(&t, &id("a"), 2).is_some());
        assert!(cache.over(&t, &id("a"), 5).is_some());
        assert!(
            cache.over(&t, &id("a"), 1).is_none(),
            "a smaller cost may fit"
        );
        assert!(cache.over(&t, &id("b"), 2).is_none());
        let other = Tenant::new("other").expect("tenant");
        assert!(cache.over(&other, &id("a"), 2).is_none(), "per tenant");
        cache.insert(&t, &id("c"), 1, sent, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.over(&t, &id("c"), 1).is_none(), "expired");
        cache.clear();
        assert!(cache.over(&t, &id("a"), 2).is_none(), "cleared");
        let off = OverLimitCache::new(0);
        off.insert(&t, &id("a"), 1, sent, Duration::from_secs(60));
        assert!(off.over(&t, &id("a"), 1).is_none());
    }
}
