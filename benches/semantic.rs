//! The semantic cache at scale: 100,000 entries of 768 dimensions in one namespace.
//!
//! ```sh
//! cargo build --release && cargo bench --bench semantic -- [entries=100000]
//! ```
//!
//! 1. The index alone (in this process): build time, bytes per entry, search p50/p99 exact and
//!    with the sign-bit prefilter, and recall@1 of the prefilter against exact search, for
//!    near-duplicate queries (what a semantic cache hits on) and for arbitrary ones, on uniform
//!    random vectors (the hardest case for a sign prefilter) and on clustered ones (closer to
//!    real embeddings).
//! 2. The service: a private Redis and two release `flowstate` processes. Fill through A
//!    (16 callers), Get p50/p99 at one caller (hits and misses) beside `Health/Check` on the
//!    same server (the cost of gRPC itself), Redis memory per entry; then start replica B and
//!    time until its index holds everything (start-up load), its memory per entry; then 200
//!    trials of Set through A → found through B.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use flowstate::{
    proto::v1::{
        SemanticGetRequest, SemanticSetRequest,
        semantic_cache_service_client::SemanticCacheServiceClient,
    },
    semantic::index::{
        SearchPlan, VectorIndex,
        synthetic::{self, noisy},
    },
};
use rand::{SeedableRng, rngs::StdRng};
use support::{Killed, free_port, pct, wait_port};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const DIM: usize = 768;

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    synthetic::random_unit(rng, DIM)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn sorted_ms(mut ns: Vec<u128>) -> (f64, f64, f64) {
    ns.sort_unstable();
    (pct(&ns, 50.0), pct(&ns, 99.0), pct(&ns, 100.0))
}

/// Part 1: the index alone.
fn index_figures(entries: usize, clustered: bool) {
    let mut rng = StdRng::seed_from_u64(42);
    let centers: Vec<Vec<f32>> = (0..2_000).map(|_| random_unit(&mut rng)).collect();
    let vectors: Vec<Vec<f32>> = (0..entries)
        .map(|i| {
            if clustered {
                noisy(&mut rng, &centers[i % centers.len()], 0.7)
            } else {
                random_unit(&mut rng)
            }
        })
        .collect();
    let before = rss_kib(std::process::id());
    let started = Instant::now();
    let mut index = VectorIndex::new(DIM);
    for (i, v) in vectors.iter().enumerate() {
        index.upsert(i as u64 + 1, v);
    }
    let build = started.elapsed();
    let grown = rss_kib(std::process::id()).saturating_sub(before);
    let plan = SearchPlan {
        exact_max: 20_000,
        rerank: 64,
    };
    let kind = if clustered { "clustered" } else { "uniform" };
    println!(
        "index {kind}: {entries} × {DIM}: built in {:.0} ms, {:.0} bytes/entry counted, {:.0} bytes/entry RSS",
        build.as_secs_f64() * 1e3,
        index.bytes() as f64 / entries as f64,
        grown as f64 * 1024.0 / entries as f64
    );
    for (label, ratio) in [
        ("near-duplicate cos≈0.995", Some(0.1f32)),
        ("near-duplicate cos≈0.96", Some(0.3)),
        ("near-duplicate cos≈0.90", Some(0.48)),
        ("arbitrary query", None),
    ] {
        let (mut fast, mut exact, mut agree) = (Vec::new(), Vec::new(), 0);
        let trials = 300;
        for t in 0..trials {
            let q = match ratio {
                Some(r) => noisy(&mut rng, &vectors[(t * 7919) % entries], r),
                None if clustered => noisy(&mut rng, &centers[t % centers.len()], 0.7),
                None => random_unit(&mut rng),
            };
            let s = Instant::now();
            let got = index.search(&q, -1.0, 1, plan);
            fast.push(s.elapsed().as_nanos());
            let s = Instant::now();
            let want = index.search_exact(&q, -1.0, 1);
            exact.push(s.elapsed().as_nanos());
            agree += usize::from(got.first().map(|g| g.0) == want.first().map(|w| w.0));
        }
        let (f50, f99, _) = sorted_ms(fast);
        let (e50, e99, _) = sorted_ms(exact);
        println!(
            "  {label:<26} recall@1 {:.3}  prefilter p50/p99 {f50:.3}/{f99:.3} ms  exact {e50:.3}/{e99:.3} ms",
            agree as f64 / trials as f64
        );
    }
}

async fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

fn start_flowstate(config: &std::path::Path, redis_port: u16, port: u16) -> Killed {
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/flowstate");
    Killed(
        Command::new(binary)
            .arg("--config")
            .arg(config)
            .env(
                "FLOWSTATE_REDIS__URL",
                format!("redis://127.0.0.1:{redis_port}"),
            )
            .env("FLOWSTATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWSTATE_METRICS__ENABLED", "false")
            .env("FLOWSTATE_LOG__LEVEL", "error")
            .spawn()
            .expect("flowstate: run `cargo build --release` first"),
    )
}

async fn redis_used_memory(port: u16) -> u64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn get(embedding: Vec<f32>) -> SemanticGetRequest {
    SemanticGetRequest {
        namespace: "bench".into(),
        embedding,
        min_similarity: None,
    }
}

