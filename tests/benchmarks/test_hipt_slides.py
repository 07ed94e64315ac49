"""benchmarks/hipt_slides.py: the --tiles settings choose the slides' tiles, the encoder and the results file."""

import sys

import pytest
from benchmark_helpers import BENCHMARKS, load


class _Checked(Exception):
    pass


def _out_and_slides(monkeypatch, argv):
    """The results path main() checks and the ShapeSlides settings it would build, without any work."""
    module = load("hipt_slides")
    seen = {}

    def check(parser, out, script):
        seen["out"] = out

    def slides(split, **settings):
        seen["slides"] = settings
        raise _Checked

    monkeypatch.setattr(module, "existing_results", check)
    monkeypatch.setattr(module, "ShapeSlides", slides)
    monkeypatch.setattr(sys, "argv", ["hipt_slides.py", *argv])
    with pytest.raises(_Checked):
        module.main()
    return seen["out"], seen["slides"]


def test_easy_tiles_write_their_own_results_and_the_default_is_unchanged(monkeypatch, tmp_path):
    out, slides = _out_and_slides(monkeypatch, [])
    assert out == BENCHMARKS / "results" / "hipt_slides.json"
    assert (slides["object_sizes"], slides["background"]) == (None, "textured")
    out, slides = _out_and_slides(monkeypatch, ["--tiles", "easy"])
    assert out == BENCHMARKS / "results" / "hipt_slides_easy.json"
    assert (slides["object_sizes"], slides["background"]) == (("large",), "plain")
    out, _ = _out_and_slides(monkeypatch, ["--tiles", "easy", "--out", str(tmp_path / "trial.json")])
    assert out == tmp_path / "trial.json"
    out, slides = _out_and_slides(monkeypatch, ["--encoder", "scaled"])
    assert out == BENCHMARKS / "results" / "hipt_slides_scaled.json" and slides["background"] == "textured"
    out, _ = _out_and_slides(monkeypatch, ["--tiles", "easy", "--encoder", "vit256"])
    assert out == BENCHMARKS / "results" / "hipt_slides_easy_vit256.json"
    out, _ = _out_and_slides(monkeypatch, ["--tiles", "easy", "--encoder", "scaled"])
    assert out == BENCHMARKS / "results" / "hipt_slides_easy.json"


@pytest.mark.parametrize("flag", ["--tiles", "--encoder"])
def test_an_unknown_setting_is_one_line(monkeypatch, capsys, flag):
    monkeypatch.setattr(sys, "argv", ["hipt_slides.py", flag, "hard"])
    with pytest.raises(SystemExit) as stop:
        load("hipt_slides").main()
    assert stop.value.code == 2
    assert f"argument {flag}: invalid choice: 'hard'" in capsys.readouterr().err


def test_the_textured_tiles_train_hipts_vit256_and_the_easy_ones_the_scaled_down_one():
    module = load("hipt_slides")
    assert (module.TILES["textured"].encoder, module.TILES["easy"].encoder) == ("vit256", "scaled")
    assert module.ENCODERS["vit256"].args == {}
    assert module.ENCODERS["vit256"].name() == "hipt_vit256_small (patch 16, 12 blocks, 384 wide, feature: [CLS])"
    assert module.ENCODERS["scaled"].name() == (
        "hipt_vit256_small scaled down (patch 8, 4 blocks, 192 wide, feature: max-pooled patch tokens)")


def test_the_tile_encoder_trains_on_the_cpu_as_the_rest_of_the_benchmark(monkeypatch, tmp_path):
    """On a GPU machine the engine's default put the tile encoder on the GPU while the benchmark's ViT-4K and its
    checks ran on the CPU, so the run failed at the first pool of tiles."""
    module = load("hipt_slides")
    seen = {}

    def stop(train, val, config, model_args):
        seen["device"] = config.device
        raise _Checked

    monkeypatch.setattr(module, "train_encoder", stop)
    monkeypatch.setattr(module, "ENCODER_TILES", {"train": 2, "val": 2, "test": 2})
    with pytest.raises(_Checked):
        module.train_tile_encoder(module.TILES["easy"], module.ENCODERS["scaled"], tmp_path)
    assert seen["device"] == "cpu"
