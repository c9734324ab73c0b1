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

use redis::{Script, ScriptInvocation, aio::MultiplexedConnection};

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

    /// Starts an invocation (keys and arguments are added by the caller).
    pub fn prepare_invoke(&self) -> ScriptInvocation<'_> {
        self.script.prepare_invoke()
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

    /// Loads every registered script on `conn` (one pipelined round trip).
    pub async fn load_all(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
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
        let mut pipe = redis::pipe();
        for source in sources {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
        }
        pipe.query_async::<()>(conn).await
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
