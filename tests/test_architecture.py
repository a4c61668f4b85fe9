"""The package's module boundaries, walked from the source (``ast``, no imports run): no import
cycle, no private name imported from another module, and the serving layers importing nothing
of training (docs/architecture.md). Imports under ``if TYPE_CHECKING:`` are annotations only and
do not count; imports inside functions do."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "pinrank", ROOT / "serve")  # the library and the HTTP service
TRAINING_ONLY = ("pinrank.data", "pinrank.models", "pinrank.tasks", "pinrank.training")
# layer -> what it may not import (allowed imports: docs/architecture.md)
FORBIDDEN = {
    "pinrank.serving": (*TRAINING_ONLY, "pinrank.export", "serve", "pinrank.batch"),
    "serve": (*TRAINING_ONLY, "pinrank.export", "pinrank.batch"),
    "pinrank.features": ("pinrank.serving", "serve", "pinrank.batch", *TRAINING_ONLY),
    "pinrank.retrieval": ("pinrank.serving", "serve", "pinrank.batch", *TRAINING_ONLY),
    # what the service imports to follow the registry: no torch either
    "pinrank.lifecycle.registry": (*TRAINING_ONLY, "pinrank.export", "serve", "pinrank.batch"),
    "pinrank.lifecycle.tracking": (*TRAINING_ONLY, "pinrank.export", "serve", "pinrank.batch"),
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(p for package in PACKAGES for p in package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(module, imported name or "", line)`` of every import of ours outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            ours = [a.name for a in node.names if a.name.split(".")[0] in ("pinrank", "serve")]
            out += [(name, "", node.lineno) for name in ours]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if not base.startswith(("pinrank", "serve")):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, "", node.lineno) if sub in known else (base, a.name, node.lineno))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, str, int]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle(graph: dict[str, list[tuple[str, str, int]]]) -> None:
    edges = {m: {t for t, _, _ in deps if t in graph and t != m} for m, deps in graph.items()}
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state[t] == 1:
                cycles.append([*stack[stack.index(t) :], t])
            elif state[t] == 0:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(edges):
        if state[m] == 0:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_crosses_a_module(graph: dict[str, list[tuple[str, str, int]]]) -> None:
    bad = [
        f"{m}:{line} imports {name} from {target}"
        for m, deps in graph.items()
        for target, name, line in deps
        if name.startswith("_") and target != m
    ]
    assert not bad, bad


def test_layers_import_only_what_they_may(graph: dict[str, list[tuple[str, str, int]]]) -> None:
    bad = [
        f"{m}:{line} imports {target}"
        for m, deps in graph.items()
        for layer, forbidden in FORBIDDEN.items()
        if m == layer or m.startswith(layer + ".")
        for target, _, line in deps
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert not bad, bad


# layers of the networks that only the networks' own methods may run (docs/architecture.md)
LAYERS = {"user_first", "cand_first", "user_proj", "cand_proj", "mlp", "bias", "dense_index"}
LAYERS |= {"context_dense", "embedding_bags", "ebc"}


def test_export_runs_the_networks_and_reaches_into_no_layer() -> None:
    """The exported graphs supply a sparse front end and call the networks' own arch (no second
    copy of the maths): ``pinrank/export/`` reads no layer of a network by name, and imports
    none of the ranker's arithmetic helpers."""
    bad = []
    for path in sorted((ROOT / "pinrank" / "export").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in LAYERS:
                bad.append(f"{path.name}:{node.lineno} reads .{node.attr}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "head"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "arch"
            ):
                bad.append(f"{path.name}:{node.lineno} reads arch.head")
            if isinstance(node, ast.ImportFrom) and node.module == "pinrank.models.wide_deep":
                names = {a.name for a in node.names} - {"Part", "Pool", "WideDeep"}
                bad += [f"{path.name}:{node.lineno} imports {n}" for n in sorted(names)]
    assert not bad, bad


def test_no_module_over_500_lines_and_a_small_scorer_facade() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for package in PACKAGES
        for p in package.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long
    tree = ast.parse((ROOT / "pinrank" / "serving" / "scorer.py").read_text())
    scorer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FeedScorer")
    assert scorer.end_lineno is not None and scorer.end_lineno - scorer.lineno + 1 < 150


def test_the_walk_sees_imports(graph: dict[str, list[tuple[str, str, int]]]) -> None:
    """The checks above are not vacuous: known edges are found, TYPE_CHECKING ones are not."""
    scorer = {t for t, _, _ in graph["pinrank.serving.scorer"]}
    assert {"pinrank.serving.blend", "pinrank.serving.candidates"} <= scorer
    batcher = {t for t, _, _ in graph["serve.batcher"]}
    assert "serve.metrics" not in batcher  # imported for annotations only
