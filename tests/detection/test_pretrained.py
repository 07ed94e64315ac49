"""pretrained=True for fasterrcnn_resnet50_fpn through a loopback HTTP server: download, hash check, torchvision's
outputs."""

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn as torchvision_fasterrcnn

from visionzoo.models import _registry as registry
from visionzoo.models import create_model, get_model_entry
from visionzoo.models._hub import DownloadError

NAME = "fasterrcnn_resnet50_fpn"
SMALL = dict(min_size=160, max_size=200)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """torchvision's detector with random weights (sharpened heads: spread scores), saved under the file name of
    its official URL and served from 127.0.0.1; yields the model, the server's URL, the requests and the sha256."""
    root = tmp_path_factory.mktemp("www")
    torch.manual_seed(0)
    reference = torchvision_fasterrcnn(weights=None, weights_backbone=None, **SMALL).eval()
    with torch.no_grad():
        reference.roi_heads.box_predictor.cls_score.weight.mul_(30)
        reference.rpn.head.cls_logits.weight.mul_(30)
    path = root / "models" / Path(get_model_entry(NAME).pretrained.url).name
    path.parent.mkdir()
    torch.save(reference.state_dict(), path)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield reference, f"http://127.0.0.1:{server.server_address[1]}", requests, hashlib.sha256(path.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()
    thread.join()


def test_pretrained_downloads_verifies_and_gives_torchvision_detections(served, monkeypatch, tmp_path):
    reference, url, requests, digest = served
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", url)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    entry = get_model_entry(NAME)
    monkeypatch.setitem(registry._MODELS, NAME, dataclasses.replace(
        entry, pretrained=dataclasses.replace(entry.pretrained, sha256=digest[:8])))
    model = create_model(NAME, pretrained=True, **SMALL).eval()

    file_name = Path(entry.pretrained.url).name
    assert requests == [f"/models/{file_name}"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [file_name]
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)

    image = torch.rand(3, 160, 200, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, expected = model([image])[0], reference([image])[0]
    assert len(expected["boxes"]) >= 20 and torch.equal(got["labels"], expected["labels"])
    # pixel coordinates up to 200, decoded by our own box coder: float32 rounding differs by a few ulps
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=0)


def test_a_file_that_fails_the_registered_hash_is_refused(served, monkeypatch, tmp_path):
    _, url, _, digest = served
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", url)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    # the served weights are random, so torchvision's registered prefix (258fb6c6) cannot match
    with pytest.raises(DownloadError, match=f"sha256 {digest}, expected 258fb6c6"):
        create_model(NAME, pretrained=True, **SMALL)
    assert not any((tmp_path / "cache").glob("*"))
