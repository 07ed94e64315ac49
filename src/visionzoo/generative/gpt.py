"""A decoder-only transformer over token sequences (nanoGPT-sized): the prior of Image GPT and of VQGAN.

The model reads ``[start, t_0, ..., t_{N-2}]`` and predicts ``t_0, ..., t_{N-1}``: position ``i`` sees the
start token and the tokens before ``t_i``. The start token carries the class: one learned start
embedding per class, plus one more (index ``num_classes``) for "no class", so a class-conditional
model trained with some labels dropped (the task drops them) also samples unconditionally.

Blocks are pre-norm (``x + attn(ln(x))``, ``x + mlp(ln(x))``) with the shared
:class:`~visionzoo.layers.Attention` (causal) and :class:`~visionzoo.layers.Mlp`; learned absolute
position embeddings; a final LayerNorm and a linear head. Initialisation is GPT-2's: N(0, 0.02)
weights, residual projections scaled by ``1 / sqrt(2 · depth)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from visionzoo.layers import Attention, Linear, Mlp
from visionzoo.layers.attention import scaled_dot_product_attention
from visionzoo.utils import NonFiniteOutputError, check_generator, eval_mode, is_integer


class Block(nn.Module):
    """Pre-norm causal transformer block: Tensor[B, N, dim] → Tensor[B, N, dim]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, attn_drop=drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, cache: list[Tensor] | None = None) -> Tensor:
        """``cache``: None for a whole causal sequence, else this block's ``[keys, values]`` of the positions
        before ``x`` (empty at first), extended in place; after the first call ``x`` is one position."""
        y = self.norm1(x)
        x = x + (self.attn(y, is_causal=True) if cache is None else self._cached_attention(y, cache))
        return x + self.mlp(self.norm2(x))

    def _cached_attention(self, x: Tensor, cache: list[Tensor]) -> Tensor:
        attn = self.attn
        batch, tokens, _ = x.shape
        q, k, v = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cache:
            if tokens != 1:
                raise ValueError(f"after the first call a KV cache takes one position at a time, got {tokens}")
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        cache[:] = [k, v]
        # A first call holds the whole prefix (causal); a later one a single query that sees every key.
        out = scaled_dot_product_attention(q, k, v, is_causal=k.shape[2] == tokens, scale=attn.scale)
        return attn.proj(out.transpose(1, 2).reshape(batch, tokens, attn.num_heads * attn.head_dim))


