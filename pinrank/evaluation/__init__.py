"""Offline evaluation: retrieval metrics and baselines as ``docs/evaluation.md`` describes them
(ranking metrics, plots and the logistic-regression baseline: ``pinrank.evaluation.ranking`` and
``pinrank.evaluation.logreg``)."""

from pinrank.evaluation import retrieval
from pinrank.evaluation.retrieval import *  # noqa: F403  (the names of retrieval.__all__)

__all__ = list(retrieval.__all__)
