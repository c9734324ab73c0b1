//! Usage metering: the `flowstate.v1.UsageService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers.
//! - [`service`]: validation, batching (events summed per metric and subject before the
//!   store), series and top lists, and the totals usage quotas read.
//! - [`model`]: shared types and the bucket arithmetic; [`store`]: the store contract;
//!   [`redis`] (`lua/`) and [`memory`] implement it; [`keys`] has the key formats.
//! - [`config`]: the `[usage]` section.

pub mod api;
pub mod config;
pub mod keys;
pub mod memory;
pub mod model;
pub mod redis;
pub mod service;
pub mod store;

use std::sync::Arc;

pub use self::{model::Granularity, service::Usage, store::UsageStore};
use crate::{
    proto::v1::usage_service_server::UsageServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// UsageService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "usage",
    page: "usage",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    w.serve(
        UsageServiceServer::new(api::UsageApi::new(w.usage.clone()))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The usage store of `backend`.
pub fn open_store(backend: &Backend) -> Result<Arc<dyn UsageStore>, StoreError> {
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemoryUsageStore::new(m)),
        Backend::Redis(r) => Arc::new(redis::RedisUsageStore::new(r.clone())?),
    })
}
