"""The networks a run or a package may name, by name, built from plain validated arguments.

A package (or a run directory) is data: loading it must never import or call something it
names. Its ``models.*.net`` entry keeps Hydra's shape (``_target_`` and keyword arguments, so a
training config is readable as is), but :func:`build_network` looks ``_target_`` up in the fixed
table :data:`NETWORKS` and checks every argument against the type its constructor declares: a
name not in the table, an unknown argument or a value of the wrong type is a ValueError naming
it. Nothing is imported by name and no attribute is walked.

Example::

    >>> check_args(TowerConfig, {"hidden": [8], "output_dim": 4}, "user")
    {'hidden': (8,), 'output_dim': 4}
    >>> check_args(TowerConfig, {"hidden": "os.system"}, "user")
    Traceback (most recent call last):
    ...
    ValueError: net config: user.hidden must be tuple[int, ...], got 'os.system'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pinrank.features.spec import FeatureSpec
from pinrank.features.state import FeatureState
from pinrank.models.towers import TowerConfig, TwoTower
from pinrank.models.wide_deep import WideDeep, WideDeepConfig

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_")


@dataclass(frozen=True)
class Network:
    """One buildable network: its factory and the type of each keyword argument (a config
    dataclass, or a plain type)."""

    build: Callable[..., nn.Module]
    args: dict[str, Any]


NETWORKS: dict[str, Network] = {
    "pinrank.models.towers.TwoTower.from_spec": Network(
        TwoTower.from_spec,
        {"user": TowerConfig, "item": TowerConfig, "temperature": float, "tie_shared": bool},
    ),
    "pinrank.models.wide_deep.WideDeep.from_spec": Network(
        WideDeep.from_spec, {"cfg": WideDeepConfig}
    ),
}
CONFIGS: dict[type, str] = {
    TowerConfig: "pinrank.models.towers.TowerConfig",
    WideDeepConfig: "pinrank.models.wide_deep.WideDeepConfig",
}


def build_network(
    config: dict[str, Any], spec: FeatureSpec, state: FeatureState, dense_dims: dict[str, int]
) -> nn.Module:
    """The network ``config`` names (a key of :data:`NETWORKS`), sized by the fitted state."""
    if not isinstance(config, dict):
        raise ValueError(f"net config must be a mapping, got {type(config).__name__}")
    target = config.get("_target_")
    if target not in NETWORKS:
        raise ValueError(f"net config: unknown network {target!r} (known: {sorted(NETWORKS)})")
    network = NETWORKS[target]
    if config.get("_partial_") is not True:
        raise ValueError(f"net config: {target} must be partial (spec and state come later)")
    kwargs = check_args(network.args, _plain(config), "net")
    return network.build(spec=spec, state=state, dense_dims=dense_dims, **kwargs)


def check_args(types_: type | dict[str, Any], values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` checked against ``types_`` (a config dataclass's fields or a name -> type
    table); config dataclasses are built from their nested mappings."""
    table = _fields(types_) if isinstance(types_, type) else types_
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ValueError(f"net config: {where} has unknown arguments {unknown}")
    return {name: _value(table[name], v, f"{where}.{name}") for name, v in values.items()}


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in HYDRA_KEYS}


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _value(kind: Any, value: Any, where: str) -> Any:
    if kind in CONFIGS:
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("_target_", CONFIGS[kind]) != CONFIGS[kind]:
            raise ValueError(f"net config: {where} must be a {CONFIGS[kind]} mapping")
        return kind(**check_args(kind, _plain(value), where))
    if _accepts(kind, value):
        return tuple(value) if isinstance(value, list) else value
    raise ValueError(f"net config: {where} must be {_name(kind)}, got {value!r}")


def _accepts(kind: Any, value: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return any(_accepts(a, value) for a in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, list | tuple) and all(_accepts(args[0], v) for v in value)
    return False


def _name(kind: Any) -> str:
    text = str(kind) if typing.get_origin(kind) else getattr(kind, "__name__", str(kind))
    return text.replace("typing.", "")
