"""The help of the commands that run a model: `visionzoo train`, `eval`, `predict`, `sample` and `fid`."""

import pytest

from visionzoo.cli import build_parser


@pytest.mark.parametrize("command", ["eval", "predict", "sample"])
def test_the_help_says_that_inference_runs_in_fp32_unless_told(command):
    """`visionzoo eval --help` showed `--precision {auto,bf16,fp32}` without a word, so a user who read that auto is
    the default (as for train) took eval's fp32 numbers for bf16 ones and could not match a bf16 run's val metrics."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in subparsers.choices[command]._actions if a.dest == "precision")
    assert action.default == "fp32" and "fp32 (default)" in (action.help or "")


@pytest.mark.parametrize("command", ["train", "eval", "predict", "sample", "fid"])
def test_device_is_one_option_with_trains_choices_and_default(command):
    """eval, predict, sample and fid took no --device and ran on the CPU, even on a GPU the run was trained on. They
    take train's option: cpu or cuda, by default cuda where available as train."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in subparsers.choices[command]._actions if a.dest == "device")
    assert action.option_strings == ["--device"] and action.choices == ("cpu", "cuda") and action.default is None
    assert "default: cuda where available, else cpu" in action.help
