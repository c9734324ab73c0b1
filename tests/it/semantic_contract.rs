//! The SemanticCacheService contract, through real gRPC calls, on the memory store, Redis and
//! Sentinel: near-duplicate queries hit and unrelated ones miss at the default threshold, TTLs,
//! eviction at `max_entries`, Delete, namespace and tenant isolation, bad input, every Redis
//! key expires. Then replicas on one Redis (`replica_*`): an entry Set through one is found
//! through another (by Redis's push: the backstop poll is set to a minute here), a Delete
//! reaches the other, a replica started later loads what is there, and one whose tracking
//! connection is killed catches up.

use std::{sync::LazyLock, time::Duration};

use crate::common::{Backend, TestServer, eventually, with_key};
use bytes::Bytes;
use flowstate::{
    auth::{keys, permission::Permissions},
    config::{AuthMode, Config, SemanticNamespace},
    proto::v1 as pb,
    semantic::index::synthetic::{self, noisy},
    tenant::Tenant,
};
use pb::semantic_cache_service_client::SemanticCacheServiceClient;
use rand::{SeedableRng, rngs::StdRng};
use tonic::{Code, transport::Channel};

type Client = SemanticCacheServiceClient<Channel>;

const DIM: usize = 768;

// The contract on memory, standalone Redis and Sentinel, each with the suite's namespaces.
contract_tests! {
    stores [
        memory_store: memory + super::namespaces,
        redis_store: redis + super::namespaces,
        slow_sentinel_store: sentinel + super::namespaces,
    ]
    tests [
    near_duplicates_hit_and_unrelated_queries_miss,
    a_threshold_in_the_request_wins,
    the_prefilter_finds_what_exact_search_finds with super::prefilter,
    entries_expire_with_their_ttl,
    a_full_namespace_evicts_the_entry_closest_to_expiry,
    delete_removes_one_entry,
    namespaces_are_separate,
    tenants_never_see_each_other with super::two_tenants,
    bad_input_is_refused,
    ]
}

fn namespaces(c: &mut Config) {
    for (name, dimension, max_entries) in [
        ("answers", DIM, 100_000),
        ("other", DIM, 100_000),
        ("small", 4, 3),
    ] {
        c.semantic.namespaces.insert(
            name.into(),
            SemanticNamespace {
                dimension,
                max_entries,
                ttl: Duration::from_secs(600),
                max_value_bytes: 1024,
                ..SemanticNamespace::default()
            },
        );
    }
    c.semantic.max_ttl = Duration::from_secs(3600);
}

/// Past 50 entries the sign-bit prefilter, not exact search.
fn prefilter(c: &mut Config) {
    c.semantic.exact_search_max = 50;
    c.semantic.rerank = 16;
}

/// Keys for tenants `alpha` and `beta`.
static KEYS: LazyLock<[keys::NewKey; 2]> = LazyLock::new(|| {
    ["alpha", "beta"].map(|t| {
        keys::generate(
            &Tenant::new(t).expect("tenant"),
            Permissions::parse("*").expect("permissions"),
        )
    })
});

fn two_tenants(c: &mut Config) {
    c.auth.mode = AuthMode::Required;
    c.auth.keys = Some(format!("{}\n{}", KEYS[0].line, KEYS[1].line));
}

fn client(b: &Backend) -> Client {
    SemanticCacheServiceClient::new(b.server.channel.clone())
}

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    synthetic::random_unit(rng, DIM)
}

fn set_request(namespace: &str, embedding: Vec<f32>, value: &str) -> pb::SemanticSetRequest {
    pb::SemanticSetRequest {
        namespace: namespace.into(),
        embedding,
        value: Bytes::from(value.to_owned()),
        ttl: None,
        metadata: [("model".to_owned(), "gpt-4o".to_owned())].into(),
    }
}

async fn set(c: &mut Client, namespace: &str, embedding: Vec<f32>, value: &str) -> u64 {
    c.set(set_request(namespace, embedding, value))
        .await
        .expect("Set")
        .into_inner()
        .id
}

async fn get(c: &mut Client, namespace: &str, embedding: Vec<f32>) -> pb::SemanticGetResponse {
    get_with(c, namespace, embedding, None).await
}

async fn get_with(
    c: &mut Client,
    namespace: &str,
    embedding: Vec<f32>,
    min_similarity: Option<f32>,
) -> pb::SemanticGetResponse {
    c.get(pb::SemanticGetRequest {
        namespace: namespace.into(),
        embedding,
        min_similarity,
    })
    .await
    .expect("Get")
    .into_inner()
}

