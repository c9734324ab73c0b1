//! The in-memory rate-limit store: every check is one critical section, deciding with the same
//! pure functions ([`super::algorithm::decide`]) the Lua script mirrors.

use std::{collections::HashMap, sync::Arc};

use parking_lot::{Mutex, MutexGuard};

use super::{
    algorithm::{Decision, State as RateState, decide},
    model::{Counter, CounterId, admits},
    store::RateLimitStore,
};
use crate::{
    auth::config::QuotaConfig,
    store::{
        StoreError,
        keys::Keys,
        memory::{Budget, Clock, ExpiryQueue, MemoryBackend},
    },
    tenant::Tenant,
    time::Millis,
};

/// Counters in process memory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryRateLimitStore {
    state: Arc<Mutex<State>>,
    keys: Keys,
    clock: Clock,
}

struct State {
    /// Counters: key → (state, expires_at, tenant).
    counters: HashMap<String, (RateState, Millis, Tenant)>,
    /// (expires_at, counter key), for the sweeper.
    counter_expiry: ExpiryQueue,
    budget: Budget,
    /// Live counters per tenant, against `quota.memory_counters`.
    per_tenant: HashMap<Tenant, u64>,
    quotas: Arc<QuotaConfig>,
}

/// Bytes a counter costs: its key twice (map and expiry queue) plus the containers' overhead.
fn footprint(key: &str) -> usize {
    2 * key.len() + 96
}

impl State {
    fn counter(&mut self, key: &str, now: Millis) -> Option<RateState> {
        match self.counters.get(key) {
            Some((state, expires, _)) if *expires > now => Some(*state),
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        }
    }

    /// Charges `tenant`'s new counters at `keys` (those not yet held), all or none: to the
    /// tenant's `quota.memory_counters` and to the shared budget.
    fn charge_new(&mut self, tenant: &Tenant, keys: &[String]) -> Result<(), StoreError> {
        let new: Vec<&String> = keys
            .iter()
            .filter(|k| !self.counters.contains_key(*k))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let cap = self.quotas.for_tenant(tenant.as_str()).memory_counters;
        let live = self.per_tenant.get(tenant).copied().unwrap_or(0);
        if cap > 0 && live + new.len() as u64 > cap {
            return Err(StoreError::Full(
                "the tenant's quota.memory_counters is reached",
            ));
        }
        self.budget.charge(new.iter().map(|k| footprint(k)).sum())?;
        *self.per_tenant.entry(tenant.clone()).or_default() += new.len() as u64;
        Ok(())
    }

    /// Writes a counter; a new one must already be charged ([`State::charge_new`]).
    fn set_counter(&mut self, key: String, tenant: &Tenant, state: RateState, expires: Millis) {
        if let Some((_, old, _)) = self
            .counters
            .insert(key.clone(), (state, expires, tenant.clone()))
        {
            self.counter_expiry.remove(old, &key);
        }
        self.counter_expiry.insert(expires, key);
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, expires, tenant)) = self.counters.remove(key) {
            self.counter_expiry.remove(expires, key);
            self.budget.release(footprint(key));
            if let Some(n) = self.per_tenant.get_mut(&tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_tenant.remove(&tenant);
                }
            }
        }
    }

    fn sweep(&mut self, now: Millis) -> usize {
        let due = self.counter_expiry.due(now);
        for key in &due {
            self.remove(key);
        }
        due.len()
    }
}

impl MemoryRateLimitStore {
    /// An empty store whose sweeper runs until the store is dropped (inside a Tokio runtime).
    pub fn new(backend: &MemoryBackend) -> Self {
        let state = Arc::new(Mutex::new(State {
            counters: HashMap::new(),
            counter_expiry: ExpiryQueue::default(),
            budget: backend.budget().clone(),
            per_tenant: HashMap::new(),
            quotas: Arc::new(backend.quotas().clone()),
        }));
        backend.spawn_sweeper("rate-limit counters", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            keys: backend.keys().clone(),
            clock: backend.clock().clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

#[tonic::async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let keys: Vec<String> = counters
            .iter()
            .map(|c| self.keys.counter(tenant, &c.id))
            .collect();
        let mut state = self.lock();
        let now = self.clock.now();
        let mut decisions = Vec::with_capacity(counters.len());
        let mut updates = Vec::with_capacity(counters.len());
        for (counter, key) in counters.iter().zip(&keys) {
            let (decision, update) =
                decide(&counter.policy, state.counter(key, now), now, counter.cost);
            decisions.push(decision);
            updates.push(update);
        }
        if commit && admits(counters.iter().map(|c| c.role).zip(&decisions)) {
            let writes: Vec<(String, _)> = keys
                .into_iter()
                .zip(updates)
                .zip(counters.iter().zip(&decisions))
                .filter(|(_, (_, d))| d.allowed)
                .map(|(write, _)| write)
                .collect();
            let new: Vec<String> = writes.iter().map(|(k, _)| k.clone()).collect();
            // New counters are charged first, together: a full store or tenant consumes from none.
            state.charge_new(tenant, &new)?;
            for (key, update) in writes {
                state.set_counter(key, tenant, update.state, now.saturating_add(update.ttl_ms));
            }
        }
        Ok(decisions)
    }

    async fn reset(&self, tenant: &Tenant, id: &CounterId) -> Result<(), StoreError> {
        let key = self.keys.counter(tenant, id);
        self.lock().remove(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ratelimit::algorithm::{Algorithm, FailureMode, Policy};

    fn counter(limit: &str, key: &str) -> Counter {
        Counter {
            id: CounterId {
                limit: limit.into(),
                algorithm: Algorithm::FixedWindow.code(),
                key: key.into(),
            },
            policy: Policy {
                algorithm: Algorithm::FixedWindow,
                limit: 10,
                period_ms: 60_000,
                burst: 0,
                failure_mode: FailureMode::Closed,
            },
            cost: 1,
            role: crate::ratelimit::Role::Enforced,
        }
    }

    #[tokio::test]
    async fn a_tenant_at_its_counter_cap_is_refused_whole_and_others_are_not() {
        let quotas = QuotaConfig {
            memory_counters: 3,
            ..QuotaConfig::default()
        };
        let backend = MemoryBackend::new("t", Duration::from_secs(60), 1 << 20).with_quotas(quotas);
        let store = MemoryRateLimitStore::new(&backend);
        let (a, b) = (
            Tenant::new("a").expect("tenant"),
            Tenant::new("b").expect("tenant"),
        );
        for key in ["k1", "k2"] {
            store
                .check(&a, &[counter("l", key)], true)
                .await
                .expect("within the cap");
        }
        // Two new counters where one fits: neither is created.
        let over = store
            .check(&a, &[counter("l", "k3"), counter("l", "k4")], true)
            .await;
        assert!(matches!(over, Err(StoreError::Full(_))), "{over:?}");
        assert_eq!(store.lock().per_tenant.get(&a), Some(&2));
        // Existing counters keep counting at the cap; other tenants are not affected.
        store
            .check(&a, &[counter("l", "k1"), counter("l", "k3")], true)
            .await
            .expect("one new counter fits");
        store
            .check(&a, &[counter("l", "k1")], true)
            .await
            .expect("an existing counter at the cap");
        for key in ["k1", "k2", "k3"] {
            store
                .check(&b, &[counter("l", key)], true)
                .await
                .expect("another tenant has its own cap");
        }
        store
            .reset(&a, &counter("l", "k2").id)
            .await
            .expect("reset");
        store
            .check(&a, &[counter("l", "k4")], true)
            .await
            .expect("room again after a reset");
    }
}
