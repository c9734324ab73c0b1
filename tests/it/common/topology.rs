//! Real Redis topologies on loopback, started by the tests: a Cluster (masters with replicas,
//! `redis-server --cluster-enabled yes` + `redis-cli --cluster create`) and Sentinel (a master,
//! a replica, three sentinels). Failure timeouts are short (1 s) so failovers finish within a
//! test.
//!
//! A test that kills nodes starts its own topology (killed on drop). The contract suites share
//! one of each per test binary ([`shared_cluster`], [`shared_sentinel`]), each test under its
//! own key prefix; those live until the test binary exits, when a watchdog process (a shell
//! loop watching this process's pid) kills them, since statics are never dropped.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

/// A node's port: below 55536, because a Cluster node also listens on port + 10000 (its bus).
fn node_port() -> u16 {
    loop {
        let port = 20_000 + (rand::random::<u16>() % 30_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// Polls `check` every 20 ms for up to `limit` (blocking: topologies start outside any runtime).
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The password of each node (and sentinel) of a topology started with one, by port: the
/// topologies of one test run share the process, and only the password tests want one.
static PASSWORDS: Mutex<BTreeMap<u16, String>> = Mutex::new(BTreeMap::new());

/// The password `port` was started with, if any.
fn password_of(port: u16) -> Option<String> {
    PASSWORDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&port)
        .cloned()
}

/// `redis://[:password@]127.0.0.1:<port>`.
pub fn node_url(port: u16) -> String {
    match password_of(port) {
        Some(pw) => format!("redis://:{pw}@127.0.0.1:{port}"),
        None => format!("redis://127.0.0.1:{port}"),
    }
}

/// Records that `port` requires `password`; returns the `redis-server` arguments that require
/// it (from clients and from replicas).
fn auth_args(port: u16, password: Option<&str>) -> Vec<String> {
    let Some(pw) = password else {
        return Vec::new();
    };
    PASSWORDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(port, pw.to_owned());
    ["--requirepass", pw, "--masterauth", pw]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// A synchronous connection to one node (the topology is driven from outside the runtime).
pub fn node_client(port: u16) -> Option<redis::Connection> {
    redis::Client::open(node_url(port))
        .ok()?
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()
}

fn info(port: u16, section: &[&str]) -> Option<String> {
    let mut c = node_client(port)?;
    let mut cmd = redis::cmd(section[0]);
    for arg in &section[1..] {
        cmd.arg(*arg);
    }
    cmd.query::<String>(&mut c).ok()
}

/// One `redis-server` process.
pub struct Node {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, args: &[String]) -> Self {
        let mut node = Self {
            port,
            args: args.to_vec(),
            child: None,
        };
        node.restart();
        node
    }

    /// Starts the process again with the same arguments (a cluster node rejoins with its
    /// nodes.conf, a sentinel-managed server is turned into a replica by the sentinels).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server: is it installed (apt-get install redis-server)?");
        self.child = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the node vanishes without a word to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills `pids` once this process is gone (statics are never dropped).
fn watchdog(pids: &[u32]) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg("p=$1; shift; while kill -0 $p 2>/dev/null; do sleep 0.5; done; kill -9 \"$@\" 2>/dev/null")
        .arg("flowstate-test-watchdog")
        .arg(std::process::id().to_string())
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A Redis Cluster on loopback.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The nodes' files, removed when the cluster goes.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each; returns once every node sees every
    /// slot served and every replica is in sync with its master.
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, &[])
    }

    /// [`start`](Self::start) with every node requiring `password`.
    pub fn start_with_password(masters: usize, replicas: usize, password: &str) -> Self {
        Self::start_secured(masters, replicas, &[], Some(password))
    }

    /// [`start`](Self::start) with extra `redis-server` arguments for every node.
    pub fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> Self {
        Self::start_secured(masters, replicas, extra, None)
    }

    fn start_secured(
        masters: usize,
        replicas: usize,
        extra: &[&str],
        password: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("cluster dir");
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let port = node_port();
            nodes.push(Self::spawn_node(
                dir.path().to_path_buf(),
                port,
                extra,
                password,
            ));
        }
        for node in &nodes {
            let port = node.port;
            wait_for(Duration::from_secs(10), "a cluster node to start", || {
                node_client(port).is_some()
            });
        }
        let mut create = Command::new("redis-cli");
        if let Some(pw) = password {
            create.args(["-a", pw, "--no-auth-warning"]);
        }
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create (redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn_node(dir: PathBuf, port: u16, extra: &[&str], password: Option<&str>) -> Node {
        let conf = dir.join(format!("nodes-{port}.conf"));
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            "--cluster-config-file",
            conf.to_str().expect("utf-8 path"),
            "--dir",
            dir.to_str().expect("utf-8 path"),
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .chain(auth_args(port, password))
        .collect();
        Node::spawn(port, &args)
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on the masters,
    /// and every replica's link to its master is up.
    pub fn wait_healthy(&self, limit: Duration) {
        let running: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect();
        wait_for(limit, "the cluster to be healthy", || {
            running.iter().all(|&p| {
                info(p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
                    && info(p, &["INFO", "replication"]).is_some_and(|i| {
                        i.contains("role:master") || i.contains("master_link_status:up")
                    })
            }) && self.masters().len() == self.master_count()
        });
    }

    /// How many masters the cluster should have (the nodes that serve slots).
    fn master_count(&self) -> usize {
        let Some(port) = self.nodes.iter().find(|n| n.is_running()).map(|n| n.port) else {
            return 0;
        };
        info(port, &["CLUSTER", "NODES"]).map_or(0, |nodes| {
            nodes
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
                .count()
        })
    }

    /// The ports of the masters serving slots now (as the first running node sees them).
    pub fn masters(&self) -> Vec<u16> {
        let Some(port) = self.nodes.iter().find(|n| n.is_running()).map(|n| n.port) else {
            return Vec::new();
        };
        let Some(nodes) = info(port, &["CLUSTER", "NODES"]) else {
            return Vec::new();
        };
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| {
                let addr = l.split(' ').nth(1)?;
                addr.split('@').next()?.rsplit(':').next()?.parse().ok()
            })
            .collect()
    }

    /// Seed URLs for flowstate (every node: any reachable one suffices; no password in them).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// The port of the master serving `slot` now.
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        let port = self.nodes.iter().find(|n| n.is_running())?.port;
        let mut c = node_client(port)?;
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()?;
        slots.into_iter().find_map(|range| {
            let redis::Value::Array(parts) = range else {
                return None;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i),
                _ => None,
            };
            let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
            if !(start..=end).contains(&i64::from(slot)) {
                return None;
            }
            let redis::Value::Array(master) = parts.get(2)? else {
                return None;
            };
            u16::try_from(int(master.get(1)?)?).ok()
        })
    }

    /// Keeps the processes past this value (for a shared cluster: the watchdog ends them).
    fn leak(self) -> &'static Self {
        let pids: Vec<u32> = self.nodes.iter().filter_map(Node::pid).collect();
        watchdog(&pids);
        Box::leak(Box::new(self))
    }
}

