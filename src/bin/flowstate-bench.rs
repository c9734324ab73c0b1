//! Load generator for flowstate: real tonic clients over several HTTP/2 connections.
//!
//! Closed loop (`--rate 0`, default): `--concurrency` workers each send the next call as soon as
//! the previous one answers. Open loop (`--rate R`): calls are scheduled at R per second in total
//! and latency is measured from each call's *intended* send time, so queueing shows up in the
//! figures instead of slowing the generator down (no coordinated omission).
//!
//! Without `--addr` it starts flowstate in-process on 127.0.0.1:0 (memory store, or Redis with
//! `--redis-url`). Prints a table and one JSON line per scenario.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use flowstate::proto::v1::{
    self as pb, cache_service_client::CacheServiceClient,
    rate_limit_service_client::RateLimitServiceClient,
    session_service_client::SessionServiceClient,
};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for flowstate")]
struct Args {
    /// Server address (host:port). Unset: start flowstate in-process.
    #[arg(long)]
    addr: Option<String>,
    /// Redis URL for the in-process server (unset: memory store).
    #[arg(long)]
    redis_url: Option<String>,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "session-get,session-create,cache-get,cache-set,ratelimit-check,ratelimit-check2"
    )]
    scenarios: Vec<Scenario>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds per scenario (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open-loop total rate in calls per second; 0 for closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// GetSession of an existing session (no touch).
    SessionGet,
    /// CreateSession with a small payload.
    SessionCreate,
    /// Cache Get of a present key (a hit).
    CacheGet,
    /// Cache Set of a 100-byte value.
    CacheSet,
    /// RateLimit Check of one inline GCRA limit.
    RatelimitCheck,
    /// RateLimit Check of two limits (per user and per tenant), all or nothing.
    RatelimitCheck2,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::SessionGet => "session-get",
            Scenario::SessionCreate => "session-create",
            Scenario::CacheGet => "cache-get",
            Scenario::CacheSet => "cache-set",
            Scenario::RatelimitCheck => "ratelimit-check",
            Scenario::RatelimitCheck2 => "ratelimit-check2",
        }
    }
}

/// Per-scenario state prepared before the run (ids, keys).
#[derive(Clone)]
struct Fixture {
    session_id: String,
}

/// A limit no benchmark reaches (10^8 per hour), so every check does the full work of an
/// admission.
fn bench_limit(key: String) -> pb::LimitCheck {
    pb::LimitCheck {
        limit: Some(pb::limit_check::Limit::Policy(pb::LimitPolicy {
            algorithm: pb::Algorithm::Gcra as i32,
            limit: 100_000_000,
            period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            burst: 0,
            failure_mode: pb::FailureMode::Closed as i32,
        })),
        key,
    }
}

const CACHE_NAMESPACE: &str = "bench";
const VALUE: &[u8; 100] = &[b'x'; 100];

