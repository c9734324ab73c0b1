//! The one list of services this server serves, and what each one registers.
//!
//! Everything that is true of every service reads [`ALL`]: the server adds their gRPC servers,
//! background tasks and metric hooks; the auth layer builds its method → permission table;
//! the test suites that must cover every service (auth table, exposure, isolation, script
//! slots, hostile input) iterate it or the descriptors. A service is added by writing its
//! folder and one line here: nothing else keeps a list (see `docs/ARCHITECTURE.md`).

use std::{future::Future, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};
use tonic::service::{Routes, RoutesBuilder};

use crate::{
    auth::MethodPermissions,
    config::Config,
    events::{self, Events},
    ratelimit::{self, RateLimitStore},
    store::Backend,
    usage::{self, Usage},
};

/// What one service contributes to the server. Each service's `mod.rs` defines its `SERVICE`.
pub struct Registration {
    /// The gRPC service's full name and the permission each of its methods needs.
    pub permissions: MethodPermissions,
    /// The configuration section it reads (`[session]`), documented in `docs/configuration.md`.
    pub section: &'static str,
    /// Its page: `docs/services/{page}.md`.
    pub page: &'static str,
    /// Opens its store, builds its domain and adds its gRPC server (with the message limit),
    /// its background tasks and its metric hooks to `wiring`.
    pub mount: fn(&mut Wiring<'_>) -> anyhow::Result<()>,
}

impl Registration {
    /// The gRPC service's full name, e.g. `flowstate.v1.SessionService`.
    pub fn name(&self) -> &'static str {
        self.permissions.0
    }
}

/// Every service, in the order they are mounted.
pub const ALL: [&Registration; 9] = [
    &crate::session::SERVICE,
    &crate::cache::SERVICE,
    &crate::semantic::SERVICE,
    &crate::ratelimit::SERVICE,
    &crate::rls::SERVICE,
    &crate::lock::SERVICE,
    &crate::events::SERVICE,
    &crate::queue::SERVICE,
    &crate::usage::SERVICE,
];

/// The method → permission tables of every service, for the auth layer.
pub fn permissions() -> Vec<MethodPermissions> {
    ALL.iter().map(|r| r.permissions).collect()
}

/// Publishes figures kept in memory (counts, sizes) as metrics; called about once a second.
pub type MetricsHook = Box<dyn Fn() + Send + Sync>;

/// A background task and the name its failure is logged under.
pub type Task = (&'static str, JoinHandle<()>);

/// What services are mounted on: the configuration, the store, the domains other services
/// build on (sessions and caches publish events, rate limits read usage, Envoy's RLS shares
/// the rate-limit counters), and what each mount adds.
pub struct Wiring<'a> {
    /// The validated configuration.
    pub config: &'a Config,
    /// The store every service opens its own store on.
    pub backend: &'a Backend,
    /// Event topics, which sessions and caches publish on.
    pub events: Events,
    /// Usage metering, which usage limits read.
    pub usage: Usage,
    /// The rate-limit counters, shared by RateLimitService and Envoy's RLS.
    pub counters: Arc<dyn RateLimitStore>,
    routes: RoutesBuilder,
    tasks: Vec<Task>,
    hooks: Vec<MetricsHook>,
    stop: watch::Receiver<bool>,
}

impl<'a> Wiring<'a> {
    /// Opens the shared domains; `stop` turns true when background tasks must end.
    pub fn new(
        config: &'a Config,
        backend: &'a Backend,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            config,
            backend,
            events: Events::new(events::open_store(backend)?, config.events.clone()),
            usage: Usage::new(usage::open_store(backend)?, config.usage.clone()),
            counters: ratelimit::open_store(backend)?,
            routes: RoutesBuilder::default(),
            tasks: Vec::new(),
            hooks: Vec::new(),
            stop,
        })
    }

    /// The largest request message a service decodes (`server.max_message_bytes`): every
    /// generated server's `max_decoding_message_size`.
    pub fn max_message_bytes(&self) -> usize {
        self.config.server.max_message_bytes.get()
    }

    /// Adds a gRPC server (behind the one tower stack of `server.rs`).
    pub fn serve<S>(&mut self, server: S)
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = std::convert::Infallible,
                Response = http::Response<tonic::body::Body>,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(server);
    }

    /// Runs a background task until the server stops; `task` gets the stop signal.
    pub fn spawn<F>(&mut self, name: &'static str, task: impl FnOnce(watch::Receiver<bool>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push((name, tokio::spawn(task(self.stop.clone()))));
    }

    /// Adds a hook the metrics collector calls about once a second.
    pub fn metrics(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// The stop signal of background tasks, for tasks the server itself starts.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Mounts every service of [`ALL`]; a service that cannot start names itself.
    pub fn mount_all(&mut self) -> anyhow::Result<()> {
        for service in ALL {
            (service.mount)(self).map_err(|e| anyhow::anyhow!("{}: {e:#}", service.name()))?;
        }
        Ok(())
    }

    /// What the mounts added: the routes, the tasks and the metric hooks.
    pub fn finish(self) -> (Routes, Vec<Task>, Vec<MetricsHook>) {
        (self.routes.routes(), self.tasks, self.hooks)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_service_in_the_descriptors_is_registered_once() {
        let registered: Vec<&str> = ALL.iter().map(|r| r.name()).collect();
        let unique: BTreeSet<&str> = registered.iter().copied().collect();
        assert_eq!(
            unique.len(),
            registered.len(),
            "registered twice: {registered:?}"
        );
        let described: BTreeSet<String> = crate::proto::flowstate_services()
            .into_iter()
            .map(|s| s.name)
            .collect();
        let registered: BTreeSet<String> = unique.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(described, registered, "descriptors vs services::ALL");
    }

    #[test]
    fn every_method_has_a_permission_and_every_permission_a_method() {
        for service in crate::proto::flowstate_services() {
            let registration = ALL
                .iter()
                .find(|r| r.name() == service.name)
                .expect("registered");
            let table: BTreeSet<&str> =
                registration.permissions.1.iter().map(|(m, _)| *m).collect();
            let methods: BTreeSet<&str> = service.methods.iter().map(String::as_str).collect();
            assert_eq!(table, methods, "{}", service.name);
        }
    }

    #[test]
    fn every_service_has_its_page_and_its_config_section() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let defaults = toml::Value::try_from(Config::default()).expect("config serializes");
        for service in ALL {
            let page = root.join(format!("docs/services/{}.md", service.page));
            let text = std::fs::read_to_string(&page)
                .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            assert!(
                text.contains(service.name()),
                "{} does not name {}",
                page.display(),
                service.name()
            );
            assert!(
                defaults.get(service.section).is_some(),
                "{}: no [{}] section in Config",
                service.name(),
                service.section
            );
        }
    }
}
