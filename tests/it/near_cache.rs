//! The near cache on a real Redis: hot Gets make no Redis call, and replicas stay coherent
//! through Redis's client tracking — a write through one replica stops the other serving the
//! old value long before `cache.near_max_staleness` (set to 10 s here, so a replica that relied
//! on the bound alone would fail every check below, which wait at most 5 s), including after
//! its tracking connection is killed.

use std::time::Duration;

use crate::common::{Backend, TestServer, eventually};
use bytes::Bytes;
use flowstate::{
    config::{Config, NamespacePolicy},
    proto::v1 as pb,
};
use pb::cache_service_client::CacheServiceClient;
use tonic::transport::Channel;

type Client = CacheServiceClient<Channel>;

const BOUND: Duration = Duration::from_secs(10);
const WITHIN: Duration = Duration::from_secs(5);

fn near(c: &mut Config) {
    c.cache.namespaces.insert(
        "hot".into(),
        NamespacePolicy {
            ttl: Duration::from_secs(600),
            near: true,
            ..NamespacePolicy::default()
        },
    );
    c.cache.namespaces.insert(
        "cold".into(),
        NamespacePolicy {
            ttl: Duration::from_secs(600),
            ..NamespacePolicy::default()
        },
    );
    c.cache.near_max_staleness = BOUND;
}

async fn set(c: &mut Client, namespace: &str, key: &str, value: &str, tags: &[&str]) {
    c.set(pb::CacheSetRequest {
        namespace: namespace.into(),
        key: key.into(),
        value: Bytes::from(value.to_owned()),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    })
    .await
    .expect("set");
}

/// The value a Get answers (empty on a miss).
async fn get(c: &mut Client, namespace: &str, key: &str) -> String {
    let r = c
        .get(pb::CacheGetRequest {
            namespace: namespace.into(),
            key: key.into(),
            lease: false,
        })
        .await
        .expect("get")
        .into_inner();
    String::from_utf8(r.value.to_vec()).expect("utf-8")
}

