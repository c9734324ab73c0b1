//! The memory queue store: the same semantics as `lua/` in one critical section per operation,
//! on the memory backend's clock, with in-process signals for waiting workers.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    model::{
        DeadJob, DeadPolicy, Enqueued, Failed, Failure, Fetched, Leased, NewJob, PRIORITIES,
        QueueStats, backoff_ms,
    },
    store::QueueStore,
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

/// Bytes charged per job beyond its payload, unique key and error.
const JOB_OVERHEAD: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    /// Ready, at this place in its priority's line.
    Ready(u64),
    /// Leased until then.
    Leased(Millis),
    /// Due then.
    Scheduled(Millis),
    /// Died then.
    Dead(Millis),
}

struct Job {
    payload: Bytes,
    attempts: u32,
    max_attempts: u32,
    timeout_ms: u64,
    backoff_ms: u64,
    max_backoff_ms: u64,
    priority: u8,
    enqueued_at: Millis,
    due: Millis,
    holder: String,
    unique: String,
    error: String,
    at: Where,
    charged: usize,
}

#[derive(Default)]
struct Queue {
    jobs: HashMap<String, Job>,
    ready: [BTreeSet<(u64, String)>; PRIORITIES as usize],
    scheduled: BTreeSet<(Millis, String)>,
    leases: BTreeSet<(Millis, String)>,
    dead: BTreeSet<(Millis, String)>,
    unique: HashMap<String, String>,
    paused: bool,
    seq: u64,
    /// When a queue holding only dead jobs is forgotten (as its keys expire in Redis).
    expires_at: Option<Millis>,
}

struct State {
    queues: HashMap<String, Queue>,
    budget: Budget,
}

