//! What callers and probes see when Redis dies, hangs, is missing at start, or comes back.
//! Each test owns its redis-server (it kills or pauses it), whatever FLOWSTATE_TEST_REDIS_URL says.

use std::{num::NonZeroUsize, time::Duration};

use crate::common::{RedisServer, TestServer, eventually, free_port, test_config};
use flowstate::{
    config::{Config, PositiveDuration},
    proto::v1 as pb,
};
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
    cfg.redis.command_timeout = PositiveDuration::new(Duration::from_secs(5)).expect("positive");
    cfg.server.request_timeout =
        PositiveDuration::new(Duration::from_millis(300)).expect("positive");
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
    cfg.server.max_concurrent_requests = NonZeroUsize::new(1).expect("non-zero");
    cfg.redis.command_timeout = PositiveDuration::new(command_timeout).expect("positive");
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
    cache
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "ns".into(),
            tags: vec!["gone".into()],
        })
        .await
        .expect("invalidate tags");
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

    // A lock with a holder and a waiter (all five of its keys), and a topic.
    let mut locks = pb::lock_service_client::LockServiceClient::new(server.channel.clone());
    let lock_req = |wait: i64| pb::AcquireLockRequest {
        name: "job".into(),
        ttl: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        wait: Some(prost_types::Duration {
            seconds: wait,
            nanos: 0,
        }),
        limit: 1,
        metadata: Default::default(),
    };
    assert!(
        locks
            .acquire(lock_req(0))
            .await
            .expect("acquire")
            .into_inner()
            .acquired
    );
    let mut waiter = locks.clone();
    let waiting = tokio::spawn(async move { waiter.acquire(lock_req(3)).await });
    assert!(
        crate::common::eventually(Duration::from_secs(2), || {
            let mut locks = locks.clone();
            async move {
                locks
                    .inspect(pb::InspectLockRequest { name: "job".into() })
                    .await
                    .is_ok_and(|r| r.into_inner().waiters == 1)
            }
        })
        .await
    );
    pb::event_service_client::EventServiceClient::new(server.channel.clone())
        .publish(pb::PublishRequest {
            topic: "campaign:1".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            key: String::new(),
        })
        .await
        .expect("publish");

    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    // Session hash and user index; cache entry, lease, tag index, tag mark, generations;
    // a counter; a lock's holdings, tokens, fence, queue and queue leases; a topic (and
    // flowstate's own cache topic, from the invalidations); flowstate's health probe key.
    for kind in [
        ":s:",
        ":u:",
        ":c:",
        ":cl:",
        ":ct:",
        ":ci:",
        ":cg:",
        ":rl:",
        "}:h",
        "}:m",
        "}:f",
        "}:q",
        "}:e",
        ":ev:{campaign:1}",
        ":ev:{flowstate.cache}",
        ":_:health",
    ] {
        assert!(
            keys.iter().any(|k| k.contains(kind)),
            "no {kind} key among {keys:?}"
        );
    }
    // Generations are one per bucket touched (64 for the invalidated namespace).
    let others: Vec<&String> = keys.iter().filter(|k| !k.contains(":cg:")).collect();
    assert_eq!(others.len(), 15, "{others:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    let _ = waiting.await;
}

/// A Redis that is demoted to a replica (a failover elsewhere) answers PING but refuses writes
/// with READONLY: readiness must turn NOT_SERVING, writes fail with UNAVAILABLE, and every
/// connection to it is replaced, so none is reused once a writable server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_redis_is_not_ready_and_its_connections_are_replaced() {
    let redis = RedisServer::start().await;
    let other = RedisServer::start().await;
    let server = TestServer::start(config(&redis.url())).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = server.sessions();
    create(&mut c, "u").await;
    let mut admin = redis.client().await;
    let before = flowstate_client_ids(&mut admin).await;
    assert!(!before.is_empty(), "flowstate holds connections");

    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other.port)
        .query_async(&mut admin)
        .await
        .expect("REPLICAOF");
    let err = c
        .create_session(create_req("u", Duration::from_secs(3)))
        .await
        .expect_err("a replica refuses writes");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        server
            .wait_health("readiness", ServingStatus::NotServing)
            .await,
        "readiness must follow the store's ability to take writes"
    );
    assert_eq!(server.health_status("").await, ServingStatus::Serving);

    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut admin)
        .await
        .expect("REPLICAOF NO ONE");
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    create(&mut c, "u").await;
    let after = flowstate_client_ids(&mut admin).await;
    let reused: Vec<_> = before.iter().filter(|id| after.contains(id)).collect();
    assert!(
        reused.is_empty(),
        "connections from before the demotion are still in use: {reused:?}"
    );
}

