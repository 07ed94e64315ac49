"""The second stage of VQGAN (Esser et al. 2021): a GPT over a frozen tokenizer's code indices.

A trained tokenizer (VQ-VAE, VQGAN, ViT-VQGAN: any model with ``encode(images) -> Tensor[B, h, w]``,
``decode(indices) -> images``, ``quantizer.num_codes`` and ``in_chans``) turns an image into an h × w
grid of codes; the transformer models that grid read row by row, usually given the class. Sampling
draws a grid code by code (top-k / top-p) and decodes it.

The tokenizer lives inside the model, frozen and always in eval mode: its weights are part of the
state dict, so one checkpoint holds both stages. A VQGAN tokenizer's discriminator only trains the tokenizer,
so the prior leaves it out (``omitted_weights``): its weights in a tokenizer checkpoint, or in a prior's
checkpoint written before it was left out, are dropped on load. It is described by a JSON record
``{"name": registry name, "args": {...}}`` (what our checkpoints store as ``model``), which makes
``create_model("vqgan_transformer", tokenizer=record, ...)`` rebuild the architecture from a checkpoint.

taming-transformers' second stage (a ``Net2NetTransformer`` ``.ckpt``: its VQGAN under ``first_stage_model.`` and its
minGPT under ``transformer.``) loads into a prior of the same sizes through :func:`checkpoint_filter`, in one call::

    create_model("vqgan_transformer", checkpoint="last.ckpt", tokenizer={"name": "vqgan_imagenet_f16_16384"},
                 img_size=256, num_classes=1000, embed_dim=1536, depth=48, num_heads=24)

(``vqgan_transformer_imagenet_cin`` names those sizes, and ``pretrained=True`` fetches taming's ImageNet file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.checkpoint import CheckpointError
from visionzoo.generative.gpt import GPT, ImageSampler
from visionzoo.models._registry import Pretrained, create_model, get_model_entry, register_model
from visionzoo.utils import check_argument_types


class CodeTransformer(ImageSampler, nn.Module):
    """A GPT prior over the code grid of a frozen tokenizer.

    Args:
        tokenizer: ``{"name": ..., "args": {...}}``, the registry record of the tokenizer (built untrained
            here; the task loads its trained weights).
        img_size: the image side the tokenizer was trained at (it fixes the code grid).
        num_classes: 0 for an unconditional prior, else the number of classes it is conditioned on.
        embed_dim, depth, num_heads, mlp_ratio, drop: the GPT's.
    """

    @check_argument_types
    def __init__(self, tokenizer: Mapping[str, Any] | None = None, img_size: int = 32, num_classes: int = 0,
                 embed_dim: int = 192, depth: int = 6, num_heads: int = 6, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        if not isinstance(tokenizer, Mapping) or not isinstance(tokenizer.get("name"), str):
            raise ValueError("the code prior needs tokenizer={'name': registry name, 'args': {...}} "
                             f"(the model record of a trained tokenizer), got {tokenizer!r}")
        self.tokenizer = create_model(tokenizer["name"], **dict(tokenizer.get("args") or {})).eval()
        if not all(hasattr(self.tokenizer, part) for part in ("encode", "decode", "quantizer")):
            raise ValueError(f"{tokenizer['name']} is not a tokenizer: a code prior needs a model with encode(), "
                             "decode() and a quantizer (vqvae_small, vqgan, vit_vqgan, ...)")
        self.tokenizer.requires_grad_(False)
        if isinstance(getattr(self.tokenizer, "discriminator", None), nn.Module):
            del self.tokenizer.discriminator
            self.tokenizer.omitted_weights = ("discriminator",)
            self.omitted_weights = ("tokenizer.discriminator",)
        self.in_chans = int(self.tokenizer.in_chans)
        self.img_size = img_size
        probe = self.tokenizer
        if any(parameter.is_meta for parameter in probe.parameters()):  # built on the meta device: runs no layer
            with torch.device("cpu"):
                probe = create_model(tokenizer["name"], **dict(tokenizer.get("args") or {})).eval()
        with torch.no_grad():
            grid = probe.encode(torch.zeros(1, self.in_chans, img_size, img_size,
                                            device=next(probe.parameters()).device)).shape[1:]
        self.grid_size = (int(grid[0]), int(grid[1]))
        self.gpt = GPT(self.tokenizer.quantizer.num_codes, self.grid_size[0] * self.grid_size[1], num_classes,
                       embed_dim, depth, num_heads, mlp_ratio, drop)

    def train(self, mode: bool = True) -> CodeTransformer:
        """Train or eval mode for the GPT; the frozen tokenizer stays in eval mode (its codebook must not move)."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def tokens(self, images: Tensor) -> Tensor:
        """The tokenizer's codes in raster order: Tensor[B, C, S, S] in [0, 1] → int64 Tensor[B, h·w].

        The tokenizer always runs in float32, also under the caller's autocast: a code is the nearest of
        many, and bf16 rounding picks another one for a share of the positions (42% for the Shapes ViT-VQGAN
        of benchmarks/generative.py, whose codebook has near-duplicate codes), so a prior trained on bf16
        codes would be scored on other codes than it learnt.
        """
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"this code prior takes Tensor[B, {self.in_chans}, {self.img_size}, {self.img_size}] "
                             f"images, got {tuple(images.shape)}")
        with torch.autocast(images.device.type, enabled=False):
            return self.tokenizer.encode(images.float()).flatten(1)

    @torch.no_grad()
    def images_from_tokens(self, tokens: Tensor) -> Tensor:
        """Decoded images Tensor[B, C, S, S] in [0, 1] from codes int64 Tensor[B, h·w]."""
        height, width = self.grid_size
        if tokens.dim() != 2 or tokens.shape[1] != height * width:
            raise ValueError(f"code tokens must be Tensor[B, {height * width}], got {tuple(tokens.shape)}")
        return self.tokenizer.decode(tokens.reshape(-1, height, width)).clamp(0, 1)

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Next-code logits Tensor[B, N, num_codes] of ``tokens`` Tensor[B, N] (see :meth:`GPT.forward`)."""
        return self.gpt(tokens, labels)


# ---------------------------------------------------------------------------- taming-transformers' files
_FIRST_STAGE, _TRANSFORMER = "first_stage_model.", "transformer."
# minGPT's module names inside a block → ours (its attention's query, key and value are stacked into our qkv)
_TAMING_BLOCK = {"ln1": "norm1", "ln2": "norm2", "attn.proj": "attn.proj", "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
_TAMING_TOP = {"ln_f": "norm", "head": "head"}
# taming's SOSProvider default, which every unconditional config of theirs keeps; the file does not record it
TAMING_SOS_TOKEN = 0


def is_taming_transformer_state(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` is a taming-transformers ``Net2NetTransformer``'s (``transformer.tok_emb.weight``,
    ``first_stage_model.…``) rather than ours."""
    return _TRANSFORMER + "tok_emb.weight" in state or any(key.startswith(_FIRST_STAGE) for key in state)


