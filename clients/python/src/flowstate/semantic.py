"""The semantic cache (`flowstate.v1.SemanticCacheService`): answers found by meaning.

    answer = fs.semantic.get_or_compute("llm_answers", embed(prompt), lambda: llm(prompt))

You compute the embedding (flowstate ships no model); flowstate finds the most similar entry of
the namespace stored by any replica (cosine similarity at or above the namespace's threshold,
or `min_similarity`). A namespace is configured on the server (`semantic.namespaces.<name>`:
dimension, threshold, TTL, size). Entries belong to the caller's tenant.
"""

from flowstate._async.semantic import AsyncSemantic
from flowstate._sync.semantic import Semantic
from flowstate.types import Embedding, SemanticHit

__all__ = ["AsyncSemantic", "Embedding", "Semantic", "SemanticHit"]
