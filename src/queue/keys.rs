//! Queue key formats.
//!
//! A queue is eleven keys sharing the hash tag `{TENANT/QUEUE}` (one script reaches them all, in
//! one Cluster slot), under `{prefix}:{tenant}:jq:{TENANT/QUEUE}:`:
//! - `r0`, `r1`, `r2`: the ready streams for high, normal and low priority, each with the
//!   consumer group `g`; an entry is a job id, pending in the group while the job is leased.
//!   `r1` is also the Pub/Sub channel that wakes waiting workers.
//! - `z`: scheduled jobs (delayed or retrying) by due time; `l`: leased jobs by lease deadline;
//!   `x`: dead jobs by time of death.
//! - `u`: unique key → job id; `p`: the paused flag.
//! - `d`: job id → payload; `m`: job id → attempts, options and state; `e`: job id → last error.
//!
//! Keys of live jobs have no TTL (a queued job must not vanish); they are bounded instead:
//! `queues.max_jobs` per queue, dead jobs by age and count, and every key is deleted when it
//! empties (an empty stream too), so a drained queue leaves nothing but a paused flag. A queue
//! holding only dead jobs gets their retention as a TTL on its keys (made persistent again by
//! the next live job), so an abandoned queue expires too.

use crate::{store::keys::Keys, tenant::Tenant};

/// The suffixes of a queue's keys, in the order the scripts take them.
pub const PARTS: [&str; 11] = ["r0", "r1", "r2", "z", "l", "x", "u", "p", "d", "m", "e"];

impl Keys {
    /// The eleven keys of queue `name` (see the module docs), in [`PARTS`] order.
    pub fn queue(&self, tenant: &Tenant, name: &str) -> [String; 11] {
        self.tagged(tenant, "jq", name, PARTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::slot;

    #[test]
    fn a_queues_keys_share_a_slot_even_with_braces_in_its_name() {
        let keys = Keys::new("fs");
        let t = Tenant::new("acme").expect("tenant");
        for name in ["emails", "a}b", "{x}", "}"] {
            let k = keys.queue(&t, name);
            assert!(
                k.iter()
                    .all(|key| slot(key.as_bytes()) == slot(k[0].as_bytes())),
                "{name}"
            );
            assert_eq!(k[1], format!("fs:acme:jq:{{acme/{name}}}:r1"));
        }
        assert_ne!(keys.queue(&t, "a")[0], keys.queue(&t, "a}:r0")[0]);
    }
}
