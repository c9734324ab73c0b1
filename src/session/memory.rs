//! The in-memory session store: every operation is one critical section under one mutex, the
//! atomicity the Redis store gets from Lua. A background sweeper reclaims expired sessions so
//! memory does not grow without bound; reads also treat expired sessions as absent.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{
    id::{SessionKey, UserTag},
    model::{DataLimits, SessionRecord, SessionUpdate, UpdateOutcome},
    store::SessionStore,
};
use crate::{
    store::{StoreError, keys::Keys, memory::MemoryBackend},
    tenant::Tenant,
    time::Millis,
};

/// Sessions in process memory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemorySessionStore {
    state: Arc<Mutex<State>>,
    keys: Keys,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Entry>,
    /// User index key → (created_at, member), oldest first.
    indexes: HashMap<String, BTreeSet<(Millis, String)>>,
    /// (expires_at, session key) for every session, so the sweeper pops only what is due.
    expiry: BTreeSet<(Millis, String)>,
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

    fn sweep(&mut self, now: Millis) -> usize {
        let due: Vec<String> = self
            .expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
            .collect();
        for key in &due {
            self.remove(key);
        }
        due.len()
    }
}

impl MemorySessionStore {
    /// An empty store whose sweeper runs until the store is dropped. Must be called inside a
    /// Tokio runtime.
    pub fn new(backend: &MemoryBackend) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        backend.spawn_sweeper("sessions", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            keys: backend.keys().clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::store::memory::lock(&self.state)
    }

    /// Number of stored sessions, live or not yet swept (for tests).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether the store holds no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[tonic::async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(
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

    async fn get(
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

    async fn update(
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

    async fn rotate(
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

    async fn delete(
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

    async fn list(
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

    async fn delete_user(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::{
        session::{SessionId, model::expiry},
        time::now_ms,
    };

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
        let store = MemorySessionStore::new(&MemoryBackend::new("t", Duration::from_millis(10)));
        let tenant = Tenant::default_tenant();
        let now = now_ms();
        for i in 0..50 {
            let tag = UserTag::for_user(&tenant, &format!("u{i}"));
            let key = SessionId::generate(tag).key();
            store
                .create(&tenant, &key, &record(&format!("u{i}"), now, 20), 10)
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