class GPT(nn.Module):
    """Autoregressive transformer over sequences of ``seq_len`` tokens from a vocabulary of ``vocab_size``.

    Args:
        vocab_size: number of token values (palette entries, codebook codes).
        seq_len: the sequence length N the model generates (its position table has N entries:
            the start token and ``t_0 .. t_{N-2}``).
        num_classes: 0 for an unconditional model; else class labels ``0 .. num_classes - 1`` condition it.
        embed_dim, depth, num_heads, mlp_ratio: width, number of blocks, attention heads, MLP expansion.
        drop: dropout on the embeddings, the attention weights and the residual branches.
    """

    def __init__(self, vocab_size: int, seq_len: int, num_classes: int = 0, embed_dim: int = 128, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        if vocab_size < 2 or seq_len < 1 or num_classes < 0:
            raise ValueError(f"GPT needs vocab_size >= 2, seq_len >= 1 and num_classes >= 0, "
                             f"got {vocab_size}, {seq_len}, {num_classes}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.tok_embed = nn.Embedding(vocab_size, embed_dim)
        self.start_embed = nn.Embedding(num_classes + 1, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, seq_len, embed_dim))
        self.drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = Linear(embed_dim, vocab_size, bias=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _start(self, batch: int, labels: Tensor | None, device: torch.device) -> Tensor:
        """The start embeddings Tensor[B, 1, dim] of ``labels`` (None: the unconditional one)."""
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif self.num_classes == 0:
            raise ValueError("this GPT is unconditional (num_classes=0) and takes no labels")
        else:
            labels = torch.as_tensor(labels, device=device)
            _check_integers("labels", labels, (batch,), self.num_classes + 1, f" ({self.num_classes}: none)")
        return self.start_embed(labels.long())[:, None]

    def _check(self, tokens: Tensor) -> None:
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.seq_len:
            raise ValueError(f"tokens must be Tensor[B, N] with 1 <= N <= {self.seq_len}, got {tuple(tokens.shape)}")
        _check_integers("tokens", tokens, tuple(tokens.shape), self.vocab_size)

    def _embed(self, tokens: Tensor, labels: Tensor | None) -> Tensor:
        """Inputs ``[start, t_0 .. t_{N-2}]`` + positions: Tensor[B, N, dim]."""
        self._check(tokens)
        x = torch.cat([self._start(tokens.shape[0], labels, tokens.device), self.tok_embed(tokens[:, :-1].long())], dim=1)
        return self.drop(x + self.pos_embed[:, :x.shape[1]])

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """``tokens``: int64 Tensor[B, N] (N <= seq_len); ``labels``: Tensor[B] or None.

        Returns logits Tensor[B, N, vocab_size]: position i predicts ``tokens[:, i]`` from the start token
        and ``tokens[:, :i]``.
        """
        x = self._embed(tokens, labels)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def forward_layers(self, tokens: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """The embedding output and every block's output: ``depth + 1`` Tensor[B, N, dim] (for linear probes).

        As in :meth:`forward`, position i has seen the start token and ``tokens[:, :i]``; the last token
        is not read.
        """
        x = self._embed(tokens, labels)
        layers = [x]
        for block in self.blocks:
            x = block(x)
            layers.append(x)
        return layers

    @torch.no_grad()
    def generate(self, prefix: int | Tensor, length: int | None = None, labels: Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample sequences: int64 Tensor[B, length] (``length`` defaults to ``seq_len``).

        ``prefix`` is a count B (sample from scratch) or int64 Tensor[B, P] of given first tokens, which
        the result starts with. ``labels``: Tensor[B] or None (unconditional). The sampler is
        :func:`sample_logits` with ``temperature``, ``top_k``, ``top_p``, drawing from ``generator`` (on its
        own device). It runs in eval mode and gives the model back in its own mode.

        With a KV cache: each new token runs one position through the blocks against the stored keys and
        values. Measured on one CPU thread for 16 sequences, it was 5 times faster than recomputing the whole
        prefix for every token at 64 positions (64 wide, 4 blocks) and 14 times at 256 (128 wide, 6 blocks),
        with the same tokens; so only the cached path is kept.
        """
        check_generator(generator)
        with eval_mode(self):  # dropout off (it would draw from the global RNG, not ``generator``); mode restored
            return self._generate(prefix, length, labels, temperature, top_k, top_p, generator)

    def _generate(self, prefix: int | Tensor, length: int | None, labels: Tensor | None, temperature: float,
                  top_k: int | None, top_p: float | None, generator: torch.Generator | None) -> Tensor:
        length = self.seq_len if length is None else length
        device = self.pos_embed.device
        count = is_integer(prefix)  # numpy's integers too
        if not (count and prefix >= 0 or isinstance(prefix, Tensor)):
            raise ValueError(f"generate needs a count of samples >= 0 (or a prefix Tensor[B, P]), got {prefix!r}")
        tokens = torch.zeros(int(prefix), 0, dtype=torch.long, device=device) if count else prefix.to(device)
        if tokens.dim() != 2 or not 0 <= tokens.shape[1] < length <= self.seq_len:
            raise ValueError(f"generate needs a prefix Tensor[B, P] (or a count) with P < length <= {self.seq_len}, "
                             f"got prefix {tuple(tokens.shape)}, length {length}")
        _check_integers("prefix tokens", tokens, tuple(tokens.shape), self.vocab_size)
        tokens = tokens.long()
        caches: list[list[Tensor]] = [[] for _ in self.blocks]
        x = self._start(tokens.shape[0], labels, device)
        if tokens.shape[1]:
            x = torch.cat([x, self.tok_embed(tokens)], dim=1)
        x = x + self.pos_embed[:, :x.shape[1]]
        while True:
            for block, cache in zip(self.blocks, caches):
                x = block(x, cache)
            logits = self.head(self.norm(x[:, -1])).float()
            if generator is not None:  # draw where the generator lives, so a CPU generator serves a model on any device
                logits = logits.to(generator.device)
            new = sample_logits(logits, temperature, top_k, top_p, generator).to(device)
            tokens = torch.cat([tokens, new[:, None]], dim=1)
            if tokens.shape[1] == length:
                return tokens
            x = self.tok_embed(new)[:, None] + self.pos_embed[:, tokens.shape[1]:tokens.shape[1] + 1]


class ImageSampler:
    """``generate(count)`` for a model of image tokens: a ``gpt`` (:class:`GPT`) over them and ``images_from_tokens``
    (Image GPT's palette, a code prior's tokenizer), as DCGAN's ``generate``."""

    @torch.no_grad()
    def generate(self, count: int, generator: torch.Generator | None = None, labels: Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """``count`` images Tensor[count, C, H, W] in [0, 1], sampled token by token (:meth:`GPT.generate`: the
        sampler's ``temperature``, ``top_k``, ``top_p``; ``labels`` Tensor[count] for a class-conditional model)
        from ``generator`` (None: the global RNG), so one seed gives the same images. Runs in eval mode and gives
        the model back in its own mode."""
        if not is_integer(count) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        with eval_mode(self):
            tokens = self.gpt.generate(int(count), labels=labels, temperature=temperature, top_k=top_k, top_p=top_p,
                                       generator=generator)
            return self.images_from_tokens(tokens)


def _check_integers(name: str, values: Tensor, shape: tuple[int, ...], bound: int, note: str = "") -> None:
    """Raise a ValueError naming ``name`` unless ``values`` is an integer Tensor[shape] in ``0 .. bound - 1``
    (an index out of range would be a raw IndexError of an embedding, a negative one none at all)."""
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {values.dtype}")
    low, high = (values.min().item(), values.max().item()) if values.numel() else (0, 0)
    if tuple(values.shape) != shape or low < 0 or high >= bound:
        raise ValueError(f"{name} must be Tensor{list(shape)} in 0..{bound - 1}{note}, "
                         f"got shape {tuple(values.shape)}, values {low}..{high}")


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """One token per row of ``logits`` Tensor[B, V]: int64 Tensor[B].

    The logits are divided by ``temperature`` (> 0); ``top_k`` keeps the k most likely tokens (and any tied with the k-th); ``top_p``
    (nucleus) then keeps the smallest set of most likely tokens whose probability reaches ``p``, never
    fewer than the best one. The draw uses ``generator``. Logits of NaN or +inf, or a row of nothing but -inf, raise
    :class:`~visionzoo.utils.NonFiniteOutputError` (a ValueError).
    """
    check_generator(generator)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer of at least 1 (or None), got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be Tensor[B, V], got {tuple(logits.shape)}")
    # else torch.multinomial's "probability tensor contains either `inf`, `nan` or element < 0" (an overflow, NaN weights)
    if bool(logits.isnan().any() | logits.isposinf().any()) or not bool(logits.isfinite().any(-1).all()):
        raise NonFiniteOutputError("logits must be finite or -inf (a token ruled out), with a finite one in every row; "
                                   "got NaN, +inf or a row of -inf")
    # Shifted so the best is 0 before dividing: a tiny temperature (near-greedy) would overflow to inf - inf = nan.
    logits = logits.float()
    logits = logits - logits.max(-1, keepdim=True).values
    if torch.tensor(temperature, dtype=logits.dtype) > 0:
        logits = logits / temperature
    else:  # a temperature under float32's smallest (1.4e-45) is 0 there, and the best 0 / 0 = nan: greedy, as it tends to
        logits = logits.masked_fill(logits < 0, float("-inf"))
    if top_k is not None and top_k < logits.shape[-1]:
        # Everything below the k-th best goes; tokens tied with it stay (as nanoGPT), not an arbitrary pick of them.
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probabilities = ordered.softmax(-1)
        # Keep a token while the probability of the better ones has not reached p yet (so the best always stays).
        drop = probabilities.cumsum(-1) - probabilities >= top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
