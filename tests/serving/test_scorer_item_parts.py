"""The item parts stored at export: the scorer maps them (read-only, no ranker_items run at
load), serves the same feeds as a package that computes them at load, and reloads map anew."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from package_fixtures import TRUST, resign

from pinrank.serving.feed import FeedConfig
from pinrank.serving.package import MANIFEST, load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.store import TableStore


class Counting(OnnxBackend):
    """ONNX Runtime, counting the runs of each graph."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.runs: dict[str, int] = {}

    def run(self, graph, inputs):  # type: ignore[no-untyped-def]
        self.runs[graph] = self.runs.get(graph, 0) + 1
        return super().run(graph, inputs)


def _without_parts(package_dir: Path, root: Path) -> Path:
    """The package as format v2 left it: no stored item parts."""
    copy = root / "computed"
    shutil.copytree(package_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["item_parts"]
    manifest["format_version"] = 2
    shutil.rmtree(copy / "parts")
    resign(copy, manifest)
    return copy


def test_stored_parts_are_mapped_not_computed_and_give_the_same_feeds(
    package_dir: Path, users_path: Path, tmp_path: Path
) -> None:
    store = TableStore.from_path(users_path)
    stored = load_package(package_dir, TRUST)
    backend = Counting(stored)
    mapped = FeedScorer(stored, store, backend, FeedConfig())
    parts = mapped.ranker.item_parts
    assert parts and all(isinstance(a, np.memmap) and not a.flags.writeable for a in parts.values())
    assert "ranker_items" not in backend.runs  # nothing recomputed at load
    computed_package = load_package(_without_parts(package_dir, tmp_path), TRUST)
    other = Counting(computed_package)
    computed = FeedScorer(computed_package, store, other, FeedConfig())
    assert other.runs.get("ranker_items", 0) >= 1
    for name, array in parts.items():
        np.testing.assert_array_equal(np.asarray(array), computed.ranker.item_parts[name])
    import pyarrow.parquet as pq

    ids = pq.read_table(users_path, columns=["user_id"]).column(0).to_numpy()[:20]
    for user in [*ids.tolist(), 10**9]:  # known users, and an unknown one
        a, b = mapped.feed(int(user), 20), computed.feed(int(user), 20)
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        assert a.path == b.path
        np.testing.assert_allclose(
            [i.score or 0.0 for i in a.items], [i.score or 0.0 for i in b.items], atol=1e-6
        )


def test_after_the_probe_only_the_graphs_feeds_run_stay_loaded(
    package_dir: Path, users_path: Path
) -> None:
    store = TableStore.from_path(users_path)
    package = load_package(package_dir, TRUST)
    backend = Counting(package)
    scorer = FeedScorer(package, store, backend, FeedConfig())
    scorer.probe()  # runs every graph of the package
    assert set(backend.runs) == set(package.manifest["graphs"])
    # the stored parts leave ranker_items unused: dropped with the other graphs and the weights
    assert set(backend._sessions) == {"user_tower", "ranker_user", "ranker_pairs"}
    assert not backend._blobs
    before = dict(backend.runs)
    import pyarrow.parquet as pq

    user = int(pq.read_table(users_path, columns=["user_id"]).column(0)[0].as_py())
    feed = scorer.feed(user, 10)
    assert feed.path.startswith("personalized") and len(feed.items) == 10
    ran = {g for g, n in backend.runs.items() if n > before.get(g, 0)}
    assert ran == {"user_tower", "ranker_user", "ranker_pairs"}
    # a dropped graph is loaded again when asked for (its weights read again, digest-checked)
    assert (
        backend.run("item_tower", scorer.catalogue.inputs(np.arange(3)))["embedding"].shape[0] == 3
    )


def test_item_parts_written_in_chunks_equal_the_export_s(package_dir: Path, tmp_path: Path) -> None:
    """Export writes the parts a chunk of rows at a time (bounded memory at any catalogue
    size): in chunks of 7 rows, the same manifest entry and the same bytes."""
    import pyarrow.parquet as pq

    from pinrank.export.package import _write_item_parts

    copy = tmp_path / "pkg"
    shutil.copytree(package_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    shutil.rmtree(copy / "parts")
    items = pq.read_table(copy / manifest["catalogue"]["path"])
    popular = pq.read_table(copy / manifest["fallback"]["path"])
    assert items.num_rows > 7 * 3
    entry = _write_item_parts(copy, manifest, items, popular, chunk=7)
    assert entry == manifest["item_parts"]
    for spec in entry["arrays"].values():
        assert (copy / spec["path"]).read_bytes() == (package_dir / spec["path"]).read_bytes()
