//! Test harness: a private `redis-server` per test on an ephemeral port, and flowstate itself on
//! `127.0.0.1:0`, reached through real tonic clients. No fixed ports, no shared Redis state, no
//! sleeps to wait for readiness: everything polls with a bound.
//!
//! `FLOWSTATE_TEST_REDIS_URL` points the contract suite at an external Redis instead (each test
//! then uses its own key prefix); fault tests always spawn their own server, since they kill it.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod every_method;
pub mod pki;
pub mod process;
pub mod raw;
pub mod topology;

use std::{
    future::Future,
    net::{SocketAddr, TcpListener as StdListener},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Generates one module per store for each contract test `$name(Backend)`, each test with its
/// optional config tweak: by default `memory_store`, `redis_store`, `slow_cluster_store` and
/// `slow_sentinel_store` (the cluster and sentinel variants share one topology per run, each
/// test under its own key prefix). A suite may name its own stores, each as
/// `module: store` or `module: store + after` (`after` applied once the test's tweak has run):
///
/// ```ignore
/// contract_tests! {
///     stores [redis_near_store: redis + super::all_near]
///     tests [set_and_get with super::namespaces, plain_test]
/// }
/// ```
#[allow(unused_macros)]
macro_rules! contract_tests {
    (stores [$($module:ident : $store:ident $(+ $after:path)?),* $(,)?] tests $tests:tt) => {
        $( contract_tests! { @module $module $store [$($after)?] $tests } )*
    };
    (@after [] $c:ident) => {};
    (@after [$after:path] $c:ident) => {
        $after($c)
    };
    (@module $module:ident $store:ident $after:tt [$($name:ident $(with $tweak:expr)?),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = crate::common::Backend::$store(|_c: &mut flowstate::config::Config| {
                        $( ($tweak)(_c); )?
                        contract_tests!(@after $after _c);
                    })
                    .await;
                    super::$name(backend).await;
                }
            )*
        }
    };
    ($($name:ident $(with $tweak:expr)?),* $(,)?) => {
        contract_tests! {
            stores [
                memory_store: memory,
                redis_store: redis,
                slow_cluster_store: cluster,
                slow_sentinel_store: sentinel,
            ]
            tests [$($name $(with $tweak)?),*]
        }
    };
}

use flowstate::{
    config::{Config, PositiveDuration, RedisMode},
    proto::v1::session_service_client::SessionServiceClient,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` owned by one test, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments (auth, TLS).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` from PATH on a free port, retrying if another process takes it first.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments.
    pub async fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for _ in 0..20 {
            server.port = free_port();
            if server.launch().await {
                return server;
            }
            server.kill();
        }
        panic!("could not start redis-server on a free port (is redis-server on PATH?)");
    }

    /// Starts `redis-server` on a given port (for "Redis comes up after flowstate" tests).
    pub async fn start_on(port: u16) -> Self {
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra: Vec::new(),
        };
        assert!(
            server.launch().await,
            "redis-server did not start on port {port}"
        );
        server
    }

    /// Spawns the process on `self.port` and waits until it answers PING.
    async fn launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server: is it installed (apt-get install redis-server)?");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(10), || async move { ping(port).await }).await;
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        up && alive
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.launch().await,
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts nothing and answers nothing (a hung server).
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(if paused { "-STOP" } else { "-CONT" })
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// A plain client for inspecting what the store holds.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would ignore SIGKILL until continued on some systems; resume first.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    // `+PONG`, or `-NOAUTH …` from a server that requires a password: either way it is up.
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
}

static PREFIX_SEQ: AtomicU32 = AtomicU32::new(0);

/// A key prefix unique to this test process and call, so tests sharing an external Redis never
/// see each other's keys.
pub fn unique_prefix() -> String {
    format!(
        "t{}x{}",
        std::process::id(),
        PREFIX_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// `message` as a request carrying `key` as `authorization: Bearer <key>`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header value"),
    );
    request
}

/// Test defaults: short health interval so state changes show quickly.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.redis.key_prefix = unique_prefix();
    c.redis.health_interval = PositiveDuration::new(Duration::from_millis(100)).expect("positive");
    c.redis.command_timeout = PositiveDuration::new(Duration::from_millis(500)).expect("positive");
    c.memory.sweep_interval = PositiveDuration::new(Duration::from_millis(100)).expect("positive");
    c
}

