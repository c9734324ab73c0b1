//! The embedded in-memory store: zero set-up for laptops, demos and other teams' tests.
//!
//! State is process-local and lost on restart; the server says so with a WARN at start-up.
//! Every operation is one critical section under one mutex, which gives the same atomicity the
//! Redis store gets from Lua. A background sweeper reclaims expired sessions so memory does not
//! grow without bound; reads also treat expired entries as absent.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use super::{StoreError, keys::Keys, memory_cache::MemoryCache};
use crate::{
    cache::{Lookup, Write},
    ratelimit::{Counter, CounterId, Decision, State as RateState, decide},
    session::{DataLimits, SessionKey, SessionRecord, SessionUpdate, UpdateOutcome, UserTag},
    tenant::Tenant,
    time::{Millis, now_ms},
};

/// The in-memory store. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    cache: Arc<MemoryCache>,
    keys: Keys,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Entry>,
    /// User index key → (created_at, member), oldest first.
    indexes: HashMap<String, BTreeSet<(Millis, String)>>,
    /// (expires_at, session key) for every session, so the sweeper pops only what is due.
    expiry: BTreeSet<(Millis, String)>,
    /// Rate-limit counters: key → (state, expires_at).
    counters: HashMap<String, (RateState, Millis)>,
    /// (expires_at, counter key), for the sweeper.
    counter_expiry: BTreeSet<(Millis, String)>,
}

struct Entry {
    record: SessionRecord,
    index: String,
    member: String,
}

impl State {
    fn insert(&mut self, key: String, entry: Entry) {
        self.expiry.insert((entry.record.expires_at, key.clone()));
        self.indexes
            .entry(entry.index.clone())
            .or_default()
            .insert((entry.record.created_at, entry.member.clone()));
        self.sessions.insert(key, entry);
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.sessions.remove(key)?;
        self.expiry
            .remove(&(entry.record.expires_at, key.to_owned()));
        if let Some(index) = self.indexes.get_mut(&entry.index) {
            index.remove(&(entry.record.created_at, entry.member.clone()));
            if index.is_empty() {
                self.indexes.remove(&entry.index);
            }
        }
        Some(entry)
    }

    /// The live session at `key`, removing it if it has expired.
    fn live(&mut self, key: &str, now: Millis) -> Option<&mut Entry> {
        if self.sessions.get(key)?.record.is_expired(now) {
            self.remove(key);
            return None;
        }
        self.sessions.get_mut(key)
    }

    /// Runs `f` on a live session and keeps the expiry queue in step with any change it makes.
    fn modify<T>(
        &mut self,
        key: &str,
        now: Millis,
        f: impl FnOnce(&mut SessionRecord) -> T,
    ) -> Option<T> {
        let entry = self.live(key, now)?;
        let before = entry.record.expires_at;
        let out = f(&mut entry.record);
        let after = entry.record.expires_at;
        if before != after {
            self.expiry.remove(&(before, key.to_owned()));
            self.expiry.insert((after, key.to_owned()));
        }
        Some(out)
    }

    fn counter(&mut self, key: &str, now: Millis) -> Option<RateState> {
        match self.counters.get(key) {
            Some((state, expires)) if *expires > now => Some(*state),
            Some((_, expires)) => {
                let expires = *expires;
                self.counters.remove(key);
                self.counter_expiry.remove(&(expires, key.to_owned()));
                None
            }
            None => None,
        }
    }

    fn set_counter(&mut self, key: String, state: RateState, expires: Millis) {
        if let Some((_, old)) = self.counters.insert(key.clone(), (state, expires)) {
            self.counter_expiry.remove(&(old, key.clone()));
        }
        self.counter_expiry.insert((expires, key));
    }

    fn sweep(&mut self, now: Millis) -> usize {
        let due_counters: Vec<(Millis, String)> = self
            .counter_expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        for entry in &due_counters {
            self.counter_expiry.remove(entry);
            self.counters.remove(&entry.1);
        }
        let due: Vec<String> = self
            .expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
            .collect();
        for key in &due {
            self.remove(key);
        }
        due.len() + due_counters.len()
    }
}

