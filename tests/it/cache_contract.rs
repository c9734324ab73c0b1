//! The CacheService contract, run against both stores through real gRPC calls.

use std::time::Duration;

use crate::common::{Backend, eventually};
use bytes::Bytes;
use flowstate::{
    config::{Config, NamespacePolicy},
    proto::v1 as pb,
};
use pb::cache_service_client::CacheServiceClient;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

type Client = CacheServiceClient<Channel>;

/// The contract on every store, and once more on Redis standalone and sentinel with every
/// namespace near (the near tier must change no answer a single replica gives).
macro_rules! cache_contract {
    ($($name:ident with $tweak:expr),* $(,)?) => {
        contract_tests! { $($name with $tweak),* }
        contract_tests! {
            stores [redis_near_store: redis + super::all_near, slow_sentinel_near_store: sentinel + super::all_near]
            tests [$($name with $tweak),*]
        }
    };
}

cache_contract! {
    set_and_get_with_ttl with super::namespaces,
    namespace_policy_gives_the_default_ttl with super::namespaces,
    conditions_if_absent_and_if_present with super::namespaces,
    tag_invalidation_removes_every_tagged_key with super::namespaces,
    namespace_invalidation_is_scoped_to_the_namespace with super::namespaces,
    get_many_and_set_many_keep_request_order with super::namespaces,
    exactly_one_of_64_concurrent_callers_gets_the_lease with super::namespaces,
    a_set_with_a_lease_is_refused_after_a_delete with super::namespaces,
    an_expired_lease_frees_the_key with super::short_leases,
    stale_while_revalidate_serves_stale_to_all_but_the_lease_holder with super::namespaces,
    bad_input_is_rejected_and_stores_nothing with super::namespaces,
    unknown_namespaces_can_be_refused with super::closed_namespaces,
    a_lease_from_a_miss_is_refused_once_its_tags_are_invalidated with super::namespaces,
}

fn policy(ttl: Duration, stale: Duration, max_value_bytes: usize) -> NamespacePolicy {
    NamespacePolicy {
        ttl,
        stale,
        max_value_bytes,
        near: false,
    }
}

/// Every namespace, listed or not, served from the near tier.
fn all_near(c: &mut Config) {
    c.cache.default_policy.near = true;
    for policy in c.cache.namespaces.values_mut() {
        policy.near = true;
    }
}

fn namespaces(c: &mut Config) {
    let n = &mut c.cache.namespaces;
    n.insert(
        "user_profile".into(),
        policy(Duration::from_secs(1800), Duration::ZERO, 1024),
    );
    n.insert(
        "campaign".into(),
        policy(Duration::from_secs(900), Duration::ZERO, 1024),
    );
    n.insert(
        "swr".into(),
        policy(Duration::from_secs(60), Duration::from_secs(30), 1024),
    );
    c.cache.lease_ttl = Duration::from_secs(30);
    c.cache.max_batch = 5;
}

fn short_leases(c: &mut Config) {
    namespaces(c);
    c.cache.lease_ttl = Duration::from_millis(300);
}

fn closed_namespaces(c: &mut Config) {
    namespaces(c);
    c.cache.allow_unknown_namespaces = false;
}

fn ms(d: &Option<prost_types::Duration>) -> i64 {
    let d = d.as_ref().expect("duration set");
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

fn dur(millis: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(Duration::from_millis(millis)).expect("duration"))
}

async fn set(
    c: &mut Client,
    ns: &str,
    key: &str,
    value: &str,
    ttl: Option<u64>,
    tags: &[&str],
) -> bool {
    c.set(pb::CacheSetRequest {
        namespace: ns.into(),
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ttl: ttl.and_then(dur),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    })
    .await
    .expect("set")
    .into_inner()
    .stored
}

async fn get(c: &mut Client, ns: &str, key: &str, lease: bool) -> pb::CacheGetResponse {
    c.get(pb::CacheGetRequest {
        namespace: ns.into(),
        key: key.into(),
        lease,
    })
    .await
    .expect("get")
    .into_inner()
}

async fn set_with_lease(c: &mut Client, ns: &str, key: &str, value: &str, token: &str) -> bool {
    c.set(pb::CacheSetRequest {
        namespace: ns.into(),
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease_token: token.into(),
        ..Default::default()
    })
    .await
    .expect("set")
    .into_inner()
    .stored
}