impl State {
    fn sweep(&mut self, now: Millis) -> usize {
        let budget = self.budget.clone();
        let before = self.queues.len();
        for q in self.queues.values_mut() {
            if q.expired(now) {
                q.clear(&budget);
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        before - self.queues.len()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let charged: usize = self
            .queues
            .values()
            .flat_map(|q| q.jobs.values().map(|j| j.charged))
            .sum();
        self.budget.release(charged);
    }
}

impl Queue {
    /// Takes the job out of whichever set holds it.
    fn detach(&mut self, id: &str) {
        let Some(j) = self.jobs.get(id) else { return };
        let key = id.to_owned();
        match j.at {
            Where::Ready(seq) => {
                self.ready[usize::from(j.priority)].remove(&(seq, key));
            }
            Where::Leased(until) => {
                self.leases.remove(&(until, key));
            }
            Where::Scheduled(due) => {
                self.scheduled.remove(&(due, key));
            }
            Where::Dead(at) => {
                self.dead.remove(&(at, key));
            }
        }
    }

    fn place(&mut self, id: &str, at: Where) {
        self.detach(id);
        let Some(j) = self.jobs.get_mut(id) else {
            return;
        };
        j.at = at;
        let key = id.to_owned();
        match at {
            Where::Ready(seq) => {
                self.ready[usize::from(j.priority)].insert((seq, key));
            }
            Where::Leased(until) => {
                self.leases.insert((until, key));
            }
            Where::Scheduled(due) => {
                self.scheduled.insert((due, key));
            }
            Where::Dead(at) => {
                self.dead.insert((at, key));
            }
        }
    }

    fn make_ready(&mut self, id: &str, due: Millis) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(j) = self.jobs.get_mut(id) {
            j.holder.clear();
            j.due = due;
        }
        self.place(id, Where::Ready(seq));
    }

    fn release_unique(&mut self, id: &str) {
        let Some(u) = self.jobs.get(id).map(|j| j.unique.clone()) else {
            return;
        };
        if !u.is_empty() && self.unique.get(&u).is_some_and(|o| o == id) {
            self.unique.remove(&u);
        }
    }

    fn forget(&mut self, id: &str, budget: &Budget) {
        self.detach(id);
        self.release_unique(id);
        if let Some(j) = self.jobs.remove(id) {
            budget.release(j.charged);
        }
    }

    fn bury(&mut self, id: &str, error: &str, now: Millis, dead: DeadPolicy, budget: &Budget) {
        self.release_unique(id);
        if let Some(j) = self.jobs.get_mut(id) {
            j.holder.clear();
            set_error(j, error, budget);
        }
        self.place(id, Where::Dead(now));
        self.prune_dead(now, dead, budget);
        self.expire_if_only_dead(dead);
    }

    /// Only dead jobs left: the queue goes when the newest of them would be pruned by age
    /// (expire_if_only_dead in lua/common.lua).
    fn expire_if_only_dead(&mut self, dead: DeadPolicy) {
        self.expires_at = match self.dead.last() {
            Some((newest, _)) if self.jobs.len() == self.dead.len() => {
                Some(newest.saturating_add(i64::try_from(dead.max_age_ms).unwrap_or(i64::MAX)))
            }
            _ => None,
        };
    }

    /// Whether it holds only dead jobs past their retention.
    fn expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Forgets every job (an expired queue), keeping the paused flag (a key of its own, with
    /// no TTL, in Redis).
    fn clear(&mut self, budget: &Budget) {
        let paused = self.paused;
        budget.release(self.jobs.values().map(|j| j.charged).sum());
        *self = Queue {
            paused,
            ..Queue::default()
        };
    }

    /// Dead jobs past their age or beyond their count are deleted.
    fn prune_dead(&mut self, now: Millis, dead: DeadPolicy, budget: &Budget) {
        let oldest = now.saturating_sub(i64::try_from(dead.max_age_ms).unwrap_or(i64::MAX));
        while let Some((at, id)) = self.dead.first().cloned() {
            if at > oldest && self.dead.len() as u64 <= dead.max_count {
                break;
            }
            self.forget(&id, budget);
        }
    }

    fn held(&self, id: &str, holder: &str) -> bool {
        self.jobs
            .get(id)
            .is_some_and(|j| !j.holder.is_empty() && j.holder == holder)
    }

    fn ready_count(&self) -> u64 {
        self.ready.iter().map(|r| r.len() as u64).sum()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && !self.paused
    }
}

fn set_error(j: &mut Job, error: &str, budget: &Budget) {
    // Grows or shrinks the charge with the error; never refused (the job is already counted).
    if error.len() > j.error.len() {
        let more = error.len() - j.error.len();
        if budget.charge(more).is_ok() {
            j.charged += more;
        }
    } else {
        let less = (j.error.len() - error.len()).min(j.charged);
        budget.release(less);
        j.charged -= less;
    }
    error.clone_into(&mut j.error);
}

/// Queues in process memory.
pub struct MemoryQueueStore {
    state: Arc<Mutex<State>>,
    clock: Clock,
    keys: Keys,
    signals: LocalSignals,
    budget: Budget,
}

impl MemoryQueueStore {
    /// A store on `backend`'s clock, budget and signals.
    pub fn new(backend: &MemoryBackend) -> Self {
        let state = Arc::new(Mutex::new(State {
            queues: HashMap::new(),
            budget: backend.budget().clone(),
        }));
        backend.spawn_sweeper("queues", Arc::downgrade(&state), State::sweep);
        Self {
            state,
            clock: backend.clock().clone(),
            keys: backend.keys().clone(),
            signals: backend.signals().clone(),
            budget: backend.budget().clone(),
        }
    }

    fn name(&self, tenant: &Tenant, queue: &str) -> String {
        let [_, channel, ..] = self.keys.queue(tenant, queue);
        channel
    }

    /// Runs `f` on the queue (created empty if absent; dropped again if left empty).
    fn with<T>(&self, tenant: &Tenant, queue: &str, f: impl FnOnce(&mut Queue, Millis) -> T) -> T {
        let name = self.name(tenant, queue);
        let now = self.clock.now();
        let mut state = self.state.lock();
        let q = state.queues.entry(name.clone()).or_default();
        if q.expired(now) {
            q.clear(&self.budget);
        }
        let out = f(q, now);
        if q.is_empty() {
            state.queues.remove(&name);
        }
        out
    }
}

#[tonic::async_trait]
impl QueueStore for MemoryQueueStore {
    async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        jobs: &[NewJob],
        max_jobs: u64,
    ) -> Result<Option<Vec<Enqueued>>, StoreError> {
        let budget = self.budget.clone();
        let out = self.with(tenant, queue, |q, now| {
            let mut batch: HashMap<&str, &str> = HashMap::new();
            let mut existing: Vec<Option<String>> = Vec::with_capacity(jobs.len());
            let mut fresh = 0u64;
            let mut cost = 0usize;
            for j in jobs {
                let known = (!j.unique_key.is_empty())
                    .then(|| {
                        batch
                            .get(j.unique_key.as_str())
                            .map(|s| (*s).to_owned())
                            .or_else(|| {
                                q.unique
                                    .get(&j.unique_key)
                                    .filter(|id| q.jobs.contains_key(*id))
                                    .cloned()
                            })
                    })
                    .flatten();
                if known.is_none() {
                    fresh += 1;
                    cost += JOB_OVERHEAD + j.payload.len() + j.unique_key.len() + j.id.len();
                    if !j.unique_key.is_empty() {
                        batch.insert(&j.unique_key, &j.id);
                    }
                }
                existing.push(known);
            }
            if fresh > 0 && q.jobs.len() as u64 + fresh > max_jobs {
                return Ok(None);
            }
            budget.charge(cost)?;
            if fresh > 0 {
                q.expires_at = None;
            }
            let mut out = Vec::with_capacity(jobs.len());
            for (j, known) in jobs.iter().zip(existing) {
                if let Some(id) = known {
                    let due = q.jobs.get(&id).map_or(now, |e| e.due);
                    out.push(Enqueued {
                        id,
                        duplicate: true,
                        run_at: due,
                    });
                    continue;
                }
                let due = match (j.delay_ms, j.run_at) {
                    (Some(d), _) => now.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
                    (None, Some(at)) => at.max(now),
                    (None, None) => now,
                };
                q.jobs.insert(
                    j.id.clone(),
                    Job {
                        payload: j.payload.clone(),
                        attempts: 0,
                        max_attempts: j.max_attempts,
                        timeout_ms: j.timeout_ms,
                        backoff_ms: j.backoff_ms,
                        max_backoff_ms: j.max_backoff_ms,
                        priority: j.priority.min(PRIORITIES - 1),
                        enqueued_at: now,
                        due,
                        holder: String::new(),
                        unique: j.unique_key.clone(),
                        error: String::new(),
                        at: Where::Scheduled(due),
                        charged: JOB_OVERHEAD + j.payload.len() + j.unique_key.len() + j.id.len(),
                    },
                );
                if due <= now {
                    q.make_ready(&j.id, due);
                } else {
                    q.place(&j.id, Where::Scheduled(due));
                }
                if !j.unique_key.is_empty() {
                    q.unique.insert(j.unique_key.clone(), j.id.clone());
                }
                out.push(Enqueued {
                    id: j.id.clone(),
                    duplicate: false,
                    run_at: due,
                });
            }
            Ok(Some((out, fresh > 0)))
        })?;
        Ok(out.map(|(out, woke)| {
            if woke {
                self.signals.fire(&self.name(tenant, queue));
            }
            out
        }))
    }

    async fn fetch(
        &self,
        tenant: &Tenant,
        queue: &str,
        holders: &[String],
        dead: DeadPolicy,
    ) -> Result<Fetched, StoreError> {
        let budget = self.budget.clone();
        let (fetched, moved) = self.with(tenant, queue, |q, now| {
            let mut moved = 0u64;
            let due: Vec<(Millis, String)> = q
                .scheduled
                .iter()
                .take_while(|(at, _)| *at <= now)
                .take(1000)
                .cloned()
                .collect();
            for (at, id) in due {
                q.make_ready(&id, at);
                moved += 1;
            }
            let expired: Vec<String> = q
                .leases
                .iter()
                .take_while(|(at, _)| *at <= now)
                .take(1000)
                .map(|(_, id)| id.clone())
                .collect();
            for id in expired {
                let Some(j) = q.jobs.get_mut(&id) else {
                    continue;
                };
                let err = format!("lease expired: not acknowledged within {} ms", j.timeout_ms);
                if j.attempts >= j.max_attempts {
                    q.bury(&id, &err, now, dead, &budget);
                } else {
                    set_error(j, &err, &budget);
                    q.make_ready(&id, now);
                    moved += 1;
                }
            }
            q.prune_dead(now, dead, &budget);
            let mut out = Fetched {
                paused: q.paused,
                ..Fetched::default()
            };
            if !q.paused {
                let mut holders = holders.iter();
                'lines: for p in 0..usize::from(PRIORITIES) {
                    while let Some((seq, id)) = q.ready[p].first().cloned() {
                        let Some(holder) = holders.next() else {
                            break 'lines;
                        };
                        q.ready[p].remove(&(seq, id.clone()));
                        let Some(j) = q.jobs.get_mut(&id) else {
                            continue;
                        };
                        j.attempts += 1;
                        holder.clone_into(&mut j.holder);
                        let until =
                            now.saturating_add(i64::try_from(j.timeout_ms).unwrap_or(i64::MAX));
                        out.jobs.push(Leased {
                            id: id.clone(),
                            payload: j.payload.clone(),
                            attempt: j.attempts,
                            max_attempts: j.max_attempts,
                            enqueued_at: j.enqueued_at,
                            lease_expires_at: until,
                            last_error: j.error.clone(),
                            priority: j.priority,
                            waited_ms: u64::try_from(now - j.due).unwrap_or(0),
                            timeout_ms: j.timeout_ms,
                        });
                        // Already out of its ready line: place() finds nothing to detach there.
                        j.at = Where::Leased(until);
                        q.leases.insert((until, id));
                    }
                }
            }
            out.ready_left = q.ready_count();
            out.next_due_ms = [q.scheduled.first(), q.leases.first()]
                .into_iter()
                .flatten()
                .map(|(at, _)| u64::try_from(at - now).unwrap_or(0).max(1))
                .min();
            (out, moved)
        });
        if moved > 0 && fetched.ready_left > 0 {
            self.signals.fire(&self.name(tenant, queue));
        }
        Ok(fetched)
    }

