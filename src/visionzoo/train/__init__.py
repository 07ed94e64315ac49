"""The training engine and the tasks families plug into it."""

from visionzoo.train import autoregressive, classification, detection, gan, reconstruction, vqgan  # noqa: F401  (register the tasks)
from visionzoo.train.engine import TrainConfig, TrainResult, fit
from visionzoo.train.task import Setup, Task, get_task, register_task

__all__ = ["Setup", "Task", "TrainConfig", "TrainResult", "fit", "get_task", "register_task"]
