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


def torchvision_coco_model(**kwargs):
    """What torchvision's fasterrcnn_resnet50_fpn(weights=COCO_V1) builds before loading them: frozen batch norms
    (epsilon 0 once loaded, overwrite_eps), conv1 and layer1 frozen."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91, **kwargs)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """torchvision's detector as it runs its COCO weights, with random weights (sharpened heads: spread scores;
    a stem batch norm of small variance, so that its epsilon shows), saved under the file name of its official
    URL and served from 127.0.0.1; yields the model, the server's URL, the requests and the sha256."""
    root = tmp_path_factory.mktemp("www")
    torch.manual_seed(0)
    weights = torchvision_fasterrcnn(weights=None, weights_backbone=None, **SMALL).state_dict()
    weights["roi_heads.box_predictor.cls_score.weight"] *= 30
    weights["rpn.head.cls_logits.weight"] *= 30
    weights["backbone.body.bn1.running_var"].fill_(1e-4)
    weights["backbone.body.bn1.weight"].fill_(1e-2)
    reference = torchvision_coco_model(**SMALL)
    reference.load_state_dict(weights)
    reference.eval()
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


@pytest.fixture()
def mirrored(served, monkeypatch, tmp_path):
    """The served file as the registered one: downloads go to the local server, the cache to ``tmp_path``, and
    the registry's hash prefix is the file's. Gives ``served``'s reference model and requests, and the entry."""
    reference, url, requests, digest = served
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", url)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    entry = get_model_entry(NAME)
    monkeypatch.setitem(registry._MODELS, NAME, dataclasses.replace(
        entry, pretrained=dataclasses.replace(entry.pretrained, sha256=digest[:8])))
    return reference, requests, entry


def test_pretrained_downloads_verifies_and_gives_torchvision_detections(mirrored, tmp_path):
    reference, requests, entry = mirrored
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


def test_pretrained_fine_tunes_as_torchvision_its_coco_weights(mirrored):
    # before: pretrained=True built batch norms that trained (batch statistics, running statistics overwritten
    # by every training step) with epsilon 1e-5 where torchvision's are frozen with epsilon 0, and trained
    # conv1 and layer1: other detections, other losses
    reference, _, _ = mirrored
    model = create_model(NAME, pretrained=True, **SMALL)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in reference.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("backbone.body.conv1", "backbone.body.layer1")) for name in trainable)
    images = [torch.rand(3, 150, 190, generator=torch.Generator().manual_seed(2))]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0]]), "labels": torch.tensor([3])}]
    reference.train()
    try:
        torch.manual_seed(4)
        expected = reference(images, [dict(t) for t in targets])
        torch.manual_seed(4)
        got = model.train()(images, [dict(t) for t in targets])
    finally:
        reference.eval()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4)
    unfrozen = create_model(NAME, pretrained=True, frozen_batch_norm=False, **SMALL).backbone.body.bn1
    assert isinstance(unfrozen, torch.nn.BatchNorm2d) and unfrozen.eps == 0.0  # given keywords win, one by one


def test_a_file_that_fails_the_registered_hash_is_refused(served, monkeypatch, tmp_path):
    _, url, _, digest = served
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", url)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    # the served weights are random, so torchvision's registered prefix (258fb6c6) cannot match
    with pytest.raises(DownloadError, match=f"sha256 {digest}, expected 258fb6c6"):
        create_model(NAME, pretrained=True, **SMALL)
    assert not any((tmp_path / "cache").glob("*"))


def test_a_torchvision_file_with_batch_norm_counters_loads_into_frozen_batch_norms(tmp_path):
    """A torchvision detector saved with trainable batch norms (weights_backbone=None) loads into its COCO setup,
    whose frozen batch norms drop the counters; ours refused it: '53 unexpected keys: backbone.body.bn1.num_batches_tracked, ...'."""
    from visionzoo.detection.faster_rcnn import COCO_WEIGHTS_ARGS

    torch.manual_seed(0)
    weights = torchvision_fasterrcnn(weights=None, weights_backbone=None, **SMALL).state_dict()
    assert "backbone.body.bn1.num_batches_tracked" in weights
    reference = torchvision_coco_model(**SMALL)
    reference.load_state_dict(weights)
    torch.save(weights, tmp_path / "detector.pth")
    model = create_model(NAME, checkpoint=tmp_path / "detector.pth", **COCO_WEIGHTS_ARGS, **SMALL)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
