"""Loading a script of benchmarks/ as a module, for the tests of its arguments and its fairness."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# The functions that do each script's work: any call means the arguments were not refused up front.
WORK = {
    "generative": ("tokenizer", "prior", "image_gpt", "untrained_image_gpt", "dcgan", "baselines", "codebook_stats"),
    "precision": ("measure", "matmul_gflops"),
    "backbones": ("parameter_counts", "logit_differences", "speed"),
    "detection": ("conformance", "shapes", "proposal_detector"),
    "train_backbones": ("train_and_test", "label_ambiguity_job", "distillation_job", "mpp_job"),
    "hipt_slides": ("ShapeSlides",),
    "hipt_region": ("measure", "in_fresh_process"),
    "fid": ("run",),
    "attention": ("time_case", "default_path"),
    "metrics": ("coco_rows", "segm_rows", "mean_ap_rows", "frechet_rows"),
    "selective_search": ("evaluate",),
    "ops": ("run",),
    "vqgan_taming": ("the_pair",),
    "reconstruction_memory": ("measure_in_child",),
}


def load(name):
    """benchmarks/NAME.py as a fresh module (the folder on sys.path, for the scripts' shared modules)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there (train_backbones' Run)
    spec.loader.exec_module(module)
    return module
