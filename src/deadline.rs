//! The deadline of the call being served, visible to the store layer.
//!
//! [`crate::middleware::DeadlineLayer`] runs each call inside [`scope`]; a store call that
//! retries a failing-over Redis reads [`remaining`] so it stops in time for the RPC to answer
//! (a fail-open rate limit must still be able to say "not enforced" before the caller gives up)
//! instead of being cut off by the deadline itself.

use std::{
    future::Future,
    time::{Duration, Instant},
};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the current call's deadline.
pub fn scope<F: Future>(deadline: Instant, fut: F) -> impl Future<Output = F::Output> {
    DEADLINE.scope(deadline, fut)
}

/// The current call's deadline; `None` outside a call. A task spawned for the call takes it
/// along with [`scope`].
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// How long a call that waits (lock Acquire, queue Fetch) may wait: `wait`, cut so the answer
/// still reaches the caller before its deadline (a grant or a lease answered after it would be
/// stranded until its TTL runs out).
pub fn bounded_wait(wait: Duration) -> Duration {
    match remaining() {
        Some(left) => wait.min(left.mul_f32(0.9).saturating_sub(Duration::from_millis(5))),
        None => wait,
    }
}

/// Time left until the current call's deadline; `None` outside a call (background tasks).
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.saturating_duration_since(Instant::now()))
        .ok()
}
