//! The semantic cache: namespace lookup, validation and hit/miss accounting over a store.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;

use super::{
    config::{MAX_METADATA_BYTES, SemanticConfig, SemanticNamespace},
    index::{SearchPlan, normalize},
    store::{Entry, Found, SemanticStore, Space, Stored},
};
use crate::{
    error::{Error, Violation},
    tenant::Tenant,
    time::{Millis, duration_ms},
};

/// The semantic cache. Cheap to clone.
#[derive(Clone)]
pub struct Semantic {
    store: Arc<dyn SemanticStore>,
    config: Arc<SemanticConfig>,
}

/// A Set as the caller sent it.
pub struct SetInput {
    /// The embedding (any scale).
    pub embedding: Vec<f32>,
    /// The value.
    pub value: Bytes,
    /// TTL in ms; 0 for the namespace's.
    pub ttl_ms: Millis,
    /// The labels.
    pub metadata: BTreeMap<String, String>,
}

impl Semantic {
    /// The semantic cache over `store`.
    pub fn new(store: Arc<dyn SemanticStore>, config: SemanticConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
        }
    }

    fn namespace(&self, name: &str) -> Result<&SemanticNamespace, Error> {
        if !crate::tenant::is_key_safe_name(name) {
            return Err(Error::invalid(
                "namespace",
                "1-64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        self.config.namespaces.get(name).ok_or_else(|| {
            // The caller's string is not echoed: the field says which.
            Error::NotFound("the semantic namespace in `namespace` (not configured)".into())
        })
    }

    fn plan(&self) -> SearchPlan {
        SearchPlan {
            exact_max: self.config.exact_search_max,
            rerank: self.config.rerank,
        }
    }

    /// The embedding as a unit vector of the namespace's dimension.
    fn unit(ns: &SemanticNamespace, embedding: &[f32]) -> Result<Vec<f32>, Error> {
        if embedding.len() != ns.dimension {
            return Err(Error::invalid(
                "embedding",
                format!(
                    "{} values; this namespace's embeddings have {}",
                    embedding.len(),
                    ns.dimension
                ),
            ));
        }
        normalize(embedding)
            .ok_or_else(|| Error::invalid("embedding", "must be finite and not all zero"))
    }

    /// Stores a value under an embedding.
    pub async fn set(
        &self,
        tenant: &Tenant,
        namespace: &str,
        input: SetInput,
    ) -> Result<Stored, Error> {
        let ns = self.namespace(namespace)?;
        let mut bad = Vec::new();
        let vector = match Self::unit(ns, &input.embedding) {
            Ok(v) => Some(v),
            Err(Error::InvalidArgument(v)) => {
                bad.extend(v);
                None
            }
            Err(e) => return Err(e),
        };
        if input.value.len() > ns.max_value_bytes {
            bad.push(Violation::new(
                "value",
                format!(
                    "{} bytes, more than the namespace's limit of {}",
                    input.value.len(),
                    ns.max_value_bytes
                ),
            ));
        }
        let max_ttl = duration_ms(self.config.max_ttl);
        if input.ttl_ms < 0 || input.ttl_ms > max_ttl {
            bad.push(Violation::new(
                "ttl",
                format!("between 0 (the namespace's) and semantic.max_ttl ({max_ttl} ms)"),
            ));
        }
        if input.metadata.len() > ns.max_metadata {
            bad.push(Violation::new(
                "metadata",
                format!("at most {} entries", ns.max_metadata),
            ));
        }
        if input.metadata.iter().any(|(k, v)| {
            k.is_empty() || k.len() > MAX_METADATA_BYTES || v.len() > MAX_METADATA_BYTES
        }) {
            bad.push(Violation::new(
                "metadata",
                format!("keys of 1 to {MAX_METADATA_BYTES} bytes, values of at most {MAX_METADATA_BYTES}"),
            ));
        }
        let Some(vector) = vector.filter(|_| bad.is_empty()) else {
            return Err(Error::InvalidArgument(bad));
        };
        let ttl_ms = if input.ttl_ms == 0 {
            duration_ms(ns.ttl)
        } else {
            input.ttl_ms
        };
        let stored = self
            .store
            .set(
                self.space(tenant, namespace, ns),
                Entry {
                    vector,
                    value: input.value,
                    metadata: input.metadata,
                    ttl_ms,
                    max_entries: ns.max_entries,
                },
            )
            .await?;
        metrics::counter!("flowstate_semantic_sets_total", "namespace" => namespace.to_owned())
            .increment(1);
        if stored.evicted > 0 {
            metrics::counter!("flowstate_semantic_evictions_total", "namespace" => namespace.to_owned())
                .increment(u64::from(stored.evicted));
        }
        Ok(stored)
    }

    /// The most similar live entry at or above the threshold.
    pub async fn get(
        &self,
        tenant: &Tenant,
        namespace: &str,
        embedding: &[f32],
        min_similarity: Option<f32>,
    ) -> Result<Option<Found>, Error> {
        let ns = self.namespace(namespace)?;
        let query = Self::unit(ns, embedding)?;
        let threshold = min_similarity.unwrap_or(ns.min_similarity);
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(Error::invalid("min_similarity", "within [-1, 1]"));
        }
        let found = self
            .store
            .get(
                self.space(tenant, namespace, ns),
                &query,
                threshold,
                self.plan(),
            )
            .await?;
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!(
            "flowstate_semantic_requests_total",
            "namespace" => namespace.to_owned(),
            "result" => result
        )
        .increment(1);
        Ok(found)
    }

    /// Deletes one entry; whether it was live.
    pub async fn delete(&self, tenant: &Tenant, namespace: &str, id: u64) -> Result<bool, Error> {
        let ns = self.namespace(namespace)?;
        if id == 0 {
            return Err(Error::invalid("id", "an id a Set returned (not 0)"));
        }
        Ok(self
            .store
            .delete(self.space(tenant, namespace, ns), id)
            .await?)
    }

    /// Entries and bytes of this replica's indexes.
    pub fn index_size(&self) -> (u64, u64) {
        self.store.index_size()
    }

    fn space<'a>(
        &self,
        tenant: &'a Tenant,
        namespace: &'a str,
        ns: &SemanticNamespace,
    ) -> Space<'a> {
        Space {
            tenant,
            namespace,
            dimension: ns.dimension,
        }
    }
}
