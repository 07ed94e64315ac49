"""The training engine: exact resume after SIGKILL, torchrun with 2 processes, schedules, run folders."""

import json
import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visionzoo.checkpoint import CheckpointError, read_checkpoint
from visionzoo.train import engine
from visionzoo.train.distributed import EpochBatchSampler
from visionzoo.train.engine import (
    adamw,
    autocast_context,
    lr_factor,
    prepare_run_dir,
    resolve_precision,
)
from visionzoo.utils import native_bf16

SCRIPT = Path(__file__).with_name("engine_script.py")
FAILING_RANK_SCRIPT = Path(__file__).with_name("failing_rank_script.py")


def run_script(*args: str, expect_kill: bool = False) -> None:
    process = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    if expect_kill:
        assert process.returncode == -9, f"expected SIGKILL, got {process.returncode}\n{process.stderr}"
    else:
        assert process.returncode == 0, process.stderr


def training_state(run: Path) -> dict[str, torch.Tensor]:
    tensors, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == 24
    return tensors


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    assert any(k.startswith("optimizer.") for k in a) and any(k.startswith("ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("engine") / "full"
    run_script(str(run))
    return training_state(run)


def test_sigkill_at_a_random_step_then_resume_is_exact(tmp_path, uninterrupted):
    kill_at = random.Random(8).randint(1, 23)
    run = tmp_path / "killed"
    run_script(str(run), "--kill-at", str(kill_at), expect_kill=True)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == (kill_at // 5) * 5 and meta["step"] < 24
    run_script(str(run), "--resume")
    assert_same_state(training_state(run), uninterrupted)
    steps = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"split"' not in line]
    assert len(steps) == 24, "the log repeats or loses steps after resume"


def test_sigkill_during_a_checkpoint_write_then_resume_is_exact(tmp_path, uninterrupted):
    run = tmp_path / "killed_in_save"
    run_script(str(run), "--kill-in-save", "2", expect_kill=True)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == 5, "the half-written checkpoint replaced the previous one"
    assert list(run.glob(".checkpoint.safetensors.*.tmp")), "the test did not interrupt a write"
    run_script(str(run), "--resume")
    assert not list(run.glob(".*.tmp")), "stale temporary files were left behind"
    assert_same_state(training_state(run), uninterrupted)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun`` of 2 processes on this machine with ``args`` (the script and its arguments); past ``timeout``
    seconds torchrun is stopped, its ranks with it, and TimeoutExpired raised."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()  # torchrun stops its ranks on SIGTERM; killed, it would leave them running (hung)
            process.communicate(timeout=60)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def two_processes_and_one(tmp_path_factory) -> Path:
    """A torchrun run of 2 processes with batch 8 (``ddp``, ``final_0/1.safetensors``) and one process with batch
    16 (``single``, ``single.safetensors``), without randomness in their steps; the 2 processes' training set
    prepares itself at first use, cached in ``prepared``."""
    tmp_path = tmp_path_factory.mktemp("torchrun")
    (tmp_path / "prepared").mkdir()
    common = ["--dropout", "0", "--precision", "fp32", "--ema-decay", "0"]
    # torchrun cannot template the rank into an argument: the script gets one path, ranks suffix it.
    process = _torchrun([str(SCRIPT), str(tmp_path / "ddp"), "--batch-size", "8",
                         "--final", str(tmp_path / "final_%r.safetensors"), "--prepared-in", str(tmp_path / "prepared"),
                         *common])
    assert process.returncode == 0, process.stderr[-3000:]
    run_script(str(tmp_path / "single"), "--batch-size", "16", "--final", str(tmp_path / "single.safetensors"),
               *common)
    return tmp_path


def test_torchrun_two_processes_match_one_process_with_twice_the_batch(two_processes_and_one):
    tmp_path = two_processes_and_one
    rank0 = load_file(tmp_path / "final_0.safetensors")
    rank1 = load_file(tmp_path / "final_1.safetensors")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"split"' not in line]) == 24, "more than one rank wrote the log"

    single = load_file(tmp_path / "single.safetensors")
    for key in rank0:
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6)
    changed = load_file(tmp_path / "single.safetensors")
    assert any(not torch.allclose(changed[k], torch.zeros_like(changed[k])) for k in changed)


def test_torchrun_logs_the_loss_of_the_global_batch(two_processes_and_one):
    """metrics.jsonl under torchrun held rank 0's loss, of its half of the global batch: 0.6380 at step 1 where one
    process with that global batch (and the same weights) logs 0.6464. The ranks' losses are averaged."""
    def losses(run: str) -> list[float]:
        records = map(json.loads, (two_processes_and_one / run / "metrics.jsonl").read_text().splitlines())
        return [record["loss"] for record in records if "split" not in record]

    assert len(losses("ddp")) == 24
    assert losses("ddp") == pytest.approx(losses("single"), rel=1e-4)


def test_torchrun_a_training_set_that_prepares_itself_is_prepared_once(two_processes_and_one):
    """Every rank prepared a data set that prepares itself at first use at the same time: under torchrun with 2
    processes both computed R-CNN's proposals of the same 120 training images (7.3 s and 7.5 s, two progress bars,
    where one process took 5.5 s). Rank 0 prepares it, the others then read its cache."""
    assert (two_processes_and_one / "prepared" / "computed_by").read_text() == "0\n"


def test_torchrun_ranks_follow_rank_0s_plan_of_a_time_budget(tmp_path):
    # Each rank times its own steps to size the schedule; rank 1 here measures twice rank 0's time per step.
    process = _torchrun([str(SCRIPT), str(tmp_path / "ddp"), "--batch-size", "8", "--minutes", "0.02",
                         "--skewed-timing", "--final", str(tmp_path / "final_%r.safetensors"), "--dropout", "0",
                         "--precision", "fp32"])
    assert process.returncode == 0, process.stderr[-3000:]
    rank0 = load_file(tmp_path / "final_0.safetensors")
    rank1 = load_file(tmp_path / "final_1.safetensors")
    for key in rank0:  # the same learning rate at every step: DDP's averaged gradients keep them equal
        assert torch.equal(rank0[key], rank1[key]), key


def test_torchrun_a_step_agrees_on_its_batches_and_its_losses_in_two_all_reduces(tmp_path):
    """Besides DDP's gradients, each step under torchrun made three all-reduces: one to agree that every rank had its
    batch, one of a rank number to agree that every loss was finite and one of the losses to log; the second now
    travels with the third."""
    process = _torchrun([str(SCRIPT), str(tmp_path / "ddp"), "--batch-size", "8", "--steps", "5", "--precision",
                         "fp32", "--count-all-reduces", str(tmp_path / "calls_%r.json")])
    assert process.returncode == 0, process.stderr[-3000:]
    for rank in range(2):
        assert json.loads((tmp_path / f"calls_{rank}.json").read_text()) == [2] * 4


def test_torchrun_a_refusal_on_rank_0_alone_is_one_line_from_every_rank(tmp_path):
    """Rank 0 alone prepares the run folder; when it refused one, rank 1 failed on the dropped connection with
    a traceback (gloo's "Connection closed by peer") beside rank 0's line. Now rank 1 exits quietly."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("not a run")
    process = _torchrun(["-m", "visionzoo", "train", "vit_tiny_patch8_32", "--data", "digits", "--img-size", "32",
                         "--max-steps", "2", "--out", str(out), "--no-progress"])
    assert process.returncode != 0
    errors = [line for line in process.stderr.splitlines() if line.startswith("visionzoo train: error:")]
    assert errors == [f"visionzoo train: error: run folder {out} exists and is not empty; use --resume to "
                      "continue it or --overwrite"], process.stderr[-3000:]
    assert "[rank1]: Traceback" not in process.stderr, process.stderr[-3000:]
    assert (out / "todo.txt").read_text() == "not a run"


def test_torchrun_the_first_process_still_reports_an_error_it_meets_after_the_others(tmp_path):
    """The processes that leave an error to the first one exited at once, and torchrun stopped the first as soon as
    one had exited: where it met the error a moment later (here one second; on an H100 machine its first CUDA call),
    the user read no reason at all. The others now wait for it."""
    script = tmp_path / "late_first_rank.py"
    script.write_text("import os, sys, time\nfrom visionzoo.cli import main\n"
                      "if os.environ['RANK'] == '0':\n    time.sleep(1.0)\nsys.exit(main(sys.argv[1:]))\n")
    process = _torchrun([str(script), "train", "vit_tiny_patch8_32", "--data", str(tmp_path / "missing"),
                         "--out", str(tmp_path / "run"), "--no-progress"])
    assert process.returncode != 0
    errors = [line for line in process.stderr.splitlines() if line.startswith("visionzoo train: error:")]
    assert errors == [f"visionzoo train: error: dataset path not found: {tmp_path / 'missing'}"], \
        process.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing/"], "dataset path not found: {tmp}/missing"),  # before the process group exists
    (["--data", "digits", "--batch-size", "1000"],  # once it does
     "the training set has 1257 samples, fewer than one batch of 1000 x 2 process(es); lower --batch-size"),
])
def test_torchrun_an_error_of_every_rank_is_one_line_once(tmp_path, args, message):
    """Every rank ran into the same error on the same arguments and printed it: torchrun's output showed the line
    once per rank. The first process of the machine reports it; the others exit with the same status quietly."""
    process = _torchrun(["-m", "visionzoo", "train", "vit_tiny_patch8_32", "--img-size", "32", "--max-steps", "2",
                         "--out", str(tmp_path / "run"), "--no-progress", *(a.format(tmp=tmp_path) for a in args)])
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert output.count(f"visionzoo train: error: {message.format(tmp=tmp_path)}\n") == 1, output[-3000:]
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "[rank1]: Traceback" not in output, output[-3000:]


def _torchrun_failing_on_one_rank(tmp_path: Path, rank: int, what: str) -> str:
    """The output of a torchrun run whose ``rank`` fails in its own share (``what``: see failing_rank_script.py)."""
    process = _torchrun([str(FAILING_RANK_SCRIPT), str(rank), what, "train", "vit_tiny_patch8_32", "--data", "digits",
                         "--img-size", "32", "--max-steps", "2", "--out", str(tmp_path / "run"), "--no-progress",
                         "--precision", "fp32"])
    assert process.returncode != 0
    return process.stdout + process.stderr


def test_torchrun_an_error_of_one_rank_alone_is_printed_by_that_rank(tmp_path):
    """An error in a rank's own batches (a corrupt image in its share) may be that rank's alone: rank 1 prints it.
    Rank 0, which never saw it, printed gloo's traceback ("Connection closed by peer") of the all-reduce that rank 1
    never joined; the ranks now agree on each step's batches first, and rank 0 stops quietly."""
    output = _torchrun_failing_on_one_rank(tmp_path, 1, "batches")
    assert output.count("visionzoo train: error: image ") == 1, output[-3000:]
    assert "in rank 1's share cannot be read" in output, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-3000:]


def test_torchrun_a_model_too_large_for_one_ranks_device_is_refused_by_that_rank_before_the_run(tmp_path):
    """Each rank checks that the model's training fits its own device's memory; where rank 1's alone did not, it
    stopped while rank 0 went on and made the run folder (left holding its marker when torchrun stopped it). The
    ranks now agree first: rank 1 prints the refusal, rank 0 stops quietly, and no run folder is made."""
    output = _torchrun_failing_on_one_rank(tmp_path, 1, "fits")
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "visionzoo train: error: vit_tiny_patch8_32 has " in output and "this machine has " in output, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_torchrun_a_loss_that_is_not_finite_is_one_line_once(tmp_path, rank):
    """A diverged loss (too high an --lr) stopped every rank whose loss it was, each printing the line; where one
    rank's alone was NaN, the others failed on the connection it dropped, with gloo's traceback. The ranks now agree
    on it before backward: the first rank whose loss is not finite reports it, the others stop quietly."""
    output = _torchrun_failing_on_one_rank(tmp_path, rank, "loss")
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "visionzoo train: error: the model loss is nan at step 0; lower --lr" in output, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("rank, what, message", [
    (1, "forward", "an image in rank 1's batch does not fit the model"),
    (0, "memory", "out of memory: an allocation of 68.7 GB failed"),
])
def test_torchrun_a_forward_pass_that_fails_on_one_rank_alone_is_one_line_from_it(tmp_path, rank, what, message):
    """A forward pass that failed on one rank alone (its batch ran out of memory, or held an image the model
    refused) stopped that rank with its line, while the others, waiting for it in the step's all-reduce, failed on
    the connection it dropped with gloo's traceback. The failing rank reports it, the others stop quietly."""
    output = _torchrun_failing_on_one_rank(tmp_path, rank, what)
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert f"visionzoo train: error: {message}" in output, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-3000:]


