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

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use flowstate::proto::v1::{
    PublishRequest, SubscribeRequest, event_service_client::EventServiceClient,
    subscribe_response::Kind,
};
use support::{now_ns, pct};
use tonic::transport::Channel;

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
    let stack = support::start(10).await;
    let channels = &stack.channels;
    run(channels, 1, events).await;
    run(channels, subscribers, events).await;
}
