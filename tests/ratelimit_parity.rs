//! The Lua scripts mirror `src/ratelimit/algorithm.rs`: the same sequence of checks, at the same
//! clock readings, must get identical decisions (allowed, remaining, reset_after, retry_after)
//! from the Redis store and the in-memory store.

mod common;

use std::time::Duration;

use common::RedisServer;
use flowstate::{
    config::RedisConfig,
    ratelimit::{
        Algorithm, Counter, CounterId, FailureMode, Policy, RateLimitStore,
        memory::MemoryRateLimitStore, redis::RedisRateLimitStore,
    },
    store::{memory::MemoryBackend, redis::RedisBackend},
    tenant::Tenant,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_memory_decide_identically() {
    let redis_server = RedisServer::start().await;
    let config = RedisConfig {
        url: Some(redis_server.url()),
        key_prefix: common::unique_prefix(),
        ..RedisConfig::default()
    };
    let redis = RedisRateLimitStore::new(RedisBackend::new(&config).expect("redis backend"))
        .expect("redis store");
    let memory = MemoryRateLimitStore::new(&MemoryBackend::new("parity", Duration::from_secs(60)));
    let tenant = Tenant::default_tenant();

    let policies: [(Algorithm, u64, i64, u64); 7] = [
        (Algorithm::FixedWindow, 7, 1_000, 0),
        (Algorithm::SlidingWindow, 7, 1_000, 0),
        (Algorithm::SlidingWindow, 1_000_000, 86_400_000, 0),
        (Algorithm::TokenBucket, 7, 1_000, 3),
        (Algorithm::TokenBucket, 5, 60_000, 0),
        (Algorithm::Gcra, 7, 1_000, 3),
        (Algorithm::Gcra, 1_000_000, 86_400_000, 5_000),
    ];
    let start = 1_763_000_000_123_i64;
    let mut compared = 0;
    for (i, (algorithm, limit, period_ms, burst)) in policies.into_iter().enumerate() {
        let policy = Policy {
            algorithm,
            limit,
            period_ms,
            burst,
            failure_mode: FailureMode::Closed,
        };
        policy.validate().expect("valid policy");
        let counters = [Counter {
            id: CounterId {
                limit: format!("p{i}").into(),
                algorithm: algorithm.code(),
                key: "k".into(),
            },
            policy,
        }];
        // A pseudo-random but fixed walk: bursts, gaps shorter and longer than the period,
        // varying cost, and peeks.
        let mut now = start;
        let mut seed = 0x9e37_79b9_u64 + i as u64;
        for step in 0..400 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let gap = match seed >> 61 {
                0..=3 => 0,
                4 | 5 => (seed >> 20) as i64 % (period_ms / 3 + 1),
                6 => (seed >> 20) as i64 % (period_ms + 1),
                _ => period_ms * 2 + (seed >> 20) as i64 % 1_000,
            };
            now += gap;
            let cost = ((seed >> 33) % (policy.capacity().min(3) + 1)).min(policy.capacity());
            let commit = !(seed >> 40).is_multiple_of(5);
            let a = redis
                .check(&tenant, &counters, now, cost, commit)
                .await
                .expect("redis check");
            let b = memory
                .check(&tenant, &counters, now, cost, commit)
                .await
                .expect("memory check");
            assert_eq!(
                a, b,
                "{algorithm:?} step {step}: now {now} cost {cost} commit {commit}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 7 * 400);

    // All or nothing across counters: pairs of policies on one request.
    let pair = |a: usize, b: usize| -> Vec<Counter> {
        [a, b]
            .into_iter()
            .map(|i| {
                let (algorithm, limit, period_ms, burst) = policies[i];
                Counter {
                    id: CounterId {
                        limit: format!("pair{a}-{b}-{i}").into(),
                        algorithm: algorithm.code(),
                        key: "k".into(),
                    },
                    policy: Policy {
                        algorithm,
                        limit,
                        period_ms,
                        burst,
                        failure_mode: FailureMode::Closed,
                    },
                }
            })
            .collect()
    };
    let mut now = start;
    for (a, b) in [(0, 3), (1, 5), (3, 5), (0, 1)] {
        let counters = pair(a, b);
        for step in 0..200 {
            now += [0, 0, 37, 120, 480, 1_100][step % 6];
            let cost = 1 + (step as u64 % 2);
            let x = redis
                .check(&tenant, &counters, now, cost, true)
                .await
                .expect("redis check");
            let y = memory
                .check(&tenant, &counters, now, cost, true)
                .await
                .expect("memory check");
            assert_eq!(x, y, "pair ({a}, {b}) step {step}");
        }
    }
}
