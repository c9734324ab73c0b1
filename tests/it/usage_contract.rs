//! The UsageService contract, through real gRPC calls, on every store: events recorded in
//! batches and queried back exactly per minute, hour, day and month; dimensions (filtered,
//! grouped, capped); distinct counts; top subjects; concurrent batches lose nothing; bounds;
//! every Redis key has a TTL.

use std::{
    collections::HashMap,
    num::{NonZeroU64, NonZeroUsize},
    time::Duration,
};

use crate::common::Backend;
use flowstate::{config::Config, proto::v1 as pb};
use pb::usage_service_client::UsageServiceClient;
use tonic::{Code, transport::Channel};

type Client = UsageServiceClient<Channel>;

contract_tests! {
    batches_query_back_exactly_at_every_granularity,
    dimensions_filter_group_and_are_capped with super::capped,
    distinct_counts,
    top_lists_the_highest_subjects,
    concurrent_batches_lose_nothing,
    bad_input_is_refused_whole with super::strict,
    usage_limits_read_recorded_usage with super::quotas,
    a_batch_sent_again_counts_once,
}

// Keys and their TTLs are Redis's: the memory store expires its buckets itself (the queries
// above read them back only within their retention).
contract_tests! {
    stores [
        keys_redis_store: redis,
        slow_keys_cluster_store: cluster,
        slow_keys_sentinel_store: sentinel,
    ]
    tests [every_key_expires]
}

fn quotas(c: &mut Config) {
    c.ratelimit.usage_limits.insert(
        "tokens_daily".into(),
        flowstate::config::UsageLimitConfig {
            metric: "llm_tokens".into(),
            limit: NonZeroU64::new(100).expect("non-zero"),
            window: flowstate::config::UsageWindow::Day,
            failure_mode: flowstate::ratelimit::FailureMode::Closed,
        },
    );
    c.ratelimit.limits.insert(
        "calls".into(),
        flowstate::config::LimitConfig {
            algorithm: flowstate::ratelimit::Algorithm::FixedWindow,
            limit: 1000,
            period: Duration::from_secs(30 * 86_400),
            burst: 0,
            failure_mode: flowstate::ratelimit::FailureMode::Closed,
        },
    );
}

fn capped(c: &mut Config) {
    c.usage.max_dimension_values = NonZeroUsize::new(3).expect("non-zero");
}

fn strict(c: &mut Config) {
    c.usage.allow_unknown_metrics = false;
    c.usage.metrics.insert(
        "llm_tokens".into(),
        flowstate::config::MetricConfig {
            dimensions: vec!["model".into()],
        },
    );
}

fn client(b: &Backend) -> Client {
    UsageServiceClient::new(b.server.channel.clone())
}

fn event(metric: &str, subject: &str, amount: i64, dims: &[(&str, &str)]) -> pb::UsageEvent {
    pb::UsageEvent {
        metric: metric.into(),
        subject: subject.into(),
        amount: Some(amount),
        dimensions: dims
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        unique: String::new(),
    }
}

async fn record(c: &mut Client, events: Vec<pb::UsageEvent>) {
    let n = events.len() as u32;
    let r = c
        .record(pb::RecordRequest {
            events,
            ..Default::default()
        })
        .await
        .expect("Record")
        .into_inner();
    assert_eq!(r.recorded, n);
}

fn ts(ms: i64) -> prost_types::Timestamp {
    flowstate::time::to_timestamp(ms)
}

/// The series of `metric` for `subject` over the last two hours (and up to an hour ahead, so a
/// store clock ahead of this process is covered) at `g`.
async fn query(
    c: &mut Client,
    metric: &str,
    subject: &str,
    g: pb::Granularity,
) -> pb::QueryResponse {
    query_with(c, metric, subject, g, |_| {}).await
}

