//! Component health driving `grpc.health.v1`.
//!
//! Two components decide what the probes see: the store (pinged by a background task) and
//! shutdown. `""` (liveness) is SERVING until shutdown begins; `readiness` and every
//! `flowstate.v1.*` service name are SERVING only while the store answers and shutdown has not
//! begun. There is no path on which health says SERVING without having asked the store.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex, watch};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::Backend;

/// Service name Kubernetes readiness probes ask for.
pub const READINESS: &str = "readiness";

/// Longest pause between store checks while the store is down (the backoff cap). Small enough
/// that readiness returns within about a second of Redis coming back.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Components {
    store_ok: bool,
    shutting_down: bool,
}

/// Shared health state; cheap to clone.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    components: Arc<Mutex<Components>>,
    /// Every flowstate service name (all follow the store's health), from the descriptors.
    services: Arc<[String]>,
}

impl Health {
    /// Starts with the store unknown (NOT_SERVING) and liveness SERVING.
    pub async fn new(reporter: HealthReporter) -> Self {
        let health = Self {
            reporter,
            components: Arc::new(Mutex::new(Components::default())),
            services: crate::proto::flowstate_services()
                .into_iter()
                .map(|s| s.name)
                .collect(),
        };
        health.publish(&*health.components.lock().await).await;
        health
    }

    /// Records the store's state; returns whether it changed.
    pub async fn set_store_ok(&self, ok: bool) -> bool {
        let mut c = self.components.lock().await;
        let changed = c.store_ok != ok;
        c.store_ok = ok;
        if changed {
            self.publish(&c).await;
        }
        changed
    }

    /// Shutdown has begun: everything turns NOT_SERVING so load balancers stop sending work.
    pub async fn begin_shutdown(&self) {
        let mut c = self.components.lock().await;
        c.shutting_down = true;
        self.publish(&c).await;
    }

    async fn publish(&self, c: &Components) {
        let status = |ok: bool| {
            if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let ready = status(c.store_ok && !c.shutting_down);
        self.reporter
            .set_service_status("", status(!c.shutting_down))
            .await;
        self.reporter.set_service_status(READINESS, ready).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(name, ready).await;
        }
    }
}

/// Pings the store every `interval` (backing off to [`MAX_BACKOFF`] while it fails) and keeps
/// `health` in step, logging each change with its cause. Ends when `stop` turns true.
pub async fn watch_store(
    store: Backend,
    health: Health,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let result = store.ping().await;
        metrics::gauge!("flowstate_store_up").set(if result.is_ok() { 1.0 } else { 0.0 });
        match result {
            Ok(()) => {
                if health.set_store_ok(true).await {
                    tracing::info!(store = store.kind().as_str(), "store is answering: SERVING");
                }
                pause = interval;
            }
            Err(e) => {
                if health.set_store_ok(false).await {
                    tracing::error!(
                        store = store.kind().as_str(),
                        error = %e,
                        "store check failed: NOT_SERVING until it answers again"
                    );
                } else {
                    tracing::debug!(error = %e, "store still failing");
                }
                pause = (pause * 2).clamp(interval.min(MAX_BACKOFF), MAX_BACKOFF);
            }
        }
    }
}
