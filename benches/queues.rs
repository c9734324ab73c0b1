//! Job queue latency and throughput through real gRPC calls, against the release binary on a
//! private Redis, side by side with `redis-benchmark` XADD on the same Redis:
//!
//! ```sh
//! cargo build --release && cargo bench --bench queues -- [seconds=5]
//! ```
//!
//! - enqueue → handler start with 8 idle workers blocked in Fetch(wait) (500 jobs, 5 ms apart):
//!   each job carries the wall-clock nanoseconds just before its Enqueue;
//! - a job delayed by 2 s → its start (100 jobs, 8 idle workers);
//! - Enqueue throughput (16 callers), and how fast 16 workers drain 20,000 queued jobs
//!   (Fetch of 1 or of 10, an Ack per job), each as a ratio of `redis-benchmark -c 16 XADD`.

mod support;

use std::{
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use flowstate::proto::v1::{
    AckRequest, EnqueueManyRequest, EnqueueRequest, FetchRequest, JobOptions, NewJob,
    queue_service_client::QueueServiceClient,
};
use support::{now_ns, pct};
use tonic::transport::Channel;

type Client = QueueServiceClient<Channel>;

fn wait(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

async fn enqueue(c: &mut Client, queue: &str, payload: Bytes, delay_ms: u64) {
    c.enqueue(EnqueueRequest {
        queue: queue.into(),
        payload,
        options: Some(JobOptions {
            delay: (delay_ms > 0).then(|| wait(delay_ms)).flatten(),
            ..Default::default()
        }),
    })
    .await
    .expect("enqueue");
}

/// `jobs` jobs started by 8 idle workers; each worker records now − the job's payload (ns).
async fn start_latency(channels: &[Channel], jobs: usize, delay_ms: u64, gap_ms: u64) -> Vec<u128> {
    let queue = format!("lat-{}", now_ns());
    let seen = Arc::new(Mutex::new(Vec::with_capacity(jobs)));
    let done = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..8 {
        let mut c = Client::new(channels[i % channels.len()].clone());
        let (queue, seen, done) = (queue.clone(), seen.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let got = c
                    .fetch(FetchRequest {
                        queues: vec![queue.clone()],
                        max: 1,
                        wait: wait(500),
                    })
                    .await
                    .expect("fetch")
                    .into_inner();
                for job in got.jobs {
                    let sent: u128 = std::str::from_utf8(&job.payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    seen.lock()
                        .expect("seen")
                        .push(now_ns().saturating_sub(sent));
                    c.ack(AckRequest {
                        queue: job.queue,
                        job_id: job.id,
                        lease_token: job.lease_token,
                    })
                    .await
                    .expect("ack");
                }
            }
        }));
    }
    // The workers are waiting before the first job is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut producer = Client::new(channels[0].clone());
    for _ in 0..jobs {
        enqueue(&mut producer, &queue, now_ns().to_string().into(), delay_ms).await;
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    let end = Instant::now() + Duration::from_millis(delay_ms + 10_000);
    while seen.lock().expect("seen").len() < jobs && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let mut all = seen.lock().expect("seen").clone();
    assert_eq!(all.len(), jobs, "every job started");
    all.sort_unstable();
    all
}

/// Enqueues per second by 16 callers for `secs`.
async fn enqueue_rate(channels: &[Channel], secs: f64) -> f64 {
    let queue = format!("rate-{}", now_ns());
    let count = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut c = Client::new(channels[i % channels.len()].clone());
            let (queue, count) = (queue.clone(), count.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    enqueue(
                        &mut c,
                        &queue,
                        Bytes::from_static(b"{\"to\":\"a@example.com\"}"),
                        0,
                    )
                    .await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    count.load(Ordering::Relaxed) as f64 / secs
}

/// Jobs fetched and acknowledged per second by 16 workers (each fetching up to `max` at a
/// time) draining `jobs` jobs enqueued beforehand (EnqueueMany, 500 per call).
async fn drain_rate(channels: &[Channel], jobs: usize, max: u32) -> f64 {
    let queue = format!("drain-{}", now_ns());
    let mut producer = Client::new(channels[0].clone());
    for _ in 0..jobs / 500 {
        producer
            .enqueue_many(EnqueueManyRequest {
                queue: queue.clone(),
                jobs: (0..500)
                    .map(|_| NewJob {
                        payload: Bytes::from_static(b"job"),
                        options: None,
                    })
                    .collect(),
            })
            .await
            .expect("enqueue many");
    }
    let acked = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut c = Client::new(channels[i % channels.len()].clone());
            let (queue, acked) = (queue.clone(), acked.clone());
            tokio::spawn(async move {
                loop {
                    let got = c
                        .fetch(FetchRequest {
                            queues: vec![queue.clone()],
                            max,
                            wait: None,
                        })
                        .await
                        .expect("fetch")
                        .into_inner();
                    if got.jobs.is_empty() {
                        return;
                    }
                    for job in got.jobs {
                        c.ack(AckRequest {
                            queue: job.queue,
                            job_id: job.id,
                            lease_token: job.lease_token,
                        })
                        .await
                        .expect("ack");
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("worker");
    }
    let n = acked.load(Ordering::Relaxed);
    assert_eq!(n as usize, jobs, "every job drained once");
    n as f64 / began.elapsed().as_secs_f64()
}

/// `redis-benchmark` XADD requests per second on the same Redis (16 clients).
fn xadd_rate(port: u16, secs: f64) -> f64 {
    let n = ((secs * 60_000.0) as u64).max(20_000).to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "16",
            "-n",
            &n,
            "-q",
            "XADD",
            "bench:xadd",
            "*",
            "j",
            "0123456789abcdef0123456789abcdef",
        ])
        .output()
        .expect("redis-benchmark (Debian redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit(':')
        .find_map(|part| {
            part.split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(5.0);
    let stack = support::start(4).await;
    let channels = &stack.channels;

    let lat = start_latency(channels, 500, 0, 5).await;
    println!(
        "enqueue -> handler start, 8 idle workers: n={}  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        lat.len(),
        pct(&lat, 50.0),
        pct(&lat, 99.0),
        pct(&lat, 100.0)
    );
    let delayed = start_latency(channels, 100, 2000, 2).await;
    println!(
        "delay 2 s -> handler start, 8 idle workers: n={}  p50 {:.3} s  p99 {:.3} s  max {:.3} s",
        delayed.len(),
        pct(&delayed, 50.0) / 1000.0,
        pct(&delayed, 99.0) / 1000.0,
        pct(&delayed, 100.0) / 1000.0
    );
    let xadd = xadd_rate(stack.redis_port, secs);
    let enq = enqueue_rate(channels, secs).await;
    let drain1 = drain_rate(channels, 20_000, 1).await;
    let drain10 = drain_rate(channels, 20_000, 10).await;
    let xadd_after = xadd_rate(stack.redis_port, secs);
    let xadd = (xadd + xadd_after) / 2.0;
    println!("redis-benchmark -c 16 XADD (mean of before and after): {xadd:.0} /s");
    println!(
        "Enqueue, 16 callers: {enq:.0} /s  = {:.2} x XADD",
        enq / xadd
    );
    println!(
        "drain, 16 workers, Fetch(max 1) + Ack per job: {drain1:.0} jobs/s  = {:.2} x XADD ({:.0} calls/s)",
        drain1 / xadd,
        2.0 * drain1
    );
    println!(
        "drain, 16 workers, Fetch(max 10) + Ack per job: {drain10:.0} jobs/s  = {:.2} x XADD",
        drain10 / xadd
    );
}
