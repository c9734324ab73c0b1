//! The tenant a request acts for. Every store key embeds it, so tenants never collide. The
//! caller's API key or client certificate decides it (`crate::auth`); with authentication off,
//! every request runs as `server.tenant`.

use std::sync::Arc;

/// Whether `name` may sit inside a store key: 1–64 characters of `[A-Za-z0-9_.-]` (no key
/// separator, no hash-tag brace). Tenants, key prefixes, cache namespaces and limit names all
/// follow this rule; checking it allocates nothing, so request paths can call it.
pub fn is_key_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A validated tenant name: 1–64 characters of `[A-Za-z0-9_.-]`, so it can sit inside a Redis key
/// without escaping and can never contain a key separator or a hash-tag brace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// Parses a tenant name, returning `None` when it is empty, too long, has other characters
    /// or starts with `_` (reserved for flowstate's own keys).
    pub fn new(name: &str) -> Option<Self> {
        (is_key_safe_name(name) && !name.starts_with('_')).then(|| Self(Arc::from(name)))
    }

    /// The default of `server.tenant`, the tenant of every call while authentication is off.
    pub fn default_tenant() -> Self {
        Self(Arc::from("default"))
    }

    /// The tenant name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Tenant;

    #[test]
    fn tenant_names_are_restricted_to_key_safe_characters() {
        assert!(Tenant::new("acme-corp_1.eu").is_some());
        for bad in ["", "a:b", "a{b}", "a b", "_", "_sys", &"x".repeat(65)] {
            assert!(Tenant::new(bad).is_none(), "{bad:?} accepted");
        }
    }
}
