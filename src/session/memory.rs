//! The in-memory session store: every operation is one critical section under one mutex, the
//! atomicity the Redis store gets from Lua, and every time comes from the backend's clock (the
//! store's clock, as Redis `TIME` is for Redis). A background sweeper reclaims expired sessions
//! so memory does not grow without bound; reads also treat expired sessions as absent. What a
//! session keeps (its record, index entries, expiry entry) is charged to the backend's budget.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use parking_lot::{Mutex, MutexGuard};

use super::{
    id::{SessionKey, UserTag},
    model::{DataLimits, NewSession, SessionRecord, SessionUpdate, UpdateOutcome},
    store::SessionStore,
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

/// Sessions in process memory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemorySessionStore {
    state: Arc<Mutex<State>>,
    keys: Keys,
    clock: Clock,
}

struct State {
    sessions: HashMap<String, Entry>,
    /// User index key → (created_at, insertion number, member), oldest first. The insertion
    /// number breaks ties between sessions created in the same millisecond.
    indexes: HashMap<String, BTreeSet<IndexEntry>>,
    /// (expires_at, session key) for every session, so the sweeper pops only what is due.
    expiry: ExpiryQueue,
    /// Insertion counter for index entries.
    inserted: u64,
    budget: Budget,
    /// Live sessions per tenant, against `quota.memory_sessions`.
    per_tenant: HashMap<Tenant, u64>,
    quotas: Arc<QuotaConfig>,
}

type IndexEntry = (Millis, u64, String);

struct Entry {
    record: SessionRecord,
    tenant: Tenant,
    index: String,
    member: String,
    seq: u64,
    /// Bytes charged to the budget for this session.
    charged: usize,
}

/// Bytes a session costs: its key (held twice: map and expiry queue), index key and member (map
/// and index), the record's strings and a fixed overhead for the containers.
fn footprint(key: &str, index: &str, member: &str, r: &SessionRecord) -> usize {
    const OVERHEAD: usize = 256;
    2 * key.len()
        + index.len()
        + 2 * member.len()
        + r.user_id.len()
        + r.data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + r.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + OVERHEAD
}

