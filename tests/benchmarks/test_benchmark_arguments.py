"""The benchmark scripts refuse a bad count or output path when their arguments are parsed, in argparse's one
line and exit status 2, before any work: not a run of zero steps written out as a result, nor a traceback
(IsADirectoryError) after minutes of measuring."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# The functions that do each script's work: any call means the arguments were not refused up front.
WORK = {
    "generative": ("tokenizer", "prior", "image_gpt", "dcgan", "baselines", "codebook_stats"),
    "precision": ("measure", "matmul_gflops"),
    "backbones": ("parameter_counts", "logit_differences", "speed"),
    "detection": ("conformance", "shapes", "proposal_detector"),
    "hipt_slides": ("ShapeSlides",),
    "fid": ("run",),
}


def load(name):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(monkeypatch, capsys, name, argv):
    module = load(name)

    def started(*args, **kwargs):
        raise AssertionError(f"{name}.py started its work with {argv}")

    for function in WORK[name]:
        monkeypatch.setattr(module, function, started)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("name, argv, flag", [
    ("generative", ["--model", "vqvae", "--minutes", "0"], "--minutes"),
    ("generative", ["--model", "vqvae", "--minutes", "-1"], "--minutes"),
    ("generative", ["--model", "image_gpt", "--seeds", "0"], "--seeds"),
    ("generative", ["--model", "vqvae", "--batch-size", "0"], "--batch-size"),
    ("precision", ["--steps", "1"], "--steps"),
    ("precision", ["--repeats", "0"], "--repeats"),
    ("backbones", ["--part", "speed", "--batch", "0"], "--batch"),
    ("detection", ["--job", "shapes", "--minutes", "0"], "--minutes"),
    ("hipt_slides", ["--threads", "-2"], "--threads"),
    ("fid", ["--images", "0"], "--images"),
])
def test_a_zero_or_negative_count_is_one_line_before_any_work(monkeypatch, capsys, name, argv, flag):
    error = refused(monkeypatch, capsys, name, argv)
    assert flag in error and ("positive" in error or "at least 2" in error), error


@pytest.mark.parametrize("name, argv", [
    ("generative", ["--model", "vqvae", "--minutes", "1"]),
    ("precision", []),
    ("backbones", ["--part", "params"]),
    ("hipt_slides", []),
])
def test_an_output_path_that_is_a_folder_or_inside_a_file_is_one_line_before_any_work(
        monkeypatch, capsys, tmp_path, name, argv):
    error = refused(monkeypatch, capsys, name, [*argv, "--out", str(tmp_path)])
    assert "is a folder" in error, error
    (tmp_path / "file").write_text("x")
    error = refused(monkeypatch, capsys, name, [*argv, "--out", str(tmp_path / "file" / "result.json")])
    assert "is a file, not a folder" in error, error
