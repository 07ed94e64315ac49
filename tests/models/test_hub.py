"""pretrained=True through a local HTTP server on 127.0.0.1: the real download code path, no internet."""

import dataclasses
import hashlib
import http.server
import os
import re
import socket
import stat
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from visionzoo.checkpoint import CheckpointError
from visionzoo.models import _hub as hub
from visionzoo.models import _registry as registry
from visionzoo.models import create_model, get_model_entry
from visionzoo.models._hub import DownloadError, cache_dir, download_pretrained
from visionzoo.models._registry import Pretrained

HF_REPO = "timm/resnet18.tv_in1k"


class Server:
    """Serves a folder on an ephemeral loopback port in a thread, counting the requests per path (and the
    Authorization header each came with); a path in ``redirects`` answers 302 to its location."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        self.authorization: list[str | None] = []
        self.redirects: dict[str, str] = {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                server.authorization.append(self.headers.get("Authorization"))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/short/"):  # promises more bytes than it sends
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A random torchvision resnet18 saved where torchvision's URL and timm's HF repo put it."""
    root = tmp_path_factory.mktemp("www")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    generator = torch.Generator().manual_seed(0)
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    reference.eval()
    url_path = root / "models" / Path(get_model_entry("resnet18").pretrained.url).name
    url_path.parent.mkdir()
    torch.save(reference.state_dict(), url_path)
    hf_path = root / HF_REPO / "resolve" / "main" / "model.safetensors"
    hf_path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(hf_path))
    server = Server(root)
    yield reference, server, hashlib.sha256(url_path.read_bytes()).hexdigest(), hf_path
    server.close()


@pytest.fixture
def mirror(served, tmp_path, monkeypatch):
    reference, server, digest, hf_path = served
    server.requests.clear()
    server.authorization.clear()
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", server.url)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # not the user's torch.hub cache, which pretrained reads
    return served


def with_weights(monkeypatch, name: str, **changes) -> registry.ModelEntry:
    """Point the registry entry ``name`` at other weights for this test only."""
    entry = get_model_entry(name)
    changed = dataclasses.replace(entry, pretrained=dataclasses.replace(entry.pretrained, **changes))
    monkeypatch.setitem(registry._MODELS, name, changed)
    return changed


def test_pretrained_download_gives_torchvision_logits_then_uses_the_cache(mirror, monkeypatch, tmp_path):
    reference, server, digest, _ = mirror
    with_weights(monkeypatch, "resnet18", sha256=digest[:8])  # the file-name prefix torchvision uses
    model = create_model("resnet18", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-5)
    assert server.requests == ["/models/resnet18-f37072fd.pth"]
    cached = tmp_path / "cache" / "resnet18-f37072fd.pth"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]

    again = create_model("resnet18", pretrained=True, num_classes=10)
    assert len(server.requests) == 1  # served from the cache, no request
    assert torch.equal(again.conv1.weight, reference.conv1.weight) and again.fc.weight.shape == (10, 512)


@pytest.mark.parametrize("arguments, error", [(dict(foo=1), "resnet18 takes no argument 'foo'"),
                                             (dict(drop_rate=1.5), "drop_rate (a dropout probability) must be in"),
                                             (dict(global_pool="mean"), "global_pool must be one of")])
def test_arguments_the_model_refuses_download_nothing(mirror, arguments, error):
    """create_model(name, pretrained=True) with a misspelt or bad keyword downloaded the weights (hundreds of MB for
    the larger models) before the builder refused the keyword; the model is now built first."""
    _, server, _, _ = mirror
    with pytest.raises(ValueError, match=re.escape(error)):
        create_model("resnet18", pretrained=True, **arguments)
    assert server.requests == []


def test_full_digest_is_accepted(mirror, monkeypatch, tmp_path):
    _, _, digest, _ = mirror
    entry = with_weights(monkeypatch, "resnet18", sha256=digest)
    path = download_pretrained(entry)
    assert path == tmp_path / "cache" / "resnet18-f37072fd.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_downloaded_weights_get_the_mode_open_gives_under_the_umask(mirror, monkeypatch, tmp_path):
    """They were written 0o600 (mkstemp's mode): a cache shared by a group, or read by another user's job, could
    not be read although the umask allowed it."""
    _, _, digest, _ = mirror
    entry = with_weights(monkeypatch, "resnet18", sha256=digest)
    previous = os.umask(0o022)
    try:
        path = download_pretrained(entry)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_hash_mismatch_is_refused_and_deleted(mirror, tmp_path):
    # the served file is random weights, so torchvision's real hash prefix cannot match
    _, server, digest, _ = mirror
    with pytest.raises(DownloadError) as info:
        create_model("resnet18", pretrained=True)
    message = str(info.value)
    assert f"{server.url}/models/resnet18-f37072fd.pth" in message
    assert digest in message and "expected f37072fd" in message
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_hugging_face_repo_through_the_endpoint(mirror, monkeypatch, tmp_path):
    reference, server, _, hf_path = mirror
    digest = hashlib.sha256(hf_path.read_bytes()).hexdigest()
    monkeypatch.setitem(registry._MODELS, "resnet18", dataclasses.replace(
        get_model_entry("resnet18"), pretrained=Pretrained(hf_hub_id=HF_REPO, filename="model.safetensors", sha256=digest)))
    model = create_model("resnet18", pretrained=True, in_chans=1).eval()
    assert server.requests == [f"/{HF_REPO}/resolve/main/model.safetensors"]
    assert (tmp_path / "cache" / "hf" / "timm--resnet18.tv_in1k" / "model.safetensors").is_file()
    grey = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(grey), reference(grey.expand(1, 3, 64, 64)), atol=1e-4, rtol=1e-4)


