"""What tasks share: the check that a model's training fits the memory of its device."""

import pytest
import torch
from torch import nn

import visionzoo.train.task as task_module
from visionzoo.train.task import check_model_fits, device_memory


def test_a_cuda_training_is_checked_against_the_gpus_free_memory_not_the_machines(monkeypatch):
    """On CUDA the check compared the model with the machine's MemAvailable: a GPU of less free memory was never
    asked; it now reads torch.cuda.mem_get_info and names this GPU. The model's CPU weights count on neither side."""
    free = {"gpu": 2**20}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["gpu"], 80 * 2**30))
    monkeypatch.setattr(task_module, "available_memory", lambda: 2**40)
    model = nn.Linear(1023, 1024)  # 1,048,576 parameters: 16 MiB to train
    assert device_memory(torch.device("cuda", 0)) == (2**20, "this GPU")
    with pytest.raises(ValueError, match=r"^Linear has 1,048,576 parameters: training it needs at least 16.0 MiB for "
                                         r"its weights, gradients and AdamW state, and this GPU has 1.0 MiB available"):
        check_model_fits(model, torch.device("cuda", 0), "classification")
    free["gpu"] = 16 * 2**20
    check_model_fits(model, torch.device("cuda", 0), "classification")


def test_on_the_cpu_the_weights_a_built_model_holds_count_as_available_to_it(monkeypatch):
    model = nn.Linear(1023, 1024)  # 4 MiB of weights held, 16 MiB to train
    monkeypatch.setattr(task_module, "available_memory", lambda: 12 * 2**20)
    check_model_fits(model, torch.device("cpu"), "classification")
    monkeypatch.setattr(task_module, "available_memory", lambda: 11 * 2**20)
    with pytest.raises(ValueError, match="needs at least 16.0 MiB .* this machine has 15.0 MiB available"):
        check_model_fits(model, torch.device("cpu"), "classification")
