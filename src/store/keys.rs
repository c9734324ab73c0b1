//! The key scheme every store key follows: `{prefix}:{tenant}:{kind}:…`, where `kind` is a short
//! code owned by one domain (its `keys.rs` lists its formats). The prefix and tenant come first,
//! so several deployments and tenants share one Redis without colliding, and the part of a key
//! in braces is its Redis Cluster hash tag: the keys one script touches share it, and it is
//! never a whole tenant (that would put a tenant on one shard).

use crate::tenant::Tenant;

/// Builds keys under one prefix; each domain adds its own formats in its `keys.rs`.
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

    /// `{prefix}:_:{name}`: a key of flowstate's own (tenant names never start with `_`).
    pub fn system(&self, name: &str) -> String {
        format!("{}:_:{name}", self.prefix)
    }

    /// The keys `{prefix}:{tenant}:{kind}:{TENANT/NAME}:{part}` of one object made of several
    /// keys (a lock, a queue): the hash tag `{TENANT/NAME}` puts them in one Cluster slot, so
    /// one script reaches them all; the tenant in front keeps the tag non-empty whatever the
    /// name (an empty tag would hash the whole key). A name may hold braces: the tag still ends
    /// at the same place in every part, and distinct names still give distinct keys (the suffix
    /// after the name is fixed).
    pub fn tagged<const N: usize>(
        &self,
        tenant: &Tenant,
        kind: &str,
        name: &str,
        parts: [&str; N],
    ) -> [String; N] {
        let mut base = self.scope(tenant, kind);
        base.push('{');
        base.push_str(tenant.as_str());
        base.push('/');
        base.push_str(name);
        base.push_str("}:");
        parts.map(|p| format!("{base}{p}"))
    }

    /// `{prefix}:{tenant}:{kind}:`, the start of every key of one kind for one tenant.
    pub fn scope(&self, tenant: &Tenant, kind: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + tenant.as_str().len() + 48);
        key.push_str(&self.prefix);
        key.push(':');
        key.push_str(tenant.as_str());
        key.push(':');
        key.push_str(kind);
        key.push(':');
        key
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when non-empty) or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

/// CRC16 (XMODEM), as Redis Cluster computes slots.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on a real cluster (and the Redis Cluster spec).
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "empty tag: whole key"
        );
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }
}
