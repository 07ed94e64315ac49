"""Backbones beside timm: parameter counts, logits with converted weights, inference throughput.

Three parts, each writing its section of ``benchmarks/results/backbones.json`` (the others are kept):

* ``params``: every registered name that timm also has, both counted (built on the meta device).
* ``logits``: a timm model with random weights is saved to a file, loaded through
  ``create_model(name, checkpoint=FILE)``; the largest absolute logit difference on the same input
  (fp32), at the checkpoint's size and, for ViT, at 288 through ``dynamic_img_size``.
* ``speed``: inference images/s at ``--batch`` (32) 224×224, ours and timm's interleaved in one
  process, best of ``--repeats``; fp32, then bf16 autocast at ``--bf16-batch``. The fraction of the
  machine's matmul peak (measured here, best of 3: 2048² in fp32, 512² in bf16) uses each model's FLOPs counted by
  ``torch.utils.flop_counter`` (2 per multiply-add). ``--device cuda`` measures on the GPU (each call
  synchronised; fp32 matmuls without TF32, torch's default) into the ``speed_cuda`` section.
  ``--keep-freed-memory`` first makes glibc keep freed blocks for reuse (``visionzoo.utils.keep_freed_memory``), for both
  libraries alike, so that no forward pays page faults for its activations; into ``speed_keep_freed_memory``.
  ``--compile`` measures both libraries' models through ``torch.compile`` (inductor, with its ``freezing`` option:
  weights folded in as constants for inference), compiled at the warm-up call of each precision and not timed; the
  section gets ``_compiled``. ``--models`` measures others than the three of the issue's table (resnet50, beside
  timm's resnet50, the same network as torchvision's) and is for another ``--out``.

    python benchmarks/backbones.py                       # all three parts
    python benchmarks/backbones.py --part speed --one-thread
    python benchmarks/backbones.py --part speed --keep-freed-memory --bf16-batch 32 --bf16-repeats 7
    python benchmarks/backbones.py --part speed --keep-freed-memory --compile --bf16-batch 32 --bf16-repeats 7
    python benchmarks/backbones.py --part speed --device cuda --batch 256 --bf16-batch 256 --bf16-repeats 5
    python benchmarks/backbones.py --part speed --models resnet50 --bf16-batch 32 --bf16-repeats 5 \
        --out benchmarks/results/backbones_resnet50.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from arguments import device_name, existing_results, output_file, positive_int, write_json
from timing import best_seconds, machine
from visionzoo.models import create_model, list_models
from visionzoo.utils import keep_freed_memory

RESULTS = Path(__file__).parent / "results"
LOGIT_MODELS = ("vit_small_patch16_224", "deit_small_distilled_patch16_224", "swin_tiny_patch4_window7_224",
                "convnext_tiny")
CPU = torch.device("cpu")
SPEED_MODELS = ("vit_small_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny")
# measured when named with --models (not by default: the table is the three above)
OTHER_SPEED_MODELS = ("resnet50",)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_counts() -> dict[str, dict[str, int]]:
    shared = sorted(set(list_models()) & set(timm.list_models()))
    rows = {}
    for name in shared:
        with torch.device("meta"):
            ours, theirs = count(create_model(name)), count(timm.create_model(name))
        rows[name] = {"ours": ours, "timm": theirs, "equal": ours == theirs}
        print(f"{name:<40} ours {ours:>12,}  timm {theirs:>12,}  {'equal' if ours == theirs else 'DIFFERENT'}")
    return rows


def logit_differences(batch: int = 2) -> dict[str, dict[str, float]]:
    rows = {}
    generator = torch.Generator().manual_seed(0)
    for name in LOGIT_MODELS:
        torch.manual_seed(0)
        reference = timm.create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
            ours = create_model(name, checkpoint=path).eval()
            row = {}
            x = torch.randn(batch, 3, 224, 224, generator=generator)
            with torch.inference_mode():
                row["max_abs_diff_224"] = float((ours(x) - reference(x)).abs().max())
            if name.startswith("vit_"):
                dyn_ref = timm.create_model(name, dynamic_img_size=True).eval()
                dyn_ref.load_state_dict(reference.state_dict())
                dyn_ours = create_model(name, checkpoint=path, dynamic_img_size=True).eval()
                x = torch.randn(batch, 3, 288, 288, generator=generator)
                with torch.inference_mode():
                    row["max_abs_diff_288_dynamic"] = float((dyn_ours(x) - dyn_ref(x)).abs().max())
        rows[name] = row
        print(f"{name:<40} " + "  ".join(f"{k} {v:.2e}" for k, v in row.items()))
    return rows


def synchronized(fn, device: torch.device):
    """``fn`` that returns once the device has finished its work (a CUDA call only queues it)."""
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize(device))


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 3, device: torch.device = CPU
                ) -> float:
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    product = synchronized(lambda: a @ b, device)
    product()
    best = best_seconds(product, repeats)
    return 2 * size ** 3 / best


def flops_per_image(model: torch.nn.Module, size: int = 224) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def throughput(models: dict[str, torch.nn.Module], batch: int, repeats: int, bf16: bool,
               device: torch.device = CPU) -> dict[str, float]:
    """Images/s of each model, measured in turn (interleaved) ``repeats`` times, best kept."""
    x = torch.randn(batch, 3, 224, 224, device=device)
    best = {key: float("inf") for key in models}

    def run(model):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    for model in models.values():
        synchronized(lambda m=model: run(m), device)()  # warm-up: allocator, kernel selection
    for _ in range(repeats):
        for key, model in models.items():
            best[key] = min(best[key], best_seconds(synchronized(lambda m=model: run(m), device), 1))
    return {key: batch / seconds for key, seconds in best.items()}


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` through ``torch.compile`` for inference: inductor, weights frozen into the graph."""
    import torch._inductor.config as inductor_config

    # process-wide, as the allocator's setting: torch.compile(options={"freezing": True}) compiled without freezing
    # (ViT-S/16 bf16 at 84 img/s, eager's 85, where the global setting gave 111)
    inductor_config.freezing = True
    return torch.compile(model)