    async fn ack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        dead: DeadPolicy,
    ) -> Result<bool, StoreError> {
        Ok(self.with(tenant, queue, |q, _| {
            if !q.held(id, holder) {
                return false;
            }
            q.forget(id, &self.budget);
            q.expire_if_only_dead(dead);
            true
        }))
    }

    async fn fail(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        failure: Failure<'_>,
        dead: DeadPolicy,
    ) -> Result<Option<Failed>, StoreError> {
        let Failure {
            error,
            retry_after_ms,
            jitter,
        } = failure;
        let out = self.with(tenant, queue, |q, now| {
            if !q.held(id, holder) {
                return None;
            }
            let j = q.jobs.get_mut(id)?;
            if j.attempts >= j.max_attempts {
                q.bury(id, error, now, dead, &self.budget);
                return Some(Failed::Dead);
            }
            let delay = retry_after_ms
                .unwrap_or_else(|| backoff_ms(j.backoff_ms, j.max_backoff_ms, j.attempts, jitter));
            let at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            j.holder.clear();
            j.due = at;
            set_error(j, error, &self.budget);
            q.place(id, Where::Scheduled(at));
            Some(Failed::Retry { at })
        });
        // Only a retry changes what waiting workers should wake for (as fail.lua publishes).
        if matches!(out, Some(Failed::Retry { .. })) {
            self.signals.fire(&self.name(tenant, queue));
        }
        Ok(out)
    }

    async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
        timeout_ms: Option<u64>,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            if !q.held(id, holder) {
                return None;
            }
            let t = timeout_ms.or_else(|| q.jobs.get(id).map(|j| j.timeout_ms))?;
            let until = now.saturating_add(i64::try_from(t).unwrap_or(i64::MAX));
            q.place(id, Where::Leased(until));
            Some(until)
        }))
    }

    async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let done = self.with(tenant, queue, |q, now| {
            if !q.held(id, holder) {
                return false;
            }
            if let Some(j) = q.jobs.get_mut(id) {
                j.attempts = j.attempts.saturating_sub(1);
            }
            q.make_ready(id, now);
            true
        });
        if done {
            self.signals.fire(&self.name(tenant, queue));
        }
        Ok(done)
    }

    async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        limit: u32,
    ) -> Result<Vec<DeadJob>, StoreError> {
        Ok(self.with(tenant, queue, |q, _| {
            q.dead
                .iter()
                .rev()
                .take(limit as usize)
                .filter_map(|(at, id)| {
                    let j = q.jobs.get(id)?;
                    Some(DeadJob {
                        id: id.clone(),
                        payload: j.payload.clone(),
                        attempts: j.attempts,
                        last_error: j.error.clone(),
                        died_at: *at,
                        enqueued_at: j.enqueued_at,
                    })
                })
                .collect()
        }))
    }

    async fn retry_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: Option<&[String]>,
        limit: u32,
    ) -> Result<u32, StoreError> {
        let n = self.with(tenant, queue, |q, now| {
            let ids = dead_ids(q, ids, limit);
            let mut n = 0;
            for id in ids {
                let Some(j) = q.jobs.get_mut(&id) else {
                    continue;
                };
                j.attempts = 0;
                if !j.unique.is_empty() {
                    let u = j.unique.clone();
                    let taken = q
                        .unique
                        .get(&u)
                        .is_some_and(|o| *o != id && q.jobs.contains_key(o));
                    if taken {
                        if let Some(j) = q.jobs.get_mut(&id) {
                            j.unique.clear();
                        }
                    } else {
                        q.unique.insert(u, id.clone());
                    }
                }
                q.make_ready(&id, now);
                n += 1;
            }
            if n > 0 {
                q.expires_at = None;
            }
            n
        });
        if n > 0 {
            self.signals.fire(&self.name(tenant, queue));
        }
        Ok(n)
    }

    async fn discard_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: Option<&[String]>,
        limit: u32,
    ) -> Result<u32, StoreError> {
        Ok(self.with(tenant, queue, |q, _| {
            let ids = dead_ids(q, ids, limit);
            for id in &ids {
                q.forget(id, &self.budget);
            }
            u32::try_from(ids.len()).unwrap_or(u32::MAX)
        }))
    }

    async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<QueueStats, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            let due = q.scheduled.iter().take_while(|(at, _)| *at <= now);
            let due_count = due.clone().count() as u64;
            let oldest = q
                .ready
                .iter()
                .filter_map(|r| r.first())
                .filter_map(|(_, id)| q.jobs.get(id).map(|j| j.due))
                .chain(due.map(|(at, _)| *at).take(1))
                .min();
            QueueStats {
                ready: q.ready_count() + due_count,
                scheduled: q.scheduled.len() as u64 - due_count,
                in_flight: q.leases.len() as u64,
                dead: q.dead.len() as u64,
                oldest_ready_ms: oldest.map_or(0, |at| u64::try_from(now - at).unwrap_or(0)),
                paused: q.paused,
            }
        }))
    }

    async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), StoreError> {
        self.with(tenant, queue, |q, _| q.paused = paused);
        if !paused {
            self.signals.fire(&self.name(tenant, queue));
        }
        Ok(())
    }

    async fn signal(&self, tenant: &Tenant, queue: &str) -> Signal {
        self.signals.subscribe(&self.name(tenant, queue))
    }
}

/// The dead jobs named (those of `ids` that are dead), or the oldest `limit` of them.
fn dead_ids(q: &Queue, ids: Option<&[String]>, limit: u32) -> Vec<String> {
    match ids {
        Some(ids) => {
            // Each id once, as the script (which checks and removes as it goes) counts them.
            let mut seen = std::collections::HashSet::new();
            ids.iter()
                .filter(|id| {
                    q.jobs
                        .get(*id)
                        .is_some_and(|j| matches!(j.at, Where::Dead(_)))
                })
                .filter(|id| seen.insert((*id).clone()))
                .cloned()
                .collect()
        }
        None => q
            .dead
            .iter()
            .take(limit as usize)
            .map(|(_, id)| id.clone())
            .collect(),
    }
}
