//! Events: the `flowstate.v1.EventService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers (Publish, and Subscribe's server stream).
//! - [`service`]: validation, retention per topic pattern, flowstate's own events.
//! - [`hub`]: fan-out inside a replica: one reader per topic feeds every local subscriber.
//! - [`model`]: event ids and events; [`store`]: the store contract; [`redis`] (Redis Streams,
//!   `lua/`) and [`memory`] implement it; [`keys`] has the key format.
//! - [`config`]: the `[events]` section.

pub mod api;
pub mod config;
pub mod hub;
pub mod keys;
pub mod memory;
pub mod model;
pub mod redis;
pub mod service;
pub mod store;

use std::sync::Arc;

pub use self::{
    model::{EventId, TopicEvent},
    service::Events,
    store::EventStore,
};
use crate::{
    proto::v1::event_service_server::EventServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// EventService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "events",
    page: "events",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    w.serve(
        EventServiceServer::new(api::EventApi::new(w.events.clone()))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The event store of `backend`.
pub fn open_store(backend: &Backend) -> Result<Arc<dyn EventStore>, StoreError> {
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemoryEventStore::new(m)),
        Backend::Redis(r) => Arc::new(redis::RedisEventStore::new(r.clone())?),
    })
}
