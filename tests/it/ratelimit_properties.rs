//! Property tests of the rate-limit algorithms: for random sequences of clock readings (which
//! may step backwards by up to the step margin, as a store's clock can after a failover) and
//! costs, with state expiring as the store expires it, admissions never exceed the exact bound
//! of the algorithm.

use flowstate::ratelimit::{
    Algorithm, FailureMode, Policy, State, algorithm::STEP_MARGIN_MS, decide,
};
use proptest::prelude::*;

/// One check: how far the clock moved since the previous one (negative: backwards), its cost,
/// and whether it consumes (a dry run does not).
#[derive(Debug, Clone)]
struct Step {
    dt: i64,
    cost: u64,
    commit: bool,
}

fn steps(period: i64, capacity: u64) -> impl Strategy<Value = Vec<Step>> {
    let dt = prop_oneof![
        6 => Just(0i64),
        6 => 0..=period / 4,
        3 => 0..=2 * period,
        1 => -period.min(STEP_MARGIN_MS)..0,
    ];
    prop::collection::vec(
        (dt, 0..=capacity, prop::bool::weighted(0.9)).prop_map(|(dt, cost, commit)| Step {
            dt,
            cost,
            commit,
        }),
        1..200,
    )
}

fn policies() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(Algorithm::FixedWindow),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::TokenBucket),
            Just(Algorithm::Gcra),
        ],
        1u64..=20,
        prop_oneof![Just(1i64), 1i64..=50, Just(1000i64), 1i64..=100_000],
        0u64..=30,
    )
        .prop_map(|(algorithm, limit, period_ms, burst)| {
            let burst = match algorithm {
                Algorithm::TokenBucket | Algorithm::Gcra => burst,
                _ => 0,
            };
            Policy {
                algorithm,
                limit,
                period_ms,
                burst,
                failure_mode: FailureMode::Closed,
            }
        })
}

/// Runs the steps; returns every consumed admission as (effective time, cost), where the
/// effective time is the latest clock reading of any admission so far: state never moves
/// backwards, so an admission at an earlier reading counts as happening at that time. State
/// expires as the store expires it: its TTL counted from the clock reading it was written at.
fn run(policy: &Policy, start: i64, steps: &[Step]) -> Vec<(i64, u64)> {
    let mut state: Option<(State, i64)> = None;
    let (mut now, mut latest, mut highest) = (start, i64::MIN, start);
    let mut admitted = Vec::new();
    for s in steps {
        // The clock may step back, never further than the margin below its highest reading.
        now = (now + s.dt).max(highest - STEP_MARGIN_MS);
        highest = highest.max(now);
        if state.is_some_and(|(_, expires)| expires <= now) {
            state = None;
        }
        let (decision, update) = decide(policy, state.map(|(st, _)| st), now, s.cost);
        if decision.allowed && s.commit && s.cost > 0 {
            state = Some((update.state, now + update.ttl_ms));
            latest = latest.max(now);
            admitted.push((latest, s.cost));
        }
    }
    admitted
}

/// The exact bound: per calendar window for the window algorithms; bucket plus refill over
/// every interval for the bucket algorithms.
fn check_bound(policy: &Policy, admitted: &[(i64, u64)]) -> Result<(), TestCaseError> {
    let p = policy.period_ms;
    let l = policy.limit;
    match policy.algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => {
            let mut per_window = std::collections::BTreeMap::<i64, u64>::new();
            for (t, cost) in admitted {
                *per_window.entry(t.div_euclid(p)).or_default() += cost;
            }
            for (w, total) in per_window {
                prop_assert!(total <= l, "window {w}: {total} admitted, limit {l}");
            }
        }
        Algorithm::TokenBucket | Algorithm::Gcra => {
            let capacity = i128::from(policy.capacity());
            for i in 0..admitted.len() {
                let mut total = 0i128;
                for j in i..admitted.len() {
                    total += i128::from(admitted[j].1);
                    let span = i128::from(admitted[j].0 - admitted[i].0);
                    prop_assert!(
                        total * i128::from(p) <= capacity * i128::from(p) + i128::from(l) * span,
                        "admissions {i}..={j}: {total} in {span} ms, bucket {capacity}, {l} per {p} ms"
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn admissions_never_exceed_the_exact_bound(
        (policy, steps) in policies().prop_flat_map(|p| (Just(p), steps(p.period_ms, p.capacity()))),
        start in 1_700_000_000_000i64..1_800_000_000_000,
    ) {
        let admitted = run(&policy, start, &steps);
        check_bound(&policy, &admitted)?;
    }
}