def speed(batch: int, repeats: int, bf16_batch: int, bf16_repeats: int,
          device: torch.device = CPU, keep_freed: bool = False, compile_models: bool = False,
          names: tuple[str, ...] | None = None) -> dict:
    if keep_freed:  # process-wide: here, with the measuring, and not in a run refused or stopped before it
        keep_freed_memory()
    # bf16 at 512² on a CPU: a 2048² product takes seconds where bf16 is emulated; best of 3 all the same, since one
    # call caught in a slow spell would understate the peak and overstate each model's share of it
    bf16_size = 8192 if device.type == "cuda" else 512
    peaks = {"fp32": matmul_peak(torch.float32, device=device),
             "bf16": matmul_peak(torch.bfloat16, size=bf16_size, device=device)}
    print(f"matmul peak here: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    rows = {"matmul_peak_flops": peaks, **machine(device), "batch": batch, "bf16_batch": bf16_batch,
            "compiled": compile_models}
    for name in SPEED_MODELS if names is None else names:
        torch.manual_seed(0)
        models = {"ours": create_model(name).eval(), "timm": timm.create_model(name).eval()}
        flops = flops_per_image(models["ours"])
        models = {key: model.to(device) for key, model in models.items()}
        if compile_models:
            models = {key: compiled(model) for key, model in models.items()}
        row = {"gflops_per_image": flops / 1e9}
        for precision, size, reps in (("fp32", batch, repeats), ("bf16", bf16_batch, bf16_repeats)):
            rates = throughput(models, size, reps, bf16=precision == "bf16", device=device)
            row[precision] = {
                **{f"{k}_img_s": v for k, v in rates.items()},
                "ratio": rates["ours"] / rates["timm"],
                "ours_fraction_of_peak": rates["ours"] * flops / peaks[precision],
                "timm_fraction_of_peak": rates["timm"] * flops / peaks[precision],
                "ours_fraction_of_2.8_tflops": rates["ours"] * flops / 2.8e12,
            }
            print(f"{name:<32} {precision}: ours {rates['ours']:.2f} img/s, timm {rates['timm']:.2f} img/s, "
                  f"ratio {rates['ours'] / rates['timm']:.3f}, ours at "
                  f"{100 * rates['ours'] * flops / peaks[precision]:.1f}% of the measured peak")
        rows[name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("params", "logits", "speed", "all"), default="all")
    # the speed part's flags: None when not given, so that another part can refuse them rather than ignore them
    speed_flags = {"--batch": 32, "--repeats": 5, "--bf16-batch": 2, "--bf16-repeats": 1}
    parser.add_argument("--batch", type=positive_int, help="speed: the fp32 batch (default 32)")
    parser.add_argument("--repeats", type=positive_int, help="speed: best of this many (default 5)")
    parser.add_argument("--bf16-batch", type=positive_int,
                        help="speed: the bf16 batch (default 2; small: on CPUs without AMX/AVX512-BF16 bf16 is "
                             "emulated, ~100× slower)")
    parser.add_argument("--bf16-repeats", type=positive_int, help="speed: bf16 best of this many (default 1)")
    parser.add_argument("--one-thread", action="store_true", help="speed: torch.set_num_threads(1)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="speed, CPU: glibc keeps freed blocks for reuse (both libraries), so that no forward "
                             "faults its activations in again")
    parser.add_argument("--compile", action="store_true",
                        help="speed: both libraries' models through torch.compile (inductor, frozen weights)")
    parser.add_argument("--models", nargs="+", choices=SPEED_MODELS + OTHER_SPEED_MODELS, default=None,
                        help=f"speed: these models (default: {' '.join(SPEED_MODELS)})")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="where --part speed measures (cuda: into the speed_cuda section)")
    parser.add_argument("--out", type=output_file, default=RESULTS / "backbones.json")
    args = parser.parse_args()
    if args.device == "cuda" and args.part != "speed":
        parser.error("--device cuda measures --part speed only (the other parts are the same on every device)")
    if args.keep_freed_memory and args.device == "cuda":
        parser.error("--keep-freed-memory is for the CPU (torch's CUDA allocator already keeps freed blocks)")
    for flag, default in {**speed_flags, "--one-thread": False, "--keep-freed-memory": False,
                          "--compile": False, "--models": None}.items():
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) not in (None, False) and args.part not in ("speed", "all"):
            parser.error(f"{flag} is used by --part speed only, not by --part {args.part}")
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if args.one_thread:
        torch.set_num_threads(1)
    results = existing_results(parser, args.out, __file__)
    speed_key = "speed_cuda" if args.device == "cuda" else "speed_one_thread" if args.one_thread else "speed"
    if args.keep_freed_memory:
        speed_key += "_keep_freed_memory"
    if args.compile:
        speed_key += "_compiled"
    parts = {"params": parameter_counts, "logits": logit_differences,
             speed_key: lambda: speed(args.batch, args.repeats, args.bf16_batch, args.bf16_repeats,
                                      torch.device(args.device), args.keep_freed_memory, args.compile,
                                      args.models and tuple(args.models))}
    for key, measure in parts.items():
        if args.part in (key.split("_")[0], "all"):
            results[key] = measure()
            # each part as it is done: a run stopped in a later part keeps the sections it has measured
            write_json(args.out, results, __file__)
            print(f"wrote the {key} section of {args.out}", flush=True)


if __name__ == "__main__":
    main()
