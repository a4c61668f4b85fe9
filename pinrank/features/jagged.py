"""The sparse inputs' container: torchrec's ``KeyedJaggedTensor`` where torchrec imports, else
:class:`KeyedJagged`, the part of its interface pinrank uses.

torchrec has no build for macOS, for some CUDA versions, or in the image of a lent GPU machine;
pinrank then still featurizes and trains (with the torch-only sparse arch,
:mod:`pinrank.models.components`). Every module imports ``KeyedJaggedTensor`` from here.

Layout (torchrec's): ``K`` keys, a stride of ``B`` rows; ``lengths`` [K * B] key-major (key 0's
``B`` rows, then key 1's, ...); ``values`` (and the optional per-value ``weights``) concatenated
in the same order.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TORCHREC", "Jagged", "KeyedJagged", "KeyedJaggedTensor"]


class Jagged:
    """One key's rows: ``values`` and ``lengths`` [B] (and ``weights``), as torchrec's
    ``JaggedTensor``; the offsets are computed once, when first asked for."""

    def __init__(
        self, values: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        if weights is not None and len(weights) != len(values):
            raise ValueError(f"{len(weights)} weights for {len(values)} values")
        self._values, self._lengths, self._weights = values, lengths, weights
        self._offsets: torch.Tensor | None = None

    def values(self) -> torch.Tensor:
        return self._values

    def lengths(self) -> torch.Tensor:
        return self._lengths

    def weights_or_none(self) -> torch.Tensor | None:
        return self._weights

    def weights(self) -> torch.Tensor:
        if self._weights is None:
            raise ValueError(f"this {type(self).__name__} has no weights")
        return self._weights

    def offsets(self) -> torch.Tensor:
        """[len(lengths) + 1]: where each row starts in ``values``, and the end."""
        if self._offsets is None:
            self._offsets = torch.zeros(
                len(self._lengths) + 1, dtype=self._lengths.dtype, device=self._lengths.device
            )
            torch.cumsum(self._lengths, 0, out=self._offsets[1:])
        return self._offsets


class KeyedJagged(Jagged):
    """Sparse features of ``stride`` rows, by key; the subset of torchrec's
    ``KeyedJaggedTensor`` that pinrank uses, with the same layout.

    Example::

        >>> kj = KeyedJagged(["a", "b"], torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 1]))
        >>> kj.stride(), kj["a"].values().tolist(), kj["b"].lengths().tolist()
        (2, [1, 2, 3], [0, 1])
    """

    def __init__(
        self,
        keys: list[str],
        values: torch.Tensor,
        lengths: torch.Tensor,
        weights: torch.Tensor | None = None,
        stride: int | None = None,
    ) -> None:
        if stride is None:
            if keys and len(lengths) % len(keys):
                raise ValueError(f"{len(lengths)} lengths do not split into {len(keys)} keys")
            stride = len(lengths) // len(keys) if keys else 0
        if len(lengths) != len(keys) * stride:
            raise ValueError(f"{len(lengths)} lengths for {len(keys)} keys x {stride} rows")
        super().__init__(values, lengths, weights)
        self._keys, self._stride = list(keys), stride

    @classmethod
    def from_lengths_sync(
        cls,
        keys: list[str],
        values: torch.Tensor,
        lengths: torch.Tensor,
        weights: torch.Tensor | None = None,
        stride: int | None = None,
    ) -> KeyedJagged:
        return cls(keys, values, lengths, weights, stride)

    def keys(self) -> list[str]:
        return self._keys

    def stride(self) -> int:
        return self._stride

    def length_per_key(self) -> list[int]:
        if not self._keys:
            return []
        return self._lengths.view(len(self._keys), self._stride).sum(dim=1).tolist()

    def to_dict(self) -> dict[str, Jagged]:
        out, start = {}, 0
        for i, (key, total) in enumerate(zip(self._keys, self.length_per_key(), strict=True)):
            end = start + total
            rows = self._lengths[i * self._stride : (i + 1) * self._stride]
            w = None if self._weights is None else self._weights[start:end]
            out[key] = Jagged(self._values[start:end], rows, w)
            start = end
        return out

    def __getitem__(self, key: str) -> Jagged:
        return self.to_dict()[key]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJagged:
        def move(t: Any) -> Any:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return KeyedJagged(
            self._keys, move(self._values), move(self._lengths), move(self._weights), self._stride
        )


try:  # torchrec's, where it imports (the sharded training path needs it)
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    TORCHREC = True
except ImportError:  # macOS, a CUDA build torchrec lacks, the lent GPU machine's image
    KeyedJaggedTensor = KeyedJagged  # type: ignore[assignment,misc,unused-ignore]
    TORCHREC = False
