//! The embedded in-memory backend: zero set-up for laptops, demos and other teams' tests.
//!
//! State is process-local and lost on restart; the server says so with a WARN at start-up.
//! Each domain keeps its own state behind its own lock (one critical section per operation,
//! the atomicity the Redis store gets from Lua); this backend holds what they share: the key
//! scheme and the sweeper period.

use std::{
    sync::{Mutex, MutexGuard, Weak},
    time::Duration,
};

use super::keys::Keys;
use crate::time::now_ms;

/// Shared settings of the memory stores. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBackend {
    keys: Keys,
    sweep_interval: Duration,
}

impl MemoryBackend {
    /// A backend whose stores key their state under `key_prefix` and reclaim expired state
    /// every `sweep_interval`.
    pub fn new(key_prefix: &str, sweep_interval: Duration) -> Self {
        Self {
            keys: Keys::new(key_prefix),
            sweep_interval,
        }
    }

    /// The key scheme (the memory stores key their maps like Redis, so the two agree on what
    /// is distinct).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `sweep(state, now)` every sweep interval until `state` is dropped, so expired state
    /// is reclaimed even if nobody reads it. Must be called inside a Tokio runtime.
    pub fn spawn_sweeper<S: Send + 'static>(
        &self,
        what: &'static str,
        state: Weak<Mutex<S>>,
        sweep: fn(&mut S, i64) -> usize,
    ) {
        let every = self.sweep_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The store is gone: stop instead of leaking a task per dropped store.
                let Some(state) = state.upgrade() else { return };
                let swept = sweep(&mut lock(&state), now_ms());
                if swept > 0 {
                    tracing::debug!(swept, what, "reclaimed expired state");
                }
            }
        });
    }
}

/// Locks a memory store's state. A panic while holding the lock cannot leave the state in a
/// shape later calls cannot cope with (every operation re-checks liveness), so poisoning is
/// ignored.
pub fn lock<S>(state: &Mutex<S>) -> MutexGuard<'_, S> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