/// Part 2: the service.
async fn service_figures(entries: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("flowstate.toml");
    std::fs::write(
        &config,
        format!(
            "[semantic.namespaces.bench]\ndimension = {DIM}\nmax_entries = {}\nttl = \"1h\"\n",
            entries * 2
        ),
    )
    .expect("config");
    let (redis_port, _redis) = support::redis().await;
    let port_a = free_port();
    let a = start_flowstate(&config, redis_port, port_a);
    wait_port(port_a).await;
    let ch_a = channel(port_a).await;
    let redis_before = redis_used_memory(redis_port).await;

    // Fill through A, 16 callers.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = SemanticCacheServiceClient::new(ch_a.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1000 + w as u64);
            let mut kept = Vec::new();
            for i in (w..entries).step_by(16) {
                let v = random_unit(&mut rng);
                let id = c
                    .set(SemanticSetRequest {
                        namespace: "bench".into(),
                        embedding: v.clone(),
                        value: format!("answer {i}: {}", "x".repeat(200)).into(),
                        ttl: None,
                        metadata: Default::default(),
                    })
                    .await
                    .expect("Set")
                    .into_inner()
                    .id;
                if i % 100 == 0 {
                    kept.push((v, id));
                }
            }
            kept
        }));
    }
    let mut probes = Vec::new();
    for t in tasks {
        probes.extend(t.await.expect("filler"));
    }
    let fill = started.elapsed();
    let redis_after = redis_used_memory(redis_port).await;
    println!(
        "service: filled {entries} entries through A in {:.1} s ({:.0} Sets/s, 16 callers); Redis {:.0} bytes/entry",
        fill.as_secs_f64(),
        entries as f64 / fill.as_secs_f64(),
        (redis_after - redis_before) as f64 / entries as f64
    );

    // One caller: Get hits (near-duplicates), misses (unrelated), Health/Check, side by side.
    let mut rng = StdRng::seed_from_u64(7);
    let mut c = SemanticCacheServiceClient::new(ch_a.clone());
    let mut health = HealthClient::new(ch_a.clone());
    let (mut hits, mut misses, mut checks, mut found) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..2_000 {
        let (v, id) = &probes[round % probes.len()];
        let q = noisy(&mut rng, v, 0.1);
        let s = Instant::now();
        let r = c.get(get(q)).await.expect("Get").into_inner();
        hits.push(s.elapsed().as_nanos());
        found += usize::from(r.found && r.id == *id);
        let q = random_unit(&mut rng);
        let s = Instant::now();
        let r = c.get(get(q)).await.expect("Get").into_inner();
        misses.push(s.elapsed().as_nanos());
        assert!(!r.found, "an unrelated query hit");
        let s = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("Check");
        checks.push(s.elapsed().as_nanos());
    }
    let (h50, h99, _) = sorted_ms(hits);
    let (m50, m99, _) = sorted_ms(misses);
    let (c50, c99, _) = sorted_ms(checks);
    println!(
        "  one caller: Get hit p50/p99 {h50:.3}/{h99:.3} ms ({found}/2000 found the entry), \
         miss {m50:.3}/{m99:.3} ms, Health/Check {c50:.3}/{c99:.3} ms"
    );

    // Replica B, started now: time until its index holds the last entry set.
    let port_b = free_port();
    let started = Instant::now();
    let b = start_flowstate(&config, redis_port, port_b);
    wait_port(port_b).await;
    let ch_b = channel(port_b).await;
    let mut cb = SemanticCacheServiceClient::new(ch_b.clone());
    let mut loaded = None;
    'poll: for _ in 0..6_000 {
        for (v, id) in probes.iter().rev().take(5) {
            let found = cb
                .get(get(v.clone()))
                .await
                .is_ok_and(|r| r.into_inner().id == *id);
            if !found {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue 'poll;
            }
        }
        loaded = Some(started.elapsed());
        break;
    }
    let loaded = loaded.expect("replica B never loaded the namespace");
    let mut all = 0;
    for (v, id) in &probes {
        all += usize::from(cb.get(get(v.clone())).await.expect("Get").into_inner().id == *id);
    }
    println!(
        "  replica B: process start to index loaded {:.2} s; finds {all}/{} probes; RSS {:.0} bytes/entry (A: {:.0})",
        loaded.as_secs_f64(),
        probes.len(),
        rss_kib(b.0.id()) as f64 * 1024.0 / entries as f64,
        rss_kib(a.0.id()) as f64 * 1024.0 / entries as f64,
    );

    // Set through A → found through B.
    let mut lag = Vec::new();
    for _ in 0..200 {
        let v = random_unit(&mut rng);
        let id = c
            .set(SemanticSetRequest {
                namespace: "bench".into(),
                embedding: v.clone(),
                value: "fresh".into(),
                ttl: None,
                metadata: Default::default(),
            })
            .await
            .expect("Set")
            .into_inner()
            .id;
        let s = Instant::now();
        loop {
            if cb.get(get(v.clone())).await.expect("Get").into_inner().id == id {
                break;
            }
            assert!(s.elapsed() < Duration::from_secs(5), "not found through B");
        }
        lag.push(s.elapsed().as_nanos());
    }
    let (l50, l99, lmax) = sorted_ms(lag);
    println!(
        "  Set through A → found through B: p50/p99/max {l50:.3}/{l99:.3}/{lmax:.3} ms (200 trials)"
    );
    drop((a, b));
}

fn main() {
    let entries: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    index_figures(entries, false);
    index_figures(entries, true);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(service_figures(entries));
}