/// Client ids of every connection to this Redis except the caller's own.
async fn flowstate_client_ids(conn: &mut redis::aio::MultiplexedConnection) -> Vec<i64> {
    let own: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(conn)
        .await
        .expect("CLIENT ID");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != own)
        .collect()
}

/// `failure_mode = open` is for an unreachable store only: a store that answers with an error
/// (a script error, a wrong type, a CROSSSLOT) must not silently turn the limit off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_that_is_not_transient_never_fails_open() {
    use flowstate::{
        config::LimitConfig,
        ratelimit::{Algorithm, FailureMode},
    };
    use pb::{limit_check::Limit, rate_limit_service_client::RateLimitServiceClient};

    let redis = RedisServer::start().await;
    let mut cfg = config(&redis.url());
    cfg.ratelimit.limits.insert(
        "open".into(),
        LimitConfig {
            algorithm: Algorithm::FixedWindow,
            limit: 5,
            period: Duration::from_secs(3600),
            burst: 0,
            failure_mode: FailureMode::Open,
        },
    );
    let prefix = cfg.redis.key_prefix.clone();
    let server = TestServer::start(cfg).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = RateLimitServiceClient::new(server.channel.clone());
    let check = || pb::CheckRequest {
        checks: vec![pb::LimitCheck {
            limit: Some(Limit::Name("open".into())),
            key: "k".into(),
        }],
        cost: None,
        dry_run: false,
    };
    assert!(c.check(check()).await.expect("check").into_inner().allowed);
    let mut conn = redis.client().await;
    let counters: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:rl:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(counters.len(), 1, "{counters:?}");
    // The counter now holds a string: every script reading it fails with WRONGTYPE.
    let _: () = redis::cmd("SET")
        .arg(&counters[0])
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let err = c
        .check(check())
        .await
        .expect_err("a script error is an error, not an open limit");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
}

/// A wrong password is a configuration fault, not a passing state: limits with
/// `failure_mode = open` do not admit through it (the call is UNAVAILABLE, like every call),
/// and readiness is NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_never_fails_open() {
    use flowstate::{
        config::LimitConfig,
        ratelimit::{Algorithm, FailureMode},
    };
    use pb::{limit_check::Limit, rate_limit_service_client::RateLimitServiceClient};

    let redis = RedisServer::start().await;
    let (url, _admin) = acl_user(&redis).await;
    let mut cfg = config(&url.replace(":pw@", ":wrong@"));
    cfg.ratelimit.limits.insert(
        "open".into(),
        LimitConfig {
            algorithm: Algorithm::FixedWindow,
            limit: 5,
            period: Duration::from_secs(3600),
            burst: 0,
            failure_mode: FailureMode::Open,
        },
    );
    let server = TestServer::start(cfg).await;
    assert!(server.wait_health("", ServingStatus::Serving).await);
    let err = RateLimitServiceClient::new(server.channel.clone())
        .check(pb::CheckRequest {
            checks: vec![pb::LimitCheck {
                limit: Some(Limit::Name("open".into())),
                key: "k".into(),
            }],
            cost: None,
            dry_run: false,
        })
        .await
        .expect_err("the store refuses flowstate: not an open limit");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        server.health_status("readiness").await,
        ServingStatus::NotServing
    );
}

