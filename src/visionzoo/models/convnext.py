"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s") in timm's module layout.

Module names are timm's, so its state dicts load key for key: ``stem.0`` (patchify conv) and
``stem.1`` (LayerNorm2d); ``stages.N.downsample`` (LayerNorm2d and a 2×2 stride-2 conv, stages 1..3);
``stages.N.blocks.M`` with ``conv_dw`` (7×7 depthwise), ``norm``, ``mlp.fc1``, ``mlp.fc2`` and ``gamma``
(layer scale); ``head.norm`` and ``head.fc`` (global average pool, LayerNorm, linear: timm's
NormMlpClassifierHead without a hidden layer). timm's small models (atto ... nano) use 1×1 convs for the
MLP; their ``[O, I, 1, 1]`` weights are reshaped to our linear ``[O, I]`` by :func:`checkpoint_filter`,
which also converts the official facebookresearch/ConvNeXt layout.

Speed on CPU: the trunk runs in channels-last memory (the input is converted once), where the 7×7
depthwise conv is faster and the NHWC view for LayerNorm and the MLP is free (no permute copies).
Without autograd (inference, unless traced or compiled), a block runs its LayerNorm → MLP → layer scale → residual over chunks of
pixels, so the 4× wider hidden activations stay in cache and the result is written into the conv's
output buffer; the arithmetic is the same as the plain path, row for row.

Sizes are data (``_SIZES``). Besides timm's names, small models for the built-in data sets (32×32
Digits, 64×64 Shapes) are registered: ``convnext_atto_32`` (stem stride 2: 32×32 → 16×16 maps after the
stem) and ``convnext_atto_64``/``convnext_femto_64`` (stem stride 4: 64×64 → 16×16 after the stem).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.layers.classifier import (
    ADAPTIVE_POOLS,
    check_global_pool,
    global_pool_2d,
    keeps_device_and_dtype,
)
from visionzoo.layers.depthwise_conv import DepthwiseConv2d
from visionzoo.layers.drop import DropPath, check_dropout_rates, drop_path_rates
from visionzoo.layers.features import FeatureInfo, check_output_stride, feature_take_indices, taken_in_order
from visionzoo.layers.grad_checkpoint import run_blocks
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.norm import LayerNorm2d
from visionzoo.models._registry import Pretrained, record_model_args, register_model
from visionzoo.utils import (
    check_argument_types,
    cpu_has_amx,
    inference_chunk_elements,
    require_image_batch,
    runs_in_cache_chunks,
    whole_number,
)

