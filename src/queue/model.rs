//! Queue types shared by the service and the stores.

use bytes::Bytes;

use crate::time::Millis;

/// Priorities, highest first: the index of the ready stream.
pub const PRIORITIES: u8 = 3;

/// A job to add, validated, with every option resolved.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id (random, from the service).
    pub id: String,
    /// The payload.
    pub payload: Bytes,
    /// Ready this long after the enqueue (store clock); `None` with `run_at` or at once.
    pub delay_ms: Option<u64>,
    /// Ready at this Unix ms; a past time means at once.
    pub run_at: Option<Millis>,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// A lease's length.
    pub timeout_ms: u64,
    /// The first retry's delay (doubling per retry).
    pub backoff_ms: u64,
    /// The longest retry delay.
    pub max_backoff_ms: u64,
    /// 0 high, 1 normal, 2 low.
    pub priority: u8,
    /// At most one live job per key ('' for none).
    pub unique_key: String,
}

/// What an enqueue did with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id (the existing job's for a duplicate).
    pub id: String,
    /// Whether an existing job had the same unique key.
    pub duplicate: bool,
    /// When it is (or was) due, Unix ms (store clock).
    pub run_at: Millis,
}

/// An attempt that failed, as a worker reported it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// What went wrong, kept with the job (and with it when it is dead).
    pub error: &'a str,
    /// The worker's own retry delay; `None`: the job's backoff.
    pub retry_after_ms: Option<u64>,
    /// In [0, 1): where in the backoff's upper half the retry lands (drawn by the caller, so
    /// both stores compute the same delay from it).
    pub jitter: f64,
}

/// How long dead jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadPolicy {
    /// Dead jobs older than this are deleted.
    pub max_age_ms: u64,
    /// Beyond this many dead jobs the oldest are deleted.
    pub max_count: u64,
}

/// A leased job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// Its id.
    pub id: String,
    /// Its payload.
    pub payload: Bytes,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// When it was enqueued, Unix ms.
    pub enqueued_at: Millis,
    /// When the lease runs out, Unix ms.
    pub lease_expires_at: Millis,
    /// The previous attempt's error ('' if none).
    pub last_error: String,
    /// 0 high, 1 normal, 2 low.
    pub priority: u8,
    /// From when it was due to this lease, ms.
    pub waited_ms: u64,
    /// The lease's length (the job's timeout), ms.
    pub timeout_ms: u64,
}

/// What one fetch from one queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// The jobs leased (at most one per holder id given).
    pub jobs: Vec<Leased>,
    /// Whether the queue is paused (then `jobs` is empty).
    pub paused: bool,
    /// In how many ms the next scheduled job falls due or the next lease runs out (whichever
    /// is first), if any: when a waiting fetch should look again unless woken sooner.
    pub next_due_ms: Option<u64>,
    /// Ready jobs left after this fetch.
    pub ready_left: u64,
}

/// What a failed attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// It runs again at this Unix ms.
    Retry {
        /// When, store clock.
        at: Millis,
    },
    /// That was its last attempt.
    Dead,
}

/// A dead job, as ListDead shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    /// Its id.
    pub id: String,
    /// Its payload.
    pub payload: Bytes,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
    /// When it died, Unix ms.
    pub died_at: Millis,
    /// When it was enqueued, Unix ms.
    pub enqueued_at: Millis,
}

/// A queue's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready now (due scheduled jobs included).
    pub ready: u64,
    /// Waiting for their time.
    pub scheduled: u64,
    /// Leased.
    pub in_flight: u64,
    /// Dead.
    pub dead: u64,
    /// How long the oldest ready job has been due, ms.
    pub oldest_ready_ms: u64,
    /// Whether fetches get nothing.
    pub paused: bool,
}

/// The backoff before retry number `attempt` (the attempt that just failed, from 1):
/// `backoff × 2^(attempt-1)`, capped at `max`, with "equal jitter": between half and all of it
/// (`jitter` in [0, 1)), so delays spread out yet still grow from one retry to the next.
pub fn backoff_ms(backoff: u64, max: u64, attempt: u32, jitter: f64) -> u64 {
    let exp = attempt.saturating_sub(1).min(40);
    let full = backoff.saturating_mul(1u64 << exp).min(max);
    let half = full / 2;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let spread = ((full - half) as f64 * jitter.clamp(0.0, 1.0)) as u64;
    half + spread
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jitters_within_half() {
        assert_eq!(backoff_ms(1000, 60_000, 1, 0.0), 500);
        assert_eq!(backoff_ms(1000, 60_000, 1, 0.999), 999);
        assert_eq!(backoff_ms(1000, 60_000, 2, 0.0), 1000);
        assert_eq!(backoff_ms(1000, 60_000, 3, 1.0), 4000);
        assert_eq!(backoff_ms(1000, 60_000, 30, 1.0), 60_000);
        assert_eq!(backoff_ms(1000, 60_000, 200, 0.0), 30_000);
        // The next retry's shortest delay is at least this one's longest.
        for a in 1..10 {
            assert!(backoff_ms(100, u64::MAX, a + 1, 0.0) >= backoff_ms(100, u64::MAX, a, 1.0));
        }
    }
}
