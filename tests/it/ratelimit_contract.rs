//! The RateLimitService contract, run against both stores through real gRPC calls.

use std::time::Duration;

use crate::common::{Backend, eventually};
use flowstate::{
    config::{Config, LimitConfig},
    proto::v1 as pb,
    ratelimit::{Algorithm, FailureMode},
};
use pb::{limit_check::Limit, rate_limit_service_client::RateLimitServiceClient};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

type Client = RateLimitServiceClient<Channel>;

contract_tests! {
    fixed_window_is_exact_under_concurrency with super::limits,
    sliding_window_is_exact_under_concurrency with super::limits,
    token_bucket_is_exact_under_concurrency with super::limits,
    gcra_is_exact_under_concurrency with super::limits,
    all_or_nothing_across_limits with super::limits,
    all_or_nothing_across_slots_gives_back_exactly with super::limits,
    two_counters_in_different_slots_are_exact_under_concurrency with super::limits,
    dry_run_and_zero_cost_consume_nothing with super::limits,
    weighted_cost with super::limits,
    reset_restores_the_full_limit with super::limits,
    fixed_window_rolls_over with super::limits,
    inline_policies_share_counters_per_policy_and_key,
    bad_input_is_rejected with super::limits,
    inline_periods_are_capped,
}

/// Thirty days: no exactness test straddles a window boundary or sees a meaningful refill.
const LONG: Duration = Duration::from_secs(30 * 24 * 3600);

fn limit(algorithm: Algorithm, limit: u64, period: Duration, burst: u64) -> LimitConfig {
    LimitConfig {
        algorithm,
        limit,
        period,
        burst,
        failure_mode: FailureMode::Closed,
    }
}

fn limits(c: &mut Config) {
    let l = &mut c.ratelimit.limits;
    l.insert("fw".into(), limit(Algorithm::FixedWindow, 100, LONG, 0));
    l.insert("sw".into(), limit(Algorithm::SlidingWindow, 100, LONG, 0));
    l.insert("tb".into(), limit(Algorithm::TokenBucket, 100, LONG, 100));
    l.insert("gcra".into(), limit(Algorithm::Gcra, 100, LONG, 100));
    l.insert("five".into(), limit(Algorithm::FixedWindow, 5, LONG, 0));
    l.insert(
        "big-fw".into(),
        limit(Algorithm::FixedWindow, 1000, LONG, 0),
    );
    l.insert(
        "big-sw".into(),
        limit(Algorithm::SlidingWindow, 1000, LONG, 0),
    );
    l.insert(
        "big-tb".into(),
        limit(Algorithm::TokenBucket, 1000, LONG, 1000),
    );
    l.insert("big-gcra".into(), limit(Algorithm::Gcra, 1000, LONG, 1000));
    l.insert("three".into(), limit(Algorithm::SlidingWindow, 3, LONG, 0));
    l.insert(
        "second".into(),
        limit(Algorithm::FixedWindow, 3, Duration::from_secs(1), 0),
    );
}

fn named(name: &str, key: &str) -> pb::LimitCheck {
    pb::LimitCheck {
        limit: Some(Limit::Name(name.into())),
        key: key.into(),
    }
}

