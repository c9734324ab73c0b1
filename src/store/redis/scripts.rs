//! Lua scripts registered by name.
//!
//! Each domain's Redis store registers the scripts it runs when it is built (before any
//! connection exists); every new connection loads all registered scripts in one pipelined
//! round trip, so EVALSHA rarely meets NOSCRIPT, and a NOSCRIPT (a restarted or flushed Redis
//! under a live connection) reloads them and resends.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

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
        let mut by_name = self.by_name.write().unwrap_or_else(|p| p.into_inner());
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

    /// Loads every registered script on `conn`: one pipelined round trip to a single server;
    /// on a cluster one `SCRIPT LOAD` per script, each sent to every node the connection holds
    /// (the masters: flowstate reads from masters only). A replica promoted by a failover, a
    /// node that joins later or one that restarted empty answers NOSCRIPT once, and this runs
    /// again (with the new topology) before the call is resent.
    pub async fn load_all(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let sources: Vec<&'static str> = self
            .by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.source)
            .collect();
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
                futures_util::future::try_join_all(loads).await.map(drop)
            }
        }
    }

    /// Every registered script as (name, SHA1), sorted by name.
    pub fn list(&self) -> Vec<(&'static str, String)> {
        self.by_name
            .read()
            .unwrap_or_else(|p| p.into_inner())
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
