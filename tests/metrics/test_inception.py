"""The FID Inception-v3 against pytorch-fid's (same random weights) and clean-fid's resize; its weight download."""

import functools
import hashlib
import http.server
import shutil
import threading
import urllib.parse
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cleanfid.resize import make_resizer
from PIL import Image
from pytorch_fid import inception as pytorch_fid_inception
from test_coco_eval_command import one_line_error

from visionzoo.checkpoint import CheckpointError
from visionzoo.cli import main
from visionzoo.metrics import FID, frechet_distance
from visionzoo.metrics import inception as ours
from visionzoo.metrics.fid import folder_statistics
from visionzoo.metrics.inception import InceptionFeatures, resize_clean
from visionzoo.models._hub import DownloadError, cached_path
from visionzoo.models._registry import Pretrained


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Random FID Inception weights whose batch norms are calibrated on noise (activations stay O(1)), saved
    in pytorch-fid's file layout (torchvision's Inception-v3 keys)."""
    torch.manual_seed(0)
    model = InceptionFeatures(resize="none")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model.pool_features(torch.randn(4, 3, 299, 299))
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference(weights_file, monkeypatch_module):
    """pytorch-fid's InceptionV3 (2048-d pool block) built with those weights instead of its download."""
    state = torch.load(weights_file)
    monkeypatch_module.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    return pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.mark.parametrize("size", [(299, 299), (64, 64), (96, 128)])
def test_legacy_features_equal_pytorch_fid(weights_file, reference, size):
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        expected = reference(images)[0].flatten(1)
        got = InceptionFeatures(weights_file)(images)
    assert got.shape == (3, 2048) and expected.abs().max() > 0.1
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_clean_resize_equals_clean_fid():
    images = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(3))
    resizer = make_resizer("PIL", False, "bicubic", (299, 299))
    for image, got in zip(images, resize_clean(images)):
        uint8 = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        expected = torch.from_numpy(resizer(uint8)).permute(2, 0, 1) / 255
        assert torch.equal(got, expected.float())


def test_clean_features_equal_clean_fids_clean_mode(weights_file, monkeypatch):
    """clean-fid feeds its Inception (x - 128) / 128 of the resized pixels x in [0, 255], not pytorch-fid's
    2 x / 255 - 1; here its InceptionV3W.forward runs pytorch-fid's layers with the same weights."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    state = torch.load(weights_file)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    layers = pytorch_fid_inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    clean_fid = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(clean_fid)
    clean_fid.resize_inside, clean_fid.layers = False, SimpleNamespace(forward=lambda x: layers(x)[0])
    images = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(8))
    resizer = build_resizer("clean")
    resized = torch.stack([torch.from_numpy(resizer((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()))
                           .permute(2, 0, 1) for image in images])  # float32 in [0, 255], as its ResizeDataset
    features = InceptionFeatures(weights_file, resize="clean")
    with torch.no_grad():
        torch.testing.assert_close(features.preprocess(images), (resized - 128) / 128, rtol=0, atol=1e-6)
        expected, got = clean_fid(resized), features(images)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_clean_and_legacy_features_differ_on_a_small_image(weights_file):
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        legacy = InceptionFeatures(weights_file, resize="legacy")(images)
        clean = InceptionFeatures(weights_file, resize="clean")(images)
    assert not torch.allclose(legacy, clean, atol=1e-3)  # the notes' warning: low-level processing moves FID


def test_logits_equal_pytorch_fid_inception_classifier(weights_file, reference):
    images = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(9))
    classifier = pytorch_fid_inception.fid_inception_v3().eval()  # the whole network, with its 1008-way fc
    with torch.no_grad():
        expected = classifier(2 * ours.resize_legacy(images) - 1)
        logits = InceptionFeatures(weights_file).logits(images)
    assert logits.shape == (2, 1008)
    assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_unbiased_logits_are_torchmetrics_inception_score_features(weights_file, monkeypatch):
    """The Inception Score's original code (softmax/logits/MatMul), torch-fidelity and torchmetrics' InceptionScore
    (feature="logits_unbiased") leave the classifier's bias out; torchmetrics' own forward, run here on our layers."""
    from torchmetrics.image import fid as torchmetrics_fid

    features = InceptionFeatures(weights_file, resize="none")
    network = SimpleNamespace(**dict(features.named_children()), features_list=["logits_unbiased"],
                              use_antialias=True, INPUT_IMAGE_SIZE=299, MaxPool_1=torch.nn.MaxPool2d(3, 2),
                              MaxPool_2=torch.nn.MaxPool2d(3, 2), AvgPool=torch.nn.AdaptiveAvgPool2d(1))
    monkeypatch.setattr(torchmetrics_fid, "vassert", lambda *args: None, raising=False)  # torch-fidelity's
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        # torchmetrics maps uint8 pixels x to (x - 128) / 128; these x give exactly our 2 * images - 1
        (expected,) = torchmetrics_fid.NoTrainInceptionV3._torch_fidelity_forward(network, 128 + 128 * (2 * images - 1))
        got = features.logits_unbiased(images)
        torch.testing.assert_close(got, features.logits(images) - features.fc.bias, rtol=0, atol=1e-5)
    assert got.shape == (2, 1008) and features.fc.bias.abs().max() > 0.01
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_pretrained_downloads_checks_the_hash_and_caches(weights_file, tmp_path, monkeypatch):
    served = tmp_path / "www" / urllib.parse.urlsplit(ours.FID_WEIGHTS.url).path.lstrip("/")  # the URL's path
    served.parent.mkdir(parents=True)
    shutil.copy(weights_file, served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # a user's pytorch-fid copy would pass the check
        with pytest.raises(DownloadError, match="sha256"):  # random weights are not the official file
            InceptionFeatures(pretrained=True)
        digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
        monkeypatch.setattr(ours, "FID_WEIGHTS", Pretrained(url=ours.FID_WEIGHTS.url, sha256=digest[:12]))
        model = InceptionFeatures(pretrained=True)
        expected = torch.load(weights_file)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
        assert (tmp_path / "cache" / weights_file.name).is_file()
    finally:
        server.shutdown()
        server.server_close()


def test_a_corrupt_cached_download_says_to_delete_it(tmp_path, monkeypatch):
    """create_model's pretrained files said so; the FID network's said only 'truncated or corrupt'."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    cached = cached_path(ours.FID_WEIGHTS)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=f"{cached}.*truncated or corrupt.*cached download.*delete it"):
        InceptionFeatures(pretrained=True)


