//! The four rate-limit algorithms as pure functions of the stored state and `now`.
//!
//! `now` is the store's clock (Redis `TIME` in the script, the memory store's clock), never a
//! replica's. `lua/algorithm.lua` mirrors these functions line for line; the parity tests run
//! both on the same sequences. All math
//! is integer (milliseconds and scaled counts) so Rust and Lua agree exactly: Redis's Lua numbers
//! are doubles, exact below 2^53, and [`Policy::validate`] keeps every intermediate below 2^52.
//!
//! State is three integers whose meaning depends on the algorithm (`[0, 0, 0]` when absent):
//! - fixed window: `[window index, count, _]`
//! - sliding window: `[window index, current count, previous count]`
//! - token bucket: `[tokens × period_ms, last refill ms, 1 once written]`
//! - GCRA: `[TAT ms (floor), TAT remainder in 1/limit ms, latest now seen (≥ 1 once written)]`
//!
//! State never moves backwards: a store clock can step back (a failover to a replica whose
//! clock is behind), and a reading earlier than the state's own time is taken as that time, so
//! no window restarts and no bucket refills twice. Durations returned and TTLs count from the
//! store's actual reading, and counters are kept [`STEP_MARGIN_MS`] beyond their use, so steps
//! back of up to that much are covered even after a counter stopped mattering. (Older GCRA state holds `1` in its last
//! slot, which reads as "no time seen yet": compatible.)

use crate::time::Millis;

/// How much longer than it matters a counter is kept: state can only stay monotonic while it
/// exists, so a store clock that steps back by up to this much (a failover between Redis nodes
/// whose clocks differ) still finds it. Mirrored in `lua/algorithm.lua`.
pub const STEP_MARGIN_MS: i64 = 1000;

/// Largest `capacity × period_ms` a policy may have: keeps scaled math exact in Lua's doubles.
pub const MAX_SCALED: i64 = 1 << 52;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// `limit` per calendar-aligned window of `period`. Cheapest; allows up to 2× at a boundary.
    FixedWindow,
    /// Weighted two-window estimate: smooth, no boundary burst, two counters of state.
    SlidingWindow,
    /// Bucket of `burst` tokens (default `limit`) refilled at `limit` per `period`.
    TokenBucket,
    /// Generic cell rate algorithm: token-bucket behaviour with a single timestamp of state.
    Gcra,
}

impl Algorithm {
    /// Code used in store keys and scripts (changing a limit's algorithm starts fresh state).
    pub fn code(self) -> u8 {
        match self {
            Algorithm::FixedWindow => 1,
            Algorithm::SlidingWindow => 2,
            Algorithm::TokenBucket => 3,
            Algorithm::Gcra => 4,
        }
    }
}

/// What a limit does when the store is unreachable.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Allow, marking the result as not enforced.
    Open,
    /// Refuse the call with UNAVAILABLE.
    #[default]
    Closed,
}

/// A validated limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Counting method.
    pub algorithm: Algorithm,
    /// Requests (or cost units) per period.
    pub limit: u64,
    /// Period in milliseconds.
    pub period_ms: i64,
    /// Bucket size for token bucket and GCRA (0: `limit`); must be 0 for the window algorithms.
    pub burst: u64,
    /// Behaviour when the store fails.
    pub failure_mode: FailureMode,
}

/// Counter state (see the module docs).
pub type State = [i64; 3];

/// The outcome of one check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether this check alone would admit the request.
    pub allowed: bool,
    /// Remaining capacity after this request (if admitted) or now (if not).
    pub remaining: u64,
    /// Time until the counter is back to full capacity.
    pub reset_after_ms: i64,
    /// When denied: time until the same request would be admitted; 0 when allowed.
    pub retry_after_ms: i64,
}

/// What to write back when the request is admitted: the state and its time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    /// New state.
    pub state: State,
    /// Milliseconds the state must live (at least 1).
    pub ttl_ms: i64,
}

