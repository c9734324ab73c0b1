//! What callers and probes see when Redis dies, hangs, is missing at start, or comes back.
//! Each test owns its redis-server (it kills or pauses it), whatever FLOWSTATE_TEST_REDIS_URL says.

mod common;

use std::time::Duration;

use common::{RedisServer, TestServer, eventually, free_port, test_config};
use flowstate::{config::Config, proto::v1 as pb};
use pb::session_service_client::SessionServiceClient;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

type Client = SessionServiceClient<Channel>;

fn config(redis_url: &str) -> Config {
    let mut c = test_config();
    c.redis.url = Some(redis_url.to_owned());
    c
}

/// A GetSession with an explicit deadline (sent as grpc-timeout).
fn get_req(id: &str, deadline: Duration) -> Request<pb::GetSessionRequest> {
    let mut r = Request::new(pb::GetSessionRequest {
        id: id.to_owned(),
        touch: false,
    });
    r.set_timeout(deadline);
    r
}

fn create_req(user: &str, deadline: Duration) -> Request<pb::CreateSessionRequest> {
    let mut r = Request::new(pb::CreateSessionRequest {
        user_id: user.to_owned(),
        ..Default::default()
    });
    r.set_timeout(deadline);
    r
}

async fn create(c: &mut Client, user: &str) -> pb::Session {
    c.create_session(create_req(user, Duration::from_secs(5)))
        .await
        .expect("create")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(config(&redis.url())).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = server.sessions();
    let s = create(&mut c, "u").await;

    redis.kill();
    // Calls fail with UNAVAILABLE well before their 3 s deadline (a DEADLINE_EXCEEDED here
    // would mean a call waited out the deadline instead of failing fast).
    for _ in 0..3 {
        let err = c
            .get_session(get_req(&s.id, Duration::from_secs(3)))
            .await
            .expect_err("Redis is down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let err = c
            .create_session(create_req("u", Duration::from_secs(3)))
            .await
            .expect_err("Redis is down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    assert!(
        server
            .wait_health("readiness", ServingStatus::NotServing)
            .await,
        "readiness must turn NOT_SERVING"
    );
    assert_eq!(
        server.health_status("flowstate.v1.SessionService").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        server.health_status("").await,
        ServingStatus::Serving,
        "liveness stays SERVING: restarting flowstate would not bring Redis back"
    );

    redis.restart().await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await,
        "readiness must return without a flowstate restart"
    );
    let fresh = create(&mut c, "u").await;
    c.get_session(get_req(&fresh.id, Duration::from_secs(3)))
        .await
        .expect("calls work again");
    // This test's Redis keeps nothing on disk, so the old session is gone: NOT_FOUND, not an error.
    let err = c
        .get_session(get_req(&s.id, Duration::from_secs(3)))
        .await
        .expect_err("lost with the old Redis");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_then_appears() {
    let port = free_port();
    let server = TestServer::start(config(&format!("redis://127.0.0.1:{port}"))).await;
    // The server is up (liveness) but not ready, and says so instead of hanging callers.
    assert!(server.wait_health("", ServingStatus::Serving).await);
    assert_eq!(
        server.health_status("readiness").await,
        ServingStatus::NotServing
    );
    let mut c = server.sessions();
    let err = c
        .create_session(create_req("u", Duration::from_secs(3)))
        .await
        .expect_err("no Redis yet");
    assert_eq!(err.code(), Code::Unavailable);

    let _redis = RedisServer::start_on(port).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await,
        "readiness must follow Redis appearing"
    );
    let s = create(&mut c, "u").await;
    c.get_session(get_req(&s.id, Duration::from_secs(3)))
        .await
        .expect("works once Redis is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_times_out_as_unavailable_and_recovers() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(config(&redis.url())).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = server.sessions();
    let s = create(&mut c, "u").await;

    redis.pause(true);
    // command_timeout is 500 ms; the 5 s deadline is never reached.
    let err = c
        .get_session(get_req(&s.id, Duration::from_secs(5)))
        .await
        .expect_err("Redis hangs");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        server
            .wait_health("readiness", ServingStatus::NotServing)
            .await
    );

    redis.pause(false);
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let got = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        let id = s.id.clone();
        async move {
            c.get_session(get_req(&id, Duration::from_secs(3)))
                .await
                .is_ok()
        }
    })
    .await;
    assert!(got, "the session is readable again after Redis resumes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_deadline_answers_deadline_exceeded() {
    // The client's own deadline would fire on the client side (CANCELLED); the server's cap
    // (server.request_timeout) is what this checks: a proper DEADLINE_EXCEEDED status, sent
    // before the much longer store timeout.
    let redis = RedisServer::start().await;
    let mut cfg = config(&redis.url());
    cfg.redis.command_timeout = Duration::from_secs(5);
    cfg.server.request_timeout = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = server.sessions();
    let s = create(&mut c, "u").await;

    redis.pause(true);
    let err = c
        .get_session(get_req(&s.id, Duration::from_secs(4)))
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    redis.pause(false);
}

