"""The benchmark scripts refuse a bad count or output path when their arguments are parsed, in argparse's one
line and exit status 2, before any work: not a run of zero steps written out as a result, nor a traceback
(IsADirectoryError) after minutes of measuring."""

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from benchmark_helpers import BENCHMARKS, WORK, load


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
    ("generative", ["--model", "vqvae", "--lr", "-1"], "--lr"),  # was a ValueError traceback from the engine
    ("precision", ["--steps", "1"], "--steps"),
    ("precision", ["--repeats", "0"], "--repeats"),
    ("backbones", ["--part", "speed", "--batch", "0"], "--batch"),
    ("hipt_region", ["--side", "0"], "--side"),
    ("hipt_region", ["--repeats", "0"], "--repeats"),
    ("detection", ["--job", "shapes", "--minutes", "0"], "--minutes"),
    ("hipt_slides", ["--threads", "-2"], "--threads"),
    ("fid", ["--images", "0"], "--images"),
    ("fid", ["--images", "1"], "--images"),  # was minutes in pytorch-fid's sqrtm of NaN covariances, then a traceback
])
def test_a_zero_or_negative_count_is_one_line_before_any_work(monkeypatch, capsys, name, argv, flag):
    error = refused(monkeypatch, capsys, name, argv)
    assert flag in error and ("positive" in error or "at least 2" in error), error


def test_a_region_of_partial_tiles_is_one_line_before_any_work(monkeypatch, capsys):
    error = refused(monkeypatch, capsys, "hipt_region", ["--side", "1000"])
    assert "--side" in error and "multiple of HIPT's 256 px tiles" in error, error


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


def test_an_only_pattern_that_matches_no_case_is_one_line_before_any_work(monkeypatch, capsys):
    """attention.py --only vit_tinny measured nothing and wrote a results file of no rows over the README's."""
    error = refused(monkeypatch, capsys, "attention", ["--only", "vit_tinny", "--only", "nothing"])
    assert "--only vit_tinny nothing matches no case" in error and "vit_tiny" in error, error


OUTPUT_SCRIPTS = [
    ("generative", ["--model", "vqvae", "--minutes", "1"]),
    ("precision", []),
    ("backbones", ["--part", "params"]),
    ("hipt_slides", []),
    ("fid", []),
]


@pytest.mark.parametrize("name, argv", OUTPUT_SCRIPTS)
def test_an_output_path_not_named_json_is_one_line_before_any_work(monkeypatch, capsys, tmp_path, name, argv):
    """backbones.py --out README.md wrote its JSON over the file (and --out notes.txt holding text was a
    JSONDecodeError traceback)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    error = refused(monkeypatch, capsys, name, [*argv, "--out", str(notes)])
    assert str(notes) in error and "ending in .json" in error, error
    assert notes.read_text() == "my notes"


def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: a read-only one, or /sys for root (who may write anywhere
    else)."""
    folder = Path("/sys") if os.geteuid() == 0 else tmp_path / "read-only"
    if folder != Path("/sys"):
        folder.mkdir()
        folder.chmod(0o555)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return folder
    pytest.skip(f"{folder} is writable here")


@pytest.mark.parametrize("name, argv", OUTPUT_SCRIPTS)
def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(monkeypatch, capsys, tmp_path, name, argv):
    """It was a PermissionError traceback after the whole measurement."""
    target = unwritable_folder(tmp_path) / "result.json"
    error = refused(monkeypatch, capsys, name, [*argv, "--out", str(target)])
    assert f"{target} cannot be written" in error, error


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_backbones_refuses_an_existing_out_that_is_not_its_results_and_keeps_it(monkeypatch, capsys, tmp_path, content):
    """backbones.py adds its section to --out's JSON object: a file holding anything else was a traceback
    (JSONDecodeError, or TypeError for a list) after the work."""
    out = tmp_path / "other.json"
    out.write_text(content)
    error = refused(monkeypatch, capsys, "backbones", ["--part", "params", "--out", str(out)])
    assert f"--out {out}" in error and "give another --out" in error, error
    assert out.read_text() == content



def _stub_measurements(module, name, monkeypatch):
    """Each script's measuring functions replaced by constant ones; returns (row key, every key in order, the
    keys an --only run of one part measures, its argv)."""
    if name == "attention":
        monkeypatch.setattr(module, "time_case", lambda build, written_out, repeats: 0.002 if written_out else 0.001)
        monkeypatch.setattr(module, "default_path", lambda build: "fused")
        cases = list(module.CASES)
        return "case", cases, [cases[1]], ["--only", cases[1], "--repeats", "1"]
    if name == "precision":
        monkeypatch.setattr(module, "measure", lambda config, precision, steps, keep_freed=False: {"samples_per_s": 2.0})
        monkeypatch.setattr(module, "matmul_gflops", lambda dtype: 1.0)
        first = next(iter(module.CONFIGS))  # an earlier row of a config it does not know is kept too, last
        return "config", [module.MATMUL, *module.CONFIGS, "gone"], [module.MATMUL, first], ["--only", first]
    fake = [module.row(part, "n", "ref", 2.0, 1.0, True, 0.0, 1, 1) for part in module.PARTS]
    for part, fake_row in zip(module.PARTS, fake):
        monkeypatch.setattr(module, f"{part}_rows", lambda *args, fake_row=fake_row: [fake_row])
    return "part", list(module.PARTS), ["mean_ap"], ["--only", "mean_ap", "--quick"]


@pytest.mark.parametrize("name", ["attention", "precision", "metrics"])
def test_an_only_run_replaces_its_rows_and_keeps_the_files_others(monkeypatch, capsys, tmp_path, name):
    """attention.py had no --out, and attention.py, precision.py and metrics.py --only wrote the whole results
    file with the rows they measured alone, dropping the README's other rows."""
    module = load(name)
    key, order, measured, argv = _stub_measurements(module, name, monkeypatch)
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"rows": [{key: value, "earlier": True} for value in order]}))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv, "--out", str(out)])
    module.main()
    rows = json.loads(out.read_text())["rows"]
    assert [row[key] for row in rows] == order  # each row in its place
    assert [row[key] for row in rows if not row.get("earlier")] == measured
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    error = refused(monkeypatch, capsys, name, [*argv, "--out", str(notes)])
    assert "ending in .json" in error and notes.read_text() == "mine"


class _Parsed(Exception):
    pass


def parsed_arguments(monkeypatch, module) -> argparse.Namespace:
    """The arguments ``module.main()`` parses from ``sys.argv``, stopping it there (before any work)."""
    parsed = []
    parse_args = module.argparse.ArgumentParser.parse_args

    def record(parser, *args, **kwargs):
        parsed.append(parse_args(parser, *args, **kwargs))
        raise _Parsed

    monkeypatch.setattr(module.argparse.ArgumentParser, "parse_args", record)
    with pytest.raises(_Parsed):
        module.main()
    return parsed[0]


@pytest.mark.parametrize("name", ["attention", "backbones", "hipt_slides", "ops", "selective_search", "precision",
                                  "fid"])
def test_the_default_out_is_the_results_folder_from_any_working_folder(monkeypatch, tmp_path, name):
    """precision.py's default --out was the relative benchmarks/results/precision.json: run from benchmarks/ (or any
    other folder) it wrote a new benchmarks/benchmarks/results/precision.json, and --only kept no earlier row."""
    module = load(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"{name}.py"])
    assert Path(parsed_arguments(monkeypatch, module).out).resolve().parent == BENCHMARKS / "results"


