//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`), through real gRPC
//! calls, on every store: envoyproxy/ratelimit's semantics (matching, replaces, shadow and quota
//! modes, unlimited and zero limits, overrides, hits_addend) with flowstate's all-or-nothing
//! decisions, exact under concurrency; the over-limit cache; reloads.

use std::{path::PathBuf, time::Duration};

use crate::common::{Backend, eventually};
use flowstate::{
    config::{Config, PositiveDuration},
    proto::envoy::{
        extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor},
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse, rate_limit_response::Code,
            rate_limit_service_client::RateLimitServiceClient,
        },
    },
};
use tonic::transport::Channel;

type Client = RateLimitServiceClient<Channel>;

contract_tests! {
    per_key_limits_are_exact_and_separate with super::rules,
    descriptors_are_all_or_nothing with super::rules,
    shadow_mode_counts_and_never_refuses with super::rules,
    unknown_unlimited_and_zero with super::rules,
    replaces_drops_the_replaced_rule with super::rules,
    quota_mode_refuses_only_when_every_quota_is_over with super::rules,
    hits_addend_and_limit_overrides with super::rules,
    algorithms_chosen_per_rule_are_exact with super::rules,
    over_limit_cache_refuses_without_the_store with super::rules,
    bad_requests_are_invalid_arguments with super::rules,
    one_counter_named_twice_counts_twice with super::rules,
}

/// The rules of these tests. `month` windows are 30 days long: no test straddles one.
const RULES: &str = "
domain: edge
descriptors:
  - key: user
    rate_limit:
      unit: month
      requests_per_unit: 5
  - key: tenant
    rate_limit:
      unit: month
      requests_per_unit: 3
  - key: trial
    shadow_mode: true
    rate_limit:
      unit: month
      requests_per_unit: 2
  - key: free
    rate_limit:
      unlimited: true
  - key: remote_address
    value: 10.0.0.66
    rate_limit:
      unit: month
      requests_per_unit: 0
  - key: category
    value: account
    rate_limit:
      name: account
      unit: month
      requests_per_unit: 1
  - key: vip
    rate_limit:
      replaces:
        - name: account
      unit: month
      requests_per_unit: 4
  - key: service
    quota_mode: true
    rate_limit:
      unit: month
      requests_per_unit: 1
  - key: plan
    quota_mode: true
    rate_limit:
      unit: month
      requests_per_unit: 2
  - key: tokens
    rate_limit:
      unit: month
      requests_per_unit: 100
      algorithm: token_bucket
  - key: paced
    rate_limit:
      unit: month
      requests_per_unit: 100
      algorithm: gcra
  - key: smooth
    rate_limit:
      unit: month
      requests_per_unit: 100
      algorithm: sliding_window
";

fn write_rules(text: &str) -> PathBuf {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let path = dir.join("rules.yaml");
    std::fs::write(&path, text).expect("write rules");
    path
}

fn rules(c: &mut Config) {
    c.rls.config_path = Some(write_rules(RULES));
}

fn client(b: &Backend) -> Client {
    RateLimitServiceClient::new(b.server.channel.clone())
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| rate_limit_descriptor::Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        limit: None,
        hits_addend: None,
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors,
        hits_addend: 0,
    }
}

async fn ask(c: &mut Client, r: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(r)
        .await
        .expect("ShouldRateLimit")
        .into_inner()
}

fn over(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::OverLimit as i32
}

