//! Event key formats.
//!
//! `{prefix}:{tenant}:ev:{TOPIC}` is a topic's stream (and the Pub/Sub channel its new events
//! are announced on). Its hash tag is the topic alone: topics spread over a cluster's slots.
//! Topic names cannot hold braces (see `service::check_topic`).

use crate::{store::keys::Keys, tenant::Tenant};

impl Keys {
    /// The stream of `topic`.
    pub fn topic(&self, tenant: &Tenant, topic: &str) -> String {
        let mut k = self.scope(tenant, "ev");
        k.push('{');
        k.push_str(topic);
        k.push('}');
        k
    }
}
