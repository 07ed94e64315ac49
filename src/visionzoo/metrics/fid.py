"""Fréchet Inception Distance: ``FID`` over tensors, statistics in pytorch-fid's ``.npz``, and folders of images.

``FID(features)`` accumulates the features of real and generated images (``update(images, real=...)``)
in float64 (:class:`~visionzoo.metrics.frechet.FeatureStatistics`) and ``compute()`` gives the Fréchet
distance of the two Gaussians. ``features`` is any module mapping Tensor[B, 3, H, W] in [0, 1] to
Tensor[B, D]: :class:`~visionzoo.metrics.inception.InceptionFeatures` for numbers comparable with
pytorch-fid and clean-fid. Statistics files are pytorch-fid's: an ``.npz`` with ``mu`` [D] and
``sigma`` [D, D]. Ours also record which features made them (:func:`feature_fingerprint`) and from how many
images, in keys pytorch-fid does not read: statistics of another network, resize or image size are refused
rather than compared, since such low-level differences move FID by more than the models' differences.
"""

from __future__ import annotations

import hashlib
import itertools
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from visionzoo.metrics.frechet import (
    SYMMETRY_TOLERANCE,
    FeatureStatistics,
    asymmetry,
    frechet_distance,
    is_positive_semidefinite,
)
from visionzoo.utils import check_unit_range, eval_mode, positive_batch_size

T = TypeVar("T", FeatureStatistics, Tensor)

IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}  # pytorch-fid's


