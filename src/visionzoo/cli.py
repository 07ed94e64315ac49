"""The ``visionzoo`` command line: one subcommand per job, each family adding its own.

A module adds a subcommand with :func:`register_command`; the modules listed in
``COMMAND_MODULES`` are imported when the CLI starts, so a new family only appends its module
there. User errors (``ValueError``, ``OSError`` such as ``FileNotFoundError``, ...) become one
line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

COMMAND_MODULES = (
    "visionzoo.models.commands",
    "visionzoo.data.commands",
    "visionzoo.train.commands",
    "visionzoo.metrics.commands",
    "visionzoo.tour",
)

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FloatingPointError,  # the engine's diverged loss, with advice on what to change
    OSError,  # the rest name their file too: "[Errno 36] File name too long: '...'", a full disk
)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    distributed: bool = False  # shares its work among torchrun's processes


_COMMANDS: dict[str, Command] = {}


def register_command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None, distributed: bool = False
) -> Callable[[Callable[[argparse.Namespace], int | None]], Callable[[argparse.Namespace], int | None]]:
    """Register ``run(args) -> exit code | None`` as ``visionzoo NAME``; ``arguments`` adds its options. A command
    runs under ``torchrun`` only if ``distributed`` (it shares its work among the processes)."""

    def decorator(run: Callable[[argparse.Namespace], int | None]):
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        _COMMANDS[name] = Command(name, help, arguments or (lambda parser: None), run, distributed)
        return run

    return decorator


class RecordingParser(argparse.ArgumentParser):
    """An ArgumentParser that keeps the actions added to it, its argument groups' too (``recorded_actions``), and so
    its long options (``long_options``): argparse lists them only in a private attribute."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded_actions: list[argparse.Action] = []  # before argparse adds --help
        super().__init__(*args, **kwargs)

    @property
    def long_options(self) -> list[str]:
        return [option for action in self.recorded_actions for option in action.option_strings if option.startswith("--")]

    def _record(self, action: argparse.Action) -> argparse.Action:
        self.recorded_actions.append(action)
        return action

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._record(super().add_argument(*args, **kwargs))

    def add_argument_group(self, *args: Any, **kwargs: Any):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *args, **kwargs: self._record(add(*args, **kwargs))
        return group


class _OneLineParser(RecordingParser):
    """argparse that reports a bad option as one line (no usage block) and exit status 2, and keeps its commands'
    parsers (``command_parsers``) as they are added: :func:`_parse` suggests the closest option of the command from
    them. It takes options only as spelled in full: argparse's abbreviations (``--max 2`` for ``--max-steps 2``) would
    change meaning, or become ambiguous, once an option of the same prefix is added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.command_parsers: dict[str, _OneLineParser] = {}
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{_closest_choice(message)}\n")


def _closest_choice(message: str) -> str:
    """"; closest: NAME" for argparse's message of an invalid choice (argparse suggests one only from Python 3.14),
    else ""."""
    from visionzoo.utils import closest

    match = re.search(r"invalid choice: '(.*)' \(choose from (.*)\)$", message)
    if match is None:
        return ""
    choices = [choice.strip().strip("'") for choice in match[2].split(",")]
    near = closest(match[1], choices, n=1)
    return f"; closest: {near[0]}" if near else ""


def parse_number(text: str, kind: type[int] | type[float], expected: str, holds: Callable[[Any], bool]) -> Any:
    """``text`` read as ``kind`` (int or float), or argparse's error saying what was ``expected`` ("a positive
    integer") both for a number that fails ``holds`` and for no number at all, which argparse itself reported as
    "invalid positive_int value: 'x'", naming our function."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not holds(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_int(text: str) -> int:
    return parse_number(text, int, "a positive integer", lambda value: value > 0)


def positive_float(text: str) -> float:
    return parse_number(text, float, "a finite positive number", lambda value: 0 < value < math.inf)