/// Calls of one command so far (INFO commandstats).
async fn calls(redis: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits until `key` is answered from the near tier (a Get makes no HMGET).
async fn until_near(c: &mut Client, redis: &mut redis::aio::MultiplexedConnection, key: &str) {
    let near = eventually(WITHIN, || {
        let mut c = c.clone();
        let mut redis = redis.clone();
        async move {
            get(&mut c, "hot", key).await;
            let before = calls(&mut redis, "hmget").await;
            get(&mut c, "hot", key).await;
            calls(&mut redis, "hmget").await == before
        }
    })
    .await;
    assert!(near, "{key} is never answered from the near tier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_gets_are_answered_with_no_redis_call() {
    let b = Backend::redis(near).await;
    let mut redis = b.redis.as_ref().expect("own redis").client().await;
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    set(&mut c, "hot", "k", "v1", &[]).await;
    until_near(&mut c, &mut redis, "k").await;
    let before = (
        calls(&mut redis, "hmget").await,
        calls(&mut redis, "get").await,
        calls(&mut redis, "time").await,
        calls(&mut redis, "evalsha").await,
    );
    for _ in 0..200 {
        assert_eq!(get(&mut c, "hot", "k").await, "v1");
    }
    let after = (
        calls(&mut redis, "hmget").await,
        calls(&mut redis, "get").await,
        calls(&mut redis, "time").await,
        calls(&mut redis, "evalsha").await,
    );
    assert_eq!(before, after, "200 hot Gets made Redis calls");
    // GetMany: near copies answer, the rest is read from Redis (one HMGET, for `other`).
    set(&mut c, "hot", "other", "v2", &[]).await;
    let before = calls(&mut redis, "hmget").await;
    let many = c
        .get_many(pb::CacheGetManyRequest {
            namespace: "hot".into(),
            keys: vec!["k".into(), "other".into(), "k".into()],
        })
        .await
        .expect("get many")
        .into_inner();
    let values: Vec<&[u8]> = many.entries.iter().map(|e| e.value.as_ref()).collect();
    assert_eq!(values, [&b"v1"[..], b"v2", b"v1"]);
    assert_eq!(
        many.entries
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["k", "other", "k"]
    );
    assert_eq!(
        calls(&mut redis, "hmget").await,
        before + 1,
        "only the key without a near copy is read"
    );
    // A namespace without `near` still reads Redis every time.
    set(&mut c, "cold", "k", "v1", &[]).await;
    let before = calls(&mut redis, "hmget").await;
    for _ in 0..10 {
        assert_eq!(get(&mut c, "cold", "k").await, "v1");
    }
    assert_eq!(calls(&mut redis, "hmget").await, before + 10);
    // A Get with a lease on a fresh near hit: a hit, no lease needed, no Redis call either.
    let before = calls(&mut redis, "evalsha").await;
    let r = c
        .get(pb::CacheGetRequest {
            namespace: "hot".into(),
            key: "k".into(),
            lease: true,
        })
        .await
        .expect("leased get")
        .into_inner();
    assert_eq!((r.value.as_ref(), r.lease_token.as_str()), (&b"v1"[..], ""));
    assert_eq!(calls(&mut redis, "evalsha").await, before);
}

/// A second replica on the same Redis and key prefix.
async fn replica(b: &Backend) -> TestServer {
    let mut config = crate::common::test_config();
    config.redis.key_prefix = b.prefix.clone();
    config.redis.url = b.redis_url.clone();
    near(&mut config);
    TestServer::start(config).await
}

/// Whether `c` answers `want` for `key` within [`WITHIN`].
async fn converges(c: &Client, namespace: &'static str, key: &'static str, want: &str) -> bool {
    eventually(WITHIN, || {
        let mut c = c.clone();
        let want = want.to_owned();
        async move { get(&mut c, namespace, key).await == want }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_replica_reach_the_others_near_copies() {
    let b = Backend::redis(near).await;
    let mut redis = b.redis.as_ref().expect("own redis").client().await;
    let other = replica(&b).await;
    let mut a = CacheServiceClient::new(b.server.channel.clone());
    let mut bb = CacheServiceClient::new(other.channel.clone());
    set(&mut a, "hot", "k", "v0", &["t"]).await;
    until_near(&mut bb, &mut redis, "k").await;
    for i in 1..=50 {
        let v = format!("v{i}");
        set(&mut a, "hot", "k", &v, &["t"]).await;
        assert!(
            converges(&bb, "hot", "k", &v).await,
            "trial {i}: B kept serving the old value"
        );
        // B answers from a near copy again before the next trial.
        until_near(&mut bb, &mut redis, "k").await;
    }
    // The writer itself never serves its old copy (its own writes drop it before returning).
    until_near(&mut a, &mut redis, "k").await;
    set(&mut a, "hot", "k", "mine", &["t"]).await;
    assert_eq!(get(&mut a, "hot", "k").await, "mine");

    // Delete, InvalidateTags and InvalidateNamespace through A reach B's copies too.
    until_near(&mut bb, &mut redis, "k").await;
    a.delete(pb::CacheDeleteRequest {
        namespace: "hot".into(),
        keys: vec!["k".into()],
    })
    .await
    .expect("delete");
    assert!(
        converges(&bb, "hot", "k", "").await,
        "a Delete did not reach B"
    );

    set(&mut a, "hot", "k", "tagged", &["t"]).await;
    until_near(&mut bb, &mut redis, "k").await;
    a.invalidate_tags(pb::CacheInvalidateTagsRequest {
        namespace: "hot".into(),
        tags: vec!["t".into()],
    })
    .await
    .expect("invalidate tags");
    assert!(
        converges(&bb, "hot", "k", "").await,
        "InvalidateTags did not reach B"
    );

    set(&mut a, "hot", "k", "ns", &[]).await;
    until_near(&mut bb, &mut redis, "k").await;
    a.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "hot".into(),
    })
    .await
    .expect("invalidate namespace");
    assert!(
        converges(&bb, "hot", "k", "").await,
        "InvalidateNamespace did not reach B"
    );

    // A change made in Redis behind flowstate's back (an expiry, an eviction, a FLUSHDB) too.
    set(&mut a, "hot", "k", "flushed", &[]).await;
    until_near(&mut bb, &mut redis, "k").await;
    redis::cmd("FLUSHDB")
        .exec_async(&mut redis)
        .await
        .expect("FLUSHDB");
    assert!(
        converges(&bb, "hot", "k", "").await,
        "FLUSHDB did not reach B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_tracking_connection_dies_serves_nothing_stale() {
    let b = Backend::redis(near).await;
    let mut redis = b.redis.as_ref().expect("own redis").client().await;
    let other = replica(&b).await;
    let mut a = CacheServiceClient::new(b.server.channel.clone());
    let mut bb = CacheServiceClient::new(other.channel.clone());
    set(&mut a, "hot", "k", "before", &[]).await;
    until_near(&mut a, &mut redis, "k").await;
    until_near(&mut bb, &mut redis, "k").await;
    // Kill every near-cache tracking connection (A's and B's): their invalidations are lost.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis)
        .await
        .expect("CLIENT LIST");
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains("name=flowstate-near-cache"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2, "one tracking connection per replica: {list}");
    for id in &ids {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .exec_async(&mut redis)
            .await
            .expect("CLIENT KILL");
    }
    set(&mut a, "hot", "k", "after", &[]).await;
    // B may answer from its copy only until it notices (a push, or at worst its heartbeat),
    // never past the bound; here it must notice well within WITHIN (half the bound).
    assert!(
        converges(&bb, "hot", "k", "after").await,
        "B went on serving its copy after losing its tracking connection"
    );
    for _ in 0..50 {
        assert_eq!(get(&mut bb, "hot", "k").await, "after");
    }
    // Each replica reopens it, flushes, and serves near hits again.
    until_near(&mut bb, &mut redis, "k").await;
    until_near(&mut a, &mut redis, "k").await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis)
        .await
        .expect("CLIENT LIST");
    assert_eq!(
        list.lines()
            .filter(|l| l.contains("name=flowstate-near-cache"))
            .count(),
        2
    );
    // And the reopened connection tracks again: a write through A reaches B's new copy.
    set(&mut a, "hot", "k", "again", &[]).await;
    assert!(converges(&bb, "hot", "k", "again").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_on_sentinel_the_master_the_sentinels_name_is_tracked() {
    let b = Backend::sentinel(near).await;
    let master = b.nodes.first().expect("the sentinels' master").clone();
    let mut redis = redis::Client::open(master)
        .expect("master url")
        .get_multiplexed_async_connection()
        .await
        .expect("master connection");
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let key = format!("k-{}", b.prefix);
    set(&mut c, "hot", &key, "v1", &[]).await;
    until_near(&mut c, &mut redis, &key).await;
    set(&mut c, "hot", &key, "v2", &[]).await;
    assert_eq!(get(&mut c, "hot", &key).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_namespaces_on_a_cluster_are_refused_at_start_up() {
    let mut config = crate::common::test_config();
    config.redis.mode = flowstate::config::RedisMode::Cluster;
    config.redis.nodes = vec!["redis://127.0.0.1:7000".into()];
    near(&mut config);
    let err = config
        .validate()
        .expect_err("near on a cluster")
        .to_string();
    assert!(err.contains("near = true"), "{err}");
}