async fn set_and_get_with_ttl(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    assert!(!get(&mut c, "any", "k", false).await.found);
    assert!(set(&mut c, "any", "k", "v1", Some(1500), &[]).await);
    let hit = get(&mut c, "any", "k", false).await;
    assert!(hit.found, "read right after a 1.5 s set");
    assert_eq!(hit.value.as_ref(), b"v1");
    assert!(!hit.stale);
    assert!((1..=1500).contains(&ms(&hit.ttl_remaining)));
    let expired = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { !get(&mut c, "any", "k", false).await.found }
    })
    .await;
    assert!(expired, "the entry outlived its TTL");
    // A long TTL is still there, and overwriting replaces the value.
    assert!(set(&mut c, "any", "k", "v2", Some(60_000), &[]).await);
    assert!(set(&mut c, "any", "k", "v3", Some(60_000), &[]).await);
    let hit = get(&mut c, "any", "k", false).await;
    assert!(hit.found);
    assert_eq!(hit.value.as_ref(), b"v3");
}

async fn namespace_policy_gives_the_default_ttl(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    assert!(set(&mut c, "user_profile", "u1", "{}", None, &[]).await);
    let ttl = ms(&get(&mut c, "user_profile", "u1", false).await.ttl_remaining);
    assert!(
        (1_790_000..=1_800_000).contains(&ttl),
        "user_profile TTL is 30 min, got {ttl} ms"
    );
    assert!(set(&mut c, "other", "u1", "{}", None, &[]).await);
    let ttl = ms(&get(&mut c, "other", "u1", false).await.ttl_remaining);
    assert!(
        (290_000..=300_000).contains(&ttl),
        "default policy TTL is 5 min, got {ttl} ms"
    );
    assert!(
        get(&mut c, "user_profile", "u1", false).await.found,
        "namespaces are separate"
    );
}

async fn conditions_if_absent_and_if_present(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let writer = c.clone();
    let put = |key: &str, value: &str, condition: pb::SetCondition| {
        let mut c = writer.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        async move {
            c.set(pb::CacheSetRequest {
                namespace: "campaign".into(),
                key,
                value: Bytes::from(value),
                condition: condition as i32,
                ..Default::default()
            })
            .await
            .expect("set")
            .into_inner()
            .stored
        }
    };
    assert!(
        !put("k", "x", pb::SetCondition::IfPresent).await,
        "nothing to replace"
    );
    assert!(put("k", "first", pb::SetCondition::IfAbsent).await);
    assert!(
        !put("k", "second", pb::SetCondition::IfAbsent).await,
        "already there"
    );
    assert_eq!(
        get(&mut c, "campaign", "k", false).await.value.as_ref(),
        b"first"
    );
    assert!(put("k", "third", pb::SetCondition::IfPresent).await);
    assert_eq!(
        get(&mut c, "campaign", "k", false).await.value.as_ref(),
        b"third"
    );
}

async fn tag_invalidation_removes_every_tagged_key(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    assert!(set(&mut c, "campaign", "a", "1", None, &["team:7", "all"]).await);
    assert!(set(&mut c, "campaign", "b", "2", None, &["team:7"]).await);
    assert!(set(&mut c, "campaign", "c", "3", None, &["team:8", "all"]).await);
    assert!(
        set(
            &mut c,
            "user_profile",
            "a",
            "other namespace",
            None,
            &["team:7"]
        )
        .await
    );
    let invalidated = c
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "campaign".into(),
            tags: vec!["team:7".into()],
        })
        .await
        .expect("invalidate")
        .into_inner()
        .invalidated;
    assert_eq!(invalidated, 2);
    assert!(!get(&mut c, "campaign", "a", false).await.found);
    assert!(!get(&mut c, "campaign", "b", false).await.found);
    assert!(get(&mut c, "campaign", "c", false).await.found);
    assert!(
        get(&mut c, "user_profile", "a", false).await.found,
        "tags are per namespace"
    );
    // A key set again after an invalidation is listed again, under its new tag.
    assert!(set(&mut c, "campaign", "a", "again", None, &["team:9"]).await);
    let invalidated = c
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "campaign".into(),
            tags: vec!["all".into(), "team:9".into()],
        })
        .await
        .expect("invalidate")
        .into_inner()
        .invalidated;
    assert_eq!(invalidated, 2, "c (all) and the new a (team:9)");
    assert!(!get(&mut c, "campaign", "a", false).await.found);
    assert!(!get(&mut c, "campaign", "c", false).await.found);
}

