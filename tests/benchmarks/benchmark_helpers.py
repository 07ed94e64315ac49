"""Loading a script of benchmarks/ as a module, for the tests of its arguments and its fairness."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    """benchmarks/NAME.py as a fresh module (the folder on sys.path, for the scripts' shared modules)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there (train_backbones' Run)
    spec.loader.exec_module(module)
    return module
