//! Cache types shared by the domain, its store contract and both stores (a leaf module).

use bytes::Bytes;

use crate::time::Millis;

/// How a looked-up value stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No value.
    Miss,
    /// Within its TTL.
    Fresh,
    /// Past its TTL, within the stale window.
    Stale,
}

/// The lease part of a Get's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// No lease asked for, or not needed (fresh hit).
    None,
    /// This caller may recompute; the token goes with its Set.
    Granted(String),
    /// Another caller holds the lease.
    Wait,
}

/// A store's answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Miss, fresh or stale.
    pub freshness: Freshness,
    /// The value (empty on a miss).
    pub value: Bytes,
    /// Milliseconds left in the fresh period, by the store's clock (0 unless fresh).
    pub fresh_ms: Millis,
    /// Lease outcome.
    pub lease: Lease,
}

impl Lookup {
    /// A miss with no lease.
    pub fn miss() -> Self {
        Self {
            freshness: Freshness::Miss,
            value: Bytes::new(),
            fresh_ms: 0,
            lease: Lease::None,
        }
    }
}

/// Write conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Always write.
    Always,
    /// Only when there is no fresh value.
    IfAbsent,
    /// Only when there is a fresh value.
    IfPresent,
}

/// A validated write. Its times are durations: the store starts them on its own clock.
#[derive(Debug, Clone)]
pub struct Write {
    /// Key within the namespace.
    pub key: String,
    /// Value.
    pub value: Bytes,
    /// How long the value is fresh, in ms (at least 1).
    pub ttl_ms: Millis,
    /// How long past that it is still served, marked stale, in ms; the entry is gone after it.
    pub stale_ms: Millis,
    /// Tags for InvalidateTags.
    pub tags: Vec<String>,
    /// Condition.
    pub condition: Condition,
    /// Lease token from a Get, if the write completes a lease.
    pub lease_token: Option<String>,
}

/// Input of one Set, before validation.
#[derive(Debug, Clone)]
pub struct SetInput {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Bytes,
    /// Requested TTL in ms (`None`: the namespace's default).
    pub ttl_ms: Option<Millis>,
    /// Tags.
    pub tags: Vec<String>,
    /// Condition.
    pub condition: Condition,
    /// Lease token (empty: none).
    pub lease_token: Option<String>,
}
