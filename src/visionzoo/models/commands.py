"""``visionzoo list-models [PATTERN] [--task TASK] [--pretrained]``."""

from __future__ import annotations

import argparse
import sys

from visionzoo.cli import register_command
from visionzoo.models import get_model_entry, list_models, list_tasks
from visionzoo.utils import closest


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'resnet*'")
    parser.add_argument("--task", choices=list_tasks(), metavar="TASK",
                        help=f"only models of this task: {', '.join(list_tasks())}")
    parser.add_argument("--pretrained", action="store_true",
                        help="only models with official weights (pretrained=True), as timm.list_models(pretrained=True)")


@register_command("list-models", help="list registered models", arguments=_arguments)
def list_models_command(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, task=args.task, pretrained=args.pretrained)
    if not names:
        # 'vit*' names models, none of them detectors
        kind = " ".join(filter(None, ("pretrained" if args.pretrained else "", args.task, "model")))
        # a typo ('resnt*'), a name without its glob ('resnet') or in capitals: the names the filters leave, nearest
        near = closest(args.pattern, list_models(task=args.task, pretrained=args.pretrained))
        hint = f"; closest: {', '.join(near)}" if near else ""
        print(f"no {kind} matches {args.pattern!r}{hint}", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    for name in names:
        entry = get_model_entry(name)
        print(f"{name:<{width}}  {entry.task:<15} {'pretrained' if entry.pretrained else ''}")
    return 0
