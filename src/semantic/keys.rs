//! Semantic cache key formats: `{prefix}:{tenant}:se:{TENANT/NAMESPACE}:<part>`, one hash tag per
//! namespace (a Set's script touches the index, counter, log and entry together):
//! - `…:ix` the index (sorted set: entry id by expiry on the store's clock);
//! - `…:n` the id counter; `…:log` the change log (a stream of `o` `+`/`-`, `i` id, `v` vector);
//! - `…:e:<id>` an entry (hash: `v` the vector, `d` the value, `m` the labels as JSON).

use crate::{store::keys::Keys, tenant::Tenant};

/// The keys of one tenant's namespace.
#[derive(Debug, Clone)]
pub struct SpaceKeys {
    /// The index.
    pub index: String,
    /// The id counter.
    pub counter: String,
    /// The change log.
    pub log: String,
    /// The entries' base key (`<base><id>`).
    pub base: String,
}

impl Keys {
    /// The keys of `tenant`'s semantic namespace `namespace`.
    pub fn semantic(&self, tenant: &Tenant, namespace: &str) -> SpaceKeys {
        let [index, counter, log, base] =
            self.tagged(tenant, "se", namespace, ["ix", "n", "log", "e:"]);
        SpaceKeys {
            index,
            counter,
            log,
            base,
        }
    }

    /// The SCAN pattern of every semantic index (all tenants).
    pub fn semantic_index_pattern(&self) -> String {
        let mut any = self.system("");
        // `{prefix}:_:` → `{prefix}:*:se:*:ix`
        any.truncate(any.len() - 2);
        any.push_str("*:se:*:ix");
        any
    }
}

/// The tenant and namespace of a semantic index key (`…:se:{TENANT/NAMESPACE}:ix`).
pub fn parse_index_key(key: &str) -> Option<(Tenant, String)> {
    let rest = key.strip_suffix("}:ix")?;
    let (_, tag) = rest.rsplit_once(":se:{")?;
    let (tenant, namespace) = tag.split_once('/')?;
    Some((Tenant::new(tenant)?, namespace.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_parse_back_and_match_the_pattern() {
        let keys = Keys::new("fs");
        let tenant = Tenant::new("acme").expect("tenant");
        let k = keys.semantic(&tenant, "answers.v2");
        assert_eq!(k.index, "fs:acme:se:{acme/answers.v2}:ix");
        assert_eq!(k.base, "fs:acme:se:{acme/answers.v2}:e:");
        assert_eq!(keys.semantic_index_pattern(), "fs:*:se:*:ix");
        assert_eq!(
            parse_index_key(&k.index),
            Some((tenant, "answers.v2".to_owned()))
        );
        assert_eq!(parse_index_key("fs:acme:se:{acme}:ix"), None);
    }
}