impl Policy {
    /// Requests the bucket holds at once (the most a single request may cost).
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket | Algorithm::Gcra if self.burst > 0 => self.burst,
            _ => self.limit,
        }
    }

    /// Checks the numbers; the error names the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.limit == 0 {
            return Err(("limit", "must be greater than zero".into()));
        }
        if self.period_ms <= 0 {
            return Err(("period", "must be at least 1 ms".into()));
        }
        if self.burst > 0
            && matches!(
                self.algorithm,
                Algorithm::FixedWindow | Algorithm::SlidingWindow
            )
        {
            return Err((
                "burst",
                "applies only to token_bucket and gcra; leave it 0".into(),
            ));
        }
        // A fixed window only counts (no product with the period), so any count below the
        // bound fits; the others scale counts by the period.
        let factor = match self.algorithm {
            Algorithm::FixedWindow => Some(1),
            _ => self.period_ms.checked_mul(2),
        };
        let scaled = i64::try_from(self.capacity().max(self.limit))
            .ok()
            .and_then(|c| factor.and_then(|f| c.checked_mul(f)));
        if scaled.is_none_or(|s| s >= MAX_SCALED) {
            return Err((
                "limit",
                "limit (or burst) × period in ms must stay below 2^51 (for a fixed window: the limit below 2^52)".into(),
            ));
        }
        Ok(())
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    // b > 0 everywhere this is used.
    (a + b - 1).div_euclid(b)
}

/// Decides one check. `state` is `None` when the counter does not exist. Returns the decision
/// and the state to write if the whole request is admitted (`cost` 0 writes nothing).
///
/// `policy` must have passed [`Policy::validate`] and `cost` must be at most its capacity;
/// then no intermediate exceeds [`MAX_SCALED`].
pub fn decide(policy: &Policy, state: Option<State>, now: Millis, cost: u64) -> (Decision, Update) {
    let s = state.unwrap_or([0, 0, 0]);
    // Monotonic time: never earlier than the time the state was written at (see module docs).
    let at = match policy.algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => {
            now.max(s[0].saturating_mul(policy.period_ms))
        }
        Algorithm::TokenBucket if s[2] == 1 => now.max(s[1]),
        Algorithm::TokenBucket => now,
        Algorithm::Gcra => now.max(s[2]),
    };
    let (mut decision, mut update) = decide_at(policy, s, at, cost);
    // The store counts durations from its own reading, `now`: what is due at `at` is that much
    // further away (so a counter written after a step back outlives its window, too).
    let shift = at - now;
    decision.reset_after_ms += shift;
    if decision.retry_after_ms > 0 {
        decision.retry_after_ms += shift;
    }
    update.ttl_ms += shift + STEP_MARGIN_MS;
    (decision, update)
}

/// [`decide`] at a time no earlier than the state's.
fn decide_at(policy: &Policy, s: State, now: Millis, cost: u64) -> (Decision, Update) {
    let p = policy.period_ms;
    let l = policy.limit as i64;
    let cost = cost as i64;
    match policy.algorithm {
        Algorithm::FixedWindow => {
            let w = now.div_euclid(p);
            let count = if s[0] == w { s[1] } else { 0 };
            let reset = (w + 1) * p - now;
            let allowed = count + cost <= l;
            let after = if allowed { count + cost } else { count };
            (
                Decision {
                    allowed,
                    remaining: (l - after).max(0) as u64,
                    reset_after_ms: reset,
                    retry_after_ms: if allowed { 0 } else { reset },
                },
                Update {
                    state: [w, after, 0],
                    ttl_ms: reset.max(1),
                },
            )
        }
        Algorithm::SlidingWindow => {
            let w = now.div_euclid(p);
            let e = now - w * p;
            let (prev, curr) = if s[0] == w {
                (s[2], s[1])
            } else if s[0] == w - 1 {
                (s[1], 0)
            } else {
                (0, 0)
            };
            // The estimate, scaled by p: prev × (p − e)/p + curr, times p.
            let estimate = prev * (p - e) + curr * p;
            let allowed = estimate + cost * p <= l * p;
            let after = if allowed {
                estimate + cost * p
            } else {
                estimate
            };
            let curr_after = if allowed { curr + cost } else { curr };
            let reset = if curr_after > 0 { 2 * p - e } else { p - e };
            let retry = if allowed {
                0
            } else {
                sliding_retry_after(prev, curr, cost, l, p, e)
            };
            (
                Decision {
                    allowed,
                    remaining: ((l * p - after) / p).max(0) as u64,
                    reset_after_ms: reset,
                    retry_after_ms: retry,
                },
                Update {
                    state: [w, curr_after, prev],
                    ttl_ms: (2 * p - e).max(1),
                },
            )
        }
        Algorithm::TokenBucket => {
            let full = policy.capacity() as i64 * p;
            let (tokens, last) = if s[2] == 1 { (s[0], s[1]) } else { (full, now) };
            // Cap the idle time before multiplying: the bucket is full after full/l ms anyway.
            let idle = (now - last).clamp(0, ceil_div(full, l));
            let tokens = (tokens + idle * l).min(full);
            let need = cost * p;
            let allowed = tokens >= need;
            let after = if allowed { tokens - need } else { tokens };
            let reset = ceil_div(full - after, l);
            (
                Decision {
                    allowed,
                    remaining: (after / p) as u64,
                    reset_after_ms: reset,
                    retry_after_ms: if allowed {
                        0
                    } else {
                        ceil_div(need - tokens, l)
                    },
                },
                Update {
                    state: [after, now, 1],
                    ttl_ms: reset.max(1),
                },
            )
        }
        Algorithm::Gcra => {
            let tolerance = policy.capacity() as i64 * p;
            // Distance from now to the theoretical arrival time, in units of 1/l ms.
            let ahead = if s[2] >= 1 {
                ((s[0] - now) * l + s[1]).max(0)
            } else {
                0
            };
            let next = ahead + cost * p;
            let allowed = next <= tolerance;
            let after = if allowed { next } else { ahead };
            let reset = ceil_div(after, l);
            (
                Decision {
                    allowed,
                    remaining: ((tolerance - after) / p).max(0) as u64,
                    reset_after_ms: reset,
                    retry_after_ms: if allowed {
                        0
                    } else {
                        ceil_div(next - tolerance, l)
                    },
                },
                Update {
                    state: [now + after.div_euclid(l), after.rem_euclid(l), now.max(1)],
                    ttl_ms: reset.max(1),
                },
            )
        }
    }
}

