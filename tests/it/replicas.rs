//! flowstate in its real shape: several replica processes on one Redis, one of them with its
//! clock shifted by libfaketime (Debian's `faketime` package). The store's clock must decide
//! every window, refill, TTL, lease and session expiry, so a replica's clock changes nothing.
//!
//! Each replica is the `flowstate` binary of this build, started as a child process on an
//! ephemeral port; the test talks to both over gRPC and alternates its calls between them.

use std::time::{Duration, Instant};

use crate::common::{RedisServer, process::Process, unique_prefix};
use bytes::Bytes;
use flowstate::proto::v1 as pb;
use pb::{
    cache_service_client::CacheServiceClient, rate_limit_service_client::RateLimitServiceClient,
    session_service_client::SessionServiceClient,
};
use tonic::transport::Channel;

/// A flowstate replica on the test's Redis and key prefix, killed on drop.
struct Replica(Process);

impl Replica {
    /// Starts the binary against `redis_url`, its wall clock shifted by `skew_ms`.
    async fn start(redis_url: &str, prefix: &str, skew_ms: i64, tweak: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("FLOWSTATE_REDIS__URL", redis_url),
            ("FLOWSTATE_REDIS__KEY_PREFIX", prefix),
            ("FLOWSTATE_CACHE__LEASE_TTL", "1s"),
        ];
        env.extend_from_slice(tweak);
        Self(Process::start(&env, skew_ms).await)
    }

    fn ratelimit(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.0.channel.clone())
    }

    fn cache(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.0.channel.clone())
    }

    fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.0.channel.clone())
    }
}

/// Redis's clock in ms (`TIME`), the one clock every decision must follow.
async fn redis_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

fn ms(d: &Option<prost_types::Duration>) -> i64 {
    d.as_ref()
        .map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

fn dur(millis: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(Duration::from_millis(millis)).expect("duration"))
}

const ALGORITHMS: [(pb::Algorithm, &str); 4] = [
    (pb::Algorithm::FixedWindow, "fixed_window"),
    (pb::Algorithm::SlidingWindow, "sliding_window"),
    (pb::Algorithm::TokenBucket, "token_bucket"),
    (pb::Algorithm::Gcra, "gcra"),
];

/// Inline limit of the runs: 10 per second.
const LIMIT: u64 = 10;
const PERIOD_MS: i64 = 1000;

/// The most an exact limiter may admit between store times `start` and `end`: the limit per
/// calendar window touched for the window algorithms; the bucket plus the refill for the others.
fn exact_bound(algorithm: pb::Algorithm, start: i64, end: i64) -> u64 {
    match algorithm {
        pb::Algorithm::FixedWindow | pb::Algorithm::SlidingWindow => {
            LIMIT * (end.div_euclid(PERIOD_MS) - start.div_euclid(PERIOD_MS) + 1) as u64
        }
        _ => LIMIT + (LIMIT as i64 * (end - start) / PERIOD_MS) as u64,
    }
}

/// Checks alternating between the replicas for `run`, one key per algorithm; returns the
/// admissions per algorithm and the store-clock interval that contains every check.
async fn alternate_checks(
    replicas: &[Replica],
    redis: &RedisServer,
    run: Duration,
) -> ([u64; 4], i64, i64) {
    let mut conn = redis.client().await;
    let start = redis_ms(&mut conn).await;
    let mut tasks = Vec::new();
    for (i, (algorithm, name)) in ALGORITHMS.into_iter().enumerate() {
        let clients: Vec<_> = replicas.iter().map(Replica::ratelimit).collect();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            let began = Instant::now();
            let mut n = 0usize;
            while began.elapsed() < run {
                let mut c = clients[n % clients.len()].clone();
                n += 1;
                let reply = c
                    .check(pb::CheckRequest {
                        checks: vec![pb::LimitCheck {
                            key: format!("skew-{name}"),
                            limit: Some(pb::limit_check::Limit::Policy(pb::LimitPolicy {
                                algorithm: algorithm.into(),
                                limit: LIMIT,
                                period: dur(PERIOD_MS as u64),
                                ..Default::default()
                            })),
                        }],
                        ..Default::default()
                    })
                    .await
                    .expect("check")
                    .into_inner();
                if reply.allowed {
                    admitted += 1;
                }
            }
            (i, admitted)
        }));
    }
    let mut admitted = [0u64; 4];
    for t in tasks {
        let (i, n) = t.await.expect("checker");
        admitted[i] = n;
    }
    let end = redis_ms(&mut conn).await;
    (admitted, start, end)
}

