//! Signals: "something changed under this name" from the store to the tasks of this replica
//! that wait on it (a lock's waiters, a topic's reader), so they are woken instead of polling.
//!
//! A signal carries no data: whoever is woken reads the store, which stays the one source of
//! truth. Signals coalesce (several fires before a wake-up are one) and may be lost while the
//! carrier is down (Redis Pub/Sub is at-most-once), so a [`Signal`] also says whether it is
//! *live*: a waiter whose signal is not live polls the store at a short interval instead, and
//! every signal fires once when its carrier comes back, since anything may have happened
//! meanwhile. On the memory store signals are in-process and always live.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use tokio::sync::watch;

/// A subscription to one named signal. Dropping it unsubscribes.
pub struct Signal {
    fired: watch::Receiver<u64>,
    live: watch::Receiver<bool>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl Signal {
    /// A signal from its parts: `fired` changes on every fire, `live` says whether fires are
    /// being delivered, and `guard` is dropped (unsubscribing) with the signal.
    pub fn new(
        fired: watch::Receiver<u64>,
        live: watch::Receiver<bool>,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            fired,
            live,
            _guard: guard,
        }
    }

    /// Completes when the signal fires (at once if it fired since the last call), or when its
    /// carrier goes down or comes back. Never completes if the carrier is gone for good, so
    /// callers always race it against a timer.
    pub async fn changed(&mut self) {
        tokio::select! {
            r = self.fired.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            r = self.live.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Whether fires are being delivered now. When not, the caller polls the store.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }
}

/// In-process signals for the memory store: fired by the stores' own writes, always live.
#[derive(Clone)]
pub struct LocalSignals {
    senders: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    live: Arc<watch::Sender<bool>>,
}

impl Default for LocalSignals {
    fn default() -> Self {
        Self {
            senders: Arc::default(),
            live: Arc::new(watch::channel(true).0),
        }
    }
}

/// Removes a local signal's sender once its last subscriber is gone.
struct LocalGuard {
    name: String,
    senders: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        let mut senders = self.senders.lock();
        // The signal's receiver is dropped before its guard (field order): none left means
        // it was the last subscriber.
        if senders
            .get(&self.name)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            senders.remove(&self.name);
        }
    }
}

impl LocalSignals {
    /// Subscribes to `name`.
    pub fn subscribe(&self, name: &str) -> Signal {
        let fired = {
            let mut senders = self.senders.lock();
            senders
                .entry(name.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        let guard = LocalGuard {
            name: name.to_owned(),
            senders: self.senders.clone(),
        };
        Signal::new(fired, self.live.subscribe(), Some(Box::new(guard)))
    }

    /// Fires `name` (nothing happens if nobody listens).
    pub fn fire(&self, name: &str) {
        let senders = self.senders.lock();
        if let Some(s) = senders.get(name) {
            s.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn local_signals_wake_subscribers_and_forget_names_nobody_listens_to() {
        let signals = LocalSignals::default();
        let mut a = signals.subscribe("x");
        let mut b = signals.subscribe("x");
        signals.fire("x");
        signals.fire("y");
        for s in [&mut a, &mut b] {
            tokio::time::timeout(Duration::from_secs(1), s.changed())
                .await
                .expect("woken");
            assert!(s.is_live());
        }
        drop(a);
        assert!(signals.senders.lock().contains_key("x"));
        drop(b);
        assert!(signals.senders.lock().is_empty());
    }
}