# Hidden MLP activations computed at once in inference, so that they stay in cache: 2^18 (fp32: 1 MiB) measured best
# on AVX512 CPUs without AMX. AMX's tile matmuls want larger products: on a 2-core Xeon with AMX (2026-12-05),
# convnext_tiny at batch 32 ran 1.5× (bf16) and 1.1× (fp32) faster with 2^21 than with 2^18, and slower again unchunked.
# Where freed memory is kept, 32 MiB chunks (visionzoo.utils.inference_chunk_elements): there, bf16, 2026-12-06,
# 67.5-69.8 img/s against 56.2-57.2 at 2^21.
_CHUNK_ELEMENTS = 1 << 21 if cpu_has_amx() else 1 << 18


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma · fc2(gelu(fc1(norm(conv_dw(x))))))``: ``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``.

    The norm and the MLP act on the channels of each pixel (the NHWC view). The output keeps the input's
    memory format when it is channels-last (the trunk's), as does the depthwise conv.

    Args:
        dim: channels C.
        mlp_ratio: hidden width of the MLP as a multiple of C.
        kernel_size: of the depthwise conv (padding keeps H, W).
        ls_init_value: initial layer scale ``gamma`` (None: no layer scale).
        drop_path: stochastic-depth probability of the residual branch in training.
        dilation: of the depthwise conv (a stage past the model's ``output_stride``).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        ls_init_value: float | None = 1e-6,
        drop_path: float = 0.0,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv_dw = DepthwiseConv2d(dim, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        # a bare parameter (not a LayerScale module): timm's key is ``blocks.M.gamma``
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value))) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        if (self.training and isinstance(self.drop_path, DropPath)) or not runs_in_cache_chunks(x):
            return x + self.drop_path(self._scale(self.mlp(self.norm(y))).permute(0, 3, 1, 2))
        return self._residual_in_chunks(x, y)

    def _scale(self, branch: Tensor) -> Tensor:
        return branch if self.gamma is None else branch * self.gamma

    def _residual_in_chunks(self, x: Tensor, y: Tensor) -> Tensor:
        """The residual update without autograd, ``step`` pixels at a time; ``y``: ``Tensor[B, H, W, C]``,
        the conv's output (ours to overwrite)."""
        batch, height, width, channels = y.shape
        rows = y.reshape(-1, channels)
        shortcut = x.permute(0, 2, 3, 1).reshape(-1, channels)
        mlp = self.mlp
        step = max(1, inference_chunk_elements(rows, _CHUNK_ELEMENTS) // mlp.fc1.out_features)
        out = None
        for start in range(0, max(rows.shape[0], 1), step):  # an empty batch runs once, into an empty map
            stop = start + step
            branch = mlp.fc2(mlp.hidden(self.norm(rows[start:stop])))
            if out is None:
                dtype = torch.promote_types(shortcut.dtype, branch.dtype)
                if self.gamma is not None:
                    dtype = torch.promote_types(dtype, self.gamma.dtype)
                out = rows if rows.dtype == dtype else rows.new_empty(rows.shape, dtype=dtype)
            if self.gamma is None:
                torch.add(shortcut[start:stop], branch, out=out[start:stop])
            else:
                torch.addcmul(shortcut[start:stop], branch, self.gamma, out=out[start:stop])
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2)


class SamePaddedConv2d(nn.Conv2d):
    """A stride-1 conv that keeps the map's size, as ``padding="same"`` (for an even extent, one pixel more padded
    after than before, as torch's and timm's): ``Tensor[B, C_in, H, W] -> Tensor[B, C_out, H, W]``. The padding is
    its own step, since torch warns at every ``padding="same"`` conv of an even kernel and odd dilation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_chs, out_chs, kernel_size, dilation=dilation)
        total = dilation * (kernel_size - 1)
        self.same_padding = (total // 2, total - total // 2) * 2  # F.pad's (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.same_padding))


class ConvNeXtStage(nn.Module):
    """An optional downsample (LayerNorm2d, ``stride``×``stride`` conv) then ``depth`` blocks:
    ``Tensor[B, in_chs, H, W] -> Tensor[B, out_chs, H/stride, W/stride]``.

    ``dilation`` (in, out), as timm's: a stage that dilates instead of striding (``stride`` 1, out > in) keeps
    its 2×2 downsample conv, at stride 1 and dilation ``in``, padded as "same" (for an even kernel one pixel
    more after than before, as timm's), and its blocks' depthwise convs are dilated by ``out``."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        stride: int = 2,
        drop_path_rates: Sequence[float] = (),
        ls_init_value: float | None = 1e-6,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        dilation: tuple[int, int] = (1, 1),
    ):
        super().__init__()
        if dilation[0] != dilation[1]:
            conv: nn.Conv2d = SamePaddedConv2d(in_chs, out_chs, 2, dilation=dilation[0])
        else:
            conv = nn.Conv2d(in_chs, out_chs, stride, stride=stride)
        if stride > 1 or in_chs != out_chs or dilation[0] != dilation[1]:
            self.downsample: nn.Module = nn.Sequential(LayerNorm2d(in_chs), conv)
        else:
            self.downsample = nn.Identity()
        rates = list(drop_path_rates) or [0.0] * depth
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_chs, mlp_ratio, kernel_size, ls_init_value, rate, dilation[1]) for rate in rates
        ])
        self.grad_checkpointing = False  # timm's per-stage switch (ConvNeXt.set_grad_checkpointing)

    def forward(self, x: Tensor) -> Tensor:
        return run_blocks(self.blocks, self.downsample(x), self.grad_checkpointing)