def nonnegative_int(text: str) -> int:
    return parse_number(text, int, "an integer >= 0", lambda value: value >= 0)


def nonnegative_float(text: str) -> float:
    return parse_number(text, float, "a finite number >= 0", lambda value: 0 <= value < math.inf)


def seed(text: str) -> int:
    """An integer that ``torch.manual_seed`` takes: in [-2**63, 2**64) (beyond, torch's "Overflow when unpacking
    long long")."""
    return parse_number(text, int, "an integer in [-2**63, 2**64)", lambda value: -2**63 <= value < 2**64)


def fraction(text: str) -> float:
    """A number in [0, 1): a decay, a smoothing, a share."""
    return parse_number(text, float, "a number in [0, 1)", lambda value: 0 <= value < 1)


def unit_interval(text: str) -> float:
    """A number in [0, 1]: a weight of one term against another."""
    return parse_number(text, float, "a number in [0, 1]", lambda value: 0 <= value <= 1)


def probability(text: str) -> float:
    """A number in (0, 1]: a share of probability mass (top-p sampling's nucleus)."""
    return parse_number(text, float, "a number in (0, 1]", lambda value: 0 < value <= 1)


DEVICES = ("cpu", "cuda")


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, as every command that runs a model takes it (:func:`visionzoo.utils.resolve_device` reads it)."""
    parser.add_argument("--device", choices=DEVICES, help="cpu or cuda (default: cuda where available, else cpu)")


def _version() -> str:
    """The installed package's version (its metadata), or the source's own where it runs uninstalled."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionzoo")
    except PackageNotFoundError:
        from visionzoo import __version__

        return __version__