async fn query_with(
    c: &mut Client,
    metric: &str,
    subject: &str,
    g: pb::Granularity,
    tweak: impl FnOnce(&mut pb::QueryRequest),
) -> pb::QueryResponse {
    let now = flowstate::time::now_ms();
    let (from, to) = match g {
        pb::Granularity::Minute => (now - 7_200_000, now + 3_600_000),
        pb::Granularity::Hour => (now - 7_200_000, now + 3_600_000),
        pb::Granularity::Day => (now - 2 * 86_400_000, now + 86_400_000),
        _ => (now - 62 * 86_400_000, now + 31 * 86_400_000),
    };
    let mut r = pb::QueryRequest {
        metric: metric.into(),
        subject: subject.into(),
        from: Some(ts(from)),
        to: Some(ts(to)),
        granularity: g as i32,
        ..Default::default()
    };
    tweak(&mut r);
    c.query(r).await.expect("Query").into_inner()
}

fn total(r: &pb::QueryResponse) -> i64 {
    assert_eq!(r.series.len(), 1);
    let s = &r.series[0];
    assert_eq!(s.points.iter().map(|p| p.value).sum::<i64>(), s.total);
    s.total
}

const GRANULARITIES: [pb::Granularity; 4] = [
    pb::Granularity::Minute,
    pb::Granularity::Hour,
    pb::Granularity::Day,
    pb::Granularity::Month,
];

async fn batches_query_back_exactly_at_every_granularity(b: Backend) {
    let mut c = client(&b);
    let mut want: HashMap<String, i64> = HashMap::new();
    for batch in 0..5 {
        let events: Vec<pb::UsageEvent> = (0..400)
            .map(|i| {
                let subject = format!("ws-{}", (i + batch) % 7);
                let amount = (i % 13 + 1) as i64;
                *want.entry(subject.clone()).or_default() += amount;
                event("llm_tokens", &subject, amount, &[])
            })
            .collect();
        record(&mut c, events).await;
    }
    // An event without an amount counts 1.
    let mut one = event("llm_tokens", "ws-0", 0, &[]);
    one.amount = None;
    record(&mut c, vec![one]).await;
    *want.entry("ws-0".into()).or_default() += 1;
    for (subject, expected) in &want {
        for g in GRANULARITIES {
            let r = query(&mut c, "llm_tokens", subject, g).await;
            assert_eq!(total(&r), *expected, "{subject} at {g:?}");
            let points = &r.series[0].points;
            // Every bucket of the range is there, in order, starts aligned.
            assert!(
                points
                    .windows(2)
                    .all(|w| w[0].start.as_ref().map(|t| t.seconds)
                        < w[1].start.as_ref().map(|t| t.seconds))
            );
        }
    }
    let none = query(&mut c, "llm_tokens", "nobody", pb::Granularity::Day).await;
    assert_eq!(total(&none), 0);
    let other_metric = query(&mut c, "api_calls", "ws-0", pb::Granularity::Day).await;
    assert_eq!(total(&other_metric), 0, "metrics are separate");
}

async fn dimensions_filter_group_and_are_capped(b: Backend) {
    let mut c = client(&b);
    let mut events = Vec::new();
    for (model, n) in [
        ("gpt-4o", 5),
        ("claude", 3),
        ("llama", 2),
        ("mistral", 7),
        ("phi", 1),
    ] {
        for _ in 0..n {
            events.push(event(
                "llm_tokens",
                "ws",
                10,
                &[("model", model), ("region", "eu")],
            ));
        }
    }
    record(&mut c, events).await;
    let all = query(&mut c, "llm_tokens", "ws", pb::Granularity::Hour).await;
    assert_eq!(total(&all), 180);
    let gpt = query_with(&mut c, "llm_tokens", "ws", pb::Granularity::Hour, |r| {
        r.dimensions.insert("model".into(), "gpt-4o".into());
    })
    .await;
    assert_eq!(total(&gpt), 50);
    let grouped = query_with(&mut c, "llm_tokens", "ws", pb::Granularity::Day, |r| {
        r.group_by = "model".into();
    })
    .await;
    let by: HashMap<&str, i64> = grouped
        .series
        .iter()
        .map(|s| (s.value.as_str(), s.total))
        .collect();
    // max_dimension_values = 3: with `region=eu` taking one of the 4 fields beside the total,
    // the first models recorded keep their own field and the rest count as `_other`.
    assert_eq!(by.values().sum::<i64>(), 180, "{by:?}");
    assert!(by.contains_key("_other"), "{by:?}");
    assert!(by.len() <= 4, "{by:?}");
}