impl State {
    /// Stores a session; `replacing` when another of the tenant's sessions goes in the same
    /// step (an eviction or a rotation), so the tenant's cap is not checked.
    fn insert(
        &mut self,
        key: String,
        tenant: &Tenant,
        record: SessionRecord,
        index: String,
        member: String,
        replacing: bool,
    ) -> Result<(), StoreError> {
        let cap = self.quotas.for_tenant(tenant.as_str()).memory_sessions;
        let live = self.per_tenant.get(tenant).copied().unwrap_or(0);
        if !replacing && cap > 0 && live >= cap {
            return Err(StoreError::Full(
                "the tenant's quota.memory_sessions is reached",
            ));
        }
        let charged = footprint(&key, &index, &member, &record);
        self.budget.charge(charged)?;
        *self.per_tenant.entry(tenant.clone()).or_default() += 1;
        self.inserted += 1;
        let seq = self.inserted;
        self.expiry.insert(record.expires_at, key.clone());
        self.indexes.entry(index.clone()).or_default().insert((
            record.created_at,
            seq,
            member.clone(),
        ));
        self.sessions.insert(
            key,
            Entry {
                record,
                tenant: tenant.clone(),
                index,
                member,
                seq,
                charged,
            },
        );
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.sessions.remove(key)?;
        self.budget.release(entry.charged);
        if let Some(n) = self.per_tenant.get_mut(&entry.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(&entry.tenant);
            }
        }
        self.expiry.remove(entry.record.expires_at, key);
        if let Some(index) = self.indexes.get_mut(&entry.index) {
            index.remove(&(entry.record.created_at, entry.seq, entry.member.clone()));
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

    /// Runs `f` on a live session and keeps the expiry queue and the budget in step with any
    /// change it makes. A change whose growth does not fit the budget is undone.
    fn modify<T>(
        &mut self,
        key: &str,
        now: Millis,
        f: impl FnOnce(&mut SessionRecord) -> T,
    ) -> Result<Option<T>, StoreError> {
        let Some(entry) = self.live(key, now) else {
            return Ok(None);
        };
        let before = entry.record.clone();
        let out = f(&mut entry.record);
        let charged = footprint(key, &entry.index, &entry.member, &entry.record);
        let previous = entry.charged;
        if charged > previous {
            if let Err(e) = self.budget.charge(charged - previous) {
                if let Some(entry) = self.sessions.get_mut(key) {
                    entry.record = before;
                }
                return Err(e);
            }
        } else {
            self.budget.release(previous - charged);
        }
        let Some(entry) = self.sessions.get_mut(key) else {
            return Ok(None);
        };
        entry.charged = charged;
        let after = entry.record.expires_at;
        self.expiry.reschedule(before.expires_at, after, key);
        Ok(Some(out))
    }

    /// The members listed in an index, oldest first.
    fn members(&self, index: &str) -> Vec<String> {
        self.indexes
            .get(index)
            .map(|set| set.iter().map(|(_, _, m)| m.clone()).collect())
            .unwrap_or_default()
    }

    fn sweep(&mut self, now: Millis) -> usize {
        let due = self.expiry.due(now);
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
        let state = Arc::new(Mutex::new(State {
            sessions: HashMap::new(),
            indexes: HashMap::new(),
            expiry: ExpiryQueue::default(),
            inserted: 0,
            budget: backend.budget().clone(),
            per_tenant: HashMap::new(),
            quotas: Arc::new(backend.quotas().clone()),
        }));
        backend.spawn_sweeper("sessions", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            keys: backend.keys().clone(),
            clock: backend.clock().clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
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
        new: NewSession,
        max_per_user: u32,
    ) -> Result<(SessionRecord, u32), StoreError> {
        let index = self.keys.user_index(tenant, key.tag());
        let base = self.keys.session_base(tenant, key.tag());
        let member = key.member();
        let mut state = self.lock();
        let now = self.clock.now();
        let record = new.created_at(now);
        // Lazy pruning: members whose session expired leave the index before counting.
        for m in state.members(&index) {
            let _ = state.live(&format!("{base}{m}"), now);
        }
        // A user at max_per_user replaces their oldest session: that create does not grow the
        // tenant's count, so it is allowed at the tenant's cap.
        let at_user_limit = state
            .indexes
            .get(&index)
            .is_some_and(|set| set.len() >= max_per_user as usize);
        state.insert(
            self.keys.session(tenant, key),
            tenant,
            record.clone(),
            index.clone(),
            member.clone(),
            at_user_limit,
        )?;
        let mut evicted = 0;
        while state
            .indexes
            .get(&index)
            .is_some_and(|set| set.len() > max_per_user as usize)
        {
            // The oldest, never the session being created (it can tie on the millisecond).
            let victim = state.indexes.get(&index).and_then(|set| {
                set.iter()
                    .map(|(_, _, m)| m)
                    .find(|m| **m != member)
                    .cloned()
            });
            let Some(victim) = victim else { break };
            state.remove(&format!("{base}{victim}"));
            evicted += 1;
        }
        Ok((record, evicted))
    }

    async fn get(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let k = self.keys.session(tenant, key);
        let mut state = self.lock();
        let now = self.clock.now();
        state.modify(&k, now, |r| {
            if touch {
                r.touch(now);
            }
            r.clone()
        })
    }

    async fn update(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
        update: &SessionUpdate,
        limits: DataLimits,
    ) -> Result<UpdateOutcome, StoreError> {
        let k = self.keys.session(tenant, key);
        let mut state = self.lock();
        let now = self.clock.now();
        let outcome = state.modify(&k, now, |r| match r.apply(update, limits, now) {
            Ok(()) => UpdateOutcome::Updated(r.clone()),
            Err(refused) => UpdateOutcome::Refused(refused),
        })?;
        Ok(outcome.unwrap_or(UpdateOutcome::NotFound))
    }

    async fn rotate(
        &self,
        tenant: &Tenant,
        old: &SessionKey,
        new: &SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let old_key = self.keys.session(tenant, old);
        let mut state = self.lock();
        let now = self.clock.now();
        if state.live(&old_key, now).is_none() {
            return Ok(None);
        }
        let Some(entry) = state.sessions.get(&old_key) else {
            return Ok(None);
        };
        let (record, index) = (entry.record.clone(), entry.index.clone());
        // The new key is stored (and charged) before the old one goes: a full store refuses
        // the rotation and keeps the session.
        // Rotation keeps the tenant's count: the new key replaces the old one.
        state.insert(
            self.keys.session(tenant, new),
            tenant,
            record.clone(),
            index,
            new.member(),
            true,
        )?;
        state.remove(&old_key);
        Ok(Some(record))
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        key: &SessionKey,
    ) -> Result<Option<String>, StoreError> {
        let k = self.keys.session(tenant, key);
        let mut state = self.lock();
        let now = self.clock.now();
        let user = state.live(&k, now).map(|e| e.record.user_id.clone());
        state.remove(&k);
        Ok(user)
    }

    async fn list(
        &self,
        tenant: &Tenant,
        tag: UserTag,
        user_id: &str,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let index = self.keys.user_index(tenant, tag);
        let base = self.keys.session_base(tenant, tag);
        let mut state = self.lock();
        let now = self.clock.now();
        let members = state.members(&index);
        let mut out = Vec::with_capacity(members.len());
        for member in members {
            let Some(entry) = state.live(&format!("{base}{member}"), now) else {
                continue;
            };
            if entry.record.user_id != user_id {
                continue;
            }
            if let Some(key) = SessionKey::from_member(tag, &member) {
                let mut record = entry.record.clone();
                // A listing never carries data (see the store contract).
                record.data.clear();
                out.push((key, record));
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
    ) -> Result<u64, StoreError> {
        let index = self.keys.user_index(tenant, tag);
        let base = self.keys.session_base(tenant, tag);
        let keep = keep.map(SessionKey::member);
        let mut state = self.lock();
        let now = self.clock.now();
        let mut deleted = 0;
        for member in state.members(&index) {
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
    use std::time::Duration;

    use super::*;
    use crate::session::SessionId;

    fn new_session(user: &str, idle: Millis) -> NewSession {
        NewSession {
            user_id: user.into(),
            data: HashMap::new(),
            metadata: HashMap::new(),
            idle_timeout: idle,
            absolute_timeout: 10 * idle,
        }
    }

    fn backend(sweep: Duration, max_bytes: u64) -> MemoryBackend {
        MemoryBackend::new("t", sweep, max_bytes)
    }

    #[tokio::test]
    async fn sweeper_reclaims_expired_sessions() {
        let store = MemorySessionStore::new(&backend(Duration::from_millis(10), 1 << 20));
        let tenant = Tenant::default_tenant();
        for i in 0..50 {
            let tag = UserTag::for_user(&tenant, &format!("u{i}"));
            let key = SessionId::generate(tag).key();
            store
                .create(&tenant, &key, new_session(&format!("u{i}"), 20), 10)
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
        assert_eq!(state.budget.used(), 0, "everything charged was given back");
    }

    #[tokio::test]
    async fn a_create_never_evicts_the_session_it_creates() {
        let backend = backend(Duration::from_secs(60), 1 << 20);
        let store = MemorySessionStore::new(&backend);
        let tenant = Tenant::default_tenant();
        let tag = UserTag::for_user(&tenant, "u");
        // Creates a few microseconds apart: most share their millisecond with the one before.
        for i in 0..200 {
            let key = SessionId::generate(tag).key();
            store
                .create(&tenant, &key, new_session("u", 600_000), 1)
                .await
                .expect("create");
            let got = store.get(&tenant, &key, false).await.expect("get");
            assert!(got.is_some(), "create {i} evicted the session it created");
        }
    }

    #[tokio::test]
    async fn sessions_are_refused_once_the_budget_is_spent_and_fit_again_after_deletes() {
        let store = MemorySessionStore::new(&backend(Duration::from_secs(60), 4096));
        let tenant = Tenant::default_tenant();
        let mut created = Vec::new();
        let full = loop {
            let tag = UserTag::for_user(&tenant, &format!("u{}", created.len()));
            let key = SessionId::generate(tag).key();
            match store
                .create(&tenant, &key, new_session("u", 60_000), 10)
                .await
            {
                Ok(_) => created.push(key),
                Err(e) => break e,
            }
            assert!(created.len() < 100, "the budget never filled");
        };
        assert!(matches!(full, StoreError::Full(_)), "{full:?}");
        assert!(!created.is_empty());
        assert!(
            store
                .delete(&tenant, &created[0])
                .await
                .expect("delete")
                .is_some()
        );
        let tag = UserTag::for_user(&tenant, "again");
        let key = SessionId::generate(tag).key();
        store
            .create(&tenant, &key, new_session("again", 60_000), 10)
            .await
            .expect("room again after a delete");
    }

    #[tokio::test]
    async fn a_tenant_at_its_session_cap_is_refused_and_others_are_not() {
        let quotas = QuotaConfig {
            memory_sessions: 3,
            ..QuotaConfig::default()
        };
        let store =
            MemorySessionStore::new(&backend(Duration::from_secs(60), 1 << 20).with_quotas(quotas));
        let (a, b) = (
            Tenant::new("a").expect("tenant"),
            Tenant::new("b").expect("tenant"),
        );
        async fn create(
            store: &MemorySessionStore,
            tenant: &Tenant,
            user: &str,
        ) -> (SessionKey, Result<(SessionRecord, u32), StoreError>) {
            let key = SessionId::generate(UserTag::for_user(tenant, user)).key();
            let created = store
                .create(tenant, &key, new_session(user, 60_000), 2)
                .await;
            (key, created)
        }
        let mut kept = Vec::new();
        for user in ["u1", "u2", "u3"] {
            let (key, created) = create(&store, &a, user).await;
            created.expect("within the cap");
            kept.push(key);
        }
        let (_, over) = create(&store, &a, "u4").await;
        assert!(matches!(over, Err(StoreError::Full(_))));
        // A user at max_per_user (2) replaces their oldest: the tenant's count does not grow.
        let (_, at_cap) = create(&store, &a, "u1").await;
        assert!(
            matches!(at_cap, Err(StoreError::Full(_))),
            "u1 holds 1 of 2: it would grow"
        );
        let (_, other) = create(&store, &b, "u1").await;
        other.expect("another tenant is not affected");
        assert!(store.delete(&a, &kept[1]).await.expect("delete").is_some());
        let (_, room) = create(&store, &a, "u1").await;
        room.expect("room again after a delete");
        let (_, replacing) = create(&store, &a, "u1").await;
        replacing.expect("u1 at max_per_user replaces its oldest: allowed at the cap");
    }
}
