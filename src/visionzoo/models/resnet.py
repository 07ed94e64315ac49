"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition") in torchvision's layout.

Module names are torchvision's: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``, and
in each block ``conv1/bn1/conv2/bn2[/conv3/bn3]`` plus ``downsample.0`` (1×1 conv) and
``downsample.1`` (batch norm). torchvision's and timm's ResNet state dicts therefore load key for
key. A bottleneck block strides in its 3×3 conv ("ResNet v1.5"), as both libraries do.

The four sizes are data (``_SIZES``); each registered builder only names one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.layers.classifier import (
    ADAPTIVE_POOLS,
    check_global_pool,
    global_pool_2d,
    keeps_device_and_dtype,
    pooled_width,
)
from visionzoo.layers.drop import DropPath, check_dropout_rates, drop_path_rates
from visionzoo.layers.features import FeatureInfo, check_output_stride, feature_take_indices, taken_in_order
from visionzoo.layers.grad_checkpoint import run_blocks
from visionzoo.models._registry import Pretrained, record_model_args, register_model
from visionzoo.utils import check_argument_types, inference_layout, require_image_batch, whole_number


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual: ``Tensor[B, C_in, H, W] -> Tensor[B, planes, H/s, W/s]``; ``drop_path``:
    the stochastic-depth probability of the residual branch in training (timm's); ``dilation``: of the second
    conv, ``first_dilation`` (default ``dilation``) of the first, as timm's for a dilated stage."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path: float = 0.0, dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=first_dilation, dilation=first_dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None  # as timm's: no module without it

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += shortcut  # in place, as torchvision: the sum is never needed for the backward pass
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a residual:
    ``Tensor[B, C_in, H, W] -> Tensor[B, 4·planes, H/s, W/s]``; ``drop_path`` as :class:`BasicBlock`'s;
    ``first_dilation`` (default ``dilation``) of the 3×3 conv, as timm's (``dilation`` is that of the stage's
    other blocks)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path: float = 0.0, dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        first_dilation = first_dilation or dilation
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=first_dilation, dilation=first_dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.drop_path is not None:
            out = self.drop_path(out)
        out += shortcut  # in place, as torchvision: the sum is never needed for the backward pass
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]

_SIZES: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}

_STAGE_PLANES = (64, 128, 256, 512)


def _make_stage(block: Block, in_chs: int, planes: int, stride: int, drop_paths: Sequence[float],
                dilation: int = 1, first_dilation: int = 1) -> nn.Sequential:
    """A stage of ``len(drop_paths)`` blocks, block i with the stochastic depth ``drop_paths[i]``; a dilated stage
    (``dilation`` > 1, stride 1) starts at the previous stage's ``first_dilation``, as timm's."""
    out_chs = planes * block.expansion
    downsample = None
    if stride != 1 or in_chs != out_chs:
        downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))
    blocks = [block(in_chs, planes, stride, downsample, drop_paths[0], dilation, first_dilation)]
    blocks += [block(out_chs, planes, drop_path=rate, dilation=dilation) for rate in drop_paths[1:]]
    return nn.Sequential(*blocks)


def _check_global_pool(global_pool: str, num_classes: int) -> str:
    """timm's pool names (:data:`~visionzoo.layers.classifier.ADAPTIVE_POOLS`), lower-cased; "" (no pooling)
    only without a classifier: timm builds that model but its ``fc`` fails on the map at the first forward."""
    global_pool = check_global_pool(global_pool, ADAPTIVE_POOLS)
    if global_pool == "" and num_classes > 0:
        raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
    return global_pool