/// An ACL user for flowstate whose key permissions a test can narrow and widen while it runs,
/// so one step of a multi-step operation fails with NOPERM while the others succeed.
async fn acl_user(redis: &RedisServer) -> (String, redis::aio::MultiplexedConnection) {
    let mut admin = redis.client().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("fs")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    (format!("redis://fs:pw@127.0.0.1:{}", redis.port), admin)
}

/// Lets user `fs` touch only keys matching `patterns` (all keys when empty).
async fn allow_keys(admin: &mut redis::aio::MultiplexedConnection, patterns: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("fs").arg("resetkeys");
    if patterns.is_empty() {
        cmd.arg("~*");
    }
    for p in patterns {
        cmd.arg(format!("~{p}"));
    }
    let _: () = cmd.query_async(admin).await.expect("ACL SETUSER keys");
}

fn cache_set(
    key: &str,
    tags: &[&str],
    condition: pb::SetCondition,
    token: &str,
) -> pb::CacheSetRequest {
    pb::CacheSetRequest {
        namespace: "ns".into(),
        key: key.into(),
        value: bytes::Bytes::from_static(b"v"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        condition: condition.into(),
        lease_token: token.into(),
        ..Default::default()
    }
}

fn cache_get(key: &str, lease: bool) -> pb::CacheGetRequest {
    pb::CacheGetRequest {
        namespace: "ns".into(),
        key: key.into(),
        lease,
    }
}

/// InvalidateTags whose second step (deleting the entries) fails must leave every entry
/// findable, so a retry completes the work instead of answering 0 over live entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tags_failing_between_its_steps_can_be_completed() {
    use pb::cache_service_client::CacheServiceClient;
    let redis = RedisServer::start().await;
    let (url, mut admin) = acl_user(&redis).await;
    let server = TestServer::start(config(&url)).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = CacheServiceClient::new(server.channel.clone());
    for key in ["k1", "k2"] {
        let stored = c
            .set(cache_set(key, &["t"], pb::SetCondition::Always, ""))
            .await
            .expect("set")
            .into_inner()
            .stored;
        assert!(stored);
    }
    // Tag keys (and generations, health) allowed; cache entries not: step two fails.
    allow_keys(&mut admin, &["*:ct:*", "*:ci:*", "*:cg:*", "*:_:*"]).await;
    let err = c
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "ns".into(),
            tags: vec!["t".into()],
        })
        .await
        .expect_err("entries cannot be deleted");
    assert_ne!(err.code(), Code::Ok);
    allow_keys(&mut admin, &[]).await;
    c.invalidate_tags(pb::CacheInvalidateTagsRequest {
        namespace: "ns".into(),
        tags: vec!["t".into()],
    })
    .await
    .expect("the retry succeeds");
    for key in ["k1", "k2"] {
        let got = c
            .get(cache_get(key, false))
            .await
            .expect("get")
            .into_inner();
        assert!(!got.found, "{key} survived its tag's invalidation");
    }
}

/// A tagged Set whose tag listing fails must not leave a value served but unlisted: after the
/// failure, invalidating the tag leaves nothing behind (conditional and leased Sets alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_set_failing_midway_leaves_no_unlisted_value() {
    use pb::cache_service_client::CacheServiceClient;
    let redis = RedisServer::start().await;
    let (url, mut admin) = acl_user(&redis).await;
    let server = TestServer::start(config(&url)).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = CacheServiceClient::new(server.channel.clone());
    let token = c
        .get(cache_get("leased", true))
        .await
        .expect("lease")
        .into_inner()
        .lease_token;
    assert!(!token.is_empty());
    // Entries, leases, generations and health allowed; tag keys not.
    allow_keys(&mut admin, &["*:c:*", "*:cl:*", "*:cg:*", "*:_:*"]).await;
    let attempts = [
        cache_set("cond", &["t"], pb::SetCondition::IfAbsent, ""),
        cache_set("leased", &["t"], pb::SetCondition::Always, &token),
        cache_set("plain", &["t"], pb::SetCondition::Always, ""),
    ];
    for set in attempts {
        let key = set.key.clone();
        let result = c.set(set).await;
        assert!(
            result.is_err(),
            "{key}: the tag listing failed, so must the Set: {result:?}"
        );
    }
    allow_keys(&mut admin, &[]).await;
    c.invalidate_tags(pb::CacheInvalidateTagsRequest {
        namespace: "ns".into(),
        tags: vec!["t".into()],
    })
    .await
    .expect("invalidate");
    for key in ["cond", "leased", "plain"] {
        let got = c
            .get(cache_get(key, false))
            .await
            .expect("get")
            .into_inner();
        assert!(!got.found, "{key}: served, but not listed under its tag");
    }
}

