"""Offline evaluation: retrieval metrics and baselines as ``docs/PROTOCOL.md`` defines them."""

from pinrank.evaluation.retrieval import (
    RetrievalTask,
    baseline_metrics,
    popularity_scores,
    random_ranking,
    rank_by_scores,
    retrieval_metrics,
    retrieval_task,
)

__all__ = [
    "RetrievalTask",
    "baseline_metrics",
    "popularity_scores",
    "random_ranking",
    "rank_by_scores",
    "retrieval_metrics",
    "retrieval_task",
]
