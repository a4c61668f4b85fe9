"""Promotion by evidence: a registered candidate replaces production only when it is better on
the hold-out (:mod:`pinrank.lifecycle.compare`), and the registry keeps why.

:func:`evaluate_candidate` fetches both packages from the registry (loaded and checked under the
caller's trust policy), scores the hold-out with each through the serving path, writes the
comparison report, tags the candidate's version with the verdict and its reasons, and points
``production`` at it only when the verdict says so. With no production yet, the candidate is
promoted as the first production model (said so in the reasons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pinrank.lifecycle import compare as cmp
from pinrank.lifecycle.registry import CANDIDATE, PRODUCTION, Registry, RegistryError, Version
from pinrank.serving.signing import Trust


@dataclass
class Decision:
    """What happened to a candidate."""

    candidate: Version
    production: Version | None  # before the decision
    promoted: bool
    reasons: list[str]
    report: Path | None  # compare.json, where a comparison ran
    metrics: list[cmp.Metric]


def evaluate_candidate(
    registry: Registry, holdout: cmp.Holdout, config: cmp.CompareConfig, trust: Trust,
    out: str | Path, cache: str | Path, candidate: str | int = CANDIDATE,
) -> Decision:  # fmt: skip
    """Compare the candidate with production on ``holdout`` and promote it when better
    (module docstring); ``out`` gets the report, ``cache`` the fetched packages."""
    cand = registry.get(candidate)
    try:
        prod: Version | None = registry.get(PRODUCTION)
    except RegistryError:
        prod = None
    tag = _tagger(registry, cand)
    if prod is None:
        reasons = ["no production model yet: the first candidate becomes production"]
        alone = cmp.score_package(registry.fetch(cand.number, cache, trust), trust, holdout,
                                  config.k)  # fmt: skip
        metrics = cmp.compare_scores(holdout, alone, alone, replace(config, samples=1))
        registry.log_holdout(cand.number, holdout.name, [(m, m.b) for m in metrics])
        registry.promote(cand.number, reason=reasons[0])
        tag("pinrank.verdict", "promoted (first)")
        return Decision(cand, None, True, reasons, None, metrics)
    if prod.number == cand.number:
        return Decision(cand, prod, False, ["the candidate is production already"], None, [])
    folders = [registry.fetch(v.number, cache, trust) for v in (prod, cand)]
    scores = [cmp.score_package(f, trust, holdout, config.k) for f in folders]
    metrics = cmp.compare_scores(holdout, scores[0], scores[1], config)
    registry.log_holdout(cand.number, holdout.name, [(m, m.b) for m in metrics])
    registry.log_holdout(prod.number, holdout.name, [(m, m.a) for m in metrics])
    verdict = cmp.verdict(metrics, config)
    labels = (f"production v{prod.number}", f"candidate v{cand.number}")
    a, b = scores
    report = cmp.write_report(out, holdout, a, b, labels, metrics, verdict, config)
    tag("pinrank.verdict", "promoted" if verdict.better else "not promoted")
    tag("pinrank.verdict_reasons", " | ".join(verdict.reasons))
    tag("pinrank.compared_with", str(prod.number))
    if verdict.better:
        registry.promote(cand.number, reason="; ".join(verdict.reasons))
    return Decision(cand, prod, verdict.better, verdict.reasons, report, metrics)


def _tagger(registry: Registry, version: Version) -> Callable[[str, str], None]:
    def tag(key: str, value: str) -> None:
        registry.client.set_model_version_tag(registry.name, str(version.number), key,
                                              value[:5000])  # fmt: skip

    return tag
