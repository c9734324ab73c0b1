//! Unit tests of the in-memory cache: the byte budget and its eviction labels, generations
//! lost to eviction, and every tenant's charge against a recount of what the cache holds.
use std::time::Duration;

use bytes::Bytes;

use super::{accounting::MAX_EVICTION_LABELS, *};

fn store(max_bytes: u64) -> MemoryCacheStore {
    MemoryCacheStore::new(
        &MemoryBackend::new("t", Duration::from_secs(60), 1 << 20),
        max_bytes,
        CacheStoreSettings {
            lease_ttl_ms: 5_000,
            generation_keep_ms: 600_000,
        },
    )
}

fn write(key: &str, value: usize, tags: &[String]) -> Write {
    Write {
        key: key.to_owned(),
        value: Bytes::from(vec![b'x'; value]),
        ttl_ms: 60_000,
        stale_ms: 0,
        tags: tags.to_vec(),
        condition: Condition::Always,
        lease_token: None,
    }
}

#[tokio::test]
async fn the_budget_counts_tag_listings_and_bounds_eviction_labels() {
    let budget = 256 * 1024;
    let cache = store(budget);
    let t = Tenant::default_tenant();
    // Small values, many long tags: the listings, not the values, fill the budget.
    let tags: Vec<String> = (0..16)
        .map(|i| format!("{i}-{}", "t".repeat(100)))
        .collect();
    for i in 0..2_000 {
        let ns = format!("ns{}", i % 300);
        let stored = cache
            .set(&t, &ns, &[write(&format!("k{i}"), 10, &tags)])
            .await
            .expect("set");
        assert_eq!(stored, [true]);
    }
    cache.items.run_pending_tasks();
    assert!(
        cache.items.weighted_size() <= budget,
        "{} bytes held",
        cache.items.weighted_size()
    );
    let listed: usize = cache.shared.lock().tags.values().map(HashSet::len).sum();
    let entries = cache
        .items
        .iter()
        .filter(|(_, v)| matches!(&**v, Item::Entry(_)))
        .count();
    assert_eq!(
        listed,
        entries * tags.len(),
        "listings follow the entries kept"
    );
    let evictions = cache.evictions();
    assert!(evictions.iter().map(|(_, n)| n).sum::<u64>() > 1_000);
    assert!(
        evictions.len() <= MAX_EVICTION_LABELS + 1,
        "{} eviction labels",
        evictions.len()
    );
}

#[tokio::test]
async fn an_evicted_generation_means_misses_and_a_new_number() {
    let cache = store(1 << 20);
    let t = Tenant::default_tenant();
    cache
        .set(&t, "ns", &[write("k", 1, &[])])
        .await
        .expect("set");
    let first = cache.generation(&t, "ns").expect("generation");
    cache
        .items
        .invalidate(&cache.keys.cache_generation(&t, "ns"));
    let miss = cache.get(&t, "ns", "k", None).await.expect("get");
    assert_eq!(miss.freshness, Freshness::Miss);
    cache
        .set(&t, "ns", &[write("k", 1, &[])])
        .await
        .expect("set");
    assert!(cache.generation(&t, "ns").expect("generation") > first);
}

#[tokio::test]
async fn a_tenant_over_its_cache_bytes_is_refused_whole_and_others_are_not() {
    let quotas = QuotaConfig {
        memory_cache_bytes: 4096,
        ..QuotaConfig::default()
    };
    let cache = MemoryCacheStore::new(
        &MemoryBackend::new("t", Duration::from_secs(60), 1 << 20).with_quotas(quotas),
        1 << 20,
        CacheStoreSettings {
            lease_ttl_ms: 5_000,
            generation_keep_ms: 600_000,
        },
    );
    let (a, b) = (
        Tenant::new("a").expect("tenant"),
        Tenant::new("b").expect("tenant"),
    );
    for i in 0..3 {
        cache
            .set(&a, "ns", &[write(&format!("k{i}"), 1000, &[])])
            .await
            .expect("within the quota");
    }
    let over = cache
        .set(
            &a,
            "ns",
            &[write("small", 10, &[]), write("big", 1000, &[])],
        )
        .await;
    assert!(matches!(over, Err(StoreError::Full(_))), "{over:?}");
    let small = cache.get(&a, "ns", "small", None).await.expect("get");
    assert_eq!(small.freshness, Freshness::Miss, "all or nothing");
    // Rewriting a key in place does not grow the tenant.
    cache
        .set(&a, "ns", &[write("k0", 1000, &[])])
        .await
        .expect("same size in place");
    cache
        .set(&b, "ns", &[write("k", 3000, &[])])
        .await
        .expect("another tenant is not affected");
    cache
        .delete(&a, "ns", &["k1".into(), "k2".into()])
        .await
        .expect("delete");
    cache
        .set(&a, "ns", &[write("big", 1000, &[])])
        .await
        .expect("room again after a delete");
}

