"""Downloading official weights into a hash-checked cache (``create_model(..., pretrained=True)``).

Where files go: ``$VISIONZOO_CACHE``, else ``$TORCH_HOME/visionzoo``, else ``$XDG_CACHE_HOME/visionzoo``, else
``~/.cache/visionzoo`` (torch.hub's order, with our folder in place of its ``torch``).
A file in the cache is used without touching the network and without hashing it again: as torch.hub and timm do, the
sha256 is checked once, on the download, before it is moved into the cache (hashing a ViT-L's 1.2 GB at every use
would read the file twice). A cached file damaged later fails to load, and the error names it and says to delete it
(:func:`visionzoo.models._registry._pretrained_state`). Where the cache lacks a URL's file and torch.hub's cache
(``$TORCH_HOME/hub/checkpoints``, torchvision's and pytorch-fid's downloads) holds one of its name whose sha256 is
the expected one, that file is read in place; a download goes to a temporary file
beside its final name, is checked against the expected sha256 (the full digest, or the prefix
torchvision puts in its file names; without one, at least that it begins as a weights file does) and
only then renamed into place, so the cache never holds a partial or unverified file.

Where files come from:
- a direct URL (torchvision's weights). ``$VISIONZOO_WEIGHTS_MIRROR`` (e.g. ``http://host:8080/pt``)
  replaces the URL's scheme and host, for users behind proxies and for tests on loopback.
- a Hugging Face repository (timm's weights): ``{endpoint}/{repo}/resolve/main/{filename}`` with
  ``endpoint`` from ``$HF_ENDPOINT`` (default ``https://huggingface.co``), fetched by the same
  code as URLs rather than through ``huggingface_hub``: one code path with our hash check and
  cache, no extra dependency, and the endpoint variable that huggingface_hub users already set.
  ``$HF_TOKEN``, when set, is sent for gated repositories, to the endpoint's host only (not to the CDN
  a download is redirected to).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from visionzoo.checkpoint import atomic_write
from visionzoo.models._registry import ModelEntry, Pretrained

log = logging.getLogger(__name__)

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20


class DownloadError(ValueError):
    """Weights that could not be fetched or failed their hash check (a user-facing error)."""


def cache_dir() -> Path:
    """The weights cache: ``$VISIONZOO_CACHE``, else ``$TORCH_HOME/visionzoo``, else ``$XDG_CACHE_HOME/visionzoo``,
    else ``~/.cache/visionzoo``."""
    if os.environ.get("VISIONZOO_CACHE"):
        return Path(os.environ["VISIONZOO_CACHE"]).expanduser()
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "visionzoo"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "visionzoo"
    return Path.home() / ".cache" / "visionzoo"


def weights_url(pretrained: Pretrained) -> str:
    """The URL to fetch, after ``$VISIONZOO_WEIGHTS_MIRROR`` (URLs) or ``$HF_ENDPOINT`` (Hugging Face)."""
    if pretrained.url is not None:
        mirror = os.environ.get("VISIONZOO_WEIGHTS_MIRROR")
        if not mirror:
            return pretrained.url
        parts = urllib.parse.urlsplit(pretrained.url)
        return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
    if pretrained.hf_hub_id is not None:
        endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
        return f"{endpoint.rstrip('/')}/{pretrained.hf_hub_id}/resolve/main/{pretrained.filename}"
    raise ValueError("Pretrained needs a url or an hf_hub_id")


def cached_path(pretrained: Pretrained) -> Path:
    """Where the weights live in the cache: ``NAME`` of the URL (or its ``cache_name``), or ``hf/ORG--REPO/FILENAME``."""
    if pretrained.url is not None:
        return cache_dir() / (pretrained.cache_name or Path(urllib.parse.urlsplit(pretrained.url).path).name)
    if pretrained.hf_hub_id is not None:
        return cache_dir() / "hf" / pretrained.hf_hub_id.replace("/", "--") / pretrained.filename
    raise ValueError("Pretrained needs a url or an hf_hub_id")


def download_pretrained(entry: ModelEntry) -> Path:
    """The local path of ``entry``'s official weights, downloading them once; hash-checked when downloaded
    (:func:`fetch_weights`).

    Raises:
        ValueError: the model has no official weights.
        DownloadError: the download failed (naming the URL) or the file's sha256 differs from the
            expected one (naming the URL and both digests; the file is deleted).
    """
    if entry.pretrained is None:
        raise ValueError(f"model {entry.name!r} has no pretrained weights; build it with pretrained=False")
    headers = {}
    token = os.environ.get("HF_TOKEN")
    if entry.pretrained.url is None and token:
        headers["Authorization"] = f"Bearer {token}"
    return fetch_weights(entry.pretrained, f"{entry.name}'s weights", headers)


def fetch_weights(pretrained: Pretrained, what: str, headers: dict[str, str] | None = None) -> Path:
    """The local path of the weights ``pretrained`` names (``what`` they are, for the log): the cached file, whose
    sha256 was checked when it was downloaded, else a fresh download (:func:`download`), checked before it is cached.

    Raises:
        DownloadError: as :func:`download`.
    """
    target = cached_path(pretrained)
    if not target.is_file():
        return _torch_hub_copy(pretrained) or download(weights_url(pretrained), target, pretrained.sha256, headers)
    log.info("using cached %s %s", what, target)
    return target


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _torch_hub_copy(pretrained: Pretrained) -> Path | None:
    """torch.hub's cached file of the same name (``$TORCH_HOME/hub/checkpoints/NAME``, where torchvision and
    pytorch-fid keep their downloads) when its sha256 is the expected one, read in place rather than copied (the
    same weights twice on disk); else None. A file of that name with another hash, or weights without a known hash,
    are never taken from there."""
    if pretrained.url is None or pretrained.sha256 is None:
        return None
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / cached_path(pretrained).name
    if not path.is_file():
        return None
    if not _sha256(path).startswith(pretrained.sha256.lower()):
        log.info("not using torch.hub's cached %s: its sha256 is not the expected %s", path, _expected(pretrained.sha256))
        return None
    log.info("using torch.hub's cached copy %s (sha256 checked)", path)
    return path


def _expected(sha256: str) -> str:
    """An expected digest as messages show it: a prefix (torchvision's) ends with an ellipsis."""
    return sha256.lower() + ("..." if len(sha256) < 64 else "")


def download(url: str, target: Path, sha256: str | None = None, headers: dict[str, str] | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``target`` atomically, checking its sha256 (full digest or prefix) if given, else that
    it begins as a weights file (torch.save's or safetensors)."""
    log.info("downloading %s to %s", url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # the cache (or a folder above it) is a file, or not writable
        raise DownloadError(
            f"cannot keep downloaded weights in {target.parent}: {error.strerror}; "
            "set VISIONZOO_CACHE to a writable folder"
        ) from None

    def fetch_and_check(tmp: str) -> None:
        with open(tmp, "wb") as out:
            try:
                digest = _fetch(url, out, headers or {}, timeout)
            except DownloadError as error:  # offline, say where a copy the user has is read from
                raise DownloadError(f"{error}; to use the file offline, put a copy of it at {target}") from None
        if sha256 is not None and not digest.startswith(sha256.lower()):
            raise DownloadError(
                f"{url} has sha256 {digest}, expected {_expected(sha256)}; "
                "the download was deleted (a corrupt transfer, or a mirror serving another file)"
            )
        if sha256 is None:
            log.info("%s: no known hash to check; sha256 %s", url, digest)
            start = _not_weights(tmp)
            if start is not None:
                raise DownloadError(
                    f"{url} sent no weights file: it begins {start!r} (an error or login page?); "
                    "the download was deleted"
                )

    # Weights are a cache, not a secret: the file gets the umask's mode, not mkstemp's 0o600; a failed or
    # mismatched download leaves no file behind.
    atomic_write(target, fetch_and_check)
    return target


def _not_weights(path: str) -> bytes | None:
    """The first bytes of the file at ``path`` when it is none of the formats weights come in (torch.save's zip
    or legacy pickle, safetensors), else None: without a known hash, what tells an HTML page served with
    status 200 (a proxy's, a mirror's) from weights before it is cached."""
    with open(path, "rb") as handle:
        start = handle.read(64)
    size = os.path.getsize(path)
    if start.startswith((b"PK\x03\x04", b"\x80")):
        return None
    # safetensors: the header's length as a little-endian u64, then the header, a JSON object
    if len(start) > 8 and start[8:9] == b"{" and 8 < int.from_bytes(start[:8], "little") + 8 <= size:
        return None
    return start


class _SameHostAuthorization(urllib.request.HTTPRedirectHandler):
    """Redirects that keep the Authorization header only on the same host, as requests does: urllib copies every
    header onto the redirected request, and the Hub redirects downloads to its CDN, another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(new.full_url).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _fetch(url: str, out, headers: dict[str, str], timeout: float) -> str:
    """Stream ``url`` into the open file ``out`` with a progress bar; return the sha256 hex digest."""
    request = urllib.request.Request(url, headers={"User-Agent": "visionzoo", **headers})
    hasher = hashlib.sha256()
    received = 0
    try:
        with urllib.request.build_opener(_SameHostAuthorization).open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            name = Path(urllib.parse.urlsplit(url).path).name
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"could not download {url}: {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(f"could not download {url}: {type(error).__name__}: {error}") from None
    if total is not None and received != total:
        raise DownloadError(f"could not download {url}: the transfer stopped after {received} of {total} bytes")
    return hasher.hexdigest()