/// flowstate running in this process on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub channel: Channel,
    /// The server's store, to look at what it holds.
    pub store: flowstate::store::Backend,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts flowstate with `config` (its `server.listen` is ignored: it binds 127.0.0.1:0).
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let store = flowstate::server::open_backend(&config).expect("the store opens");
        let task = tokio::spawn(flowstate::server::serve(
            config,
            store.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Self {
            addr,
            channel,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// The status health reports for `service` (NOT_SERVING on any error).
    pub async fn health_status(&self, service: &str) -> ServingStatus {
        match self
            .health()
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
        {
            Ok(r) => r.into_inner().status(),
            Err(_) => ServingStatus::NotServing,
        }
    }

    /// Polls until `service` reports `want` (at most 10 s); returns whether it did.
    pub async fn wait_health(&self, service: &str, want: ServingStatus) -> bool {
        eventually(Duration::from_secs(10), || async move {
            self.health_status(service).await == want
        })
        .await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Which store a contract test runs against, with what it needs kept alive.
pub struct Backend {
    pub server: TestServer,
    pub redis: Option<RedisServer>,
    /// Standalone Redis only: its URL.
    pub redis_url: Option<String>,
    /// Every node holding this test's keys (the masters of a cluster; empty for memory).
    pub nodes: Vec<String>,
    pub prefix: String,
}

impl Backend {
    pub async fn memory(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start(None, |_| {}, tweak).await
    }

    pub async fn redis(tweak: impl FnOnce(&mut Config)) -> Self {
        match std::env::var("FLOWSTATE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => {
                let u = url.clone();
                Self::start(None, move |c| c.redis.url = Some(u), tweak).await
            }
            _ => {
                let redis = RedisServer::start().await;
                let url = redis.url();
                Self::start(Some(redis), move |c| c.redis.url = Some(url), tweak).await
            }
        }
    }

    /// On the shared Redis Cluster of this test binary.
    pub async fn cluster(tweak: impl FnOnce(&mut Config)) -> Self {
        let cluster = tokio::task::spawn_blocking(topology::shared_cluster)
            .await
            .expect("cluster");
        let seeds = cluster.seeds();
        Self::start(
            None,
            move |c| {
                c.redis.mode = RedisMode::Cluster;
                c.redis.nodes = seeds;
            },
            tweak,
        )
        .await
    }

    /// On the shared Sentinel topology of this test binary.
    pub async fn sentinel(tweak: impl FnOnce(&mut Config)) -> Self {
        let sentinel = tokio::task::spawn_blocking(topology::shared_sentinel)
            .await
            .expect("sentinel");
        let urls = sentinel.urls();
        Self::start(
            None,
            move |c| {
                c.redis.mode = RedisMode::Sentinel;
                c.redis.sentinels = urls;
                c.redis.master_name = Some(topology::MASTER_NAME.to_owned());
            },
            tweak,
        )
        .await
    }

    /// Starts flowstate with `store` applied to the test config, then `tweak`, and waits
    /// until it is ready.
    async fn start(
        redis: Option<RedisServer>,
        store: impl FnOnce(&mut Config),
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = test_config();
        store(&mut config);
        tweak(&mut config);
        let prefix = config.redis.key_prefix.clone();
        let redis_url = (config.redis.mode == RedisMode::Standalone)
            .then(|| config.redis.url.clone())
            .flatten();
        let nodes = match config.redis.mode {
            RedisMode::Standalone => redis_url.iter().cloned().collect(),
            RedisMode::Cluster => topology::shared_cluster()
                .masters()
                .into_iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            RedisMode::Sentinel => topology::shared_sentinel()
                .master_port()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .into_iter()
                .collect(),
        };
        let server = TestServer::start(config).await;
        assert!(
            server
                .wait_health("readiness", ServingStatus::Serving)
                .await
        );
        Self {
            server,
            redis,
            redis_url,
            nodes,
            prefix,
        }
    }

    /// Every key of [`redis_keys`](Self::redis_keys) with its PTTL, read on the node that holds it
    /// (-1: no TTL).
    pub async fn key_ttls(&self) -> Vec<(String, i64)> {
        // On the memory store there are no keys to list: a check on them could not fail.
        assert!(
            matches!(self.server.store, flowstate::store::Backend::Redis(_)),
            "keys are a Redis backend's; on the memory store use leftovers()"
        );
        let own = format!("{}:_:", self.prefix);
        let mut all = Vec::new();
        for url in &self.nodes {
            let mut conn = redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            for key in keys.into_iter().filter(|k| !k.starts_with(&own)) {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("PTTL");
                all.push((key, ttl));
            }
        }
        all
    }

    /// What this test's server keeps for tenants, to check that something stored nothing or
    /// left nothing behind: on Redis every key of [`redis_keys`](Self::redis_keys); on the
    /// memory store each part of it that holds bytes (its shared budget, the cache's own).
    pub async fn leftovers(&self) -> Vec<String> {
        match &self.server.store {
            flowstate::store::Backend::Memory(m) => m
                .held()
                .into_iter()
                .map(|(what, bytes)| format!("{bytes} bytes of memory-store {what}"))
                .collect(),
            flowstate::store::Backend::Redis(_) => self.redis_keys().await,
        }
    }

    /// Every key this test's server wrote to Redis for tenants (flowstate's own keys, such as
    /// the health probe's `{prefix}:_:health`, left out; empty for the memory store).
    pub async fn redis_keys(&self) -> Vec<String> {
        self.key_ttls()
            .await
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }
}
