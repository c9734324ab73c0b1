//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`), a drop-in for
//! envoyproxy/ratelimit: its YAML rules, decided on flowstate's counters.
//!
//! - [`rules`]: the YAML format, loaded into a match tree per domain, errors with file and line.
//! - [`service`]: matching a request's descriptors, deciding them all-or-nothing in the
//!   rate-limit store, statuses, metrics per domain and rule.
//! - [`cache`]: the over-limit cache (refusals without a store call, bounded).
//! - [`config`]: the `[rls]` section; [`api`]: the gRPC handler; [`watch`]: reloads on change.
//!
//! It has no store of its own: its counters are the rate-limit store's
//! ([`crate::ratelimit::open_store`]), with its own counter identities.

pub mod api;
pub mod cache;
pub mod config;
pub mod rules;
pub mod service;
pub mod watch;

pub use self::{rules::Rules, service::Rls};
