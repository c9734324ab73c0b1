//! The in-memory rate-limit store: every check is one critical section, deciding with the same
//! pure functions ([`super::algorithm::decide`]) the Lua script mirrors.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{
    algorithm::{Decision, State as RateState, decide},
    model::{Counter, CounterId},
    store::RateLimitStore,
};
use crate::{
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
    /// Counters: key → (state, expires_at).
    counters: HashMap<String, (RateState, Millis)>,
    /// (expires_at, counter key), for the sweeper.
    counter_expiry: ExpiryQueue,
    budget: Budget,
}

/// Bytes a counter costs: its key twice (map and expiry queue) plus the containers' overhead.
fn footprint(key: &str) -> usize {
    2 * key.len() + 96
}

impl State {
    fn counter(&mut self, key: &str, now: Millis) -> Option<RateState> {
        match self.counters.get(key) {
            Some((state, expires)) if *expires > now => Some(*state),
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        }
    }

    /// Writes a counter; a new one must already be charged to the budget.
    fn set_counter(&mut self, key: String, state: RateState, expires: Millis) {
        if let Some((_, old)) = self.counters.insert(key.clone(), (state, expires)) {
            self.counter_expiry.remove(old, &key);
        }
        self.counter_expiry.insert(expires, key);
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, expires)) = self.counters.remove(key) {
            self.counter_expiry.remove(expires, key);
            self.budget.release(footprint(key));
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
        }));
        backend.spawn_sweeper("rate-limit counters", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            keys: backend.keys().clone(),
            clock: backend.clock().clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::store::memory::lock(&self.state)
    }
}

#[tonic::async_trait]
impl RateLimitStore for MemoryRateLimitStore {
    async fn check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        cost: u64,
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
            let (decision, update) = decide(&counter.policy, state.counter(key, now), now, cost);
            decisions.push(decision);
            updates.push(update);
        }
        if commit && decisions.iter().all(|d| d.allowed) {
            // New counters are charged first, together: a full store consumes from none.
            let new: usize = keys
                .iter()
                .filter(|k| !state.counters.contains_key(*k))
                .map(|k| footprint(k))
                .sum();
            state.budget.charge(new)?;
            for (key, update) in keys.into_iter().zip(updates) {
                state.set_counter(key, update.state, now.saturating_add(update.ttl_ms));
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
