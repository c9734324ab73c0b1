//! The semantic cache store contract; [`super::redis`] and [`super::memory`] implement it and
//! run the same contract suite (`tests/it/semantic_contract.rs`).
//!
//! No operation takes a time: TTLs are durations the store starts on its own clock.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::index::SearchPlan;
use crate::{store::StoreError, tenant::Tenant, time::Millis};

/// A namespace as the store sees it.
#[derive(Debug, Clone, Copy)]
pub struct Space<'a> {
    /// The caller's tenant.
    pub tenant: &'a Tenant,
    /// The namespace's name.
    pub namespace: &'a str,
    /// Its embeddings' dimension.
    pub dimension: usize,
}

/// A validated Set.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The unit vector.
    pub vector: Vec<f32>,
    /// The value.
    pub value: Bytes,
    /// The labels.
    pub metadata: BTreeMap<String, String>,
    /// Time to live, in ms.
    pub ttl_ms: Millis,
    /// The namespace's entry limit.
    pub max_entries: u64,
}

/// What a Set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The new entry's id.
    pub id: u64,
    /// Entries removed to make room.
    pub evicted: u32,
}

/// A live entry a Get found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Its id.
    pub id: u64,
    /// Cosine similarity to the query.
    pub similarity: f32,
    /// Its value.
    pub value: Bytes,
    /// Its labels.
    pub metadata: BTreeMap<String, String>,
    /// Time it has left, in ms.
    pub ttl_ms: Millis,
}

/// Entries a Get checks in Redis at most (the best few above the threshold, in case the best
/// was deleted or expired and this replica has not heard yet).
pub const CANDIDATES: usize = 4;

/// What a semantic cache store does.
#[tonic::async_trait]
pub trait SemanticStore: Send + Sync + 'static {
    /// Stores an entry (removing expired ones and, at `max_entries`, the one closest to its
    /// expiry).
    async fn set(&self, space: Space<'_>, entry: Entry) -> Result<Stored, StoreError>;

    /// The most similar live entry at or above `min_similarity` to `query` (a unit vector).
    async fn get(
        &self,
        space: Space<'_>,
        query: &[f32],
        min_similarity: f32,
        plan: SearchPlan,
    ) -> Result<Option<Found>, StoreError>;

    /// Deletes an entry; whether it was live.
    async fn delete(&self, space: Space<'_>, id: u64) -> Result<bool, StoreError>;

    /// Entries and bytes of this replica's indexes.
    fn index_size(&self) -> (u64, u64);
}