def test_a_cached_download_is_loaded_without_hashing_it_again(weights_file, tmp_path, monkeypatch):
    """Every FID run read the cached 91 MB file twice, once to hash it again; its hash is checked when it is
    downloaded (as torch.hub does), and a cached copy cut short still fails to load, saying to delete it."""
    from visionzoo.models import _hub

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    cached = cached_path(ours.FID_WEIGHTS)
    cached.parent.mkdir(parents=True)
    shutil.copy(weights_file, cached)
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    monkeypatch.setattr(ours, "FID_WEIGHTS", Pretrained(url=ours.FID_WEIGHTS.url, sha256=digest[:12]))
    hashed = []
    monkeypatch.setattr(_hub, "_sha256", lambda path: hashed.append(path) or digest)
    InceptionFeatures(pretrained=True)
    assert hashed == []


def test_torchvisions_imagenet_inception_is_refused_as_fid_weights_in_one_line(tmp_path, capsys):
    # before: load_state_dict's multi-line RuntimeError "size mismatch for fc.weight ..." as a traceback
    import torchvision

    imagenet = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), imagenet)
    with pytest.raises(ValueError, match=r"not an FID Inception-v3 weights file .*its fc.weight \[1000, 2048\] "
                                         r"\(FID's \[1008, 2048\]\)"):
        InceptionFeatures(imagenet)
    folder = write_folder(tmp_path / "a", 0, count=2, size=8)
    one_line_error(capsys, ["fid", str(folder), str(folder), "--checkpoint", str(imagenet)], str(imagenet),
                   "differ in shape")


def test_bad_input_is_one_clear_error(weights_file, tmp_path):
    with pytest.raises(ValueError, match="resize must be one of"):
        InceptionFeatures(resize="bicubic")
    with pytest.raises(ValueError, match="either pretrained=True or checkpoint"):
        InceptionFeatures(weights_file, pretrained=True)
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        InceptionFeatures()(torch.rand(2, 1, 64, 64))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not an FID Inception-v3 weights file"):
        InceptionFeatures(other)
    assert np.isfinite(InceptionFeatures(weights_file).fc.weight.detach().numpy()).all()