class ResNet(nn.Module):
    """ResNet classifier: ``forward(Tensor[B, in_chans, H, W] float) -> Tensor[B, num_classes]`` logits.

    Args:
        block, layers: the block type and the number of blocks in each of the four stages.
        num_classes: classifier outputs; 0 makes ``fc`` an identity (``forward`` gives pooled
            features ``Tensor[B, num_features]``).
        in_chans: input channels.
        zero_init_residual: start every block's last batch norm (BasicBlock ``bn2``, Bottleneck ``bn3``) at
            zero, so each block begins as the identity (Goyal et al. 2017). Off by default, as in torchvision,
            whose weights and preprocessing the registered names carry; timm's ResNet has it on by default.
            None: not given (off).
        zero_init_last: timm's name for ``zero_init_residual`` (give one of the two, at any value); None: not
            given.
        drop_rate: dropout before ``fc``.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 over all blocks (timm's).
        small_input: a 3×3 stride-1 ``conv1`` and no max-pool, for 32×32 inputs: the network's
            stride is then 8 instead of 32. Module names (and so checkpoint keys) stay the same.
        global_pool: timm's names: "avg" (torchvision's), "max", "avgmax" (their mean), "catavgmax"
            (both side by side: ``fc`` takes ``2·num_features``, ``head_hidden_size``), the same with a
            "fast" prefix ("fast": "avg"), or "" (no pooling, with ``num_classes=0``: ``forward`` gives
            the feature map).
        output_stride: the network's stride, 32, 16 or 8 (timm's): the stages that would stride past it
            keep stride 1 and dilate their 3×3 convs instead (DeepLab's dilated ResNet), so the last maps are
            H/16 or H/8 with the same weights.
    """

    @check_argument_types
    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool | None = None,
        drop_rate: float = 0.0,
        small_input: bool = False,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        output_stride: int = 32,
        zero_init_last: bool | None = None,
    ):
        super().__init__()
        check_output_stride(output_stride)
        if zero_init_residual is not None and zero_init_last is not None:
            raise ValueError("give zero_init_residual or zero_init_last, not both (zero_init_last is timm's "
                             "name for zero_init_residual)")
        zero_init_residual = bool(zero_init_residual or zero_init_last)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNet needs 4 stage depths of at least 1 block, got layers={tuple(layers)}")
        self.global_pool = _check_global_pool(global_pool, num_classes)
        check_dropout_rates(drop_rate=drop_rate)
        self.drop_rate = drop_rate
        self.in_chans = in_chans
        self.grad_checkpointing = False
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        stem_reduction = 1 if small_input else 2
        infos = [dict(num_chs=64, reduction=stem_reduction, module="relu")]
        in_chs, reduction = 64, stem_reduction * (1 if small_input else 2)
        rates = drop_path_rates(drop_path_rate, list(layers))
        dilation = 1
        for index, (planes, stage_rates) in enumerate(zip(_STAGE_PLANES, rates), start=1):
            stride, first_dilation = 1 if index == 1 else 2, dilation
            if reduction >= output_stride:
                dilation, stride = dilation * stride, 1
            reduction *= stride
            setattr(self, f"layer{index}", _make_stage(block, in_chs, planes, stride, stage_rates, dilation,
                                                       first_dilation))
            in_chs = planes * block.expansion
            infos.append(dict(num_chs=in_chs, reduction=reduction, module=f"layer{index}"))
        self.feature_info = FeatureInfo(infos)
        self.num_features = in_chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.default_cfg: dict = {}
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The classifier ``fc``, or with ``name_only`` its name, as timm's."""
        return "fc" if name_only else self.fc

    @property
    def head_hidden_size(self) -> int:
        """The width of the pooled features ``fc`` takes (twice ``num_features`` for "catavgmax")."""
        return pooled_width(self.global_pool, self.num_features)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for timm's optimizer factory (layer-wise learning-rate decay), as timm's: the
        stem (``conv1``, ``bn1``), then one group per block (``coarse``: per stage); ``fc`` last."""
        return dict(stem=r"^(?:conv1|bn1)\.", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's
        switch; see :func:`~visionzoo.layers.run_blocks`). Batch norm in training then updates its
        running statistics twice per step, as in timm."""
        self.grad_checkpointing = enable

    @keeps_device_and_dtype
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace ``fc`` by a freshly initialised ``num_classes``-way head (0: identity), optionally
        with another ``global_pool`` (see :class:`ResNet`; "" only with ``num_classes=0``), as timm's; both are
        recorded in the arguments that rebuild the model (``model_args``, kept by our checkpoints)."""
        num_classes = whole_number(num_classes, "num_classes", 0)
        self.global_pool = _check_global_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        record_model_args(self, num_classes=num_classes, global_pool=self.global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """``Tensor[B, in_chans, H, W] -> Tensor[B, num_features, H/output_stride, W/output_stride]`` (H/8 with small_input).
        Other input ranks or channel counts raise ValueError."""
        x = _check_images(x, self.conv1.in_channels)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = run_blocks(stage, x, self.grad_checkpointing)
        return x

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Some of the five maps (0: the stem after ``relu``, 1-4: ``layer1..layer4``) beside the final
        features (timm's API of the same name).

        ``indices``: an int n for the last n maps, a sequence of map indices (negative ones count from
        the end; any order, repeats allowed: each map comes once, in network order, as timm's), None for
        all five. ``norm``: accepted for timm's signature (a ResNet has no final norm). ``stop_early``:
        run no stage after the last map asked for. Maps are
        ``Tensor[B, C_i, H/r_i, W/r_i]`` (NCHW, the only ``output_fmt``). Returns the list, or
        ``(final features, list)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take = feature_take_indices(5, 5 if indices is None else indices, "map", "indices")
        last = max(take)
        x = _check_images(x, self.conv1.in_channels)
        x = self.relu(self.bn1(self.conv1(x)))
        intermediates = [x] if 0 in take else []
        x = self.maxpool(x)
        stages = self.stages()
        for index, stage in enumerate(stages[:last] if stop_early else stages, start=1):
            x = run_blocks(stage, x, self.grad_checkpointing)
            if index in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last map of ``indices`` (empty ``layerN``), as timm's; with
        ``prune_head`` or when stages are dropped the classifier goes too (``global_pool`` "", ``fc``
        an identity: ``forward`` gives the map). ``prune_norm``: accepted for timm's signature.
        Returns the map indices as given (negative ones resolved), as timm's."""
        take = feature_take_indices(5, indices, "map", "indices")
        last = max(take)
        for index in range(last + 1, 5):
            setattr(self, f"layer{index}", nn.Sequential())
        if last == 0:
            self.maxpool = nn.Identity()
        prune_end = last < 4
        if prune_end:
            self.num_features = self.feature_info.channels(last)
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return list(take)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``Tensor[B, num_features, h, w] -> Tensor[B, num_classes]``, or with ``pre_logits`` the pooled
        ``Tensor[B, head_hidden_size]`` (with ``global_pool=""`` the map itself)."""
        if self.global_pool == "avg":
            x = torch.flatten(self.avgpool(x), 1)
        else:
            x = global_pool_2d(x, self.global_pool)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _check_images(x: Tensor, in_chans: int) -> Tensor:
    """``x``, or ``ValueError`` for input the stem conv cannot take: not ``Tensor[B, in_chans, H, W]``, or a side
    of 0. bf16 inference on a CPU gets it channels-last (:func:`~visionzoo.utils.inference_layout`: 2× torchvision's
    images/s for ResNet-50 under bf16 autocast); fp32 keeps torchvision's layout and numbers, and training its own."""
    require_image_batch(x, in_chans)
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"image {x.shape[-2]}×{x.shape[-1]} has no pixels (input shape {tuple(x.shape)})")
    return inference_layout(x)


