"""The transformer feed-forward block."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from visionzoo.layers.linear import Linear, has_forward_hooks
from visionzoo.layers.norm import factory


def _per_layer(value):
    """``value`` as a (fc1, fc2) pair: a pair as given, one value for both."""
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


class Mlp(nn.Module):
    """``fc1 -> act -> drop1 -> norm -> fc2 -> drop2``: ``Tensor[..., in_features] -> Tensor[..., out_features]``,
    or with ``use_conv`` (1×1 convolutions) ``Tensor[B, in_features, H, W] -> Tensor[B, out_features, H, W]``.

    ``bias`` and ``drop`` take one value for both layers or an (fc1, fc2) pair; ``norm_layer`` optionally
    normalises the hidden activations (an identity, without parameters, when None). The arguments, their order
    and the module names (``fc1``, ``norm``, ``fc2``) are timm's, so its checkpoints load key for key;
    ``device`` and ``dtype`` (timm's too) are those of the parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] | None = None,
        bias: bool | tuple[bool, bool] = True,
        drop: float | tuple[float, float] = 0.0,
        use_conv: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if hidden_features is not None and hidden_features < 1:  # else 0 fell back to in_features without a word
            raise ValueError(f"the MLP's hidden width must be at least 1, got {hidden_features} "
                             "(a width times an mlp_ratio below 1)")
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        biases, drops = _per_layer(bias), _per_layer(drop)
        layer = partial(nn.Conv2d, kernel_size=1) if use_conv else Linear
        self.fc1 = layer(in_features, hidden_features, bias=biases[0], **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drops[0])
        self.norm = norm_layer(hidden_features, **factory(dd)) if norm_layer is not None else nn.Identity()
        self.fc2 = layer(hidden_features, out_features, bias=biases[1], **dd)
        self.drop2 = nn.Dropout(drops[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.hidden(x)))))

    def hidden(self, x: Tensor) -> Tensor:
        """``act(fc1(x))``, the activation fused into the product where :meth:`Linear.forward_act` can (not where
        ``fc1`` has forward hooks: they are run, and see ``fc1``'s own output)."""
        if isinstance(self.fc1, Linear) and not has_forward_hooks(self.fc1):
            return self.fc1.forward_act(x, self.act)
        return self.act(self.fc1(x))
