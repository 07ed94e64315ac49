"""VQGAN (Esser, Rombach, Ommer 2021, "Taming Transformers"): the first stage, a VQ autoencoder trained with a GAN.

The encoder is taming-transformers' CNN: a 3×3 stem, then per level ``num_res_blocks`` residual blocks
(GroupNorm, swish, 3×3 conv, twice) and a stride-2 3×3 convolution between levels; at the lowest
resolution a residual block, a single-head self-attention block over the h·w positions and another
residual block; GroupNorm, swish and a 3×3 conv to ``z_channels``, and a 1×1 conv to the code
dimension. The shared :class:`~visionzoo.layers.vector_quantizer.VectorQuantizer` replaces every
position by its nearest code; the decoder mirrors the encoder (``num_res_blocks + 1`` blocks per
level, nearest-neighbour upsampling followed by a 3×3 conv). Images are in [0, 1]; the network sees
them in [-1, 1] and reconstructs in [0, 1] (a tanh, rescaled, as in :mod:`~visionzoo.generative.vqvae`).

The model owns its PatchGAN discriminator (``self.discriminator``, fed images in [-1, 1]) as taming's
model owns its loss module, so one checkpoint holds both; the model's forward never calls it. How
the two are trained (L1/L2 + perceptual + adaptive-weight hinge GAN) is the "vqgan" task's business
(:mod:`visionzoo.train.vqgan`).

``model(images)`` returns ``(reconstruction, indices, vq_loss, stats)``; ``encode(images)`` the code
indices Tensor[B, H/f, W/f] (f = 2**(len(ch_mult) - 1)) and ``decode(indices)`` the images, for a prior.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.checkpoint import CheckpointError
from visionzoo.generative.patchgan import PatchGAN
from visionzoo.layers.attention import scaled_dot_product_attention
from visionzoo.layers.norm import GroupNorm
from visionzoo.layers.vector_quantizer import QUANTIZER_NONE_ARGS, VectorQuantizer
from visionzoo.models._registry import Pretrained, register_model
from visionzoo.utils import check_argument_types, check_unit_range, inference_layout


def group_norm(channels: int) -> GroupNorm:
    """taming's GroupNorm(32, C, eps=1e-6), with fewer groups for narrow (test-sized) layers."""
    return GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """``shortcut(x) + conv(swish(norm(conv(swish(norm(x))))))``: Tensor[B, C_in, H, W] → Tensor[B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, added back: Tensor[B, C, H, W] → same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each [B, HW, C]
        out = scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv, padded right and bottom only as in taming: Tensor[B, C, H, W] → Tensor[B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv: Tensor[B, C, H, W] → Tensor[B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(channels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                         ResnetBlock(channels, channels, dropout))


class Encoder(nn.Module):
    """Tensor[B, in_chans, H, W] → Tensor[B, z_channels, H / 2**(L-1), W / 2**(L-1)], L = len(ch_mult).
    ``attn_levels``: the levels (0: full resolution) with an attention block after each residual block (taming's
    ``attn_resolutions``)."""

    def __init__(self, in_chans: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, attn_levels: frozenset[int] = frozenset()):
        super().__init__()
        self.conv_in = nn.Conv2d(in_chans, ch, 3, padding=1)
        layers: list[nn.Module] = []
        width = ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
                if level in attn_levels:
                    layers.append(AttnBlock(width))
            if level < len(ch_mult) - 1:
                layers.append(Downsample(width))
        self.down = nn.Sequential(*layers)
        self.mid = _middle(width, dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Tensor[B, z_channels, h, w] → Tensor[B, out_chans, h * 2**(L-1), w * 2**(L-1)] (pre-activation);
    ``attn_levels`` as the encoder's."""

    def __init__(self, out_chans: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, attn_levels: frozenset[int] = frozenset()):
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _middle(width, dropout)
        layers: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResnetBlock(width, ch * ch_mult[level], dropout))
                width = ch * ch_mult[level]
                if level in attn_levels:
                    layers.append(AttnBlock(width))
            if level > 0:
                layers.append(Upsample(width))
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_chans, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


OUT_ACTIVATIONS = ("tanh", "clamp")


def network_input(images: Tensor) -> Tensor:
    """Images in [0, 1] → the encoder's input in [-1, 1]; without autograd in the channels-last layout, which every
    convolution and norm then keeps (the decoder's codes come out of the quantizer in it too): 1.2× the fp32
    and 2.7× the bf16 speed of the contiguous layout for a 256 px f16 model on an AMX CPU
    (benchmarks/vqgan_taming.py). Training keeps the contiguous layout (see :class:`~visionzoo.layers.norm.GroupNorm`)."""
    return inference_layout(images * 2 - 1, in_fp32=True)


