//! What a caller may do: one permission per service and kind of access, granted per API key (or
//! client certificate) as `service:access` names, with `service:*` and `*` as wildcards.

use std::fmt;

/// One permission. Each gRPC method needs exactly one (see each service's `api.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// GetSession, ListUserSessions.
    SessionsRead,
    /// CreateSession, UpdateSession, TouchSession, RotateSession, DeleteSession,
    /// DeleteUserSessions; and GetSession with `touch` (it extends the session).
    SessionsWrite,
    /// Cache Get, GetMany; semantic cache Get.
    CacheRead,
    /// Cache Set, SetMany, Delete; and Get with `lease` (a lease exists to be filled); semantic
    /// cache Set, Delete.
    CacheWrite,
    /// Cache InvalidateTags, InvalidateNamespace.
    CacheInvalidate,
    /// Rate-limit Check (dry runs too), and Envoy's ShouldRateLimit.
    RatelimitCheck,
    /// Rate-limit Reset: lifting a limit is an administrator's act.
    RatelimitAdmin,
    /// Lock Acquire, Extend, Release.
    LocksWrite,
    /// Lock Inspect.
    LocksRead,
    /// Event Publish.
    EventsPublish,
    /// Event Subscribe (flowstate's own topics included).
    EventsSubscribe,
    /// Queue Enqueue, EnqueueMany.
    QueuesEnqueue,
    /// Queue Fetch, Ack, Fail, Extend, GiveBack: what a worker does.
    QueuesWork,
    /// Queue Stats, ListDead.
    QueuesRead,
    /// Queue Retry, Discard (of dead jobs), Pause, Resume.
    QueuesAdmin,
    /// Usage Record.
    UsageRecord,
    /// Usage Query, Top.
    UsageRead,
}

/// Every permission with its name, in one table (parsing, printing, `*`).
pub const ALL: [(Permission, &str); 17] = [
    (Permission::SessionsRead, "sessions:read"),
    (Permission::SessionsWrite, "sessions:write"),
    (Permission::CacheRead, "cache:read"),
    (Permission::CacheWrite, "cache:write"),
    (Permission::CacheInvalidate, "cache:invalidate"),
    (Permission::RatelimitCheck, "ratelimit:check"),
    (Permission::RatelimitAdmin, "ratelimit:admin"),
    (Permission::LocksWrite, "locks:write"),
    (Permission::LocksRead, "locks:read"),
    (Permission::EventsPublish, "events:publish"),
    (Permission::EventsSubscribe, "events:subscribe"),
    (Permission::QueuesEnqueue, "queues:enqueue"),
    (Permission::QueuesWork, "queues:work"),
    (Permission::QueuesRead, "queues:read"),
    (Permission::QueuesAdmin, "queues:admin"),
    (Permission::UsageRecord, "usage:record"),
    (Permission::UsageRead, "usage:read"),
];

impl Permission {
    /// The permission's name, e.g. `sessions:read`.
    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(p, _)| *p == self)
            .map_or("unknown", |(_, n)| n)
    }

    fn bit(self) -> u64 {
        1 << (self as u64)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of permissions (a bit per permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions(u64);

impl Permissions {
    /// Every permission (authentication off).
    pub fn all() -> Self {
        Self(ALL.iter().fold(0, |bits, (p, _)| bits | p.bit()))
    }

    /// Whether `p` is in the set.
    pub fn allows(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Parses `sessions:read,cache:*`: names separated by commas; `service:*` grants every
    /// permission of a service and `*` every permission. Unknown names are errors (a typo must
    /// not silently grant less, or more).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut bits = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let matched: Vec<Permission> = if name == "*" {
                ALL.iter().map(|(p, _)| *p).collect()
            } else if let Some(service) = name.strip_suffix(":*") {
                ALL.iter()
                    .filter(|(_, n)| n.split(':').next() == Some(service))
                    .map(|(p, _)| *p)
                    .collect()
            } else {
                ALL.iter()
                    .filter(|(_, n)| *n == name)
                    .map(|(p, _)| *p)
                    .collect()
            };
            if matched.is_empty() {
                let known: Vec<&str> = ALL.iter().map(|(_, n)| *n).collect();
                return Err(format!(
                    "unknown permission {name:?} (known: {}, service:* and *)",
                    known.join(", ")
                ));
            }
            bits |= matched.iter().fold(0, |b, p| b | p.bit());
        }
        if bits == 0 {
            return Err("no permissions given".to_owned());
        }
        Ok(Self(bits))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = ALL
            .iter()
            .filter(|(p, _)| self.allows(*p))
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wildcards_parse_and_typos_do_not() {
        let p = Permissions::parse("sessions:read, cache:*").expect("parses");
        assert!(p.allows(Permission::SessionsRead));
        assert!(!p.allows(Permission::SessionsWrite));
        assert!(p.allows(Permission::CacheRead) && p.allows(Permission::CacheInvalidate));
        assert!(!p.allows(Permission::RatelimitCheck));
        assert_eq!(
            p.to_string(),
            "sessions:read,cache:read,cache:write,cache:invalidate"
        );
        assert_eq!(Permissions::parse("*").expect("all"), Permissions::all());
        for bad in ["session:read", "cache:reads", "lock:*", "", " , "] {
            assert!(Permissions::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
