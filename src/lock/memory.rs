//! The memory lock store: the same semantics as `lua/` in one critical section per operation,
//! on the memory backend's clock, with in-process signals for waiters.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;

use super::{
    model::{AcquireArgs, Attempt, Grant, Holding, LockState},
    store::LockStore,
};
use crate::{
    store::{
        StoreError,
        memory::{Budget, Clock, MemoryBackend},
        signal::{LocalSignals, Signal},
    },
    tenant::Tenant,
    time::Millis,
};

/// Bytes charged per lock and per remembered fence (an estimate of the maps' overhead).
const ENTRY_BYTES: usize = 256;

#[derive(Default)]
struct Entry {
    /// holder id → holding.
    holders: HashMap<String, Holding>,
    /// (arrival µs, ticket) in arrival order.
    queue: BTreeMap<(i64, String), ()>,
    /// ticket → (arrival µs, place lapses at).
    tickets: HashMap<String, (i64, Millis)>,
    charged: usize,
}

struct State {
    locks: HashMap<String, Entry>,
    /// lock key → (last fence, forgotten at).
    fences: HashMap<String, (u64, Millis)>,
    /// The last microsecond reading handed out, so two grants in one ms still differ.
    last_us: i64,
    /// What the entries are charged to (given back as they go).
    budget: Budget,
}

impl State {
    fn sweep(&mut self, now: Millis) -> usize {
        let before = self.locks.len() + self.fences.len();
        let mut freed = 0;
        for entry in self.locks.values_mut() {
            entry.expire(now);
        }
        self.locks.retain(|_, e| {
            let keep = !(e.holders.is_empty() && e.queue.is_empty());
            if !keep {
                freed += e.charged;
            }
            keep
        });
        self.fences.retain(|_, (_, until)| {
            let keep = *until > now;
            if !keep {
                freed += ENTRY_BYTES;
            }
            keep
        });
        self.budget.release(freed);
        before - (self.locks.len() + self.fences.len())
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let charged: usize =
            self.locks.values().map(|e| e.charged).sum::<usize>() + self.fences.len() * ENTRY_BYTES;
        self.budget.release(charged);
    }
}

impl Entry {
    fn expire(&mut self, now: Millis) {
        self.holders.retain(|_, h| h.expires_at > now);
        let lapsed: Vec<String> = self
            .tickets
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for t in lapsed {
            if let Some((arrival, _)) = self.tickets.remove(&t) {
                self.queue.remove(&(arrival, t));
            }
        }
    }

    fn rank(&self, ticket: &str) -> Option<usize> {
        let (arrival, _) = self.tickets.get(ticket)?;
        Some(self.queue.range(..(*arrival, ticket.to_owned())).count())
    }

    fn remove_ticket(&mut self, ticket: &str) -> bool {
        match self.tickets.remove(ticket) {
            Some((arrival, _)) => {
                self.queue.remove(&(arrival, ticket.to_owned()));
                true
            }
            None => false,
        }
    }
}

/// Locks in process memory.
pub struct MemoryLockStore {
    state: Arc<Mutex<State>>,
    clock: Clock,
    keys: crate::store::keys::Keys,
    signals: LocalSignals,
    budget: Budget,
    max_waiters: u32,
    fence_retention_ms: i64,
}

impl MemoryLockStore {
    /// A store on `backend`'s clock, budget and signals; expired locks are swept.
    pub fn new(backend: &MemoryBackend) -> Self {
        Self::with_limits(backend, 1000, 30 * 24 * 3600 * 1000)
    }

    /// [`new`](Self::new) with `locks.max_waiters` and `locks.fence_retention` (ms).
    pub fn with_limits(backend: &MemoryBackend, max_waiters: u32, fence_retention_ms: u64) -> Self {
        let state = Arc::new(Mutex::new(State {
            locks: HashMap::new(),
            fences: HashMap::new(),
            last_us: 0,
            budget: backend.budget().clone(),
        }));
        backend.spawn_sweeper("locks", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            clock: backend.clock().clone(),
            keys: backend.keys().clone(),
            signals: backend.signals().clone(),
            budget: backend.budget().clone(),
            max_waiters,
            fence_retention_ms: i64::try_from(fence_retention_ms).unwrap_or(i64::MAX),
        }
    }

    fn key(&self, tenant: &Tenant, name: &str) -> String {
        let [holders, ..] = self.keys.lock(tenant, name);
        holders
    }
}

