//! Rate limits: the `flowstate.v1.RateLimitService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers.
//! - [`service`]: resolving named and inline limits, validation, failure modes.
//! - [`algorithm`]: the four algorithms as pure functions; [`model`]: shared types (leaves).
//! - [`store`]: the store contract; [`redis`] and [`memory`] implement it; [`keys`] has the key
//!   format and `lua/` the script (which mirrors [`algorithm`] line for line).
//! - [`config`]: the `ratelimit` configuration section.

pub mod algorithm;
pub mod api;
pub mod config;
pub mod keys;
pub mod memory;
pub mod model;
pub mod redis;
pub mod service;
pub mod store;

use std::sync::Arc;

pub use self::{
    algorithm::{Algorithm, Decision, FailureMode, Policy, State, Update, decide},
    model::{CheckInput, CheckOutcome, CheckResult, Counter, CounterId, LimitRef, Role, admits},
    service::RateLimits,
    store::RateLimitStore,
};
use crate::{
    proto::v1::rate_limit_service_server::RateLimitServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// RateLimitService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "ratelimit",
    page: "ratelimit",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let limits =
        RateLimits::new(w.counters.clone(), &w.config.ratelimit).with_usage(w.usage.clone());
    w.serve(
        RateLimitServiceServer::new(api::RateLimitApi::new(limits))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The rate-limit store of `backend`.
pub fn open_store(backend: &Backend) -> Result<Arc<dyn RateLimitStore>, StoreError> {
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemoryRateLimitStore::new(m)),
        Backend::Redis(r) => Arc::new(redis::RedisRateLimitStore::new(r.clone())?),
    })
}