async fn namespace_invalidation_is_scoped_to_the_namespace(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    for k in ["a", "b", "c"] {
        assert!(set(&mut c, "campaign", k, "old", None, &[]).await);
    }
    assert!(set(&mut c, "user_profile", "a", "kept", None, &[]).await);
    c.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "campaign".into(),
    })
    .await
    .expect("invalidate namespace");
    for k in ["a", "b", "c"] {
        assert!(
            !get(&mut c, "campaign", k, false).await.found,
            "{k} survived"
        );
    }
    assert!(get(&mut c, "user_profile", "a", false).await.found);
    assert!(set(&mut c, "campaign", "a", "new", None, &[]).await);
    assert_eq!(
        get(&mut c, "campaign", "a", false).await.value.as_ref(),
        b"new"
    );
}

async fn get_many_and_set_many_keep_request_order(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let entry = |key: &str, value: &str, condition: pb::SetCondition| pb::CacheSetManyEntry {
        key: key.into(),
        value: Bytes::from(value.to_owned()),
        ttl: dur(60_000),
        tags: vec![],
        condition: condition as i32,
    };
    assert!(set(&mut c, "campaign", "exists", "0", None, &[]).await);
    let stored = c
        .set_many(pb::CacheSetManyRequest {
            namespace: "campaign".into(),
            entries: vec![
                entry("x", "1", pb::SetCondition::Always),
                entry("exists", "2", pb::SetCondition::IfAbsent),
                entry("y", "3", pb::SetCondition::IfPresent),
                entry("z", "4", pb::SetCondition::Always),
            ],
        })
        .await
        .expect("set many")
        .into_inner()
        .stored;
    assert_eq!(stored, vec![true, false, false, true]);
    let entries = c
        .get_many(pb::CacheGetManyRequest {
            namespace: "campaign".into(),
            keys: vec!["z".into(), "y".into(), "exists".into(), "x".into()],
        })
        .await
        .expect("get many")
        .into_inner()
        .entries;
    let seen: Vec<(&str, bool, &[u8])> = entries
        .iter()
        .map(|e| (e.key.as_str(), e.found, e.value.as_ref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("z", true, &b"4"[..]),
            ("y", false, &b""[..]),
            ("exists", true, &b"0"[..]),
            ("x", true, &b"1"[..])
        ]
    );
    let too_many = c
        .get_many(pb::CacheGetManyRequest {
            namespace: "campaign".into(),
            keys: (0..6).map(|i| format!("k{i}")).collect(),
        })
        .await
        .expect_err("over max_batch");
    assert_eq!(too_many.code(), Code::InvalidArgument);
}

async fn exactly_one_of_64_concurrent_callers_gets_the_lease(b: Backend) {
    let c = CacheServiceClient::new(b.server.channel.clone());
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            get(&mut c, "campaign", "hot", true).await
        }));
    }
    let mut tokens = Vec::new();
    let mut waits = 0;
    for t in tasks {
        let r = t.await.expect("task");
        assert!(!r.found);
        if !r.lease_token.is_empty() {
            assert!(!r.lease_wait);
            tokens.push(r.lease_token);
        } else {
            assert!(r.lease_wait, "a caller without the lease is told to wait");
            waits += 1;
        }
    }
    assert_eq!(
        tokens.len(),
        1,
        "exactly one lease among 64 concurrent misses"
    );
    assert_eq!(waits, 63);
    let mut c = c.clone();
    assert!(set_with_lease(&mut c, "campaign", "hot", "computed", &tokens[0]).await);
    let hit = get(&mut c, "campaign", "hot", true).await;
    assert!(hit.found && hit.lease_token.is_empty() && !hit.lease_wait);
    assert!(
        !set_with_lease(&mut c, "campaign", "hot", "again", &tokens[0]).await,
        "a lease is used once"
    );
}