/// Sends `n` copies of a request at once; returns how many were admitted.
async fn admitted(c: &Client, r: &RateLimitRequest, n: usize) -> usize {
    let calls = (0..n).map(|_| {
        let mut c = c.clone();
        let r = r.clone();
        tokio::spawn(async move { !over(&ask(&mut c, r).await) })
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter(|ok| *ok.as_ref().expect("task"))
        .count()
}

async fn per_key_limits_are_exact_and_separate(b: Backend) {
    let c = client(&b);
    let alice = request(vec![descriptor(&[("user", "alice")])]);
    assert_eq!(
        admitted(&c, &alice, 12).await,
        5,
        "5 of 12 concurrent requests"
    );
    let bob = request(vec![descriptor(&[("user", "bob")])]);
    assert_eq!(admitted(&c, &bob, 8).await, 5, "bob has his own budget");
    let r = ask(&mut c.clone(), alice).await;
    assert!(over(&r));
    let s = &r.statuses[0];
    assert_eq!(s.code, Code::OverLimit as i32);
    let limit = s.current_limit.as_ref().expect("current_limit");
    assert_eq!((limit.requests_per_unit, limit.unit), (5, 5), "5 per MONTH");
    assert_eq!(s.limit_remaining, 0);
    assert!(s.duration_until_reset.is_some());
}

async fn descriptors_are_all_or_nothing(b: Backend) {
    let mut c = client(&b);
    // tenant allows 3, user 5: the 4th request is refused by tenant and consumes nothing
    // from user.
    let both = request(vec![
        descriptor(&[("user", "carol")]),
        descriptor(&[("tenant", "acme")]),
    ]);
    for i in 0..3 {
        let r = ask(&mut c, both.clone()).await;
        assert!(!over(&r), "request {i}");
        assert_eq!(r.statuses[0].limit_remaining, 4 - i);
    }
    for _ in 0..3 {
        let r = ask(&mut c, both.clone()).await;
        assert!(over(&r));
        assert_eq!(r.statuses[0].code, Code::Ok as i32, "user alone allows");
        assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    }
    let user = ask(&mut c, request(vec![descriptor(&[("user", "carol")])])).await;
    assert!(!over(&user));
    assert_eq!(
        user.statuses[0].limit_remaining, 1,
        "the refused requests took nothing"
    );
}

async fn shadow_mode_counts_and_never_refuses(b: Backend) {
    let mut c = client(&b);
    let r = request(vec![
        descriptor(&[("trial", "t1")]),
        descriptor(&[("user", "dave")]),
    ]);
    for i in 0..4u32 {
        let resp = ask(&mut c, r.clone()).await;
        assert!(!over(&resp), "shadow mode never refuses ({i})");
        assert_eq!(resp.statuses[0].code, Code::Ok as i32);
        assert_eq!(resp.statuses[0].limit_remaining, 2u32.saturating_sub(i + 1));
        assert_eq!(
            resp.statuses[1].limit_remaining,
            4 - i,
            "the real limit still counts"
        );
    }
}

async fn unknown_unlimited_and_zero(b: Backend) {
    let mut c = client(&b);
    let r = ask(
        &mut c,
        request(vec![
            descriptor(&[("nothing", "x")]),
            descriptor(&[("free", "x")]),
            descriptor(&[("user", "erin"), ("deeper", "x")]),
        ]),
    )
    .await;
    assert!(!over(&r));
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        vec![Code::Unknown as i32, Code::Ok as i32, Code::Unknown as i32]
    );
    assert_eq!(r.statuses[1].limit_remaining, u32::MAX, "unlimited");
    let banned = ask(
        &mut c,
        request(vec![descriptor(&[("remote_address", "10.0.0.66")])]),
    )
    .await;
    assert!(over(&banned), "a zero limit refuses everything");
    let other = ask(
        &mut c,
        request(vec![descriptor(&[("remote_address", "10.0.0.1")])]),
    )
    .await;
    assert_eq!(
        other.statuses[0].code,
        Code::Unknown as i32,
        "no default for remote_address"
    );
    let mut unknown_domain = request(vec![descriptor(&[("user", "erin")])]);
    unknown_domain.domain = "elsewhere".into();
    let r = ask(&mut c, unknown_domain).await;
    assert!(!over(&r));
    assert_eq!(r.statuses[0].code, Code::Unknown as i32);
}

async fn replaces_drops_the_replaced_rule(b: Backend) {
    let mut c = client(&b);
    let both = request(vec![
        descriptor(&[("category", "account")]),
        descriptor(&[("vip", "v1")]),
    ]);
    // `account` allows 1, but `vip` replaces it: 4 pass, and account is untouched.
    for _ in 0..4 {
        let r = ask(&mut c, both.clone()).await;
        assert!(!over(&r));
        assert!(r.statuses[0].current_limit.is_none(), "replaced");
    }
    assert!(over(&ask(&mut c, both).await));
    let alone = request(vec![descriptor(&[("category", "account")])]);
    assert!(
        !over(&ask(&mut c, alone.clone()).await),
        "its own budget is whole"
    );
    assert!(over(&ask(&mut c, alone).await));
}

async fn quota_mode_refuses_only_when_every_quota_is_over(b: Backend) {
    let mut c = client(&b);
    let r = request(vec![
        descriptor(&[("service", "s1")]),
        descriptor(&[("plan", "p1")]),
    ]);
    // service allows 1, plan 2: the request passes while either has room.
    for i in 0..2 {
        assert!(!over(&ask(&mut c, r.clone()).await), "request {i}");
    }
    let third = ask(&mut c, r.clone()).await;
    assert!(over(&third), "both quotas over");
    assert_eq!(third.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(third.statuses[1].code, Code::OverLimit as i32);
}

async fn hits_addend_and_limit_overrides(b: Backend) {
    let mut c = client(&b);
    let mut r = request(vec![descriptor(&[("user", "frank")])]);
    r.hits_addend = 3;
    let first = ask(&mut c, r.clone()).await;
    assert!(!over(&first));
    assert_eq!(first.statuses[0].limit_remaining, 2);
    assert!(
        over(&ask(&mut c, r.clone()).await),
        "3 more do not fit in 2"
    );
    // A descriptor's own hits_addend wins over the request's; 0 peeks.
    let mut d = descriptor(&[("user", "frank")]);
    d.hits_addend = Some(2);
    let mut two = request(vec![d.clone()]);
    two.hits_addend = 3;
    assert!(!over(&ask(&mut c, two).await));
    d.hits_addend = Some(0);
    let peek = ask(&mut c, request(vec![d])).await;
    assert!(!over(&peek));
    assert_eq!(peek.statuses[0].limit_remaining, 0);
    // A limit in the request replaces the configured one (and matches without a rule).
    let mut o = descriptor(&[("anything", "x")]);
    o.limit = Some(rate_limit_descriptor::RateLimitOverride {
        requests_per_unit: 2,
        unit: 5,
    });
    let o = request(vec![o]);
    assert!(!over(&ask(&mut c, o.clone()).await));
    let second = ask(&mut c, o.clone()).await;
    assert!(!over(&second));
    assert_eq!(
        second.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(2)
    );
    assert!(over(&ask(&mut c, o).await));
}

async fn algorithms_chosen_per_rule_are_exact(b: Backend) {
    let c = client(&b);
    for key in ["tokens", "paced", "smooth"] {
        let r = request(vec![descriptor(&[(key, "k")])]);
        assert_eq!(admitted(&c, &r, 130).await, 100, "{key}");
    }
}

async fn over_limit_cache_refuses_without_the_store(b: Backend) {
    let mut c = client(&b);
    let r = request(vec![descriptor(&[("user", "gina")])]);
    for _ in 0..5 {
        assert!(!over(&ask(&mut c, r.clone()).await));
    }
    assert!(
        over(&ask(&mut c, r.clone()).await),
        "the store refuses and the cache learns"
    );
    let Some(url) = b.redis_url.clone() else {
        // Memory store: refusals still refuse (the calls cannot be counted from outside).
        for _ in 0..10 {
            assert!(over(&ask(&mut c, r.clone()).await));
        }
        return;
    };
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let calls = |info: String| -> u64 {
        info.lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    for _ in 0..20 {
        let resp = ask(&mut c, r.clone()).await;
        assert!(over(&resp));
        assert_eq!(resp.statuses[0].limit_remaining, 0);
        assert!(resp.statuses[0].duration_until_reset.is_some());
    }
    let after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    assert_eq!(calls(after), calls(before), "20 refusals, no script call");
    // Another key is not affected.
    assert!(!over(
        &ask(&mut c, request(vec![descriptor(&[("user", "hank")])])).await
    ));
}

async fn bad_requests_are_invalid_arguments(b: Backend) {
    let mut c = client(&b);
    let mut no_domain = request(vec![descriptor(&[("user", "x")])]);
    no_domain.domain.clear();
    let no_descriptors = request(vec![]);
    let too_many = request((0..65).map(|_| descriptor(&[("user", "x")])).collect());
    let too_long = request(vec![descriptor(&[("user", &"x".repeat(2000))])]);
    for r in [no_domain, no_descriptors, too_many, too_long] {
        let e = c.should_rate_limit(r).await.expect_err("invalid");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    // Envoy sends a descriptor whose actions found nothing as an empty one: it matches no
    // rule, like an empty key (as in envoyproxy/ratelimit).
    let r = ask(
        &mut c,
        request(vec![
            descriptor(&[]),
            descriptor(&[("", "x")]),
            descriptor(&[("user", "ok")]),
        ]),
    )
    .await;
    assert!(!over(&r));
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        vec![Code::Unknown as i32, Code::Unknown as i32, Code::Ok as i32]
    );
}

/// A changed rules file takes effect without a restart; a broken one changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_change_and_a_broken_file_keeps_the_old_ones() {
    let path = write_rules(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: month, requests_per_unit: 1}\n",
    );
    let p = path.clone();
    let b = Backend::memory(move |c| {
        c.rls.config_path = Some(p);
        c.rls.reload_interval = PositiveDuration::new(Duration::from_millis(50)).expect("positive");
    })
    .await;
    let mut c = client(&b);
    let mut r = request(vec![descriptor(&[("k", "1")])]);
    r.domain = "d".into();
    assert!(!over(&ask(&mut c, r.clone()).await));
    assert!(over(&ask(&mut c, r.clone()).await));
    std::fs::write(
        &path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: month, requests_per_unit: 3}\n",
    )
    .expect("rewrite");
    let mut c2 = c.clone();
    let r2 = r.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let (mut c, r) = (c2.clone(), r2.clone());
            async move {
                let resp = ask(&mut c, r).await;
                resp.statuses[0]
                    .current_limit
                    .as_ref()
                    .is_some_and(|l| l.requests_per_unit == 3)
            }
        })
        .await,
        "the new limit applies"
    );
    std::fs::write(
        &path,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n",
    )
    .expect("break");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = ask(&mut c, r).await;
    assert_eq!(
        resp.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(3),
        "the broken file changed nothing"
    );
    let _ = &mut c2;
}

async fn one_counter_named_twice_counts_twice(b: Backend) {
    let mut c = client(&b);
    // The same descriptor twice in one request is one counter with both hits: 5 per user
    // admits two such requests (4 hits), not five.
    let twice = request(vec![
        descriptor(&[("user", "zed")]),
        descriptor(&[("user", "zed")]),
    ]);
    for remaining in [3, 1] {
        let r = ask(&mut c, twice.clone()).await;
        assert!(!over(&r));
        assert_eq!(r.statuses[0].limit_remaining, remaining);
        assert_eq!(r.statuses[1].limit_remaining, remaining);
    }
    assert!(over(&ask(&mut c, twice).await), "2 more do not fit in 1");
    let once = ask(&mut c, request(vec![descriptor(&[("user", "zed")])])).await;
    assert!(!over(&once), "1 still does");
}
