//! criterion micro-benchmarks of the hot pure code: rate-limit math, key derivation, request
//! validation. `cargo bench --bench micro`.

use std::{collections::HashMap, hint::black_box};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use flowstate::{
    config::SessionConfig,
    ratelimit::{Algorithm, CounterId, FailureMode, Policy, decide},
    session::{CreateSession, SessionId, UserTag, validate_create},
    store::keys::Keys,
    tenant::Tenant,
};

fn ratelimit_math(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_decide");
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
    ] {
        let policy = Policy {
            algorithm,
            limit: 1000,
            period_ms: 60_000,
            burst: 0,
            failure_mode: FailureMode::Closed,
        };
        let (_, update) = decide(&policy, None, 1_763_000_000_000, 1);
        group.bench_function(format!("{algorithm:?}"), |b| {
            b.iter(|| {
                decide(
                    black_box(&policy),
                    black_box(Some(update.state)),
                    black_box(1_763_000_000_500),
                    black_box(1),
                )
            })
        });
    }
    group.finish();
}

fn key_derivation(c: &mut Criterion) {
    let tenant = Tenant::default_tenant();
    let keys = Keys::new("fs");
    let id = SessionId::generate(UserTag::for_user(&tenant, "alice")).encode();
    c.bench_function("session_id_parse_and_key", |b| {
        b.iter(|| {
            let id = SessionId::parse(black_box(&id)).expect("valid id");
            keys.session(&tenant, &id.key())
        })
    });
    c.bench_function("session_id_generate", |b| {
        let tag = UserTag::for_user(&tenant, "alice");
        b.iter(|| SessionId::generate(black_box(tag)).encode())
    });
    let counter = CounterId {
        limit: "n.api_per_user".into(),
        algorithm: 2,
        key: "user-42".into(),
    };
    c.bench_function("ratelimit_counter_key", |b| {
        b.iter(|| keys.counter(&tenant, black_box(&counter)))
    });
    c.bench_function("cache_entry_key", |b| {
        b.iter(|| keys.cache_entry(&tenant, black_box("user_profile"), 3, black_box("u42")))
    });
}

fn validation(c: &mut Criterion) {
    let policy = SessionConfig::default();
    let req = CreateSession {
        user_id: "alice".into(),
        data: HashMap::from([
            ("cart".into(), Bytes::from_static(b"3 items")),
            ("locale".into(), Bytes::from_static(b"en-GB")),
        ]),
        metadata: HashMap::from([("user_agent".into(), "Mozilla/5.0".into())]),
        idle_timeout: None,
        absolute_timeout: Some(3_600_000),
    };
    c.bench_function("validate_create_session", |b| {
        b.iter(|| validate_create(black_box(&policy), black_box(&req)))
    });
    let inline = Policy {
        algorithm: Algorithm::Gcra,
        limit: 100,
        period_ms: 60_000,
        burst: 20,
        failure_mode: FailureMode::Open,
    };
    c.bench_function("validate_inline_policy", |b| {
        b.iter(|| black_box(&inline).validate())
    });
}

criterion_group!(benches, ratelimit_math, key_derivation, validation);
criterion_main!(benches);
