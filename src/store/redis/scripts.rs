//! Lua scripts registered by name.
//!
//! Each domain's Redis store registers the scripts it runs when it is built (before any
//! connection exists); every new connection loads all registered scripts in one pipelined
//! round trip, so EVALSHA rarely meets NOSCRIPT, and a NOSCRIPT (a restarted or flushed Redis
//! under a live connection) reloads them and resends.

use std::{collections::BTreeMap, sync::Arc};

use parking_lot::RwLock;
use redis::{Cmd, Script, ToRedisArgs};

use super::pool::Conn;

use crate::store::StoreError;

/// A registered script: its source and SHA1 (the registry keeps it under its name).
#[derive(Clone)]
pub struct LuaScript {
    source: &'static str,
    script: Arc<Script>,
}

impl LuaScript {
    /// The SHA1 EVALSHA runs it by.
    pub fn hash(&self) -> &str {
        self.script.get_hash()
    }

    /// Starts a call (keys and arguments are added by the caller).
    pub fn call(&self) -> ScriptCall {
        ScriptCall {
            hash: self.script.get_hash().to_owned(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One invocation of a registered script: sent as `EVALSHA` (alone, or inside a pipeline with
/// what must follow it on the same connection, such as `WAIT`), routed on a cluster by its
/// first key.
#[derive(Clone)]
pub struct ScriptCall {
    hash: String,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    /// Adds a key (`KEYS[n]`).
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The hash slot of its first key (what a cluster routes it by).
    pub fn slot(&self) -> Option<u16> {
        self.keys.first().map(|k| crate::store::keys::slot(k))
    }

    /// The `EVALSHA` command.
    pub fn cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

/// Every script of this process, by name.
#[derive(Default)]
pub struct Scripts {
    by_name: RwLock<BTreeMap<&'static str, LuaScript>>,
}

impl Scripts {
    /// Registers `source` as `name`. Registering the same name again returns the script already
    /// registered when the source is the same (two stores of one domain), and fails when it
    /// differs: two scripts must never answer to one name.
    pub fn register(
        &self,
        name: &'static str,
        source: &'static str,
    ) -> Result<LuaScript, StoreError> {
        let mut by_name = self.by_name.write();
        if let Some(existing) = by_name.get(name) {
            return if existing.source == source {
                Ok(existing.clone())
            } else {
                Err(StoreError::Protocol(format!(
                    "two different Lua scripts registered as {name:?}"
                )))
            };
        }
        let script = LuaScript {
            source,
            script: Arc::new(Script::new(source)),
        };
        by_name.insert(name, script.clone());
        Ok(script)
    }

    fn sources(&self) -> Vec<&'static str> {
        self.by_name.read().values().map(|s| s.source).collect()
    }

    /// Loads every registered script when a connection is made: one pipelined round trip to a
    /// single server (a failure fails the connection: a server that refuses SCRIPT LOAD cannot
    /// serve flowstate). On a cluster, best effort: each script is sent to every master the
    /// connection holds, and a node that cannot take it now (down, failing over) is loaded at
    /// its first NOSCRIPT instead ([`Scripts::reload`]), so one dead node never stops
    /// connections to the others from being made.
    pub async fn load_all(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let sources = self.sources();
        if sources.is_empty() {
            return Ok(());
        }
        match conn {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for source in sources {
                    pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
                }
                pipe.query_async::<()>(conn).await
            }
            Conn::Cluster(_) => {
                // A pipeline of keyless commands would go to one random node; single commands
                // are routed to all of them.
                let loads = sources.into_iter().map(|source| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(source)
                            .query_async::<redis::Value>(&mut conn)
                            .await
                    }
                });
                if let Err(e) = futures_util::future::try_join_all(loads).await {
                    tracing::debug!(error = %e.category(), "scripts not loaded on every node yet; NOSCRIPT will load them");
                }
                Ok(())
            }
        }
    }

    /// Loads every registered script again after a NOSCRIPT: on a single server, on it; on a
    /// cluster, on the master of `slot` (the node that answered NOSCRIPT: a promoted replica or
    /// a restarted node).
    pub async fn reload(&self, conn: &mut Conn, slot: Option<u16>) -> redis::RedisResult<()> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match (conn, slot) {
            (Conn::Cluster(cluster), Some(slot)) => {
                let loads = self.sources().into_iter().map(|source| {
                    let mut cluster = cluster.clone();
                    async move {
                        cluster
                            .route_command(
                                redis::cmd("SCRIPT").arg("LOAD").arg(source).clone(),
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                                    Route::new(slot, SlotAddr::Master),
                                )),
                            )
                            .await
                            .and_then(redis::Value::extract_error)
                    }
                });
                futures_util::future::try_join_all(loads).await.map(drop)
            }
            (conn, _) => self.load_all(conn).await,
        }
    }

    /// Every registered script as (name, SHA1), sorted by name.
    pub fn list(&self) -> Vec<(&'static str, String)> {
        self.by_name
            .read()
            .iter()
            .map(|(name, s)| (*name, s.hash().to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_answers_to_one_script() {
        let scripts = Scripts::default();
        let a = scripts.register("t.a", "return 1").expect("register");
        let again = scripts.register("t.a", "return 1").expect("same source");
        assert_eq!(a.hash(), again.hash());
        assert!(scripts.register("t.a", "return 2").is_err());
        scripts.register("t.b", "return 2").expect("register");
        let names: Vec<_> = scripts.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["t.a", "t.b"]);
    }
}
