//! Every store key format, in one place.
//!
//! `{prefix}:{tenant}:s:{TAG}:{member}` is a session hash; `{prefix}:{tenant}:u:{TAG}` is the
//! user's session index (a sorted set of members scored by creation time). `TAG` is the user tag
//! (see [`crate::session::id`]) wrapped in braces: the Redis Cluster hash tag, so a user's
//! sessions and index share a slot and one Lua script can change them together.
//! `{prefix}:{tenant}:rl:{limit}:{algorithm}:{KEY}` is a rate-limit counter (a small hash).
//! `{prefix}:{tenant}:c:{namespace}:{generation}:{KEY}` is a cache entry, `…:ct:{namespace}:{TAG}`
//! a tag index and `…:cg:{NAMESPACE}` a namespace's generation.

use crate::{
    ratelimit::CounterId,
    session::{SessionKey, UserTag},
    tenant::Tenant,
};

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (validated by config: no `:` or braces).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The key of a session's hash.
    pub fn session(&self, tenant: &Tenant, key: &SessionKey) -> String {
        let mut k = self.session_base(tenant, key.tag());
        k.push_str(&key.member());
        k
    }

    /// Everything of a session key before its member; scripts append members to it to reach
    /// the sessions listed in a user index (same hash tag, so the same slot).
    pub fn session_base(&self, tenant: &Tenant, tag: UserTag) -> String {
        format!(
            "{}:{}:s:{{{}}}:",
            self.prefix,
            tenant.as_str(),
            tag.encode()
        )
    }

    /// The key of a rate-limit counter. Its hash tag is the caller's key alone, never anything
    /// that depends on the other checks of a request, so a counter always lives in one slot.
    pub fn counter(&self, tenant: &Tenant, id: &CounterId) -> String {
        format!(
            "{}:{}:rl:{}:{}:{{{}}}",
            self.prefix,
            tenant.as_str(),
            id.limit,
            id.algorithm,
            id.key
        )
    }

    /// A cache namespace's generation counter (InvalidateNamespace increments it).
    pub fn cache_generation(&self, tenant: &Tenant, namespace: &str) -> String {
        format!("{}:{}:cg:{{{namespace}}}", self.prefix, tenant.as_str())
    }

    /// A cache entry (a hash) in a namespace generation; hash-tagged by its own key.
    pub fn cache_entry(
        &self,
        tenant: &Tenant,
        namespace: &str,
        generation: u64,
        key: &str,
    ) -> String {
        format!(
            "{}:{}:c:{namespace}:{generation}:{{{key}}}",
            self.prefix,
            tenant.as_str()
        )
    }

    /// A cache tag's index: a sorted set of entry keys scored by when each stops being servable.
    pub fn cache_tag(&self, tenant: &Tenant, namespace: &str, tag: &str) -> String {
        format!(
            "{}:{}:ct:{namespace}:{{{tag}}}",
            self.prefix,
            tenant.as_str()
        )
    }

    /// The key of a user's session index.
    pub fn user_index(&self, tenant: &Tenant, tag: UserTag) -> String {
        format!("{}:{}:u:{{{}}}", self.prefix, tenant.as_str(), tag.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    #[test]
    fn session_and_index_share_a_hash_tag_and_carry_prefix_and_tenant() {
        let keys = Keys::new("fs");
        let tenant = Tenant::default_tenant();
        let tag = UserTag::for_user(&tenant, "alice");
        let id = SessionId::generate(tag);
        let s = keys.session(&tenant, &id.key());
        let u = keys.user_index(&tenant, tag);
        assert!(s.starts_with("fs:default:s:{") && u.starts_with("fs:default:u:{"));
        let hash_tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_owned();
        assert_eq!(hash_tag(&s), hash_tag(&u));
        assert!(
            !s.contains(&id.encode()[12..]),
            "no part of the secret in the key"
        );
    }
}
