//! Job queues: the `flowstate.v1.QueueService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers.
//! - [`service`]: validation, job defaults per queue pattern, lease tokens, and the waiting
//!   Fetch (woken by [`Signal`]s, never polling while they are live).
//! - [`model`]: shared types and the backoff; [`store`]: the store contract; [`redis`] (Redis
//!   Streams consumer groups, `lua/`) and [`memory`] implement it; [`keys`] has the key formats.
//! - [`config`]: the `[queues]` section.
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

pub use self::{service::Queues, store::QueueStore};
use crate::{
    proto::v1::queue_service_server::QueueServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// QueueService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "queues",
    page: "queues",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let queues = Queues::new(open_store(w.backend)?, w.config.queues.clone());
    w.serve(
        QueueServiceServer::new(api::QueueApi::new(queues))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The queue store of `backend`.
pub fn open_store(backend: &Backend) -> Result<Arc<dyn QueueStore>, StoreError> {
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemoryQueueStore::new(m)),
        Backend::Redis(r) => Arc::new(redis::RedisQueueStore::new(r.clone())?),
    })
}
