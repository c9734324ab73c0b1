//! The embedded in-memory backend: zero set-up for laptops, demos and other teams' tests.
//!
//! State is process-local and lost on restart; the server says so with a WARN at start-up.
//! Each domain keeps its own state behind its own lock (one critical section per operation,
//! the atomicity the Redis store gets from Lua); this backend holds what they share: the clock,
//! the key scheme and the sweeper period. The locks are `parking_lot` mutexes: they have no
//! poisoning, so a panic in one call never needs an unwrap (or a poison to swallow) in the next,
//! and every operation re-checks liveness anyway.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use super::{StoreError, keys::Keys, signal::LocalSignals};
use crate::auth::config::QuotaConfig;
use crate::time::{Millis, now_ms};

/// The memory stores' clock, the one every expiry and window of this backend follows (as
/// Redis's `TIME` is for the Redis store): wall-clock milliseconds that never move backwards,
/// so a clock step on the host cannot shrink a window or refill a bucket twice.
#[derive(Clone)]
pub struct Clock {
    latest: Arc<AtomicI64>,
    offset: Arc<AtomicI64>,
    /// A reading set by a test (`NOT_SET` in the service).
    fixed: Arc<AtomicI64>,
}

const NOT_SET: i64 = i64::MIN;

impl Default for Clock {
    fn default() -> Self {
        Self {
            latest: Arc::default(),
            offset: Arc::default(),
            fixed: Arc::new(AtomicI64::new(NOT_SET)),
        }
    }
}

impl Clock {
    /// Now, in Unix milliseconds: the wall clock, or the latest reading if that was later.
    pub fn now(&self) -> Millis {
        let fixed = self.fixed.load(Ordering::Relaxed);
        if fixed != NOT_SET {
            return fixed;
        }
        let wall = now_ms().saturating_add(self.offset.load(Ordering::Relaxed));
        self.latest.fetch_max(wall, Ordering::AcqRel).max(wall)
    }

    /// Moves this clock `ms` ahead of the wall clock. For tests that need time to pass faster
    /// than it does; nothing in the service calls it.
    #[doc(hidden)]
    pub fn advance(&self, ms: Millis) {
        self.offset.fetch_add(ms, Ordering::Relaxed);
    }

    /// Makes every reading `at` (even an earlier one than before), so a test can replay a
    /// sequence of store times exactly; nothing in the service calls it.
    #[doc(hidden)]
    pub fn set(&self, at: Millis) {
        self.fixed.store(at, Ordering::Relaxed);
    }
}

/// The byte budget of the memory stores' state (sessions, indexes, counters): each store
/// charges what it keeps, estimated from the sizes of its keys and values plus a fixed overhead
/// per entry, and refuses new state once the budget is spent (the cache has its own budget and
/// evicts instead).
#[derive(Clone)]
pub struct Budget {
    used: Arc<AtomicI64>,
    max: i64,
}