def build_parser() -> _OneLineParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = _OneLineParser(prog="visionzoo", description="visionzoo: the vision models of the notes, one command line.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for command in sorted(_COMMANDS.values(), key=lambda c: c.name):
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        parser.command_parsers[command.name] = command_parser
        command.add_arguments(command_parser)
        command_parser.set_defaults(_run=command.run, _distributed=command.distributed)
    return parser


def _keep_freed_memory() -> None:
    """The command's process keeps glibc's freed blocks of up to 32 MiB for reuse (see
    :func:`visionzoo.utils.keep_freed_memory`): a training on the CPU then maps its large activations once rather
    than at every step, and faults their pages in once (bf16 training 1.15× the samples/s for ``convnext_atto_32``
    on Digits and 1.03× for ``vit_vqgan_64`` on Shapes: ``benchmarks/precision.py --bf16-only --keep-freed-memory``),
    and inference takes the larger chunks that pay then. The process is the command's own, so its memory not shrinking
    afterwards costs nothing; a library caller decides for its own process. Nothing where the C library is not
    glibc's."""
    from visionzoo import utils

    with contextlib.suppress(OSError):
        utils.keep_freed_memory()


def main(argv: Sequence[str] | None = None) -> int:
    from visionzoo.train.distributed import (
        PeerFailed,
        leave_error_to_first_process,
        peer_gone,
        reports_error,
        requested_world_size,
    )
    from visionzoo.utils import out_of_memory

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = _parse(parser, argv)
    empty = _given_empty(sys.argv[1:] if argv is None else list(argv))
    if empty:
        # an empty path is the current folder to pathlib ("--out ''" would name the folder the user stands in), an
        # empty --coco-json was taken as not given
        print(f"visionzoo {args.command}: error: {empty} is an empty string; give a value", file=sys.stderr)
        return 2
    try:
        if requested_world_size() > 1 and not args._distributed:
            # each process would do all the work: print every result once per process, write the same files at once
            raise ValueError(f"{args.command} does not run under torchrun (only train shares its work among the "
                             "processes); run it in one process")
        _keep_freed_memory()
        return int(args._run(args) or 0)
    except PeerFailed:  # under torchrun: another rank failed where this one waited for it, and says why in one line
        return 2
    except BrokenPipeError:  # an OSError, so before the user errors
        # The reader went away (`visionzoo coco-eval ... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except USER_ERRORS as error:
        if args.debug or os.environ.get("VISIONZOO_DEBUG"):
            raise
        if reports_error(error):  # under torchrun: once, not once per process
            print(f"visionzoo {args.command}: error: {error}", file=sys.stderr)
        else:
            leave_error_to_first_process()
        return 2
    except (MemoryError, RuntimeError, TypeError) as error:
        if peer_gone(error) and not (args.debug or os.environ.get("VISIONZOO_DEBUG")):
            return 2  # as PeerFailed: the rank that failed says why, in its own line
        # torch's CPU allocator fails with a RuntimeError: an --img-size of 5000 on Digits (its images are preloaded at
        # that size) asked for 126 GB and ended in a 37-line traceback; sizes past 2**63 fail to be sized at all
        if not out_of_memory(error) or args.debug or os.environ.get("VISIONZOO_DEBUG"):
            raise
        if reports_error(error):  # under torchrun: once, as the user errors
            print(f"visionzoo {args.command}: error: out of memory: {_allocation(error)}; lower "
                  f"{_memory_options(args)}", file=sys.stderr)
        else:
            leave_error_to_first_process()
        return 2
    except KeyboardInterrupt:
        print(f"visionzoo {args.command}: interrupted", file=sys.stderr)
        return 130


def _parse(parser: _OneLineParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with an unknown option refused by its command's parser, naming the closest
    option it takes (argparse before 3.14 names neither the command nor a suggestion)."""
    from visionzoo.utils import closest

    args, extras = parser.parse_known_args(argv)
    if extras:
        command_parser = parser.command_parsers[args.command]
        # compared without their dashes, which every long option shares (--debug was "closest" to --help)
        options = {option[2:]: option for option in command_parser.long_options}
        own = set(parser.long_options)
        hint = ""
        for token in extras:
            option = token.split("=", 1)[0]
            if option in own:
                hint = f"; {option} goes before the command: visionzoo {option} {args.command} ..."
                break
            started = _started_options(option, [parser, command_parser])
            if started:  # argparse's abbreviation, which a later option of the same start would change
                hint = f"; options are taken only in full: {option} is the start of {' and '.join(started)}"
                break
            near = closest(option[2:], options, n=1) if option.startswith("--") else []
            if near:
                hint = f"; closest to {option}: {options[near[0]]}"
                break
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return args


def _started_options(option: str, parsers: Sequence[RecordingParser]) -> list[str]:
    """The long options of ``parsers`` shown in their help that start with ``option`` (``--max``: ``--max-steps``)."""
    if not option.startswith("--") or option == "--":
        return []
    return [name for parser in parsers for action in parser.recorded_actions if action.help != argparse.SUPPRESS
            for name in action.option_strings if name.startswith(option)]


def _given_empty(argv: Sequence[str]) -> str | None:
    """The option (or positional argument) of ``argv`` given as an empty string, if any."""
    for index, token in enumerate(argv):
        if token.startswith("--") and token.endswith("="):
            return token[:-1]
        if token == "":
            before = argv[index - 1] if index else ""
            return before if before.startswith("-") and not _is_number(before) else "an argument"
    return None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _memory_options(args: argparse.Namespace) -> str:
    """The options of the command that lower its memory, as advice: sample takes no --img-size."""
    options = [option for option, name in (("--img-size", "img_size"), ("--batch-size", "batch_size"))
               if hasattr(args, name)]
    return f"{', '.join(options)} or the number of images" if options else "the number of images"


def _allocation(error: BaseException) -> str:
    """How much the failed allocation asked for, where torch's message says it."""
    match = re.search(r"tried to allocate (\d+) bytes", str(error))
    return f"an allocation of {int(match[1]) / 1e9:,.1f} GB failed" if match else "an allocation failed"
