//! flowstate: shared state for a multi-tenant backend over gRPC (sessions, a cache with near
//! and semantic tiers, rate limits and Envoy's RLS, locks, events, job queues, usage metering),
//! backed by Redis in production and by an embedded in-memory store for development.
//!
//! # Layout
//! Each service is one folder holding its gRPC handlers (`api.rs`), domain (`service.rs`),
//! shared types (`model.rs`), store contract (`store.rs`), both store implementations
//! (`redis.rs` + `lua/`, `memory.rs`), key formats (`keys.rs`) and configuration section
//! (`config.rs`). Imports point one way: api → service → store contract ← implementations.
//! - [`session`]: SessionService: ids, handles, limits, expiry.
//! - [`cache`]: CacheService: namespace policies, tags, leases, hit/miss counts.
//! - [`ratelimit`]: RateLimitService: the four algorithms, all-or-nothing checks.
//! - [`lock`]: LockService: locks and semaphores with fencing tokens, woken waiters.
//! - [`events`]: EventService: topics on Redis Streams, resumable subscriptions, fan-out.
//! - [`queue`]: QueueService: job queues on Redis Streams consumer groups, leases, retries.
//! - [`semantic`]: SemanticCacheService: values found by embedding similarity, indexed in
//!   each replica's memory and kept current from Redis.
//! - [`usage`]: UsageService: usage metering in minute/hour/day/month buckets, top subjects,
//!   distinct counts.
//! - [`rls`]: Envoy's rate limit service (envoyproxy/ratelimit's YAML rules) on the rate-limit
//!   counters.
//!
//! Shared by all of them:
//! - [`proto`]: code generated from `proto/flowstate/v1` and the descriptor set for reflection.
//! - [`config`]: the one configuration scheme (defaults < file < `FLOWSTATE_…` env), validated at start-up.
//! - [`error`]: the service error type and its single mapping to `tonic::Status`.
//! - [`auth`]: API keys, client certificates, permissions, per-tenant request quotas.
//! - [`store`]: the backends (Redis pool and script registry, memory), the key scheme, store errors.
//! - [`health`]: component health (store, shutdown) driving `grpc.health.v1`.
//! - [`lease`]: the secret tokens of lock grants and job leases, and their public ids.
//! - [`observe`]: Prometheus metrics: exporter, RPC metrics layer, collector.
//! - [`deadline`]: the current call's deadline, for store retries that must stop in time.
//! - [`middleware`]: the tower layers every request passes through (deadline, load shedding).
//! - [`services`]: the one list of services and what each registers (permissions, config
//!   section, docs page, how it mounts); everything cross-cutting reads it.
//! - [`server`]: wires it all together: `server::run(config, listener, shutdown)`.
//! - [`telemetry`]: tracing subscriber set-up (pretty or JSON).
//! - [`tenant`]: the tenant every request is scoped to.
//! - [`tls`]: TLS and mTLS for the gRPC listener, from files re-read on change.
//! - [`time`]: Unix-millisecond clock helpers and protobuf time conversions.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cache;
pub mod config;
pub mod deadline;
pub mod error;
pub mod events;
pub mod health;
pub mod lease;
pub mod lock;
pub mod middleware;
pub mod observe;
pub mod proto;
pub mod queue;
pub mod ratelimit;
pub mod rls;
pub mod semantic;
pub mod server;
pub mod services;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod time;
pub mod tls;
pub mod usage;
