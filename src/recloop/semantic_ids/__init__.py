"""Semantic IDs: text embedders, RQ-VAE and residual k-means tokenizers, the prefix trie."""