def test_image_gpt_probe_plots_go_beside_out_not_into_the_results(monkeypatch, tmp_path):
    """generative.py --model image_gpt --out trial.json (a trial, with --runs elsewhere) still drew its probe plots
    over benchmarks/results/image_gpt_probes_*.png, the README's pictures. Beside --out, and named after it: a trial
    whose --out is in benchmarks/results (a result the README quotes) must not draw over them either."""
    import types

    import visionzoo.generative.image_gpt as image_gpt
    import visionzoo.metrics.probe as probe

    module = load("generative")
    dataset = [(torch.zeros(1, 8, 8), 3)] * 4
    task = types.SimpleNamespace(evaluate=lambda *args: {"nll": 1.0})
    setup = types.SimpleNamespace(model=torch.nn.Identity(), task=task, splits={"train": dataset, "test": dataset})
    result = types.SimpleNamespace(steps=1, train_seconds=0.1)
    monkeypatch.setattr(module, "train", lambda *args, **kwargs: (setup, result, 0.1))
    monkeypatch.setattr(module, "sampler_fid", lambda *args, **kwargs: ({"fid": 1.0, "ci_low": 0.9, "ci_high": 1.1}, 0.01))
    monkeypatch.setattr(image_gpt, "layer_features", lambda model, x: [x.flatten(1)] * 3)
    monkeypatch.setattr(image_gpt, "raw_pixel_probe", lambda *args: 0.5)
    monkeypatch.setattr(probe, "linear_probe_accuracy", lambda *args: 0.25)
    plots = []
    monkeypatch.setattr(image_gpt, "plot_probe_curve", lambda curves, raw, path, title: plots.append(Path(path)))
    out = tmp_path / "trial" / "image_gpt.json"
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "image_gpt_small", "--data", "digits", "--seeds", "1",
                                      "--out", str(out), "--runs", str(tmp_path / "runs")])
    module.main()
    assert plots == [out.parent / "image_gpt_probes_digits_image_gpt.png"] and out.parent.is_dir()
    assert json.loads(out.read_text())["rows"]["digits"]["targets"]["digit"]["plot"] == str(plots[0])


def test_fid_writes_its_result_to_out(monkeypatch, tmp_path):
    """fid.py had no --out: a trial (--images 2) always replaced benchmarks/results/fid.json, the README's numbers."""
    module = load("fid")
    monkeypatch.setattr(module, "run", lambda images: {"fid_folders": {"images_per_folder": images}})
    out = tmp_path / "trial" / "fid.json"
    monkeypatch.setattr(sys, "argv", ["fid.py", "--images", "2", "--out", str(out)])
    module.main()
    assert json.loads(out.read_text())["fid_folders"] == {"images_per_folder": 2}


def test_detection_writes_its_results_into_out_dir(monkeypatch, capsys, tmp_path):
    """detection.py had no way to write elsewhere: a trial (--minutes 0.1) replaced
    benchmarks/results/detection_shapes.json, the README's numbers."""
    module = load("detection")
    monkeypatch.setattr(module, "shapes", lambda minutes, batch_size: {"minutes": minutes})
    out = tmp_path / "trial"
    monkeypatch.setattr(sys, "argv", ["detection.py", "--job", "shapes", "--minutes", "0.1", "--out-dir", str(out)])
    module.main()
    assert json.loads((out / "detection_shapes.json").read_text())["minutes"] == 0.1
    (tmp_path / "file").write_text("x")
    error = refused(monkeypatch, capsys, "detection", ["--job", "shapes", "--out-dir", str(tmp_path / "file")])
    assert "is a file" in error, error
    error = refused(monkeypatch, capsys, "detection", ["--job", "shapes", "--out-dir", str(tmp_path / "file" / "d")])
    assert "is a file, not a folder" in error, error


@pytest.mark.parametrize("name, argv", [
    ("ops", ["--one"]),
    ("metrics", ["--one-t", "--quick"]),
    ("selective_search", ["--thr", "2", "--images", "1"]),
])
def test_a_shortened_flag_that_the_script_reads_before_parsing_is_refused(monkeypatch, capsys, name, argv):
    """ops.py and metrics.py choose their clock, and selective_search.py the BLAS threads, from sys.argv before
    argparse runs: ops.py --one ran on one thread but timed wall clock and wrote "CPU time, one thread" into the
    results, as argparse took --one for --one-thread; the scripts now take their flags spelled out only."""
    error = refused(monkeypatch, capsys, name, argv)
    assert "unrecognized arguments" in error and argv[0] in error, error


def test_train_backbones_writes_its_results_into_out_dir(monkeypatch, capsys, tmp_path):
    """train_backbones.py had no way to write elsewhere: a trial of a job always replaced
    benchmarks/results/train_JOB.json, the README's numbers."""
    module = load("train_backbones")
    monkeypatch.setattr(module, "label_ambiguity_job", lambda: {"images": 3})
    out = tmp_path / "trial"
    monkeypatch.setattr(sys, "argv", ["train_backbones.py", "--job", "shapes64-label-ambiguity", "--out-dir", str(out)])
    module.main()
    assert json.loads((out / "train_shapes64-label-ambiguity.json").read_text())["images"] == 3
    (tmp_path / "file").write_text("x")
    error = refused(monkeypatch, capsys, "train_backbones", ["--job", "vit-digits32", "--out-dir", str(tmp_path / "file")])
    assert "is a file" in error, error


@pytest.mark.parametrize("argv, flag", [
    (["--disc-weight", "nan"], "--disc-weight"),  # trained with a NaN GAN weight, no error
    (["--disc-weight", "inf"], "--disc-weight"),
    (["--perceptual-weight", "-1"], "--perceptual-weight"),  # a ValueError traceback from the task
])
def test_generative_refuses_loss_weights_that_are_not_finite_and_non_negative(monkeypatch, capsys, argv, flag):
    error = refused(monkeypatch, capsys, "generative", ["--model", "vqgan", *argv])
    assert flag in error and "finite number >= 0" in error, error


@pytest.mark.parametrize("argv, flag", [
    (["--model", "vqvae", "--disc-start", "100"], "--disc-start"),  # recorded in the results as if it had applied
    (["--model", "vqgan_transformer", "--batch-size", "32"], "--batch-size"),  # trained at 64
    (["--model", "dcgan", "--lr", "1e-4"], "--lr"),
    (["--model", "vqvae", "--disc-weight", "0"], "--disc-weight"),
    (["--model", "vqgan_transformer", "--model-arg", "depth=2"], "--model-arg"),
    (["--model", "dcgan", "--seeds", "2"], "--seeds"),
    (["--model", "vqvae", "--tokenizer", "vit_vqgan"], "--tokenizer"),
    (["--model", "baselines", "--untrained"], "--untrained"),
])
def test_generative_refuses_a_flag_the_model_does_not_use_before_any_work(monkeypatch, capsys, argv, flag):
    """generative.py took every flag with every --model and ignored those the model does not use: --model
    vqgan_transformer --batch-size 32 trained at 64 without a word."""
    error = refused(monkeypatch, capsys, "generative", argv)
    assert f"{flag} is not used by --model {argv[1]}" in error, error


def test_generative_hands_the_tokenizer_flags_and_their_defaults_on(monkeypatch, tmp_path):
    module = load("generative")
    calls = []
    monkeypatch.setattr(module, "tokenizer", lambda *args: calls.append(args) or {"rows": {}})
    monkeypatch.setattr(module, "prior", lambda *args: calls.append(args) or {"rows": {}})
    for argv in (["--model", "vqgan", "--disc-start", "40%", "--batch-size", "16", "--opt-betas", "0.9", "0.99",
                  "--model-arg", "code_dim=32"], ["--model", "vqvae"], ["--model", "vqgan_transformer"]):
        monkeypatch.setattr(sys, "argv", ["generative.py", *argv, "--out", str(tmp_path / "result.json")])
        module.main()
    (kind, _, _, losses, batch, model_args, lr, betas), (kind2, _, _, _, batch2, *_), (tokenizer, *_) = calls
    assert (kind, losses["disc_start"], batch, model_args, lr, betas) == ("vqgan", 0.4, 16, {"code_dim": 32}, None,
                                                                           (0.9, 0.99))
    assert (kind2, batch2, tokenizer) == ("vqvae", 64, "vqgan")


def test_generative_hands_model_args_on_to_image_gpt_trained_or_untrained(monkeypatch, tmp_path):
    """--model-arg was a tokenizer flag only: Image GPT's probe curve could not be measured for another dropout or
    depth than the registered one."""
    module = load("generative")
    calls = []
    monkeypatch.setattr(module, "image_gpt", lambda *args: calls.append(("trained", args)) or {"rows": {}})
    monkeypatch.setattr(module, "untrained_image_gpt", lambda *args: calls.append(("untrained", args)) or {"rows": {}})
    for extra in ([], ["--untrained"]):
        monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "image_gpt", "--model-arg", "drop=0.25", *extra,
                                          "--out", str(tmp_path / "trial.json")])
        module.main()
    (kind, trained), (kind2, untrained) = calls
    assert (kind, trained[-1], kind2, untrained[-1]) == ("trained", {"drop": 0.25}, "untrained", {"drop": 0.25})
    assert trained[5] == "_trial"  # the probe plots named after --out, not over the README's