async fn a_set_with_a_lease_is_refused_after_a_delete(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let token = get(&mut c, "campaign", "k", true).await.lease_token;
    assert!(!token.is_empty());
    let deleted = c
        .delete(pb::CacheDeleteRequest {
            namespace: "campaign".into(),
            keys: vec!["k".into()],
        })
        .await
        .expect("delete")
        .into_inner()
        .deleted;
    assert_eq!(
        deleted, 0,
        "a key holding only a lease had no value to delete"
    );
    assert!(
        !set_with_lease(&mut c, "campaign", "k", "stale", &token).await,
        "the value was computed before the delete: refused"
    );
    assert!(!get(&mut c, "campaign", "k", false).await.found);

    // The same when a tag invalidation comes between a stale hit's lease and its Set.
    assert!(set(&mut c, "swr", "t", "old", Some(200), &["tg"]).await);
    let stale = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { get(&mut c, "swr", "t", false).await.stale }
    })
    .await;
    assert!(stale, "the value turned stale");
    let token = get(&mut c, "swr", "t", true).await.lease_token;
    assert!(!token.is_empty(), "the stale hit grants the lease");
    let invalidated = c
        .invalidate_tags(pb::CacheInvalidateTagsRequest {
            namespace: "swr".into(),
            tags: vec!["tg".into()],
        })
        .await
        .expect("invalidate")
        .into_inner()
        .invalidated;
    assert_eq!(invalidated, 1, "the stale value was still servable");
    assert!(!set_with_lease(&mut c, "swr", "t", "recomputed", &token).await);
    assert!(!get(&mut c, "swr", "t", false).await.found);

    // And when the whole namespace is invalidated.
    let token = get(&mut c, "campaign", "n", true).await.lease_token;
    assert!(!token.is_empty());
    c.invalidate_namespace(pb::CacheInvalidateNamespaceRequest {
        namespace: "campaign".into(),
    })
    .await
    .expect("invalidate namespace");
    assert!(!set_with_lease(&mut c, "campaign", "n", "stale", &token).await);
}

async fn an_expired_lease_frees_the_key(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let first = get(&mut c, "campaign", "k", true).await.lease_token;
    assert!(!first.is_empty());
    // Poll until the 300 ms lease has expired and a caller is granted a new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        let r = get(&mut c, "campaign", "k", true).await;
        if !r.lease_token.is_empty() {
            break r.lease_token;
        }
        assert!(r.lease_wait, "while the lease is held, callers wait");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(first, second);
    assert!(
        !set_with_lease(&mut c, "campaign", "k", "late", &first).await,
        "the expired lease no longer writes"
    );
    assert!(set_with_lease(&mut c, "campaign", "k", "fresh", &second).await);
}

async fn stale_while_revalidate_serves_stale_to_all_but_the_lease_holder(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    // `swr` keeps values 30 s past their TTL.
    assert!(set(&mut c, "swr", "k", "old", Some(200), &[]).await);
    let stale = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { get(&mut c, "swr", "k", false).await.stale }
    })
    .await;
    assert!(stale, "the value turned stale");
    let holder = get(&mut c, "swr", "k", true).await;
    assert!(holder.found && holder.stale);
    assert_eq!(holder.value.as_ref(), b"old");
    assert!(
        !holder.lease_token.is_empty(),
        "the first stale reader refreshes"
    );
    for _ in 0..5 {
        let other = get(&mut c, "swr", "k", true).await;
        assert!(other.found && other.stale && other.lease_wait);
        assert_eq!(
            other.value.as_ref(),
            b"old",
            "the others are served the stale value"
        );
        assert!(other.lease_token.is_empty());
    }
    assert!(set_with_lease(&mut c, "swr", "k", "new", &holder.lease_token).await);
    let fresh = get(&mut c, "swr", "k", true).await;
    assert!(fresh.found && !fresh.stale);
    assert_eq!(fresh.value.as_ref(), b"new");
}