def attention_levels(attn_resolutions: Sequence[int], resolution: int | None, levels: int) -> frozenset[int]:
    """The levels (0: full resolution, ``levels`` in all) whose map side at ``resolution`` is one of
    ``attn_resolutions``: taming's ``ddconfig`` placement of attention blocks."""
    if not attn_resolutions:
        return frozenset()
    if resolution is None:
        raise ValueError(f"attn_resolutions {tuple(attn_resolutions)} needs the resolution they refer to "
                         "(taming's ddconfig 'resolution', e.g. resolution=256)")
    sides = [resolution // 2 ** level for level in range(levels)]
    chosen = frozenset(level for level, side in enumerate(sides) if side in attn_resolutions)
    unmatched = sorted(set(attn_resolutions) - set(sides))
    if unmatched:  # taming would build no attention there, silently
        raise ValueError(f"attn_resolutions {unmatched} are no level's map side at resolution {resolution} "
                         f"(the sides are {sides})")
    return chosen


class VQGAN(nn.Module):
    """VQGAN autoencoder (with its discriminator) for images in [0, 1].

    Args:
        in_chans: image channels (1 for Digits, 3 for Shapes).
        ch, ch_mult: base width and its multiplier per level; ``len(ch_mult) - 1`` stride-2 stages.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        z_channels: channels of the encoder's output before the 1×1 conv to ``embed_dim``.
        embed_dim, num_codes: code dimension and codebook size.
        dropout: inside the residual blocks.
        commitment, ema_decay, dead_code_threshold, dead_code_restart, kmeans_init: the quantizer's (EMA codebook by
            default).
        code_dim, l2_normalize: ViT-VQGAN's factorised, l2-normalised lookup (None, False: taming's plain codes).
        disc_width, disc_layers: the PatchGAN's first width and number of stride-2 layers.
        attn_resolutions, resolution: taming's placement of attention blocks inside the levels: after every
            residual block of each level whose map side, for ``resolution``-pixel images, is listed (the
            lowest resolution always has its middle attention block). Any image size runs; the sides name levels.
        out_act: how the decoder's output becomes an image in [0, 1]: ``"tanh"`` (ours: ``(tanh(x) + 1) / 2``)
            or ``"clamp"`` (taming's decoder has no output activation and its images are clamped to [-1, 1]:
            ``clamp((x + 1) / 2, 0, 1)``, with no gradient at clamped pixels).
    """

    @check_argument_types
    def __init__(self, in_chans: int = 3, ch: int = 64, ch_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                 z_channels: int = 64, embed_dim: int = 64, num_codes: int = 512, dropout: float = 0.0,
                 commitment: float = 0.25, ema_decay: float | None = 0.99, dead_code_threshold: float = 1.0,
                 code_dim: int | None = None, l2_normalize: bool = False, disc_width: int = 64, disc_layers: int = 2,
                 dead_code_restart: str = "random", attn_resolutions: Sequence[int] = (),
                 resolution: int | None = None, out_act: str = "tanh", kmeans_init: bool = False):
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be at least 1, got {in_chans}")
        if len(ch_mult) < 2:
            raise ValueError(f"ch_mult needs at least 2 levels (one downsampling), got {tuple(ch_mult)}")
        if out_act not in OUT_ACTIVATIONS:
            raise ValueError(f"out_act must be one of {OUT_ACTIVATIONS}, got {out_act!r}")
        self.in_chans = in_chans
        self.downsample = len(ch_mult) - 1
        self.out_act = out_act
        attn_levels = attention_levels(attn_resolutions, resolution, len(ch_mult))
        self.encoder = Encoder(in_chans, ch, ch_mult, num_res_blocks, z_channels, dropout, attn_levels)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.quantizer = VectorQuantizer(num_codes, embed_dim, commitment, ema_decay, dead_code_threshold, code_dim,
                                         l2_normalize, dead_code_restart=dead_code_restart,
                                         kmeans_init=kmeans_init)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.decoder = Decoder(in_chans, ch, ch_mult, num_res_blocks, z_channels, dropout, attn_levels)
        self.discriminator = PatchGAN(in_chans, disc_width, disc_layers)

    def _check(self, images: Tensor) -> None:
        factor = 2 ** self.downsample
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"VQGAN takes Tensor[B, {self.in_chans}, H, W] images in [0, 1], got {tuple(images.shape)}")
        check_unit_range(images, "VQGAN")  # else 0..255 or taming's [-1, 1] images are encoded as other images
        if images.shape[-1] % factor or images.shape[-2] % factor:
            raise ValueError(f"image sides must be multiples of {factor} (2**(len(ch_mult) - 1)), "
                             f"got {tuple(images.shape[-2:])}")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Tensor[B, C, H, W] in [0, 1] → (reconstruction in [0, 1], indices [B, h, w], vq loss, stats)."""
        self._check(images)
        quantised, indices, loss, stats = self.quantizer(self.quant_conv(self.encoder(network_input(images))))
        return self._decode(quantised), indices, loss, stats

    def encode(self, images: Tensor) -> Tensor:
        """Code indices, int64 Tensor[B, H / 2**downsample, W / 2**downsample]."""
        self._check(images)
        return self.quantizer.encode(self.quant_conv(self.encoder(network_input(images))))

    def decode(self, indices: Tensor) -> Tensor:
        """Images in [0, 1], Tensor[B, C, h * 2**downsample, w * 2**downsample], from code indices Tensor[B, h, w]."""
        if indices.dim() != 3:
            raise ValueError(f"decode takes code indices Tensor[B, h, w], got {tuple(indices.shape)}")
        return self._decode(self.quantizer.decode_indices(indices).permute(0, 3, 1, 2))

    def _decode(self, quantised: Tensor) -> Tensor:
        out = self.decoder(self.post_quant_conv(quantised))
        if self.out_act == "clamp":
            return ((out + 1) / 2).clamp(0, 1)
        return (torch.tanh(out) + 1) / 2

    def last_layer_weight(self) -> nn.Parameter:
        """The decoder's last conv weight, whose gradient norms set the GAN loss's adaptive weight."""
        return self.decoder.conv_out.weight


# ---------------------------------------------------------------------------- taming-transformers' files
# Module renames inside a block: our name → taming's (and the attention's one qkv conv is its q, k and v convs).
_TAMING_RENAMES = {"shortcut": "nin_shortcut", "proj": "proj_out"}


# What every taming VQModel is beside its sizes: a codebook learnt by gradient (so no dead-code restarts) and a decoder
# without output activation, its images clamped.
TAMING_VQMODEL = {"ema_decay": None, "dead_code_threshold": 0.0, "out_act": "clamp"}
# taming's ddconfig keys → our VQGAN arguments (double_z, out_ch and in_channels are checked, not passed)
_TAMING_DDCONFIG = {"ch": "ch", "ch_mult": "ch_mult", "num_res_blocks": "num_res_blocks", "z_channels": "z_channels",
                    "attn_resolutions": "attn_resolutions", "resolution": "resolution", "dropout": "dropout"}


def taming_vqgan_args(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Our :class:`VQGAN` arguments for a taming-transformers VQModel config: its ``model.yaml`` (a path, read with
    PyYAML), the loaded mapping, or its ``model.params``. ``create_model("vqgan", checkpoint=CKPT,
    **taming_vqgan_args(YAML))`` then gives taming's model with its file's weights.

    Raises:
        ValueError: a config that is not a VQModel's (Gumbel or EMA quantizers, a KL autoencoder's ``double_z``),
            or lacks a key, naming it.
    """
    source = f"taming config {config}" if isinstance(config, (str, os.PathLike)) else "the taming config"
    if isinstance(config, (str, os.PathLike)):
        import yaml

        with open(config) as handle:
            config = yaml.safe_load(handle)
    if not isinstance(config, Mapping):
        raise ValueError(f"{source} is no mapping of settings")
    model = config.get("model", config)
    target = model.get("target", "taming.models.vqgan.VQModel") if isinstance(model, Mapping) else None
    if target != "taming.models.vqgan.VQModel":
        raise ValueError(f"{source}: model.target {target!r} is not taming.models.vqgan.VQModel (Gumbel and EMA "
                         "quantizers, and other models, do not load into this VQGAN)")
    params = model.get("params", model)
    ddconfig = params.get("ddconfig")
    missing = [key for key in ("embed_dim", "n_embed") if key not in params]
    missing += [f"ddconfig.{key}" for key in (*_TAMING_DDCONFIG, "in_channels") if not isinstance(ddconfig, Mapping)
                or key not in ddconfig]
    if missing:
        raise ValueError(f"{source} lacks {', '.join(missing)}")
    if ddconfig.get("double_z"):
        raise ValueError(f"{source}: ddconfig.double_z is true, a KL autoencoder's encoder, not a VQGAN's")
    if ddconfig.get("out_ch", ddconfig["in_channels"]) != ddconfig["in_channels"]:
        raise ValueError(f"{source}: ddconfig.out_ch {ddconfig['out_ch']} differs from in_channels "
                         f"{ddconfig['in_channels']}; this VQGAN reconstructs its input's channels")
    args = {ours: ddconfig[theirs] for theirs, ours in _TAMING_DDCONFIG.items()}
    args["ch_mult"], args["attn_resolutions"] = tuple(args["ch_mult"]), tuple(args["attn_resolutions"])
    return {**args, "in_chans": ddconfig["in_channels"], "embed_dim": params["embed_dim"],
            "num_codes": params["n_embed"], **TAMING_VQMODEL}