def test_generative_refuses_a_runs_folder_that_is_a_file_before_any_work(monkeypatch, capsys, tmp_path):
    """--runs FILE was a NotADirectoryError traceback once the first run folder was made."""
    (tmp_path / "file").write_text("x")
    error = refused(monkeypatch, capsys, "generative", ["--model", "vqvae", "--runs", str(tmp_path / "file")])
    assert "--runs" in error and "is a file" in error, error


def test_selective_search_refuses_more_images_than_the_val_split_has_before_any_work(monkeypatch, capsys):
    """--images 501 drew the 500 val scenes, then stopped with an IndexError traceback."""
    error = refused(monkeypatch, capsys, "selective_search", ["--images", "501"])
    assert "--images 501" in error and "500" in error, error


@pytest.mark.parametrize("argv, name", [([], "metrics.json"), (["--one-thread"], "metrics_one_thread.json")])
def test_metrics_default_out_is_the_results_folder_from_any_working_folder(monkeypatch, tmp_path, argv, name):
    """metrics.py's default --out was the relative benchmarks/results/metrics.json: run from benchmarks/ it wrote a
    new benchmarks/benchmarks/results/metrics.json, and --only kept no earlier row."""
    module = load("metrics")
    opened = []

    def record(parser, path, script):
        opened.append(Path(path))
        raise _Parsed

    monkeypatch.setattr(module, "existing_results", record)
    monkeypatch.setattr(module.torch, "set_num_threads", lambda threads: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["metrics.py", *argv])
    with pytest.raises(_Parsed):
        module.main()
    assert opened[0].resolve() == BENCHMARKS / "results" / name


def test_codebook_stats_without_tokenizers_writes_nothing(monkeypatch, capsys, tmp_path):
    """With no trained tokenizer under --runs (e.g. run from another folder than the one holding runs/bench),
    --model codebook_stats wrote a results file of no rows over the README's."""
    module = load("generative")
    out = tmp_path / "codebook_stats.json"
    out.write_text('{"rows": {"vqgan digits": {}}}')
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "codebook_stats", "--runs", str(tmp_path / "none"),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert f"no tokenizer checkpoint under {tmp_path / 'none'}" in str(exit_info.value.code)
    assert out.read_text() == '{"rows": {"vqgan digits": {}}}'


def test_selective_search_measures_every_method_named_once(monkeypatch, tmp_path):
    """--methods ours-single --methods opencv-fast measured opencv-fast alone (the last option replaced the first),
    and --methods ours-single,ours-single measured it twice, two rows of one method."""
    module = load("selective_search")
    measured = []

    def evaluate(method, samples, max_proposals, top):
        measured.append(method)
        return {"method": method, "recall@0.5": 1.0, "recall@0.7": 1.0, "mabo": 1.0, f"mabo_first_{top}": 1.0,
                "proposals_per_image": 1.0, "cpu_s_per_image": 0.0, "wall_s_per_image": 0.0, "ground_truth_boxes": 1}

    monkeypatch.setattr(module, "evaluate", evaluate)
    out = tmp_path / "ss.json"
    monkeypatch.setattr(sys, "argv", ["selective_search.py", "--images", "1", "--methods", "ours-single,ours-single",
                                      "--methods", "opencv-fast", "--out", str(out)])
    module.main()
    assert measured == ["ours-single", "opencv-fast"]
    assert [row["method"] for row in json.loads(out.read_text())["rows"]] == measured


@pytest.mark.parametrize("argv, expected", [(["--quick", "--repeats", "3"], 3), (["--quick"], 2), ([], 5)])
def test_ops_quick_leaves_a_given_repeats(monkeypatch, tmp_path, argv, expected):
    """ops.py --quick --repeats 3 measured the best of 2: --quick replaced the --repeats given beside it."""
    module = load("ops")
    calls = []
    monkeypatch.setattr(module, "run", lambda repeats: calls.append(repeats) or [])
    monkeypatch.setattr(sys, "argv", ["ops.py", *argv, "--out", str(tmp_path / "ops.json")])
    module.main()
    assert calls == [expected]


@pytest.mark.parametrize("argv, expected", [(["--quick", "--repeats", "2"], 2), (["--quick"], 1), ([], 3)])
def test_metrics_quick_leaves_a_given_repeats(monkeypatch, tmp_path, argv, expected):
    """metrics.py --quick --repeats 2 measured one repeat: --quick replaced the --repeats given beside it."""
    module = load("metrics")
    calls = []
    monkeypatch.setattr(module, "mean_ap_rows", lambda images, dets, repeats: calls.append(repeats) or [])
    monkeypatch.setattr(sys, "argv", ["metrics.py", "--only", "mean_ap", *argv, "--out", str(tmp_path / "m.json")])
    module.main()
    assert calls == [expected]


@pytest.mark.parametrize("argv, message", [
    (["--part", "speed", "--device", "cuda"], "no CUDA device"),
    (["--part", "logits", "--device", "cuda"], "--part speed only"),
])
def test_backbones_device_cuda_is_refused_where_it_cannot_measure(monkeypatch, capsys, argv, message):
    """--device cuda (the GPU's throughput beside timm's) is one line before any work where no GPU is, and for the
    parts that are the same on every device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: "no CUDA" not in message)
    error = refused(monkeypatch, capsys, "backbones", argv)
    assert message in error, error


def test_backbones_speed_synchronizes_a_cuda_device_before_the_clock_stops(monkeypatch):
    """A CUDA call only queues its work: without a synchronize the GPU's throughput would time the launches."""
    module = load("backbones")
    calls = []
    monkeypatch.setattr(module.torch.cuda, "synchronize", lambda device=None: calls.append(device))
    cuda = torch.device("cuda")
    assert module.synchronized(lambda: calls.append("work"), cuda)() is not None
    assert calls == ["work", cuda]
    cpu_fn = module.synchronized(lambda: "done", torch.device("cpu"))
    assert cpu_fn() == "done"


class _Trained(Exception):
    """Raised by a stand-in run_training with the configuration it was given."""


def _capture_training(monkeypatch, module):
    def run_training(model, data, config, *args, **kwargs):
        raise _Trained(config)

    monkeypatch.setattr(module, "run_training", run_training)


@pytest.mark.parametrize("argv, message", [
    (["--model", "vqvae", "--steps", "10", "--minutes", "2"], "--steps and --minutes are two budgets"),
    (["--model", "baselines", "--minutes", "2"], "--minutes sets the training; --model baselines trains nothing"),
    (["--model", "codebook_stats", "--steps", "5"], "--steps sets the training; --model codebook_stats"),
    (["--model", "image_gpt", "--untrained", "--minutes", "1"], "--model image_gpt --untrained trains nothing"),
    (["--model", "vqvae", "--steps", "0"], "--steps"),
])
def test_generative_refuses_a_budget_it_would_not_follow(monkeypatch, capsys, argv, message):
    """--minutes with --model baselines (which trains nothing) was taken without a word."""
    error = refused(monkeypatch, capsys, "generative", argv)
    assert message in error, error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
@pytest.mark.parametrize("name, argv", [("generative", ["--model", "vqvae"]),
                                        ("train_backbones", ["--job", "vit-digits32"])])
def test_device_cuda_without_a_gpu_is_one_line_before_any_work(monkeypatch, capsys, name, argv):
    error = refused(monkeypatch, capsys, name, [*argv, "--device", "cuda"])
    assert "no CUDA device is available" in error, error


def test_generative_steps_replace_the_minutes_of_every_run(monkeypatch, tmp_path):
    module = load("generative")
    _capture_training(monkeypatch, module)
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "vqvae", "--steps", "123", "--data", "digits",
                                      "--runs", str(tmp_path), "--out", str(tmp_path / "r.json")])
    with pytest.raises(_Trained) as trained:
        module.main()
    config = trained.value.args[0]
    assert (config.max_steps, config.minutes, config.device) == (123, None, "cpu")
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "vqvae", "--data", "digits",
                                      "--runs", str(tmp_path), "--out", str(tmp_path / "r.json")])
    module = load("generative")
    _capture_training(monkeypatch, module)
    with pytest.raises(_Trained) as trained:
        module.main()
    assert (trained.value.args[0].max_steps, trained.value.args[0].minutes) == (None, 5.0)


@pytest.mark.parametrize("argv", [["--model", "vit_vqgan", "--data", "shapes"], ["--model", "dcgan", "--data", "digits"],
                                  ["--model", "image_gpt", "--data", "digits", "--seeds", "2"]])
