//! The event store contract. Both implementations run the same contract suite
//! (`tests/it/events_contract.rs`).

use bytes::Bytes;

use super::model::{Batch, EventId, Retention};
use crate::{
    store::{StoreError, signal::Signal},
    tenant::Tenant,
};

/// What an event store does.
#[tonic::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends an event (its id from the store's clock), trims the topic to `retention` and
    /// fires the topic's signal, in one atomic step.
    async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        retention: Retention,
        payload: Bytes,
        key: &str,
    ) -> Result<EventId, StoreError>;

    /// At most `count` events after `after`, and whether some after it are gone. A position of
    /// `0-0` asks for everything kept and never reports a gap.
    async fn read(
        &self,
        tenant: &Tenant,
        topic: &str,
        after: EventId,
        count: usize,
    ) -> Result<Batch, StoreError>;

    /// The last id the topic gave out (`0-0` when it holds nothing).
    async fn head(&self, tenant: &Tenant, topic: &str) -> Result<EventId, StoreError>;

    /// Keeps a topic with live subscribers from being forgotten, trimming it by age.
    async fn touch(
        &self,
        tenant: &Tenant,
        topic: &str,
        retention: Retention,
    ) -> Result<(), StoreError>;

    /// A signal fired when the topic gets an event.
    async fn signal(&self, tenant: &Tenant, topic: &str) -> Signal;
}

/// Whether a read after `after` missed events: some were trimmed (`trimmed` is the largest id
/// removed), or the topic is gone altogether. A read from `0-0` wants whatever is kept.
pub fn is_gap(after: EventId, trimmed: Option<EventId>) -> bool {
    if after == EventId::ZERO {
        return false;
    }
    match trimmed {
        Some(t) => after < t,
        None => true,
    }
}
