//! A multi-slot Check on a Redis Cluster reserves in each slot and refunds when another slot
//! denies (`src/ratelimit/redis.rs`). The refund must never give back more than the
//! reservation still keeps out, whatever happened between the two: other callers, refills to
//! the top, a schedule drained to zero, windows moving on.
//!
//! proptest draws a policy and a story on a real Redis, replaying store times through a small
//! driver in place of `check.lua` (as `ratelimit_parity.rs` does): checks by others, our
//! reservation, more checks by others, our refund, then checks by others again. Two counters
//! live it: `with` (our reservation and refund happen) and `reference` (they never did: it only
//! reads the clock when the reservation (and a GCRA refund) do, and it admits exactly what `with` admitted
//! meanwhile). After the refund, `with` must never offer
//! more than `reference` (same or less remaining at every later time; exactly the same for the
//! window algorithms while the clock only moves forward, their refunds being exact), and over
//! the checks that follow it must never admit more in total.

use crate::common::RedisServer;
use flowstate::ratelimit::{Algorithm, FailureMode, Policy};
use proptest::{prelude::*, test_runner::TestRunner};

const DRIVER: &str = concat!(
    include_str!("../../src/store/redis/lua/clock.lua"),
    include_str!("../../src/ratelimit/lua/algorithm.lua"),
    r#"
local now = tonumber(ARGV[#ARGV])
local mode = ARGV[#ARGV - 1]
if mode == 'refund' then
  return {run_refund(now)}
end
return run_check(now, mode == 'reserve')
"#
);

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(Algorithm::FixedWindow),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::TokenBucket),
            Just(Algorithm::Gcra),
        ],
        1u64..=10,
        prop_oneof![1i64..=200, Just(1000i64)],
        prop_oneof![Just(0u64), 1u64..=10],
    )
        .prop_map(|(algorithm, limit, period_ms, burst)| Policy {
            algorithm,
            limit,
            period_ms,
            burst: match algorithm {
                Algorithm::TokenBucket | Algorithm::Gcra => burst,
                _ => 0,
            },
            failure_mode: FailureMode::Closed,
        })
        .prop_filter("valid policy", |p| p.validate().is_ok())
}

/// A step forward (or, rarely, back) of the store's clock and a cost.
fn step(period: i64, capacity: u64) -> impl Strategy<Value = (i64, u64)> {
    let dt = prop_oneof![
        3 => Just(0i64),
        4 => 0..=period / 4 + 1,
        2 => 0..=2 * period + 10,
        1 => -(period / 2 + 1)..0,
    ];
    (dt, 1..=capacity.min(3))
}

#[derive(Debug, Clone)]
struct Story {
    policy: Policy,
    before: Vec<(i64, u64)>,
    reserve: (i64, u64),
    between: Vec<(i64, u64)>,
    refund_dt: i64,
    after: Vec<(i64, u64)>,
}

fn story() -> impl Strategy<Value = Story> {
    policy().prop_flat_map(|policy| {
        let (period, capacity) = (policy.period_ms, policy.capacity());
        (
            Just(policy),
            prop::collection::vec(step(period, capacity), 0..8),
            step(period, capacity),
            prop::collection::vec(step(period, capacity), 0..8),
            0..=period / 2 + 1,
            prop::collection::vec(step(period, capacity), 1..12),
        )
            .prop_map(
                |(policy, before, reserve, between, refund_dt, after)| Story {
                    policy,
                    before,
                    reserve,
                    between,
                    refund_dt,
                    after,
                },
            )
    })
}

struct Driver<'a> {
    conn: redis::aio::MultiplexedConnection,
    script: &'a redis::Script,
}

impl Driver<'_> {
    /// Runs the driver on `key` in `mode` at store time `now` with `args` after the cost.
    async fn run(
        &mut self,
        key: &str,
        mode: &str,
        now: i64,
        cost: u64,
        policy: &Policy,
        extra: &[i64],
    ) -> Vec<i64> {
        let mut call = self.script.key(key);
        if mode != "refund" {
            call.arg(if mode == "peek" { "0" } else { "1" });
        }
        call.arg(policy.algorithm.code())
            .arg(policy.limit)
            .arg(policy.period_ms)
            .arg(policy.capacity())
            .arg(cost);
        if mode != "refund" {
            // The role: enforced.
            call.arg(0);
        }
        for x in extra {
            call.arg(*x);
        }
        call.arg(mode).arg(now);
        call.invoke_async(&mut self.conn).await.expect("driver")
    }

    async fn check(&mut self, key: &str, now: i64, cost: u64, policy: &Policy) -> bool {
        self.run(key, "check", now, cost, policy, &[]).await[0] == 1
    }

    async fn remaining(&mut self, key: &str, now: i64, policy: &Policy) -> i64 {
        self.run(key, "peek", now, 0, policy, &[]).await[1]
    }
}