# The head normalises the pooled features at the trunk's width, so timm's ConvNeXt refuses the pools that
# double it ("catavgmax", "fastcatavgmax"); so do we.
GLOBAL_POOLS = tuple(name for name in ADAPTIVE_POOLS if not name.endswith("catavgmax"))


def _check_global_pool(global_pool: str) -> str:
    if isinstance(global_pool, str) and global_pool.lower().endswith("catavgmax"):
        raise ValueError(f"global_pool={global_pool!r} doubles the pooled width, which ConvNeXt's head norm does "
                         f"not take (nor does timm's): use one of {GLOBAL_POOLS}")
    return check_global_pool(global_pool, GLOBAL_POOLS)


class ConvNeXtHead(nn.Module):
    """Global pool, LayerNorm, dropout, linear: ``Tensor[B, C, H, W] -> Tensor[B, num_classes]``.

    timm's ``NormMlpClassifierHead`` without its optional hidden layer (same keys: ``norm``, ``fc``).
    ``pre_logits=True`` returns the normalised pooled ``Tensor[B, C]``. ``global_pool`` is one of
    :data:`GLOBAL_POOLS` (timm's names: "avg", "max", "avgmax", also with a "fast" prefix) or "" (no
    pooling: each position of the map is normalised, and ``fc`` is a 1×1 conv, so the head gives
    ``Tensor[B, num_classes, H, W]``, or the normalised map without classes, as timm's).
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.in_features = in_features
        self.norm = nn.LayerNorm(in_features, eps=1e-6)
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, global_pool)

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``num_classes``-way ``fc`` (0: identity), optionally with another ``global_pool``."""
        if global_pool is not None:
            self.global_pool = _check_global_pool(global_pool)
        self.fc: nn.Module = nn.Identity()
        if num_classes > 0 and self.global_pool:
            self.fc = nn.Linear(self.in_features, num_classes)
        elif num_classes > 0:
            self.fc = nn.Conv2d(self.in_features, num_classes, 1)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "":
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.norm(global_pool_2d(x, self.global_pool))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def check_images(x: Tensor, in_chans: int, stem_stride: int, min_size: int) -> Tensor:
    """``x``, or ``ValueError`` for images a ConvNeXt trunk cannot take: not ``Tensor[B, in_chans, H, W]``,
    smaller than one ``stem_stride`` patch, or smaller than ``min_size`` (the stride of the last stage
    run: each 2×2 downsample needs a map of at least 2×2)."""
    require_image_batch(x, in_chans)
    height, width = x.shape[-2:]
    if height < stem_stride or width < stem_stride:
        raise ValueError(f"image {height}×{width} is smaller than one {stem_stride}×{stem_stride} stem patch")
    if height < min_size or width < min_size:
        raise ValueError(
            f"image {height}×{width} is too small: this ConvNeXt reduces it {min_size}-fold, "
            f"so it needs at least {min_size}×{min_size}"
        )
    return x


# torch.fx (torchvision's create_feature_extractor) records the check as one call, run on the real input; the
# images flow through it, so that pruning the graph to the wanted maps keeps it
torch.fx.wrap("check_images")