# torch.fx (torchvision's create_feature_extractor) records the check as one call, run on the real input; the
# images flow through it, so that pruning the graph to the wanted maps keeps it
torch.fx.wrap("_check_images")


class ResNetFeatures(nn.Module):
    """A ResNet trunk returning feature maps: ``forward(Tensor[B, in_chans, H, W]) -> list[Tensor]``.

    ``out_indices`` (default: all five, as timm's) picks maps from 0 (stem, after ``relu``, stride 2) and 1–4
    (C2–C5, the outputs of ``layer1..layer4``, strides 4, 8, 16, 32; with ``small_input`` 1, 1, 2, 4, 8). Map
    ``i`` is ``Tensor[B, feature_info.channels()[i], H/r, W/r]`` with ``r = feature_info.reduction()[i]``.
    Modules keep the classifier's names; stages after the last index and the head are left out.
    As in timm, an int n picks the last n maps, a negative index counts from the end, and indices in
    another order or repeated give each map once, in network order (``out_indices`` and ``feature_info.out_indices``
    list those maps, ``feature_info`` every map of the model, as timm's; timm's ``feature_info.out_indices`` keeps the
    order given, which then does not match its maps).
    """

    features_only = True
    output_fmt = "NCHW"  # timm's feature extractors' attribute: the maps' layout

    def __init__(self, resnet: ResNet, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4)):
        super().__init__()
        out_indices = taken_in_order(feature_take_indices(len(resnet.feature_info), out_indices, "map"))
        self.out_indices = out_indices
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.num_stages = max(out_indices)
        for index in range(1, self.num_stages + 1):
            setattr(self, f"layer{index}", getattr(resnet, f"layer{index}"))
        self.feature_info = FeatureInfo(resnet.feature_info, out_indices)
        self.default_cfg: dict = {}
        self.grad_checkpointing = resnet.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`ResNet.set_grad_checkpointing`."""
        self.grad_checkpointing = enable

    def forward(self, x: Tensor) -> list[Tensor]:
        x = _check_images(x, self.conv1.in_channels)
        x = self.relu(self.bn1(self.conv1(x)))
        maps = [x] if 0 in self.out_indices else []
        x = self.maxpool(x)
        for index in range(1, self.num_stages + 1):
            x = run_blocks(getattr(self, f"layer{index}"), x, self.grad_checkpointing)
            if index in self.out_indices:
                maps.append(x)
        return maps


def _create(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
    zero_init_residual: bool | None = None,
    drop_rate: float = 0.0,
    small_input: bool = False,
    global_pool: str = "avg",
    layers: Sequence[int] | None = None,
    drop_path_rate: float = 0.0,
    output_stride: int = 32,
    zero_init_last: bool | None = None,
) -> ResNet | ResNetFeatures:
    """Build the size ``name``; ``layers`` (blocks per stage) overrides its depths, as timm's builders take it."""
    block, depths = _SIZES[name]
    model = ResNet(block, depths if layers is None else tuple(layers), num_classes, in_chans, zero_init_residual,
                   drop_rate, small_input, global_pool, drop_path_rate, output_stride, zero_init_last)
    return ResNetFeatures(model, out_indices) if features_only else model