def taming_gpt_state(theirs: Mapping[str, Tensor], gpt: GPT) -> dict[str, Tensor]:
    """taming's minGPT state dict (the keys after ``transformer.``) as ``gpt``'s.

    The conditioning token is embedded by minGPT's own ``tok_emb`` and prepended to the codes, so the start
    embeddings are rows of that table: for a class-conditional ``gpt`` (``num_classes`` > 0) the rows of the class
    indices (taming's Labelator passes the class as the token), and for its "no class" row, which taming's
    class-conditional models never trained, the mean of those rows; for an unconditional one the row of the
    start-of-sequence token :data:`TAMING_SOS_TOKEN`. ``pos_emb`` [1, block_size, dim] is cut to ``gpt.seq_len``
    positions. Keys that fit nowhere are passed on for the strict load to report.

    Raises:
        CheckpointError: minGPT's embeddings or head missing, a ``block_size`` shorter than the code sequence, more
            classes than the token table has rows, or attention that is not causal (``n_unmasked`` > 0).
    """
    theirs = dict(theirs)
    missing = [f"{_TRANSFORMER}{key}" for key in ("tok_emb.weight", "pos_emb", "head.weight") if key not in theirs]
    if missing:
        raise CheckpointError(f"a taming-transformers transformer needs {', '.join(missing)}, which it lacks")
    tokens = theirs.pop("tok_emb.weight")
    positions = theirs.pop("pos_emb")
    if positions.dim() != 3 or positions.shape[1] < gpt.seq_len:
        raise CheckpointError(f"{_TRANSFORMER}pos_emb {tuple(positions.shape)} holds fewer than the prior's "
                              f"{gpt.seq_len} positions (its block_size is too short for the code grid)")
    if gpt.num_classes > tokens.shape[0]:
        raise CheckpointError(f"{gpt.num_classes} classes need as many rows of {_TRANSFORMER}tok_emb.weight "
                              f"{tuple(tokens.shape)}, which embeds the class as a token")
    if gpt.num_classes:
        classes = tokens[:gpt.num_classes]
        start = torch.cat([classes, classes.mean(0, keepdim=True)])
    else:
        start = tokens[TAMING_SOS_TOKEN:TAMING_SOS_TOKEN + 1]
    converted = {"tok_embed.weight": tokens, "start_embed.weight": start, "pos_embed": positions[:, :gpt.seq_len]}
    for key, value in theirs.items():
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|mask)", key)
        if block is None:
            module, _, leaf = key.rpartition(".")
            converted[f"{_TAMING_TOP.get(module, module)}.{leaf}" if module else key] = value
            continue
        index, module, leaf = block.groups()
        if leaf == "mask":
            if not torch.equal(value.reshape(value.shape[-2:]), torch.ones(value.shape[-2:]).tril().to(value)):
                raise CheckpointError(f"{_TRANSFORMER}{key} is not causal: a transformer with unmasked positions "
                                      "(minGPT's n_unmasked > 0) does not run as this prior")
            continue
        parts = [theirs.get(f"blocks.{index}.attn.{name}.{leaf}") for name in ("query", "key", "value")]
        if module in ("attn.query", "attn.key", "attn.value") and all(part is not None for part in parts):
            if module == "attn.query":
                converted[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat(parts)
            continue
        converted[f"blocks.{index}.{_TAMING_BLOCK.get(module, module)}.{leaf}"] = value
    return converted


def checkpoint_filter(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Our own files pass unchanged; a taming-transformers ``Net2NetTransformer`` state dict (a ``.ckpt``'s
    ``state_dict``: a class-conditional or unconditional transformer over a VQGAN's codes) is converted for
    ``model``, a :class:`CodeTransformer` of the same sizes over a VQGAN tokenizer: the first stage through the
    tokenizer family's checkpoint filter (:func:`visionzoo.generative.vqgan.checkpoint_filter`), minGPT through
    :func:`taming_gpt_state`.

    Raises:
        CheckpointError: a transformer conditioned on images or maps (``cond_stage_model.…`` weights), codes in
            another order (``permuter.…``), a tokenizer that is not a VQGAN, or what :func:`taming_gpt_state` refuses.
    """
    if not isinstance(model, CodeTransformer) or not is_taming_transformer_state(state):
        return state
    foreign = sorted(key for key in state if key.startswith(("cond_stage_model.", "permuter.")))
    if foreign:
        raise CheckpointError(f"a taming-transformers transformer with {foreign[0]} (a conditioning stage with "
                              "weights, or a permuter of the codes) is not supported: only class-conditional and "
                              "unconditional ones over raster-order codes load")
    family = get_model_entry(model.tokenizer.model_name)
    if family.family != "vqgan":
        raise CheckpointError(f"a taming-transformers transformer's first stage ({_FIRST_STAGE}…) is a VQGAN; this "
                              f"prior's tokenizer is {model.tokenizer.model_name} (give a vqgan record, e.g. "
                              "{'name': 'vqgan_imagenet_f16_16384'})")
    first = {key.removeprefix(_FIRST_STAGE): value for key, value in state.items() if key.startswith(_FIRST_STAGE)}
    transformer = {key.removeprefix(_TRANSFORMER): value for key, value in state.items()
                   if key.startswith(_TRANSFORMER)}
    converted = {key: value for key, value in state.items() if not key.startswith((_FIRST_STAGE, _TRANSFORMER))}
    converted.update({f"tokenizer.{key}": value for key, value in family.checkpoint_filter(first, model.tokenizer).items()})
    converted.update({f"gpt.{key}": value for key, value in taming_gpt_state(transformer, model.gpt).items()})
    return converted


@register_model(task="autoregressive", input_size=(3, 64, 64), class_conditional=True,
                checkpoint_filter=checkpoint_filter)
def vqgan_transformer(**kwargs) -> CodeTransformer:
    """VQGAN's class-conditional prior for CPU training: 6 blocks 192 wide, 6 heads, over a tokenizer's codes."""
    return CodeTransformer(**kwargs)


# taming-transformers' class-conditional ImageNet transformer (2021-04-03T19-39-50_cin_transformer): 1.4B parameters
# over vqgan_imagenet_f16_16384's 16×16 codes, class labels 0..999 embedded as tokens. Its project.yaml was not at
# hand: 48 blocks 1536 wide give the paper's 1.4B, and 24 heads are those of the ImageNet config quoted in taming's
# issue #104 (heads change no weight shape, so a wrong count would load and give other logits).
_TAMING_CIN = dict(tokenizer={"name": "vqgan_imagenet_f16_16384", "args": {}}, img_size=256, num_classes=1000,
                   embed_dim=1536, depth=48, num_heads=24)
_KOOFR_CIN = ("https://app.koofr.net/content/links/90cbd5aa-ef70-4f5e-99bc-f12e5a89380e/files/get/last.ckpt"
              "?path=%2F2021-04-03T19-39-50_cin_transformer%2Fcheckpoints%2Flast.ckpt")


@register_model(task="autoregressive", input_size=(3, 256, 256), class_conditional=True,
                checkpoint_filter=checkpoint_filter,
                pretrained=Pretrained(url=_KOOFR_CIN, cache_name="vqgan_transformer_imagenet_cin.ckpt"))
def vqgan_transformer_imagenet_cin(**kwargs) -> CodeTransformer:
    """taming-transformers' class-conditional ImageNet prior: 48 blocks 1536 wide, 24 heads, over
    vqgan_imagenet_f16_16384 (``pretrained=True``: their ``last.ckpt``, tokenizer included)."""
    return CodeTransformer(**{**_TAMING_CIN, **kwargs})
