import os
import shutil

import pytest

# The suite's expected numbers are the CPU's, as CI has no GPU. On a machine with one, every command's default
# device (cuda where available) put trainings, evals and FIDs there, and tests failed on an H100 on the GPU's
# rounding, on CPU tensors meeting a model trained there, and on torchrun starting two NCCL processes for one GPU.
# The GPU stays hidden from the tests and the processes they start (set before torch first asks CUDA); the CUDA
# paths are checked by running the commands and the benchmarks' --device cuda on a GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_configure(config):
    """Under `pytest -n 2` (make test) each worker process is one core's: torch's own threads there would only
    contend with the other worker. The environment reaches the processes that tests start (torchrun, scripts)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def remove_module_temp_dirs(tmp_path_factory):
    """Delete the folders a module's fixtures made (timm and torchvision checkpoints) when the module ends.

    With `tmp_path_retention_policy = "failed"` pytest removes a passed test's own folder at once but
    keeps the fixtures' until the session ends; kept, they add up to gigabytes over the suite. The
    folders of failed tests (named after the test) are kept for inspection.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for path in set(base.iterdir()) - before:
        if path.is_dir() and not path.name.startswith("test_"):
            shutil.rmtree(path, ignore_errors=True)


TWO_RANKS_FRAME = """
import json, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

{body}

def run(rank, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{{out}}_store", rank=rank, world_size=2)
    result = work(rank)
    dist.destroy_process_group()
    with open(f"{{out}}_{{rank}}.json", "w") as handle:
        json.dump(result, handle)

if __name__ == "__main__":
    mp.start_processes(run, args=(sys.argv[1],), nprocs=2, start_method="fork")
"""


@pytest.fixture
def two_ranks(tmp_path):
    """Run ``body`` (Python source defining ``work(rank) -> dict`` of JSON values) in two forked processes of one
    gloo process group, ``torch.distributed`` initialised, and return their two dicts in rank order."""
    import json
    import subprocess
    import sys
    import textwrap

    def run(body: str) -> list[dict]:
        script = tmp_path / "ranks.py"
        script.write_text(TWO_RANKS_FRAME.format(body=textwrap.dedent(body)))
        process = subprocess.run([sys.executable, str(script), str(tmp_path / "rank")], capture_output=True,
                                 text=True, timeout=120)
        assert process.returncode == 0, process.stderr[-3000:]
        return [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in range(2)]

    return run


@pytest.fixture(scope="session", autouse=True)
def glibc_frees_as_by_default():
    """`visionzoo.cli.main` makes its process keep freed memory (process-wide, for good): in the suite's processes,
    which run many commands and tests whose chunk sizes follow glibc's defaults, it records the call instead. For the
    whole session, so that module-scoped fixtures, set up before any function-scoped one, find it in place too."""
    import visionzoo.utils

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(visionzoo.utils, "keep_freed_memory", lambda: calls.append(True))
        yield calls