def is_taming_state(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` is in taming-transformers' VQModel layout (``encoder.down.0.block.0.…``,
    ``quantize.embedding.weight``) rather than ours."""
    return "quantize.embedding.weight" in state or any(key.startswith("encoder.down.0.block.") for key in state)


def _taming_prefixes(model: VQGAN) -> dict[str, str]:
    """Our module path → taming's, for the encoder's and decoder's residual, attention and resampling blocks."""
    prefixes = {}
    for part, sequence, level, step in (("encoder.down", model.encoder.down, 0, 1),
                                        ("decoder.up", model.decoder.up, model.downsample, -1)):
        counts = {"block": 0, "attn": 0}
        for index, layer in enumerate(sequence):
            if isinstance(layer, (Downsample, Upsample)):
                prefixes[f"{part}.{index}"] = f"{part}.{level}.{'downsample' if step > 0 else 'upsample'}"
                level, counts = level + step, {"block": 0, "attn": 0}
                continue
            kind = "attn" if isinstance(layer, AttnBlock) else "block"
            prefixes[f"{part}.{index}"] = f"{part}.{level}.{kind}.{counts[kind]}"
            counts[kind] += 1
    for part in ("encoder", "decoder"):
        prefixes.update({f"{part}.mid.0": f"{part}.mid.block_1", f"{part}.mid.1": f"{part}.mid.attn_1",
                         f"{part}.mid.2": f"{part}.mid.block_2"})
    return prefixes


def _taming_key(key: str, prefixes: Mapping[str, str]) -> str:
    """The taming name of our state key ``key`` (the same name where both agree)."""
    module, _, leaf = key.rpartition(".")
    for ours, theirs in prefixes.items():
        if module == ours or module.startswith(ours + "."):
            rest = module[len(ours):].lstrip(".").split(".") if module != ours else []
            module = ".".join([theirs, *(_TAMING_RENAMES.get(part, part) for part in rest if part)])
            break
    return f"{module}.{leaf}" if module else leaf


def checkpoint_filter(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Our own files pass unchanged; a taming-transformers VQModel state dict (a ``.ckpt``'s ``state_dict``,
    e.g. the official ``vqgan_imagenet_f16_16384``) is converted to ours for ``model``, a :class:`VQGAN` of the
    same sizes: blocks renamed, each attention block's q, k, v convs stacked into one, ``quantize.embedding.weight``
    as the codebook (with an EMA codebook, its averages start from it). Taming's ``loss.*`` (its LPIPS and its
    BatchNorm PatchGAN, not ours) is not loaded: the discriminator keeps ``model``'s weights. Keys that fit
    nowhere are passed on for the strict load to report.

    Raises:
        CheckpointError: taming's Gumbel quantizer or index remapping, which this VQGAN does not have.
    """
    if not is_taming_state(state) or not isinstance(model, VQGAN):
        return state
    if "quantize.used" in state:
        raise CheckpointError("a taming-transformers VQGAN with remapped indices (the quantizer's 'remap' file, "
                              "key quantize.used) is not supported; its codes would not be the file's indices")
    if "quantize.embed.weight" in state or "quantize.proj.weight" in state:
        raise CheckpointError("a taming-transformers Gumbel VQGAN (GumbelQuantize: keys quantize.proj, "
                              "quantize.embed) is not supported; only VectorQuantizer files load")
    theirs = {key: value for key, value in state.items() if not key.startswith("loss.")}
    prefixes = _taming_prefixes(model)
    own = model.state_dict()
    converted: dict[str, Tensor] = {}
    for key, value in own.items():
        if key.startswith("discriminator."):
            converted[key] = value
        elif key.startswith("quantizer."):
            continue
        elif key.endswith(".qkv.weight") or key.endswith(".qkv.bias"):
            module, leaf = _taming_key(key, prefixes).rsplit(".", 2)[0], key.rpartition(".")[2]
            parts = [f"{module}.{name}.{leaf}" for name in ("q", "k", "v")]
            if all(part in theirs for part in parts):
                converted[key] = torch.cat([theirs.pop(part) for part in parts])
        elif (name := _taming_key(key, prefixes)) in theirs:
            converted[key] = theirs.pop(name)
    if "quantize.embedding.weight" in theirs:
        codebook = theirs.pop("quantize.embedding.weight")
        converted["quantizer.codebook"] = codebook
        if "quantizer.ema_sum" in own:  # an EMA codebook: averages of one vector per code
            converted["quantizer.ema_count"] = torch.ones_like(own["quantizer.ema_count"])
            converted["quantizer.ema_sum"] = codebook.clone()
    converted.update(theirs)  # what fitted nowhere: reported as unexpected
    return converted


# Variants are sizes only. The full-resolution level dominates the cost on a CPU, hence width 32 there.
_SIZES = {
    "vqgan": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, disc_layers=2),
    "vqgan_base": dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, disc_layers=2),
    "vqgan_f8": dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, disc_width=32, disc_layers=3),
}
# vqgan_f8 trains with ViT-VQGAN's lighter loss weights: on Shapes in 3 minutes taming's perceptual 1.0 and
# adversarial 0.8 cost 0.8 dB of PSNR (benchmarks/generative.py; our baseline perceptual distance, the default, is
# larger than LPIPS's).
F8_TASK_OPTIONS = {"perceptual_weight": 0.1, "disc_weight": 0.1}
# and a peak learning rate of 2e-3 instead of the task's 4e-4: on Shapes +1.0 dB at 3 minutes, +0.25 dB at 10
# (21.81 against 21.56 dB, discriminator from step 800); 4e-3 fell to 18.3 dB at 3 minutes.
F8_TRAIN_DEFAULTS = {"lr": 2e-3}


_CFG = dict(task="vqgan", none_args=QUANTIZER_NONE_ARGS, checkpoint_filter=checkpoint_filter)


@register_model(**_CFG, input_size=(3, 32, 32))
def vqgan(**kwargs) -> VQGAN:
    """VQGAN for CPU training: a 4× smaller code grid (8×8 for 32 px), widths 32–64, 512 EMA codes of 64 dimensions."""
    return VQGAN(**{**_SIZES["vqgan"], **kwargs})


@register_model(**_CFG, input_size=(3, 32, 32))
def vqgan_base(**kwargs) -> VQGAN:
    """A wider, deeper 4× VQGAN: widths 64–128, two residual blocks per encoder level (about 3× the compute)."""
    return VQGAN(**{**_SIZES["vqgan_base"], **kwargs})


@register_model(**_CFG, input_size=(3, 64, 64), task_options=F8_TASK_OPTIONS,
                train_defaults=F8_TRAIN_DEFAULTS)
def vqgan_f8(**kwargs) -> VQGAN:
    """VQGAN with an 8× smaller code grid (8×8 for 64 px Shapes), widths 32–64, a 3-layer PatchGAN 32 wide."""
    return VQGAN(**{**_SIZES["vqgan_f8"], **kwargs})


# taming-transformers' ImageNet VQGANs (configs/model.yaml of each): 256 px, 16× smaller code grid, attention at the
# 16-px level, codes learnt by gradient, no output activation. Their discriminator is a BatchNorm PatchGAN, which ours
# (GroupNorm, 3 layers, 64 wide, the same depth and width) replaces; it is not in what loads.
_TAMING_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                   z_channels=256, embed_dim=256, dropout=0.0, **TAMING_VQMODEL, disc_width=64, disc_layers=3)
_HEIBOX = "https://heibox.uni-heidelberg.de/d/{}/files/?p=%2Fckpts%2Flast.ckpt&dl=1"


def _taming_weights(share: str, name: str) -> Pretrained:
    return Pretrained(url=_HEIBOX.format(share), cache_name=f"{name}.ckpt")


@register_model(**_CFG, input_size=(3, 256, 256),
                pretrained=_taming_weights("8088892a516d4e3baf92", "vqgan_imagenet_f16_1024"))
def vqgan_imagenet_f16_1024(**kwargs) -> VQGAN:
    """taming-transformers' ImageNet VQGAN, f=16 with 1,024 codes (``pretrained=True``: their ``last.ckpt``)."""
    return VQGAN(**{**_TAMING_F16, "num_codes": 1024, **kwargs})


@register_model(**_CFG, input_size=(3, 256, 256),
                pretrained=_taming_weights("a7530b09fed84f80a887", "vqgan_imagenet_f16_16384"))
def vqgan_imagenet_f16_16384(**kwargs) -> VQGAN:
    """taming-transformers' ImageNet VQGAN, f=16 with 16,384 codes (``pretrained=True``: their ``last.ckpt``)."""
    return VQGAN(**{**_TAMING_F16, "num_codes": 16384, **kwargs})
