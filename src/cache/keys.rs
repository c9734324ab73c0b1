//! Cache key formats.
//!
//! `{prefix}:{tenant}:c:{namespace}:{generation}:{KEY}` is an entry (a hash, hash-tagged by its
//! own key so entries spread over the cluster) and `…:cl:…` (same suffix, same slot) its lease;
//! `…:ct:{namespace}:{TAG}` is a tag's index and `…:ci:{namespace}:{TAG}` (same slot) the time
//! the tag was last invalidated; `…:cg:{NAMESPACE}` is a namespace's generation.

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

    /// The lease of a cache entry (same hash tag as the entry).
    pub fn cache_lease(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
    ) -> String {
        let mut k = self.scope(tenant, "cl");
        k.push_str(namespace);
        k.push(':');
        k.push_str(&generation.to_string());
        k.push_str(":{");
        k.push_str(key);
        k.push('}');
        k
    }

    /// The lease key of the entry key `entry` (as listed in a tag index); `None` for a key
    /// that is not one of this tenant's cache entries.
    pub fn cache_lease_of(&self, tenant: &Tenant, entry: &[u8]) -> Option<Vec<u8>> {
        let scope = self.scope(tenant, "c");
        let rest = entry.strip_prefix(scope.as_bytes())?;
        let mut k = self.scope(tenant, "cl").into_bytes();
        k.extend_from_slice(rest);
        Some(k)
    }

    /// The generation of the entry key `entry` of `namespace` (as listed in a tag index).
    pub fn cache_entry_generation(
        &self,
        tenant: &Tenant,
        namespace: &str,
        entry: &[u8],
    ) -> Option<u64> {
        let scope = self.scope(tenant, "c");
        let rest = entry
            .strip_prefix(scope.as_bytes())?
            .strip_prefix(namespace.as_bytes())?
            .strip_prefix(b":")?;
        let end = rest.iter().position(|b| *b == b':')?;
        std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
    }

    /// A cache tag's index: a sorted set of entry keys scored by when each stops mattering.
    pub fn cache_tag(&self, tenant: &Tenant, namespace: &str, tag: &str) -> String {
        self.tag_key(tenant, "ct", namespace, tag)
    }

    /// When a cache tag was last invalidated (same hash tag as its index).
    pub fn cache_tag_mark(&self, tenant: &Tenant, namespace: &str, tag: &str) -> String {
        self.tag_key(tenant, "ci", namespace, tag)
    }

    fn tag_key(&self, tenant: &Tenant, kind: &str, namespace: &str, tag: &str) -> String {
        let mut k = self.scope(tenant, kind);
        k.push_str(namespace);
        k.push_str(":{");
        k.push_str(tag);
        k.push('}');
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::slot;

    #[test]
    fn what_one_script_touches_shares_a_slot() {
        let keys = Keys::new("fs");
        let t = Tenant::default_tenant();
        let entry = keys.cache_entry(&t, "ns", 7, "user:42");
        let lease = keys.cache_lease(&t, "ns", 7, "user:42");
        assert_eq!(slot(entry.as_bytes()), slot(lease.as_bytes()));
        assert_eq!(
            keys.cache_lease_of(&t, entry.as_bytes()).as_deref(),
            Some(lease.as_bytes())
        );
        assert_eq!(keys.cache_lease_of(&t, b"other:key"), None);
        assert_eq!(
            keys.cache_entry_generation(&t, "ns", entry.as_bytes()),
            Some(7)
        );
        assert_eq!(keys.cache_entry_generation(&t, "n", entry.as_bytes()), None);
        let index = keys.cache_tag(&t, "ns", "team:7");
        let mark = keys.cache_tag_mark(&t, "ns", "team:7");
        assert_eq!(slot(index.as_bytes()), slot(mark.as_bytes()));
        // Different keys and tags spread: the namespace is not in any hash tag.
        assert_ne!(
            slot(keys.cache_entry(&t, "ns", 7, "a").as_bytes()),
            slot(keys.cache_entry(&t, "ns", 7, "b").as_bytes())
        );
    }
}
