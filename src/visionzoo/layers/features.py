"""What a backbone's feature maps are: channels, stride and the module that makes each one.

Detection necks (an FPN) read this to size their convolutions, as they read timm's
``model.feature_info`` (the accessor names are timm's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class FeatureInfo(list):
    """A list of dicts, one per returned feature map, in output order.

    Each dict holds ``num_chs`` (channels C), ``reduction`` (input size / map size, the stride) and
    ``module`` (the name of the module whose output it is). ``channels()``/``reduction()``/
    ``module_name()`` give one field for every map (a list) or, with ``idx``, for one map.
    """

    def __init__(self, infos: Iterable[Mapping[str, Any]]):
        super().__init__(dict(info) for info in infos)
        for position, info in enumerate(self):
            missing = {"num_chs", "reduction", "module"} - set(info)
            if missing:
                raise ValueError(f"feature info {position} lacks {sorted(missing)}: {info}")

    def get(self, key: str, idx: int | None = None) -> Any:
        return [info[key] for info in self] if idx is None else self[idx][key]

    def channels(self, idx: int | None = None) -> list[int] | int:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return self.get("reduction", idx)

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return self.get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(info) for info in self]
