"""Vector quantisation for VQ-VAE, VQGAN and ViT-VQGAN: nearest code, straight-through gradient, codebook upkeep.

Each input vector z is replaced by its nearest codebook entry e (squared Euclidean distance). The
decoder's gradient passes to the encoder unchanged (the straight-through estimator: ``z + sg[e - z]``).
The loss is the commitment term ``β |z - sg[e]|²`` plus, when the codebook is learnt by gradient
(``ema_decay=None``), the codebook term ``|sg[z] - e|²`` (van den Oord et al. 2017). With
``ema_decay`` the codebook instead follows exponential moving averages of the vectors assigned to each
code (the paper's appendix; Laplace-smoothed counts), which trains faster and steadier.

Dead codes: a code whose moving-average count falls below ``dead_code_threshold`` is restarted at an input vector of
the current batch, so that the codebook stays in use (a known VQ failure is a handful of codes doing all the work):
a random one (``dead_code_restart="random"``, as Jukebox and vector-quantize-pytorch, each on another vector while
the batch has enough), or the vectors farthest from their nearest code (``"farthest"``): the random pick mostly
lands next to a busy code, the farthest ones where the quantisation error is largest, as a k-means split would.
Under ``torchrun`` the candidates are the global batch's vectors, gathered from every process (as
vector-quantize-pytorch samples them), and every process restarts the same codes alike.

``kmeans_init`` starts the codebook from the data instead of at random, as vector-quantize-pytorch's option of that
name: the first training forward runs ``kmeans_iters`` Lloyd iterations on its batch's lookup vectors (from codes
drawn among them; spherical k-means with ``l2_normalize``), takes the centroids as codes and the clusters' sizes as
their counts, then quantises as usual. The ``initialised`` buffer, in the state dict, keeps a resumed run from
doing it again. Under ``torchrun`` the k-means runs on the global batch, alike on every process. ``usage`` (the
fraction of codes used in the batch) and ``perplexity`` (``exp`` of the entropy of the batch's code histogram: K
when all K codes are used equally) are reported with every forward.

``code_dim`` gives ViT-VQGAN's factorised codes (Yu et al. 2022): the vector is projected to a low
dimension and the lookup runs there; with ``l2_normalize`` both the projected vector and the codes are
unit vectors, so the nearest code is the one of largest cosine similarity; the code is projected back.

For vector-quantize-pytorch users: their ``VectorQuantize(dim, codebook_size)`` is ``VectorQuantizer(num_codes,
dim)`` (the sizes in the other order); ``decay`` is ``ema_decay``, ``commitment_weight`` ``commitment``,
``threshold_ema_dead_code`` ``dead_code_threshold``, ``codebook_dim`` ``code_dim``, ``use_cosine_sim``
``l2_normalize`` (``kmeans_init`` and ``kmeans_iters`` keep their names) and ``get_output_from_indices``
``decode_indices``; their ``(quantize, indices, loss)`` are our first three returns. Ours is their
``rotation_trick=False`` (plain straight-through), takes either layout (theirs needs ``accept_image_fmap=True`` for
Tensor[B, C, H, W]) and has other defaults (theirs: decay 0.8, weight 1, no restarts); their
``learnable_codebook=True, ema_update=False`` weighs the codebook and commitment terms alike (ours: 1 and β). By
design, with an EMA codebook in training our output and commitment loss take each vector's code after the batch's
EMA step, theirs (and Sonnet's) before it; the codes chosen and the codebook after each step are theirs, as tested.
With ``l2_normalize`` they store unit codes, we the moving average (``code_vectors()`` gives the unit codes); in
eval mode their loss is 0, ours the commitment term.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.distributed import collective
from visionzoo.utils import is_integer

RESTARTS = ("random", "farthest")
# The quantiser arguments where None is a value, not "unset": ``ema_decay=None`` learns the codebook by gradient
# (for the registry, which otherwise drops None-valued keywords as timm does).
QUANTIZER_NONE_ARGS = ("ema_decay",)


class VectorQuantizer(nn.Module):
    """``forward(z)`` → ``(quantised, indices, loss, stats)``.

    Args:
        num_codes: codebook size K.
        dim: channels of the input vectors.
        commitment: β, the weight of the commitment loss.
        ema_decay: decay of the codebook's moving averages; None learns the codebook by gradient.
        dead_code_threshold: moving-average count under which a code is restarted (0 disables; EMA only).
        dead_code_restart: where a dead code restarts: "random" (a random vector of the batch) or "farthest"
            (the batch's vectors farthest from their nearest code, the largest first).
        code_dim: lookup dimension of factorised codes (None: ``dim``, no projection).
        l2_normalize: look up unit vectors (cosine similarity).
        eps: Laplace smoothing of the counts.
        kmeans_init: start the codebook at k-means centroids of the first training batch (see the module docstring).
        kmeans_iters: its Lloyd iterations.

    Shapes: ``z`` is Tensor[B, dim, H, W] (a feature map) or Tensor[B, N, dim] (tokens); ``quantised``
    has ``z``'s shape, ``indices`` is int64 Tensor[B, H, W] or Tensor[B, N]; ``loss`` a scalar;
    ``stats``: ``{"perplexity", "usage"}`` scalars (detached). An empty batch (no vectors) gives a loss of 0 and
    a perplexity and usage of 0, and leaves the codebook.
    """

    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25, ema_decay: float | None = 0.99,
                 dead_code_threshold: float = 1.0, code_dim: int | None = None, l2_normalize: bool = False,
                 eps: float = 1e-5, dead_code_restart: str = "random", kmeans_init: bool = False,
                 kmeans_iters: int = 10):
        super().__init__()
        for name, value in (("num_codes", num_codes), ("dim", dim), ("code_dim", code_dim)):
            if value is not None and not is_integer(value):  # else torch's randn fails naming none of them
                raise ValueError(f"VectorQuantizer's {name} must be a whole number, got {value!r}")
        if num_codes < 2 or dim < 1:
            raise ValueError(f"a codebook needs at least 2 codes of dimension >= 1, got {num_codes} x {dim}")
        if ema_decay is not None and not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        # Not a silent fallback: code_dim=0 would mean "no projection"; a negative commitment would push z away from its code.
        if code_dim is not None and code_dim < 1:
            raise ValueError(f"code_dim must be at least 1 (or None: no projection), got {code_dim}")
        if not (commitment >= 0 and dead_code_threshold >= 0):  # NaN too
            raise ValueError(f"commitment and dead_code_threshold must be >= 0, got {commitment} and "
                             f"{dead_code_threshold}")
        if dead_code_restart not in RESTARTS:
            raise ValueError(f"dead_code_restart must be one of {RESTARTS}, got {dead_code_restart!r}")
        if not is_integer(kmeans_iters) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be a whole number >= 0, got {kmeans_iters!r}")
        self.num_codes = num_codes
        self.dim = dim
        self.code_dim = code_dim or dim
        self.commitment = commitment
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.dead_code_restart = dead_code_restart
        self.l2_normalize = l2_normalize
        self.eps = eps
        self.project_in = nn.Linear(dim, self.code_dim) if code_dim else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, dim) if code_dim else nn.Identity()
        codebook = torch.randn(num_codes, self.code_dim)
        codebook = F.normalize(codebook, dim=1) if l2_normalize else codebook / self.code_dim ** 0.5
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", codebook.clone())
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = int(kmeans_iters)
        if self.kmeans_init:  # only then: the state dicts of quantisers without it stay as they were
            self.register_buffer("initialised", torch.tensor(False))

    def lookup(self, vectors: Tensor) -> Tensor:
        """Index of the nearest code of each of ``vectors`` Tensor[M, code_dim]: int64 Tensor[M]."""
        return self._nearest(vectors)[1]

    def _nearest(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """(squared distance to the nearest code Tensor[M], its index int64 Tensor[M]) of ``vectors``."""
        # In float32 also under bf16 autocast: bf16 distances pick another code for a share of the vectors.
        with torch.autocast(vectors.device.type, enabled=False):
            vectors = vectors.float()
            codebook = self.code_vectors().detach().float()
            distances = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.T
                         + codebook.pow(2).sum(1)[None])
        return distances.min(dim=1)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Codes of ``indices`` int64 Tensor (any shape, values ``0 .. num_codes - 1``) projected back:
        Tensor[*indices.shape, dim]."""
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"code indices must be an integer tensor, got {indices.dtype}")
        # A negative index would wrap around to a code from the end of the codebook, silently.
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(f"code indices must be in 0..{self.num_codes - 1} (the codebook has {self.num_codes} "
                             f"codes), got values {indices.min().item()}..{indices.max().item()}")
        return self.project_out(self.code_vectors()[indices.long()])

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Indices of the nearest codes of ``z`` (either layout of :meth:`forward`): int64 Tensor[B, H, W] or
        Tensor[B, N]. A pure lookup: unlike ``forward`` in training mode it never moves the codebook."""
        flat, grid = self._flatten(z)
        return self._nearest(flat)[1].reshape(grid)

    def _flatten(self, z: Tensor) -> tuple[Tensor, torch.Size]:
        """The lookup vectors Tensor[M, code_dim] (in the codebook's dtype, projected, unit with
        ``l2_normalize``) of ``z`` and its grid (``z``'s shape without the channels)."""
        if z.dim() not in (3, 4) or z.shape[1 if z.dim() == 4 else 2] != self.dim:
            raise ValueError(f"VectorQuantizer({self.num_codes}, dim={self.dim}) takes Tensor[B, {self.dim}, H, W] "
                             f"or Tensor[B, N, {self.dim}], got {tuple(z.shape)}")
        if not z.is_floating_point():  # forward's codes come back in z's dtype: an integer one would truncate them
            raise ValueError(f"VectorQuantizer takes floating-point vectors, got {z.dtype}; convert them with .float()")
        vectors = z.permute(0, 2, 3, 1) if z.dim() == 4 else z
        # The lookup and the codebook's moving averages run in the codebook's dtype (float32, also under
        # bf16 autocast; that of a quantiser cast as a whole with .to(dtype)).
        with torch.autocast(z.device.type, enabled=False):
            flat = self.project_in(vectors.reshape(-1, self.dim).to(self.codebook.dtype))
        if self.l2_normalize:
            flat = F.normalize(flat, dim=1)
        return flat, vectors.shape[:-1]

    def code_vectors(self) -> Tensor:
        """The codebook as the lookup sees it: Tensor[num_codes, code_dim] (unit rows with ``l2_normalize``)."""
        return F.normalize(self.codebook, dim=1) if self.l2_normalize else self.codebook

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        channels_first = z.dim() == 4
        flat, grid = self._flatten(z)
        if self.training and self.kmeans_init and not self.initialised:
            self._init_from_kmeans(flat.detach()[torch.isfinite(flat.detach()).all(1)])
        distances, indices = self._nearest(flat.detach())
        codes = self.code_vectors()[indices]
        if self.training and self.ema_decay is not None:
            # A NaN or infinite vector (a diverging encoder) would make its code, and the dead codes restarted at
            # it, NaN for good: the averages take the finite ones (the loss still shows the others).
            finite = torch.isfinite(flat.detach()).all(1)
            kept = flat.detach()[finite]
            if self._ema_update(kept, indices[finite]):  # an empty batch says nothing of the codes
                codes = self.code_vectors()[indices]
            if len(kept) or _distributed():  # under torchrun another process may hold the vectors
                # After the lookup: a dead code that some vectors chose still serves them in this forward, not
                # the batch vector it restarts at.
                self._restart_dead_codes(kept, distances[finite])
        loss = self.commitment * _mean_squared_error(flat, codes.detach())
        if self.ema_decay is None:
            loss = loss + _mean_squared_error(codes, flat.detach())
        quantised = flat + (codes - flat).detach()  # straight through: d quantised / d flat = identity
        out = self.project_out(quantised).reshape(*grid, self.dim).to(z.dtype)
        if channels_first:
            out = out.permute(0, 3, 1, 2)
        return out, indices.reshape(grid), loss, self._stats(indices)

    @torch.no_grad()
    def _init_from_kmeans(self, flat: Tensor) -> None:
        """Set the codebook to k-means centroids of ``flat`` Tensor[M, code_dim] (the global batch's under
        ``torchrun``), the counts to the clusters' sizes; nothing while no process has a vector."""
        flat = flat.to(self.codebook.dtype)
        if _distributed():
            flat = _gather_over_processes(flat)
        if not len(flat):
            return
        # Distinct vectors while the batch has enough, as vector-quantize-pytorch draws them; rank 0's draw for all
        if len(flat) >= self.num_codes:
            rows = torch.randperm(len(flat), device=flat.device)[:self.num_codes]
        else:
            rows = torch.randint(0, len(flat), (self.num_codes,), device=flat.device)
        if _distributed():
            rows = collective(dist.broadcast, rows, src=0)
        centroids, sizes = lloyd_kmeans(flat, flat[rows], self.kmeans_iters, self.l2_normalize)
        if self.ema_decay is None:
            self.codebook.copy_(centroids)
        else:
            self.ema_sum.copy_(centroids * sizes[:, None])
            self.ema_count.copy_(sizes)
            self._codebook_from_averages()
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor) -> bool:
        """Move the codebook towards the batch's vectors; False (nothing changed) when no process had any.

        Under ``torchrun`` the codes' counts and sums are those of the global batch (summed over the processes), as
        one process with it has them: each process then makes the same update, where DistributedDataParallel would
        keep rank 0's alone."""
        one_hot = F.one_hot(indices, self.num_codes).to(flat.dtype)
        counts, sums = one_hot.sum(0), one_hot.T @ flat
        if _distributed():
            shared = _sum_over_processes(torch.cat([counts[:, None], sums], 1))
            counts, sums = shared[:, 0], shared[:, 1:]
        if not counts.sum():
            return False
        self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
        self._codebook_from_averages()
        return True

    def _codebook_from_averages(self) -> None:
        """Each code the mean its moving averages hold: the sum over the Laplace-smoothed count."""
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor, distances: Tensor) -> None:
        """Restart the dead codes at vectors of ``flat`` Tensor[M, code_dim] (``distances`` Tensor[M] to their
        nearest codes). Under ``torchrun`` at vectors of the global batch, as vector-quantize-pytorch samples them:
        every process's are gathered and rank 0's picks are used by all, so each restarts the same codes alike."""
        if self.dead_code_threshold == 0:
            return
        dead = torch.where(self.ema_count < self.dead_code_threshold)[0]  # the same on every process
        if not dead.numel():
            return
        if _distributed():
            dtype = torch.promote_types(flat.dtype, torch.float32)  # the distances' precision, a bf16 codebook's
            gathered = _gather_over_processes(torch.cat([flat.to(dtype), distances[:, None].to(dtype)], 1))
            flat, distances = gathered[:, :-1].to(flat.dtype), gathered[:, -1]
            if not len(flat):  # no process had a vector
                return
            rows = collective(dist.broadcast, self._restart_rows(distances, dead.numel()), src=0)
        else:
            rows = self._restart_rows(distances, dead.numel())
        picks = flat[rows]
        self.codebook[dead] = picks
        self.ema_sum[dead] = picks * self.dead_code_threshold
        self.ema_count[dead] = self.dead_code_threshold

    def _restart_rows(self, distances: Tensor, count: int) -> Tensor:
        """Rows of the batch's ``distances`` Tensor[M] (to the nearest code) where ``count`` dead codes restart:
        int64 Tensor[count], distinct while ``count <= M`` (two codes on one vector: the copy never wins a vector)."""
        if self.dead_code_restart == "random":
            order = torch.randperm(len(distances), device=distances.device)
        else:
            order = distances.argsort(descending=True)
        return order[torch.arange(count, device=distances.device) % len(order)]

    def _stats(self, indices: Tensor) -> dict[str, Tensor]:
        histogram = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        if self.training and _distributed():  # every process trains: the global batch's codes, as one process has
            histogram = _sum_over_processes(histogram)
        if not len(indices.flatten()):  # no vectors, no codes in use: 0 for both (not exp of 0 / 0)
            return {"perplexity": histogram.sum(), "usage": histogram.sum()}
        probabilities = histogram / histogram.sum()
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
        return {"perplexity": entropy.exp(), "usage": (histogram > 0).float().mean()}


