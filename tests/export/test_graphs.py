"""The ranker's exported graph modules in torch (no ONNX needed): the per-user profile tables of
the user-bag crosses give the per-pair graph's scores, per feed and per catalogue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinrank.calibration import Calibration
from pinrank.data.datamodule import PinrankDataModule
from pinrank.data.prepare import Prepared
from pinrank.export.front import PROFILE_GRID, TABLE_WIDTH, table_crosses
from pinrank.export.graphs import Graph, graphs_for
from pinrank.export.torch_backend import run_graph
from pinrank.export.verify import ParityReport, held_out_rows, ranker_parity
from pinrank.features.columns import columns_for, pack
from pinrank.features.state import FeatureState
from pinrank.models.wide_deep import WideDeep, WideDeepConfig

CFG = WideDeepConfig(hidden=(16,), interaction_dim=4, examination=("position",))
CAL = Calibration("platt", {"a": 1.0, "b": 0.0})


class _Modules:
    """The graph modules as a backend (``run_graph`` on CPU) that keeps each graph's last
    outputs; ``zero_tables``: ``ranker_user`` hands on zeros for its profile tables."""

    name = "graph modules"

    def __init__(self, graphs: dict[str, Graph], state: FeatureState, zero_tables: bool = False):
        self.graphs, self.state, self.zero_tables = graphs, state, zero_tables
        self.outputs: dict[str, dict[str, np.ndarray]] = {}

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = run_graph(self.graphs[graph], self.state, inputs)
        if self.zero_tables:
            out = {k: np.zeros_like(v) if k.endswith(".table") else v for k, v in out.items()}
        self.outputs[graph] = out
        return out


@pytest.fixture(scope="module")
def ranker(synthetic_prepared: Prepared):
    """A ranker with large random wide weights (the profile crosses dominate its scores), its
    graphs, held-out rows as tables and raw arrays, their columns and the data module."""
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=128)
    dm.setup()
    torch.manual_seed(0)
    net = WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), CFG)
    for t in net.tables.cross.tables:
        net.tables.cross.weight(t.feature).data.normal_()
    net.eval()
    tables = held_out_rows(synthetic_prepared, "test", 400)
    columns = {side: columns_for(dm.spec, side, t.schema) for side, t in tables.items()}
    arrays = {k: v for side, t in tables.items() for k, v in pack(t, columns[side]).items()}
    graphs = graphs_for(net, dm.spec, dm.state, [c for cs in columns.values() for c in cs], CAL)
    assert dm.featurizer is not None
    return net, graphs, tables, arrays, columns, dm


def _parity(ranker, zero_tables: bool = False) -> tuple[ParityReport, _Modules]:
    """verify's ranker parity of the graph modules: per pair, per feed (each distinct user's
    part once) and per catalogue, against the training path."""
    net, graphs, tables, arrays, columns, dm = ranker
    be = _Modules(graphs, dm.state, zero_tables)
    report = ParityReport(be.name, tables["context"].num_rows, 1e-5)
    with torch.no_grad():
        ranker_parity(report, net, CAL, dm.featurizer, tables, arrays, be, columns["user"], True)
    return report, be


def test_the_tabled_crosses_are_the_user_crosses_with_a_small_candidate_feature(ranker) -> None:
    net, graphs, *_, dm = ranker
    names = [c.name for c in table_crosses(net, graphs["ranker_user"].features)]
    # every user feature x pin interests: the single-valued ones (the user id too: one lookup
    # per interest) and the bags (a matmul with the grid)
    assert names == [c.name for c in dm.spec.crosses]
    assert {"user_x_interest", "interest_x_interest", "gender_x_interest"} <= set(names)
    for c in dm.spec.crosses:
        left = dm.spec[c.features[0]]
        width = dm.state.crosses[c.name]["right_cardinality"]
        grid = dm.state.cardinality(left.shares or left.name) * width
        small = left.kind == "categorical" or grid <= PROFILE_GRID
        assert (c.name in names) == (width <= TABLE_WIDTH and small)


def test_user_parts_carry_one_table_per_candidate_feature(ranker) -> None:
    _, graphs, tables, *_, dm = ranker
    _, be = _parity(ranker)
    parts = be.outputs["ranker_user"]
    n_users = len(np.unique(tables["user"].column("user_id").to_numpy()))
    (right,) = {c.features[1] for c in dm.spec.crosses}
    width = dm.state.cardinality(right)
    assert [k for k in parts if k.endswith(".table")] == [f"user.x_{right}.table"]
    assert parts[f"user.x_{right}.table"].shape == (n_users, width)
    assert parts[f"user.x_{right}.table"].dtype == np.float32
    # neither the profiles nor the single-valued features travel to the pair graphs: every
    # cross is in the table
    assert not any(k.startswith(("user.seen_interests", "user.history_interests")) for k in parts)
    assert not any(k.endswith((".indices", ".kept")) for k in parts)
    feed_inputs = {i.name for i in graphs["ranker_feed"].inputs}
    assert set(parts) <= feed_inputs and set(parts) <= {
        i.name for i in graphs["ranker_pairs"].inputs
    }


def test_factorised_scores_equal_per_pair_and_training_scores(ranker) -> None:
    net, _, tables, _, _, dm = ranker
    with torch.no_grad():
        training = net(dm.featurizer(tables)).double().numpy()
    assert float(np.std(training)) > 1.0  # the random wide weights give spread-out scores
    report, _ = _parity(ranker)
    for graph in ("ranker", "ranker_feed", "ranker_pairs"):
        assert report.diffs[f"{graph}/logit"] <= 1e-5, report
    # the tables carry a large part of each score: without them the scores are far off
    without, _ = _parity(ranker, zero_tables=True)
    assert without.diffs["ranker_feed/logit"] > 1.0, without
    assert without.diffs["ranker_pairs/logit"] > 1.0, without


def test_untabled_user_lists_of_different_widths_run_in_onnx_runtime(
    synthetic_prepared: Prepared, tmp_path, monkeypatch
) -> None:
    """With no cross tabled (a candidate feature of 20,000 interests), ``ranker_user`` hands its
    list columns on to the pair graph. The exporter traced them at one width and named the
    outputs' axes alike; ONNX Runtime then reused one list's buffer for another of a different
    width ("Shape mismatch attempting to re-use buffer"). Each output's axes are its own."""
    import onnx
    import onnxruntime as ort

    from pinrank.export import front
    from pinrank.export.onnx import export_graph

    monkeypatch.setattr(front, "TABLE_WIDTH", 0)
    dm = PinrankDataModule(str(synthetic_prepared.root), batch_size=128)
    dm.setup()
    torch.manual_seed(0)
    net = WideDeep.from_spec(dm.spec, dm.state, dm.dense_dims(), CFG).eval()
    tables = held_out_rows(synthetic_prepared, "test", 200)
    columns = {side: columns_for(dm.spec, side, t.schema) for side, t in tables.items()}
    arrays = {k: v for side, t in tables.items() for k, v in pack(t, columns[side]).items()}
    graphs = graphs_for(net, dm.spec, dm.state, [c for cs in columns.values() for c in cs], CAL)
    graph = graphs["ranker_user"]
    assert table_crosses(net, graph.features) == []
    lists = [i.name for i in graph.inputs if len(i.shape) == 2]
    assert len({arrays[n].shape[1] for n in lists}) > 1, "the sample's lists share one width"
    path = export_graph(graph, arrays, tmp_path / "ranker_user.onnx")
    outputs = onnx.load(str(path), load_external_data=False).graph.output
    dims = [d.dim_param for o in outputs for d in o.type.tensor_type.shape.dim if d.dim_param]
    assert not any(d.startswith(("Where", "MatMul", "ReduceSum")) for d in dims), dims
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: arrays[i.name] for i in session.get_inputs()}
    got = dict(zip([o.name for o in outputs], session.run(None, feed), strict=True))
    want = run_graph(graph, dm.state, arrays)
    handed = [k for k in got if k.endswith((".indices", ".kept"))]
    assert len(handed) >= 4  # the list features the pair graph crosses
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)