def test_torchrun_a_forward_pass_that_fails_on_one_rank_of_a_vq_vae_does_not_hang(tmp_path):
    """The ranks once agreed on a forward pass that failed on one of them in the step's all-reduce of the losses:
    a VQ-VAE's quantiser sums its codes' counts over the ranks inside the forward pass, where the others then
    waited in an all-reduce the failing rank never joined, and the run hung. The failing rank stops at once, and
    the others, on the connection it drops, quietly."""
    process = _torchrun([str(FAILING_RANK_SCRIPT), "1", "forward", "train", "vqvae_small", "--data", "digits",
                         "--img-size", "16", "--max-steps", "2", "--batch-size", "4", "--out", str(tmp_path / "run"),
                         "--no-progress", "--precision", "fp32"], timeout=120)
    output = process.stdout + process.stderr
    assert process.returncode != 0
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "visionzoo train: error: an image in rank 1's batch does not fit the model" in output, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-3000:]


def test_torchrun_a_backward_pass_that_fails_on_one_rank_alone_is_one_line_from_it(tmp_path):
    """A rank that ran out of memory in its backward pass printed its line, while rank 0, waiting for its gradients
    in DistributedDataParallel's all-reduce (where no step of ours can agree with it first), printed gloo's
    traceback: "Connection closed by peer ... This is typically caused by a remote worker crashing". A rank whose
    peer is gone now stops quietly: the rank that failed says why."""
    output = _torchrun_failing_on_one_rank(tmp_path, 1, "backward")
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "visionzoo train: error: out of memory: an allocation of 68.7 GB failed" in output, output[-3000:]
    assert "[rank0]: Traceback" not in output and "[rank1]: Traceback" not in output, output[-3000:]


def test_torchrun_a_gradient_of_a_size_one_dimension_is_no_warning(tmp_path):
    """A VQ-VAE on Digits under torchrun printed DistributedDataParallel's "Grad strides do not match bucket view
    strides ... may impair performance" (five lines) from every rank: the gradient of its last layer's weight
    [32, 1, 4, 4] has another stride in its dimension of size 1 than DDP's bucket, the same memory layout
    (pytorch/pytorch#47163). The engine no longer shows that spurious warning."""
    process = _torchrun(["-m", "visionzoo", "train", "vqvae_small", "--data", "digits", "--img-size", "16",
                         "--max-steps", "1", "--batch-size", "4", "--out", str(tmp_path / "run"), "--no-progress",
                         "--precision", "fp32"])
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in process.stderr, process.stderr[-3000:]