def lloyd_kmeans(vectors: Tensor, centroids: Tensor, iterations: int, spherical: bool = False) -> tuple[Tensor, Tensor]:
    """``iterations`` Lloyd steps from ``centroids`` Tensor[K, D] over ``vectors`` Tensor[M, D]: (centroids
    Tensor[K, D], cluster sizes Tensor[K] of the last assignment; all 0 without iterations). ``spherical``: unit
    vectors, nearest by cosine similarity, centroids renormalised. An empty cluster keeps its centroid. Stops early
    once the centroids no longer move (a fixed point: more steps would change nothing)."""
    sizes = vectors.new_zeros(len(centroids))
    for _ in range(iterations):
        nearest = (vectors @ centroids.T).argmax(1) if spherical else torch.cdist(vectors, centroids).argmin(1)
        sizes = torch.bincount(nearest, minlength=len(centroids)).to(vectors.dtype)
        means = vectors.new_zeros(centroids.shape).index_add_(0, nearest, vectors) / sizes.clamp_min(1)[:, None]
        if spherical:
            means = F.normalize(means, dim=1)
        moved = torch.where((sizes == 0)[:, None], centroids, means)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids, sizes


def _distributed() -> bool:
    """Whether this process trains beside others (under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_processes(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes (every process calls this, in the same order)."""
    return collective(dist.all_reduce, tensor)


def _gather_over_processes(rows: Tensor) -> Tensor:
    """Every process's ``rows`` Tensor[M, D] (M may differ between them), concatenated in rank order (every process
    calls this, in the same order). All-reduces of zero-padded blocks, which any backend runs."""
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = torch.zeros(world, dtype=torch.int64, device=rows.device)
    counts[rank] = len(rows)
    counts = _sum_over_processes(counts).tolist()
    blocks = rows.new_zeros(world, max(counts), rows.shape[1])
    blocks[rank, :len(rows)] = rows
    blocks = _sum_over_processes(blocks)
    return torch.cat([blocks[process, :count] for process, count in enumerate(counts)])


def _mean_squared_error(input: Tensor, target: Tensor) -> Tensor:
    """``F.mse_loss``, but 0 (with zero gradients) over no vectors, where the mean is NaN."""
    return F.mse_loss(input, target) if input.numel() else (input - target).sum()
