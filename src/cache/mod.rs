//! The cache: the `flowstate.v1.CacheService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers.
//! - [`service`]: namespace policies, validation, leases, hit/miss accounting ([`stats`]).
//! - [`model`]: the types everything else shares (a leaf).
//! - [`store`]: the store contract; [`redis`] and [`memory`] implement it; [`keys`] has the key
//!   formats and `lua/` the scripts; [`near`] is the Redis store's per-replica tier.
//! - [`config`]: the `cache` configuration section.

pub mod api;
pub mod config;
pub mod keys;
pub mod memory;
pub mod model;
pub mod near;
pub mod redis;
pub mod service;
pub mod stats;
pub mod store;

use std::sync::Arc;

pub use self::{
    model::{Condition, Freshness, Lease, Lookup, SetInput, Write},
    service::Caches,
    stats::CacheStats,
    store::CacheStore,
};
use crate::{
    config::Config,
    proto::v1::cache_service_server::CacheServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// CacheService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "cache",
    page: "cache",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let caches = Caches::new(open_store(w.backend, w.config)?, w.config.cache.clone())
        .with_events(w.events.clone());
    let published = caches.clone();
    w.metrics(move || published.publish_metrics());
    w.serve(
        CacheServiceServer::new(api::CacheApi::new(caches))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The cache store of `backend`.
pub fn open_store(backend: &Backend, config: &Config) -> Result<Arc<dyn CacheStore>, StoreError> {
    let settings = service::store_settings(&config.cache);
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemoryCacheStore::new(
            m,
            config.cache.memory_max_bytes,
            settings,
        )),
        Backend::Redis(r) => {
            Arc::new(redis::RedisCacheStore::new(r.clone(), settings)?.with_near(&config.cache))
        }
    })
}
