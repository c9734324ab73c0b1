//! Redis Cluster specifics, on real clusters started here: scripts are loaded on every node and
//! reloaded node by node after a flush (NOSCRIPT), and resharding under load (slots migrated
//! between masters: ASK, TRYAGAIN, then MOVED) fails no call and loses no count.
//! (Failover is in `failover.rs`; the contract suites run on a cluster too.)

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::common::{
    TestServer, test_config,
    topology::{Cluster, node_client, shared_cluster},
};
use bytes::Bytes;
use flowstate::{
    config::{Config, LimitConfig, RedisMode},
    proto::v1::{
        self as pb, cache_service_client::CacheServiceClient, limit_check::Limit,
        rate_limit_service_client::RateLimitServiceClient,
        session_service_client::SessionServiceClient,
    },
    ratelimit::{Algorithm, FailureMode},
    store::redis::RedisBackend,
};
use tonic_health::pb::health_check_response::ServingStatus;

fn cluster_config(cluster: &Cluster) -> Config {
    let mut c = test_config();
    c.redis.mode = RedisMode::Cluster;
    c.redis.nodes = cluster.seeds();
    c.ratelimit.limits.insert(
        "big".into(),
        LimitConfig {
            algorithm: Algorithm::FixedWindow,
            limit: 100_000_000,
            period: Duration::from_secs(30 * 24 * 3600),
            burst: 0,
            failure_mode: FailureMode::Closed,
        },
    );
    c
}

/// A little of everything, on keys spread over every master.
async fn exercise(server: &TestServer, round: usize) {
    let mut s = SessionServiceClient::new(server.channel.clone());
    let mut c = CacheServiceClient::new(server.channel.clone());
    let mut r = RateLimitServiceClient::new(server.channel.clone());
    for i in 0..20 {
        let created = s
            .create_session(pb::CreateSessionRequest {
                user_id: format!("u{round}-{i}"),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        s.get_session(pb::GetSessionRequest {
            id: created.id,
            touch: true,
        })
        .await
        .expect("get");
        c.set(pb::CacheSetRequest {
            namespace: "ns".into(),
            key: format!("k{i}"),
            value: Bytes::from_static(b"v"),
            tags: vec![format!("t{}", i % 3)],
            ..Default::default()
        })
        .await
        .expect("set");
        c.get(pb::CacheGetRequest {
            namespace: "ns".into(),
            key: format!("k{i}"),
            lease: true,
        })
        .await
        .expect("get");
        r.check(pb::CheckRequest {
            checks: vec![
                pb::LimitCheck {
                    limit: Some(Limit::Name("big".into())),
                    key: format!("user{i}"),
                },
                pb::LimitCheck {
                    limit: Some(Limit::Name("big".into())),
                    key: "tenant".into(),
                },
            ],
            ..Default::default()
        })
        .await
        .expect("check");
    }
    c.invalidate_tags(pb::CacheInvalidateTagsRequest {
        namespace: "ns".into(),
        tags: vec!["t0".into()],
    })
    .await
    .expect("invalidate tags");
    c.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "ns".into(),
    })
    .await
    .expect("invalidate namespace");
}