async fn distinct_counts(b: Backend) {
    let mut c = client(&b);
    let events: Vec<pb::UsageEvent> = (0..300)
        .map(|i| {
            let mut e = event("active_users", "ws", 1, &[]);
            e.unique = format!("user-{}", i % 40);
            e
        })
        .collect();
    record(&mut c, events).await;
    for g in [
        pb::Granularity::Hour,
        pb::Granularity::Day,
        pb::Granularity::Month,
    ] {
        let r = query_with(&mut c, "active_users", "ws", g, |r| r.unique = true).await;
        let s = &r.series[0];
        assert!((39..=41).contains(&s.total), "{g:?}: {}", s.total);
    }
    let sum = query(&mut c, "active_users", "ws", pb::Granularity::Day).await;
    assert_eq!(total(&sum), 300, "amounts still sum");
}

async fn top_lists_the_highest_subjects(b: Backend) {
    let mut c = client(&b);
    let events: Vec<pb::UsageEvent> = (0..30)
        .flat_map(|i| {
            (0..3).map(move |_| event("campaigns", &format!("ws-{i:02}"), i as i64 * 10, &[]))
        })
        .collect();
    record(&mut c, events).await;
    for (window, g) in [
        (Duration::from_secs(3600), pb::Granularity::Unspecified),
        (Duration::from_secs(86_400), pb::Granularity::Hour),
        (Duration::from_secs(7 * 86_400), pb::Granularity::Day),
        (Duration::from_secs(40 * 86_400), pb::Granularity::Month),
    ] {
        let r = c
            .top(pb::TopRequest {
                metric: "campaigns".into(),
                window: Some(prost_types::Duration {
                    seconds: window.as_secs() as i64,
                    nanos: 0,
                }),
                n: 5,
                granularity: g as i32,
            })
            .await
            .expect("Top")
            .into_inner();
        let got: Vec<(String, i64)> = r
            .entries
            .into_iter()
            .map(|e| (e.subject, e.value))
            .collect();
        let want: Vec<(String, i64)> = (25..30)
            .rev()
            .map(|i| (format!("ws-{i:02}"), i as i64 * 30))
            .collect();
        assert_eq!(got, want, "{window:?} {g:?}");
        assert!(r.from.is_some() && r.to.is_some());
    }
    // Several buckets are summed (ZUNIONSTORE in the script): on Redis, put a subject into the
    // previous minute's top index by hand; a two-minute window sees it, a one-minute one not.
    let Some(url) = b.redis_url.clone() else {
        return;
    };
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut time: (String, String) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    let seconds = time.0.parse::<i64>().expect("seconds");
    if seconds % 60 > 55 {
        // Clear of a minute boundary between the seeding and the Top calls.
        tokio::time::sleep(Duration::from_secs((61 - seconds % 60) as u64)).await;
        time = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("TIME");
    }
    let minute = time.0.parse::<i64>().expect("seconds") / 60;
    // A metric of its own, seeded by hand in both minutes, so nothing recorded earlier (maybe in
    // another minute) takes part.
    let keys = flowstate::store::keys::Keys::new(&b.prefix);
    let tenant = flowstate::tenant::Tenant::default_tenant();
    let seed = |subject: &'static str, m: i64, amount: i64| {
        let base =
            keys.usage_top_base(&tenant, "union", flowstate::usage::keys::top_shard(subject));
        let mut conn = conn.clone();
        async move {
            let _: f64 = redis::cmd("ZINCRBY")
                .arg(format!("{base}m:{m}"))
                .arg(amount)
                .arg(subject)
                .query_async(&mut conn)
                .await
                .expect("ZINCRBY");
        }
    };
    seed("ws-late", minute - 1, 500).await;
    seed("ws-late", minute, 500).await;
    seed("ws-now", minute, 700).await;
    let top = |seconds: i64| {
        let mut c = c.clone();
        async move {
            c.top(pb::TopRequest {
                metric: "union".into(),
                window: Some(prost_types::Duration { seconds, nanos: 0 }),
                n: 1,
                granularity: pb::Granularity::Minute as i32,
            })
            .await
            .expect("Top")
            .into_inner()
            .entries
            .into_iter()
            .map(|e| (e.subject, e.value))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        top(120).await,
        vec![("ws-late".to_owned(), 1000)],
        "two minutes summed"
    );
    assert_eq!(
        top(60).await,
        vec![("ws-now".to_owned(), 700)],
        "the current minute only"
    );
}

