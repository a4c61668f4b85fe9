"""Networks are built from a fixed table of names with checked arguments: nothing a run or a
package names is imported or called."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinrank.data.prepare import Prepared
from pinrank.models.registry import CONFIGS, NETWORKS, build_network
from pinrank.models.wide_deep import WideDeep
from pinrank.serving.package import NET_CONFIGS
from pinrank.serving.package import NETWORKS as PACKAGE_NETWORKS

NET = {
    "_target_": "pinrank.models.wide_deep.WideDeep.from_spec",
    "_partial_": True,
    "cfg": {
        "_target_": "pinrank.models.wide_deep.WideDeepConfig",
        "_convert_": "all",
        "hidden": [16],
        "dropout": 0.0,
        "interaction_dim": 4,
    },
}


def test_the_package_check_names_exactly_the_registry() -> None:
    assert set(PACKAGE_NETWORKS) == set(NETWORKS)
    assert set(NET_CONFIGS) == set(CONFIGS.values())


def _build(net: dict, prepared: Prepared) -> object:
    return build_network(
        net, prepared.spec(), prepared.state(), {"user": 4, "item": 4, "context": 0}
    )


def test_a_known_network_is_built_with_its_config(synthetic_prepared: Prepared) -> None:
    net = _build(NET, synthetic_prepared)
    assert isinstance(net, WideDeep)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"_target_": "pinrank.export.run.Path.touch"}, "unknown network"),
        ({"_target_": "pinrank.models.wide_deep.os.system"}, "unknown network"),
        ({"_partial_": False}, "must be partial"),
        ({"evil": 1}, r"unknown arguments \['evil'\]"),
        ({"cfg": {"_target_": "pinrank.models.towers.TowerConfig"}}, "WideDeepConfig mapping"),
        ({"cfg": {"hidden": "rm -rf /"}}, r"cfg.hidden must be tuple\[int, ...\]"),
        ({"cfg": {"dropout": True}}, "cfg.dropout must be float"),
        ({"cfg": {"interaction_dim": 2.5}}, "cfg.interaction_dim must be int"),
    ],
)
def test_anything_else_is_refused_by_name(
    change: dict, message: str, synthetic_prepared: Prepared, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        _build(NET | change, synthetic_prepared)
    assert not list(tmp_path.iterdir())
