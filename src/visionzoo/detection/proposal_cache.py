"""Region proposals computed once per data set split and kept on disk (R-CNN and Fast R-CNN training).

Selective Search costs tens of milliseconds per image and its boxes do not change while a detector
trains, so the R-CNN papers compute them once per split. :func:`cached_proposals` does so in worker
processes (as many as the data loader's, ``--workers``), stores them in ``<cache>/proposals/<key>.safetensors`` (the weights cache of
:mod:`visionzoo.models._hub`, i.e. ``$VISIONZOO_CACHE``) and reads them back on the next run. The key
names the data set (its ``cache_key`` when it has one, else a hash of its images) and the proposal
settings, so another split, size or mode never reuses the wrong file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from visionzoo.checkpoint import atomic_write
from visionzoo.detection.proposals import require_finite_proposals

log = logging.getLogger(__name__)

Propose = Callable[[Tensor], Tensor]


def dataset_key(dataset: Dataset) -> str:
    """A name for ``dataset``'s images: its ``cache_key`` attribute (a ``Subset``: its parent's and a hash of
    its indices), else the SHA-1 of all its images."""
    key = getattr(dataset, "cache_key", None)
    if key:
        return str(key)
    parent_key = getattr(dataset.dataset, "cache_key", None) if isinstance(dataset, Subset) else None
    if parent_key:
        indices = hashlib.sha1(json.dumps([int(i) for i in dataset.indices]).encode()).hexdigest()[:12]
        return f"{parent_key}-subset{len(dataset)}-{indices}"
    digest = hashlib.sha1()
    for index in range(len(dataset)):
        image = dataset[index][0]
        digest.update(str(tuple(image.shape)).encode())
        digest.update((image.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
    return f"{type(dataset).__name__.lower()}-{len(dataset)}-{digest.hexdigest()[:16]}"


def image_name(dataset: Dataset, index: int) -> str:
    """The file of ``dataset``'s image ``index`` where it has files (a COCO folder, or a ``Subset`` of one), else
    "image INDEX" (of the data set, or of its parent for a ``Subset``)."""
    if isinstance(dataset, Subset):
        return image_name(dataset.dataset, int(dataset.indices[index]))
    path = getattr(dataset, "image_path", None)
    return str(path(index)) if callable(path) else f"image {index}"


def _propose_range(dataset: Dataset, propose: Propose, start: int, stop: int) -> list[Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in a worker process: never enter OpenMP (see compute_proposals)
    try:
        out = []
        for index in range(start, stop):
            image = dataset[index][0]
            try:
                out.append(propose(image))
            except ValueError as error:  # an image too small to segment: one of thousands, so say which
                raise ValueError(f"{image_name(dataset, index)}: {error}") from None
        return out
    finally:
        torch.set_num_threads(threads)


def compute_proposals(dataset: Dataset, propose: Propose, workers: int | None = None, progress: bool = True,
                      chunk: int = 32) -> list[Tensor]:
    """``propose(image)`` for every image of ``dataset``, in ``workers`` processes: as the data loader's, 0 (and
    1, which could only wait on its one worker) computes in this process; None: one per CPU.

    Returns:
        one float32 Tensor[P_i, 4] xyxy per image, in the data set's order.
    """
    count = len(dataset)
    workers = (os.cpu_count() or 1) if workers is None else workers
    ranges = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    # closed on the way out: an error's or Ctrl-C's line would otherwise follow the bar's text on its line
    with tqdm(total=count, desc="proposals", unit="img", disable=not progress, leave=False) as bar:
        if workers <= 1 or len(ranges) <= 1:
            out = []
            for start, stop in ranges:
                out.extend(_propose_range(dataset, propose, start, stop))
                bar.update(stop - start)
            return out
        results: list[list[Tensor]] = [[] for _ in ranges]
        # fork, as torch's DataLoader workers: no re-import of the caller's script (spawn would need a
        # __main__ guard there), and each child runs torch on one thread, so it never enters OpenMP
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = {pool.submit(_propose_range, dataset, propose, start, stop): i
                       for i, (start, stop) in enumerate(ranges)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                bar.update(len(results[index]))
    return [boxes for part in results for boxes in part]


def cached_proposals(dataset: Dataset, propose: Propose, settings: dict[str, Any], cache_dir: str | Path | None = None,
                     workers: int | None = None, progress: bool = True) -> list[Tensor]:
    """The proposals of every image of ``dataset``, from the cache or computed and cached.

    Args:
        propose: ``image Tensor[3, H, W] -> Tensor[P, 4]``; picklable (a module-level function or a
            ``functools.partial`` of one) to run in worker processes.
        settings: what ``propose`` does (method, mode, limits), part of the cache key.
        cache_dir: default ``<weights cache>/proposals``.
        workers: processes that compute them (:func:`compute_proposals`).
    """
    from visionzoo.models._hub import cache_dir as weights_cache

    folder = Path(cache_dir) if cache_dir is not None else weights_cache() / "proposals"
    name = dataset_key(dataset)
    settings_text = json.dumps(settings, sort_keys=True)
    key = f"{name}-{hashlib.sha1(settings_text.encode()).hexdigest()[:12]}"
    path = folder / f"{key}.safetensors"
    if path.is_file():
        try:
            return checked_boxes(load_file(path), len(dataset))
        except Exception as error:  # a truncated, damaged or foreign file: recompute rather than fail
            log.warning("ignoring unreadable proposal cache %s (%s)", path, error)
    log.info("computing proposals for %d images of %s (%s)", len(dataset), name, settings_text)
    proposals = compute_proposals(dataset, propose, workers, progress)
    # A cache, not a secret: the file gets the umask's mode (atomic_write), not safetensors' 0o600.
    try:
        atomic_write(path, lambda tmp: save_file(join_boxes(proposals), tmp, metadata={"settings": settings_text,
                                                                                       "dataset": name}))
    except OSError as error:  # a read-only or full cache: the computed proposals still serve this run
        log.warning("could not write the proposal cache %s (%s); the proposals are used without being cached",
                    path, error)
    return proposals


def join_boxes(proposals: Sequence[Tensor]) -> dict[str, Tensor]:
    """Per-image boxes as two tensors: ``boxes`` Tensor[sum P_i, 4] and ``counts`` int64 Tensor[N]."""
    counts = torch.tensor([len(p) for p in proposals], dtype=torch.int64)
    boxes = torch.cat([p.reshape(-1, 4).float() for p in proposals]) if proposals else torch.zeros((0, 4))
    return {"boxes": boxes.contiguous(), "counts": counts}


def split_boxes(tensors: dict[str, Tensor]) -> list[Tensor]:
    """The inverse of :func:`join_boxes`."""
    return list(tensors["boxes"].split(tensors["counts"].tolist()))


def checked_boxes(tensors: dict[str, Tensor], count: int) -> list[Tensor]:
    """:func:`split_boxes` of a cache file's tensors; ValueError saying what is wrong unless they hold ``count``
    sets of finite float boxes Tensor[P_i, 4] (a damaged file would otherwise fail later, inside the model)."""
    boxes, counts = tensors.get("boxes"), tensors.get("counts")
    if boxes is None or counts is None:
        raise ValueError(f"expected tensors 'boxes' and 'counts', found {sorted(tensors)}")
    if not boxes.is_floating_point() or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes are {boxes.dtype} {list(boxes.shape)}, not float [P, 4]")
    if counts.dtype != torch.int64 or counts.dim() != 1 or len(counts) != count:
        raise ValueError(f"counts are {counts.dtype} {list(counts.shape)}, not int64 [{count}] (one per image)")
    if (counts < 0).any() or int(counts.sum()) != len(boxes):
        raise ValueError(f"counts sum to {int(counts.sum())} for {len(boxes)} boxes")
    if not torch.isfinite(boxes).all():
        raise ValueError("boxes hold NaN or infinite values")
    return split_boxes(tensors)


class WithProposals(Dataset):
    """``dataset`` whose targets carry ``"proposals"``: Tensor[P_i, 4] xyxy of image i.

    Either the ``proposals`` themselves, or ``propose`` and its ``settings``: then they come from
    :func:`cached_proposals` at the first access, so a split that is never read costs nothing; ``progress``
    (which the training engine sets from ``--no-progress``) says whether their computation shows a bar, ``workers``
    (set from ``--workers``) in how many processes it runs (None: one per CPU).
    """

    def __init__(self, dataset: Dataset, proposals: Sequence[Tensor] | None = None, *, propose: Propose | None = None,
                 settings: dict[str, Any] | None = None, cache_dir: str | Path | None = None, progress: bool = True,
                 workers: int | None = None):
        if (proposals is None) == (propose is None):
            raise ValueError("WithProposals takes either the proposals or a propose function (with its settings)")
        self.dataset = dataset
        self.propose, self.settings, self.cache_dir = propose, dict(settings or {}), cache_dir
        self.progress, self.workers = progress, workers
        if proposals is not None:  # named by their image in the data set, not by its place in a batch, and at once
            for index, boxes in enumerate(proposals):
                if isinstance(boxes, Tensor) and boxes.dim() == 2:  # the model names other shapes
                    require_finite_proposals(boxes, index)
        self._proposals = None if proposals is None else self._checked(proposals)

    def _checked(self, proposals: Sequence[Tensor]) -> list[Tensor]:
        if len(proposals) != len(self.dataset):
            raise ValueError(f"{len(proposals)} proposal sets for a data set of {len(self.dataset)} images")
        return list(proposals)

    @property
    def proposals(self) -> list[Tensor]:
        if self._proposals is None:
            self._proposals = self._checked(cached_proposals(self.dataset, self.propose, self.settings, self.cache_dir,
                                                             self.workers, self.progress))
        return self._proposals

    def subset(self, indices: Sequence[int]) -> WithProposals:
        """These images only; proposals not computed yet are then computed for them alone."""
        part = Subset(self.dataset, list(indices))
        part.classes = getattr(self.dataset, "classes", None)
        if self._proposals is not None:
            return WithProposals(part, [self._proposals[i] for i in indices])
        return WithProposals(part, propose=self.propose, settings=self.settings, cache_dir=self.cache_dir,
                             progress=self.progress, workers=self.workers)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, {**target, "proposals": self.proposals[index]}

    def __getattr__(self, name: str):  # classes, cache_key, ... of the wrapped data set
        if name in ("dataset", "_proposals"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