/// Sliding window: the shortest wait after which `cost` fits, given the counts now.
fn sliding_retry_after(prev: i64, curr: i64, cost: i64, l: i64, p: i64, e: i64) -> i64 {
    // Still in this window: prev × (p − e − t) + curr × p + cost × p ≤ l × p.
    let room = (l - curr - cost) * p;
    if room >= 0 && prev > 0 {
        let t = ceil_div(prev * (p - e) - room, prev).max(0);
        if t < p - e {
            return t;
        }
    }
    // In the next window, where this window's count becomes the previous one.
    let room = (l - cost) * p;
    let t = if curr > 0 {
        ceil_div(curr * p - room, curr).max(0)
    } else {
        0
    };
    (p - e) + t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(algorithm: Algorithm, limit: u64, period_ms: i64, burst: u64) -> Policy {
        Policy {
            algorithm,
            limit,
            period_ms,
            burst,
            failure_mode: FailureMode::Closed,
        }
    }

    /// Runs `n` checks of `cost` at `now` against evolving state; returns how many were allowed.
    fn admit(p: &Policy, state: &mut Option<State>, now: i64, cost: u64, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            let (d, u) = decide(p, *state, now, cost);
            if d.allowed {
                allowed += 1;
                *state = Some(u.state);
            }
        }
        allowed
    }

    #[test]
    fn fixed_window_counts_per_aligned_window() {
        let p = policy(Algorithm::FixedWindow, 3, 1000, 0);
        let mut s = None;
        assert_eq!(admit(&p, &mut s, 10_250, 1, 5), 3);
        let (d, _) = decide(&p, s, 10_999, 1);
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after_ms, d.reset_after_ms), (0, 1, 1));
        // The boundary: a new window starts from zero.
        assert_eq!(admit(&p, &mut s, 11_000, 1, 5), 3);
    }

    #[test]
    fn cost_greater_than_remaining_is_denied_without_consuming() {
        let p = policy(Algorithm::FixedWindow, 10, 1000, 0);
        let (d, u) = decide(&p, None, 0, 7);
        assert!(d.allowed && d.remaining == 3);
        let (d, _) = decide(&p, Some(u.state), 1, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 3, "a denial consumes nothing");
        let (d, _) = decide(&p, Some(u.state), 1, 3);
        assert!(d.allowed && d.remaining == 0);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let p = policy(Algorithm::SlidingWindow, 10, 1000, 0);
        let mut s = None;
        assert_eq!(admit(&p, &mut s, 500, 1, 20), 10);
        // Halfway through the next window, half of the previous 10 still count: 5 more fit.
        assert_eq!(admit(&p, &mut s, 1500, 1, 20), 5);
        // Two windows later everything has aged out.
        assert_eq!(admit(&p, &mut s, 3000, 1, 20), 10);
    }

    #[test]
    fn sliding_window_retry_after_is_exact() {
        let p = policy(Algorithm::SlidingWindow, 10, 1000, 0);
        let mut s = None;
        admit(&p, &mut s, 0, 1, 10);
        let (d, _) = decide(&p, s, 400, 1);
        assert!(!d.allowed);
        // Next window starts at 1000; at 1000 + t the estimate is 10 × (1000 − t)/1000, which
        // drops to 9 at t = 100.
        assert_eq!(d.retry_after_ms, 700);
        let (later, _) = decide(&p, s, 400 + d.retry_after_ms, 1);
        assert!(later.allowed, "admitted exactly at retry_after");
        let (earlier, _) = decide(&p, s, 400 + d.retry_after_ms - 1, 1);
        assert!(!earlier.allowed, "not a millisecond earlier");
    }

    #[test]
    fn token_bucket_allows_burst_then_refills_at_rate() {
        // 10 per second, bucket of 5.
        let p = policy(Algorithm::TokenBucket, 10, 1000, 5);
        let mut s = None;
        assert_eq!(admit(&p, &mut s, 0, 1, 20), 5);
        let (d, _) = decide(&p, s, 0, 1);
        assert_eq!(d.retry_after_ms, 100, "one token every 100 ms");
        assert_eq!(admit(&p, &mut s, 100, 1, 20), 1);
        assert_eq!(admit(&p, &mut s, 350, 1, 20), 2);
        // A long idle gap refills to the bucket size, no more.
        assert_eq!(admit(&p, &mut s, 10_000_000, 1, 20), 5);
    }

    #[test]
    fn gcra_matches_token_bucket_admissions() {
        let tb = policy(Algorithm::TokenBucket, 7, 1000, 3);
        let gcra = policy(Algorithm::Gcra, 7, 1000, 3);
        let (mut a, mut b) = (None, None);
        let mut now = 0;
        for step in 0..500 {
            now += (step * 37) % 211;
            let cost = 1 + (step as u64 % 2);
            let (x, ux) = decide(&tb, a, now, cost);
            let (y, uy) = decide(&gcra, b, now, cost);
            assert_eq!(x.allowed, y.allowed, "step {step} at {now}");
            if x.allowed {
                a = Some(ux.state);
                b = Some(uy.state);
            }
        }
    }

    #[test]
    fn gcra_retry_after_is_exact_and_idle_gaps_do_not_overflow() {
        let p = policy(Algorithm::Gcra, 3, 1000, 0);
        let mut s = None;
        assert_eq!(admit(&p, &mut s, 5_000, 1, 10), 3);
        let (d, _) = decide(&p, s, 5_000, 1);
        assert_eq!(d.retry_after_ms, 334, "ceil(1000 / 3)");
        assert!(decide(&p, s, 5_000 + 334, 1).0.allowed);
        assert!(!decide(&p, s, 5_000 + 333, 1).0.allowed);
        assert_eq!(admit(&p, &mut s, i64::MAX / 4, 1, 10), 3);
    }

    #[test]
    fn a_clock_stepping_back_restarts_no_window_and_refills_nothing() {
        for alg in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
            Algorithm::Gcra,
        ] {
            let p = policy(alg, 5, 1000, 0);
            let mut s = None;
            assert_eq!(admit(&p, &mut s, 10_500, 1, 10), 5, "{alg:?}");
            // The store's clock steps back two seconds: nothing more is admitted.
            assert_eq!(admit(&p, &mut s, 8_500, 1, 10), 0, "{alg:?}");
            assert_eq!(admit(&p, &mut s, 10_600, 1, 10), 0, "{alg:?}");
        }
    }

    #[test]
    fn peeks_with_cost_zero_report_without_consuming() {
        for alg in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
            Algorithm::Gcra,
        ] {
            let p = policy(alg, 5, 1000, 0);
            let (d, u) = decide(&p, None, 0, 2);
            let (peek, _) = decide(&p, Some(u.state), 0, 0);
            assert!(peek.allowed);
            assert_eq!(peek.remaining, d.remaining, "{alg:?}");
        }
    }

    #[test]
    fn validation_rejects_nonsense() {
        let ok = policy(Algorithm::Gcra, 100, 60_000, 10);
        assert!(ok.validate().is_ok());
        assert_eq!(
            policy(Algorithm::Gcra, 0, 1000, 0)
                .validate()
                .unwrap_err()
                .0,
            "limit"
        );
        assert_eq!(
            policy(Algorithm::Gcra, 1, 0, 0).validate().unwrap_err().0,
            "period"
        );
        assert_eq!(
            policy(Algorithm::FixedWindow, 1, 1000, 5)
                .validate()
                .unwrap_err()
                .0,
            "burst"
        );
        assert_eq!(
            policy(Algorithm::TokenBucket, u64::MAX / 2, 1000, 0)
                .validate()
                .unwrap_err()
                .0,
            "limit"
        );
    }
}
