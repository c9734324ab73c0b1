//! What the gRPC benchmarks share: a private `redis-server` and the release `flowstate` on
//! free ports, killed when dropped, and percentiles.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tonic::transport::{Channel, Endpoint};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Wall-clock nanoseconds (one machine, one clock for sender and receiver).
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_port(port: u16) {
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

/// The `p`th percentile of sorted nanoseconds, in ms.
pub fn pct(sorted: &[u128], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

/// A private `redis-server` (no persistence) on a free port, killed when dropped.
pub async fn redis() -> (u16, Killed) {
    let port = free_port();
    let redis = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_port(port).await;
    (port, redis)
}

/// A private Redis and the release flowstate on it; `connections` channels to flowstate.
pub struct Stack {
    pub redis_port: u16,
    pub channels: Vec<Channel>,
    _redis: Killed,
    _server: Killed,
}

pub async fn start(connections: usize) -> Stack {
    let (redis_port, redis) = redis().await;
    let port = free_port();
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/flowstate");
    let server = Killed(
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
    for _ in 0..connections {
        channels.push(
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect"),
        );
    }
    Stack {
        redis_port,
        channels,
        _redis: redis,
        _server: server,
    }
}
