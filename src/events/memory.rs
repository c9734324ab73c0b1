//! The memory event store: a bounded queue per topic with the same ids, trimming and gap rules
//! as the Redis Streams (one critical section per operation, the backend's clock).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    model::{Batch, EventId, Retention, StoredEvent},
    store::{EventStore, is_gap},
};
use crate::{
    store::{
        StoreError,
        keys::Keys,
        memory::{Budget, Clock, MemoryBackend},
        signal::{LocalSignals, Signal},
    },
    tenant::Tenant,
    time::Millis,
};

/// Bytes charged per event beyond its payload and key.
const EVENT_OVERHEAD: usize = 64;

struct Topic {
    events: VecDeque<(StoredEvent, usize)>,
    last: EventId,
    trimmed: EventId,
    forgotten_at: Millis,
}

struct State {
    topics: HashMap<String, Topic>,
    budget: Budget,
}

impl State {
    fn sweep(&mut self, now: Millis) -> usize {
        let before = self.topics.len();
        let mut freed = 0;
        self.topics.retain(|_, t| {
            let keep = t.forgotten_at > now;
            if !keep {
                freed += t.events.iter().map(|(_, c)| c).sum::<usize>();
            }
            keep
        });
        self.budget.release(freed);
        before - self.topics.len()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let charged: usize = self
            .topics
            .values()
            .flat_map(|t| t.events.iter().map(|(_, c)| *c))
            .sum();
        self.budget.release(charged);
    }
}

impl Topic {
    fn trim(&mut self, retention: Retention, now: Millis, budget: &Budget) {
        let oldest = u64::try_from(now)
            .unwrap_or(0)
            .saturating_sub(retention.max_age_ms);
        while let Some((front, charged)) = self.events.front() {
            let over = self.events.len() as u64 > retention.max_len;
            if !over && front.id.ms >= oldest {
                break;
            }
            self.trimmed = self.trimmed.max(front.id);
            budget.release(*charged);
            self.events.pop_front();
        }
    }
}

/// Topics in process memory.
pub struct MemoryEventStore {
    state: Arc<Mutex<State>>,
    clock: Clock,
    keys: Keys,
    signals: LocalSignals,
}

impl MemoryEventStore {
    /// A store on `backend`'s clock, budget and signals; forgotten topics are swept.
    pub fn new(backend: &MemoryBackend) -> Self {
        let state = Arc::new(Mutex::new(State {
            topics: HashMap::new(),
            budget: backend.budget().clone(),
        }));
        backend.spawn_sweeper("events", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            clock: backend.clock().clone(),
            keys: backend.keys().clone(),
            signals: backend.signals().clone(),
        }
    }
}

fn forget_at(now: Millis, retention: Retention) -> Millis {
    now.saturating_add(i64::try_from(retention.max_age_ms.saturating_mul(2)).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl EventStore for MemoryEventStore {
    async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        retention: Retention,
        payload: Bytes,
        key: &str,
    ) -> Result<EventId, StoreError> {
        let name = self.keys.topic(tenant, topic);
        let now = self.clock.now();
        let id = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let charged = payload.len() + key.len() + EVENT_OVERHEAD;
            state.budget.charge(charged)?;
            let ms = u64::try_from(now).unwrap_or(0);
            if state
                .topics
                .get(&name)
                .is_some_and(|t| t.forgotten_at <= now)
                && let Some(old) = state.topics.remove(&name)
            {
                state
                    .budget
                    .release(old.events.iter().map(|(_, c)| *c).sum());
            }
            let t = state.topics.entry(name.clone()).or_insert_with(|| Topic {
                events: VecDeque::new(),
                last: EventId::ZERO,
                // As on Redis: what came before a topic made anew is unknown.
                trimmed: EventId {
                    ms: ms.saturating_sub(1),
                    seq: 0,
                },
                forgotten_at: 0,
            });
            let id = if ms > t.last.ms {
                EventId { ms, seq: 0 }
            } else {
                EventId {
                    ms: t.last.ms,
                    seq: t.last.seq + 1,
                }
            };
            t.last = id;
            t.events.push_back((
                StoredEvent {
                    id,
                    payload,
                    key: key.to_owned(),
                },
                charged,
            ));
            t.trim(retention, now, &state.budget);
            t.forgotten_at = forget_at(now, retention);
            id
        };
        self.signals.fire(&name);
        Ok(id)
    }

    async fn read(
        &self,
        tenant: &Tenant,
        topic: &str,
        after: EventId,
        count: usize,
    ) -> Result<Batch, StoreError> {
        let name = self.keys.topic(tenant, topic);
        let now = self.clock.now();
        let state = self.state.lock();
        let Some(t) = state.topics.get(&name).filter(|t| t.forgotten_at > now) else {
            return Ok(Batch {
                gap: is_gap(after, None),
                ..Batch::default()
            });
        };
        let start = t.events.partition_point(|(e, _)| e.id <= after);
        Ok(Batch {
            events: t
                .events
                .iter()
                .skip(start)
                .take(count)
                .map(|(e, _)| e.clone())
                .collect(),
            gap: is_gap(after, Some(t.trimmed)),
            first: t.events.front().map(|(e, _)| e.id),
            last: t.last,
        })
    }

    async fn head(&self, tenant: &Tenant, topic: &str) -> Result<EventId, StoreError> {
        let name = self.keys.topic(tenant, topic);
        let now = self.clock.now();
        let state = self.state.lock();
        Ok(state
            .topics
            .get(&name)
            .filter(|t| t.forgotten_at > now)
            .map_or(EventId::ZERO, |t| t.last))
    }

    async fn touch(
        &self,
        tenant: &Tenant,
        topic: &str,
        retention: Retention,
    ) -> Result<(), StoreError> {
        let name = self.keys.topic(tenant, topic);
        let now = self.clock.now();
        let mut state = self.state.lock();
        let state = &mut *state;
        if let Some(t) = state.topics.get_mut(&name).filter(|t| t.forgotten_at > now) {
            t.trim(retention, now, &state.budget);
            t.forgotten_at = forget_at(now, retention);
        }
        Ok(())
    }

    async fn signal(&self, tenant: &Tenant, topic: &str) -> Signal {
        self.signals.subscribe(&self.keys.topic(tenant, topic))
    }
}