def test_generative_trains_with_the_seed_given(monkeypatch, tmp_path, argv):
    """generative.py had no --seed: the session-47 ViT-VQGAN probes of seed 1 ran through train(seed=1) by hand and
    could not be repeated from the command line. Image GPT's --seeds N trainings now start at --seed."""
    module = load("generative")
    seeds = []

    def run_training(model, data, config, *args, **kwargs):
        seeds.append(config.seed)
        raise _Trained(config)

    monkeypatch.setattr(module, "run_training", run_training)
    monkeypatch.setattr(sys, "argv", ["generative.py", *argv, "--seed", "5", "--runs", str(tmp_path),
                                      "--out", str(tmp_path / "r.json")])
    with pytest.raises(_Trained):
        module.main()
    assert seeds == [5]


def test_generative_image_gpt_trains_seeds_from_the_seed_given(monkeypatch, tmp_path):
    module = load("generative")
    trained = []

    def train(model, data, size, minutes, out, seed=0, **kwargs):
        trained.append((seed, out.name))
        raise _Trained(seed)

    monkeypatch.setattr(module, "train", train)
    monkeypatch.setattr(module, "SEED", 3)
    with pytest.raises(_Trained):
        module.image_gpt(1.0, 2, ["digits"], "image_gpt", tmp_path)
    assert trained == [(3, "image_gpt-digits-seed3")]
    built = []
    monkeypatch.setattr(module, "untrained_image_gpt", module.untrained_image_gpt)
    import visionzoo.train.run as run

    def build_setup(*args, **kwargs):
        built.append(torch.initial_seed())
        raise _Trained(None)

    monkeypatch.setattr(run, "build_setup", build_setup)
    with pytest.raises(_Trained):
        module.untrained_image_gpt(2, ["digits"], "image_gpt")
    assert built == [3]


def test_generative_records_the_seed_and_keeps_the_seed_0_result(monkeypatch, tmp_path):
    """A run of another seed writes generative_MODEL[_DATA]_seedN.json by default: the README's result is seed 0's."""
    module = load("generative")
    monkeypatch.setattr(module, "machine", lambda device="cpu": {})
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    monkeypatch.setattr(module, "dcgan", lambda *args: {"rows": {}})
    for seed in ("0", "2"):
        monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "dcgan", "--data", "digits", "--seed", seed,
                                          "--runs", str(tmp_path / "runs")])
        module.main()
    assert json.loads((tmp_path / "generative_dcgan_digits.json").read_text())["seed"] == 0
    assert json.loads((tmp_path / "generative_dcgan_digits_seed2.json").read_text())["seed"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--model", "baselines", "--seed", "1"], "--seed sets the training; --model baselines trains nothing"),
    (["--model", "vqvae", "--seed", "-1"], "--seed"),
])
def test_generative_refuses_a_seed_it_would_not_use(monkeypatch, capsys, argv, message):
    error = refused(monkeypatch, capsys, "generative", argv)
    assert message in error, error


def test_train_backbones_steps_and_eval_every_reach_the_run(monkeypatch, capsys, tmp_path):
    module = load("train_backbones")
    _capture_training(monkeypatch, module)
    monkeypatch.setattr(sys, "argv", ["train_backbones.py", "--job", "resnet18-shapes64-fresh", "--steps", "77",
                                      "--eval-every", "11", "--workers", "3", "--out-dir", str(tmp_path)])
    with pytest.raises(_Trained) as trained:
        module.main()
    config = trained.value.args[0]
    assert (config.max_steps, config.minutes, config.eval_every, config.num_workers) == (77, None, 11, 3)
    error = refused(monkeypatch, capsys, "train_backbones", ["--job", "vit-mpp", "--steps", "5"])
    assert "--steps applies to single-run jobs only: vit-mpp" in error, error