class ConvNeXt(nn.Module):
    """ConvNeXt classifier: ``forward(Tensor[B, in_chans, H, W] float) -> Tensor[B, num_classes]`` logits.

    Args:
        depths, dims: blocks and channels of each stage (four in the paper).
        num_classes: classifier outputs; 0 makes ``head.fc`` an identity (``forward`` gives the
            normalised pooled features ``Tensor[B, num_features]``).
        in_chans: input channels.
        stem_stride: kernel and stride of the patchify stem (4 in the paper; 2 for 32×32 inputs).
            Later stages halve the size, so the stage strides are ``stem_stride · (1, 2, 4, 8)``.
        kernel_size, mlp_ratio, ls_init_value: the blocks' depthwise kernel, MLP width and initial
            layer scale.
        drop_rate: dropout before ``head.fc``.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 over all blocks.
        head_init_scale: scale of the initial classifier weights (timm's option).
        global_pool: timm's names: "avg", "max", "avgmax" (their mean), the same with a "fast" prefix
            ("fast": "avg"), or "" (no pooling: ``forward`` gives ``Tensor[B, num_classes, h, w]``
            logits per position, or the normalised map with ``num_classes=0``), see :class:`ConvNeXtHead`.
        output_stride: the network's stride, 32, 16 or 8 (timm's): the stages that would stride past it
            keep their size and dilate instead (see :class:`ConvNeXtStage`), with the same weights.

    Any input of at least ``stem_stride · 2**(stages - 1)`` pixels a side is taken (sizes that are no
    multiple of a stride are floored, as timm does); other inputs raise ``ValueError``.
    """

    @check_argument_types
    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_stride: int = 4,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_init_scale: float = 1.0,
        global_pool: str = "avg",
        output_stride: int = 32,
    ):
        super().__init__()
        check_output_stride(output_stride)
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"depths and dims need one entry per stage, got depths={depths}, dims={dims}")
        if stem_stride < 1:
            raise ValueError(f"stem_stride must be positive, got {stem_stride}")
        check_dropout_rates(drop_rate=drop_rate)
        if kernel_size < 1 or kernel_size % 2 == 0:  # an even kernel's padding shrinks the map: the residual fails
            raise ValueError(f"kernel_size must be odd and positive (the depthwise conv keeps the map's size), "
                             f"got {kernel_size}")
        self.in_chans, self.stem_stride, self.num_classes = in_chans, stem_stride, num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], stem_stride, stride=stem_stride), LayerNorm2d(dims[0]))
        rates = drop_path_rates(drop_path_rate, list(depths))
        stages, infos, in_chs = [], [], dims[0]
        reduction, dilation = stem_stride, 1
        for index, (depth, dim) in enumerate(zip(depths, dims)):
            stride, first_dilation = 1 if index == 0 else 2, dilation
            if reduction >= output_stride and stride > 1:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            stages.append(ConvNeXtStage(in_chs, dim, depth, stride, rates[index], ls_init_value, kernel_size, mlp_ratio,
                                        (first_dilation, dilation)))
            infos.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{index}"))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.feature_info = FeatureInfo(infos)
        self.num_features = in_chs
        self.head = ConvNeXtHead(in_chs, num_classes, drop_rate, global_pool)
        self.default_cfg: dict = {}
        self.apply(_init_weights)
        if isinstance(self.head.fc, nn.Linear | nn.Conv2d):
            with torch.no_grad():
                self.head.fc.weight.mul_(head_init_scale)
                self.head.fc.bias.mul_(head_init_scale)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @property
    def head_hidden_size(self) -> int:
        """The width of the pooled features ``head.fc`` takes (``num_features``: no hidden layer)."""
        return self.num_features

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's optimizer factory (layer-wise learning-rate decay), as timm's: the
        stem, then per stage its downsampling with the block before it and one group per block
        (``coarse``: one per stage); the head last."""
        return dict(
            stem=r"^stem\.",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's
        switch, set on every stage; see :func:`~visionzoo.layers.run_blocks`)."""
        _set_grad_checkpointing(self.stages, enable)

    @keeps_device_and_dtype
    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """Replace ``head.fc`` by a freshly initialised ``num_classes``-way layer (0: identity), optionally
        with another ``global_pool`` (see :class:`ConvNeXtHead`; "" makes ``fc`` a 1×1 conv); ``reset_other``
        also removes the head's norm (an identity: ``fc`` then takes the pooled features as they are), as
        timm's. ``num_classes`` and ``global_pool`` are recorded in the arguments that rebuild the model
        (``model_args``, kept by our checkpoints)."""
        num_classes = whole_number(num_classes, "num_classes", 0)
        if reset_other:
            self.head.norm = nn.Identity()
        self.head.in_features = self.num_features
        self.head.reset(num_classes, global_pool)
        self.num_classes = num_classes
        self.head.fc.apply(_init_weights)
        record_model_args(self, num_classes=num_classes, global_pool=self.head.global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """``Tensor[B, in_chans, H, W] -> Tensor[B, num_features, H/r, W/r]`` with ``r = feature_info.reduction(-1)``,
        the output stride, in channels-last memory."""
        return self.stages(self._stem(x))

    def _stem(self, x: Tensor, last_stage: int = -1) -> Tensor:
        """The stem on images that the stages up to ``last_stage`` (default: all) can take, else ``ValueError``."""
        x = check_images(x, self.in_chans, self.stem_stride, self.feature_info.reduction(last_stage % len(self.stages)))
        return self.stem(x.contiguous(memory_format=torch.channels_last))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The outputs of some stages beside the final features (timm's API of the same name).

        ``indices``: an int n for the last n stages, a sequence of stage indices (negative ones count
        from the end; any order, repeats allowed: each map comes once, in stage order, as timm's), None
        for all. ``norm``: accepted for timm's signature; this ConvNeXt
        normalises in its head, after pooling, so there is no norm to apply (as timm's, whose
        ``norm_pre`` is then an identity). ``stop_early``: run no stage after the last one asked for.
        Intermediates are ``Tensor[B, C_i, H/r_i, W/r_i]`` (NCHW, the only ``output_fmt``, channels-last
        memory). Returns the list, or ``(final features, list)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = len(self.stages)
        take = feature_take_indices(stages, stages if indices is None else indices, name="indices")
        last = max(take)
        x = self._stem(x, last if stop_early else -1)
        intermediates = []
        for index, stage in enumerate(self.stages[:last + 1] if stop_early else self.stages):
            x = stage(x)
            if index in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices``, as timm's; with ``prune_head`` or when stages
        are dropped the head goes too (its norm and ``fc`` become identities and ``global_pool`` "", so
        ``forward`` gives the map). ``prune_norm``: accepted for timm's signature (no norm before the
        head). Returns the stage indices as given (negative ones resolved), as timm's."""
        take = feature_take_indices(len(self.stages), indices, name="indices")
        last = max(take)
        prune_end = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        if prune_end:
            self.num_features = self.feature_info.channels(last)
        if prune_head or prune_end:
            self.reset_classifier(0, "", reset_other=True)
        return list(take)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``Tensor[B, num_features, h, w] -> Tensor[B, num_classes]``, or with ``pre_logits`` the pooled,
        normalised ``Tensor[B, num_features]``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _set_grad_checkpointing(stages: nn.Sequential, enable: bool) -> None:
    for stage in stages:
        stage.grad_checkpointing = enable


def _init_weights(module: nn.Module) -> None:
    # timm's: truncated normal (std 0.02, cut at ±2) for convs and linears, zero biases
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ConvNeXtFeatures(nn.Module):
    """A ConvNeXt trunk returning feature maps: ``forward(Tensor[B, in_chans, H, W]) -> list[Tensor]``.

    ``out_indices`` picks the outputs of ``stages.0..3`` (strides 4, 8, 16, 32; with ``stem_stride=2``
    2, 4, 8, 16). Map ``i`` is ``Tensor[B, feature_info.channels()[i], H/r, W/r]`` (floored) with
    ``r = feature_info.reduction()[i]``, NCHW in shape and channels-last in memory. Modules keep the
    classifier's names; the stages after the last index and the head are left out, as timm does.
    As in timm, an int n picks the last n stages, a negative index counts from the end, and indices in
    another order or repeated give each map once, in stage order (``out_indices`` and ``feature_info.out_indices``
    list those maps, ``feature_info`` every map of the model, as timm's; timm's ``feature_info.out_indices`` keeps the
    order given, which then does not match its maps).
    """

    features_only = True
    output_fmt = "NCHW"  # timm's feature extractors' attribute: the maps' layout

    def __init__(self, model: ConvNeXt, out_indices: int | Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        out_indices = taken_in_order(feature_take_indices(len(model.stages), out_indices))
        self.out_indices = out_indices
        self.in_chans, self.stem_stride = model.in_chans, model.stem_stride
        self.stem = model.stem
        self.stages = nn.Sequential(*list(model.stages)[:max(out_indices) + 1])
        self.feature_info = FeatureInfo(model.feature_info, out_indices)
        self.default_cfg: dict = {}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`ConvNeXt.set_grad_checkpointing`."""
        _set_grad_checkpointing(self.stages, enable)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = check_images(x, self.in_chans, self.stem_stride, self.feature_info.reduction()[-1])
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        maps = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.out_indices:
                maps.append(x)
        return maps


def _official_key(key: str) -> str:
    """A facebookresearch/ConvNeXt key in timm's layout."""
    key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
    key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
    key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
    key = key.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
    key = re.sub(r"^norm\.", "head.norm.", key)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


def checkpoint_filter(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Convert a foreign ConvNeXt state dict (``name -> Tensor``) to our keys and shapes.

    - the official layout (facebookresearch/ConvNeXt: ``downsample_layers.N``, ``stages.N.M.{dwconv,
      norm, pwconv1, pwconv2, gamma}``, ``norm``, ``head``) is renamed to timm's;
    - timm's feature-extractor keys (``stem_0``, ``stages_1``) get their dots back;
    - 1×1-conv MLP weights ``Tensor[O, I, 1, 1]`` (timm's atto ... nano) become linear ``Tensor[O, I]``;
    - for a feature extractor, the weights of the stages it leaves out are dropped.
    """
    if any(key.startswith("downsample_layers.") for key in state_dict):
        state_dict = {_official_key(key): value for key, value in state_dict.items()}
    state_dict = {re.sub(r"^(stem|stages)_(\d+)\.", r"\1.\2.", key): value for key, value in state_dict.items()}
    own = model.state_dict()
    kept_stages = len(model.stages)
    out = {}
    for key, value in state_dict.items():
        stage = re.match(r"stages\.(\d+)\.", key)
        if getattr(model, "features_only", False) and stage and int(stage.group(1)) >= kept_stages:
            continue
        if key in own and value.ndim == 4 and own[key].ndim == 2 and value.shape[2:] == (1, 1):
            value = value.reshape(value.shape[:2])
        out[key] = value
    return out


_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


def _create(
    size: str, *, features_only: bool = False, out_indices: int | Sequence[int] = (0, 1, 2, 3), **kwargs
) -> ConvNeXt | ConvNeXtFeatures:
    depths, dims = _SIZES[size]
    model = ConvNeXt(**{"depths": depths, "dims": dims, **kwargs})  # given sizes override the name's, as timm's
    return ConvNeXtFeatures(model, out_indices) if features_only else model


def _timm(tag: str) -> Pretrained:
    return Pretrained(hf_hub_id=f"timm/{tag}")


def _cfg(size: int = 224, crop_pct: float = 0.875, stride: int = 32, test_crop_pct: float | None = None) -> dict:
    """The registry entry's settings; ``test_crop_pct``: the weights are evaluated at 288×288 with that crop (timm's
    ``test_input_size``/``test_crop_pct``, read by ``timm.data.resolve_data_config(use_test_size=True)``)."""
    # ls_init_value=None builds blocks without layer scale, so create_model passes that None on (timm's
    # create_model drops it and keeps the 1e-6 layer scale)
    test = {} if test_crop_pct is None else dict(test_input_size=(3, 288, 288), test_crop_pct=test_crop_pct)
    return dict(
        checkpoint_filter=checkpoint_filter, first_conv="stem.0", classifier="head.fc", none_args=("ls_init_value",),
        input_size=(3, size, size), pool_size=(size // stride, size // stride), crop_pct=crop_pct,
        interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, **test,
    )


@register_model(pretrained=_timm("convnext_atto.d2_in1k"), **_cfg(test_crop_pct=0.95))
def convnext_atto(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Atto (timm): depths (2, 2, 6, 2), dims 40..320, 3.7 M parameters."""
    return _create("convnext_atto", **kwargs)


@register_model(pretrained=_timm("convnext_femto.d1_in1k"), **_cfg(test_crop_pct=0.95))
def convnext_femto(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Femto (timm): depths (2, 2, 6, 2), dims 48..384, 5.2 M parameters."""
    return _create("convnext_femto", **kwargs)


@register_model(pretrained=_timm("convnext_pico.d1_in1k"), **_cfg(test_crop_pct=0.95))
def convnext_pico(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Pico (timm): depths (2, 2, 6, 2), dims 64..512, 9.0 M parameters."""
    return _create("convnext_pico", **kwargs)


@register_model(pretrained=_timm("convnext_nano.d1h_in1k"), **_cfg(crop_pct=0.95, test_crop_pct=1.0))
def convnext_nano(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Nano (timm): depths (2, 2, 8, 2), dims 80..640, 15.6 M parameters."""
    return _create("convnext_nano", **kwargs)


@register_model(pretrained=_timm("convnext_tiny.fb_in1k"), **_cfg(test_crop_pct=1.0))
def convnext_tiny(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-T: depths (3, 3, 9, 3), dims 96..768, 28.6 M parameters."""
    return _create("convnext_tiny", **kwargs)


@register_model(pretrained=_timm("convnext_small.fb_in1k"), **_cfg(test_crop_pct=1.0))
def convnext_small(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-S: depths (3, 3, 27, 3), dims 96..768, 50.2 M parameters."""
    return _create("convnext_small", **kwargs)


@register_model(pretrained=_timm("convnext_base.fb_in1k"), **_cfg(test_crop_pct=1.0))
def convnext_base(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-B: depths (3, 3, 27, 3), dims 128..1024, 88.6 M parameters."""
    return _create("convnext_base", **kwargs)


@register_model(pretrained=_timm("convnext_large.fb_in1k"), **_cfg(test_crop_pct=1.0))
def convnext_large(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-L: depths (3, 3, 27, 3), dims 192..1536, 197.8 M parameters."""
    return _create("convnext_large", **kwargs)


@register_model(**_cfg(size=32, crop_pct=1.0, stride=16))
def convnext_atto_32(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Atto for 32×32 inputs (Digits): a 2×2 stride-2 stem, so maps of 16, 8, 4, 2 pixels."""
    return _create("convnext_atto", **{"stem_stride": 2, **kwargs})


@register_model(**_cfg(size=64, crop_pct=1.0))
def convnext_atto_64(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Atto for 64×64 inputs (Shapes): the 4×4 stem, so maps of 16, 8, 4, 2 pixels."""
    return _create("convnext_atto", **kwargs)


@register_model(**_cfg(size=64, crop_pct=1.0))
def convnext_femto_64(**kwargs) -> ConvNeXt | ConvNeXtFeatures:
    """ConvNeXt-Femto for 64×64 inputs (Shapes): the 4×4 stem, so maps of 16, 8, 4, 2 pixels."""
    return _create("convnext_femto", **kwargs)