/// Whether `query` finds entry `id` through `c` within `limit`.
async fn found_within(c: &Client, limit: Duration, query: &[f32], id: u64) -> bool {
    eventually(limit, || {
        let mut c = c.clone();
        let query = query.to_vec();
        async move { get(&mut c, "answers", query).await.id == id }
    })
    .await
}

/// Stores `n` random entries in `answers`; returns their vectors and ids.
async fn fill(c: &mut Client, rng: &mut StdRng, n: usize) -> Vec<(Vec<f32>, u64)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let v = random_unit(rng);
        let id = set(c, "answers", v.clone(), &format!("answer {i}")).await;
        out.push((v, id));
    }
    out
}

async fn near_duplicates_hit_and_unrelated_queries_miss(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(1);
    let stored = fill(&mut c, &mut rng, 200).await;
    assert_eq!(
        stored
            .iter()
            .map(|s| s.1)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        200
    );
    for (i, (v, id)) in stored.iter().enumerate().step_by(10) {
        // A rephrasing: cosine ≈ 0.995, above the default threshold of 0.95.
        let r = get(&mut c, "answers", noisy(&mut rng, v, 0.1)).await;
        assert!(r.found, "entry {i} not found");
        assert_eq!(r.id, *id);
        assert_eq!(r.value, Bytes::from(format!("answer {i}")));
        assert_eq!(r.metadata.get("model").map(String::as_str), Some("gpt-4o"));
        assert!(
            r.similarity > 0.98 && r.similarity <= 1.0001,
            "{}",
            r.similarity
        );
        let ttl = r.ttl.expect("ttl");
        assert!(ttl.seconds > 500 && ttl.seconds <= 600, "{ttl:?}");
        // Scale does not matter: embeddings are normalised.
        let scaled: Vec<f32> = v.iter().map(|x| x * 40.0).collect();
        assert_eq!(get(&mut c, "answers", scaled).await.id, *id);
    }
    for _ in 0..20 {
        let r = get(&mut c, "answers", random_unit(&mut rng)).await;
        assert!(
            !r.found,
            "an unrelated query hit {} at {}",
            r.id, r.similarity
        );
        assert_eq!((r.id, r.value.len()), (0, 0));
    }
}

async fn a_threshold_in_the_request_wins(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(2);
    let v = random_unit(&mut rng);
    let id = set(&mut c, "answers", v.clone(), "x").await;
    // Cosine ≈ 0.9: below the default 0.95, above an asked-for 0.8.
    let q = noisy(&mut rng, &v, 0.48);
    assert!(!get(&mut c, "answers", q.clone()).await.found);
    let r = get_with(&mut c, "answers", q.clone(), Some(0.8)).await;
    assert_eq!(r.id, id);
    assert!(
        r.similarity > 0.8 && r.similarity < 0.95,
        "{}",
        r.similarity
    );
    assert!(!get_with(&mut c, "answers", q, Some(0.99)).await.found);
}

async fn the_prefilter_finds_what_exact_search_finds(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(3);
    // 2,100 entries: past 2,048 the Redis store searches on a blocking thread.
    let stored = fill(&mut c, &mut rng, 2_100).await;
    for (v, id) in stored.iter().step_by(37) {
        assert_eq!(
            get(&mut c, "answers", noisy(&mut rng, v, 0.2)).await.id,
            *id
        );
    }
    for _ in 0..10 {
        assert!(!get(&mut c, "answers", random_unit(&mut rng)).await.found);
    }
}

async fn entries_expire_with_their_ttl(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(4);
    let (short, long) = (random_unit(&mut rng), random_unit(&mut rng));
    let mut r = set_request("answers", short.clone(), "short");
    r.ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    let short_id = c.set(r).await.expect("Set").into_inner().id;
    let long_id = set(&mut c, "answers", long.clone(), "long").await;
    assert_eq!(get(&mut c, "answers", short.clone()).await.id, short_id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !get(&mut c, "answers", short).await.found,
        "served past its TTL"
    );
    assert_eq!(get(&mut c, "answers", long).await.id, long_id);
}

async fn a_full_namespace_evicts_the_entry_closest_to_expiry(b: Backend) {
    let mut c = client(&b);
    let vs = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let mut ids = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        let r = c
            .set(set_request("small", v.to_vec(), &format!("{i}")))
            .await
            .expect("Set")
            .into_inner();
        assert_eq!(r.evicted, u32::from(i == 3), "set {i}");
        ids.push(r.id);
    }
    assert!(
        !get(&mut c, "small", vs[0].to_vec()).await.found,
        "the oldest stayed"
    );
    for i in 1..4 {
        assert_eq!(get(&mut c, "small", vs[i].to_vec()).await.id, ids[i]);
    }
}