def test_train_backbones_reads_the_validation_curve_of_its_run(tmp_path):
    module = load("train_backbones")
    lines = [{"step": 1, "loss": 2.0}, {"step": 5, "split": "val", "accuracy": 0.25, "loss": 1.5},
             {"step": 10, "split": "val", "accuracy": 0.5, "loss": 1.0}]
    (tmp_path / module.METRICS_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert module.validation_curve(tmp_path) == [{"step": 5, "accuracy": 0.25}, {"step": 10, "accuracy": 0.5}]


@pytest.mark.parametrize("argv", [["--threads", "abc"], ["--threads=two"], ["--threads", "-1"], ["--threads"]])
def test_selective_search_refuses_a_thread_count_that_is_not_a_number_in_one_line(monkeypatch, capsys, argv):
    """selective_search.py reads --threads before argparse (the BLAS pools start with numpy): --threads abc was a
    ValueError traceback from that early read, before argparse could refuse it."""
    monkeypatch.setattr(sys, "argv", ["selective_search.py", *argv])
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the early read sets OMP_NUM_THREADS and its kin
    module = load("selective_search")
    monkeypatch.setattr(module, "evaluate", lambda *args: pytest.fail("selective_search.py started its work"))
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--threads" in error, error


def test_metrics_does_not_file_its_rows_beside_rows_of_another_clock(monkeypatch, capsys, tmp_path):
    """metrics.py --one-thread --only frechet --out metrics.json kept the file's wall-clock rows of the other parts
    and relabelled the whole file "clock": "cpu, one thread": the kept rows' times read as CPU seconds. A run that
    would mix the clocks is now refused before any work; the rows it writes say their own clock and threads."""
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    out = tmp_path / "metrics.json"
    wall_rows = json.dumps({"rows": [{"part": part, "reference_ms": 1.0} for part in ("coco", "mean_ap", "frechet")],
                            "torch_threads": 2, "quick": False})  # the README's file, from before the clock key
    out.write_text(wall_rows)
    error = refused(monkeypatch, capsys, "metrics", ["--one-thread", "--only", "frechet", "--quick", "--out", str(out)])
    assert f"--out {out}" in error and "wall" in error and "cpu, one thread" in error, error
    assert out.read_text() == wall_rows
    module = load("metrics")
    monkeypatch.setattr(module, "frechet_rows", lambda *args: [module.row("f", "n", "ref", 2.0, 1.0, True, 0.0, 1, 1)])
    monkeypatch.setattr(sys, "argv", ["metrics.py", "--only", "frechet", "--quick", "--out", str(out)])
    module.main()
    rows = {row["part"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["frechet"]["clock"] == "wall" and rows["frechet"]["torch_threads"] == torch.get_num_threads()
    assert rows["coco"] == {"part": "coco", "reference_ms": 1.0, "clock": "wall"}


def test_backbones_all_writes_each_part_as_it_is_measured(monkeypatch, tmp_path):
    """backbones.py (--part all) wrote --out once, after the speed part: a run stopped in that part (tens of minutes
    on a CPU, Ctrl-C or an error) lost the params and logits sections it had already measured."""
    module = load("backbones")
    monkeypatch.setattr(module, "parameter_counts", lambda: {"vit": {"equal": True}})
    monkeypatch.setattr(module, "logit_differences", lambda: {"vit": {"max_abs_diff_224": 0.0}})

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "speed", stopped)
    out = tmp_path / "backbones.json"
    out.write_text(json.dumps({"speed_cuda": {"kept": True}, "params": {"old": True}}))
    monkeypatch.setattr(sys, "argv", ["backbones.py", "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        module.main()
    assert json.loads(out.read_text()) == {"script": "backbones.py", "speed_cuda": {"kept": True},
                                           "params": {"vit": {"equal": True}},
                                           "logits": {"vit": {"max_abs_diff_224": 0.0}}}


@pytest.mark.parametrize("name", ["attention", "metrics"])
def test_a_run_stopped_half_way_keeps_the_rows_it_measured(monkeypatch, tmp_path, name):
    """attention.py and metrics.py wrote --out once, after the last case or part: a run stopped in the last one
    (attention's ViT-S/16 cases take minutes each on a CPU; metrics' pycocotools tens of seconds) lost every row it
    had measured. Each row is now written as it is measured, beside the file's rows of other cases."""
    module = load(name)
    key, order, _, _ = _stub_measurements(module, name, monkeypatch)
    if name == "attention":
        last = order[-1]
        time_case = module.time_case
        monkeypatch.setattr(module, "time_case", lambda build, written_out, repeats: (
            _stop() if build is module.CASES[last][0] else time_case(build, written_out, repeats)))
        argv = ["--repeats", "1"]
    else:
        monkeypatch.setattr(module, "frechet_rows", lambda *args: _stop())
        argv = ["--quick"]
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"rows": [{key: value, "earlier": True} for value in order]}))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv, "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        module.main()
    rows = json.loads(out.read_text())["rows"]
    assert [row[key] for row in rows] == order
    assert [row[key] for row in rows if row.get("earlier")] == [order[-1]]
    if name == "metrics":  # a --one-thread run of every part, stopped: the wall-clock rows left still say so
        monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
        monkeypatch.setattr(sys, "argv", ["metrics.py", "--one-thread", "--quick", "--out", str(out)])
        with pytest.raises(KeyboardInterrupt):
            module.main()
        clocks = {row["part"]: row["clock"] for row in json.loads(out.read_text())["rows"]}
        assert clocks == {"coco": "cpu, one thread", "segm": "cpu, one thread", "mean_ap": "cpu, one thread",
                          "frechet": "wall"}, clocks


def _stop():
    raise KeyboardInterrupt


def test_train_backbones_refuses_steps_shorter_than_the_jobs_warmup_before_any_work(monkeypatch, capsys):
    """train_backbones.py --job vit-digits32 --steps 2 (a quick trial) built the run, then stopped with the engine's
    ValueError traceback: the job's 30 warmup steps are more than the run's 2."""
    error = refused(monkeypatch, capsys, "train_backbones", ["--job", "vit-digits32", "--steps", "2"])
    assert "--steps 2" in error and "vit-digits32" in error and "30 warmup steps" in error, error


def test_generative_prior_names_a_missing_tokenizer_before_training_any_data_set(monkeypatch, tmp_path):
    """--model vqgan_transformer with the Digits tokenizer trained but not the Shapes one trained the Digits prior
    for its minutes, then stopped at Shapes ('no runs/bench/vqgan-shapes/...') and wrote nothing: the Digits result
    was lost. Every missing tokenizer is now named before any training."""
    module = load("generative")
    (tmp_path / "vqgan-digits").mkdir()
    (tmp_path / "vqgan-digits" / module.CHECKPOINT_NAME).write_bytes(b"")
    monkeypatch.setattr(module, "train", lambda *args, **kwargs: pytest.fail("the prior trained"))
    out = tmp_path / "prior.json"
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "vqgan_transformer", "--runs", str(tmp_path),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    message = str(exit_info.value.code)
    assert str(tmp_path / "vqgan-shapes" / module.CHECKPOINT_NAME) in message and "--data shapes" in message, message
    assert not out.exists()


@pytest.mark.parametrize("argv, flag, users", [
    (["--job", "conformance", "--minutes", "1"], "--minutes", "shapes, rcnn, fast-rcnn"),
    (["--job", "conformance", "--batch-size", "4"], "--batch-size", "shapes, rcnn, fast-rcnn"),
    (["--job", "shapes", "--job", "rcnn", "--repeats", "7"], "--repeats", "conformance"),
])
def test_detection_refuses_a_flag_its_jobs_do_not_use_before_any_work(monkeypatch, capsys, argv, flag, users):
    """detection.py --job conformance --minutes 1 took the budget and ignored it without a word (as generative.py
    did with its models' flags)."""
    error = refused(monkeypatch, capsys, "detection", argv)
    assert f"{flag} is not used by --job" in error and f"only by {users}" in error, error


def test_detection_hands_its_flags_and_defaults_to_the_jobs_that_use_them(monkeypatch, tmp_path):
    module = load("detection")
    calls = []
    monkeypatch.setattr(module, "conformance", lambda repeats: calls.append(("conformance", repeats)) or {})
    monkeypatch.setattr(module, "shapes", lambda minutes, batch: calls.append(("shapes", minutes, batch)) or {})
    for argv in (["--job", "conformance", "--job", "shapes"], ["--job", "conformance", "--job", "shapes", "--repeats",
                                                                "7", "--minutes", "0.5", "--batch-size", "4"]):
        monkeypatch.setattr(sys, "argv", ["detection.py", *argv, "--out-dir", str(tmp_path)])
        module.main()
    assert calls == [("conformance", 3), ("shapes", 8.0, 8), ("conformance", 7), ("shapes", 0.5, 4)]


@pytest.mark.parametrize("part", ["params", "logits"])
@pytest.mark.parametrize("argv", [["--batch", "8"], ["--repeats", "2"], ["--bf16-batch", "4"], ["--bf16-repeats", "2"],
                                  ["--one-thread"], ["--keep-freed-memory"], ["--compile"]])
def test_backbones_refuses_a_speed_flag_for_another_part_before_any_work(monkeypatch, capsys, part, argv):
    """backbones.py --part logits --batch 8 took the batch and ignored it without a word: the logits are compared
    on a batch of 2, whatever --batch says, and --one-thread left the params and logits parts on every thread."""
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    error = refused(monkeypatch, capsys, "backbones", ["--part", part, *argv])
    assert f"{argv[0]} is used by --part speed only" in error, error


def test_backbones_keep_freed_memory_sets_the_allocator_and_writes_its_own_section(monkeypatch, tmp_path, capsys):
    """The allocator is set in speed(), with the measuring: set in main(), a run refused later (or the README
    commands' check, which replaces the work) left the whole process keeping freed memory."""
    module = load("backbones")
    kept = []
    monkeypatch.setattr(module, "keep_freed_memory", lambda: kept.append(True))  # process-wide: not in the suite's
    monkeypatch.setattr(module, "matmul_peak", lambda *args, **kwargs: 1.0)
    monkeypatch.setattr(module, "SPEED_MODELS", ())
    out = tmp_path / "b.json"
    monkeypatch.setattr(sys, "argv", ["backbones.py", "--part", "speed", "--keep-freed-memory", "--out", str(out)])
    module.main()
    assert kept == [True] and json.loads(out.read_text())["speed_keep_freed_memory"]["matmul_peak_flops"]
    monkeypatch.setattr(module, "speed", lambda *args: {"measured": args[5]})
    module.main()
    assert kept == [True] and json.loads(out.read_text())["speed_keep_freed_memory"] == {"measured": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    error = refused(monkeypatch, capsys, "backbones", ["--part", "speed", "--keep-freed-memory", "--device", "cuda"])
    assert "--keep-freed-memory is for the CPU" in error and kept == [True]


def test_backbones_compile_times_both_libraries_compiled_into_its_own_section(monkeypatch, tmp_path):
    module = load("backbones")
    compiled, timed = [], []
    monkeypatch.setattr(module, "compiled", lambda model: compiled.append(type(model).__module__.split(".")[0])
                        or torch.nn.Identity())
    monkeypatch.setattr(module, "matmul_peak", lambda *args, **kwargs: 1.0)
    monkeypatch.setattr(module, "SPEED_MODELS", ("resnet18",))
    monkeypatch.setattr(module, "flops_per_image", lambda model: 1.0)
    monkeypatch.setattr(module, "throughput", lambda models, *args, **kwargs: timed.append(
        sorted(type(model).__name__ for model in models.values())) or {key: 1.0 for key in models})
    out = tmp_path / "b.json"
    monkeypatch.setattr(sys, "argv", ["backbones.py", "--part", "speed", "--compile", "--out", str(out)])
    module.main()
    assert sorted(compiled) == ["timm", "visionzoo"] and timed == [["Identity", "Identity"]] * 2
    section = json.loads(out.read_text())["speed_compiled"]
    assert section["compiled"] is True and section["resnet18"]["bf16"]["ratio"] == 1.0


def test_backbones_hands_the_speed_flags_and_their_defaults_on(monkeypatch, tmp_path):
    module = load("backbones")
    calls = []
    monkeypatch.setattr(module, "speed", lambda *args: calls.append(args[:4]) or {})
    for argv in ([], ["--batch", "4", "--repeats", "2", "--bf16-batch", "3", "--bf16-repeats", "5"]):
        monkeypatch.setattr(sys, "argv", ["backbones.py", "--part", "speed", *argv, "--out", str(tmp_path / "b.json")])
        module.main()
    assert calls == [(32, 5, 2, 1), (4, 2, 3, 5)]


def test_selective_search_methods_replace_their_rows_and_keep_the_files_others(monkeypatch, capsys, tmp_path):
    """The docstring's trial, selective_search.py --images 20 --methods ours-fast,opencv-fast, wrote its two rows
    over benchmarks/results/selective_search.json, dropping the README's ours-quality and opencv-quality rows (and
    its meta then said 20 images for all). Rows of other methods are now kept, each saying the settings it was
    measured with; a file that is not a results object is refused."""
    module = load("selective_search")
    monkeypatch.setattr(module, "evaluate", lambda method, samples, cap, top: {
        "method": method, "recall@0.5": 0.5, "recall@0.7": 0.5, "mabo": 0.5, f"mabo_first_{top}": 0.5,
        "proposals_per_image": 1.0, "cpu_s_per_image": 0.0, "wall_s_per_image": 0.0, "ground_truth_boxes": 3})
    out = tmp_path / "ss.json"
    meta = {"images": 200, "ground_truth_boxes": 705, "max_proposals": 2000, "top": 100, "threads": 1}
    out.write_text(json.dumps({"meta": meta, "rows": [{"method": m, "mabo": 0.9} for m in module.METHODS]}))
    monkeypatch.setattr(sys, "argv", ["selective_search.py", "--images", "1", "--methods", "opencv-fast,ours-fast",
                                      "--out", str(out)])
    module.main()
    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == list(module.METHODS)
    assert rows["ours-quality"] == {"method": "ours-quality", "mabo": 0.9, "images": 200, "max_proposals": 2000,
                                    "top": 100, "threads": 1}
    assert rows["ours-fast"]["mabo"] == 0.5 and rows["ours-fast"]["images"] == 1
    out.write_text("[1, 2]")
    error = refused(monkeypatch, capsys, "selective_search", ["--images", "1", "--out", str(out)])
    assert f"--out {out}" in error and out.read_text() == "[1, 2]", error


def test_train_backbones_on_cuda_does_not_replace_the_cpu_result(monkeypatch, tmp_path):
    """The README's GPU command (train_backbones.py --job JOB --device cuda ...) wrote train_JOB.json, the file of
    the README's CPU row of that job, with the GPU run; a GPU run now writes train_JOB_cuda.json beside it."""
    module = load("train_backbones")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(module, "machine", lambda device="cpu": {"device": device})
    monkeypatch.setattr(module, "train_and_test", lambda run, out, where, **budget: {"device": where.device})
    for device in ("cpu", "cuda"):
        monkeypatch.setattr(sys, "argv", ["train_backbones.py", "--job", "vit-shapes64", "--device", device,
                                          "--out-dir", str(tmp_path)])
        module.main()
    assert json.loads((tmp_path / "train_vit-shapes64.json").read_text())["device"] == "cpu"
    assert json.loads((tmp_path / "train_vit-shapes64_cuda.json").read_text())["device"] == "cuda"


def test_generative_on_cuda_does_not_replace_the_cpu_result_nor_its_plots(monkeypatch, tmp_path):
    """The README's GPU command (generative.py --model image_gpt --data shapes --device cuda --minutes 4 --seeds 1)
    wrote generative_image_gpt_shapes.json and image_gpt_probes_shapes*.png, the README's CPU result and pictures,
    with the GPU run; by default a GPU run now writes ..._cuda.json and ..._cuda.png beside them."""
    module = load("generative")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(module, "machine", lambda device="cpu": {})
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    calls = []
    monkeypatch.setattr(module, "image_gpt", lambda *args: calls.append(args) or {"rows": {}})
    monkeypatch.setattr(module, "dcgan", lambda *args: {"rows": {}})
    for device in ("cpu", "cuda"):
        monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "image_gpt", "--data", "shapes", "--device",
                                          device, "--runs", str(tmp_path / "runs")])
        module.main()
    assert json.loads((tmp_path / "generative_image_gpt_shapes.json").read_text())["device"] == "cpu"
    assert json.loads((tmp_path / "generative_image_gpt_shapes_cuda.json").read_text())["device"] == "cuda"
    assert [args[4:6] for args in calls] == [(tmp_path, ""), (tmp_path, "_cuda")]
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "dcgan", "--data", "digits", "--device", "cuda",
                                      "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "mine.json")])
    module.main()
    assert json.loads((tmp_path / "mine.json").read_text())["device"] == "cuda"