def _torchvision_weights(filename: str) -> Pretrained:
    # torchvision names its files NAME-<first 8 hex digits of the sha256>.pth; timm tags them tv_in1k
    digest = filename.rsplit("-", 1)[1].split(".", 1)[0]
    return Pretrained(url=f"https://download.pytorch.org/models/{filename}", sha256=digest, tag="tv_in1k")


_CFG = dict(
    first_conv="conv1", classifier="fc", input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    pool_size=(7, 7), crop_pct=0.875, interpolation="bilinear", num_classes=1000,
)


@register_model(pretrained=_torchvision_weights("resnet18-f37072fd.pth"), **_CFG)
def resnet18(**kwargs) -> ResNet | ResNetFeatures:
    """ResNet-18: BasicBlock ×(2, 2, 2, 2), 11.7 M parameters, 512 features."""
    return _create("resnet18", **kwargs)


@register_model(pretrained=_torchvision_weights("resnet34-b627a593.pth"), **_CFG)
def resnet34(**kwargs) -> ResNet | ResNetFeatures:
    """ResNet-34: BasicBlock ×(3, 4, 6, 3), 21.8 M parameters, 512 features."""
    return _create("resnet34", **kwargs)


@register_model(pretrained=_torchvision_weights("resnet50-0676ba61.pth"), **_CFG)
def resnet50(**kwargs) -> ResNet | ResNetFeatures:
    """ResNet-50: Bottleneck ×(3, 4, 6, 3), 25.6 M parameters, 2048 features."""
    return _create("resnet50", **kwargs)


@register_model(pretrained=_torchvision_weights("resnet101-63fe2227.pth"), **_CFG)
def resnet101(**kwargs) -> ResNet | ResNetFeatures:
    """ResNet-101: Bottleneck ×(3, 4, 23, 3), 44.5 M parameters, 2048 features."""
    return _create("resnet101", **kwargs)