#[test]
fn a_refund_never_gives_back_more_than_the_reservation_still_holds() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = runtime.block_on(RedisServer::start());
    let conn = runtime.block_on(redis.client());
    let script = redis::Script::new(DRIVER);
    let cases: u32 = std::env::var("FLOWSTATE_TEST_REFUND_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
    let n = std::cell::Cell::new(0u64);
    let refunded = std::cell::Cell::new(0u32);
    let result = runner.run(&story(), |s| {
        n.set(n.get() + 1);
        let mut driver = Driver {
            conn: conn.clone(),
            script: &script,
        };
        match runtime.block_on(replay(&mut driver, &s, n.get())) {
            Ok(true) => {
                refunded.set(refunded.get() + 1);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(TestCaseError::fail(e)),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let refunded = refunded.get();
    eprintln!("{cases} stories, {refunded} with a refund");
    assert!(
        refunded > cases / 4,
        "most stories reach a refund ({refunded})"
    );
}

/// The story CI once drew: a GCRA reservation already drained when the refund comes, then the
/// clock steps back. The refund gives nothing and writes nothing, so the two counters must stay
/// alike (the model once credited the reference with the refund's clock reading, and the
/// counters drifted apart by one request).
#[test]
fn a_drained_gcra_reservation_refunds_nothing_and_the_counters_stay_alike() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let redis = RedisServer::start().await;
        let script = redis::Script::new(DRIVER);
        let mut driver = Driver {
            conn: redis.client().await,
            script: &script,
        };
        let story = Story {
            policy: Policy {
                algorithm: Algorithm::Gcra,
                limit: 6,
                period_ms: 5,
                burst: 0,
                failure_mode: FailureMode::Closed,
            },
            before: vec![],
            reserve: (0, 1),
            between: vec![],
            refund_dt: 2,
            after: vec![(-1, 1), (1, 1)],
        };
        assert_eq!(replay(&mut driver, &story, 1).await, Ok(true));
    });
}

/// Plays `s`; `Ok(true)` when the reservation was granted and refunded.
async fn replay(d: &mut Driver<'_>, s: &Story, n: u64) -> Result<bool, String> {
    let p = &s.policy;
    let (with, reference) = (format!("w{n}"), format!("r{n}"));
    let mut now: i64 = 1_700_000_000_000;
    for &(dt, cost) in &s.before {
        now += dt;
        let a = d.check(&with, now, cost, p).await;
        let b = d.check(&reference, now, cost, p).await;
        if a != b {
            return Err(format!(
                "the two counters differ before the reservation at {now}"
            ));
        }
    }
    now += s.reserve.0;
    let cost = s.reserve.1;
    let reserved = d.run(&with, "reserve", now, cost, p, &[]).await;
    if reserved[0] != 1 {
        return Ok(false);
    }
    // The reservation also read the store's clock, and state never moves back from a reading:
    // the reference sees the same reading, consuming nothing.
    d.check(&reference, now, 0, p).await;
    let (v1, v2) = (reserved[4], reserved[5]);
    for &(dt, c) in &s.between {
        now += dt;
        // Whatever `with` admits, the reference (which lacks the reservation) must admit too.
        if d.check(&with, now, c, p).await && !d.check(&reference, now, c, p).await {
            return Err(format!(
                "the reference denied what `with` admitted at {now}"
            ));
        }
    }
    now += s.refund_dt;
    let given = d.run(&with, "refund", now, cost, p, &[v1, v2]).await[0];
    // So does a GCRA refund that gives something back (it rewrites the schedule as of its
    // reading; the others only take the cost back, leaving their state's time alone). One that
    // finds the reservation drained writes nothing, so its reading leaves no trace either.
    if p.algorithm == Algorithm::Gcra && given > 0 {
        d.check(&reference, now, 0, p).await;
    }
    let exact = matches!(
        p.algorithm,
        Algorithm::FixedWindow | Algorithm::SlidingWindow
    );
    for &(dt, c) in &s.after {
        now += dt;
        let (w, r) = (
            d.remaining(&with, now, p).await,
            d.remaining(&reference, now, p).await,
        );
        if w > r || (exact && w != r) {
            return Err(format!(
                "after the refund, at {now}: `with` offers {w}, the reference {r} ({:?})",
                p.algorithm
            ));
        }
        if d.check(&with, now, c, p).await && !d.check(&reference, now, c, p).await {
            return Err(format!(
                "after the refund, at {now}: `with` admitted what the reference denied ({:?})",
                p.algorithm
            ));
        }
    }
    Ok(true)
}
