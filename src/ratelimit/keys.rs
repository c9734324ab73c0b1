//! Rate-limit key formats.
//!
//! `{prefix}:{tenant}:rl:{limit}:{algorithm}:{KEY}` is a counter (a small hash). Its hash tag is
//! the caller's key alone, never anything that depends on the other checks of a request, so a
//! counter always lives in one slot.

use super::model::CounterId;
use crate::{store::keys::Keys, tenant::Tenant};

impl Keys {
    /// The key of a rate-limit counter.
    pub fn counter(&self, tenant: &Tenant, id: &CounterId) -> String {
        let mut k = self.scope(tenant, "rl");
        k.push_str(&id.limit);
        k.push(':');
        k.push_str(&id.algorithm.to_string());
        k.push_str(":{");
        k.push_str(&id.key);
        k.push('}');
        k
    }
}