async fn delete_removes_one_entry(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(5);
    let (a, bb) = (random_unit(&mut rng), random_unit(&mut rng));
    let ida = set(&mut c, "answers", a.clone(), "a").await;
    let idb = set(&mut c, "answers", bb.clone(), "b").await;
    let del = |id| pb::SemanticDeleteRequest {
        namespace: "answers".into(),
        id,
    };
    assert!(
        c.delete(del(ida))
            .await
            .expect("Delete")
            .into_inner()
            .deleted
    );
    assert!(
        !c.delete(del(ida))
            .await
            .expect("Delete")
            .into_inner()
            .deleted
    );
    assert!(!get(&mut c, "answers", a).await.found);
    assert_eq!(get(&mut c, "answers", bb).await.id, idb);
}

async fn namespaces_are_separate(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(6);
    let v = random_unit(&mut rng);
    set(&mut c, "answers", v.clone(), "answers").await;
    assert!(!get(&mut c, "other", v.clone()).await.found);
    set(&mut c, "other", v.clone(), "other").await;
    assert_eq!(
        get(&mut c, "other", v.clone()).await.value,
        Bytes::from("other")
    );
    assert_eq!(
        get(&mut c, "answers", v).await.value,
        Bytes::from("answers")
    );
}

async fn tenants_never_see_each_other(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(7);
    let v = random_unit(&mut rng);
    let get_as = |key: &'static str, v: Vec<f32>| {
        with_key(
            pb::SemanticGetRequest {
                namespace: "answers".into(),
                embedding: v,
                min_similarity: Some(-1.0),
            },
            key,
        )
    };
    let id = c
        .set(with_key(
            set_request("answers", v.clone(), "alpha's"),
            &KEYS[0].key,
        ))
        .await
        .expect("Set")
        .into_inner()
        .id;
    let beta = c
        .get(get_as(&KEYS[1].key, v.clone()))
        .await
        .expect("Get")
        .into_inner();
    assert!(!beta.found, "beta found alpha's entry even at threshold -1");
    // Nor can beta delete it by id.
    let del = with_key(
        pb::SemanticDeleteRequest {
            namespace: "answers".into(),
            id,
        },
        &KEYS[1].key,
    );
    assert!(!c.delete(del).await.expect("Delete").into_inner().deleted);
    let alpha = c
        .get(get_as(&KEYS[0].key, v))
        .await
        .expect("Get")
        .into_inner();
    assert_eq!((alpha.id, alpha.value), (id, Bytes::from("alpha's")));
}