def test_torchrun_running_out_of_memory_on_every_rank_is_one_line_once(tmp_path):
    """Digits preloaded at an --img-size that no memory holds: every rank ran out of memory as it set the run up and
    printed the advice, so the user read it once per process. The first process of the machine prints it now, as
    the other errors every rank meets alike."""
    process = _torchrun(["-m", "visionzoo", "train", "resnet18", "--data", "digits", "--img-size", "1000000",
                         "--max-steps", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert output.count("visionzoo train: error: out of memory: ") == 1, output[-3000:]
    assert output.count("visionzoo train: error:") == 1, output[-3000:]


def test_torchrun_a_log_rank_0_cannot_write_is_one_line_from_it(tmp_path):
    """Rank 0 alone appends each step to metrics.jsonl: on a full disk it printed its one line and stopped, while
    rank 1, waiting for it in the next step, died on the connection it dropped, with gloo's traceback."""
    output = _torchrun_failing_on_one_rank(tmp_path, 0, "log")
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "No space left on device" in output and "[rank1]: Traceback" not in output, output[-3000:]


def test_torchrun_a_resumed_runs_unreadable_log_is_one_line_from_rank_0(tmp_path):
    """Rank 0 alone rewrites a resumed run's log, outside the work the others wait for: when it could not (its
    metrics.jsonl a folder), rank 1 went on and failed on the connection rank 0 dropped, with gloo's traceback."""
    from visionzoo.cli import main

    common = ["train", "vit_tiny_patch8_32", "--data", "digits", "--img-size", "32", "--no-progress",
              "--precision", "fp32", "--out", str(tmp_path / "run")]
    assert main([*common, "--max-steps", "1", "--batch-size", "8"]) == 0
    (tmp_path / "run" / "metrics.jsonl").unlink()
    (tmp_path / "run" / "metrics.jsonl").mkdir()
    process = _torchrun(["-m", "visionzoo", *common, "--max-steps", "2", "--resume"])
    assert process.returncode != 0
    output = process.stdout + process.stderr
    assert output.count("visionzoo train: error:") == 1, output[-3000:]
    assert "Is a directory" in output and "[rank1]: Traceback" not in output, output[-3000:]


def test_resuming_a_torchrun_run_in_one_process_says_its_global_batch_changes(tmp_path, caplog):
    """A run trained by torchrun in 2 processes at --batch-size 8 and resumed in one process went on with a global
    batch of 8, not 16: the only sign was "batch 8 x 1 process(es)" in the log. One warning line says it now, and
    how to keep the run's batch."""
    from visionzoo.cli import main

    common = ["train", "resnet18", "--data", "digits", "--img-size", "16", "--model-arg", "small_input=true",
              "--no-progress", "--precision", "fp32", "--out", str(tmp_path / "run")]
    process = _torchrun(["-m", "visionzoo", *common, "--max-steps", "2", "--batch-size", "8"])
    assert process.returncode == 0, process.stderr[-3000:]
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    assert main([*common, "--max-steps", "3", "--resume"]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [f"--resume: {tmp_path / 'run' / 'checkpoint.safetensors'} was trained with a global batch of "
                        "16 (--batch-size 8 x 2 process(es)), this run's is 8 (8 x 1 process(es)); give --batch-size "
                        "16 to keep it in 1 process(es)"]
    caplog.clear()
    assert main([*common, "--max-steps", "4", "--resume", "--batch-size", "16"]) == 0  # the same global batch
    assert not [record for record in caplog.records if record.levelno == logging.WARNING]

def test_two_ranks_partition_the_global_batch_of_one_process():
    one = list(EpochBatchSampler(100, 8, seed=3, epoch=2))
    ranks = [list(EpochBatchSampler(100, 4, seed=3, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 12
    for step, batch in enumerate(one):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert not set(ranks[0][step]) & set(ranks[1][step])
    resumed = list(EpochBatchSampler(100, 8, seed=3, epoch=2, start_step=5))
    assert resumed == one[5:]
    assert list(EpochBatchSampler(100, 8, seed=3, epoch=3)) != one


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 100, 10, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


def test_an_existing_run_folder_is_never_overwritten_silently(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)
    assert (run / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="no checkpoint.safetensors"):
        prepare_run_dir(run, resume=True, overwrite=False)
    with pytest.raises(FileExistsError, match="is not a visionzoo run folder"):
        prepare_run_dir(run, resume=False, overwrite=True)  # a mistyped --out: the user's folder is not deleted
    assert (run / "notes.txt").read_text() == "mine"


def test_a_run_that_failed_before_writing_anything_does_not_block_its_rerun(tmp_path):
    """A run that stopped at its first step (a ViT built for 32 px given 64-px images) left a folder holding only
    the run marker, and the corrected rerun was refused: "exists and is not empty; use --resume ... or --overwrite"."""
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    assert [path.name for path in run.iterdir()] == [".visionzoo-run"]
    assert prepare_run_dir(run, resume=False, overwrite=False) == run
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="exists and is not empty.*--overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)


@pytest.mark.parametrize("older_run", [False, True])
def test_overwrite_removes_a_run_folder(tmp_path, older_run):
    run = tmp_path / "run"
    if older_run:  # written before runs were marked: known by its files
        run.mkdir()
        (run / "metrics.jsonl").write_text("{}\n")
    else:  # marked when created, so a run killed before it wrote anything is still known
        prepare_run_dir(run, resume=False, overwrite=False)
    for name in ("checkpoint.safetensors", "checkpoint.json", "loss.png", "summary.json", "pr_curve.png",
                 ".checkpoint.safetensors.abc123.tmp"):
        (run / name).write_text("old")
    prepare_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".visionzoo-run"]


def test_overwrite_replaces_only_what_a_run_writes_and_keeps_the_users_files(tmp_path, caplog):
    """--overwrite removed the whole run folder: the user's notes beside the run, and `predict --out RUN/pred`'s
    pictures, were lost with it."""
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    for name in ("checkpoint.safetensors", "checkpoint.json", "metrics.jsonl", "loss.png", "samples.png"):
        (run / name).write_text("old")
    (run / "my_notes.txt").write_text("mine")
    (run / "pred").mkdir()
    (run / "pred" / "a.png").write_bytes(b"mine")
    with caplog.at_level("INFO", logger="visionzoo"):
        prepare_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".visionzoo-run", "my_notes.txt", "pred"]
    assert (run / "my_notes.txt").read_text() == "mine" and (run / "pred" / "a.png").read_bytes() == b"mine"
    assert "my_notes.txt" in caplog.text and "pred" in caplog.text


def test_precision_auto_picks_bf16_only_where_it_is_native():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp8", cpu)
    layer = torch.nn.Linear(4, 4)
    with autocast_context(cpu, "bf16")():
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast_context(cpu, "fp32")():
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_a_time_budget_alone_ends_the_run_near_its_limit(tmp_path, monkeypatch):
    from engine_script import Blobs, StepClock

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    monkeypatch.setattr(engine, "time", StepClock(0.01))  # the same steps however busy the machine is
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(tmp_path / "run"), minutes=0.04, batch_size=16, progress=False)
    result = fit(ClassificationTask(Blobs.classes), model, Blobs(256, 0), None, config)
    assert result.steps > 16, "the run stopped long before its budget (more than one epoch fits)"
    assert 0.04 * 60 - 0.02 <= result.train_seconds <= 0.04 * 60


def test_a_time_budget_planned_from_steps_timed_in_a_busy_spell_is_re_planned_early(tmp_path, monkeypatch):
    """The tour's convnext-digits trained 19 steps in 12 s of its 80: its plan came from three steps timed while the
    machine was busy (4 s each), the steps then ran at 0.6 s, and the plan was first re-sized at step 50, long after
    the run had ended."""
    from engine_script import Blobs, StepClock

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    monkeypatch.setattr(engine, "time", StepClock(0.01))
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 0.2)  # timed in a busy spell
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(tmp_path / "run"), minutes=0.04, batch_size=16, progress=False)
    result = fit(ClassificationTask(Blobs.classes), model, Blobs(256, 0), None, config)
    assert result.steps > 3 * int(0.04 * 60 / 0.2), "the run kept the plan of its busy-spell timing"
    assert 0.04 * 60 * 0.8 <= result.train_seconds <= 0.04 * 60


class SlowingClock:
    """The engine's ``time``: each training step reads the clock twice (its start, its end) and takes ``fast``
    seconds for its first ``fast_steps`` steps, then ``slow`` (the machine got busy)."""

    def __init__(self, fast: float, slow: float, fast_steps: int):
        self.fast, self.slow, self.fast_steps, self.readings, self.now = fast, slow, fast_steps, 0, 0.0

    def perf_counter(self) -> float:
        self.readings += 1
        self.now += self.fast if self.readings <= 2 * self.fast_steps + 1 else self.slow
        return self.now


def test_a_re_planned_time_budget_goes_on_from_its_learning_rate_without_a_jump(tmp_path, monkeypatch, caplog):
    """A time budget's schedule re-planned shorter (the machine got busy) was the cosine of the new length from the
    run's start: the learning rate fell from 0.94 to 0.81 of --lr in one step at step 49, and from 0.59 to 0.29 at
    step 65, where a step of its warmup rises by 0.08. The schedule now goes on from where it was to the end of the
    new plan."""
    monkeypatch.setattr(engine, "time", SlowingClock(0.01, 0.05, fast_steps=40))
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 0.01)
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    run = tmp_path / "run"
    _blobs_fit(run, minutes=0.04, lr=1e-3)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert "planning 240 steps" in caplog.text and meta["total_steps"] < 240, "the test did not re-plan shorter"
    lrs = [record["lr"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    steps = [abs(after - before) for before, after in zip(lrs, lrs[1:])]
    assert max(steps) <= 1e-3 / meta["warmup_steps"] * 1.001, "the learning rate jumped"  # the warmup's rise
    assert lrs[-1] < lrs[60] < lrs[50] < lrs[40]


def test_a_time_budget_that_slows_down_ends_its_learning_rate_schedule_with_the_time(tmp_path, monkeypatch):
    """The re-plans took the pace of the whole run so far, and came every 50 steps: a run whose steps slowed from
    0.01 to 0.05 s at step 40 was re-planned at step 50 to 93 steps (the average pace of its fast and slow steps),
    ran out of time at step 80 and ended with its learning rate still at 0.25 of --lr. The plan now follows the
    pace of the last steps, every ten steps, so the schedule ends with the time."""
    monkeypatch.setattr(engine, "time", SlowingClock(0.01, 0.05, fast_steps=40))
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 0.01)
    run = tmp_path / "run"
    _blobs_fit(run, minutes=0.04, lr=1e-3)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["total_steps"] - 2 <= meta["step"] <= meta["total_steps"], (meta["step"], meta["total_steps"])
    lrs = [record["lr"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert lrs[-1] < 0.05 * 1e-3, lrs[-1]


def test_a_time_budget_that_ran_out_before_its_plan_resumes_on_the_same_course(tmp_path, monkeypatch):
    """Steps that slow tenfold after the last re-plan end the run before its plan: resumed without a budget, the run
    goes on to the plan's end with no jump in its learning rate."""
    monkeypatch.setattr(engine, "time", SlowingClock(0.01, 0.1, fast_steps=225))
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 0.01)
    run = tmp_path / "run"
    _blobs_fit(run, minutes=0.04, lr=1e-3)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] < meta["total_steps"], "the test's run reached its plan"
    _blobs_fit(run, resume=True)
    lrs = [record["lr"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert len(lrs) == meta["total_steps"] and lrs[-1] < 0.02 * 1e-3
    assert max(abs(after - before) for before, after in zip(lrs, lrs[1:])) <= 1e-3 / meta["warmup_steps"] * 1.001


def test_a_time_budget_re_planned_below_its_warmup_still_decays_its_learning_rate(tmp_path, monkeypatch, caplog):
    """--warmup-steps 200 --minutes 0.04 was checked against the first plan (240 steps) only: when the machine got
    busy and re-plans shrank the plan below 200 steps, the warmup was cut to the whole plan, so the learning rate
    rose to the last step and never decayed. The warmup now keeps its share of the first plan (200 of 240), short
    of the plan's end, and the run says so once."""
    monkeypatch.setattr(engine, "time", SlowingClock(0.01, 0.03, fast_steps=40))
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 0.01)
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    run = tmp_path / "run"
    _blobs_fit(run, minutes=0.04, lr=1e-3, warmup_steps=200)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert "planning 240 steps" in caplog.text and meta["total_steps"] < 200, "the test did not re-plan below 200"
    assert meta["warmup_steps"] < meta["total_steps"]
    lrs = [record["lr"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] < 0.2 * 1e-3, "the learning rate never decayed"
    cuts = [record.getMessage() for record in caplog.records if "warmup" in record.getMessage()]
    assert len(cuts) == 1 and cuts[0].startswith("--warmup-steps 200 would take all of the "), cuts
    assert "the share of the plan it had at the start (83%)" in cuts[0]


@pytest.mark.parametrize(("setting", "message"), [
    ({"checkpoint_every": 0}, r"--checkpoint-every must lie in \[1, inf\), got 0"),  # was a ZeroDivisionError
    ({"log_every": 0}, r"log_every must lie in \[1, inf\), got 0"),
    ({"eval_every": -1}, r"--eval-every must lie in \[0, inf\), got -1"),  # evaluated after every step
    ({"max_steps": 0}, r"--max-steps must lie in \[1, inf\), got 0"),  # trained nothing, wrote no checkpoint
    ({"max_steps": None, "epochs": -1.0}, r"--epochs must lie in \(0.0, inf\), got -1.0"),  # one step
    ({"max_steps": None, "minutes": 0.0}, r"--minutes must lie in \(0.0, inf\), got 0.0"),
    ({"max_steps": 2.5}, "--max-steps must be an integer, got 2.5"),  # ran 3 steps
    ({"eval_batch_size": 0}, r"eval_batch_size must lie in \[1, inf\), got 0"),
    # The learning rate stayed at 1/5, 2/5 and 3/5 of --lr, and the cosine decay never began.
    ({"max_steps": 3, "warmup_steps": 5}, r"--warmup-steps 5 is more than the run's 3 steps"),
    ({"max_steps": None, "epochs": 1.0, "warmup_steps": 3}, r"--warmup-steps 3 is more than the run's 2 steps"),
    ({"max_steps": 1, "batch_size": 64}, "fewer than one batch of 64"),  # left a run folder a rerun had to --overwrite
])
def test_budgets_and_periods_out_of_range_are_refused_before_the_run(tmp_path, setting, message):
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(tmp_path / "run"), **{"max_steps": 2, "batch_size": 16, **setting}, progress=False,
                         precision="fp32")
    with pytest.raises(ValueError, match=message):
        fit(ClassificationTask(Blobs.classes), model, Blobs(32, 0), Blobs(16, 1), config)
    assert not (tmp_path / "run").exists()


def _blobs_fit(run: Path, **settings):
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(run), progress=False, precision="fp32", **{"batch_size": 16, **settings})
    return fit(ClassificationTask(Blobs.classes), model, Blobs(256, 0), None, config)


def test_the_time_budgets_plan_names_the_minutes_given(tmp_path, monkeypatch, caplog):
    """--minutes 0.02 was logged as "time budget 0.0 min" (one decimal), --minutes 0.05 as "0.1 min"."""
    from engine_script import StepClock

    monkeypatch.setattr(engine, "time", StepClock(0.01))
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    _blobs_fit(tmp_path / "run", minutes=0.02)
    plans = [record.getMessage() for record in caplog.records if record.getMessage().startswith("time budget")]
    assert len(plans) == 1 and plans[0].startswith("time budget 0.02 min at "), plans


def test_a_refused_resume_does_not_first_say_it_resumed(tmp_path, caplog):
    """`--resume --max-steps 2` of a run at step 4 logged "resumed ... at step 4 of 4" and then refused the budget,
    so the user read that the run was resumed above the error saying it was not. The refusal is all they read."""
    _blobs_fit(tmp_path / "run", max_steps=4)
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    with pytest.raises(ValueError, match="has trained 4 steps already and --max-steps 2 counts from the run's start"):
        _blobs_fit(tmp_path / "run", max_steps=2, resume=True)
    with pytest.raises(ValueError, match="--warmup-steps 9 is more than the run's 6 steps"):
        _blobs_fit(tmp_path / "run", max_steps=6, warmup_steps=9, resume=True)
    assert not [record.getMessage() for record in caplog.records], caplog.records
    _blobs_fit(tmp_path / "run", max_steps=6, resume=True)
    assert [record.getMessage() for record in caplog.records if "resumed" in record.getMessage()] == [
        f"resumed {tmp_path / 'run' / 'checkpoint.safetensors'} at step 4 of 4"]


def test_a_resume_refused_for_its_optimizer_settings_says_nothing_of_its_ema_first(tmp_path, caplog):
    """`--resume --ema-decay 0.9 --lr 0.5` of a run trained without an EMA logged "the average (--ema-decay 0.9)
    starts from the weights of step 4" and then refused the --lr (or a --max-steps below the steps done): the
    refusal is all the user reads now."""
    _blobs_fit(tmp_path / "run", max_steps=4, ema_decay=0.0)
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    with pytest.raises(CheckpointError, match="was trained with --lr 0.002, this run asks for 0.5"):
        _blobs_fit(tmp_path / "run", max_steps=6, ema_decay=0.9, lr=0.5, resume=True)
    with pytest.raises(ValueError, match="has trained 4 steps already and --max-steps 2"):
        _blobs_fit(tmp_path / "run", max_steps=2, ema_decay=0.9, resume=True)
    assert not [record.getMessage() for record in caplog.records]
    _blobs_fit(tmp_path / "run", max_steps=6, ema_decay=0.9, resume=True)
    assert any("starts from the weights of step 4" in record.getMessage() for record in caplog.records)


def test_resume_with_minutes_trains_that_many_more_minutes(tmp_path, monkeypatch):
    """`--resume --minutes N` after a finished time-budget run trained nothing: it kept the first run's planned
    steps (all done) and counted the first run's seconds against the new budget."""
    from engine_script import StepClock

    monkeypatch.setattr(engine, "time", StepClock(0.01))
    run = tmp_path / "run"
    first = _blobs_fit(run, minutes=0.02)
    resumed = _blobs_fit(run, minutes=0.02, resume=True)
    session = resumed.train_seconds - first.train_seconds
    assert resumed.steps > first.steps + 16, "the resumed session trained (almost) nothing"
    assert 0.02 * 60 - 0.02 <= session <= 0.02 * 60
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == resumed.steps and meta["total_steps"] >= resumed.steps


def test_a_warmup_longer_than_a_time_budgets_plan_is_refused_as_for_a_step_budget(tmp_path):
    """--minutes 0.02 --warmup-steps 100000 trained at 1e-8, 2e-8, ... of --lr for the first epoch, then jumped
    to a warmup as long as the plan (from the first re-plan on): the learning rate the refusal for a step
    budget describes, without a word."""
    with pytest.raises(ValueError, match=r"--warmup-steps 100000 is more than the \d+ steps that --minutes 0.02 "):
        _blobs_fit(tmp_path / "run", minutes=0.02, warmup_steps=100_000)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(("budget", "steps"), [({"max_steps": 40, "epochs": 1.0}, 16),
                                              ({"max_steps": 5, "epochs": 1.0}, 5)])
def test_max_steps_and_epochs_together_end_the_run_at_the_first_reached(tmp_path, budget, steps):
    """The budget group reads "the first reached ends the run", but --max-steps 40 --epochs 1 (16 steps of 16 on
    256 samples) trained 40 steps on a 40-step schedule: --epochs was ignored whenever --max-steps was given."""
    result = _blobs_fit(tmp_path / "run", **budget)
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert result.steps == meta["total_steps"] == steps


@pytest.mark.parametrize(("budget", "ended_by", "flag"), [
    ({"minutes": 0.02, "epochs": 10.0}, "time", "--minutes 0.02"),  # 1.2 s buys 120 of the 160 steps
    ({"minutes": 0.02, "max_steps": 500}, "time", "--minutes 0.02"),
    ({"minutes": 1.0, "epochs": 1.0}, "epochs", "--epochs 1 (16 steps)"),
    ({"minutes": 1.0, "max_steps": 10}, "steps", "--max-steps 10"),
])
def test_a_time_budget_with_a_step_budget_plans_the_schedule_for_the_first_reached(tmp_path, monkeypatch, caplog,
                                                                                   budget, ended_by, flag):
    """`--epochs 1 --minutes 0.1` said "training resnet18 for 19 steps", stopped at step 3 as the time ran out,
    without a word, and its learning rate never decayed: the schedule followed --epochs alone. It is planned for the
    budget reached first, and the run says which one ended it (also in summary.json)."""
    from engine_script import StepClock

    monkeypatch.setattr(engine, "time", StepClock(0.01))
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    run = tmp_path / "run"
    result = _blobs_fit(run, lr=1e-3, **budget)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["total_steps"] == result.steps, "the run ended before the end of its learning-rate schedule"
    lrs = [record["lr"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert lrs[-1] == pytest.approx(1e-3 * lr_factor(result.steps - 1, result.steps, meta["warmup_steps"], 0.01,
                                                     tuple(meta["lr_anchor"])))
    assert lrs[-1] < 0.05 * 1e-3, lrs[-1]
    ends = [record.getMessage() for record in caplog.records if "ended the run" in record.getMessage()]
    assert ends == [f"the {ended_by.rstrip('s')} budget ({flag}) ended the run at step {result.steps}"]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["ended_by"], summary["planned_steps"]) == (ended_by, result.steps)


def test_a_run_that_time_ends_before_its_plan_says_the_steps_its_schedule_was_planned_for(tmp_path, monkeypatch,
                                                                                          caplog):
    """Time ran out at step 3 of the 19 planned, and the run said nothing of it."""
    from engine_script import StepClock

    monkeypatch.setattr(engine, "time", StepClock(0.01))
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 0.001)  # timed in a quiet spell
    caplog.set_level(logging.INFO, logger="visionzoo.train.engine")
    result = _blobs_fit(tmp_path / "run", minutes=0.0005, epochs=10.0)  # out of time before the first re-plan
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert result.steps < meta["total_steps"]
    assert [record.getMessage() for record in caplog.records if "ended the run" in record.getMessage()] == [
        f"the time budget (--minutes 0.0005) ended the run at step {result.steps}, before the {meta['total_steps']} "
        "steps its learning-rate schedule was planned for"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["ended_by"] == "time"
    # resumed without a budget, it goes on to the end of that plan, not to its --epochs, and says so: it said "the
    # step budget (--max-steps N) ended the run", a flag the user never gave
    monkeypatch.setattr(engine.Trainer, "_seconds_per_step", lambda self: 1 / 0)  # no time budget to plan
    caplog.clear()
    assert _blobs_fit(tmp_path / "run", resume=True).steps == meta["total_steps"]
    assert [record.getMessage() for record in caplog.records if "ended the run" in record.getMessage()] == [
        f"the step budget (the {meta['total_steps']} steps its checkpoint planned; --resume without a budget) ended "
        f"the run at step {meta['total_steps']}"]


def test_a_longer_resumed_plan_keeps_the_runs_warmup(tmp_path):
    """The warmup was re-derived from the new plan's length (a twentieth of it), so extending a 10-step run to
    400 steps put it back into a warmup of 20 steps: its learning rate fell to 11/20 of the peak at step 11."""
    run = tmp_path / "run"
    _blobs_fit(run, max_steps=10, lr=1e-3)
    _blobs_fit(run, max_steps=400, lr=1e-3, resume=True)
    lrs = {record["step"]: record["lr"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert lrs[1] == pytest.approx(1e-3)  # the first run's warmup of 1 step
    assert lrs[11] == pytest.approx(1e-3 * lr_factor(10, 400, 1, 0.01), rel=1e-6)
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["warmup_steps"] == 1 and meta["total_steps"] == 400


def test_the_readme_names_every_file_of_a_run_folder(tmp_path):
    """checkpoint.json, written beside every checkpoint, was missing from the README's list of a run folder's
    files."""
    _blobs_fit(tmp_path / "run", max_steps=2)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    written = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))
    assert "checkpoint.json" in written
    assert [name for name in written if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("new_batch", [8, 32])
def test_resume_with_another_batch_size_goes_on_at_the_next_epoch(tmp_path, new_batch):
    """After one epoch at batch 16, `--resume --batch-size 8 --epochs 2` mapped step 16 into epoch 0 of the new size
    (its second half again) and trained 2.5 epochs in all; with batch 32 it was refused as already 2 epochs done."""
    run = tmp_path / "run"
    _blobs_fit(run, epochs=1)
    resumed = _blobs_fit(run, epochs=2, batch_size=new_batch, resume=True)
    steps_per_epoch = 256 // new_batch
    assert resumed.steps == 16 + steps_per_epoch
    epochs = [record["epoch"] for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [0] * 16 + [1] * steps_per_epoch
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["epoch_position"] == [2, 0, steps_per_epoch]
    again = _blobs_fit(run, epochs=3, batch_size=new_batch, resume=True)  # the new size's epochs, from there on
    assert again.steps == 16 + 2 * steps_per_epoch


def _stopped_at_12(classes):
    """A classification task that is interrupted (as by Ctrl-C) when it reaches step 12."""
    from visionzoo.train.classification import ClassificationTask

    class Interrupted(ClassificationTask):
        def training_step(self, model, batch, optimizer):
            if self.step == 12:
                raise KeyboardInterrupt
            return super().training_step(model, batch, optimizer)

    return Interrupted(classes)


def _fit_blobs_every_5(run, task=None, **settings):
    """20-step-sized runs on Blobs with a checkpoint every 5 steps and an EMA."""
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(run), batch_size=16, progress=False, checkpoint_every=5, ema_decay=0.9,
                         **{"precision": "fp32", **settings})
    return fit(task or ClassificationTask(Blobs.classes), model, Blobs(256, 0), None, config)


def _assert_resumed_like_uninterrupted(tmp_path, first, resumed):
    from engine_script import Blobs

    _fit_blobs_every_5(tmp_path / "full", **first)
    with pytest.raises(KeyboardInterrupt):
        _fit_blobs_every_5(tmp_path / "cut", _stopped_at_12(Blobs.classes), **first)
    assert _fit_blobs_every_5(tmp_path / "cut", resume=True, **resumed).steps == 20
    full, _ = read_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    cut, meta = read_checkpoint(tmp_path / "cut" / "checkpoint.safetensors")
    assert meta["step"] == meta["total_steps"] == 20
    assert_same_state(cut, full)


def test_resume_without_a_budget_finishes_the_runs_plan_exactly(tmp_path):
    """A run of --max-steps 20 stopped at step 12 and resumed with plain --resume trained the default 10 epochs
    (160 steps) on a new cosine schedule, so it neither stopped at step 20 nor matched the uninterrupted run."""
    _assert_resumed_like_uninterrupted(tmp_path, {"max_steps": 20}, {})


def test_resume_without_a_seed_keeps_the_runs_seed(tmp_path):
    """A --seed 3 run resumed without --seed went on with seed 0: another shuffle of the epoch under way (some
    samples twice, others not at all) and other per-step randomness than the uninterrupted run."""
    _assert_resumed_like_uninterrupted(tmp_path, {"max_steps": 20, "seed": 3}, {"max_steps": 20})


def test_resume_without_a_precision_keeps_the_runs_precision(tmp_path):
    """--precision defaulted to auto on resume: a run trained in the precision auto does not pick here went on in
    the other one, unlike the uninterrupted run."""
    from visionzoo.train import TrainConfig

    trained = "fp32" if resolve_precision("auto", torch.device("cpu")) == "bf16" else "bf16"
    _assert_resumed_like_uninterrupted(tmp_path, {"max_steps": 20, "precision": trained},
                                       {"max_steps": 20, "precision": TrainConfig().precision})  # not given


def test_resume_drops_a_metrics_line_cut_short_by_a_crash(tmp_path):
    """A metrics.jsonl whose last line a crash cut short made --resume fail with a JSONDecodeError."""
    run = tmp_path / "run"
    _blobs_fit(run, max_steps=4, checkpoint_every=2)
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "lo')
    assert _blobs_fit(run, max_steps=6, resume=True).steps == 6
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_resume_killed_while_trimming_the_metrics_log_keeps_the_log(tmp_path, monkeypatch):
    """--resume rewrote metrics.jsonl in place: a process killed during the rewrite left the run with a cut or
    empty log, its loss history lost."""
    from pathlib import Path

    run = tmp_path / "run"
    _blobs_fit(run, max_steps=4, checkpoint_every=2)
    log = run / "metrics.jsonl"
    before = log.read_text()
    write_text = Path.write_text

    def killed_halfway(path, text, *args, **kwargs):
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        _blobs_fit(run, max_steps=6, resume=True)
    monkeypatch.undo()
    assert log.read_text() == before
    assert not list(run.glob(".*.tmp"))


def test_a_data_set_preparing_itself_at_first_use_does_so_off_the_training_clock(tmp_path, monkeypatch):
    """fastrcnn_shapes --max-steps 2 printed '2 steps in 160.2 s (0.1 samples/s)': its Selective Search cache,
    computed when the first batch is read, was counted as training time (and spent a --minutes budget)."""
    from engine_script import Blobs, StepClock

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    clock = StepClock(0.01)
    monkeypatch.setattr(engine, "time", clock)

    class SlowToPrepare(Blobs):
        prepared = False

        def __getitem__(self, index):
            if not self.prepared:
                clock.now += 100.0  # the preparation's time
                self.prepared = True
            return super().__getitem__(index)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(tmp_path / "run"), progress=False, precision="fp32", batch_size=16, max_steps=2)
    result = fit(ClassificationTask(Blobs.classes), model, SlowToPrepare(256, 0), None, config)
    assert result.steps == 2 and result.train_seconds < 1.0


def test_torchrun_ranks_wait_for_rank_0s_evaluation_longer_than_torchs_30_minutes(monkeypatch):
    """Rank 0 alone evaluates while the others wait in a collective, under torch's default 30-minute timeout:
    R-CNN on Shapes' 500 val images took 9+ minutes on 2 cores, so a larger val split ended a finished run with
    a timeout on the waiting rank. The process group now waits a day."""
    import datetime

    import torch.distributed as dist

    from visionzoo.train.distributed import init_distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: calls.append((backend, kwargs)))
    info = init_distributed("cpu")
    assert (info.rank, info.world_size) == (1, 2)
    [(backend, kwargs)] = calls
    assert backend == "gloo"
    assert kwargs.get("timeout", datetime.timedelta(minutes=30)) >= datetime.timedelta(hours=12)


def test_an_error_in_a_data_loader_worker_is_raised_as_it_was(tmp_path):
    """A truncated COCO image read by --workers 2 ended `visionzoo train` with "error: Caught ValueError in
    DataLoader worker process 0." and the worker's whole traceback in place of the one-line error naming the
    file that --workers 0 gives."""
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    message = "image id 5: image /data/b.png cannot be read: image file is truncated"

    class Corrupt(Blobs):
        def __getitem__(self, index):
            if index == 5:
                raise ValueError(message)
            return super().__getitem__(index)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    config = TrainConfig(out=str(tmp_path / "run"), progress=False, precision="fp32", batch_size=4, max_steps=8,
                         num_workers=2)
    with pytest.raises(ValueError) as raised:
        fit(ClassificationTask(Blobs.classes), model, Corrupt(16, 0), None, config)
    assert str(raised.value) == message
    assert "raise ValueError(message)" in "".join(raised.value.__notes__), "the worker's traceback is lost for --debug"


def test_resume_keeps_the_runs_checkpoint_and_evaluation_periods_and_workers(tmp_path):
    """A run started with --checkpoint-every 3 --eval-every 3 --workers 1 and resumed without them went on with
    the defaults: no checkpoint before the end (a second kill lost everything since the resume), no evaluation
    before the end, and its data read in the main process."""
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    class StoppedAt8(ClassificationTask):
        def training_step(self, model, batch, optimizer):
            if self.step == 8:
                raise KeyboardInterrupt
            return super().training_step(model, batch, optimizer)

    def run(task, **settings):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        config = TrainConfig(out=str(tmp_path / "run"), batch_size=16, progress=False, precision="fp32", **settings)
        return fit(task, model, Blobs(256, 0), Blobs(16, 1), config)

    run(ClassificationTask(Blobs.classes), max_steps=4, checkpoint_every=3, eval_every=3, num_workers=1)
    with pytest.raises(KeyboardInterrupt):
        run(StoppedAt8(Blobs.classes), max_steps=10, resume=True)
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 6, "the resumed run wrote no checkpoint at step 6"
    assert {key: meta["config"][key] for key in ("checkpoint_every", "eval_every", "num_workers")} == {
        "checkpoint_every": 3, "eval_every": 3, "num_workers": 1}
    records = map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert [record["step"] for record in records if "split" in record] == [3, 4, 6]
    run(ClassificationTask(Blobs.classes), max_steps=10, checkpoint_every=4, num_workers=0, resume=True)
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert (meta["config"]["checkpoint_every"], meta["config"]["num_workers"]) == (4, 0)  # given again: they win


def test_resume_with_another_seed_in_the_middle_of_an_epoch_is_refused(tmp_path, caplog):
    """A --seed 3 run stopped at batch 10 of 16 and resumed with --seed 5 shuffled the rest of that epoch anew, without
    a word: some of its images were seen twice in the epoch and others not at all. It is refused now; at an epoch's
    end, where no shuffle is under way, the new seed is taken and the log says so."""

    from engine_script import Blobs

    from visionzoo.checkpoint import CheckpointError

    with pytest.raises(KeyboardInterrupt):
        _fit_blobs_every_5(tmp_path / "cut", _stopped_at_12(Blobs.classes), max_steps=20, seed=3)
    with pytest.raises(CheckpointError, match=r"stopped at batch 10 of 16 of epoch 0 with --seed 3; --seed 5 would "
                                              r"shuffle the rest of that epoch anew"):
        _fit_blobs_every_5(tmp_path / "cut", max_steps=20, seed=5, resume=True)
    assert _fit_blobs_every_5(tmp_path / "cut", max_steps=20, seed=3, resume=True).steps == 20  # its own seed: taken

    _fit_blobs_every_5(tmp_path / "epoch", epochs=1, seed=3)
    with caplog.at_level(logging.INFO, logger="visionzoo.train.engine"):
        assert _fit_blobs_every_5(tmp_path / "epoch", epochs=2, seed=5, resume=True).steps == 32
    assert "goes on with --seed 5 from epoch 1 (it was trained with --seed 3)" in caplog.text
    _, meta = read_checkpoint(tmp_path / "epoch" / "checkpoint.safetensors")
    assert meta["config"]["seed"] == 5


def test_resume_in_the_warmup_keeps_the_learning_rate_and_ema_ramp_of_an_uninterrupted_run(tmp_path):
    """A run of --warmup-steps 15 stopped at step 12 (its checkpoint at step 10, in the warmup and in the EMA's ramp
    of decay (1 + step) / (10 + step)) and resumed with plain --resume: the same learning rate at every step, and the
    same weights, EMA and optimizer state at the end, as the uninterrupted run."""
    _assert_resumed_like_uninterrupted(tmp_path, {"max_steps": 20, "warmup_steps": 15}, {})

    def lrs(run: str) -> dict[int, float]:
        records = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return {record["step"]: record["lr"] for record in records if "lr" in record}

    assert lrs("cut") == lrs("full")
    assert [lrs("full")[step] for step in (1, 11, 15, 16)] == pytest.approx([2e-3 * f for f in (1 / 15, 11 / 15, 1, 1)])


def test_resuming_a_finished_run_logs_its_final_evaluation_once(tmp_path):
    """--resume of a run that had reached its end evaluated it again (as it should, to report its metrics) and
    appended that evaluation to metrics.jsonl beside the first: two val records of the last step."""
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    run = tmp_path / "run"
    for resume in (False, True, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        config = TrainConfig(out=str(run), max_steps=4, batch_size=16, eval_every=2, progress=False,
                             precision="fp32", resume=resume)
        assert fit(ClassificationTask(Blobs.classes), model, Blobs(64, 0), Blobs(16, 1), config).steps == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(record["step"], record.get("split")) for record in records] == [
        (1, None), (2, None), (2, "val"), (3, None), (4, None), (4, "val")]


def test_resume_with_ema_off_of_a_run_with_ema_is_refused_as_another_lr_is(tmp_path):
    """--resume --ema-decay 0 of a run trained with an EMA went on without it and wrote its checkpoint without the
    EMA weights, without a word."""
    from visionzoo.checkpoint import CheckpointError

    run = tmp_path / "run"
    _blobs_fit(run, max_steps=2, ema_decay=0.9)
    before = (run / "checkpoint.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=r"trained with --ema-decay 0\.9, this run asks for 0, which would drop "
                                              r"its EMA weights; leave --ema-decay out or give a decay in \(0, 1\)"):
        _blobs_fit(run, max_steps=4, ema_decay=0.0, resume=True)
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert _blobs_fit(run, max_steps=4, resume=True).metrics == {}  # left out: the run's EMA goes on
    assert any(key.startswith("ema.") for key in load_file(run / "checkpoint.safetensors"))


def test_resume_with_ema_on_of_a_run_without_one_says_where_the_average_starts(tmp_path, caplog):
    """--resume --ema-decay 0.9 of a run trained without an EMA started the average from the resumed weights
    without a word, so its EMA weights looked like a whole run's average."""
    run = tmp_path / "run"
    _blobs_fit(run, max_steps=2)
    with caplog.at_level(logging.INFO, logger="visionzoo.train.engine"):
        _blobs_fit(run, max_steps=4, ema_decay=0.9, resume=True)
    assert "was trained without an EMA: the average (--ema-decay 0.9) starts from the weights of step 2" in caplog.text
    assert any(key.startswith("ema.") for key in load_file(run / "checkpoint.safetensors"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="visionzoo.train.engine"):
        _blobs_fit(run, max_steps=6, resume=True)  # the run's own EMA goes on: nothing to say
    assert "without an EMA" not in caplog.text


@pytest.mark.parametrize("budget, message", [
    ({"epochs": 1e308}, r"--epochs 1e\+308 is more steps than can be counted \(16 an epoch\); give fewer epochs"),
    ({"minutes": 1e308}, r"--minutes 1e\+308 buys more steps than can be counted at .* s a step; give fewer minutes"),
])
def test_a_budget_of_more_steps_than_can_be_counted_is_refused_by_its_flag(tmp_path, budget, message):
    """--epochs 1e308 or --minutes 1e308 (finite, so taken when parsed) failed as a traceback, 'OverflowError: cannot
    convert float infinity to integer'."""
    with pytest.raises(ValueError, match=message):
        _blobs_fit(tmp_path / "run", **budget)


def test_a_run_stopped_before_its_first_checkpoint_is_pointed_to_overwrite_not_resume(tmp_path):
    """A run killed before its first checkpoint (its marker and metrics.jsonl written) was refused with 'use --resume
    to continue it or --overwrite', and --resume then with 'no checkpoint.safetensors': a loop of advice."""
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(FileExistsError) as refused:
        prepare_run_dir(run, resume=False, overwrite=False)
    assert "--resume" not in str(refused.value)
    assert "holds no checkpoint.safetensors to resume (the run stopped before its first checkpoint); use --overwrite" \
           in str(refused.value)
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint.safetensors in .*: the run stopped before its "
                                                r"first checkpoint; start it again with --overwrite"):
        prepare_run_dir(run, resume=True, overwrite=False)


def test_a_batch_of_one_through_batchnorm_is_refused_naming_batch_size(tmp_path):
    """--batch-size 1 for a model whose BatchNorm then sees one value per channel (a ResNet at --img-size 8) failed
    with torch's 'Expected more than 1 value per channel when training', naming no option."""
    from engine_script import Blobs

    from visionzoo.train import TrainConfig, fit
    from visionzoo.train.classification import ClassificationTask

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    config = TrainConfig(out=str(tmp_path / "run"), progress=False, precision="fp32", batch_size=1, max_steps=2)
    with pytest.raises(ValueError, match=r"^--batch-size 1: a BatchNorm layer of the model sees one value per channel "
                                         r"\(.*\); give --batch-size 2 or more, or a larger --img-size$"):
        fit(ClassificationTask(Blobs.classes), model, Blobs(16, 0), None, config)


def test_a_run_folder_another_run_is_writing_is_refused_before_anything_is_removed(tmp_path):
    """A second `train --resume` (or --overwrite) of a run still training in another terminal ran beside it: both
    wrote the checkpoint in turn and metrics.jsonl held their steps interleaved (1..25, 31, 26, 32, 27, ...)."""
    import fcntl

    run = tmp_path / "run"
    _blobs_fit(run, max_steps=2)
    before = sorted(p.name for p in run.iterdir())
    other = os.open(run, os.O_RDONLY)  # the running process's hold on its folder
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        for settings in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(FileExistsError, match=f"run folder {run} is in use by another run"):
                _blobs_fit(run, max_steps=4, **settings)
            assert sorted(p.name for p in run.iterdir()) == before
    finally:
        os.close(other)
    assert _blobs_fit(run, max_steps=4, resume=True).steps == 4
    assert _blobs_fit(run, max_steps=6, resume=True).steps == 6  # the folder is free again once a run ends


def test_a_file_system_without_locks_still_trains(tmp_path, monkeypatch):
    """Where flock is not supported (some network or FUSE file systems: EOPNOTSUPP, ENOLCK), the run folder's lock
    must not stop the run."""
    import errno
    import fcntl

    def unsupported(fd, operation):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    assert _blobs_fit(tmp_path / "run", max_steps=2).steps == 2
    assert _blobs_fit(tmp_path / "run", max_steps=3, resume=True).steps == 3


def test_torchrun_an_ema_codebook_follows_the_global_batch(tmp_path):
    """A VQ-VAE's EMA codebook is a buffer that each rank updated from its own half of the batch, and DDP then
    replaced rank 1's with rank 0's: under torchrun the codebook followed rank 0's samples alone, unlike one
    process with the global batch. The codes' counts and sums are now summed over the ranks, and so is the histogram
    of the logged perplexity and share of codes used."""
    from visionzoo.cli import main

    common = ["vqvae_small", "--data", "digits", "--max-steps", "2", "--precision", "fp32", "--ema-decay", "0",
              "--no-progress", "--model-arg", "dead_code_threshold=0"]
    process = _torchrun(["-m", "visionzoo", "train", *common, "--batch-size", "4", "--out", str(tmp_path / "ddp")])
    assert process.returncode == 0, process.stderr[-3000:]
    assert main(["train", *common, "--batch-size", "8", "--out", str(tmp_path / "single")]) == 0
    ddp, _ = read_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    single, _ = read_checkpoint(tmp_path / "single" / "checkpoint.safetensors")
    for key in ("model.quantizer.codebook", "model.quantizer.ema_count", "model.quantizer.ema_sum"):
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=key)


    def logged(run: str) -> list[dict]:
        records = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return [{k: record[k] for k in ("loss", "perplexity", "codes_used")} for record in records
                if "split" not in record]

    # the perplexity of the global batch's codes, not the mean of each rank's (3.4594 where it is 3.4655)
    assert logged("ddp") == [pytest.approx(record, rel=1e-4) for record in logged("single")]


def test_adamw_is_fused_for_float_parameters_and_steps_as_torchs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    twin.load_state_dict(model.state_dict())

    def groups(m):
        return [{"params": [p for p in m.parameters() if p.dim() > 1], "weight_decay": 0.05},
                {"params": [p for p in m.parameters() if p.dim() <= 1], "weight_decay": 0.0}]

    ours = adamw(groups(model), lr=1e-2, betas=(0.5, 0.9))
    plain = torch.optim.AdamW(groups(twin), lr=1e-2, betas=(0.5, 0.9))
    assert ours.defaults["fused"] is True and plain.defaults["fused"] is None
    x = torch.randn(8, 6)
    for _ in range(3):
        for m, optimizer in ((model, ours), (twin, plain)):
            optimizer.zero_grad()
            m(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamw_is_not_fused_where_torch_has_no_fused_kernel():
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not adamw([{"params": [param]}], lr=1e-3).defaults.get("fused")