async fn bad_input_is_rejected_and_stores_nothing(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let invalid = |r: Result<tonic::Response<pb::CacheSetResponse>, tonic::Status>, field: &str| {
        let e = r.expect_err("rejected");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let bad = e.get_details_bad_request().expect("details");
        assert_eq!(bad.field_violations[0].field, field);
    };
    let req = |key: &str, value: usize, ttl: Option<prost_types::Duration>, tags: usize| {
        pb::CacheSetRequest {
            namespace: "campaign".into(),
            key: key.into(),
            value: Bytes::from(vec![b'x'; value]),
            ttl,
            tags: (0..tags).map(|i| format!("t{i}")).collect(),
            ..Default::default()
        }
    };
    invalid(c.set(req("k", 1025, None, 0)).await, "value");
    invalid(c.set(req("", 1, None, 0)).await, "key");
    invalid(c.set(req(&"k".repeat(513), 1, None, 0)).await, "key");
    invalid(
        c.set(req(
            "k",
            1,
            Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            0,
        ))
        .await,
        "ttl",
    );
    invalid(
        c.set(req(
            "k",
            1,
            Some(prost_types::Duration {
                seconds: 30 * 86_400,
                nanos: 0,
            }),
            0,
        ))
        .await,
        "ttl",
    );
    invalid(c.set(req("k", 1, None, 17)).await, "tags");
    let bad_ns = c
        .set(pb::CacheSetRequest {
            namespace: "bad namespace!".into(),
            ..req("k", 1, None, 0)
        })
        .await;
    invalid(bad_ns, "namespace");
    let batch = c
        .set_many(pb::CacheSetManyRequest {
            namespace: "campaign".into(),
            entries: vec![
                pb::CacheSetManyEntry {
                    key: "ok".into(),
                    value: Bytes::from_static(b"1"),
                    ..Default::default()
                },
                pb::CacheSetManyEntry {
                    key: "big".into(),
                    value: Bytes::from(vec![0; 2000]),
                    ..Default::default()
                },
            ],
        })
        .await
        .expect_err("second entry too big");
    let bad = batch.get_details_bad_request().expect("details");
    assert_eq!(bad.field_violations[0].field, "entries[1].value");
    assert!(
        !get(&mut c, "campaign", "ok", false).await.found,
        "a rejected batch stores nothing"
    );
    assert!(!get(&mut c, "campaign", "k", false).await.found);
    assert!(b.leftovers().await.is_empty(), "{:?}", b.leftovers().await);
    // The check can fail, on either store: one entry stored shows.
    assert!(set(&mut c, "campaign", "ok", "1", None, &[]).await);
    assert!(!b.leftovers().await.is_empty(), "a stored entry is held");
}

async fn unknown_namespaces_can_be_refused(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let err = c
        .get(pb::CacheGetRequest {
            namespace: "nope".into(),
            key: "k".into(),
            lease: false,
        })
        .await
        .expect_err("unknown namespace");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        set(&mut c, "user_profile", "k", "v", None, &[]).await,
        "configured ones work"
    );
}

/// A lease granted on a miss knows no tags yet; the value computed under it is Set with tags.
/// If any of those tags was invalidated after the lease was granted, the value may have been
/// computed from data the invalidation was about: the Set is refused.
async fn a_lease_from_a_miss_is_refused_once_its_tags_are_invalidated(b: Backend) {
    let mut c = CacheServiceClient::new(b.server.channel.clone());
    let leased_set = |key: &str, token: &str| pb::CacheSetRequest {
        namespace: "campaign".into(),
        key: key.into(),
        value: Bytes::from_static(b"computed"),
        tags: vec!["team:7".into(), "other".into()],
        lease_token: token.into(),
        ..Default::default()
    };
    let token = get(&mut c, "campaign", "report", true).await.lease_token;
    assert!(!token.is_empty(), "a miss grants the lease");
    c.invalidate_tags(pb::CacheInvalidateTagsRequest {
        namespace: "campaign".into(),
        tags: vec!["team:7".into()],
    })
    .await
    .expect("invalidate");
    let stored = c
        .set(leased_set("report", &token))
        .await
        .expect("set")
        .into_inner()
        .stored;
    assert!(!stored, "computed before its tag was invalidated: refused");
    assert!(!get(&mut c, "campaign", "report", false).await.found);

    // A lease granted after the invalidation is honoured.
    let token = get(&mut c, "campaign", "report2", true).await.lease_token;
    assert!(!token.is_empty());
    let stored = c
        .set(leased_set("report2", &token))
        .await
        .expect("set")
        .into_inner()
        .stored;
    assert!(stored, "the lease postdates the invalidation");
    assert!(get(&mut c, "campaign", "report2", false).await.found);
}