/// Rate limits stay within their exact bound whatever the replicas' clocks say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_with_skewed_replica_clocks() {
    let redis = RedisServer::start().await;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for skew_ms in [0, 20, 300, 1000] {
        let prefix = unique_prefix();
        let a = Replica::start(&redis.url(), &prefix, 0, &[]).await;
        let b = Replica::start(&redis.url(), &prefix, skew_ms, &[]).await;
        let (admitted, start, end) =
            alternate_checks(&[a, b], &redis, Duration::from_millis(2500)).await;
        let mut row = format!("| {skew_ms} ms |");
        for (i, (algorithm, name)) in ALGORITHMS.into_iter().enumerate() {
            let bound = exact_bound(algorithm, start, end);
            row.push_str(&format!(" {} / {bound} |", admitted[i]));
            if admitted[i] > bound {
                failures.push(format!(
                    "{name} admitted {} > exact bound {bound} with a {skew_ms} ms skew",
                    admitted[i]
                ));
            }
            if admitted[i] < LIMIT {
                failures.push(format!(
                    "{name} admitted only {} with a {skew_ms} ms skew: the limiter is not working",
                    admitted[i]
                ));
            }
        }
        rows.push(row);
    }
    eprintln!(
        "| skew | fixed_window | sliding_window | token_bucket | gcra | (admitted / exact bound)"
    );
    for row in &rows {
        eprintln!("{row}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Cache TTLs, leases and session expiry follow the store's clock: a replica ahead or behind
/// writes entries that live exactly their TTL, sees the other replica's lease, and agrees on
/// when a session dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_leases_and_sessions_hold_with_skewed_replica_clocks() {
    let redis = RedisServer::start().await;
    for skew_ms in [20, 300, 1000, -10_000] {
        let prefix = unique_prefix();
        let a = Replica::start(&redis.url(), &prefix, 0, &[]).await;
        let b = Replica::start(&redis.url(), &prefix, skew_ms, &[]).await;
        let (mut ca, mut cb) = (a.cache(), b.cache());

        // A Set through the skewed replica lives its TTL, seen from the other one.
        let stored = cb
            .set(pb::CacheSetRequest {
                namespace: "skew".into(),
                key: "k".into(),
                value: Bytes::from_static(b"v"),
                ttl: dur(5000),
                ..Default::default()
            })
            .await
            .expect("set")
            .into_inner()
            .stored;
        assert!(stored, "skew {skew_ms}");
        let got = ca
            .get(pb::CacheGetRequest {
                namespace: "skew".into(),
                key: "k".into(),
                lease: false,
            })
            .await
            .expect("get")
            .into_inner();
        assert!(
            got.found && !got.stale,
            "skew {skew_ms}: the entry must be there: {got:?}"
        );
        let left = ms(&got.ttl_remaining);
        assert!(
            (3000..=5000).contains(&left),
            "skew {skew_ms}: ttl_remaining {left} ms of a 5 s TTL just set"
        );

        // A lease granted through one replica is held for the other.
        let first = ca
            .get(pb::CacheGetRequest {
                namespace: "skew".into(),
                key: "leased".into(),
                lease: true,
            })
            .await
            .expect("get")
            .into_inner();
        assert!(
            !first.lease_token.is_empty(),
            "skew {skew_ms}: miss grants a lease"
        );
        let second = cb
            .get(pb::CacheGetRequest {
                namespace: "skew".into(),
                key: "leased".into(),
                lease: true,
            })
            .await
            .expect("get")
            .into_inner();
        assert!(
            second.lease_token.is_empty() && second.lease_wait,
            "skew {skew_ms}: the other replica must see the lease as held: {second:?}"
        );

        // A session created on one replica with a 2 s idle timeout is live on the other, and
        // both report the same timestamps (the store's).
        let (mut sa, mut sb) = (a.sessions(), b.sessions());
        let created = sa
            .create_session(pb::CreateSessionRequest {
                user_id: "u".into(),
                idle_timeout: dur(2000),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        let seen = sb
            .get_session(pb::GetSessionRequest {
                id: created.id.clone(),
                touch: false,
            })
            .await
            .unwrap_or_else(|e| panic!("skew {skew_ms}: session must be live on B: {e:?}"))
            .into_inner();
        assert_eq!(seen.expires_at, created.expires_at, "skew {skew_ms}");
        // Created through the skewed replica: its timestamps are still the store's.
        let on_b = sb
            .create_session(pb::CreateSessionRequest {
                user_id: "u".into(),
                idle_timeout: dur(2000),
                ..Default::default()
            })
            .await
            .expect("create on b")
            .into_inner();
        let ts = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        };
        let drift = (ts(&on_b.created_at) - ts(&created.created_at)).abs();
        assert!(
            drift < 1000.min(skew_ms.abs()).max(150),
            "skew {skew_ms}: created_at differs by {drift} ms between replicas"
        );
        // Touch through the skewed replica slides the expiry by the idle timeout from the
        // store's now, never from the replica's.
        let touched = sb
            .touch_session(pb::TouchSessionRequest {
                id: created.id.clone(),
            })
            .await
            .expect("touch")
            .into_inner();
        let slide = ts(&touched.expires_at) - ts(&created.expires_at);
        assert!(
            (0..1000).contains(&slide),
            "skew {skew_ms}: a touch moved the expiry by {slide} ms"
        );
    }
}