@pytest.mark.parametrize("argv, name", [([], "ops.json"), (["--one-thread"], "ops_one_thread.json")])
def test_ops_one_thread_default_out_is_its_own_file(monkeypatch, argv, name):
    """ops.py --one-thread (the docstring's command) wrote its CPU-time rows over benchmarks/results/ops.json, the
    README's wall-clock table; its default is now ops_one_thread.json, as metrics.py's is metrics_one_thread.json."""
    monkeypatch.setattr(sys, "argv", ["ops.py", *argv])
    monkeypatch.setattr(os, "environ", dict(os.environ))  # --one-thread sets OMP_NUM_THREADS and its kin on import
    module = load("ops")
    assert Path(parsed_arguments(monkeypatch, module).out) == BENCHMARKS / "results" / name


def test_metrics_quick_does_not_replace_full_size_rows(monkeypatch, capsys, tmp_path):
    """metrics.py --quick (the docstring's trial: 1,000 images where the README's rows have 5,000, d=512 where they
    have 2,048) replaced the README's rows in benchmarks/results/metrics.json with its own. It is now refused in one
    line when it would replace full-size rows; into a file of quick rows, or a new one, it runs as before."""
    out = tmp_path / "metrics.json"
    full = json.dumps({"rows": [{"part": part, "quick": False, "clock": "wall"} for part in ("coco", "mean_ap")]})
    out.write_text(full)
    error = refused(monkeypatch, capsys, "metrics", ["--quick", "--only", "mean_ap", "--out", str(out)])
    assert f"--out {out}" in error and "--quick" in error and "mean_ap" in error, error
    assert out.read_text() == full
    module = load("metrics")
    monkeypatch.setattr(module, "coco_rows", lambda *args: [module.row("c", "n", "ref", 2.0, 1.0, True, 0.0, 1, 1)])
    monkeypatch.setattr(sys, "argv", ["metrics.py", "--quick", "--only", "coco", "--out", str(tmp_path / "new.json")])
    module.main()
    monkeypatch.setattr(sys, "argv", ["metrics.py", "--quick", "--only", "coco", "--out", str(tmp_path / "new.json")])
    module.main()
    assert [row["quick"] for row in json.loads((tmp_path / "new.json").read_text())["rows"]] == [True]


@pytest.mark.parametrize("name", ["attention", "precision", "metrics"])
def test_a_write_that_fails_half_way_leaves_the_results_file_as_it_was(monkeypatch, tmp_path, name):
    """The scripts wrote --out in place: a write stopped half-way (a full disk, Ctrl-C) left a truncated JSON where
    the README's results had been, every row lost. They now write a temporary file and rename it over --out."""
    module = load(name)
    key, order, _, argv = _stub_measurements(module, name, monkeypatch)
    out = tmp_path / "results.json"
    before = json.dumps({"rows": [{key: value, "earlier": True} for value in order]})
    out.write_text(before)
    write_text = Path.write_text

    def half_then_full_disk(path, text, *args, **kwargs):
        write_text(path, text[:len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv, "--out", str(out)])
    with pytest.raises(OSError):
        module.main()
    assert out.read_text() == before
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_an_existing_out_in_a_folder_that_cannot_be_written_is_one_line_before_any_work(monkeypatch, capsys, tmp_path):
    """The results are renamed into --out's folder from a temporary file there: an --out that exists and can be
    written, in a folder where no file can be made, must be refused up front, not after the work."""
    import tempfile as tempfile_module

    out = tmp_path / "result.json"
    out.write_text("{}")
    temporary_file = tempfile_module.TemporaryFile

    def no_new_files(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied")
        return temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile_module, "TemporaryFile", no_new_files)
    error = refused(monkeypatch, capsys, "precision", ["--out", str(out)])
    assert f"{out} cannot be written: Permission denied" in error, error


@pytest.mark.parametrize("argv, flag", [(["--device", "cuda"], "--device"), (["--workers", "2"], "--workers"),
                                        (["--eval-every", "100"], "--eval-every")])
