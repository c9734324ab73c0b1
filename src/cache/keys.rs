//! Cache key formats.
//!
//! `{prefix}:{tenant}:c:{namespace}:{generation}:{KEY}` is an entry (a hash, hash-tagged by its
//! own key so entries spread over the cluster), `…:ct:{namespace}:{TAG}` a tag's index and
//! `…:cg:{NAMESPACE}` a namespace's generation.

use crate::{store::keys::Keys, tenant::Tenant};

impl Keys {
    /// A cache namespace's generation counter (InvalidateNamespace increments it).
    pub fn cache_generation(&self, tenant: &Tenant, namespace: &str) -> String {
        let mut k = self.scope(tenant, "cg");
        k.push('{');
        k.push_str(namespace);
        k.push('}');
        k
    }

    /// A cache entry (a hash) in a namespace generation; hash-tagged by its own key.
    pub fn cache_entry(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
    ) -> String {
        let mut k = self.scope(tenant, "c");
        k.push_str(namespace);
        k.push(':');
        k.push_str(&generation.to_string());
        k.push_str(":{");
        k.push_str(key);
        k.push('}');
        k
    }

    /// A cache tag's index: a sorted set of entry keys scored by when each stops being servable.
    pub fn cache_tag(&self, tenant: &Tenant, namespace: &str, tag: &str) -> String {
        let mut k = self.scope(tenant, "ct");
        k.push_str(namespace);
        k.push_str(":{");
        k.push_str(tag);
        k.push('}');
        k
    }
}