async fn prepare(channel: &Channel) -> anyhow::Result<Fixture> {
    CacheServiceClient::new(channel.clone())
        .set(pb::CacheSetRequest {
            namespace: CACHE_NAMESPACE.into(),
            key: "hot".into(),
            value: bytes::Bytes::from_static(VALUE),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .context("setting the fixture cache key")?;
    let session = SessionServiceClient::new(channel.clone())
        .create_session(pb::CreateSessionRequest {
            user_id: "bench-user".into(),
            data: [("cart".to_owned(), bytes::Bytes::from_static(b"3 items"))].into(),
            ..Default::default()
        })
        .await
        .context("creating the fixture session")?
        .into_inner();
    Ok(Fixture {
        session_id: session.id,
    })
}

async fn call(scenario: Scenario, channel: &Channel, fixture: &Fixture, n: u64) -> bool {
    match scenario {
        Scenario::SessionGet => SessionServiceClient::new(channel.clone())
            .get_session(pb::GetSessionRequest {
                id: fixture.session_id.clone(),
                touch: false,
            })
            .await
            .is_ok(),
        Scenario::SessionCreate => SessionServiceClient::new(channel.clone())
            .create_session(pb::CreateSessionRequest {
                // Spread over users so the per-user limit does not turn creates into evictions.
                user_id: format!("bench-{}", n % 10_000),
                data: [("cart".to_owned(), bytes::Bytes::from_static(b"3 items"))].into(),
                ..Default::default()
            })
            .await
            .is_ok(),
        Scenario::CacheGet => CacheServiceClient::new(channel.clone())
            .get(pb::CacheGetRequest {
                namespace: CACHE_NAMESPACE.into(),
                key: "hot".into(),
                lease: false,
            })
            .await
            .is_ok_and(|r| r.get_ref().found),
        Scenario::CacheSet => CacheServiceClient::new(channel.clone())
            .set(pb::CacheSetRequest {
                namespace: CACHE_NAMESPACE.into(),
                key: format!("k{}", n % 1000),
                value: bytes::Bytes::from_static(VALUE),
                ..Default::default()
            })
            .await
            .is_ok(),
        Scenario::RatelimitCheck => RateLimitServiceClient::new(channel.clone())
            .check(pb::CheckRequest {
                checks: vec![bench_limit(format!("user-{}", n % 1000))],
                cost: None,
                dry_run: false,
            })
            .await
            .is_ok_and(|r| r.get_ref().allowed),
        Scenario::RatelimitCheck2 => RateLimitServiceClient::new(channel.clone())
            .check(pb::CheckRequest {
                checks: vec![
                    bench_limit(format!("user-{}", n % 1000)),
                    bench_limit("tenant".into()),
                ],
                cost: None,
                dry_run: false,
            })
            .await
            .is_ok_and(|r| r.get_ref().allowed),
    }
}

struct Outcome {
    histogram: Histogram<u64>,
    errors: u64,
    elapsed: Duration,
}

async fn run_scenario(
    args: &Args,
    scenario: Scenario,
    channels: &[Channel],
    fixture: &Fixture,
) -> anyhow::Result<Outcome> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let per_worker_interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
    let fixture = Arc::new(fixture.clone());
    let concurrency = args.concurrency;
    let mut workers = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let channel = channels[w % channels.len()].clone();
        let fixture = fixture.clone();
        workers.push(tokio::spawn(async move {
            // Microseconds, 1 µs to 60 s, 3 significant digits.
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let mut errors = 0u64;
            let mut n = w as u64;
            // Open loop: stagger the workers' schedules so they interleave evenly.
            let mut next = start
                + per_worker_interval
                    .map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / concurrency as f64));
            loop {
                let sent = match per_worker_interval {
                    Some(interval) => {
                        let intended = next;
                        next += interval;
                        if Instant::now() < intended {
                            // On time: the worker waits for its slot. Tokio's timer fires up to
                            // a millisecond late; that lateness is the generator's, not the
                            // server's, so latency counts from the actual send.
                            tokio::time::sleep_until(intended.into()).await;
                            Instant::now()
                        } else {
                            // Behind schedule (the previous call overran its slot): count from
                            // the intended time, so queueing shows up (no coordinated omission).
                            intended
                        }
                    }
                    None => Instant::now(),
                };
                if sent >= end {
                    break;
                }
                let ok = call(scenario, &channel, &fixture, n).await;
                n += 16_384;
                let done = Instant::now();
                if sent >= measure_from {
                    if ok {
                        let us = done.duration_since(sent).as_micros().max(1);
                        let _ = h.record(u64::try_from(us).unwrap_or(u64::MAX));
                    } else {
                        errors += 1;
                    }
                }
            }
            (h, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await?;
        histogram.add(&h)?;
        errors += e;
    }
    Ok(Outcome {
        histogram,
        errors,
        elapsed: measure,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async_main(args))
}

async fn async_main(args: Args) -> anyhow::Result<()> {
    let (addr, _server) = match &args.addr {
        Some(addr) => (addr.clone(), None),
        None => {
            let mut config = flowstate::config::Config::default();
            config.redis.url = args.redis_url.clone();
            config.redis.key_prefix = format!("bench{}", std::process::id());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?.to_string();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(flowstate::server::run(config, listener, async {
                let _ = stopped.await;
            }));
            (addr, Some((stop, task)))
        }
    };
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    let fixture = prepare(&channels[0]).await?;
    println!(
        "{:<16} {:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "scenario", "conc", "req/s", "p50 µs", "p90 µs", "p99 µs", "p99.9", "max µs", "errors"
    );
    let mut json_lines = Vec::new();
    for &scenario in &args.scenarios {
        let o = run_scenario(&args, scenario, &channels, &fixture).await?;
        let h = &o.histogram;
        let rps = h.len() as f64 / o.elapsed.as_secs_f64();
        println!(
            "{:<16} {:>5} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
            scenario.name(),
            args.concurrency,
            rps,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            o.errors
        );
        json_lines.push(serde_json::json!({
            "scenario": scenario.name(),
            "mode": if args.rate > 0.0 { "open" } else { "closed" },
            "rate": args.rate,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "requests": h.len(),
            "errors": o.errors,
            "rps": rps,
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
        }));
    }
    for line in json_lines {
        println!("{line}");
    }
    Ok(())
}