impl MemoryStore {
    /// A new, empty store whose sweeper runs every `sweep_interval` until the store is dropped.
    /// Must be called inside a Tokio runtime.
    pub fn new(key_prefix: &str, sweep_interval: Duration, cache_max_bytes: u64) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let weak = Arc::downgrade(&state);
        tokio::spawn(sweeper(weak, sweep_interval));
        Self {
            state,
            cache: Arc::new(MemoryCache::new(cache_max_bytes)),
            keys: Keys::new(key_prefix),
        }
    }

    /// Cache entries evicted for space, by namespace.
    pub fn cache_evictions(&self) -> Vec<(String, u64)> {
        self.cache.evictions()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way later calls
        // cannot cope with (every operation re-checks liveness), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of stored sessions, live or not yet swept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether the store holds no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub(crate) async fn session_create(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        record: &SessionRecord,
        max_per_user: u32,
    ) -> Result<u32, StoreError> {
        let index = self.keys.user_index(tenant, key.tag());
        let base = self.keys.session_base(tenant, key.tag());
        let now = record.created_at;
        let mut state = self.lock();
        // Lazy pruning: members whose session expired leave the index before counting.
        let members: Vec<String> = state
            .indexes
            .get(&index)
            .map(|set| set.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default();
        for member in members {
            let _ = state.live(&format!("{base}{member}"), now);
        }
        state.insert(
            self.keys.session(tenant, key),
            Entry {
                record: record.clone(),
                index: index.clone(),
                member: key.member(),
            },
        );
        let mut evicted = 0;
        loop {
            let oldest = match state.indexes.get(&index) {
                Some(set) if set.len() > max_per_user as usize => {
                    set.first().map(|(_, m)| m.clone())
                }
                _ => None,
            };
            let Some(member) = oldest else { break };
            state.remove(&format!("{base}{member}"));
            evicted += 1;
        }
        Ok(evicted)
    }

    pub(crate) async fn session_get(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let k = self.keys.session(tenant, key);
        Ok(self.lock().modify(&k, now, |r| {
            if touch {
                r.touch(now);
            }
            r.clone()
        }))
    }

    pub(crate) async fn session_update(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
        update: &SessionUpdate,
        limits: DataLimits,
    ) -> Result<UpdateOutcome, StoreError> {
        let k = self.keys.session(tenant, key);
        let outcome = self
            .lock()
            .modify(&k, now, |r| match r.apply(update, limits, now) {
                Ok(()) => UpdateOutcome::Updated(r.clone()),
                Err(refused) => UpdateOutcome::Refused(refused),
            });
        Ok(outcome.unwrap_or(UpdateOutcome::NotFound))
    }

    pub(crate) async fn session_rotate(
        &self,
        tenant: &Tenant,
        old: &SessionKey,
        new: &SessionKey,
        now: Millis,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let old_key = self.keys.session(tenant, old);
        let mut state = self.lock();
        if state.live(&old_key, now).is_none() {
            return Ok(None);
        }
        let Some(entry) = state.remove(&old_key) else {
            return Ok(None);
        };
        let record = entry.record.clone();
        state.insert(
            self.keys.session(tenant, new),
            Entry {
                member: new.member(),
                ..entry
            },
        );
        Ok(Some(record))
    }

    pub(crate) async fn session_delete(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let k = self.keys.session(tenant, key);
        let mut state = self.lock();
        let live = state.live(&k, now).is_some();
        state.remove(&k);
        Ok(live)
    }

    pub(crate) async fn session_list(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        now: Millis,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let index = self.keys.user_index(tenant, tag);
        let base = self.keys.session_base(tenant, tag);
        let mut state = self.lock();
        let members: Vec<String> = state
            .indexes
            .get(&index)
            .map(|set| set.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(members.len());
        for member in members {
            let Some(entry) = state.live(&format!("{base}{member}"), now) else {
                continue;
            };
            if entry.record.user_id != user_id {
                continue;
            }
            if let Some(key) = SessionKey::from_member(tag, &member) {
                out.push((key, entry.record.clone()));
            }
        }
        Ok(out)
    }

    pub(crate) async fn session_delete_user(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
        keep: Option<&SessionKey>,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let index = self.keys.user_index(tenant, tag);
        let base = self.keys.session_base(tenant, tag);
        let keep = keep.map(SessionKey::member);
        let mut state = self.lock();
        let members: Vec<String> = state
            .indexes
            .get(&index)
            .map(|set| set.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default();
        let mut deleted = 0;
        for member in members {
            if keep.as_deref() == Some(member.as_str()) {
                continue;
            }
            let key = format!("{base}{member}");
            match state.live(&key, now) {
                Some(entry) if entry.record.user_id == user_id => {
                    state.remove(&key);
                    deleted += 1;
                }
                _ => {}
            }
        }
        Ok(deleted)
    }
}

impl MemoryStore {
    pub(crate) async fn ratelimit_check(
        &self,
        tenant: &Tenant,
        counters: &[Counter],
        now: Millis,
        cost: u64,
        commit: bool,
    ) -> Result<Vec<Decision>, StoreError> {
        let keys: Vec<String> = counters
            .iter()
            .map(|c| self.keys.counter(tenant, &c.id))
            .collect();
        let mut state = self.lock();
        let mut decisions = Vec::with_capacity(counters.len());
        let mut updates = Vec::with_capacity(counters.len());
        for (counter, key) in counters.iter().zip(&keys) {
            let (decision, update) = decide(&counter.policy, state.counter(key, now), now, cost);
            decisions.push(decision);
            updates.push(update);
        }
        if commit && decisions.iter().all(|d| d.allowed) {
            for (key, update) in keys.into_iter().zip(updates) {
                state.set_counter(key, update.state, now.saturating_add(update.ttl_ms));
            }
        }
        Ok(decisions)
    }

    pub(crate) async fn ratelimit_reset(
        &self,
        tenant: &Tenant,
        id: &CounterId,
    ) -> Result<(), StoreError> {
        let key = self.keys.counter(tenant, id);
        let mut state = self.lock();
        if let Some((_, expires)) = state.counters.remove(&key) {
            state.counter_expiry.remove(&(expires, key));
        }
        Ok(())
    }
}

impl MemoryStore {
    fn cache_key(&self, tenant: &Tenant, namespace: &str, key: &str) -> String {
        let generation = self
            .cache
            .generation(&self.keys.cache_generation(tenant, namespace));
        self.keys.cache_entry(tenant, namespace, generation, key)
    }

    pub(crate) async fn cache_get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        key: &str,
        now: Millis,
        lease: Option<(&str, Millis)>,
    ) -> Result<Lookup, StoreError> {
        Ok(self
            .cache
            .get(&self.cache_key(tenant, namespace, key), now, lease))
    }

    pub(crate) async fn cache_get_many(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
        now: Millis,
    ) -> Result<Vec<Lookup>, StoreError> {
        Ok(keys
            .iter()
            .map(|k| {
                self.cache
                    .get(&self.cache_key(tenant, namespace, k), now, None)
            })
            .collect())
    }

    pub(crate) async fn cache_set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        writes: &[Write],
        now: Millis,
    ) -> Result<Vec<bool>, StoreError> {
        Ok(writes
            .iter()
            .map(|w| {
                let tags = w
                    .tags
                    .iter()
                    .map(|t| self.keys.cache_tag(tenant, namespace, t))
                    .collect();
                let key = self.cache_key(tenant, namespace, &w.key);
                self.cache.set(&key, namespace, w, tags, now)
            })
            .collect())
    }

    pub(crate) async fn cache_delete(
        &self,
        tenant: &Tenant,
        namespace: &str,
        keys: &[String],
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        Ok(keys
            .iter()
            .filter(|k| {
                self.cache
                    .remove(&self.cache_key(tenant, namespace, k), now)
            })
            .count() as u64)
    }

    pub(crate) async fn cache_invalidate_tags(
        &self,
        tenant: &Tenant,
        namespace: &str,
        tags: &[String],
    ) -> Result<u64, StoreError> {
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| self.keys.cache_tag(tenant, namespace, t))
            .collect();
        Ok(self.cache.invalidate_tags(&tag_keys, now_ms()))
    }

    pub(crate) async fn cache_invalidate_namespace(
        &self,
        tenant: &Tenant,
        namespace: &str,
        _keep_ms: Millis,
    ) -> Result<(), StoreError> {
        self.cache
            .invalidate_namespace(&self.keys.cache_generation(tenant, namespace));
        Ok(())
    }
}

