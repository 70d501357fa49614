"""Small Semantic-ID settings for the planted data (TF-IDF + residual k-means, 2 × 4 codes)."""

from __future__ import annotations

from recloop.semantic_ids.build import SemanticIdConfig

PLANTED_SIDS = SemanticIdConfig(
    embedder={"kind": "tfidf", "dim": 16},  # type: ignore[arg-type]
    tokenizer="rkmeans",
    rkmeans={"levels": 2, "codebook_size": 4},  # type: ignore[arg-type]
)