def test_a_page_served_instead_of_weights_without_a_hash_is_refused_not_cached(mirror, monkeypatch, tmp_path):
    """timm's weights have no hash to check: an HTML page served with status 200 (a proxy's login page) was cached as
    model.safetensors, and every later create_model failed with "header too large ... delete it to download them
    again", the URL unnamed, and the same page came back on the next download."""
    reference, server, _, hf_path = mirror
    page = hf_path.parents[4] / "timm" / "login-page" / "resolve" / "main" / "model.safetensors"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_bytes(b"<!DOCTYPE html><html><body>Sign in to continue</body></html>")
    monkeypatch.setitem(registry._MODELS, "resnet18", dataclasses.replace(
        get_model_entry("resnet18"), pretrained=Pretrained(hf_hub_id="timm/login-page")))
    with pytest.raises(DownloadError, match=rf"{server.url}/timm/login-page/resolve/main/model.safetensors sent no "
                                            r"weights file: it begins b'<!DOCTYPE html>"):
        create_model("resnet18", pretrained=True)
    assert list((tmp_path / "cache").rglob("*.safetensors")) == []
    # weights without a hash still download: safetensors and torch.save's zip
    monkeypatch.setitem(registry._MODELS, "resnet18", dataclasses.replace(
        get_model_entry("resnet18"), pretrained=Pretrained(hf_hub_id=HF_REPO)))
    assert torch.equal(create_model("resnet18", pretrained=True).conv1.weight, reference.conv1.weight)
    entry = with_weights(monkeypatch, "resnet18", sha256=None)
    assert torch.equal(torch.load(download_pretrained(entry))["conv1.weight"], reference.conv1.weight)


def test_the_hugging_face_token_follows_a_redirect_to_the_same_host_only(mirror, monkeypatch, tmp_path):
    """The Hub answers a download with a redirect to its CDN, another host; urllib copies every header onto the
    redirected request, so $HF_TOKEN went to whatever host the redirect named (requests and huggingface_hub drop
    it there)."""
    reference, server, _, hf_path = mirror
    cdn = Server(hf_path.parents[4])
    try:
        hf_file = f"/{HF_REPO}/resolve/main/model.safetensors"
        server.redirects = {"/timm/renamed/resolve/main/model.safetensors": "/timm/gated/resolve/main/model.safetensors",
                            "/timm/gated/resolve/main/model.safetensors": cdn.url + hf_file}
        monkeypatch.setitem(registry._MODELS, "resnet18", dataclasses.replace(
            get_model_entry("resnet18"), pretrained=Pretrained(hf_hub_id="timm/renamed")))
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        model = create_model("resnet18", pretrained=True)
        assert torch.equal(model.conv1.weight, reference.conv1.weight)
        assert server.authorization == ["Bearer hf_secret", "Bearer hf_secret"]  # the Hub, renamed repository
        assert cdn.requests == [hf_file] and cdn.authorization == [None]
    finally:
        server.redirects = {}
        cdn.close()


def test_network_failures_name_the_url(mirror, monkeypatch, tmp_path):
    _, server, _, _ = mirror
    entry = with_weights(monkeypatch, "resnet18", url="https://download.pytorch.org/missing/resnet18-f37072fd.pth")
    with pytest.raises(DownloadError, match=rf"could not download {server.url}/missing/resnet18-f37072fd.pth: HTTP 404"):
        download_pretrained(entry)

    entry = with_weights(monkeypatch, "resnet18", url="https://download.pytorch.org/short/resnet18-f37072fd.pth")
    with pytest.raises(DownloadError, match="short/resnet18-f37072fd.pth: the transfer stopped after 10 of 1000 bytes"):
        download_pretrained(entry)

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", f"http://127.0.0.1:{closed}")
    with pytest.raises(DownloadError, match=rf"could not download http://127.0.0.1:{closed}/short/.*refused") as info:
        download_pretrained(entry)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert list((tmp_path / "cache").iterdir()) == []