/// Namespace generation counters lost from Redis (evicted, flushed by hand) must cause misses,
/// never bring back entries of an older generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_generation_counter_causes_misses_not_old_entries() {
    use pb::cache_service_client::CacheServiceClient;
    let redis = RedisServer::start().await;
    let cfg = config(&redis.url());
    let prefix = cfg.redis.key_prefix.clone();
    let server = TestServer::start(cfg).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let mut c = CacheServiceClient::new(server.channel.clone());
    let found = |c: &mut CacheServiceClient<Channel>| {
        let mut c = c.clone();
        async move {
            let r = c
                .get(cache_get("k", false))
                .await
                .expect("get")
                .into_inner();
            r.found.then_some(r.value)
        }
    };
    c.set(cache_set("k", &[], pb::SetCondition::Always, ""))
        .await
        .expect("set old");
    c.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "ns".into(),
    })
    .await
    .expect("invalidate");
    assert_eq!(found(&mut c).await, None, "invalidated");
    let mut conn = redis.client().await;
    let generations: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:cg:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    // Every bucket has a generation now (InvalidateNamespace renews them all); lose them all.
    assert_eq!(generations.len(), 64, "{generations:?}");
    let _: () = redis::cmd("DEL")
        .arg(&generations)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(
        found(&mut c).await,
        None,
        "an invalidated entry came back after its generation counter was lost"
    );
    let mut fresh = cache_set("k", &[], pb::SetCondition::Always, "");
    fresh.value = bytes::Bytes::from_static(b"new");
    c.set(fresh).await.expect("set new");
    assert_eq!(found(&mut c).await.as_deref(), Some(&b"new"[..]));
}

/// Probes and reflection are never shed: with the concurrency limit reached by real work,
/// every health check answers SERVING and grpcurl-style reflection still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_while_load_is_shed() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let redis = RedisServer::start().await;
    let mut cfg = config(&redis.url());
    cfg.server.max_concurrent_requests = NonZeroUsize::new(2).expect("non-zero");
    let server = TestServer::start(cfg).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for i in 0..32 {
        let mut c = server.sessions();
        let (stop, shed) = (stop.clone(), shed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = c
                    .create_session(create_req(&format!("u{i}"), Duration::from_secs(5)))
                    .await
                    && e.code() == Code::ResourceExhausted
                {
                    shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let shed = shed.clone();
            async move { shed.load(std::sync::atomic::Ordering::Relaxed) > 0 }
        })
        .await,
        "the load never reached the concurrency limit"
    );
    let shed_before = shed.load(std::sync::atomic::Ordering::Relaxed);
    let mut serving = 0;
    for i in 0..20 {
        let service = if i % 2 == 0 { "" } else { "readiness" };
        let answer = server
            .health()
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await;
        match answer {
            Ok(r) if r.get_ref().status() == ServingStatus::Serving => serving += 1,
            other => eprintln!("health check {i} ({service:?}): {other:?}"),
        }
    }
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    for _ in 0..5 {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection is not shed")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("reflection answers")
            .expect("one reply");
        assert!(reply.message_response.is_some());
    }
    let shed_during = shed.load(std::sync::atomic::Ordering::Relaxed) - shed_before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert!(shed_during > 0, "load was not being shed during the probes");
    assert_eq!(
        serving, 20,
        "health checks answered SERVING while load was shed"
    );
}
