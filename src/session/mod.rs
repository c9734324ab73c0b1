//! Sessions: the `flowstate.v1.SessionService` domain in one folder.
//!
//! - [`api`]: the gRPC handlers (validate, convert, call, map errors).
//! - [`service`]: the domain: policy and validation in front of the store.
//! - [`model`], [`id`]: the types everything else shares (a leaf: imports nothing above it).
//! - [`store`]: the store contract; [`redis`] and [`memory`] implement it; [`keys`] has the key
//!   formats and `lua/` the scripts.
//! - [`config`]: the `session` configuration section.
//!
//! Imports point one way: `api` → `service` → `store` ← `redis`, `memory`; [`open_store`] is
//! the one place that picks an implementation.

pub mod api;
pub mod config;
pub mod id;
pub mod keys;
pub mod memory;
pub mod model;
pub mod redis;
pub mod service;
pub mod store;
mod validate;

use std::sync::Arc;

pub use self::{
    id::{SessionId, SessionKey, UserTag},
    model::{CreateSession, DataLimits, Session, SessionRecord, SessionUpdate},
    service::Sessions,
    store::SessionStore,
    validate::validate_create,
};
use crate::{
    proto::v1::session_service_server::SessionServiceServer,
    services::{Registration, Wiring},
    store::{Backend, StoreError},
};

/// SessionService's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "session",
    page: "sessions",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let config = &w.config.session;
    let sessions =
        Sessions::new(open_store(w.backend, config)?, config.clone()).with_events(w.events.clone());
    w.serve(
        SessionServiceServer::new(api::SessionApi::new(sessions))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// The session store of `backend`, with the write concern of `config` on Redis.
pub fn open_store(
    backend: &Backend,
    config: &config::SessionConfig,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    Ok(match backend {
        Backend::Memory(m) => Arc::new(memory::MemorySessionStore::new(m)),
        Backend::Redis(r) => Arc::new(redis::RedisSessionStore::new(
            r.clone(),
            config.write_concern,
        )?),
    })
}
