//! flowstate: shared state primitives (sessions; later cache and rate limits) over gRPC,
//! backed by Redis in production and by an embedded in-memory store for development.
//!
//! # Layout
//! - [`proto`]: code generated from `proto/flowstate/v1` and the descriptor set for reflection.
//! - [`config`]: the one configuration scheme (defaults < file < `FLOWSTATE_…` env), validated at start-up.
//! - [`error`]: the service error type and its single mapping to `tonic::Status`.
//! - [`api`]: one file per gRPC service: validate, convert proto → domain, call, map errors.
//! - [`session`]: session domain: ids, handles, limits, expiry math (pure functions of `now`).
//! - [`cache`]: cache domain: namespace policies, leases, hit/miss counts.
//! - [`ratelimit`]: rate-limit domain: the four algorithms as pure functions, all-or-nothing checks.
//! - [`store`]: the store contract and its Redis and in-memory implementations; key formats.
//! - [`health`]: component health (store, shutdown) driving `grpc.health.v1`.
//! - [`observe`]: Prometheus metrics: exporter, RPC metrics layer, collector.
//! - [`middleware`]: the tower layers every request passes through (deadline, load shedding).
//! - [`server`]: wires it all together: `server::run(config, listener, shutdown)`.
//! - [`telemetry`]: tracing subscriber set-up (pretty or JSON).
//! - [`tenant`]: the tenant every request is scoped to.
//! - [`time`]: Unix-millisecond clock helpers.

#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod config;
pub mod error;
pub mod health;
pub mod middleware;
pub mod observe;
pub mod proto;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod time;