async fn bad_input_is_refused(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(8);
    let v = random_unit(&mut rng);
    let refused = |r: Result<tonic::Response<pb::SemanticSetResponse>, tonic::Status>| {
        r.expect_err("refused").code()
    };
    assert_eq!(
        refused(c.set(set_request("answers", v[..10].to_vec(), "x")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        refused(c.set(set_request("answers", vec![0.0; DIM], "x")).await),
        Code::InvalidArgument
    );
    let mut nan = v.clone();
    nan[3] = f32::NAN;
    assert_eq!(
        refused(c.set(set_request("answers", nan, "x")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        refused(
            c.set(set_request("answers", v.clone(), &"x".repeat(1025)))
                .await
        ),
        Code::InvalidArgument
    );
    let mut long = set_request("answers", v.clone(), "x");
    long.ttl = Some(prost_types::Duration {
        seconds: 7200,
        nanos: 0,
    });
    assert_eq!(refused(c.set(long).await), Code::InvalidArgument);
    let mut negative = set_request("answers", v.clone(), "x");
    negative.ttl = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    assert_eq!(refused(c.set(negative).await), Code::InvalidArgument);
    let mut labels = set_request("answers", v.clone(), "x");
    labels.metadata = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    assert_eq!(refused(c.set(labels).await), Code::InvalidArgument);
    assert_eq!(
        refused(c.set(set_request("nowhere", v.clone(), "x")).await),
        Code::NotFound
    );
    assert_eq!(
        refused(c.set(set_request("bad name!", v.clone(), "x")).await),
        Code::InvalidArgument
    );
    let get_err = |r: Result<tonic::Response<pb::SemanticGetResponse>, tonic::Status>| {
        r.expect_err("refused").code()
    };
    let q = |ns: &str, e: Vec<f32>, t: Option<f32>| pb::SemanticGetRequest {
        namespace: ns.into(),
        embedding: e,
        min_similarity: t,
    };
    assert_eq!(
        get_err(c.get(q("answers", v.clone(), Some(1.5))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        get_err(c.get(q("answers", v.clone(), Some(f32::NAN))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        get_err(c.get(q("answers", vec![1.0; 3], None)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        get_err(c.get(q("nowhere", v.clone(), None)).await),
        Code::NotFound
    );
    let del = pb::SemanticDeleteRequest {
        namespace: "answers".into(),
        id: 0,
    };
    assert_eq!(
        c.delete(del).await.expect_err("id 0").code(),
        Code::InvalidArgument
    );
    // Nothing was stored by any of them.
    assert!(!get_with(&mut c, "answers", v, Some(-1.0)).await.found);
}

// Redis only: the memory store has no keys to list (it expires entries itself, tested above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_key_expires() {
    every_key_expires(Backend::redis(namespaces).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sentinel_every_key_expires() {
    every_key_expires(Backend::sentinel(namespaces).await).await;
}

async fn every_key_expires(b: Backend) {
    let mut c = client(&b);
    let mut rng = StdRng::seed_from_u64(9);
    let stored = fill(&mut c, &mut rng, 5).await;
    c.delete(pb::SemanticDeleteRequest {
        namespace: "answers".into(),
        id: stored[0].1,
    })
    .await
    .expect("Delete");
    for i in 0..5 {
        let v = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]][i % 2];
        set(&mut c, "small", v.to_vec(), "x").await;
    }
    let keys = b.key_ttls().await;
    assert!(keys.len() > 5, "nothing written to Redis: {keys:?}");
    for (key, ttl) in keys {
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

// ---- Replicas on one Redis ----

/// The backstop poll, set far beyond the waits below: what they see came by Redis's push.
const POLL: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(5);

fn replicated(c: &mut Config) {
    namespaces(c);
    c.semantic.sync_interval = POLL;
}

/// A second replica on the same Redis and key prefix.
async fn replica(b: &Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = crate::common::test_config();
    config.redis.key_prefix = b.prefix.clone();
    config.redis.url = b.redis_url.clone();
    replicated(&mut config);
    tweak(&mut config);
    TestServer::start(config).await
}

async fn tracking_ids(redis: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(redis)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains("name=flowstate-semantic-cache"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_entries_set_through_one_are_found_through_the_other() {
    let b = Backend::redis(replicated).await;
    let other = replica(&b, |_| {}).await;
    let (mut a, mut bb) = (
        client(&b),
        SemanticCacheServiceClient::new(other.channel.clone()),
    );
    let mut rng = StdRng::seed_from_u64(10);
    // B indexes the namespace (a first Get registers it), then A writes.
    let first = random_unit(&mut rng);
    let first_id = set(&mut a, "answers", first.clone(), "first").await;
    assert!(
        found_within(&bb, WITHIN, &first, first_id).await,
        "B never loaded the namespace"
    );
    for i in 0..30 {
        let v = random_unit(&mut rng);
        let id = set(&mut a, "answers", v.clone(), &format!("{i}")).await;
        let q = noisy(&mut rng, &v, 0.1);
        assert!(
            found_within(&bb, WITHIN, &q, id).await,
            "entry {i} set through A not found through B"
        );
        // And the other way round.
        let w = random_unit(&mut rng);
        let id = set(&mut bb, "answers", w.clone(), &format!("b{i}")).await;
        assert!(
            found_within(&a, WITHIN, &w, id).await,
            "entry {i} set through B not found through A"
        );
    }
    // A Delete through A: B stops finding it (it checks Redis before answering, so at once).
    a.delete(pb::SemanticDeleteRequest {
        namespace: "answers".into(),
        id: first_id,
    })
    .await
    .expect("Delete");
    assert!(!get(&mut bb, "answers", first).await.found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_started_later_loads_what_is_in_redis() {
    let b = Backend::redis(replicated).await;
    let mut a = client(&b);
    let mut rng = StdRng::seed_from_u64(11);
    let stored = fill(&mut a, &mut rng, 300).await;
    let other = replica(&b, |_| {}).await;
    let bb = SemanticCacheServiceClient::new(other.channel.clone());
    // Loaded at start (found by SCAN), not on first use: every entry is there.
    let (v, id) = &stored[299];
    assert!(found_within(&bb, WITHIN, v, *id).await);
    let mut bb = bb;
    for (v, id) in stored.iter().step_by(13) {
        assert_eq!(
            get(&mut bb, "answers", noisy(&mut rng, v, 0.1)).await.id,
            *id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_whose_tracking_connection_dies_catches_up() {
    let b = Backend::redis(replicated).await;
    let mut redis = b.redis.as_ref().expect("own redis").client().await;
    // B polls every 300 ms: the backstop while its connection is down.
    let other = replica(&b, |c| {
        c.semantic.sync_interval = Duration::from_millis(300)
    })
    .await;
    let (mut a, bb) = (
        client(&b),
        SemanticCacheServiceClient::new(other.channel.clone()),
    );
    let mut rng = StdRng::seed_from_u64(12);
    let v = random_unit(&mut rng);
    let id = set(&mut a, "answers", v.clone(), "x").await;
    assert!(found_within(&bb, WITHIN, &v, id).await);
    assert!(
        eventually(WITHIN, || {
            let mut r = redis.clone();
            async move { tracking_ids(&mut r).await.len() == 2 }
        })
        .await
    );
    for id in tracking_ids(&mut redis).await {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .exec_async(&mut redis)
            .await
            .expect("KILL");
    }
    // Written while B has no tracking connection (or just got a new one).
    for i in 0..10 {
        let v = random_unit(&mut rng);
        let id = set(&mut a, "answers", v.clone(), &format!("{i}")).await;
        assert!(
            found_within(&bb, WITHIN, &v, id).await,
            "entry {i} missed after the kill"
        );
    }
    // Both replicas reconnect.
    assert!(
        eventually(WITHIN, || {
            let mut r = redis.clone();
            async move { tracking_ids(&mut r).await.len() == 2 }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_follows_a_namespace_emptied_behind_its_back() {
    let b = Backend::redis(replicated).await;
    let mut redis = b.redis.as_ref().expect("own redis").client().await;
    let other = replica(&b, |_| {}).await;
    let (mut a, bb) = (
        client(&b),
        SemanticCacheServiceClient::new(other.channel.clone()),
    );
    let mut rng = StdRng::seed_from_u64(13);
    let v = random_unit(&mut rng);
    let id = set(&mut a, "answers", v.clone(), "x").await;
    assert!(found_within(&bb, WITHIN, &v, id).await);
    redis::cmd("FLUSHDB")
        .exec_async(&mut redis)
        .await
        .expect("FLUSHDB");
    let mut bb = bb;
    assert!(!get(&mut bb, "answers", v.clone()).await.found);
    // New entries after the flush are found, not confused with old ones: ids do not start
    // again (a new counter starts from the store's clock).
    let w = random_unit(&mut rng);
    let old_id = id;
    let id = set(&mut a, "answers", w.clone(), "after").await;
    assert!(id > old_id, "id {id} reused after the flush (was {old_id})");
    assert!(found_within(&bb, WITHIN, &w, id).await);
    assert!(!get(&mut bb, "answers", v).await.found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_served_only_for_the_vector_redis_holds() {
    let b = Backend::redis(replicated).await;
    let mut redis = b.redis.as_ref().expect("own redis").client().await;
    let mut a = client(&b);
    let mut rng = StdRng::seed_from_u64(14);
    let v = random_unit(&mut rng);
    let id = set(&mut a, "answers", v.clone(), "about v").await;
    assert!(found_within(&a, WITHIN, &v, id).await);
    // Behind flowstate's back (as after an id reused by a new namespace of the same name), the
    // entry now holds another vector: the index still thinks it is v's.
    let other = random_unit(&mut rng);
    let key = format!("{}:default:se:{{default/answers}}:e:{id}", b.prefix);
    let bytes: Vec<u8> = other.iter().flat_map(|x| x.to_le_bytes()).collect();
    redis::cmd("HSET")
        .arg(&key)
        .arg("v")
        .arg(bytes)
        .exec_async(&mut redis)
        .await
        .expect("HSET");
    assert!(
        !get(&mut a, "answers", v).await.found,
        "served an entry whose vector is not the query's"
    );
}

#[test]
fn semantic_namespaces_on_a_cluster_are_refused() {
    let mut c = Config::default();
    namespaces(&mut c);
    c.redis.mode = flowstate::config::RedisMode::Cluster;
    c.redis.nodes = vec!["redis://127.0.0.1:7000".into()];
    let err = c.validate().expect_err("refused").to_string();
    assert!(err.contains("semantic.namespaces"), "{err}");
}
