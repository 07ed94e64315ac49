"""Gradient checkpointing (activation recomputation) of a sequence of blocks, as timm's ``checkpoint_seq``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def run_blocks(blocks: Iterable[nn.Module], x: Tensor, checkpointed: bool = False, **kwargs: Any) -> Tensor:
    """``x`` through ``blocks`` in order (each ``Tensor -> Tensor``, called as ``block(x, **kwargs)``: the
    same keywords, an attention mask for one, for every block); with ``checkpointed`` and autograd on,
    each block under :func:`torch.utils.checkpoint.checkpoint`: only its input is kept for the backward
    pass and its activations are recomputed there, trading one more forward for memory.

    Non-reentrant checkpointing (timm's default): the forward runs with autograd on, so the blocks take
    their training path in the forward and in the recomputation alike, and the RNG state is replayed,
    so dropout and stochastic depth draw the same masks twice. Outputs and gradients are those of the
    plain run. Batch norm in training mode updates its running statistics in both runs (as in timm).
    Without autograd (inference) it is the plain loop.
    """
    if checkpointed and torch.is_grad_enabled():
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False, **kwargs)
        return x
    for block in blocks:
        x = block(x, **kwargs)
    return x