def test_an_offline_failure_names_where_the_file_would_be_read(mirror, monkeypatch, tmp_path):
    """Offline, pretrained=True said 'could not download URL: [Errno -2] Name or service not known' and no more: a
    user holding the file (torchvision's or pytorch-fid's download in torch.hub's folder) could not tell where
    visionzoo looks for it."""
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", f"http://127.0.0.1:{closed}")
    cached = tmp_path / "cache" / "resnet18-f37072fd.pth"
    with pytest.raises(DownloadError, match=rf"could not download http://127.0.0.1:{closed}/models/resnet18-f37072fd.pth: "
                                            rf".*refused; to use the file offline, put a copy of it at {cached}$"):
        create_model("resnet18", pretrained=True)


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_cache_that_is_a_file_is_named_before_any_download(mirror, monkeypatch, tmp_path, below):
    # it failed with a bare FileExistsError / NotADirectoryError from inside atomic_write
    _, server, _, _ = mirror
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache" / below))
    with pytest.raises(DownloadError, match="cannot keep downloaded weights in .*cache.*; set VISIONZOO_CACHE"):
        create_model("resnet18", pretrained=True)
    assert server.requests == [] and (tmp_path / "cache").read_text() == "not a folder"


def test_a_damaged_file_in_the_cache_says_to_delete_it(mirror, tmp_path):
    # it read "truncated or corrupt" with no word that the file was the cache's, nor how to get it again
    _, server, _, _ = mirror
    cached = tmp_path / "cache" / "resnet18-f37072fd.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"PK\x03\x04cut short")
    with pytest.raises(CheckpointError, match=rf"{cached} is truncated or corrupt: .*cached download of resnet18's "
                                              "weights: delete it to download them again"):
        create_model("resnet18", pretrained=True)
    assert server.requests == []

def test_the_cached_file_is_hashed_once_when_downloaded_not_at_every_load(mirror, monkeypatch, tmp_path):
    """pretrained=True read the whole cached file a second time at every use to hash it (a ViT-L's 1.2 GB); torch.hub
    and timm check the hash once, on the download before it is moved into the cache, as we now do. A cached file cut
    short still fails to load, naming it and saying to delete it."""
    _, server, digest, _ = mirror
    with_weights(monkeypatch, "resnet18", sha256=digest[:8])
    hashed = []
    monkeypatch.setattr(hub, "_sha256", lambda path: hashed.append(path) or hashlib.sha256(path.read_bytes()).hexdigest())
    first = create_model("resnet18", pretrained=True)  # downloaded, hashed as it streams in
    again = create_model("resnet18", pretrained=True)
    assert hashed == [] and server.requests == ["/models/resnet18-f37072fd.pth"]
    assert torch.equal(first.conv1.weight, again.conv1.weight)
    cached = tmp_path / "cache" / "resnet18-f37072fd.pth"
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{cached} is truncated or corrupt: .*cached download of resnet18's "
                                              "weights: delete it to download them again"):
        create_model("resnet18", pretrained=True)
    cached.unlink()
    create_model("resnet18", pretrained=True)
    assert len(server.requests) == 2 and hashed == []


def test_model_without_weights_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(registry._MODELS, "resnet18", dataclasses.replace(get_model_entry("resnet18"), pretrained=None))
    with pytest.raises(ValueError, match="'resnet18' has no pretrained weights"):
        create_model("resnet18", pretrained=True)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    """torch.hub's order: XDG_CACHE_HOME was ignored, so weights went to ~/.cache where a cluster sets it elsewhere
    (a home folder with a small quota)."""
    for name in ("VISIONZOO_CACHE", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "visionzoo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "visionzoo"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cache_dir() == tmp_path / "torch" / "visionzoo"
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "vz"))
    assert cache_dir() == tmp_path / "vz"


def test_pretrained_entries_are_validated():
    with pytest.raises(ValueError, match="exactly one of url and hf_hub_id"):
        Pretrained()
    with pytest.raises(ValueError, match="exactly one of url and hf_hub_id"):
        Pretrained(url="https://x/y.pth", hf_hub_id="timm/y")
    with pytest.raises(ValueError, match="hex digits"):
        Pretrained(url="https://x/y.pth", sha256="not-hex")


def test_torch_hubs_cached_copy_of_the_file_is_used_when_its_hash_matches(mirror, monkeypatch, tmp_path, caplog):
    """A torchvision or pytorch-fid user already holds the file in torch.hub's cache ($TORCH_HOME/hub/checkpoints):
    pretrained=True downloaded it again. That copy is now read in place when its sha256 is the expected one (no
    request, nothing copied into our cache); one that differs is never used, and the file is downloaded."""
    reference, server, digest, _ = mirror
    served = Path(get_model_entry("resnet18").pretrained.url).name
    hub_copy = tmp_path / "torch" / "hub" / "checkpoints" / served
    hub_copy.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), hub_copy)
    with_weights(monkeypatch, "resnet18", sha256=hashlib.sha256(hub_copy.read_bytes()).hexdigest()[:8])
    with caplog.at_level("INFO", logger="visionzoo.models._hub"):
        model = create_model("resnet18", pretrained=True)
    assert server.requests == [] and not (tmp_path / "cache").exists()
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert f"using torch.hub's cached copy {hub_copy}" in caplog.text

    with_weights(monkeypatch, "resnet18", sha256=digest[:8])  # the copy is another file than the expected one
    damaged = bytearray(hub_copy.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # still reads as a state dict, with one weight changed
    hub_copy.write_bytes(bytes(damaged))
    create_model("resnet18", pretrained=True)
    assert server.requests == [f"/models/{served}"] and (tmp_path / "cache" / served).is_file()
