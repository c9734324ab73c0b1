//! Publish → receive latency with 1 and with many subscribers of one topic on one replica,
//! through real gRPC streams, against the release binary on a private Redis:
//!
//! ```sh
//! cargo build --release && cargo bench --bench fanout -- [subscribers=1000] [events=100]
//! ```
//!
//! Each event carries the wall-clock nanoseconds just before its Publish; every subscriber
//! records the difference when it receives it (one machine, one clock). Subscribers share 10
//! HTTP/2 connections; one replica runs one feed for the topic, whatever their number.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowstate::proto::v1::{
    PublishRequest, SubscribeRequest, event_service_client::EventServiceClient,
    subscribe_response::Kind,
};
use tonic::transport::{Channel, Endpoint};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} never opened");
}

fn pct(sorted: &[u128], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

async fn run(channels: &[Channel], subscribers: usize, events: usize) {
    let topic = format!("fan-{}", now_ns());
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(subscribers * events)));
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let mut client = EventServiceClient::new(channels[i % channels.len()].clone());
        let (topic, latencies) = (topic.clone(), latencies.clone());
        let mut stream = client
            .subscribe(SubscribeRequest {
                topics: vec![topic],
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        // The first message says the subscription is live.
        stream.message().await.expect("subscribed");
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(events);
            while mine.len() < events {
                match stream.message().await {
                    Ok(Some(m)) => {
                        if let Some(Kind::Event(e)) = m.kind {
                            let sent: u128 = std::str::from_utf8(&e.payload)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            mine.push(now_ns().saturating_sub(sent));
                        }
                    }
                    other => panic!("stream ended: {other:?}"),
                }
            }
            latencies.lock().expect("latencies").extend(mine);
        }));
    }
    let mut publisher = EventServiceClient::new(channels[0].clone());
    for _ in 0..events {
        publisher
            .publish(PublishRequest {
                topic: topic.clone(),
                payload: now_ns().to_string().into(),
                key: String::new(),
            })
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.expect("subscriber");
    }
    let mut all = latencies.lock().expect("latencies").clone();
    all.sort_unstable();
    println!(
        "publish -> receive, {subscribers:>5} subscriber(s): n={:>7}  p50 {:7.3} ms  p99 {:7.3} ms  max {:7.3} ms",
        all.len(),
        pct(&all, 50.0),
        pct(&all, 99.0),
        pct(&all, 100.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let subscribers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let events: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let (redis_port, port) = (free_port(), free_port());
    let _redis = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_port(redis_port).await;
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/flowstate");
    let _server = Killed(
        Command::new(binary)
            .env(
                "FLOWSTATE_REDIS__URL",
                format!("redis://127.0.0.1:{redis_port}"),
            )
            .env("FLOWSTATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWSTATE_METRICS__ENABLED", "false")
            .env("FLOWSTATE_LOG__LEVEL", "error")
            .env("FLOWSTATE_SERVER__MAX_CONCURRENT_REQUESTS", "8192")
            .spawn()
            .expect("flowstate: run `cargo build --release` first"),
    );
    wait_port(port).await;
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect"),
        );
    }
    run(&channels, 1, events).await;
    run(&channels, subscribers, events).await;
}
