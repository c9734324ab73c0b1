//! The semantic cache: the `flowstate.v1.SemanticCacheService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers; [`service`]: namespaces, validation, accounting.
//! - [`index`]: the in-memory vector index (exact, or a sign-bit prefilter with exact re-rank).
//! - [`store`]: the store contract; [`redis`] (`lua/`, kept current across replicas from each
//!   namespace's change log) and [`memory`] implement it; [`keys`] has the key formats.
//! - [`config`]: the `[semantic]` section.

pub mod api;
pub mod config;
pub mod index;
pub mod keys;
pub mod memory;
pub mod redis;
pub mod service;
pub mod store;

use std::sync::Arc;

pub use self::{service::Semantic, store::SemanticStore};
use crate::{
    config::Config,
    proto::v1::semantic_cache_service_server::SemanticCacheServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// SemanticCacheService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "semantic",
    page: "semantic-cache",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let semantic = Semantic::new(open_store(w.backend, w.config)?, w.config.semantic.clone());
    let published = semantic.clone();
    w.metrics(move || {
        let (entries, bytes) = published.index_size();
        metrics::gauge!("flowstate_semantic_index_entries").set(entries as f64);
        metrics::gauge!("flowstate_semantic_index_bytes").set(bytes as f64);
    });
    w.serve(
        SemanticCacheServiceServer::new(api::SemanticApi::new(semantic))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The semantic cache store of `backend`.
pub fn open_store(
    backend: &Backend,
    config: &Config,
) -> Result<Arc<dyn SemanticStore>, StoreError> {
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemorySemanticStore::new(m)),
        Backend::Redis(r) => Arc::new(redis::RedisSemanticStore::new(r.clone(), &config.semantic)?),
    })
}
