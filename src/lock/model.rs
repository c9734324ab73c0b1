//! Lock types shared by the service and the stores.

use std::collections::BTreeMap;

use crate::time::Millis;

/// A grant: the holding's fencing token and when it ends (store clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Strictly increasing per lock name across every grant.
    pub fence: u64,
    /// When the holding ends unless extended, Unix ms (store clock).
    pub expires_at: Millis,
}

/// What one acquire attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The lock (or a slot) is the caller's.
    Granted {
        /// The grant.
        grant: Grant,
        /// Holders now, this one included.
        holders: u32,
    },
    /// Taken (or others wait ahead).
    Busy {
        /// When to try again unless woken: until the earliest holding expires (or the place
        /// of a waiter ahead lapses), in ms.
        retry_after_ms: u64,
        /// Holders now.
        holders: u32,
        /// Whether the caller holds a place in the queue.
        queued: bool,
    },
}

/// One acquire attempt's arguments.
#[derive(Debug, Clone)]
pub struct AcquireArgs<'a> {
    /// The lock's name.
    pub name: &'a str,
    /// The public id of the holding (from its token).
    pub holder_id: &'a str,
    /// The holding's TTL.
    pub ttl_ms: u64,
    /// Holders allowed at once.
    pub limit: u32,
    /// The caller's place in the queue (`None`: try once, do not queue).
    pub ticket: Option<&'a str>,
    /// How long a place in the queue lasts unless renewed by the next attempt.
    pub ticket_ttl_ms: u64,
    /// The holder's metadata as JSON.
    pub metadata_json: &'a str,
}

/// A live holding, as Inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The public id (not the token).
    pub holder_id: String,
    /// Its fencing token.
    pub fence: u64,
    /// When it was granted, Unix ms.
    pub acquired_at: Millis,
    /// When it ends, Unix ms.
    pub expires_at: Millis,
    /// The holder's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A lock's state now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockState {
    /// Live holdings, earliest expiry first.
    pub holders: Vec<Holding>,
    /// Callers waiting now.
    pub waiters: u32,
    /// The last fencing token granted (0 if none is remembered).
    pub last_fence: u64,
}

/// An Acquire's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Granted: the secret token, the public id and the grant.
    Held {
        /// The secret of this holding.
        token: String,
        /// Its public id.
        holder_id: String,
        /// Fencing token and expiry.
        grant: Grant,
    },
    /// Not granted within the wait.
    Busy {
        /// Until the earliest holding expires, ms.
        retry_after_ms: u64,
        /// Holders now.
        holders: u32,
    },
}
