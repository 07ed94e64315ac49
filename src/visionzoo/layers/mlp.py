"""The transformer feed-forward block."""

from __future__ import annotations

from torch import Tensor, nn

from visionzoo.layers.linear import Linear


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop``: ``Tensor[..., in_features] -> Tensor[..., out_features]``.

    Module names (``fc1``, ``fc2``) are timm's, so its checkpoints load key for key.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        if hidden_features is not None and hidden_features < 1:  # else 0 fell back to in_features without a word
            raise ValueError(f"the MLP's hidden width must be at least 1, got {hidden_features} "
                             "(a width times an mlp_ratio below 1)")
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
