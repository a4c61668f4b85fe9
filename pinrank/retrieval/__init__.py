"""Retrieval: top-K search over item embeddings, exact or approximate (FAISS)."""

from pinrank.retrieval.topk import (
    GPU_MAX_K,
    BruteForce,
    FaissTopK,
    TopK,
    build_topk,
    recall_vs_exact,
)

__all__ = ["GPU_MAX_K", "BruteForce", "FaissTopK", "TopK", "build_topk", "recall_vs_exact"]
