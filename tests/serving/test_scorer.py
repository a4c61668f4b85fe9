"""Feeds from a package built from tiny trained runs, checked against independent computations:
the ``ranker`` graph run per pair, popularity and interests read straight from the package's
Parquet files, hand-worked blending and diversification, and a subprocess without torch."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from package_fixtures import SIGNING_KEY, TRUST

from pinrank.features.columns import ColumnSpec, pack
from pinrank.serving.blend import Candidates, select
from pinrank.serving.conform import conform
from pinrank.serving.feed import (
    ERROR,
    NO_CANDIDATES,
    PERSONALIZED,
    PERSONALIZED_DEFAULTS,
    UNKNOWN_INTERESTS,
    UNKNOWN_POPULAR,
    FeedConfig,
)
from pinrank.serving.package import MANIFEST, Package, PackageError, load_package, write_manifest
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.store import TableStore, found

UNKNOWN = 10**9
ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
ARROW["int_list"] = pa.list_(pa.int64())
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures and references


@pytest.fixture(scope="module")
def package(package_dir: Path) -> Package:
    return load_package(package_dir, TRUST)


@pytest.fixture(scope="module")
def backend(package: Package) -> OnnxBackend:
    return OnnxBackend(package, providers=["cpu"])  # shared: sessions are built once


@pytest.fixture(scope="module")
def store(users_path: Path) -> TableStore:
    return TableStore.from_parquet(users_path)


@pytest.fixture(scope="module")
def scorer(package: Package, store: TableStore, backend: OnnxBackend) -> FeedScorer:
    return FeedScorer(package, store, backend)


@pytest.fixture(scope="module")
def items(package: Package) -> pa.Table:
    return pq.read_table(package.path("catalogue/items.parquet"))


@pytest.fixture(scope="module")
def popular(package: Package, items: pa.Table) -> list[int]:
    """Catalogue ids by engaged train events (desc), then id: read from the fallback table."""
    table = pq.read_table(package.path("fallback/popular.parquet")).to_pydict()
    engaged = dict(zip(table["item_id"], table["engaged"], strict=True))
    return sorted(items.column("item_id").to_pylist(), key=lambda i: (-engaged.get(i, 0), i))


@pytest.fixture(scope="module")
def pin_interests(items: pa.Table) -> dict[int, set[int]]:
    rows = items.select(["item_id", "interests"]).to_pylist()
    return {r["item_id"]: {i for i in r["interests"] or [] if i is not None} for r in rows}


@pytest.fixture(scope="module")
def pin_board(items: pa.Table) -> dict[int, int | None]:
    return dict(zip(*items.select(["item_id", "board_id"]).to_pydict().values(), strict=True))


@pytest.fixture(scope="module")
def clean_user(users: pa.Table, package: Package) -> dict[str, Any]:
    """A user with every graph column filled, a few seen pins and two or more interests."""
    columns = [c.column for c in package.columns("user")]
    for row in users.to_pylist():
        filled = all(row[c] is not None for c in columns)
        if filled and len(set(row["seen"])) >= 5 and len(row["interests"]) >= 2:
            return row
    raise AssertionError("no clean user in the fixture data")


def ranker_per_pair(
    package: Package, backend: OnnxBackend, user: pa.Table, item_ids: list[int]
) -> np.ndarray:
    """Probabilities of the single-pair ``ranker`` graph: one full row per (user, item)."""
    catalogue = pq.read_table(package.path("catalogue/items.parquet"))
    position = {i: r for r, i in enumerate(catalogue.column("item_id").to_pylist())}
    n = len(item_ids)
    context = pa.Table.from_pylist([package.manifest["context_defaults"]] * n)
    tables = {
        "user": user.take([0] * n),
        "item": catalogue.take([position[i] for i in item_ids]),
        "context": context,
    }
    arrays: dict[str, np.ndarray] = {}
    for side, table in tables.items():
        arrays |= pack(table, package.columns(side))
    return backend.run("ranker", arrays)["probability"]


def typed_user(package: Package, row: dict[str, Any]) -> pa.Table:
    """One user row typed for the graphs (null where ``row`` lacks a column)."""
    cols = package.columns("user")
    schema = pa.schema([(c.column, ARROW[c.kind]) for c in cols])
    return pa.Table.from_pylist([{c.column: row.get(c.column) for c in cols}], schema=schema)


def reference_select(c: Candidates, k: int, config: FeedConfig) -> list[int]:
    """Cap blending written out plainly: best first, skip what breaks a quota or a cap."""
    limit = {s: int(q * k + 1e-9) for s, q in config.quotas.items()}
    per: Counter[tuple[str, Any]] = Counter()
    out: list[int] = []
    for i in sorted(range(len(c.scores)), key=lambda i: -c.scores[i]):
        caps = {("source", c.sources[i]): limit.get(c.sources[i], k)}
        if c.boards[i] >= 0:
            caps[("board", int(c.boards[i]))] = config.max_per_board
        caps |= {("interest", int(t)): config.max_per_interest for t in c.interests[i]}
        if len(out) < k and all(per[key] < cap for key, cap in caps.items()):
            out.append(i)
            per.update(caps.keys())
    return sorted(out, key=lambda i: -c.scores[i])


# ---------------------------------------------------------------- the personalized path


def test_known_user_feed(scorer: FeedScorer, clean_user: dict[str, Any]) -> None:
    uid = clean_user["user_id"]
    feed = scorer.feed(uid, k=12)
    ids = feed.item_ids.tolist()
    scores = [i.score for i in feed.items]
    assert feed.path == PERSONALIZED and feed.replaced == {} and feed.error is None
    assert len(ids) == 12 and len(set(ids)) == 12
    assert not set(ids) & set(clean_user["seen"])
    assert scores == sorted(scores, reverse=True)
    assert {i.source for i in feed.items} <= {"retrieval", "interests"}
    # the feed's scores are the calibrated pair scores, its sources those of the candidates
    np.testing.assert_allclose(scores, scorer.score(uid, ids), atol=1e-6)
    cands = scorer.candidates(uid, k=12)
    by_id = dict(zip(cands.item_ids.tolist(), cands.sources.tolist(), strict=True))
    assert [by_id[i] for i in ids] == [i.source for i in feed.items]


def test_candidates_exclude_seen_and_follow_interests(
    scorer: FeedScorer, clean_user: dict[str, Any], pin_interests: dict[int, set[int]]
) -> None:
    cands = scorer.candidates(clean_user["user_id"], k=10)
    ids = cands.item_ids.tolist()
    assert len(ids) == len(set(ids)) > 0
    assert not set(ids) & set(clean_user["seen"])
    followed = set(clean_user["interests"])
    interest_pins = [i for i, s in zip(ids, cands.sources, strict=True) if s == "interests"]
    assert interest_pins and all(pin_interests[i] & followed for i in interest_pins)


def test_quotas_and_caps_are_honoured(
    package: Package,
    store: TableStore,
    backend: OnnxBackend,
    clean_user: dict[str, Any],
    pin_interests: dict[int, set[int]],
    pin_board: dict[int, int | None],
) -> None:
    config = FeedConfig(
        candidates=30,
        interest_candidates=30,
        quotas={"retrieval": 0.7, "interests": 0.3},
        max_per_interest=4,
        max_per_board=1,
    )
    scorer = FeedScorer(package, store, backend, config)
    uid, k = clean_user["user_id"], 10
    feed = scorer.feed(uid, k=k)
    ids = feed.item_ids.tolist()
    assert feed.path == PERSONALIZED and len(ids) == k and feed.counts["backfilled"] == 0
    sources = Counter(i.source for i in feed.items)
    assert sources["retrieval"] <= 7 and sources["interests"] <= 3
    assert max(Counter(pin_board[i] for i in ids).values()) <= 1
    assert max(Counter(t for i in ids for t in pin_interests[i]).values()) <= 4
    # the constraints bind: the plain top-k by score is a different feed
    cands = scorer.candidates(uid, k=k)
    plain = cands.item_ids[np.argsort(-cands.scores, kind="stable")[:k]].tolist()
    assert plain != ids
    expected = cands.item_ids[reference_select(cands, k, config)].tolist()
    assert ids == expected


def reference_mmr(c: Candidates, k: int, lam: float) -> list[int]:
    """MMR written out plainly (no quotas): similarity 1 on the same board, else Jaccard."""

    def sim(i: int, j: int) -> float:
        if c.boards[i] >= 0 and c.boards[i] == c.boards[j]:
            return 1.0
        a, b = set(c.interests[i].tolist()), set(c.interests[j].tolist())
        return len(a & b) / len(a | b) if a | b else 0.0

    out: list[int] = []
    while len(out) < min(k, len(c.scores)):
        rest = [i for i in range(len(c.scores)) if i not in out]
        value = {
            i: lam * c.scores[i] - (1 - lam) * max([sim(i, j) for j in out] or [0]) for i in rest
        }
        out.append(max(rest, key=lambda i: (value[i], -i)))
    return sorted(out, key=lambda i: -c.scores[i])


def test_mmr_feed(
    package: Package, store: TableStore, backend: OnnxBackend, clean_user: dict[str, Any]
) -> None:
    config = FeedConfig(
        candidates=40, interest_candidates=10, quotas={}, diversity="mmr", mmr_lambda=0.6
    )
    scorer = FeedScorer(package, store, backend, config)
    uid = clean_user["user_id"]
    feed = scorer.feed(uid, k=10)
    cands = scorer.candidates(uid, k=10)
    assert feed.path == PERSONALIZED and feed.counts["backfilled"] == 0
    assert feed.item_ids.tolist() == cands.item_ids[reference_mmr(cands, 10, 0.6)].tolist()
    plain = cands.item_ids[np.argsort(-cands.scores, kind="stable")[:10]].tolist()
    assert feed.item_ids.tolist() != plain  # diversity changed the feed


def test_select_worked_examples() -> None:
    c = Candidates(
        rows=np.arange(4),
        item_ids=np.array([10, 11, 12, 13]),
        sources=np.array(["retrieval", "retrieval", "interests", "interests"], object),
        scores=np.array([0.9, 0.85, 0.5, 0.4]),
        boards=np.array([1, 1, 2, 3]),
        interests=[np.array([1]), np.array([4]), np.array([2]), np.array([1])],
    )
    free = {"retrieval": 1.0, "interests": 1.0}
    none = FeedConfig(diversity="none", quotas=free)
    assert select(c, 2, none)[0].tolist() == [0, 1]
    # one pin per board: 11 shares 10's board; interest 1 may hold two pins
    cap = FeedConfig(diversity="cap", quotas=free, max_per_board=1, max_per_interest=2)
    assert select(c, 3, cap)[0].tolist() == [0, 2, 3]
    # MMR, lambda 0.5: after 10, 11 is worth 0.425 - 0.5 (same board), 12 is worth 0.25 (no
    # shared interest), 13 is worth 0.2 - 0.5 (the same interest set); then 11 is worth
    # 0.425 - 0.5 and 13 0.2 - 0.5: 11
    mmr = FeedConfig(diversity="mmr", quotas=free, mmr_lambda=0.5)
    assert select(c, 3, mmr)[0].tolist() == [0, 1, 2]
    assert select(c, 2, mmr)[0].tolist() == [0, 2]
    # quotas: floor(0.5 * 2) = 1 retrieval pin
    half = FeedConfig(diversity="none", quotas={"retrieval": 0.5, "interests": 0.5})
    assert select(c, 2, half)[0].tolist() == [0, 2]
    # no interests pin allowed and only two retrieval pins: the best other one is backfilled
    only = FeedConfig(diversity="none", quotas={"retrieval": 1.0, "interests": 0.0})
    chosen, backfilled = select(c, 3, only)
    assert chosen.tolist() == [0, 1, 2] and backfilled == 1


def test_missing_and_malformed_features(
    package: Package, backend: OnnxBackend, clean_user: dict[str, Any]
) -> None:
    row = {k: v for k, v in clean_user.items() if k != "country"}  # a column the store lacks
    row |= {"age": "abc", "gender": 5, "interests": ["x", "music"]}
    scorer = FeedScorer(package, TableStore(pa.Table.from_pylist([row])), backend)
    feed = scorer.feed(clean_user["user_id"], k=8)
    assert feed.path == PERSONALIZED_DEFAULTS
    assert feed.replaced == {
        "country": "missing",
        "age": "malformed",
        "gender": "malformed",
        "interests": "malformed",
    }
    ids = feed.item_ids.tolist()
    assert len(set(ids)) == 8 and not set(ids) & set(clean_user["seen"])
    assert {i.source for i in feed.items} == {"retrieval"}  # no usable interest left
    # scored exactly as the per-pair ranker scores a row with those columns null
    nulls = {**clean_user, "country": None, "age": None, "gender": None, "interests": [None] * 2}
    expected = ranker_per_pair(package, backend, typed_user(package, nulls), ids)
    np.testing.assert_allclose([i.score for i in feed.items], expected, atol=1e-5)


def test_conform_keeps_good_values_and_nulls_bad_ones() -> None:
    cols = [
        ColumnSpec("user", "age", "int"),
        ColumnSpec("user", "country", "string"),
        ColumnSpec("user", "interests", "int_list"),
        ColumnSpec("user", "w", "float"),
        ColumnSpec("user", "last_ts", "int"),
    ]
    row = {"age": 31.0, "country": 7, "interests": [3, "x", None, True], "w": float("nan")}
    table, problems = conform(row, cols, optional=["last_ts"])
    assert table.to_pylist() == [
        {"age": 31, "country": None, "interests": [3, None, None, None], "w": None, "last_ts": None}
    ]
    assert problems == {"country": "malformed", "interests": "malformed", "w": "missing"}


# ---------------------------------------------------------------- fallbacks


def test_unknown_user_gets_popular_pins(scorer: FeedScorer, popular: list[int]) -> None:
    feed = scorer.feed(UNKNOWN, k=7)
    assert feed.path == UNKNOWN_POPULAR
    assert feed.item_ids.tolist() == popular[:7]
    assert {i.source for i in feed.items} == {"popular"}
    # no model scored them: no probability, and their popularity apart (engaged train events)
    assert all(i.score is None for i in feed.items)
    counts = [i.popularity for i in feed.items]
    assert all(c is not None for c in counts) and counts == sorted(counts, reverse=True)
    # interests that no pin has serve the same popular pins
    other = scorer.feed(UNKNOWN, k=7, interests=[10**6])
    assert other.path == UNKNOWN_POPULAR and other.item_ids.tolist() == popular[:7]


def test_unknown_user_with_interests(
    scorer: FeedScorer, popular: list[int], pin_interests: dict[int, set[int]]
) -> None:
    sizes = Counter(t for tags in pin_interests.values() for t in tags)
    big, small = sizes.most_common()[0][0], sizes.most_common()[-1][0]
    assert sizes[big] >= 6 and sizes[small] < 6
    feed = scorer.feed(UNKNOWN, k=6, interests=[big])
    assert feed.path == UNKNOWN_INTERESTS
    assert feed.item_ids.tolist() == [i for i in popular if big in pin_interests[i]][:6]
    assert {i.source for i in feed.items} == {"interests"}
    # an interest with fewer pins than k: its pins first, then the most popular others
    feed = scorer.feed(UNKNOWN, k=6, interests=[small])
    mine = [i for i in popular if small in pin_interests[i]]
    assert feed.path == UNKNOWN_INTERESTS
    assert feed.item_ids.tolist() == (mine + [i for i in popular if i not in mine])[:6]
    assert [i.source for i in feed.items] == ["interests"] * len(mine) + ["popular"] * (
        6 - len(mine)
    )


def test_k_larger_than_unseen_catalogue(
    package: Package, backend: OnnxBackend, clean_user: dict[str, Any], popular: list[int]
) -> None:
    left = popular[-3:]  # the user has seen every pin but these three
    row = {**clean_user, "seen": [i for i in popular if i not in left]}
    scorer = FeedScorer(package, TableStore(pa.Table.from_pylist([row])), backend)
    feed = scorer.feed(clean_user["user_id"], k=10)
    assert feed.path == PERSONALIZED
    assert sorted(feed.item_ids.tolist()) == sorted(left) and feed.counts["short"] == 7
    # nothing unseen at all: no candidate, and the popular fallback has nothing unseen either
    row["seen"] = popular
    scorer = FeedScorer(package, TableStore(pa.Table.from_pylist([row])), backend)
    feed = scorer.feed(clean_user["user_id"], k=10)
    assert feed.path == NO_CANDIDATES and feed.items == [] and feed.counts["short"] == 10


def test_catalogue_filtered_away_gives_no_candidates(
    package_dir: Path,
    store: TableStore,
    items: pa.Table,
    clean_user: dict[str, Any],
    popular: list[int],
    tmp_path: Path,
) -> None:
    config = FeedConfig(candidates=20, interest_candidates=0)
    uid = clean_user["user_id"]
    original = FeedScorer(load_package(package_dir, TRUST), store, config=config)
    retrieved = original.candidates(uid, k=5).item_ids.tolist()
    assert len(retrieved) == 20
    # a copy whose catalogue lost every pin retrieval finds (taken down after indexing)
    root = tmp_path / "pkg"
    shutil.copytree(package_dir, root)
    kept = items.filter(pc.invert(pc.is_in(items.column("item_id"), pa.array(retrieved))))
    pq.write_table(kept, root / "catalogue" / "items.parquet")
    manifest = json.loads((root / MANIFEST).read_text())
    write_manifest(root, manifest, SIGNING_KEY)
    # the item parts stored at export no longer match the catalogue: refused by name
    with pytest.raises(PackageError, match="one row for each of the"):
        FeedScorer(load_package(root, TRUST), store, config=config)
    # without them (as format v2 packages are), the scorer computes them at load
    del manifest["item_parts"]
    shutil.rmtree(root / "parts")
    write_manifest(root, manifest, SIGNING_KEY)
    feed = FeedScorer(load_package(root, TRUST), store, config=config).feed(uid, k=5)
    assert feed.path == NO_CANDIDATES and feed.counts["candidates.retrieval"] == 0
    unseen = [i for i in popular if i not in retrieved and i not in clean_user["seen"]]
    assert feed.item_ids.tolist() == unseen[:5]


class FailingBackend:
    """Runs graphs with another backend, except one graph which raises or returns NaN."""

    name = "failing"

    def __init__(self, inner: OnnxBackend, graph: str, nan: bool = False) -> None:
        self.inner, self.graph, self.nan = inner, graph, nan

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(graph, inputs)
        if graph != self.graph:
            return out
        if self.nan:
            return {name: np.full_like(a, np.nan) for name, a in out.items()}
        raise RuntimeError(f"{graph} is down")


@pytest.mark.parametrize(
    ("graph", "nan"),
    [
        ("ranker_pairs", False),
        ("ranker_user", False),
        ("user_tower", False),
        ("ranker_pairs", True),
    ],
)
def test_graph_failure_degrades_to_popular(
    package: Package,
    store: TableStore,
    backend: OnnxBackend,
    clean_user: dict[str, Any],
    popular: list[int],
    caplog: pytest.LogCaptureFixture,
    graph: str,
    nan: bool,
) -> None:
    scorer = FeedScorer(package, store, FailingBackend(backend, graph, nan))
    with caplog.at_level(logging.ERROR, logger="pinrank.serving.scorer"):
        feed = scorer.feed(clean_user["user_id"], k=6)
    assert feed.path == ERROR and feed.error is not None
    assert feed.item_ids.tolist() == [i for i in popular if i not in clean_user["seen"]][:6]
    assert "serving popular pins" in caplog.text


def test_index_and_store_failures_degrade(
    package: Package, backend: OnnxBackend, store: TableStore, popular: list[int]
) -> None:
    class Broken:
        def search(self, *args: Any, **kwargs: Any) -> Any:
            raise MemoryError("index evicted")

    class DownStore(TableStore):
        def get(self, user_ids: np.ndarray) -> pa.Table:
            raise ConnectionError("store unreachable")

    scorer = FeedScorer(package, store, backend)
    scorer.source.index = Broken()  # type: ignore[assignment]
    feed = scorer.feed(int(store.table.column("user_id")[0].as_py()), k=4)
    assert feed.path == ERROR and "index evicted" in (feed.error or "")
    down = FeedScorer(package, DownStore(store.table), backend).feed(3, k=4)
    assert down.path == ERROR and down.item_ids.tolist() == popular[:4]


def test_bad_arguments_raise(scorer: FeedScorer) -> None:
    for kwargs in ({"k": 0}, {"k": 2.5}, {"k": True}, {"interests": ["a"]}, {"interests": "ab"}):
        with pytest.raises(ValueError, match=r"(k|interests) must"):
            scorer.feed(1, **kwargs)
    with pytest.raises(ValueError, match="user_id must"):
        scorer.feed("7")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in the catalogue"):
        scorer.score(1, [-5])
    with pytest.raises(ValueError, match="diversity"):
        FeedConfig(diversity="shuffle")
    with pytest.raises(ValueError, match="quotas"):
        FeedConfig(quotas={"ads": 0.5})
    with pytest.raises(ValueError, match="max_per_board"):
        FeedConfig(max_per_board=0)


# ---------------------------------------------------------------- scores and stores


def test_score_matches_the_pair_ranker(
    scorer: FeedScorer,
    package: Package,
    backend: OnnxBackend,
    clean_user: dict[str, Any],
    popular: list[int],
) -> None:
    ids = popular[::9]
    got = scorer.score(clean_user["user_id"], ids)
    expected = ranker_per_pair(package, backend, typed_user(package, clean_user), ids)
    assert got.shape == (len(ids),) and float(np.abs(got - expected).max()) <= 1e-5
    assert got.std() > 0  # a constant would pass the comparison too easily
    # an unknown user is scored as a new one: every column but the id null
    cold = scorer.score(UNKNOWN, ids)
    expected = ranker_per_pair(package, backend, typed_user(package, {"user_id": UNKNOWN}), ids)
    assert float(np.abs(cold - expected).max()) <= 1e-5
    assert scorer.score(clean_user["user_id"], []).shape == (0,)


def test_table_store(users: pa.Table, tmp_path: Path) -> None:
    folder = tmp_path / "users"
    folder.mkdir()
    pq.write_table(users.slice(0, 10), folder / "a.parquet")
    pq.write_table(users.slice(10, 10), folder / "b.parquet")
    store = TableStore.from_parquet(folder)
    wanted = [users.column("user_id")[i].as_py() for i in (15, 2)]
    rows = store.get(np.array([wanted[0], UNKNOWN, wanted[1]]))
    assert rows.column("user_id").to_pylist() == [wanted[0], None, wanted[1]]
    assert rows.slice(1, 1).to_pylist()[0] == dict.fromkeys(users.column_names)
    assert found(rows).tolist() == store.known(np.array([wanted[0], UNKNOWN, wanted[1]])).tolist()
    assert rows.slice(2, 1).to_pylist() == users.slice(2, 1).to_pylist()
    assert len(store) == 20
    with pytest.raises(ValueError, match="duplicate"):
        TableStore(pa.concat_tables([users.slice(0, 2), users.slice(0, 1)]))
    with pytest.raises(ValueError, match="integer"):
        store.get(np.array(["a"]))


def test_serving_imports_no_torch(
    package_dir: Path, users_path: Path, clean_user: dict[str, Any], key_files: dict[str, Path]
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "torchrec", "lightning", "pytorch_lightning", "hydra"):
            sys.modules[name] = None  # any import of them now raises ImportError
        from pinrank.serving.package import load_package
        from pinrank.serving.scorer import FeedScorer
        from pinrank.serving.signing import Trust
        from pinrank.serving.store import TableStore
        trust = Trust.from_files([{str(key_files["public"])!r}])
        scorer = FeedScorer(load_package({str(package_dir)!r}, trust),
                            TableStore.from_parquet({str(users_path)!r}))
        feed = scorer.feed({clean_user["user_id"]}, k=5)
        print(feed.path, len(feed.items))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [PERSONALIZED, "5"]


def test_empty_batches_are_answered_empty_by_every_entry_point(
    package_dir: Path, users: pa.Table, tmp_path: Path
) -> None:
    """0 rows: every graph gives 0-row outputs of its declared type and width (ONNX Runtime
    alone fails with 'Shape mismatch attempting to re-use buffer'), and the scorer's batch
    entry points give no feeds."""
    package = load_package(package_dir, TRUST)
    backend = OnnxBackend(package)
    arrays = pack(users.slice(0, 0), package.columns("user"))
    scorer = FeedScorer(package, TableStore(users))
    empty_items = {k: v[:0] for k, v in scorer.catalogue.arrays.items()}
    context = {k: np.repeat(v, 0, axis=0) for k, v in scorer.ranker.context.items()}
    rows = arrays | empty_items | context
    for graph in ("user_tower", "ranker_user", "item_tower", "ranker", "ranker_items"):
        out = backend.run(graph, rows)
        assert out and all(v.shape[0] == 0 for v in out.values()), graph
    assert backend.run("user_tower", rows)["embedding"].shape[1] > 0
    assert scorer.feeds(scorer.user_batch(users.slice(0, 0)), k=5) == []
    assert scorer.feed_many([], k=5) == []