/// Starts a call that hangs on a paused Redis and returns once the server has it in flight,
/// seen by the one concurrency slot being taken: another call gets RESOURCE_EXHAUSTED while the
/// first is still running. The probe itself may win the race for the slot (both go out on one
/// connection); then the first call is the one shed, and the attempt is made again.
async fn occupy_the_only_slot(
    server: &TestServer,
    id: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::Session>, tonic::Status>> {
    let c = server.sessions();
    for _ in 0..10 {
        let hanging = {
            let mut c = c.clone();
            let id = id.to_owned();
            tokio::spawn(async move { c.get_session(get_req(&id, Duration::from_secs(10))).await })
        };
        while !hanging.is_finished() {
            let probe = c
                .clone()
                .get_session(get_req(id, Duration::from_millis(500)))
                .await;
            if matches!(&probe, Err(e) if e.code() == Code::ResourceExhausted)
                && !hanging.is_finished()
            {
                return hanging;
            }
        }
    }
    panic!("never saw a second call shed with RESOURCE_EXHAUSTED while one was in flight");
}

/// A Redis, a ready flowstate with one concurrency slot and `command_timeout`, and a session.
async fn one_slot_server(command_timeout: Duration) -> (RedisServer, TestServer, pb::Session) {
    let redis = RedisServer::start().await;
    let mut cfg = config(&redis.url());
    cfg.server.max_concurrent_requests = 1;
    cfg.redis.command_timeout = command_timeout;
    cfg.server.shutdown_grace = Duration::from_secs(10);
    let server = TestServer::start(cfg).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let s = create(&mut server.sessions(), "u").await;
    (redis, server, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_beyond_the_concurrency_limit_is_shed() {
    let (redis, server, s) = one_slot_server(Duration::from_secs(3)).await;
    redis.pause(true);
    let hanging = occupy_the_only_slot(&server, &s.id).await;
    redis.pause(false);
    hanging
        .await
        .expect("task")
        .expect("the call in flight completes once Redis resumes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_calls_in_flight() {
    let (redis, server, s) = one_slot_server(Duration::from_secs(8)).await;
    redis.pause(true);
    let hanging = occupy_the_only_slot(&server, &s.id).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    // Shutdown has begun once new connections get no answer; the call in flight is still
    // waiting on the paused Redis.
    let refused = eventually(Duration::from_secs(4), || async move {
        !fresh_connection_answers(addr).await
    })
    .await;
    assert!(
        refused,
        "new connections must not be served after shutdown begins"
    );
    assert!(
        !hanging.is_finished(),
        "the call in flight must still be running"
    );
    redis.pause(false);
    let answer = hanging.await.expect("task");
    assert!(
        answer.is_ok(),
        "the call in flight finished normally during the drain: {answer:?}"
    );
    stopping
        .await
        .expect("task")
        .expect("run() returns cleanly after draining");
}

/// Whether a brand-new connection gets a health answer within 300 ms.
async fn fresh_connection_answers(addr: std::net::SocketAddr) -> bool {
    let attempt = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(300), attempt).await,
        Ok(Some(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_flowstate_restart() {
    let redis = RedisServer::start().await;
    let cfg = config(&redis.url());
    let first = TestServer::start(cfg.clone()).await;
    assert!(first.wait_health("readiness", ServingStatus::Serving).await);
    let mut c = first.sessions();
    let s = c
        .create_session(pb::CreateSessionRequest {
            user_id: "u".into(),
            data: [("k".to_owned(), bytes::Bytes::from_static(b"v"))].into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    first.stop().await.expect("clean stop");

    let second = TestServer::start(cfg).await;
    assert!(
        second
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let got = second
        .sessions()
        .get_session(get_req(&s.id, Duration::from_secs(3)))
        .await
        .expect("session survives")
        .into_inner();
    assert_eq!(got.data["k"].as_ref(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_failure_modes_when_redis_is_down() {
    use flowstate::{
        config::LimitConfig,
        ratelimit::{Algorithm, FailureMode},
    };
    use pb::{limit_check::Limit, rate_limit_service_client::RateLimitServiceClient};

    let mut redis = RedisServer::start().await;
    let mut cfg = config(&redis.url());
    for (name, failure_mode) in [("open", FailureMode::Open), ("closed", FailureMode::Closed)] {
        cfg.ratelimit.limits.insert(
            name.into(),
            LimitConfig {
                algorithm: Algorithm::SlidingWindow,
                limit: 1,
                period: Duration::from_secs(3600),
                burst: 0,
                failure_mode,
            },
        );
    }
    let server = TestServer::start(cfg).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = RateLimitServiceClient::new(server.channel.clone());
    let check = |names: &[&str]| {
        let mut r = Request::new(pb::CheckRequest {
            checks: names
                .iter()
                .map(|n| pb::LimitCheck {
                    limit: Some(Limit::Name((*n).into())),
                    key: "k".into(),
                })
                .collect(),
            cost: None,
            dry_run: false,
        });
        r.set_timeout(Duration::from_secs(3));
        r
    };
    // Use up both limits while Redis is there: enforced denials.
    assert!(
        c.check(check(&["open", "closed"]))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    let denied = c.check(check(&["open"])).await.expect("check").into_inner();
    assert!(!denied.allowed && denied.results[0].enforced);

    redis.kill();
    let open = c
        .check(check(&["open"]))
        .await
        .expect("fails open")
        .into_inner();
    assert!(open.allowed, "OPEN allows when the store is down");
    assert!(
        !open.results[0].enforced,
        "and says the result was not enforced"
    );
    for names in [&["closed"][..], &["open", "closed"][..]] {
        let err = c.check(check(names)).await.expect_err("fails closed");
        assert_eq!(err.code(), Code::Unavailable, "{names:?}: {err:?}");
    }

    redis.restart().await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let back = c
        .check(check(&["closed"]))
        .await
        .expect("check")
        .into_inner();
    assert!(
        back.allowed && back.results[0].enforced,
        "enforced again (fresh Redis)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_calls_fail_fast_when_redis_is_down() {
    use pb::cache_service_client::CacheServiceClient;
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(config(&redis.url())).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = CacheServiceClient::new(server.channel.clone());
    let get = || {
        let mut r = Request::new(pb::CacheGetRequest {
            namespace: "ns".into(),
            key: "k".into(),
            lease: true,
        });
        r.set_timeout(Duration::from_secs(3));
        r
    };
    assert!(!c.get(get()).await.expect("get").into_inner().found);
    redis.kill();
    let err = c.get(get()).await.expect_err("Redis is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    redis.restart().await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    assert!(
        !c.get(get())
            .await
            .expect("works again")
            .into_inner()
            .lease_token
            .is_empty(),
        "a fresh Redis grants the lease again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_invalidation_reaches_every_replica() {
    use pb::cache_service_client::CacheServiceClient;
    let redis = RedisServer::start().await;
    let cfg = config(&redis.url());
    let a = TestServer::start(cfg.clone()).await;
    let b = TestServer::start(cfg).await;
    let mut ca = CacheServiceClient::new(a.channel.clone());
    let mut cb = CacheServiceClient::new(b.channel.clone());
    let set = pb::CacheSetRequest {
        namespace: "ns".into(),
        key: "k".into(),
        value: bytes::Bytes::from_static(b"v"),
        ..Default::default()
    };
    let get = pb::CacheGetRequest {
        namespace: "ns".into(),
        key: "k".into(),
        lease: false,
    };
    ca.set(set.clone()).await.expect("set via a");
    assert!(ca.get(get.clone()).await.expect("get").into_inner().found);
    assert!(
        cb.get(get.clone()).await.expect("get").into_inner().found,
        "replicas share Redis"
    );
    // Replica b invalidates; replica a, which last saw the old generation, must not serve it.
    cb.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "ns".into(),
    })
    .await
    .expect("invalidate via b");
    assert!(!ca.get(get.clone()).await.expect("get").into_inner().found);
    ca.set(set).await.expect("set via a, new generation");
    assert!(cb.get(get).await.expect("get").into_inner().found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_flowstate_writes_has_a_ttl() {
    use pb::{
        cache_service_client::CacheServiceClient, limit_check::Limit,
        rate_limit_service_client::RateLimitServiceClient,
    };
    let redis = RedisServer::start().await;
    let server = TestServer::start(config(&redis.url())).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    create(&mut server.sessions(), "u").await;
    let mut cache = CacheServiceClient::new(server.channel.clone());
    cache
        .set(pb::CacheSetRequest {
            namespace: "ns".into(),
            key: "k".into(),
            value: bytes::Bytes::from_static(b"v"),
            tags: vec!["t".into()],
            ..Default::default()
        })
        .await
        .expect("set");
    cache
        .get(pb::CacheGetRequest {
            namespace: "ns".into(),
            key: "leased".into(),
            lease: true,
        })
        .await
        .expect("lease");
    cache
        .invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
            namespace: "other".into(),
        })
        .await
        .expect("invalidate");
    RateLimitServiceClient::new(server.channel.clone())
        .check(pb::CheckRequest {
            checks: vec![pb::LimitCheck {
                limit: Some(Limit::Policy(pb::LimitPolicy {
                    algorithm: pb::Algorithm::SlidingWindow as i32,
                    limit: 5,
                    period: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    burst: 0,
                    failure_mode: 0,
                })),
                key: "user".into(),
            }],
            cost: None,
            dry_run: false,
        })
        .await
        .expect("check");

    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    // Session hash + user index, cache entry + tag index + lease hash + generation, counter.
    assert_eq!(keys.len(), 7, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}