async fn sweeper(state: Weak<Mutex<State>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The store is gone: stop instead of leaking a task per dropped store.
        let Some(state) = state.upgrade() else { return };
        let swept = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sweep(now_ms());
        if swept > 0 {
            tracing::debug!(swept, "reclaimed expired sessions and counters");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{SessionId, expiry};

    fn record(user: &str, now: Millis, idle: Millis) -> SessionRecord {
        SessionRecord {
            user_id: user.into(),
            data: HashMap::new(),
            metadata: HashMap::new(),
            created_at: now,
            last_seen_at: now,
            expires_at: expiry(now, idle, now + 10 * idle),
            absolute_expires_at: now + 10 * idle,
            idle_timeout: idle,
            version: 1,
        }
    }

    #[tokio::test]
    async fn sweeper_reclaims_expired_sessions() {
        let store = MemoryStore::new("t", Duration::from_millis(10), 1 << 20);
        let tenant = Tenant::default_tenant();
        let now = now_ms();
        for i in 0..50 {
            let tag = UserTag::for_user(&tenant, &format!("u{i}"));
            let key = SessionId::generate(tag).key();
            store
                .session_create(&tenant, &key, &record(&format!("u{i}"), now, 20), 10)
                .await
                .expect("create");
        }
        assert_eq!(store.len(), 50);
        // Poll (no fixed sleep): the sweeper must empty the store once the sessions expire.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !store.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.is_empty(), "{} sessions left", store.len());
        let state = store.lock();
        assert!(state.indexes.is_empty() && state.expiry.is_empty());
    }
}
