//! Passwords in cluster and sentinel mode: every node (and every sentinel) of these tests'
//! topologies requires one. With it flowstate serves every service; without it, or with a
//! wrong one, readiness stays NOT_SERVING and calls fail with UNAVAILABLE at once (a refused
//! password is a configuration fault: it is not retried as if a failover were under way).

use std::time::{Duration, Instant};

use crate::common::{
    TestServer, test_config,
    topology::{Cluster, MASTER_NAME, Sentinel},
};
use bytes::Bytes;
use flowstate::{
    config::{Config, RedisMode},
    proto::v1::{
        self as pb, cache_service_client::CacheServiceClient, limit_check::Limit,
        rate_limit_service_client::RateLimitServiceClient,
    },
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const SECRET: &str = "topology-s3cret";

/// Every service works through `config`.
async fn serves(config: Config) {
    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let created = server
        .sessions()
        .create_session(pb::CreateSessionRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("create a session")
        .into_inner();
    server
        .sessions()
        .get_session(pb::GetSessionRequest {
            id: created.id,
            touch: false,
        })
        .await
        .expect("read it back");
    let mut cache = CacheServiceClient::new(server.channel.clone());
    cache
        .set(pb::CacheSetRequest {
            namespace: "ns".into(),
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            tags: vec!["t".into()],
            ..Default::default()
        })
        .await
        .expect("set");
    assert!(
        cache
            .get(pb::CacheGetRequest {
                namespace: "ns".into(),
                key: "k".into(),
                lease: false,
            })
            .await
            .expect("get")
            .into_inner()
            .found
    );
    let inline = |key: &str| pb::LimitCheck {
        limit: Some(Limit::Policy(pb::LimitPolicy {
            algorithm: pb::Algorithm::FixedWindow as i32,
            limit: 10,
            period: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })),
        key: key.into(),
    };
    assert!(
        RateLimitServiceClient::new(server.channel.clone())
            .check(pb::CheckRequest {
                checks: vec![inline("user-42"), inline("tenant-acme")],
                ..Default::default()
            })
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
}

/// Nothing works through `config`, and it says so at once.
async fn refuses(mut config: Config) {
    // Long enough that a refusal retried as if Redis were failing over would show.
    config.redis.failover_wait = Duration::from_secs(5);
    let server = TestServer::start(config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.health_status("readiness").await,
        ServingStatus::NotServing
    );
    let began = Instant::now();
    let err = server
        .sessions()
        .create_session(pb::CreateSessionRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "a refused password is not retried for redis.failover_wait ({:?})",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_password() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start_with_password(3, 0, SECRET))
        .await
        .expect("cluster");
    let config = |password: Option<&str>| {
        let mut c = test_config();
        c.redis.mode = RedisMode::Cluster;
        c.redis.nodes = cluster.seeds();
        c.redis.password = password.map(str::to_owned);
        c
    };
    serves(config(Some(SECRET))).await;
    refuses(config(Some("wrong"))).await;
    refuses(config(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_a_master_with_passwords() {
    let topology = tokio::task::spawn_blocking(|| Sentinel::start_with_password(SECRET))
        .await
        .expect("sentinel");
    let config = |data: Option<&str>, sentinels: Option<&str>| {
        let mut c = test_config();
        c.redis.mode = RedisMode::Sentinel;
        c.redis.sentinels = topology.urls();
        c.redis.master_name = Some(MASTER_NAME.to_owned());
        c.redis.password = data.map(str::to_owned);
        c.redis.sentinel_password = sentinels.map(str::to_owned);
        c
    };
    serves(config(Some(SECRET), Some(SECRET))).await;
    refuses(config(Some("wrong"), Some(SECRET))).await;
    refuses(config(Some(SECRET), None)).await;
}