async fn concurrent_batches_lose_nothing(b: Backend) {
    let c = client(&b);
    let tasks = (0..16).map(|t| {
        let mut c = c.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let events = (0..50)
                    .map(|i| event("api_calls", &format!("s{}", (i + t) % 4), 1, &[]))
                    .collect();
                record(&mut c, events).await;
            }
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.expect("task");
    }
    let mut c = c.clone();
    let mut sum = 0;
    for s in 0..4 {
        sum += total(&query(&mut c, "api_calls", &format!("s{s}"), pb::Granularity::Day).await);
    }
    assert_eq!(sum, 16 * 20 * 50);
}

async fn bad_input_is_refused_whole(b: Backend) {
    let mut c = client(&b);
    let invalid = |events: Vec<pb::UsageEvent>| pb::RecordRequest {
        events,
        ..Default::default()
    };
    let cases = vec![
        invalid(vec![]),
        invalid(vec![event("", "s", 1, &[])]),
        invalid(vec![event("not_configured", "s", 1, &[])]),
        invalid(vec![event("llm_tokens", "", 1, &[])]),
        invalid(vec![event("llm_tokens", &"x".repeat(300), 1, &[])]),
        invalid(vec![event("llm_tokens", "s", 1, &[("region", "eu")])]),
        invalid(vec![
            event("llm_tokens", "s", 1, &[]),
            event("llm_tokens", "s", 1, &[("model", "")]),
        ]),
        invalid(
            (0..10_001)
                .map(|_| event("llm_tokens", "s", 1, &[]))
                .collect(),
        ),
    ];
    for r in cases {
        let e = c.record(r).await.expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let day = query(&mut c, "llm_tokens", "s", pb::Granularity::Day).await;
    assert_eq!(total(&day), 0, "refused batches recorded nothing");
    let e = c
        .query(pb::QueryRequest {
            metric: "llm_tokens".into(),
            subject: "s".into(),
            from: Some(ts(0)),
            granularity: pb::Granularity::Minute as i32,
            ..Default::default()
        })
        .await
        .expect_err("too many buckets");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .query(pb::QueryRequest {
            metric: "llm_tokens".into(),
            subject: "s".into(),
            from: Some(ts(0)),
            ..Default::default()
        })
        .await
        .expect_err("no granularity");
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn every_key_expires(b: Backend) {
    let mut c = client(&b);
    let mut e = event("llm_tokens", "ws", 5, &[("model", "m")]);
    e.unique = "u1".into();
    record(&mut c, vec![e]).await;
    let keys = b.redis_keys().await;
    // 4 buckets, 3 distinct-count buckets, 4 top-index buckets.
    assert_eq!(keys.len(), 11, "{keys:?}");
    let ttls = b.key_ttls().await;
    assert_eq!(ttls.len(), keys.len());
    for (key, ttl) in ttls {
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

async fn usage_limits_read_recorded_usage(b: Backend) {
    use pb::rate_limit_service_client::RateLimitServiceClient;
    let mut u = client(&b);
    let mut r = RateLimitServiceClient::new(b.server.channel.clone());
    let named = |name: &str, key: &str| pb::LimitCheck {
        limit: Some(pb::limit_check::Limit::Name(name.into())),
        key: key.into(),
    };
    let check = |checks: Vec<pb::LimitCheck>, cost: u64| pb::CheckRequest {
        checks,
        cost: Some(cost),
        dry_run: false,
    };
    let first = r
        .check(check(vec![named("tokens_daily", "ws")], 30))
        .await
        .expect("check")
        .into_inner();
    assert!(first.allowed);
    assert_eq!(
        first.results[0].remaining, 100,
        "a usage limit consumes nothing"
    );
    record(&mut u, vec![event("llm_tokens", "ws", 80, &[])]).await;
    let over = r
        .check(check(vec![named("tokens_daily", "ws")], 30))
        .await
        .expect("check")
        .into_inner();
    assert!(!over.allowed);
    assert_eq!(over.results[0].remaining, 20);
    assert!(
        over.results[0]
            .retry_after
            .as_ref()
            .is_some_and(|d| d.seconds > 0 || d.nanos > 0)
    );
    assert!(
        r.check(check(vec![named("tokens_daily", "ws")], 20))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    // All or nothing: the usage limit refuses, the counter beside it consumes nothing.
    let both = r
        .check(check(
            vec![named("calls", "ws"), named("tokens_daily", "ws")],
            30,
        ))
        .await
        .expect("check")
        .into_inner();
    assert!(!both.allowed);
    assert!(both.results[0].allowed && !both.results[1].allowed);
    let calls = r
        .check(pb::CheckRequest {
            checks: vec![named("calls", "ws")],
            cost: Some(1),
            dry_run: true,
        })
        .await
        .expect("peek")
        .into_inner();
    // 1000 less the peeked cost of 1: the refused check took nothing.
    assert_eq!(calls.results[0].remaining, 999);
    // Another subject has its own usage.
    assert!(
        r.check(check(vec![named("tokens_daily", "other")], 100))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    let e = r
        .reset(pb::ResetRequest {
            limit: Some(pb::reset_request::Limit::Name("tokens_daily".into())),
            key: "ws".into(),
        })
        .await
        .expect_err("no counter");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = r
        .check(check(vec![named("tokens_daily", "ws")], 101))
        .await
        .expect_err("more than the limit");
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn a_batch_sent_again_counts_once(b: Backend) {
    let mut c = client(&b);
    let batch = |id: &str| pb::RecordRequest {
        events: (0..10)
            .map(|i| event("llm_tokens", &format!("ws-{}", i % 3), 5, &[]))
            .collect(),
        batch_id: id.into(),
    };
    for id in ["b-1", "b-1", "b-1", "b-2"] {
        let r = c.record(batch(id)).await.expect("Record").into_inner();
        assert_eq!(r.recorded, 10);
    }
    let mut sum = 0;
    for s in 0..3 {
        sum += total(
            &query(
                &mut c,
                "llm_tokens",
                &format!("ws-{s}"),
                pb::Granularity::Day,
            )
            .await,
        );
    }
    assert_eq!(sum, 2 * 50, "b-1 once, b-2 once");
    let e = c.record(batch("not a valid id")).await.expect_err("bad id");
    assert_eq!(e.code(), Code::InvalidArgument);
    let top = c
        .top(pb::TopRequest {
            metric: "llm_tokens".into(),
            window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            n: 3,
            granularity: 0,
        })
        .await
        .expect("Top")
        .into_inner();
    assert_eq!(
        top.entries.iter().map(|e| e.value).sum::<i64>(),
        100,
        "the top index too"
    );
}
