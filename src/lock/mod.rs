//! Locks: the `flowstate.v1.LockService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers.
//! - [`service`]: validation, tokens, and the wait loop (woken by [`Signal`]s, never polling
//!   while they are live).
//! - [`model`]: shared types; [`store`]: the store contract; [`redis`] (with `lua/`) and
//!   [`memory`] implement it; [`keys`] has the key formats.
//! - [`config`]: the `[locks]` section.
//!
//! [`Signal`]: crate::store::signal::Signal

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
    model::{Acquired, Attempt, Grant, Holding, LockState},
    service::Locks,
    store::LockStore,
};
use crate::{
    proto::v1::lock_service_server::LockServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// LockService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "locks",
    page: "locks",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let locks = Locks::new(
        open_store(w.backend, &w.config.locks)?,
        w.config.locks.clone(),
    );
    w.serve(
        LockServiceServer::new(api::LockApi::new(locks))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The lock store of `backend`, bounded by `config`.
pub fn open_store(
    backend: &Backend,
    config: &config::LockConfig,
) -> Result<Arc<dyn LockStore>, StoreError> {
    let retention = u64::try_from(config.fence_retention.get().as_millis()).unwrap_or(u64::MAX);
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemoryLockStore::with_limits(
            m,
            config.max_waiters.get(),
            retention,
        )),
        Backend::Redis(r) => Arc::new(redis::RedisLockStore::with_limits(
            r.clone(),
            config.max_waiters.get(),
            retention,
        )?),
    })
}