/// Every registered script is on every master once flowstate has connected, and a node that
/// lost them (SCRIPT FLUSH, a restart, a replica promoted by a failover) gets them back at its
/// first NOSCRIPT: no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_on_every_master_and_come_back_after_a_flush() {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("cluster");
    let config = cluster_config(cluster);
    let backend = RedisBackend::new(&config.redis).expect("backend");
    let wrapped = flowstate::store::Backend::Redis(backend.clone());
    flowstate::session::open_store(&wrapped, &config.session).expect("sessions");
    flowstate::cache::open_store(&wrapped, &config).expect("cache");
    flowstate::ratelimit::open_store(&wrapped).expect("rate limits");
    let hashes: Vec<String> = backend.scripts().into_iter().map(|(_, h)| h).collect();
    let server = TestServer::start(config).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    exercise(&server, 0).await;

    let ports = cluster.masters();
    let exists = |port: u16| -> Vec<bool> {
        let mut c = node_client(port).expect("node");
        redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&hashes)
            .query(&mut c)
            .expect("SCRIPT EXISTS")
    };
    for &port in &ports {
        assert!(
            exists(port).iter().all(|e| *e),
            "node {port} lacks a script: {:?}",
            exists(port)
        );
    }
    for port in cluster.nodes.iter().map(|n| n.port) {
        let mut c = node_client(port).expect("node");
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut c)
            .expect("SCRIPT FLUSH");
    }
    // Every call still succeeds: each node answers NOSCRIPT once and is loaded again.
    exercise(&server, 1).await;
    assert!(
        ports.iter().all(|&port| exists(port).iter().all(|e| *e)),
        "the scripts are back on every master"
    );
}

/// Moves every slot of one master to another while 16 callers run cache and rate-limit calls
/// on keys all over the cluster: calls on migrating slots meet ASK and TRYAGAIN, then MOVED,
/// and are retried (none of those ran). No call fails, and the counter counts every admission
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resharding_under_load_fails_no_call_and_loses_no_count() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 0))
        .await
        .expect("cluster");
    let server = TestServer::start(cluster_config(&cluster)).await;
    assert!(
        server
            .wait_health("readiness", ServingStatus::Serving)
            .await
    );
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (stop, admitted, calls) = (stop.clone(), admitted.clone(), calls.clone());
        let channel = server.channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = CacheServiceClient::new(channel.clone());
            let mut r = RateLimitServiceClient::new(channel);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("k{i}-{}", n % 200);
                c.set(pb::CacheSetRequest {
                    namespace: "ns".into(),
                    key: key.clone(),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                })
                .await
                .expect("set during resharding");
                let got = c
                    .get(pb::CacheGetRequest {
                        namespace: "ns".into(),
                        key,
                        lease: false,
                    })
                    .await
                    .expect("get during resharding")
                    .into_inner();
                assert!(got.found, "a value just set is found during resharding");
                let checked = r
                    .check(pb::CheckRequest {
                        checks: vec![pb::LimitCheck {
                            limit: Some(Limit::Name("big".into())),
                            key: format!("user{}", n % 500),
                        }],
                        ..Default::default()
                    })
                    .await
                    .expect("check during resharding")
                    .into_inner();
                if checked.allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(3, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every slot of the first master to the second, by redis-cli's own resharding.
    let reshard = tokio::task::spawn_blocking(move || {
        let masters = cluster.masters();
        let id = |port: u16| -> String {
            let mut c = node_client(port).expect("node");
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut c)
                .expect("CLUSTER MYID")
        };
        let (from, to) = (id(masters[0]), id(masters[1]));
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", masters[0])])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "16384", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "reshard failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    })
    .await
    .expect("reshard");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("caller");
    }
    assert_eq!(
        reshard.masters().len(),
        2,
        "the first master gave away every slot"
    );
    // Every admission counted exactly once: the sum of the counters over the 500 keys.
    let mut r = RateLimitServiceClient::new(server.channel.clone());
    let mut counted = 0;
    for k in 0..500 {
        let left = r
            .check(pb::CheckRequest {
                checks: vec![pb::LimitCheck {
                    limit: Some(Limit::Name("big".into())),
                    key: format!("user{k}"),
                }],
                cost: Some(0),
                dry_run: true,
            })
            .await
            .expect("peek")
            .into_inner()
            .results[0]
            .remaining;
        counted += 100_000_000 - left;
    }
    eprintln!(
        "resharding: {} calls, every one succeeded; admitted {}, counted {}",
        calls.load(Ordering::Relaxed),
        admitted.load(Ordering::Relaxed),
        counted
    );
    assert_eq!(counted, admitted.load(Ordering::Relaxed));
}