impl Budget {
    /// A budget of `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            used: Arc::new(AtomicI64::new(0)),
            max: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        }
    }

    /// Takes `bytes` from the budget; `Full` (and nothing taken) when they do not fit.
    pub fn charge(&self, bytes: usize) -> Result<(), StoreError> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(bytes) > self.max {
                return Err(StoreError::Full("memory.max_bytes is spent"));
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The budget (`memory.max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        u64::try_from(self.max).unwrap_or(0)
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        u64::try_from(self.used.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// What a store that bounds itself outside the shared [`Budget`] holds now, in bytes (see
/// [`MemoryBackend::held`]).
type Tally = Box<dyn Fn() -> u64 + Send + Sync>;

/// Shared settings of the memory stores. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBackend {
    keys: Keys,
    sweep_interval: Duration,
    clock: Clock,
    budget: Budget,
    quotas: Arc<QuotaConfig>,
    signals: LocalSignals,
    tallies: Arc<parking_lot::Mutex<Vec<(&'static str, Tally)>>>,
}

impl MemoryBackend {
    /// A backend whose stores key their state under `key_prefix`, reclaim expired state
    /// every `sweep_interval`
    /// and keep at most `max_bytes` of state (the cache excepted).
    pub fn new(key_prefix: &str, sweep_interval: Duration, max_bytes: u64) -> Self {
        Self {
            keys: Keys::new(key_prefix),
            sweep_interval,
            clock: Clock::default(),
            budget: Budget::new(max_bytes),
            quotas: Arc::new(QuotaConfig::default()),
            signals: LocalSignals::default(),
            tallies: Arc::default(),
        }
    }

    /// The same backend, enforcing the per-tenant caps of `quotas` (`quota.memory_sessions`,
    /// `quota.memory_cache_bytes`).
    pub fn with_quotas(mut self, quotas: QuotaConfig) -> Self {
        self.quotas = Arc::new(quotas);
        self
    }

    /// The per-tenant quotas.
    pub fn quotas(&self) -> &QuotaConfig {
        &self.quotas
    }

    /// The budget sessions and counters are charged to.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// In-process signals (a lock released, an event published) for the stores' waiters.
    pub fn signals(&self) -> &LocalSignals {
        &self.signals
    }

    /// The clock every memory store of this backend decides by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The key scheme (the memory stores key their maps like Redis, so the two agree on what
    /// is distinct).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Registers a store that keeps its state outside the shared budget (the cache, which
    /// bounds itself by `cache.max_bytes`), so [`held`](Self::held) accounts for it too.
    pub fn tally(&self, what: &'static str, held: impl Fn() -> u64 + Send + Sync + 'static) {
        self.tallies.lock().push((what, Box::new(held)));
    }

    /// Everything this backend's stores hold, by what holds it, leaving out what holds nothing:
    /// the shared budget (`"state"`) and each [`tally`](Self::tally). Empty means no tenant
    /// state at all, the memory store's counterpart of "no keys left in Redis".
    pub fn held(&self) -> Vec<(&'static str, u64)> {
        let mut held = vec![("state", self.budget.used())];
        held.extend(self.tallies.lock().iter().map(|(what, f)| (*what, f())));
        held.retain(|(_, bytes)| *bytes > 0);
        held
    }

    /// Runs `sweep(state, now)` every sweep interval until `state` is dropped, so expired state
    /// is reclaimed even if nobody reads it. Must be called inside a Tokio runtime.
    pub fn spawn_sweeper<S: Send + 'static>(
        &self,
        what: &'static str,
        state: Weak<parking_lot::Mutex<S>>,
        sweep: fn(&mut S, Millis) -> usize,
    ) {
        let every = self.sweep_interval;
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The store is gone: stop instead of leaking a task per dropped store.
                let Some(state) = state.upgrade() else { return };
                let swept = sweep(&mut state.lock(), clock.now());
                if swept > 0 {
                    tracing::debug!(swept, what, "reclaimed expired state");
                }
            }
        });
    }
}

/// Keys by the time they expire, so a sweep visits only what is due.
#[derive(Default)]
pub struct ExpiryQueue(BTreeSet<(Millis, String)>);

impl ExpiryQueue {
    /// `key` expires at `at`.
    pub fn insert(&mut self, at: Millis, key: String) {
        self.0.insert((at, key));
    }

    /// Forgets that `key` expires at `at`.
    pub fn remove(&mut self, at: Millis, key: &str) {
        self.0.remove(&(at, key.to_owned()));
    }

    /// Moves `key`'s expiry from `from` to `to`.
    pub fn reschedule(&mut self, from: Millis, to: Millis, key: &str) {
        if from != to {
            self.remove(from, key);
            self.insert(to, key.to_owned());
        }
    }

    /// The keys due at `now` (expiring at or before it), soonest first.
    pub fn due(&self, now: Millis) -> Vec<String> {
        self.0
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Locks a memory store's state behind a `std` mutex. A panic while holding the lock cannot
/// leave the state in a shape later calls cannot cope with (every operation re-checks
/// liveness), so poisoning is ignored.
///
/// The stores of this backend lock `parking_lot` mutexes, which have no poisoning to ignore;
/// this stays for state still behind a `std` mutex (the memory cache store's).
pub fn lock<S>(state: &Mutex<S>) -> MutexGuard<'_, S> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_does_not_fit() {
        let budget = Budget::new(100);
        budget.charge(60).expect("fits");
        assert!(matches!(budget.charge(41), Err(StoreError::Full(_))));
        budget.charge(40).expect("exactly fits");
        budget.release(50);
        assert_eq!(budget.used(), 50);
    }

    #[test]
    fn the_clock_never_moves_backwards() {
        let clock = Clock::default();
        let a = clock.now();
        clock.advance(10_000);
        let b = clock.now();
        assert!(b >= a + 10_000);
        clock.advance(-20_000);
        assert!(clock.now() >= b, "a step back is not seen");
    }
}