async fn check(
    c: &mut Client,
    checks: Vec<pb::LimitCheck>,
    cost: Option<u64>,
    dry_run: bool,
) -> Result<pb::CheckResponse, tonic::Status> {
    c.check(pb::CheckRequest {
        checks,
        cost,
        dry_run,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn remaining(c: &mut Client, name: &str, key: &str) -> u64 {
    check(c, vec![named(name, key)], Some(0), true)
        .await
        .expect("peek")
        .results[0]
        .remaining
}

/// 16 clients × 200 checks against a limit of 100: exactly 100 admitted.
async fn exactly_limit_admitted(b: Backend, name: &str) {
    let c = RateLimitServiceClient::new(b.server.channel.clone());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = c.clone();
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0u32;
            for _ in 0..200 {
                let r = check(&mut c, vec![named(&name, "hot-key")], None, false)
                    .await
                    .expect("check");
                assert_eq!(r.results.len(), 1);
                assert!(r.results[0].enforced);
                if r.allowed {
                    allowed += 1;
                } else {
                    let retry = r.results[0].retry_after.expect("retry_after");
                    assert!(
                        retry.seconds > 0 || retry.nanos > 0,
                        "a denial says when to retry"
                    );
                }
            }
            allowed
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(
        total, 100,
        "{name}: exactly the limit is admitted across 3200 concurrent checks"
    );
    assert_eq!(remaining(&mut c.clone(), name, "hot-key").await, 0);
}

async fn fixed_window_is_exact_under_concurrency(b: Backend) {
    exactly_limit_admitted(b, "fw").await;
}

async fn sliding_window_is_exact_under_concurrency(b: Backend) {
    exactly_limit_admitted(b, "sw").await;
}

async fn token_bucket_is_exact_under_concurrency(b: Backend) {
    exactly_limit_admitted(b, "tb").await;
}

async fn gcra_is_exact_under_concurrency(b: Backend) {
    exactly_limit_admitted(b, "gcra").await;
}

async fn all_or_nothing_across_limits(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    let both = || vec![named("five", "user-1"), named("three", "user-1")];
    for _ in 0..3 {
        assert!(
            check(&mut c, both(), None, false)
                .await
                .expect("check")
                .allowed
        );
    }
    let denied = check(&mut c, both(), None, false).await.expect("check");
    assert!(!denied.allowed);
    assert!(denied.results[0].allowed, "`five` alone would allow");
    assert!(!denied.results[1].allowed, "`three` denies");
    assert_eq!(
        remaining(&mut c, "five", "user-1").await,
        2,
        "the denied request consumed nothing from `five`"
    );
    // The same key under `five` alone still has its own two.
    assert!(
        check(&mut c, vec![named("five", "user-1")], None, false)
            .await
            .expect("check")
            .allowed
    );
    assert_eq!(remaining(&mut c, "five", "user-1").await, 1);
    assert_eq!(
        remaining(&mut c, "five", "user-2").await,
        5,
        "keys are independent"
    );
}

/// Two check keys whose counters land in different Redis Cluster slots, on different masters of
/// a default three-master cluster (slots 0-5460, 5461-10922, 10923-16383); a counter's hash tag
/// is its check key.
fn keys_in_different_slots() -> (&'static str, &'static str) {
    let (user, tenant) = ("user-42", "tenant-acme");
    let third = |k: &str| flowstate::store::keys::slot(k.as_bytes()) / 5461;
    assert_ne!(third(user), third(tenant), "pick keys on different masters");
    (user, tenant)
}

/// A counter in one slot allows, one in another denies: nothing is consumed anywhere. On a
/// Cluster the first counter's slot reserved and was refunded; the refund must give back
/// exactly what was taken, for every algorithm.
async fn all_or_nothing_across_slots_gives_back_exactly(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    let (user, tenant) = keys_in_different_slots();
    for big in ["big-fw", "big-sw", "big-tb", "big-gcra"] {
        let both = || vec![named(big, user), named("three", tenant)];
        for _ in 0..3 {
            assert!(
                check(&mut c, both(), None, false)
                    .await
                    .expect("check")
                    .allowed
            );
        }
        let before = remaining(&mut c, big, user).await;
        assert_eq!(before, 997, "{big}: three admitted");
        for _ in 0..5 {
            let denied = check(&mut c, both(), None, false).await.expect("check");
            assert!(!denied.allowed, "{big}: `three` is spent");
            assert!(denied.results[0].allowed && !denied.results[1].allowed);
        }
        assert_eq!(
            remaining(&mut c, big, user).await,
            before,
            "{big}: denied checks gave back everything they reserved"
        );
        // A weighted check over both, denied by the other slot, gives back its whole cost.
        let denied = check(&mut c, both(), Some(2), false).await.expect("check");
        assert!(!denied.allowed);
        assert_eq!(remaining(&mut c, big, user).await, before, "{big}: cost 2");
        c.reset(pb::ResetRequest {
            limit: Some(pb::reset_request::Limit::Name("three".into())),
            key: tenant.into(),
        })
        .await
        .expect("reset");
    }
}

/// 16 callers × 200 checks of a per-user limit of 100 together with a per-tenant limit of 1000
/// whose counters live in different slots: exactly 100 admitted, and the tenant counter, which
/// every denied check reserved from and was refunded, counts exactly those 100. Then the other
/// way round (the tenant limit is the one that runs out).
async fn two_counters_in_different_slots_are_exact_under_concurrency(b: Backend) {
    let (user, tenant) = keys_in_different_slots();
    for (tight, tight_key, loose, loose_key) in [
        ("fw", user, "big-sw", tenant),
        ("gcra", tenant, "big-tb", user),
    ] {
        let c = RateLimitServiceClient::new(b.server.channel.clone());
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0u32;
                for _ in 0..200 {
                    let checks = vec![named(tight, tight_key), named(loose, loose_key)];
                    if check(&mut c, checks, None, false)
                        .await
                        .expect("check")
                        .allowed
                    {
                        allowed += 1;
                    }
                }
                allowed
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        assert_eq!(total, 100, "{tight} + {loose}: exactly the tighter limit");
        let mut c = c.clone();
        assert_eq!(remaining(&mut c, tight, tight_key).await, 0);
        assert_eq!(
            remaining(&mut c, loose, loose_key).await,
            900,
            "{loose} counts exactly the admitted checks: every refund was exact"
        );
    }
}

async fn dry_run_and_zero_cost_consume_nothing(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    for _ in 0..10 {
        let r = check(&mut c, vec![named("five", "k")], None, true)
            .await
            .expect("dry run");
        assert!(r.allowed);
        assert_eq!(
            r.results[0].remaining, 4,
            "reports what a real check would leave"
        );
        let r = check(&mut c, vec![named("five", "k")], Some(0), false)
            .await
            .expect("peek");
        assert_eq!(r.results[0].remaining, 5);
    }
    assert_eq!(remaining(&mut c, "five", "k").await, 5);
}

async fn weighted_cost(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    for want in [true, true, true, false] {
        let r = check(&mut c, vec![named("tb", "llm")], Some(30), false)
            .await
            .expect("check");
        assert_eq!(r.allowed, want);
    }
    assert_eq!(remaining(&mut c, "tb", "llm").await, 10);
    assert!(
        check(&mut c, vec![named("tb", "llm")], Some(10), false)
            .await
            .expect("check")
            .allowed
    );
    let err = check(&mut c, vec![named("tb", "llm")], Some(101), false)
        .await
        .expect_err("more than the bucket holds");
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn reset_restores_the_full_limit(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    check(&mut c, vec![named("five", "k")], Some(5), false)
        .await
        .expect("drain");
    assert_eq!(remaining(&mut c, "five", "k").await, 0);
    c.reset(pb::ResetRequest {
        limit: Some(pb::reset_request::Limit::Name("five".into())),
        key: "k".into(),
    })
    .await
    .expect("reset");
    assert_eq!(remaining(&mut c, "five", "k").await, 5);
}

async fn fixed_window_rolls_over(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    // Fill the current one-second window (it may roll while we do; keep going until denied).
    let denied = loop {
        let r = check(&mut c, vec![named("second", "k")], None, false)
            .await
            .expect("check");
        if !r.allowed {
            break r;
        }
    };
    let retry = denied.results[0].retry_after.expect("retry_after");
    let retry_ms = retry.seconds * 1000 + i64::from(retry.nanos) / 1_000_000;
    assert!(
        (1..=1000).contains(&retry_ms),
        "retry_after {retry_ms} ms within the window"
    );
    let admitted_again = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            check(&mut c, vec![named("second", "k")], None, false)
                .await
                .expect("check")
                .allowed
        }
    })
    .await;
    assert!(admitted_again, "the next window admits again");
}

async fn inline_policies_share_counters_per_policy_and_key(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    let inline = |limit: u64| pb::LimitCheck {
        limit: Some(Limit::Policy(pb::LimitPolicy {
            algorithm: pb::Algorithm::Gcra as i32,
            limit,
            period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            burst: 0,
            failure_mode: pb::FailureMode::Closed as i32,
        })),
        key: "tenant-budget".into(),
    };
    for _ in 0..2 {
        assert!(
            check(&mut c, vec![inline(2)], None, false)
                .await
                .expect("check")
                .allowed
        );
    }
    assert!(
        !check(&mut c, vec![inline(2)], None, false)
            .await
            .expect("check")
            .allowed
    );
    assert!(
        check(&mut c, vec![inline(3)], None, false)
            .await
            .expect("check")
            .allowed,
        "a different inline policy is a different counter"
    );
}

async fn bad_input_is_rejected(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    let expect_invalid = |r: Result<pb::CheckResponse, tonic::Status>, field: &str| {
        let e = r.expect_err("must be rejected");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let bad = e.get_details_bad_request().expect("BadRequest details");
        assert!(
            bad.field_violations.iter().any(|v| v.field == field),
            "want {field}, got {:?}",
            bad.field_violations
        );
    };
    let policy = |algorithm: pb::Algorithm, limit: u64, seconds: i64, burst: u64| pb::LimitCheck {
        limit: Some(Limit::Policy(pb::LimitPolicy {
            algorithm: algorithm as i32,
            limit,
            period: Some(prost_types::Duration { seconds, nanos: 0 }),
            burst,
            failure_mode: 0,
        })),
        key: "k".into(),
    };
    expect_invalid(
        check(&mut c, vec![named("five", "")], None, false).await,
        "checks[0].key",
    );
    expect_invalid(
        check(
            &mut c,
            vec![policy(pb::Algorithm::Gcra, 10, 0, 0)],
            None,
            false,
        )
        .await,
        "checks[0].policy.period",
    );
    expect_invalid(
        check(
            &mut c,
            vec![policy(pb::Algorithm::Gcra, 0, 1, 0)],
            None,
            false,
        )
        .await,
        "checks[0].policy.limit",
    );
    expect_invalid(
        check(
            &mut c,
            vec![policy(pb::Algorithm::Unspecified, 1, 1, 0)],
            None,
            false,
        )
        .await,
        "checks[0].policy.algorithm",
    );
    let mut unknown_enum = policy(pb::Algorithm::Gcra, 1, 1, 0);
    if let Some(Limit::Policy(p)) = &mut unknown_enum.limit {
        p.algorithm = 42;
    }
    expect_invalid(
        check(&mut c, vec![unknown_enum], None, false).await,
        "checks[0].policy.algorithm",
    );
    let mut negative = policy(pb::Algorithm::Gcra, 1, 1, 0);
    if let Some(Limit::Policy(p)) = &mut negative.limit {
        p.period = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
    }
    expect_invalid(
        check(&mut c, vec![negative], None, false).await,
        "checks[0].policy.period",
    );
    expect_invalid(
        check(
            &mut c,
            vec![policy(pb::Algorithm::FixedWindow, 5, 1, 2)],
            None,
            false,
        )
        .await,
        "checks[0].policy.burst",
    );
    expect_invalid(check(&mut c, vec![], None, false).await, "checks");
    expect_invalid(
        check(&mut c, vec![named("five", "k"); 9], None, false).await,
        "checks",
    );
    expect_invalid(
        check(
            &mut c,
            vec![named("five", "k"), named("five", "k")],
            None,
            false,
        )
        .await,
        "checks[1]",
    );
    expect_invalid(
        check(
            &mut c,
            vec![pb::LimitCheck {
                limit: None,
                key: "k".into(),
            }],
            None,
            false,
        )
        .await,
        "checks[0].name",
    );
    let unknown = check(&mut c, vec![named("nope", "k")], None, false)
        .await
        .expect_err("unknown limit");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        remaining(&mut c, "five", "k").await,
        5,
        "rejected requests consumed nothing"
    );
    assert!(
        b.leftovers().await.is_empty(),
        "no counters written: {:?}",
        b.leftovers().await
    );
}

/// An inline policy's period is capped by configuration (`ratelimit.max_inline_period`): a
/// caller cannot make the store keep a counter for a year.
async fn inline_periods_are_capped(b: Backend) {
    let mut c = RateLimitServiceClient::new(b.server.channel.clone());
    let inline = |secs: i64| pb::CheckRequest {
        checks: vec![pb::LimitCheck {
            limit: Some(Limit::Policy(pb::LimitPolicy {
                algorithm: pb::Algorithm::FixedWindow as i32,
                limit: 1,
                period: Some(prost_types::Duration {
                    seconds: secs,
                    nanos: 0,
                }),
                burst: 0,
                failure_mode: 0,
            })),
            key: "k".into(),
        }],
        cost: None,
        dry_run: false,
    };
    c.check(inline(86_400))
        .await
        .expect("a day is within the default cap");
    let err = c
        .check(inline(400 * 86_400))
        .await
        .expect_err("400 days is over the cap");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let details = err.get_details_bad_request().expect("field violations");
    assert_eq!(details.field_violations[0].field, "checks[0].policy.period");
}
