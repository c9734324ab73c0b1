//! Authentication (`[auth]`) and per-tenant quotas (`[quota]`).

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::permission::Permissions;
use crate::{
    config::{PositiveDuration, nonzero},
    tenant::Tenant,
};

/// Who may call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// `none`: every call acts for `server.tenant` with every permission (laptops, tests; the
    /// server says so loudly at start-up). `required`: every call presents an API key
    /// (`authorization: Bearer …`) or a client certificate listed in `auth.clients`.
    pub mode: AuthMode,
    /// The keys file (one key per line, hashes only; a Kubernetes Secret), reloaded on change.
    pub keys_file: Option<PathBuf>,
    /// Key lines given in the configuration itself (`FLOWSTATE_AUTH__KEYS`, lines separated by
    /// newlines or `;`), in the keys file's format.
    pub keys: Option<String>,
    /// Client-certificate identities (mTLS): a subject alternative name (URI or DNS) and what
    /// it may do, as an alternative to keys.
    pub clients: Vec<ClientIdentity>,
    /// How often the keys file (and the TLS files) are checked for changes.
    pub reload_interval: PositiveDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            keys_file: None,
            keys: None,
            clients: Vec::new(),
            reload_interval: PositiveDuration::from_secs(nonzero!(2)),
        }
    }
}

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: one tenant, every permission.
    None,
    /// An API key or a listed client certificate on every call.
    Required,
}

/// A client certificate's identity and what it may do (`[[auth.clients]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientIdentity {
    /// A subject alternative name of the certificate: a URI (`spiffe://…`) or a DNS name.
    pub san: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// Its permissions, e.g. `sessions:read,cache:*`.
    pub allow: String,
}

impl AuthConfig {
    /// Adds a message per bad value to `bad`; `mtls` says whether client certificates are
    /// verified (`server.tls.client_ca_file`).
    pub fn validate(&self, mtls: bool, bad: &mut Vec<String>) {
        if self.mode == AuthMode::Required
            && self.keys_file.is_none()
            && self.keys.as_deref().is_none_or(|k| k.trim().is_empty())
            && self.clients.is_empty()
        {
            bad.push(
                "`auth.mode = required` needs `auth.keys_file`, `auth.keys` or `auth.clients`: \
                 nobody could call"
                    .to_owned(),
            );
        }
        if !self.clients.is_empty() && !mtls {
            bad.push(
                "`auth.clients` needs `server.tls.client_ca_file`: unverified certificates \
                 prove nothing"
                    .to_owned(),
            );
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.san.is_empty() {
                bad.push(format!("`auth.clients[{i}].san` must not be empty"));
            }
            if Tenant::new(&c.tenant).is_none() {
                bad.push(format!(
                    "`auth.clients[{i}].tenant` must be 1-64 characters of A-Z a-z 0-9 _ . -, \
                     not starting with _"
                ));
            }
            if let Err(e) = Permissions::parse(&c.allow) {
                bad.push(format!("`auth.clients[{i}].allow`: {e}"));
            }
        }
    }
}

/// Per-tenant quotas (`[quota]`), with overrides per tenant (`[quota.tenants.<name>]`). 0 means
/// no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaConfig {
    /// Calls per second a tenant may make to one replica (token bucket; health checks and
    /// reflection are not counted). Per replica, so a slow or stuck tenant cannot take a
    /// replica's capacity from the others; no store round trip.
    pub requests_per_second: u32,
    /// The bucket's size: calls a tenant may make at once after a quiet spell (0: one
    /// second's worth, `requests_per_second`).
    pub burst: u32,
    /// Memory store only: live sessions a tenant may hold.
    pub memory_sessions: u64,
    /// Memory store only: cache bytes a tenant may hold (within `cache.memory_max_bytes`),
    /// generations, invalidation marks and leases included.
    pub memory_cache_bytes: u64,
    /// Memory store only: live rate-limit counters a tenant may hold (they share
    /// `memory.max_bytes` with sessions).
    pub memory_counters: u64,
    /// Overrides by tenant name.
    pub tenants: BTreeMap<String, TenantQuota>,
}

/// One tenant's overrides of the `[quota]` defaults.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantQuota {
    /// See [`QuotaConfig::requests_per_second`].
    pub requests_per_second: Option<u32>,
    /// See [`QuotaConfig::burst`].
    pub burst: Option<u32>,
    /// See [`QuotaConfig::memory_sessions`].
    pub memory_sessions: Option<u64>,
    /// See [`QuotaConfig::memory_cache_bytes`].
    pub memory_cache_bytes: Option<u64>,
    /// See [`QuotaConfig::memory_counters`].
    pub memory_counters: Option<u64>,
}

/// One tenant's quotas, defaults and overrides resolved (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Calls per second per replica.
    pub requests_per_second: u32,
    /// The bucket's size.
    pub burst: u32,
    /// Live sessions (memory store).
    pub memory_sessions: u64,
    /// Cache bytes (memory store).
    pub memory_cache_bytes: u64,
    /// Live rate-limit counters (memory store).
    pub memory_counters: u64,
}

impl QuotaConfig {
    /// The quotas of `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Quota {
        let o = self.tenants.get(tenant).copied().unwrap_or_default();
        Quota {
            requests_per_second: o.requests_per_second.unwrap_or(self.requests_per_second),
            burst: o.burst.unwrap_or(self.burst),
            memory_sessions: o.memory_sessions.unwrap_or(self.memory_sessions),
            memory_cache_bytes: o.memory_cache_bytes.unwrap_or(self.memory_cache_bytes),
            memory_counters: o.memory_counters.unwrap_or(self.memory_counters),
        }
    }

    /// Adds a message per bad value to `bad`.
    pub fn validate(&self, bad: &mut Vec<String>) {
        for name in self.tenants.keys() {
            if Tenant::new(name).is_none() {
                bad.push(format!("`quota.tenants.{name}`: not a tenant name"));
            }
        }
    }
}
