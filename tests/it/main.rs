//! The integration tests: one binary (one link, one shared Redis Cluster and one Sentinel per
//! run), one module per suite. Every test starts what it needs on loopback (its own
//! `redis-server` on an ephemeral port, flowstate on `127.0.0.1:0`) and polls with a bound.
//!
//! Tests whose path contains `slow_` start or use a Redis Cluster or Sentinel topology; the inner
//! loop can leave them out with `cargo test -- --skip slow_` (CI runs everything).

#[macro_use]
mod common;

mod auth;
mod cache_contract;
mod cache_scale;
mod cli;
mod config_reference;
mod events_contract;
mod exposure;
mod hostile;
mod isolation;
mod lock_contract;
mod metrics;
mod near_cache;
mod queue_contract;
mod ratelimit_contract;
mod ratelimit_parity;
mod ratelimit_properties;
mod ratelimit_refund;
mod redis_connect;
mod redis_faults;
mod replicas;
mod rls_config;
mod rls_contract;
mod script_slots;
mod semantic_contract;
mod session_contract;
mod tls;
mod usage_contract;

/// Tests that start their own Redis Cluster or Sentinel topology, or fail one over.
mod slow_topology {
    mod cluster;
    mod failover;
    mod topology_auth;
}