/// One 3-master, 3-replica cluster per test binary, started by the first test that asks.
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<&'static Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(3, 1).leak())
}

/// Redis Sentinel on loopback: a master, a replica, three sentinels.
pub struct Sentinel {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    /// The servers' and sentinels' files, removed when the topology goes.
    _dir: tempfile::TempDir,
}

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "fsmaster";

impl Sentinel {
    /// Starts the topology; returns once every sentinel knows the master, the replica and the
    /// other two sentinels (so a failover can be agreed).
    pub fn start() -> Self {
        Self::start_secured(None)
    }

    /// [`start`](Self::start) with every server and sentinel requiring `password`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_secured(Some(password))
    }

    fn start_secured(password: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("sentinel dir");
        let data = |port: u16, extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.path().to_str().expect("utf-8 path"),
                "--dbfilename",
                &format!("dump-{port}.rdb"),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args.extend(auth_args(port, password));
            args
        };
        let master_port = node_port();
        let master = Node::spawn(master_port, &data(master_port, &[]));
        wait_for(Duration::from_secs(10), "the master to start", || {
            node_client(master_port).is_some()
        });
        let replica_port = node_port();
        let replica = Node::spawn(
            replica_port,
            &data(
                replica_port,
                &["--replicaof", "127.0.0.1", &master_port.to_string()],
            ),
        );
        wait_for(Duration::from_secs(10), "the replica to sync", || {
            info(replica_port, &["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = node_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            // Records the sentinel's password (its arguments are the config file).
            auth_args(port, password);
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n{auth}",
                    dir = dir.path().display(),
                    auth = password.map_or_else(String::new, |pw| format!(
                        "requirepass {pw}\nsentinel sentinel-pass {pw}\n\
                         sentinel auth-pass {MASTER_NAME} {pw}\n"
                    )),
                ),
            )
            .expect("sentinel config");
            sentinels.push(Node::spawn(
                port,
                &[
                    conf.to_str().expect("utf-8 path").to_owned(),
                    "--sentinel".to_owned(),
                ],
            ));
        }
        let topology = Self {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        topology.wait_ready(Duration::from_secs(30));
        topology
    }

    /// Waits until every running sentinel knows a master with a replica and two other
    /// sentinels.
    pub fn wait_ready(&self, limit: Duration) {
        let ports: Vec<u16> = self.sentinels.iter().map(|n| n.port).collect();
        wait_for(limit, "the sentinels to agree", || {
            ports.iter().all(|&p| {
                let Some(mut c) = node_client(p) else {
                    return false;
                };
                let master: redis::RedisResult<Vec<String>> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(MASTER_NAME)
                    .query(&mut c);
                master.is_ok_and(|fields| {
                    let get = |name: &str| {
                        fields
                            .iter()
                            .position(|f| f == name)
                            .and_then(|i| fields.get(i + 1))
                            .cloned()
                            .unwrap_or_default()
                    };
                    get("num-slaves") == "1"
                        && get("num-other-sentinels") == "2"
                        && get("flags") == "master"
                })
            })
        });
    }

    /// Sentinel URLs for flowstate.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The master's port as the sentinels say now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut c = node_client(s.port)?;
            let addr: Vec<String> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME)
                .query(&mut c)
                .ok()?;
            addr.get(1)?.parse().ok()
        })
    }

    fn leak(self) -> &'static Self {
        let pids: Vec<u32> = [&self.master, &self.replica]
            .into_iter()
            .chain(&self.sentinels)
            .filter_map(Node::pid)
            .collect();
        watchdog(&pids);
        Box::leak(Box::new(self))
    }
}

/// One sentinel topology per test binary, started by the first test that asks.
pub fn shared_sentinel() -> &'static Sentinel {
    static SENTINEL: OnceLock<&'static Sentinel> = OnceLock::new();
    SENTINEL.get_or_init(|| Sentinel::start().leak())
}
