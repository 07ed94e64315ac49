"""What a backbone's feature maps are: channels, stride and the module that makes each one.

Detection necks (an FPN) read this to size their convolutions, as they read timm's
``model.feature_info`` (the accessor names are timm's).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from visionzoo.utils import is_integer


class FeatureInfo(list):
    """The feature maps a model can give (a list of dicts, in network order) and, in ``out_indices``, the positions of
    those it returns, as timm's ``FeatureInfo``: a feature extractor's lists every map of its model (``info``,
    ``len``, ``[i]``) and ``out_indices`` names the maps it returns (each once, in network order); a model's own
    returns them all.

    Each dict holds ``num_chs`` (channels C), ``reduction`` (input size / map size, the stride),
    ``module`` (the name of the module whose output it is) and ``index`` (its position, added as timm's does). ``channels()``/``reduction()``/``module_name()`` give
    one field of each returned map (a list); with ``idx``, as timm's, of the map at that position of every map (an
    int) or of several (a list or tuple): ``[info.channels(i) for i in info.out_indices]`` is ``info.channels()``.
    """

    def __init__(self, infos: Iterable[Mapping[str, Any]], out_indices: Sequence[int] | None = None):
        super().__init__(dict(info) for info in infos)
        for position, info in enumerate(self):
            missing = {"num_chs", "reduction", "module"} - set(info)
            if missing:
                raise ValueError(f"feature info {position} lacks {sorted(missing)}: {info}")
            info.setdefault("index", position)
        self.out_indices = tuple(range(len(self))) if out_indices is None else tuple(out_indices)
        if not all(is_integer(i) and 0 <= i < len(self) for i in self.out_indices):
            raise ValueError(f"feature info out_indices must be positions in 0..{len(self) - 1}, "
                             f"got {self.out_indices}")

    def from_other(self, out_indices: int | Sequence[int]) -> FeatureInfo:
        """A copy (of every dict) returning the maps ``out_indices`` names, as timm's ``from_other``: an int n the last
        n maps, a sequence map indices (negative ones from the end). Like our extractors' (and unlike timm's, which
        keeps them as given), its ``out_indices`` are resolved, each once, in network order. Other values raise
        ``ValueError`` naming ``out_indices``."""
        return FeatureInfo(copy.deepcopy(list(self)), taken_in_order(feature_take_indices(len(self), out_indices, "map")))

    @property
    def info(self) -> list[dict[str, Any]]:
        """Every map's dict, as timm's ``FeatureInfo.info``."""
        return self

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [self[i][key] for i in self.out_indices]
        if isinstance(idx, list | tuple):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def channels(self, idx: int | Sequence[int] | None = None) -> list[int] | int:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> list[int] | int:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> list[str] | str:
        return self.get("module", idx)

    def get_dicts(
        self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Copies of the dicts (with ``keys``, of those fields only) of the returned maps, or of the maps ``idx``
        (positions among every map: an int gives one dict, a list or tuple a list), as timm's ``get_dicts``."""

        def fields(info: dict[str, Any]) -> dict[str, Any]:
            return dict(info) if keys is None else {key: info[key] for key in keys}

        if idx is None:
            return [fields(self[i]) for i in self.out_indices]
        if isinstance(idx, list | tuple):
            return [fields(self[i]) for i in idx]
        return fields(self[idx])


def feature_take_indices(count: int, out_indices: int | Sequence[int], unit: str = "stage",
                         name: str = "out_indices") -> tuple[int, ...]:
    """The indices (in 0..count-1) that ``out_indices`` names, by timm's rule: an int n means the last n
    of the ``count`` maps (increasing); a sequence names maps, a negative index counting from the end,
    and keeps its order and repeats, as timm's ``feature_take_indices`` (its
    ``prune_intermediate_layers`` returns them so). A model takes each named map once, in its own order
    (:func:`taken_in_order`). Raises ``ValueError`` naming the argument (``name``) for an int outside
    1..count, an index outside -count..count-1, an empty sequence, or another value (a string, a float): ``name``
    is the argument the caller took them as (``indices`` for ``forward_intermediates``)."""
    if is_integer(out_indices):
        if not 0 < out_indices <= count:
            raise ValueError(f"{name}={out_indices} must be in 1..{count} (the last n of {count} {unit}s)")
        return tuple(range(count - out_indices, count))
    given = tuple(out_indices) if isinstance(out_indices, Iterable) and not isinstance(out_indices, str) else None
    if given is None or not all(is_integer(i) for i in given):  # else int() read "12" as (1, 2), 1.5 as 1
        raise ValueError(f"{name} must be an int (the last n {unit}s) or a sequence of {unit} indices, "
                         f"got {out_indices!r:.40}")
    indices = tuple(int(i) + count if i < 0 else int(i) for i in given)
    if not indices or not all(0 <= i < count for i in indices):
        raise ValueError(
            f"{name} must be {unit} indices in 0..{count - 1} (or from -{count}), at least one, "
            f"got {given}"
        )
    return indices


def taken_in_order(indices: Sequence[int]) -> tuple[int, ...]:
    """The maps a model returns for :func:`feature_take_indices`' ``indices``: each once, increasing (timm's
    ``forward_intermediates`` and ``features_only`` models walk their stages and keep those named)."""
    return tuple(sorted(set(indices)))


OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(output_stride: int) -> int:
    """``output_stride`` if it is one of timm's :data:`OUTPUT_STRIDES` (the network's stride, the stages past it
    dilated instead), else ``ValueError`` naming the argument."""
    if not (is_integer(output_stride) and output_stride in OUTPUT_STRIDES):
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} (the network's stride), got {output_stride!r}")
    return output_stride