#[tonic::async_trait]
impl LockStore for MemoryLockStore {
    async fn acquire(
        &self,
        tenant: &Tenant,
        args: &AcquireArgs<'_>,
    ) -> Result<Attempt, StoreError> {
        let key = self.key(tenant, args.name);
        let now = self.clock.now();
        let ttl = i64::try_from(args.ttl_ms).unwrap_or(i64::MAX);
        let mut wake = false;
        let attempt = {
            let mut state = self.state.lock();
            // Microseconds from the millisecond clock, kept increasing within a millisecond.
            let now_us = (now.saturating_mul(1000)).max(state.last_us + 1);
            let state = &mut *state;
            if !state.locks.contains_key(&key) {
                self.budget.charge(ENTRY_BYTES)?;
                state.locks.insert(
                    key.clone(),
                    Entry {
                        charged: ENTRY_BYTES,
                        ..Entry::default()
                    },
                );
            }
            let Some(entry) = state.locks.get_mut(&key) else {
                return Err(StoreError::Protocol("lock entry vanished".into()));
            };
            entry.expire(now);
            if let Some(h) = entry.holders.get(args.holder_id) {
                return Ok(Attempt::Granted {
                    grant: Grant {
                        fence: h.fence,
                        expires_at: h.expires_at,
                    },
                    holders: u32::try_from(entry.holders.len()).unwrap_or(u32::MAX),
                });
            }
            let held = entry.holders.len();
            let free = (args.limit as usize).saturating_sub(held);
            let granted = free > 0
                && (entry.queue.is_empty()
                    || args
                        .ticket
                        .and_then(|t| entry.rank(t))
                        .is_some_and(|rank| rank < free));
            if granted {
                let last = state.fences.get(&key).map_or(0, |(f, _)| *f);
                let fence = (last + 1).max(u64::try_from(now_us).unwrap_or(0));
                state.last_us = now_us;
                if !state.fences.contains_key(&key) {
                    self.budget.charge(ENTRY_BYTES)?;
                }
                state.fences.insert(
                    key.clone(),
                    (fence, now.saturating_add(self.fence_retention_ms)),
                );
                let metadata = serde_json::from_str(args.metadata_json).unwrap_or_default();
                entry.holders.insert(
                    args.holder_id.to_owned(),
                    Holding {
                        holder_id: args.holder_id.to_owned(),
                        fence,
                        acquired_at: now,
                        expires_at: now.saturating_add(ttl),
                        metadata,
                    },
                );
                if let Some(t) = args.ticket
                    && entry.remove_ticket(t)
                    && free > 1
                    && !entry.queue.is_empty()
                {
                    wake = true;
                }
                Attempt::Granted {
                    grant: Grant {
                        fence,
                        expires_at: now.saturating_add(ttl),
                    },
                    holders: u32::try_from(held + 1).unwrap_or(u32::MAX),
                }
            } else {
                let lease = i64::try_from(args.ticket_ttl_ms).unwrap_or(i64::MAX);
                let mut queued = false;
                if let Some(t) = args.ticket {
                    let known = entry.tickets.get(t).map(|(a, _)| *a);
                    if known.is_some() || entry.queue.len() < self.max_waiters as usize {
                        let arrival = known.unwrap_or(now_us);
                        state.last_us = state.last_us.max(now_us);
                        entry.queue.insert((arrival, t.to_owned()), ());
                        entry
                            .tickets
                            .insert(t.to_owned(), (arrival, now.saturating_add(lease)));
                        queued = true;
                    }
                }
                let until = if free > 0 {
                    entry.tickets.values().map(|(_, u)| *u).min()
                } else {
                    entry.holders.values().map(|h| h.expires_at).min()
                };
                Attempt::Busy {
                    retry_after_ms: until.map_or(args.ticket_ttl_ms, |u| {
                        u64::try_from((u - now).max(1)).unwrap_or(1)
                    }),
                    holders: u32::try_from(held).unwrap_or(u32::MAX),
                    queued,
                }
            }
        };
        if wake {
            self.signals.fire(&key);
        }
        Ok(attempt)
    }

    async fn extend(
        &self,
        tenant: &Tenant,
        name: &str,
        holder_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<Grant>, StoreError> {
        let key = self.key(tenant, name);
        let now = self.clock.now();
        let mut state = self.state.lock();
        let Some(h) = state
            .locks
            .get_mut(&key)
            .and_then(|e| e.holders.get_mut(holder_id))
            .filter(|h| h.expires_at > now)
        else {
            return Ok(None);
        };
        h.expires_at = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        Ok(Some(Grant {
            fence: h.fence,
            expires_at: h.expires_at,
        }))
    }

    async fn release(
        &self,
        tenant: &Tenant,
        name: &str,
        holder_id: &str,
    ) -> Result<bool, StoreError> {
        let key = self.key(tenant, name);
        let now = self.clock.now();
        let released = {
            let mut state = self.state.lock();
            state
                .locks
                .get_mut(&key)
                .and_then(|e| e.holders.remove(holder_id))
                .is_some_and(|h| h.expires_at > now)
        };
        if released {
            self.signals.fire(&key);
        }
        Ok(released)
    }

    async fn inspect(&self, tenant: &Tenant, name: &str) -> Result<LockState, StoreError> {
        let key = self.key(tenant, name);
        let now = self.clock.now();
        let state = self.state.lock();
        let mut out = LockState {
            last_fence: state.fences.get(&key).map_or(0, |(f, _)| *f),
            ..LockState::default()
        };
        if let Some(e) = state.locks.get(&key) {
            out.holders = e
                .holders
                .values()
                .filter(|h| h.expires_at > now)
                .cloned()
                .collect();
            out.holders
                .sort_by(|a, b| (a.expires_at, &a.holder_id).cmp(&(b.expires_at, &b.holder_id)));
            out.waiters = u32::try_from(e.tickets.values().filter(|(_, u)| *u > now).count())
                .unwrap_or(u32::MAX);
        }
        Ok(out)
    }

    async fn leave(&self, tenant: &Tenant, name: &str, ticket: &str) -> Result<(), StoreError> {
        let key = self.key(tenant, name);
        let wake = {
            let mut state = self.state.lock();
            state
                .locks
                .get_mut(&key)
                .is_some_and(|e| e.remove_ticket(ticket) && !e.queue.is_empty())
        };
        if wake {
            self.signals.fire(&key);
        }
        Ok(())
    }

    async fn signal(&self, tenant: &Tenant, name: &str) -> Signal {
        self.signals.subscribe(&self.key(tenant, name))
    }
}