class FID:
    """FID between the images given as real and as generated.

    ``update(images, real=...)`` adds images, ``compute()`` gives the distance, ``reset()`` forgets them.

    Args:
        features: image → feature module (put in eval mode here).
        batch_size: images per forward pass in :meth:`update`.
        keep_features: also keep every feature vector, for :meth:`confidence_interval`.
        sync_on_compute: under an initialised ``torch.distributed`` process group of more than one process,
            :meth:`compute` and :meth:`confidence_interval` score the images of every rank (merged in rank order,
            so every rank gets the same number), as torchmetrics' ``sync_on_compute``; each rank keeps its own
            images for further updates. False: each rank scores its own.
        process_group: the group to sync over (None: the default group).
    """

    def __init__(self, features: nn.Module, batch_size: int = 50, keep_features: bool = False,
                 sync_on_compute: bool = True, process_group: Any = None):
        self.batch_size = positive_batch_size(batch_size, "FID's batch_size")
        self.sync_on_compute, self.process_group = sync_on_compute, process_group
        if not isinstance(features, nn.Module):
            got = (f"the class {features.__name__} (build one: {features.__name__}(...))" if isinstance(features, type)
                   else "None" if features is None else type(features).__name__)
            raise ValueError(f"FID's features must be a torch.nn.Module instance mapping images to Tensor[B, D] "
                             f"(InceptionFeatures(pretrained=True), domain_features(...)), got {got}")
        self.features = features.eval()
        self.real = FeatureStatistics()
        self.fake = FeatureStatistics()
        self.kept: dict[bool, list[Tensor]] | None = {True: [], False: []} if keep_features else None

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Fold ``images`` (Tensor[B, 3, H, W] in [0, 1], on any device: each batch goes to the features' device)
        into the real or the generated statistics; an empty batch (B = 0) adds nothing, as in torchmetrics."""
        if not isinstance(images, Tensor):
            raise ValueError(f"FID.update takes a Tensor[B, C, H, W] of images in [0, 1], got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"FID.update takes a batch Tensor[B, C, H, W] of images in [0, 1], got {tuple(images.shape)}")
        real = _side(real)
        if images.shape[0] == 0:
            return
        check_unit_range(images, "FID")
        stats = self.real if real else self.fake
        batch, kept = FeatureStatistics(stats.dim), []  # folded in at the end: an update that fails adds nothing
        device = _device_of(self.features, images.device)
        for part in images.split(self.batch_size):
            # eval mode for each batch, not only when built: a loop's .train() on a module holding the network would
            # give batch-dependent features from batch statistics (and move the running ones), as torchmetrics guards
            with eval_mode(self.features):
                features = self.features(part.to(device))
            if not isinstance(features, Tensor) or features.dim() != 2:
                got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(f"FID's feature module must return Tensor[B, D], got {got} (pytorch-fid's "
                                 "InceptionV3 returns a list of [B, D, 1, 1]: use InceptionFeatures)")
            self._check_dimension(features.shape[1], real)
            features = features.double()
            batch.update(features)
            if self.kept is not None:
                kept.append(features.cpu())
        stats.merge(batch)
        if self.kept is not None:
            self.kept[real].extend(kept)

    def _check_dimension(self, dim: int, real: bool) -> None:
        """ValueError naming both sides when ``dim``-d features of the ``real`` side meet features of another
        dimension seen before (a feature module whose output grows with the image size, given other sizes)."""
        for seen, stats in (("real", self.real), ("generated", self.fake)):
            if stats.dim is not None and stats.count and stats.dim != dim:
                raise ValueError(f"FID's features of these {'real' if real else 'generated'} images have {dim} "
                                 f"dimensions, but those of the {seen} images before have {stats.dim}: FID compares "
                                 "features of one network at one image size")

    def reset(self, keep_real: bool = False) -> None:
        """Forget the generated images seen, and the real ones unless ``keep_real`` (torchmetrics'
        ``reset_real_features=False``: score another generator against the same real images)."""
        if not keep_real:
            self.real = FeatureStatistics()
        self.fake = FeatureStatistics()
        if self.kept is not None:
            self.kept[False] = []
            if not keep_real:
                self.kept[True] = []

    def confidence_interval(self, samples: int = 100, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
        """FID's percentile bootstrap interval (:func:`~visionzoo.metrics.sample_quality.fid_confidence_interval`)."""
        from visionzoo.metrics.sample_quality import _check_whole, fid_confidence_interval

        if self.kept is None:
            raise ValueError("build FID(..., keep_features=True) to bootstrap its confidence interval")
        _check_whole(seed, "FID.confidence_interval's seed")  # else torch's "manual_seed expected a long"
        self.compute()  # the same checks on the sample counts
        nothing = [torch.empty(0, 0, dtype=torch.float64)]  # a rank that saw no images of a side
        real, fake = (self._gathered(torch.cat(self.kept[side] or nothing)) for side in (True, False))
        return fid_confidence_interval(real, fake, samples, confidence, torch.Generator().manual_seed(int(seed)))

    def compute(self) -> float:
        real, fake = self._gathered(self.real), self._gathered(self.fake)
        for name, stats in (("real", real), ("generated", fake)):
            if stats.count < 2:
                raise ValueError(f"FID needs at least 2 {name} images, has {stats.count}")
        return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)

    def _gathered(self, state: T) -> T:
        """``state`` (FeatureStatistics, or kept features Tensor[N, D]) of every rank's images, in rank order, where
        :meth:`compute` syncs (see ``sync_on_compute``); ``state`` itself otherwise."""
        import torch.distributed as dist

        if not (self.sync_on_compute and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return state
        if isinstance(state, FeatureStatistics):
            return state.all_gather(self.process_group)
        states: list[Any] = [None] * dist.get_world_size(self.process_group)
        dist.all_gather_object(states, state, group=self.process_group)
        return torch.cat([features for features in states if features.numel()])


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    """Where ``module``'s weights lie (its first parameter or buffer), else ``default``: FID takes each batch there, as
    pytorch-fid does, so that a network moved to a GPU takes the images a loader gives on the CPU."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return default if first is None else first.device


def _side(real: object) -> bool:
    """FID.update's ``real`` flag as a bool: Python's or NumPy's, or a one-element bool Tensor; ValueError otherwise
    (a string "False" would be truthy, and the kept features are filed under True and False)."""
    if isinstance(real, Tensor) and real.dtype == torch.bool and real.numel() == 1:
        return bool(real)
    if isinstance(real, (bool, np.bool_)):
        return bool(real)
    raise ValueError(f"FID.update's real must be True or False, got {real!r}")


def is_statistics(path: str | Path) -> bool:
    """Whether ``path`` names an ``.npz`` statistics file, in any letter case (else a folder of images)."""
    return str(path).lower().endswith(".npz")


def statistics_path(path: str | Path) -> Path:
    """The file :func:`save_statistics` writes for ``path``: ``.npz`` appended unless it ends so, in any letter case
    (np.savez also appends it to ``STATS.NPZ``, which :func:`is_statistics` reads as statistics)."""
    path = Path(path)
    return path if is_statistics(path.name) else path.with_name(path.name + ".npz")


FINGERPRINT_KEY = "visionzoo_features"
COUNT_KEY = "visionzoo_num_images"
# Settings of a feature network that change its features for the same images and weights.
_FEATURE_SETTINGS = ("resize", "image_size", "in_chans")


def feature_fingerprint(features: nn.Module) -> str:
    """What makes ``features``' output: its class, its reading settings (Inception's resize, the domain network's
    image size and channels) and a hash of its weights, e.g. ``"InceptionFeatures resize=legacy weights=1a2b..."``."""
    digest = hashlib.sha256()
    for name, tensor in features.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    settings = [f"{name}={getattr(features, name)}" for name in _FEATURE_SETTINGS if hasattr(features, name)]
    return " ".join([type(features).__name__, *settings, f"weights={digest.hexdigest()[:16]}"])


def save_statistics(path: str | Path, stats: FeatureStatistics, fingerprint: str | None = None) -> Path:
    """``stats`` as pytorch-fid's ``.npz`` (``mu`` float64[D], ``sigma`` float64[D, D]) at :func:`statistics_path`;
    with the :func:`feature_fingerprint` of the features that made them, also it and the image count (keys
    pytorch-fid ignores)."""
    path = statistics_path(path)
    provenance = {} if fingerprint is None else {FINGERPRINT_KEY: np.array(fingerprint), COUNT_KEY: np.array(stats.count)}
    with open(path, "wb") as file:  # a file, not a name, that np.savez would append .npz to
        np.savez(file, mu=stats.mean.numpy(), sigma=stats.covariance.numpy(), **provenance)
    return path


def statistics_fingerprint(path: str | Path) -> str | None:
    """The :func:`feature_fingerprint` recorded in a statistics file, or None (pytorch-fid's files have none)."""
    with np.load(path) as data:
        if FINGERPRINT_KEY not in data.files:
            return None
        value = data[FINGERPRINT_KEY]
    if not isinstance(value, np.ndarray) or value.dtype.kind != "U" or value.ndim != 0:
        raise ValueError(f"{path}: its {FINGERPRINT_KEY} is not a string")
    return str(value)


def check_same_features(fingerprints: dict[str, str | None]) -> None:
    """ValueError naming both sources when two known fingerprints (source → fingerprint or None) differ: FID
    between features of different networks, resizes or image sizes is no measure of the images."""
    known = [(source, fingerprint) for source, fingerprint in fingerprints.items() if fingerprint is not None]
    for source, fingerprint in known[1:]:
        first, expected = known[0]
        if fingerprint != expected:
            raise ValueError(f"{source} has features of '{fingerprint}' and {first} of '{expected}': FID compares "
                             "only features of one network, resize and image size; compute both the same way")


def _read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder, not an .npz statistics file (a folder of images must not end in .npz)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    why = f"{path} is not an FID statistics file (an .npz with 'mu' and 'sigma')"
    unreadable = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile)
    try:
        data = np.load(path)
    except unreadable as error:
        raise ValueError(f"{why}: {error}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{why}: it holds a single array (.npy), not an archive")
    try:
        with data:
            mu, sigma = data["mu"], data["sigma"]
    except unreadable as error:
        raise ValueError(f"{why}: {error}") from None
    for name, array in (("mu", mu), ("sigma", sigma)):
        # an archive member that is not an .npy file loads as its raw bytes
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{why}: its {name} is not a NumPy array")
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{why}: its {name} holds {array.dtype}, not real numbers")
    return mu.astype(np.float64, copy=False), sigma.astype(np.float64, copy=False)


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` float64 of a pytorch-fid ``.npz``; ValueError naming the file when it is not one, or when
    its sigma is not a covariance of mu's dimension (not square, asymmetric, not positive semi-definite,
    non-finite)."""
    mu, sigma = _read_npz(path)
    if mu.ndim != 1 or mu.shape[0] == 0 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together "
                         "(expected mu [D] and sigma [D, D], D >= 1)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: the statistics have non-finite values")
    if asymmetry(torch.from_numpy(sigma)) > SYMMETRY_TOLERANCE:
        raise ValueError(f"{path}: sigma is not symmetric, so not a covariance matrix")
    if np.diagonal(sigma).min() < 0:
        raise ValueError(f"{path}: sigma has negative variances on its diagonal, so is not a covariance matrix")
    if not is_positive_semidefinite(torch.from_numpy(sigma)):
        raise ValueError(f"{path}: sigma is not positive semi-definite (it has negative eigenvalues), so is not a "
                         "covariance matrix")
    return mu, sigma


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted (pytorch-fid's extensions); subfolders are not read, and a
    link to a file that does not exist is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is neither an image folder nor an .npz statistics file")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and not p.is_dir())
    dangling = [path for path in files if not path.exists()]  # listed, yet not there: links to moved files
    if dangling:  # refused now, not when its batch comes, after the features of the images before it
        more = f" (and {len(dangling) - 1} more such links)" if len(dangling) > 1 else ""
        raise ValueError(f"{dangling[0]} is a link to {dangling[0].readlink()}, which does not exist{more}")
    if len(files) < 2:
        subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unread = ""
        others = sorted(p.name for p in folder.iterdir() if not p.is_dir() and p not in files)
        if subfolders:
            shown = ", ".join(subfolders[:3]) + ("..." if len(subfolders) > 3 else "")
            unread = f" (its subfolders {shown} are not read; give one of them, or gather the images in one folder)"
        elif others:
            shown = ", ".join(others[:3]) + ("..." if len(others) > 3 else "")
            read = ", ".join(f".{extension}" for extension in sorted(IMAGE_EXTENSIONS))
            unread = (f" ({len(others)} other file{'s are' if len(others) > 1 else ' is'} not read: {shown}; FID reads "
                      f"{read} files)")
        plural = "" if len(files) == 1 else "s"
        raise ValueError(f"{folder} holds {len(files)} image file{plural}{unread}; FID needs at least 2")
    return files


def read_batches(files: list[Path], batch_size: int, size: int | None = None, channels: int = 3) -> Iterator[Tensor]:
    """Images as Tensor[B, channels, H, W] in [0, 1] (RGB-converted by default, as pytorch-fid reads them),
    ``batch_size`` files at a time, resized to ``size`` × ``size`` if given (antialiased); a file that cannot be
    read is named. Unresized, a batch of several sizes comes as one tensor per size, in order of first
    appearance: the feature network resizes each image on its own, as clean-fid does, so folders of mixed
    sizes give the same statistics at any ``batch_size`` (pytorch-fid only reads them one at a time)."""
    from visionzoo.train.run import load_images

    batch_size = positive_batch_size(batch_size, "batch_size")  # a negative step would read no file, silently
    for start in range(0, len(files), batch_size):
        if size is not None:
            yield load_images(files[start:start + batch_size], size, channels)
            continue
        batch = load_images(files[start:start + batch_size], None, channels)
        for shape in dict.fromkeys(tuple(image.shape) for image in batch):
            yield torch.stack([image for image in batch if tuple(image.shape) == shape])


def folder_statistics(path: str | Path, features: nn.Module, batch_size: int = 50, size: int | None = None,
                      channels: int = 3, device: torch.device | str = "cpu",
                      autocast: Callable[[], AbstractContextManager] = nullcontext) -> FeatureStatistics:
    """Feature statistics of the images in folder ``path`` (read as :func:`read_batches` says), each batch taken to
    ``device`` (where ``features`` lies) and through ``features`` in an ``autocast()`` context (bf16 autocast, or
    none: fp32)."""
    stats = FeatureStatistics()
    features.eval()
    with torch.no_grad():
        for images in read_batches(image_files(path), batch_size, size, channels):
            with autocast():
                batch = features(images.to(device))
            stats.update(batch.double())
    return stats


def statistics_of(path: str | Path, features: nn.Module, batch_size: int = 50, size: int | None = None,
                  channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of an ``.npz`` statistics file or of a folder of images."""
    if is_statistics(path):
        return load_statistics(path)
    stats = folder_statistics(path, features, batch_size, size, channels)
    return stats.mean.numpy(), stats.covariance.numpy()
