//! Session key formats.
//!
//! `{prefix}:{tenant}:s:{TAG}:{member}` is a session hash; `{prefix}:{tenant}:u:{TAG}` is the
//! user's session index (a sorted set of members scored by creation time). `TAG` is the user tag
//! (see [`super::id`]) wrapped in braces: the Redis Cluster hash tag, so a user's sessions and
//! index share a slot and one Lua script can change them together.

use super::id::{SessionKey, UserTag};
use crate::{store::keys::Keys, tenant::Tenant};

impl Keys {
    /// The key of a session's hash.
    pub fn session(&self, tenant: &Tenant, key: &SessionKey) -> String {
        let mut k = self.session_base(tenant, key.tag());
        k.push_str(&key.member());
        k
    }

    /// Everything of a session key before its member; scripts append members to it to reach
    /// the sessions listed in a user index (same hash tag, so the same slot).
    pub fn session_base(&self, tenant: &Tenant, tag: UserTag) -> String {
        let mut k = self.scope(tenant, "s");
        k.push('{');
        k.push_str(&tag.encode());
        k.push_str("}:");
        k
    }

    /// The key of a user's session index.
    pub fn user_index(&self, tenant: &Tenant, tag: UserTag) -> String {
        let mut k = self.scope(tenant, "u");
        k.push('{');
        k.push_str(&tag.encode());
        k.push('}');
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{session::SessionId, store::keys::slot};

    #[test]
    fn session_and_index_share_a_slot_and_carry_prefix_and_tenant() {
        let keys = Keys::new("fs");
        let tenant = Tenant::default_tenant();
        let tag = UserTag::for_user(&tenant, "alice");
        let id = SessionId::generate(tag);
        let s = keys.session(&tenant, &id.key());
        let u = keys.user_index(&tenant, tag);
        assert!(s.starts_with("fs:default:s:{") && u.starts_with("fs:default:u:{"));
        assert_eq!(slot(s.as_bytes()), slot(u.as_bytes()));
        // Scripts append index members to the base: still the same slot.
        let built = format!("{}{}", keys.session_base(&tenant, tag), "anymember");
        assert_eq!(slot(built.as_bytes()), slot(u.as_bytes()));
        assert!(
            !s.contains(&id.encode()[12..]),
            "no part of the secret in the key"
        );
    }
}
