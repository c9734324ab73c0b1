//! The Lua script mirrors `src/ratelimit/algorithm.rs`: the same sequence of checks at the same
//! store times must get identical decisions (allowed, remaining, reset_after, retry_after) from
//! the script on a real Redis and from the memory store. proptest draws the sequences (bursts,
//! gaps, clock steps backwards, costs, dry runs, pairs of counters decided all-or-nothing) and
//! shrinks a difference to a minimal case.
//!
//! The script runs as production runs it (`clock.lua` + `algorithm.lua`), with a small driver
//! in place of `check.lua` that takes the store time from the last argument instead of `TIME`
//! and expires counters by that time alone (PERSIST drops the TTL the script set: Redis would
//! expire them by its own clock, which the replayed times do not follow); the memory store's
//! clock is set to the same time.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::common::RedisServer;
use flowstate::{
    ratelimit::{
        Algorithm, Counter, CounterId, Decision, FailureMode, Policy, RateLimitStore, Role,
        memory::MemoryRateLimitStore,
    },
    store::memory::MemoryBackend,
    tenant::Tenant,
};
use proptest::{prelude::*, test_runner::TestRunner};

const DRIVER: &str = concat!(
    include_str!("../../src/store/redis/lua/clock.lua"),
    include_str!("../../src/ratelimit/lua/algorithm.lua"),
    r#"
local now = tonumber(ARGV[#ARGV])
for i = 1, #KEYS do
  local x = redis.call('HGET', KEYS[i], 'x')
  if x and tonumber(x) <= now then
    redis.call('DEL', KEYS[i])
  end
end
local out = run_check(now)
-- A counter the check wrote has a TTL again (the driver keeps none): its expiry, on the
-- replayed clock, is that TTL from now.
for i = 1, #KEYS do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl > 0 then
    redis.call('HSET', KEYS[i], 'x', int(now + ttl))
    redis.call('PERSIST', KEYS[i])
  end
end
return out
"#
);

#[derive(Debug, Clone)]
struct Step {
    dt: i64,
    cost: u64,
    commit: bool,
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(Algorithm::FixedWindow),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::TokenBucket),
            Just(Algorithm::Gcra),
        ],
        prop_oneof![1u64..=10, Just(1_000_000u64)],
        prop_oneof![1i64..=1000, Just(1000i64), Just(86_400_000i64)],
        prop_oneof![Just(0u64), 1u64..=20, Just(5_000u64)],
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

fn case() -> impl Strategy<Value = (Vec<Policy>, Vec<Step>)> {
    prop::collection::vec(policy(), 1..=2).prop_flat_map(|policies| {
        let period = policies.iter().map(|p| p.period_ms).max().unwrap_or(1);
        let capacity = policies
            .iter()
            .map(Policy::capacity)
            .min()
            .unwrap_or(1)
            .min(3);
        let dt = prop_oneof![
            4 => Just(0i64),
            4 => 0..=period / 3 + 1,
            2 => 0..=2 * period + 1000,
            1 => -(period + 1000)..0,
        ];
        let steps = prop::collection::vec(
            (dt, 0..=capacity, prop::bool::weighted(0.8)).prop_map(|(dt, cost, commit)| Step {
                dt,
                cost,
                commit,
            }),
            1..60,
        );
        (Just(policies), steps)
    })
}

fn decisions(reply: Vec<i64>) -> Vec<Decision> {
    reply
        .chunks_exact(4)
        .map(|r| Decision {
            allowed: r[0] == 1,
            remaining: u64::try_from(r[1]).unwrap_or(0),
            reset_after_ms: r[2],
            retry_after_ms: r[3],
        })
        .collect()
}

#[test]
fn the_script_and_the_memory_store_decide_identically() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = runtime.block_on(RedisServer::start());
    let conn = runtime.block_on(redis.client());
    let script = redis::Script::new(DRIVER);
    let tenant = Tenant::default_tenant();
    let seq = AtomicU32::new(0);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(128));
    let result = runner.run(&case(), |(policies, steps)| {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let backend = runtime
            .block_on(async { MemoryBackend::new("parity", Duration::from_secs(3600), 1 << 20) });
        let memory = runtime.block_on(async { MemoryRateLimitStore::new(&backend) });
        let mut counters: Vec<Counter> = policies
            .iter()
            .enumerate()
            .map(|(i, policy)| Counter {
                id: CounterId {
                    limit: format!("c{n}-{i}").into(),
                    algorithm: policy.algorithm.code(),
                    key: "k".into(),
                },
                policy: *policy,
                cost: 0,
                role: Role::Enforced,
            })
            .collect();
        let keys: Vec<String> = counters
            .iter()
            .map(|c| format!("parity:{n}:{}", c.id.limit))
            .collect();
        let mut now = 1_763_000_000_123_i64;
        for (i, step) in steps.iter().enumerate() {
            now += step.dt;
            for c in &mut counters {
                c.cost = step.cost;
            }
            let mut call = script.prepare_invoke();
            for key in &keys {
                call.key(key.as_str());
            }
            call.arg(if step.commit { "1" } else { "0" });
            for c in &counters {
                call.arg(c.policy.algorithm.code())
                    .arg(c.policy.limit)
                    .arg(c.policy.period_ms)
                    .arg(c.policy.capacity())
                    .arg(c.cost)
                    .arg(c.role.code());
            }
            call.arg(now);
            let lua: Vec<i64> = runtime
                .block_on(call.invoke_async(&mut conn.clone()))
                .expect("script");
            backend.clock().set(now);
            let rust = runtime
                .block_on(memory.check(&tenant, &counters, step.commit))
                .expect("memory check");
            prop_assert_eq!(decisions(lua), rust, "step {} at {}", i, now);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
