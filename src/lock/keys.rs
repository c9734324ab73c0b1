//! Lock key formats.
//!
//! A lock is five keys sharing the hash tag `{TENANT/NAME}` (so one script reaches them all, in
//! one Cluster slot; the tenant in front keeps the tag non-empty whatever the name, since an
//! empty tag would hash the whole key): `{prefix}:{tenant}:lk:{TENANT/NAME}:h` its holdings by
//! expiry (also the Pub/Sub
//! channel its releases are announced on), `…:m` the holdings' fencing tokens and metadata,
//! `…:f` its last fencing token, `…:q` its waiters in arrival order and `…:e` when their
//! places lapse. A name may hold braces: the tag still ends at the same place in all five
//! keys, so they still share a slot, and distinct names still give distinct keys (the suffix
//! after the name is fixed).

use crate::{store::keys::Keys, tenant::Tenant};

/// The suffixes of a lock's keys, in the order the scripts take them.
pub const PARTS: [&str; 5] = ["h", "m", "f", "q", "e"];

impl Keys {
    /// The five keys of lock `name` (see the module docs), in [`PARTS`] order.
    pub fn lock(&self, tenant: &Tenant, name: &str) -> [String; 5] {
        self.tagged(tenant, "lk", name, PARTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::slot;

    #[test]
    fn a_locks_keys_share_a_slot_even_with_braces_in_its_name() {
        let keys = Keys::new("fs");
        let t = Tenant::new("acme").expect("tenant");
        for name in ["job:42", "a}b", "{x}", "}"] {
            let k = keys.lock(&t, name);
            assert!(
                k.iter()
                    .all(|key| slot(key.as_bytes()) == slot(k[0].as_bytes())),
                "{name}"
            );
            assert_eq!(k[0], format!("fs:acme:lk:{{acme/{name}}}:h"));
        }
        assert_ne!(keys.lock(&t, "a")[0], keys.lock(&t, "a}:h")[0]);
    }
}
