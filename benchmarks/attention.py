"""The attention product on CPU in bf16: torch's fused kernels against the written-out product.

``visionzoo.layers.scaled_dot_product_attention`` writes the product out (bf16 matmuls, fp32 softmax) on
CPU in bf16/fp16 for short sequences with small attention matrices (``writes_out``) and calls
``F.scaled_dot_product_attention`` otherwise. This script times whole-model steps both ways in one process,
alternating, best of ``--repeats``: a training step (forward, backward, AdamW) or an inference batch under
bf16 autocast, with the limits lowered (always the fused kernels) and lifted (always written out); the last
column says which one the default limits pick. Run it in a fresh process per case (``--only``) as well:
the written-out product allocates large buffers, and how fast those come back from the allocator depends on
what the process did before. Models whose attention the switch reaches: ViT,
DeiT, the GPT prior and Image GPT (Swin keeps its own window attention).

    python benchmarks/attention.py               # README's table; writes benchmarks/results/attention.json
    python benchmarks/attention.py --only vit_tiny --repeats 2   # replaces those rows, keeps the others

Each row records the machine and command it was measured with, so a file filled by several ``--only`` runs
says where each row came from.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import visionzoo.layers.attention as attention
from arguments import AppendOnce, existing_results, merge_rows, output_file, positive_int, write_json
from timing import best_seconds, machine
from visionzoo.generative.gpt import GPT
from visionzoo.generative.image_gpt import ImageGPT
from visionzoo.models import create_model

RESULTS = Path(__file__).parent / "results"


def train_step(model: torch.nn.Module, inputs: torch.Tensor, loss: Callable) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            out = model(inputs)
        value = loss(out[0] if isinstance(out, tuple) else out)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()

    return step


def inference(model: torch.nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def batch() -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            model(inputs)

    return batch


def classifier(name: str, batch: int, size: int, classes: int, train: bool) -> Callable[[], None]:
    model = create_model(name, num_classes=classes)
    images = torch.randn(batch, 3, size, size)
    if not train:
        return inference(model, images)
    labels = torch.randint(0, classes, (batch,))
    return train_step(model, images, lambda logits: F.cross_entropy(logits.float(), labels))


def sequence_model(model: torch.nn.Module, batch: int, length: int, vocab: int) -> Callable[[], None]:
    tokens = torch.randint(0, vocab, (batch, length))
    return train_step(model, tokens, lambda logits: F.cross_entropy(logits.float().reshape(-1, vocab), tokens.reshape(-1)))


# name: (builder, tokens attended per query)
CASES: dict[str, tuple[Callable[[], Callable[[], None]], int]] = {
    "vit_tiny_patch8_32 train, batch 64": (lambda: classifier("vit_tiny_patch8_32", 64, 32, 10, True), 17),
    "deit_tiny_distilled_patch8_32 train, batch 64": (
        lambda: classifier("deit_tiny_distilled_patch8_32", 64, 32, 10, True), 18),
    "vit_tiny_patch8_64 train, batch 64": (lambda: classifier("vit_tiny_patch8_64", 64, 64, 6, True), 65),
    "vit_small_patch16_224 train, batch 32": (lambda: classifier("vit_small_patch16_224", 32, 224, 1000, True), 197),
    "vit_small_patch16_224 inference, batch 32": (
        lambda: classifier("vit_small_patch16_224", 32, 224, 1000, False), 197),
    "GPT prior, 64 codes, 256 wide, train, batch 64": (lambda: sequence_model(GPT(512, 64, 10, 256, 6, 8), 64, 64, 512), 64),
    "image_gpt 16 px train, batch 64": (lambda: sequence_model(ImageGPT(in_chans=3, img_size=16), 64, 256, 32), 256),
}


def time_case(build: Callable[[], Callable[[], None]], written_out: bool, repeats: int) -> float:
    attention.EXPLICIT_MAX_KEYS = 2**62 if written_out else -1
    attention.EXPLICIT_MAX_LOGITS_BYTES = 2**62
    native = attention.native_bf16
    attention.native_bf16 = lambda device: True  # written out also where bf16 is emulated, to be measured there
    try:
        torch.manual_seed(0)
        run = build()
        run()  # warm-up
        return best_seconds(run, repeats)
    finally:
        attention.native_bf16 = native


def default_path(build: Callable[[], Callable[[], None]]) -> str:
    """What the default limits pick for the case's attention calls: "written out", "fused" or "mixed"."""
    decide, picks = attention.writes_out, set()

    def spy(q: torch.Tensor, k: torch.Tensor) -> bool:
        pick = decide(q, k)
        picks.add(pick)
        return pick

    attention.writes_out = spy
    try:
        torch.manual_seed(0)
        build()()
    finally:
        attention.writes_out = decide
    return {frozenset({True}): "written out", frozenset({False}): "fused"}.get(frozenset(picks), "mixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--only", action=AppendOnce, help="cases whose name contains this (repeatable)")
    parser.add_argument("--out", type=output_file, default=RESULTS / "attention.json",
                        help="results JSON; its rows of other cases are kept (default: %(default)s)")
    args = parser.parse_args()
    earlier = existing_results(parser, args.out, __file__)
    cases = {name: case for name, case in CASES.items() if not args.only or any(part in name for part in args.only)}
    if not cases:  # would write a results file of no rows
        parser.error(f"--only {' '.join(args.only)} matches no case; the cases: {', '.join(CASES)}")
    defaults = attention.EXPLICIT_MAX_KEYS, attention.EXPLICIT_MAX_LOGITS_BYTES
    rows = []

    def save() -> list[dict]:
        """The file's rows with those measured so far, written out: a run stopped later keeps them."""
        merged = merge_rows(earlier.get("rows"), rows, "case", list(CASES))
        write_json(args.out, {**machine(), "explicit_max_keys": defaults[0], "explicit_max_logits_bytes": defaults[1],
                              "rows": merged}, __file__)
        return merged

    for name, (build, keys) in cases.items():
        fused = written = float("inf")
        for _ in range(2):  # alternate, so that a slow spell of the machine hits both
            fused = min(fused, time_case(build, False, args.repeats))
            written = min(written, time_case(build, True, args.repeats))
        attention.EXPLICIT_MAX_KEYS, attention.EXPLICIT_MAX_LOGITS_BYTES = defaults
        path = default_path(build)
        rows.append({"case": name, "keys": keys, "default_path": path, "fused_ms": round(fused * 1000, 1),
                     "written_out_ms": round(written * 1000, 1), "ratio": round(written / fused, 3), **machine()})
        print(f"{name:48s} {keys:4d} keys  fused {fused * 1000:8.1f} ms  written out {written * 1000:8.1f} ms  "
              f"ratio {written / fused:.2f}  (default: {path})", flush=True)
        merged = save()
    print(f"wrote {args.out} ({len(rows)} rows measured, {len(merged) - len(rows)} kept from it)")


if __name__ == "__main__":
    main()