def test_train_backbones_refuses_training_flags_for_the_job_that_trains_nothing(monkeypatch, capsys, argv, flag):
    """--job shapes64-label-ambiguity --device cuda measured on the CPU (it trains nothing) and wrote a result that
    named the GPU as its machine; --workers and --eval-every were ignored without a word."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    error = refused(monkeypatch, capsys, "train_backbones", ["--job", "shapes64-label-ambiguity", *argv])
    assert f"{flag} is not used by --job shapes64-label-ambiguity" in error, error


@pytest.mark.parametrize("argv, message", [
    (["--model", "vqvae", "--model-arg", "foo=1"], "vqvae_small takes no argument 'foo'"),
    (["--model", "vqgan", "--data", "shapes", "--model-arg", "num_codes=-5"], "at least 2 codes"),
    (["--model", "vit_vqgan", "--model-arg", "code_dim=abc"], "code_dim must be an integer"),
    (["--model", "image_gpt", "--model-arg", "dropout=0.1"], "image_gpt takes no argument 'dropout'"),
])
def test_generative_refuses_a_model_arg_the_tokenizer_cannot_take_before_any_work(monkeypatch, capsys, argv, message):
    """--model vqvae --model-arg foo=1 loaded the data and then stopped with a ModelArgumentError traceback when the
    model was built (a ValueError traceback for num_codes=-5)."""
    error = refused(monkeypatch, capsys, "generative", argv)
    assert "--model-arg" in error and message in error, error


@pytest.mark.parametrize("argv", [["--model", "vqgan_transformer", "--data", "digits"],
                                  ["--model", "codebook_stats"]])
def test_generative_names_a_damaged_tokenizer_checkpoint_in_one_line(monkeypatch, tmp_path, argv):
    """A tokenizer checkpoint cut short (a run killed while copying it) was a CheckpointError traceback from
    --model vqgan_transformer (after its data was loaded) and from --model codebook_stats."""
    module = load("generative")
    (tmp_path / "vqgan-digits").mkdir()
    (tmp_path / "vqgan-digits" / module.CHECKPOINT_NAME).write_bytes(b"junk")
    monkeypatch.setattr(module, "train", lambda *args, **kwargs: pytest.fail("the prior trained"))
    out = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", ["generative.py", *argv, "--runs", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    message = str(exit_info.value.code)
    assert str(tmp_path / "vqgan-digits" / module.CHECKPOINT_NAME) in message and "corrupt" in message, message
    assert "\n" not in message and not out.exists()


def test_ops_quick_does_not_replace_a_full_run(monkeypatch, capsys, tmp_path):
    """ops.py --quick (the docstring's trial: 2 repeats where the README's rows are the best of 5) wrote its rows over
    benchmarks/results/ops.json, the README's table. It is now refused in one line when --out holds a full run (the
    README's file, written before rows said quick, counts as one); into a new file or a quick one it runs as before."""
    out = tmp_path / "ops.json"
    full = json.dumps({"meta": {"clock": "wall clock, 2 threads", "repeats": 5}, "rows": [{"op": "nms"}]})
    out.write_text(full)
    error = refused(monkeypatch, capsys, "ops", ["--quick", "--out", str(out)])
    assert f"--out {out}" in error and "--quick" in error, error
    assert out.read_text() == full
    module = load("ops")
    monkeypatch.setattr(module, "run", lambda repeats: [])
    trial = tmp_path / "trial.json"
    for _ in range(2):  # a second trial replaces the first
        monkeypatch.setattr(sys, "argv", ["ops.py", "--quick", "--out", str(trial)])
        module.main()
    assert json.loads(trial.read_text())["meta"]["quick"] is True
    monkeypatch.setattr(sys, "argv", ["ops.py", "--out", str(out)])  # a full run replaces a full run
    module.main()
    assert json.loads(out.read_text())["meta"]["quick"] is False


def test_precision_trial_does_not_replace_rows_of_more_steps(monkeypatch, capsys, tmp_path):
    """The docstring's trial (--steps 4 --repeats 1 --only resnet18-digits32) wrote its row over the README's row of
    5 steps in benchmarks/results/precision.json. A run of fewer --steps than a row it would replace is now refused in
    one line; a run of as many steps or more, or into a new file, runs as before."""
    module = load("precision")
    first = next(iter(module.CONFIGS))
    out = tmp_path / "precision.json"
    full = json.dumps({"rows": [{"config": module.MATMUL}, {"config": first, "steps": 5}]})
    out.write_text(full)
    error = refused(monkeypatch, capsys, "precision", ["--steps", "4", "--only", first, "--out", str(out)])
    assert f"--out {out}" in error and "--steps 4" in error and first in error and "5 steps" in error, error
    assert out.read_text() == full
    module = load("precision")
    monkeypatch.setattr(module, "measure", lambda name, precision, steps, keep_freed=False: {"samples_per_s": 1.0})
    monkeypatch.setattr(module, "matmul_gflops", lambda dtype: 1.0)
    for argv in (["--steps", "4", "--out", str(tmp_path / "trial.json")], ["--steps", "5", "--out", str(out)]):
        monkeypatch.setattr(sys, "argv", ["precision.py", "--only", first, *argv])
        module.main()
    assert [row.get("steps") for row in json.loads(out.read_text())["rows"]] == [None, 5]


@pytest.mark.parametrize("name, trial", [("ops", "--quick"), ("precision", "--steps 4"), ("metrics", "--quick")])
def test_the_docstring_trials_write_outside_the_results(name, trial):
    doc = load(name).__doc__
    lines = [line for line in doc.splitlines() if re.search(re.escape(trial) + r"(\s|$)", line)]  # not --steps 40
    assert lines and all("--out /tmp/" in line for line in lines), lines


OTHERS_OUT = {  # each script with the arguments that reach its write, the file it would write in folder D
    "fid": ([], "out.json"), "ops": ([], "out.json"), "hipt_slides": ([], "out.json"),
    "generative": (["--model", "dcgan", "--data", "digits"], "out.json"), "attention": ([], "out.json"),
    "precision": ([], "out.json"), "metrics": ([], "out.json"), "selective_search": ([], "out.json"),
    "backbones": (["--part", "params"], "out.json"), "detection": (["--job", "conformance"], "detection_conformance.json"),
    "train_backbones": (["--job", "vit-digits32"], "train_vit-digits32.json"),
}


@pytest.mark.parametrize("name", sorted(OTHERS_OUT))
def test_a_script_does_not_write_over_another_scripts_results(monkeypatch, capsys, tmp_path, name):
    """fid.py --out benchmarks/results/backbones.json replaced the backbones results with FID's, and attention.py --out
    a generative file dropped its rows: every script now refuses, in one line naming the file and the script that
    wrote it, an --out (or a file in --out-dir) that holds another script's results."""
    argv, file_name = OTHERS_OUT[name]
    other = "selective_search.py" if name != "selective_search" else "fid.py"
    out = tmp_path / file_name
    content = json.dumps({"script": other, "rows": [{"method": "x", "earlier": True}]})
    out.write_text(content)
    flag = ["--out-dir", str(tmp_path)] if name in ("detection", "train_backbones") else ["--out", str(out)]
    error = refused(monkeypatch, capsys, name, [*argv, *flag])
    assert str(out) in error and other in error, error
    assert out.read_text() == content


@pytest.mark.parametrize("name, file_name, writer", [
    ("fid", "backbones.json", "backbones.py"), ("attention", "generative_vqvae.json", "generative.py"),
    ("ops", "train_vit-digits32.json", "train_backbones.py"), ("precision", "metrics_one_thread.json", "metrics.py"),
    ("hipt_slides", "tour_report.json", "visionzoo tour")])
def test_results_written_before_files_named_their_script_are_known_by_their_name(
        monkeypatch, capsys, tmp_path, name, file_name, writer):
    """The README's results files do not say which script wrote them: their names do."""
    out = tmp_path / file_name
    out.write_text(json.dumps({"rows": [{"earlier": True}]}))
    error = refused(monkeypatch, capsys, name, [*OTHERS_OUT[name][0], "--out", str(out)])
    assert str(out) in error and writer in error, error


def test_the_readmes_results_are_safe_from_another_script(monkeypatch, capsys):
    out = BENCHMARKS / "results" / "backbones.json"
    before = out.read_bytes()
    error = refused(monkeypatch, capsys, "fid", ["--out", str(out)])
    assert "backbones.py" in error and out.read_bytes() == before


def test_a_results_file_says_which_script_wrote_it_and_that_script_may_replace_it(monkeypatch, tmp_path):
    module = load("ops")
    monkeypatch.setattr(module, "run", lambda repeats: [])
    out = tmp_path / "mine.json"
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", ["ops.py", "--out", str(out)])
        module.main()
        assert json.loads(out.read_text())["script"] == "ops.py"