def test_a_refused_weights_file_leaves_the_network_as_it_was(weights_file, tmp_path):
    """load_weights copied every tensor the file had before it refused the file for the ones it lacked: the network
    it refused to load into was left half replaced."""
    features = InceptionFeatures(weights_file)
    before = {k: v.clone() for k, v in features.state_dict().items()}
    other = {k: v + 1 if v.is_floating_point() else v for k, v in before.items() if k != "fc.bias"}
    torch.save(other, tmp_path / "no_fc_bias.pth")
    with pytest.raises(ValueError, match=r"not an FID Inception-v3 weights file: missing \['fc.bias'\]"):
        features.load_weights(tmp_path / "no_fc_bias.pth")
    assert all(torch.equal(features.state_dict()[k], v) for k, v in before.items())


def write_folder(folder, seed: int, count: int = 8, size: int = 48):
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        pixels = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
        pixels[: size // 2] //= 1 + seed  # the two folders differ in brightness
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return folder


def test_fid_command_matches_pytorch_fid_on_two_folders(weights_file, reference, tmp_path, capsys):
    from pytorch_fid.fid_score import calculate_fid_given_paths

    a, b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    expected = calculate_fid_given_paths([str(a), str(b)], batch_size=4, device="cpu", dims=2048, num_workers=0)
    stats = tmp_path / "a.npz"
    # on the reference's device: by default fid takes a GPU where one is, whose convolutions (cuDNN allows TF32) round otherwise
    argv = ["fid", str(a), str(b), "--checkpoint", str(weights_file), "--batch-size", "4", "--save-stats", str(stats),
            "--device", "cpu"]
    assert main(argv) == 0
    got = float(capsys.readouterr().out.split("FID: ")[1])
    assert expected > 1 and abs(got - expected) <= 1e-3 * expected
    with np.load(stats) as saved:
        assert saved["mu"].shape == (2048,) and saved["sigma"].shape == (2048, 2048)
    assert main(["fid", str(stats), str(b), "--checkpoint", str(weights_file), "--batch-size", "4"]) == 0
    assert abs(float(capsys.readouterr().out.split("FID: ")[1]) - got) <= 1e-9 * got
    one_line_error(capsys, argv, "exists; pass --overwrite")
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    one_line_error(capsys, ["fid", str(tmp_path / "bad.npz"), str(b), "--checkpoint", str(weights_file)],
                   "not an FID statistics file")
    one_line_error(capsys, ["fid", str(tmp_path / "none"), str(b), "--checkpoint", str(weights_file)],
                   "neither an image folder nor an .npz")


def test_clean_folder_statistics_equal_clean_fids_on_a_folder_of_mixed_sizes(weights_file, tmp_path, monkeypatch):
    """clean-fid's get_folder_features(mode="clean") with its InceptionV3W forward ((x - 128) / 128 into the network)
    on pytorch-fid's layers with the same weights; it resizes every image on its own, so sizes may differ."""
    from cleanfid.fid import get_folder_features

    state = torch.load(weights_file)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    layers = pytorch_fid_inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    rng = np.random.default_rng(11)
    for index, (width, height) in enumerate([(40, 40), (52, 30), (64, 64)]):
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{index}.png")
    expected = get_folder_features(str(tmp_path), lambda x: layers((x - 128) / 128)[0].flatten(1), num_workers=0,
                                   batch_size=2, device=torch.device("cpu"), mode="clean", verbose=False)
    stats = folder_statistics(tmp_path, InceptionFeatures(weights_file, resize="clean"), batch_size=2)
    scale = np.abs(expected).max()
    assert scale > 0.1 and np.abs(stats.mean.numpy() - expected.mean(0)).max() <= 1e-4 * scale
    assert np.abs(stats.covariance.numpy() - np.cov(expected, rowvar=False)).max() <= 1e-4 * scale ** 2


def test_fid_accumulator_equals_the_folder_path(weights_file):
    features = InceptionFeatures(weights_file)
    generator = torch.Generator().manual_seed(5)
    real, fake = torch.rand(6, 3, 40, 40, generator=generator), torch.rand(6, 3, 40, 40, generator=generator) * 0.5
    metric = FID(features, batch_size=4)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.no_grad():
        mu1, mu2 = features(real).double(), features(fake).double()
    expected = frechet_distance(mu1.mean(0), torch.cov(mu1.T), mu2.mean(0), torch.cov(mu2.T))
    assert abs(metric.compute() - expected) <= 1e-6 * expected
    only_real = FID(features)
    only_real.update(real, real=True)
    with pytest.raises(ValueError, match="at least 2 generated images, has 0"):
        only_real.compute()
    with pytest.raises(ValueError, match="keep_features=True"):
        only_real.confidence_interval()


def test_fid_bootstraps_its_confidence_interval_over_kept_features():
    pooled = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # 12-d features, any module works
    generator = torch.Generator().manual_seed(6)
    metric = FID(pooled, keep_features=True)
    metric.update(torch.rand(200, 3, 8, 8, generator=generator), real=True)
    metric.update(torch.rand(200, 3, 8, 8, generator=generator) * 0.9, real=False)
    low, high = metric.confidence_interval(samples=50)
    assert low < metric.compute() < high and metric.confidence_interval(samples=50) == (low, high)


def test_features_take_images_of_any_float_dtype(weights_file):
    features = InceptionFeatures(weights_file)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = features(images)
        torch.testing.assert_close(features(images.double()), expected, rtol=0, atol=0)
        for dtype in (torch.float16, torch.bfloat16):  # their rounding of the pixels moves the features a little
            assert (features(images.to(dtype)) - expected).abs().max() <= 0.05 * expected.abs().max()
        assert features.logits(images.double()).dtype == torch.float32
    metric = FID(features)
    metric.update(images.double(), real=True)
    assert metric.real.count == 2


def test_a_bfloat16_network_runs_with_every_resize(weights_file):
    # before: resize="clean" fed the float32 PIL output to a bfloat16 network: "Input type (torch.FloatTensor) and
    # weight type (CPUBFloat16Type) should be the same"
    images = torch.rand(1, 3, 80, 80, generator=torch.Generator().manual_seed(12))
    for resize in ("clean", "legacy"):
        features = InceptionFeatures(weights_file, resize=resize)
        with torch.no_grad():
            expected, got = features(images), features.to(torch.bfloat16)(images)
        assert got.dtype == torch.bfloat16
        assert (got.float() - expected).abs().max() <= 0.05 * expected.abs().max()


def test_features_refuse_images_outside_the_unit_range(weights_file):
    features = InceptionFeatures(weights_file)
    images = torch.rand(2, 3, 40, 40)
    for bad in (images * 255, images * 2 - 1, images.index_fill(2, torch.tensor([0]), float("nan"))):
        with pytest.raises(ValueError, match=r"InceptionFeatures takes images in \[0, 1\]"):
            features(bad)
        with pytest.raises(ValueError, match=r"InceptionFeatures takes images in \[0, 1\]"):
            features.logits(bad)


def test_without_resize_images_below_75_px_are_refused_up_front():
    """They failed deep in the convolutions with "Kernel size can't be greater than actual input size"."""
    features = InceptionFeatures(resize="none")
    with torch.no_grad():
        for height, width in ((74, 74), (74, 300), (300, 74), (32, 32)):
            with pytest.raises(ValueError, match=rf"at least 75×75 px, got {height}×{width}; resize them"):
                features(torch.rand(1, 3, height, width))
            with pytest.raises(ValueError, match="at least 75×75 px"):
                features.logits(torch.rand(1, 3, height, width))
        assert features(torch.rand(1, 3, 75, 75)).shape == (1, 2048)  # the smallest that runs
        assert features(torch.rand(1, 3, 75, 120)).shape == (1, 2048)


def test_random_weights_are_warned_of_and_loaded_ones_are_not(weights_file, caplog):
    # before: InceptionFeatures() (no checkpoint, pretrained=False) gave a random network without a word, and an FID
    # over it that is no FID; pytorch-fid's InceptionV3 and torchmetrics' FID load the FID weights by default
    with caplog.at_level("WARNING", logger="visionzoo.metrics.inception"):
        InceptionFeatures(weights_file)
        assert caplog.records == []
        InceptionFeatures(resize="clean")
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "InceptionFeatures has random weights" in record.getMessage()
    assert "pretrained=True or checkpoint=PATH" in record.getMessage()


def test_bf16_features_run_channels_last_and_fp32_keeps_pytorch_fids_layout(weights_file, reference):
    """In bf16 the network's maps are channels-last (2.5× the images/s on an AMX CPU); fp32 stays contiguous, as
    pytorch-fid runs it, and gives its features exactly."""
    features = InceptionFeatures(weights_file)
    seen = []
    features.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    images = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        expected = features(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = features(images)
        assert torch.equal(expected, reference(images)[0].flatten(1))
    assert seen[0].is_contiguous() and seen[1].is_contiguous(memory_format=torch.channels_last)
    assert (got.float() - expected).abs().max() <= 0.05 * expected.abs().max()
