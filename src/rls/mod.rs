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
mod metrics;
pub mod rules;
pub mod service;
pub mod watch;

pub use self::{rules::Rules, service::Rls};
use crate::{
    config::Config,
    proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer,
    ratelimit::RateLimitStore,
    services::{Registration, Wiring},
};

/// Envoy's rate limit service's registration (see [`crate::services`]).
pub const SERVICE: Registration = Registration {
    permissions: api::PERMISSIONS,
    section: "rls",
    page: "rls",
    mount,
};

fn mount(w: &mut Wiring<'_>) -> anyhow::Result<()> {
    let rls = open(w.config, w.counters.clone())?;
    if let Some(path) = &w.config.rls.config_path {
        let (watched, path) = (rls.clone(), path.clone());
        let (merge, every) = (w.config.rls.merge_domains, w.config.rls.reload_interval);
        w.spawn("RLS rules watcher", move |stop| {
            watch::watch_rules(watched, path, merge, every.get(), stop)
        });
    }
    w.serve(
        RateLimitServiceServer::new(api::RlsApi::new(rls))
            .max_decoding_message_size(w.max_message_bytes()),
    );
    Ok(())
}

/// Envoy's rate limit service over the rate-limit counters, with its rules loaded (a broken
/// rules file stops start-up with its file and line) and announced.
fn open(config: &Config, counters: std::sync::Arc<dyn RateLimitStore>) -> anyhow::Result<Rls> {
    let rules = match &config.rls.config_path {
        Some(path) => {
            let rules = Rules::load(path, config.rls.merge_domains)
                .map_err(|e| anyhow::anyhow!("rls.config_path: {e}"))?;
            watch::announce(&rules, path);
            rules
        }
        None => {
            tracing::info!(
                "Envoy rate limit service: no rules (rls.config_path is not set), every \
                 descriptor is UNKNOWN and every request OK"
            );
            Rules::default()
        }
    };
    Ok(Rls::new(counters, rules, config.rls.clone()))
}