def test_generative_on_cuda_trains_into_its_own_runs_folder(monkeypatch, tmp_path):
    """generative.py --model vqgan --device cuda trained into runs/bench/vqgan-DATA, replacing the tokenizers the CPU
    priors (the README's) read; a GPU run's default runs folder is now runs/bench_cuda, and --runs still wins."""
    module = load("generative")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(module, "machine", lambda device="cpu": {})
    runs = []
    monkeypatch.setattr(module, "dcgan", lambda *args: runs.append(module.RUNS) or {"rows": {}})
    for argv in (["--device", "cuda"], [], ["--device", "cuda", "--runs", str(tmp_path / "mine")]):
        monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "dcgan", "--data", "digits", *argv,
                                          "--out", str(tmp_path / "out.json")])
        module.main()
    assert runs == [Path("runs/bench_cuda"), Path("runs/bench"), tmp_path / "mine"]


def test_generative_with_another_seed_trains_into_its_own_runs_folder(monkeypatch, tmp_path):
    """generative.py --model vqgan --seed 1 wrote its result beside the seed-0 one (..._seed1.json) but trained into
    runs/bench/vqgan-DATA, replacing the seed-0 tokenizer that the README's priors read. Another seed's runs go to
    runs/bench_seedN (runs/bench_seedN_cuda on a GPU), where that seed's priors find them."""
    module = load("generative")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(module, "machine", lambda device="cpu": {})
    runs = []
    monkeypatch.setattr(module, "dcgan", lambda *args: runs.append(module.RUNS) or {"rows": {}})
    for argv in (["--seed", "1"], ["--seed", "2", "--device", "cuda"], ["--seed", "0"]):
        monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "dcgan", "--data", "digits", *argv,
                                          "--out", str(tmp_path / "out.json")])
        module.main()
    assert runs == [Path("runs/bench_seed1"), Path("runs/bench_seed2_cuda"), Path("runs/bench")]


def test_a_value_given_twice_runs_once(monkeypatch, tmp_path):
    """generative.py --data digits --data digits wrote generative_dcgan_digits_digits.json, and detection.py and
    train_backbones.py --job J --job J (precision.py --only C --only C) ran the job twice: a repeated value now counts
    once, in the order first given, as selective_search.py --methods does."""
    module = load("generative")
    monkeypatch.setattr(module, "machine", lambda device="cpu": {})
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    monkeypatch.setattr(module, "dcgan", lambda minutes, data: {"data": data})
    monkeypatch.setattr(sys, "argv", ["generative.py", "--model", "dcgan", "--data", "shapes", "--data", "digits",
                                      "--data", "shapes", "--runs", str(tmp_path / "runs")])
    module.main()
    assert [path.name for path in tmp_path.glob("*.json")] == ["generative_dcgan_shapes_digits.json"]
    assert json.loads((tmp_path / "generative_dcgan_shapes_digits.json").read_text())["data"] == ["shapes", "digits"]
    module = load("detection")
    jobs = []
    monkeypatch.setattr(module, "conformance", lambda repeats: jobs.append("conformance") or {})
    monkeypatch.setattr(module, "shapes", lambda minutes, batch_size: jobs.append("shapes") or {})
    monkeypatch.setattr(sys, "argv", ["detection.py", "--job", "shapes", "--job", "conformance", "--job", "shapes",
                                      "--out-dir", str(tmp_path)])
    module.main()
    assert jobs == ["shapes", "conformance"]
    module = load("train_backbones")
    monkeypatch.setattr(module, "label_ambiguity_job", lambda: jobs.append("ambiguity") or {})
    monkeypatch.setattr(sys, "argv", ["train_backbones.py", "--job", "shapes64-label-ambiguity", "--job",
                                      "shapes64-label-ambiguity", "--out-dir", str(tmp_path)])
    module.main()
    assert jobs == ["shapes", "conformance", "ambiguity"]
    module = load("precision")
    first = next(iter(module.CONFIGS))
    monkeypatch.setattr(module, "measure", lambda name, precision, steps, keep_freed=False: jobs.append(name) or {"samples_per_s": 1.0})
    monkeypatch.setattr(module, "matmul_gflops", lambda dtype: 1.0)
    monkeypatch.setattr(sys, "argv", ["precision.py", "--only", first, "--only", first, "--out", str(tmp_path / "p.json")])
    module.main()
    assert jobs[3:] == [first, first]  # fp32 and bf16, once
    assert [row["config"] for row in json.loads((tmp_path / "p.json").read_text())["rows"]] == [module.MATMUL, first]


@pytest.mark.parametrize("argv", [["--threads", "1", "--threads", "3"], ["--threads=1", "--threads", "3"],
                                  ["--threads", "1", "--threads=3"]])
def test_selective_search_reads_the_last_thread_count_given_as_argparse_does(monkeypatch, tmp_path, argv):
    """selective_search.py --threads 1 --threads 4 set the BLAS pools to 1 thread (the early read took the first
    value) and torch and OpenCV to 4 (argparse takes the last), and recorded 4: both now take the last."""
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the early read sets OMP_NUM_THREADS and its kin
    monkeypatch.setattr(sys, "argv", ["selective_search.py", *argv])
    module = load("selective_search")
    assert os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "3"
    threads = []
    monkeypatch.setattr(module.torch, "set_num_threads", threads.append)
    monkeypatch.setattr(module.cv2, "setNumThreads", threads.append)

    def evaluate(method, samples, max_proposals, top):
        return {"method": method, "recall@0.5": 1.0, "recall@0.7": 1.0, "mabo": 1.0, f"mabo_first_{top}": 1.0,
                "proposals_per_image": 1.0, "cpu_s_per_image": 0.0, "wall_s_per_image": 0.0, "ground_truth_boxes": 1}

    monkeypatch.setattr(module, "evaluate", evaluate)
    monkeypatch.setattr(sys, "argv", ["selective_search.py", *argv, "--images", "1", "--methods", "ours-fast",
                                      "--out", str(tmp_path / "ss.json")])
    module.main()
    assert threads == [3, 3]


def _strings(value):
    if isinstance(value, dict):
        yield from (text for item in [*value.keys(), *value.values()] for text in _strings(item))
    elif isinstance(value, list):
        yield from (text for item in value for text in _strings(item))
    elif isinstance(value, str):
        yield value


def test_train_backbones_records_no_checkpoint_that_is_gone_after_the_run(monkeypatch, tmp_path):
    """train_backbones.py recorded each run's "checkpoint" (and the distilled and fine-tuned runs' teacher_checkpoint
    and initial_checkpoint) as a path in the job's temporary folder, deleted when the job ended: the results named
    files that no longer exist. They now name none."""
    module = load("train_backbones")
    from types import SimpleNamespace

    trainings = []

    def run_training(model, data, config, *args, **kwargs):
        trainings.append(Path(config.out))
        task = SimpleNamespace(metric="accuracy", evaluate=lambda *args: {"accuracy": 0.5})
        setup = SimpleNamespace(model=torch.nn.Identity(), task=task, splits={"train": [0, 1], "test": [0]})
        return setup, SimpleNamespace(steps=config.max_steps or 1, train_seconds=1.0)

    monkeypatch.setattr(module, "run_training", run_training)
    monkeypatch.setattr(module, "machine", lambda device="cpu": {})
    monkeypatch.setattr(sys, "argv", ["train_backbones.py", "--job", "vit-digits32", "--job", "deit-distillation",
                                      "--job", "vit-mpp", "--out-dir", str(tmp_path)])
    module.main()
    assert len(trainings) == 17 and not any(path.exists() for path in trainings)  # the job's folder is gone
    for name in ("train_vit-digits32.json", "train_deit-distillation.json", "train_vit-mpp.json"):
        result = json.loads((tmp_path / name).read_text())
        gone = [text for text in _strings(result) if any(str(path.parent) in text for path in trainings)]
        assert not gone, gone
    assert "checkpoint" not in json.loads((tmp_path / "train_vit-digits32.json").read_text())
    distilled = json.loads((tmp_path / "train_deit-distillation.json").read_text())["distilled"][0]
    assert distilled["options"]["teacher_checkpoint"] == "teacher/checkpoint.safetensors"  # the job's teacher run


@pytest.mark.parametrize("content", [{"meta": [1], "rows": []}, {"meta": "quick", "rows": []}])
def test_ops_quick_refuses_an_out_whose_meta_is_not_an_object_in_one_line(monkeypatch, capsys, tmp_path, content):
    out = tmp_path / "ops_trial.json"
    out.write_text(json.dumps(content))
    error = refused(monkeypatch, capsys, "ops", ["--quick", "--out", str(out)])
    assert f"--out {out}" in error and "--quick" in error, error