fn quota_store(cap: u64) -> MemoryCacheStore {
    let quotas = QuotaConfig {
        memory_cache_bytes: cap,
        ..QuotaConfig::default()
    };
    MemoryCacheStore::new(
        &MemoryBackend::new("t", Duration::from_secs(60), 1 << 20).with_quotas(quotas),
        1 << 22,
        CacheStoreSettings {
            lease_ttl_ms: 5_000,
            generation_keep_ms: 600_000,
        },
    )
}

/// What the tenant should be charged, recounted from what the cache holds: its live
/// generations' entries, its generations and its marks.
fn recount(cache: &MemoryCacheStore, tenant: &str) -> i64 {
    cache.items.run_pending_tasks();
    let live: HashSet<u64> = cache
        .items
        .iter()
        .filter_map(|(_, v)| match &*v {
            Item::Generation { number, .. } => Some(*number),
            _ => None,
        })
        .collect();
    cache
        .items
        .iter()
        .filter(|(_, v)| match &**v {
            Item::Entry(e) => &*e.tenant == tenant && live.contains(&e.generation),
            Item::Generation { tenant: t, .. } | Item::Mark { tenant: t, .. } => &**t == tenant,
        })
        .map(|(k, v)| i64::from(weight(&k, &v)))
        .sum()
}

#[tokio::test]
async fn every_item_is_charged_to_its_tenant_and_the_count_matches_a_recount() {
    let cache = quota_store(0);
    let (a, b) = (
        Tenant::new("a").expect("tenant"),
        Tenant::new("b").expect("tenant"),
    );
    let tags = ["t1".to_owned(), "t2".to_owned()];
    for i in 0..50 {
        let ns = format!("ns{}", i % 5);
        cache
            .set(&a, &ns, &[write(&format!("k{i}"), 100 + i, &tags)])
            .await
            .expect("set");
        cache
            .set(&b, &ns, &[write(&format!("k{i}"), 10, &[])])
            .await
            .expect("set");
    }
    cache
        .get(&a, "ns9", "leased", Some("token"))
        .await
        .expect("a lease in a new namespace");
    cache
        .invalidate_tags(&a, "ns1", &["t1".to_owned()])
        .await
        .expect("invalidate tags");
    cache
        .invalidate_namespace(&a, "ns2")
        .await
        .expect("invalidate namespace");
    cache
        .delete(&a, "ns3", &["k3".to_owned(), "k8".to_owned()])
        .await
        .expect("delete");
    cache
        .set(&a, "ns0", &[write("k0", 5, &[])])
        .await
        .expect("rewrite smaller");
    for tenant in ["a", "b"] {
        cache.items.run_pending_tasks();
        let held = cache.shared.lock().held(tenant);
        assert_eq!(held, recount(&cache, tenant), "tenant {tenant}");
        assert!(held > 0);
    }
}

#[tokio::test]
async fn a_tenant_at_its_cap_creates_nothing_not_even_a_namespace_or_a_lease() {
    let cache = quota_store(4096);
    let a = Tenant::new("a").expect("tenant");
    let mut i = 0;
    while cache
        .set(&a, "ns", &[write(&format!("k{i}"), 500, &[])])
        .await
        .is_ok()
    {
        i += 1;
    }
    let held = cache.shared.lock().held("a");
    for n in 0..100 {
        let ns = format!("fresh{n}");
        let refused = cache.set(&a, &ns, &[write("k", 1, &[])]).await;
        assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
        let refused = cache.get(&a, &ns, "k", Some("token")).await;
        assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
        assert_eq!(cache.generation(&a, &ns), None, "nothing created");
    }
    cache.items.run_pending_tasks();
    assert_eq!(cache.shared.lock().held("a"), held);
    // Plain reads and invalidations still work for a full tenant.
    let hit = cache.get(&a, "ns", "k0", None).await.expect("get");
    assert_eq!(hit.freshness, Freshness::Fresh);
    cache
        .invalidate_tags(&a, "ns", &["x".to_owned()])
        .await
        .expect("invalidations are never refused");
}

#[tokio::test]
async fn invalidating_a_namespace_frees_the_tenants_quota_and_the_space() {
    let cache = quota_store(8192);
    let a = Tenant::new("a").expect("tenant");
    for i in 0..6 {
        cache
            .set(&a, "ns", &[write(&format!("k{i}"), 1000, &[])])
            .await
            .expect("within the quota");
    }
    let full = cache.set(&a, "ns", &[write("more", 3000, &[])]).await;
    assert!(matches!(full, Err(StoreError::Full(_))), "{full:?}");
    cache
        .invalidate_namespace(&a, "ns")
        .await
        .expect("invalidate");
    cache
        .set(&a, "ns", &[write("more", 3000, &[])])
        .await
        .expect("room again at once");
    let expected = recount(&cache, "a");
    // (The guard must not be held across moka calls: its listener takes the same lock.)
    let held = cache.shared.lock().held("a");
    assert_eq!(held, expected);
    // The old generation's entries are purged in the background, not kept to their TTL.
    for _ in 0..100 {
        cache.items.run_pending_tasks();
        let entries = cache
            .items
            .iter()
            .filter(|(_, v)| matches!(&**v, Item::Entry(_)))
            .count();
        if entries == 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the invalidated generation's entries were not purged");
}
