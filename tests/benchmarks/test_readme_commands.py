"""The README's commands still run as written: every ``python benchmarks/SCRIPT.py ...`` and ``visionzoo ...`` command
of its shell blocks and code spans is accepted by its parser and by the checks its script or command makes before any
work (nothing is trained or measured), the results file each benchmark command writes is in the repository, and
every ``benchmarks/results/`` file the README names exists. The usage commands of each benchmark script's docstring
are checked the same way, and each command a results file records still reads as it did when it ran.

A code span of options alone (``--job vit-mpp``, ``--minutes 9.5 --data shapes``) is read as the last whole command
before it with those options given instead of its own: "the same with ...". The few spans of visionzoo options in a
benchmark's paragraph (``--precision auto``) are listed in VISIONZOO_SPANS with the command they are read with; an
option's name alone (``--resume``) must be one that the command before it, or visionzoo, takes."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
from benchmark_helpers import BENCHMARKS, WORK, load

ROOT = BENCHMARKS.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# Spans that name a command without being one, each with the reason it is not parsed.
NOT_COMMANDS = {
    "visionzoo train": "the command's name in prose",
    "visionzoo fid --features domain": "the option of `visionzoo fid` that the text explains, without its two folders",
}
# Spans of options in prose that belong to a visionzoo command, not to the benchmark script of their paragraph (or
# follow no command): each is read as part of the command given here.
VISIONZOO_SPANS = {
    "--ema-decay 0": "visionzoo train resnet18 --data digits",  # resuming a run that has an EMA
    "--precision auto": "visionzoo train resnet18 --data digits",  # the default that the benchmarks rely on
    "--train-size 100000": "visionzoo train resnet18 --data shapes",  # the -fresh jobs' setting
    "--model-arg global_pool=max": "visionzoo train vit_tiny_patch8_64 --data shapes",  # the -max jobs' setting
    "--hflip 0.5 --vflip 0.5 --rot90 0.5": "visionzoo train resnet18 --data shapes",  # the -flips jobs' setting
    "--device cuda": "visionzoo train resnet18 --data digits",  # torchrun on GPUs
    "--device cpu": "visionzoo train resnet18 --data digits",  # torchrun on gloo where GPUs are
}
# Benchmark commands of the README whose results file is not in the repository, and why.
RESULTS_ELSEWHERE = {
    "python benchmarks/train_backbones.py --job JOB --device cuda --workers 2 --eval-every 500":
        "the GPU machine's JSON files did not come back; cuda_trainings_h200.log holds the output",
    "python benchmarks/generative.py --model image_gpt --data shapes --device cuda --minutes 4 --seeds 1":
        "the same GPU run: cuda_trainings_h200.log holds its output",
    "--model image_gpt": "names the Image GPT runs above, which wrote one file per data set",
}
# Words that stand for a value in a command, and the value it is checked with.
PLACEHOLDERS = {
    "NAME": "vit-digits32",  # --job NAME: a job of the table below it
    "JOB": "resnet18-shapes64-fresh",  # --job JOB: each job of the GPU table below it
    "A": "real_images/",  # visionzoo fid A B: two folders
    "B": "generated_images/",
}
# The first words of shell commands that are not ours to parse.
OTHER_PROGRAMS = {"make": "the Makefile's targets (demo, test): each must be one of the Makefile's"}


@dataclass(frozen=True)
class Command:
    """A command of the README as it is checked: ``program`` (a benchmark script's name, or "visionzoo") and its
    arguments; ``text`` is what the README wrote. A span of options reads as a whole command (``fragment``: its
    paragraph's last whole command with those options), or only names an option (``names``): one that ``program``
    (a script, "visionzoo COMMAND", or any visionzoo command for "visionzoo") must take."""

    text: str
    program: str
    argv: tuple[str, ...]
    fragment: bool = False
    names: bool = False


def shell_blocks(text: str) -> list[str]:
    """The fenced code blocks of ``text`` that hold shell commands (not the Python examples)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    return [body for language, body in blocks if language in ("", "bash", "sh", "shell", "console")]


def split_command(tokens: list[str], text: str) -> Command | tuple[str, ...] | None:
    """The command of one shell command's ``tokens``: a Command for ours, the tokens of another program's, None for a
    line that holds none."""
    if not tokens:
        return None
    if tokens[0] == "torchrun" and "-m" in tokens:  # torchrun [its options] -m visionzoo ...
        tokens = tokens[tokens.index("-m") + 1:]
    if tokens[0] in ("python", "python3") and len(tokens) > 1:
        tokens = tokens[1:] if tokens[1] != "-m" else tokens[2:]
    if tokens[0] == "visionzoo":
        return Command(text, "visionzoo", tuple(tokens[1:]))
    match = re.fullmatch(r"benchmarks/(\w+)\.py", tokens[0])
    if match:
        return Command(text, match[1], tuple(tokens[1:]))
    return tuple(tokens)


def block_commands(block: str) -> tuple[list[Command], list[tuple[str, ...]]]:
    """The commands of a shell block (lines joined at a trailing backslash, ``#`` comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``), and the other programs' commands it holds."""
    ours, others = [], []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        start = 0
        for index in [*(i for i, token in enumerate(tokens) if token in ("&&", "||", ";", "|")), len(tokens)]:
            found = split_command(tokens[start:index], shlex.join(tokens[start:index]))
            start = index + 1
            if isinstance(found, Command):
                ours.append(found)
            elif found is not None:
                others.append(found)
    return ours, others


def prose(text: str) -> str:
    return re.sub(r"^```\w*\n.*?^```", "", text, flags=re.S | re.M)


def sections(text: str) -> list[str]:
    """The prose of ``text`` between its headings: a fragment reads over a whole command of its own section."""
    return re.split(r"^#+ .*$", prose(text), flags=re.M)


def spans(section: str) -> list[str]:
    """The code spans of ``section``, a span broken over lines read as one line."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", section)]


def placeholders_filled(tokens: list[str]) -> list[str]:
    return [PLACEHOLDERS.get(token, token) for token in tokens]


def span_commands(section: str) -> list[Command]:
    """The commands of a section's code spans in order: whole ones (``python benchmarks/...``, ``visionzoo ...``) and
    spans of options (``--...``), read over the last whole command before them (see :func:`read_fragment`)."""
    commands, base = [], None
    for span in spans(section):
        if span in NOT_COMMANDS:
            continue
        if span.startswith(("python benchmarks/", "visionzoo ")):
            base = split_command(placeholders_filled(shlex.split(span)), span)
            commands.append(base)
        elif span.startswith("--"):
            command, whole = read_fragment(span, tuple(placeholders_filled(shlex.split(span))), base)
            commands.append(command)
            base = command if whole else base  # the next "the same with ..." reads over it
    return commands


def read_fragment(text: str, argv: tuple[str, ...], base: Command | None) -> tuple[Command, bool]:
    """A span of options ``argv`` as the command it stands for, and whether it is a whole one: on its own where it
    gives the required option of ``base``'s script (``--model``, ``--job``), else ``base`` with these options given
    instead of its own; a span of VISIONZOO_SPANS as part of its visionzoo command; an option's name without the
    value it takes only names it (``names``)."""
    if text in VISIONZOO_SPANS:
        prefix = tuple(shlex.split(VISIONZOO_SPANS[text]))[1:]
        if len(argv) == 1:
            return Command(text, f"visionzoo {prefix[0]}", argv, names=True), False
        return Command(text, "visionzoo", (*prefix, *argv), fragment=True), False
    parser = None if base is None else script_parser(base.program) if base.program != "visionzoo" else \
        visionzoo_parser().command_parsers.get(base.argv[0])
    actions = {} if parser is None else {option: action for action in parser._actions
                                        for option in action.option_strings}
    if len(argv) == 1 and (argv[0] not in actions or actions[argv[0]].nargs != 0):
        program = "visionzoo" if base is None else f"visionzoo {base.argv[0]}" if base.program == "visionzoo" \
            else base.program
        return Command(text, program, argv, names=True), False
    if base is None:
        raise AssertionError(f"README: `{text}` follows no command to read it with; add it to VISIONZOO_SPANS")
    if parser is not None and {token.split("=")[0] for token in argv} & required_options(parser):
        return Command(text, base.program, argv, fragment=True), True
    return Command(text, base.program, merged(base.argv, argv), fragment=True), False


def readme_commands() -> list[Command]:
    commands = []
    for document in DOCUMENTS:
        text = document.read_text()
        for block in shell_blocks(text):
            commands += block_commands(block)[0]
        for section in sections(text):
            commands += span_commands(section)
    return commands


def results_paths() -> list[str]:
    """The benchmarks/results/ paths the documents name (a pattern with ``*`` stands for the files it matches)."""
    found = []
    for document in DOCUMENTS:
        found += [path.rstrip(".") for path in re.findall(r"benchmarks/results/[\w.*/-]+", document.read_text())]
    return sorted(set(found))


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings if option.startswith("--")}


def required_options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions if action.required for option in action.option_strings}


class Accepted(Exception):
    """The command got past its checks to its first piece of work."""


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@cache
def script_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser benchmarks/NAME.py builds in its ``main``, taken where it starts to parse."""
    saved = sys.argv
    sys.argv = [f"{name}.py"]
    original = argparse.ArgumentParser.parse_args

    def caught(self, *args, **kwargs):
        raise _Parser(self)

    argparse.ArgumentParser.parse_args = caught
    try:
        load(name).main()
    except _Parser as found:
        return found.parser
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved
    raise AssertionError(f"benchmarks/{name}.py parsed no arguments")


@cache
def visionzoo_parser():
    from visionzoo.cli import build_parser

    return build_parser()


def visionzoo_options(command: str | None = None) -> set[str]:
    """The long options of ``visionzoo COMMAND``, or of every command."""
    parsers = visionzoo_parser().command_parsers
    return set().union(*(options_of(parsers[name]) for name in ([command] if command else parsers)))


def merged(base: tuple[str, ...], fragment: tuple[str, ...]) -> tuple[str, ...]:
    """``base``'s arguments with the options ``fragment`` gives replaced by the fragment's."""
    given = {token.split("=")[0] for token in fragment if token.startswith("--")}
    kept, replaced = [], False
    for token in base:
        if token.startswith("--"):
            replaced = token.split("=")[0] in given
        if not replaced:
            kept.append(token)
    return (*kept, *fragment)


def refusal(capsys, error: BaseException | None = None) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return str(error) if error is not None else lines[-1] if lines else "exit status 2"


def check_script(name: str, argv: tuple[str, ...], monkeypatch, capsys) -> tuple[str | None, list[Path]]:
    """None where benchmarks/NAME.py takes ``argv`` up to its first piece of work, else its error; and the results
    files it would write. As on a machine with a GPU: the README's ``--device cuda`` runs were made on one."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])  # before the import: some scripts read it then
    module = load(name)
    written, read = [], module.existing_results

    def started(*args, **kwargs):
        raise Accepted

    def results(parser, path, *args, **kwargs):  # each script reads the file it will write before any work
        written.append(Path(path))
        return read(parser, path, *args, **kwargs)

    for function in (*WORK[name], "write_json"):
        monkeypatch.setattr(module, function, started)
    monkeypatch.setattr(Path, "mkdir", started)  # the results folder is made once the checks are done
    monkeypatch.setattr(module, "existing_results", results)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        module.main()
    except Accepted:
        pass
    except SystemExit as exit_info:
        return (refusal(capsys) if exit_info.code else None), written
    return None, written


def _accept_training(model, data, config, img_size=None, model_args=None, options=None, **kwargs):
    from visionzoo.train.engine import check_config
    from visionzoo.train.run import _registered_name, task_class
    from visionzoo.train.task import check_task_options

    name = _registered_name(model)
    check_task_options(task_class(name), name, options or {})
    check_config(config)
    raise Accepted


def check_visionzoo(argv: tuple[str, ...], monkeypatch, capsys) -> str | None:
    """None where ``visionzoo ARGV`` is parsed and passes the checks its command makes before any work (train up to
    its run, the others up to choosing their device; coco-eval, export-data and list-models are only parsed), else
    the error it prints."""
    import visionzoo.metrics.commands
    import visionzoo.tour
    import visionzoo.train.commands as commands
    from visionzoo.cli import _given_empty, _parse
    from visionzoo.models import get_model_entry

    try:
        args = _parse(visionzoo_parser(), list(argv))
    except SystemExit:
        return refusal(capsys)
    if _given_empty(list(argv)):
        return f"{_given_empty(list(argv))} is an empty string"

    def started(*args, **kwargs):
        raise Accepted

    monkeypatch.setattr(commands, "run_training", _accept_training)
    for module, function in ((visionzoo.tour, "_check_dependencies"), (commands, "resolve_device"),
                             (commands, "_complete_command"), (visionzoo.metrics.commands, "resolve_device")):
        monkeypatch.setattr(module, function, started)
    checks = {"train": commands.train_command, "tour": visionzoo.tour.tour_command,
              "fid": visionzoo.metrics.commands.fid_command,
              **{name: lambda args, run=run: (get_model_entry(args.model), run(args))
                 for name, run in (("eval", commands.eval_command), ("predict", commands.predict_command),
                                   ("sample", commands.sample_command))}}
    try:
        checks.get(args.command, lambda args: None)(args)
    except Accepted:
        pass
    except (ValueError, OSError) as error:
        return refusal(capsys, error)
    return None


COMMANDS = readme_commands()


@pytest.fixture
def restored():
    """The environment and torch's threads as they were: some scripts set them when imported or parsed."""
    environment, threads = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(environment)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("command", COMMANDS, ids=[command.text for command in COMMANDS])
def test_a_readme_command_is_accepted(command, monkeypatch, capsys, restored):
    if command.names:  # an option named in prose
        program, _, name = command.program.partition(" ")
        options = (visionzoo_options(name or None) if program == "visionzoo" else options_of(script_parser(program)))
        assert command.argv[0] in options, f"README: `{command.text}`: {command.program} takes no {command.argv[0]}"
        return
    monkeypatch.chdir(ROOT)  # the README's paths are the repository's
    if command.program == "visionzoo":
        error, written = check_visionzoo(command.argv, monkeypatch, capsys), []
    else:
        error, written = check_script(command.program, command.argv, monkeypatch, capsys)
    program = command.program if command.program == "visionzoo" else f"python benchmarks/{command.program}.py"
    shown = f" (read as `{program} {' '.join(command.argv)}`)" if command.fragment else ""
    assert error is None, f"README: `{command.text}`{shown}: {error}"
    if command.text not in RESULTS_ELSEWHERE:  # the figures beside it are in the file it writes
        missing = [os.path.relpath(ROOT / path, ROOT) for path in written if not (ROOT / path).is_file()]
        assert missing == [], f"README: `{command.text}`{shown} writes {', '.join(missing)}, not in the repository"


def test_the_readme_commands_are_found():
    """The extraction finds the README's commands of each kind, so that a change to it cannot check nothing."""
    programs = {command.program for command in COMMANDS if not command.fragment}
    assert {"visionzoo", "generative", "train_backbones", "detection", "backbones", "metrics"} <= programs, programs
    assert sum(command.fragment for command in COMMANDS) >= 10
    others = {tokens[0] for tokens in other_commands()}
    assert others <= set(OTHER_PROGRAMS), f"shell commands of other programs: {sorted(others - set(OTHER_PROGRAMS))}"


def other_commands() -> list[tuple[str, ...]]:
    return [tokens for document in DOCUMENTS for block in shell_blocks(document.read_text())
            for tokens in block_commands(block)[1]]


def test_a_make_target_the_readme_gives_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    given = {target for tokens in other_commands() if tokens[0] == "make" for target in tokens[1:]}
    assert given and given <= targets, f"README runs make {' '.join(sorted(given - targets))}; Makefile has {targets}"


def test_every_listed_exception_is_still_in_the_readme():
    """A span or placeholder the README no longer has is taken off the lists, not left to excuse a later one."""
    text = "\n".join(" ".join(document.read_text().split()) for document in DOCUMENTS)
    assert [span for span in [*NOT_COMMANDS, *VISIONZOO_SPANS, *RESULTS_ELSEWHERE] if f"`{span}`" not in text] == []
    words = {token for command in readme_commands_unfilled() for token in command}
    assert sorted(set(PLACEHOLDERS) - words) == []


def readme_commands_unfilled() -> list[list[str]]:
    found = []
    for document in DOCUMENTS:
        for section in sections(document.read_text()):
            found += [shlex.split(span) for span in spans(section)
                      if span.startswith(("python benchmarks/", "visionzoo ")) and span not in NOT_COMMANDS]
    return found


@pytest.mark.parametrize("path", results_paths())
def test_a_results_file_the_readme_names_exists(path):
    assert list(ROOT.glob(path)) if "*" in path else (ROOT / path).is_file(), f"README names {path}, not in the repo"


def docstring_commands() -> list[tuple[str, Command]]:
    """The usage commands of each benchmarks/*.py module docstring (its lines ``python benchmarks/...``, one ended by
    a backslash joined to the next), each with its place, "SCRIPT.py:LINE"."""
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        source = path.read_text()
        docstring = ast.parse(source).body[0]
        lines = source.splitlines()[docstring.lineno - 1:docstring.end_lineno]
        for number, line in enumerate(lines, docstring.lineno):
            text = line.strip()
            following = iter(lines[number - docstring.lineno + 1:])
            while text.startswith("python benchmarks/") and text.endswith("\\"):
                text = text[:-1] + next(following).strip()
            if text.startswith("python benchmarks/"):
                tokens = shlex.split(text, comments=True)
                found.append((f"{path.name}:{number}", split_command(tokens, shlex.join(tokens))))
    return found


DOCSTRING_COMMANDS = docstring_commands()
# Usage commands of the scripts' docstrings whose results file is not in the repository, and why.
USAGE_RESULTS_ELSEWHERE = {
    "python benchmarks/train_backbones.py --job resnet18-shapes64-fresh --device cuda --steps 8000 --eval-every 1000":
        "a GPU run's file (train_<job>_cuda.json): the GPU machine's JSON files did not come back",
}


@pytest.mark.parametrize("place, command", DOCSTRING_COMMANDS,
                         ids=[f"{place} {' '.join(command.argv)}" for place, command in DOCSTRING_COMMANDS])
def test_a_benchmark_usage_command_is_accepted(place, command, monkeypatch, capsys, restored):
    """Each usage line of a benchmark script's docstring is taken up to its first piece of work, as the README's
    commands are; one that writes into the repository writes a file that is there."""
    monkeypatch.chdir(ROOT)
    error, written = check_script(command.program, command.argv, monkeypatch, capsys)
    assert error is None, f"benchmarks/{place}: `{command.text}`: {error}"
    if command.text in USAGE_RESULTS_ELSEWHERE:
        return
    missing = [os.path.relpath(ROOT / path, ROOT) for path in written
               if (ROOT / path).resolve().is_relative_to(ROOT) and not (ROOT / path).is_file()]
    assert missing == [], f"benchmarks/{place}: `{command.text}` writes {', '.join(missing)}, not in the repository"


def test_the_benchmark_usage_commands_are_found():
    """Every script that parses arguments shows at least one usage command, so that a change to the extraction
    cannot check nothing."""
    scripts = {command.program for _, command in DOCSTRING_COMMANDS}
    assert scripts == set(WORK), f"scripts without a usage command found: {sorted(set(WORK) - scripts)}"
    assert len(DOCSTRING_COMMANDS) >= 30
    assert sorted(set(USAGE_RESULTS_ELSEWHERE) - {command.text for _, command in DOCSTRING_COMMANDS}) == []


# Words of recorded commands that stand for a value, and the value each is parsed with.
RECORDED_PLACEHOLDERS = {
    "FILE": "probe.json",  # --out FILE: each probe of generative_tokenizer_probes wrote its own
    "JOB": "resnet18-shapes64-fresh",  # --job JOB: each job of cuda_trainings_h200.log
}
# Results files that record a command writing a file of another name, and why.
WRITTEN_ELSEWHERE = {
    "generative_tokenizer_probes_shapes.json": "it gathers the probes, each of which wrote its own --out FILE",
    "generative_vit_vqgan_shapes_paper_betas_repeat.json": "written to /tmp/s29/vitvq_repeat.json, brought in renamed",
    "generative_vit_vqgan_shapes_restart_after_lookup.json": "written to /tmp/vq/fix.json, brought in renamed",
    "cuda_trainings_h200.log": "the printed output of GPU runs whose JSON files did not come back",
}
# Settings a results file records under another name than their option's (the option's name is argparse's dest).
RECORDED_AS = {"betas": "opt_betas", "model_args": "model_arg"}
# How a parsed value is written in a results file, where not as parsed: --model-arg's (KEY, VALUE) pairs as an object.
WRITTEN_AS = {"model_arg": dict}
# Keys of a results object that hold a result, not the setting of the option of the same name, by script.
NOT_SETTINGS = {"hipt_slides": {"encoder": "the trained tile encoder's description; --encoder is the recipe's name"}}


@dataclass(frozen=True)
class Recorded:
    """A command a results file records (``place``: the file and where in it), and the object that holds it: the
    settings it records beside the command."""

    place: str
    command: Command
    record: dict


def recorded_in(results: object, place: str) -> list[tuple[str, str, dict]]:
    """(place, command text, the object holding it) for every "command" string in the JSON ``results``."""
    if isinstance(results, list):
        return [found for index, item in enumerate(results) for found in recorded_in(item, f"{place}[{index}]")]
    if not isinstance(results, dict):
        return []
    found = [(place, results["command"], results)] if isinstance(results.get("command"), str) else []
    return found + [item for key, value in results.items() for item in recorded_in(value, f"{place}/{key}")]


def read_recorded(place: str, text: str, record: dict) -> list[Recorded]:
    """The commands of one recorded text: a remark in parentheses at its end is prose, but "(then OPTIONS)" is a
    second run of the same script with those options."""
    text, _, remark = text.partition(" (")
    text = text.strip()
    tokens = [RECORDED_PLACEHOLDERS.get(token, token) for token in shlex.split(text)]
    command = split_command(tokens, text)
    found = [Recorded(place, command, record)]
    if remark.startswith("then --"):
        then = remark.removeprefix("then ").removesuffix(")")
        found.append(Recorded(f"{place} (then)", Command(then, command.program, tuple(shlex.split(then))), {}))
    return found


def logged_commands(path: Path) -> list[tuple[str, str, dict]]:
    """(place, command text, no settings) for each command a results log names in its ``#`` header, run from the
    repository's root or from benchmarks/ (``cd benchmarks; python SCRIPT.py``)."""
    lines = path.read_text().splitlines()
    return [(f"{path.name}:{number}", f"python benchmarks/{match[1]}.py{match[2]}", {})
            for number, line in enumerate(lines, 1) if line.startswith("#")
            for match in [re.search(r"\bpython (?:benchmarks/)?(\w+)\.py\b(.*)$", line)] if match]


def recorded_commands() -> list[Recorded]:
    """The commands the results files record: each "command" of a JSON file, and those a log's header gives."""
    found = []
    for path in sorted((BENCHMARKS / "results").glob("*.json")):
        for place, text, record in recorded_in(json.loads(path.read_text()), path.name):
            found += read_recorded(place, text, record)
    for path in sorted((BENCHMARKS / "results").glob("*.log")):
        for place, text, record in logged_commands(path):
            found += read_recorded(place, text, record)
    return found


RECORDED = recorded_commands()


def recorded_settings(record: dict) -> dict[str, object]:
    """The settings a results object records under their option's name (``options`` holds a tokenizer's losses)."""
    settings = {**record, **(record.get("options") if isinstance(record.get("options"), dict) else {})}
    return {RECORDED_AS.get(key, key): value for key, value in settings.items()}


@pytest.mark.parametrize("recorded", RECORDED, ids=[f"{item.place} {' '.join(item.command.argv)}" for item in RECORDED])
def test_a_command_a_results_file_records_runs_as_it_did(recorded, monkeypatch, capsys, restored):
    """A results file's command is read by its script as it was then: no option renamed or dropped since, every
    setting the file records beside it under an option's name (where the command gave it) is the value the parser
    reads now, it passes the script's checks made before any work, and it writes a file of this one's name. Where
    a recorded run wrote its file is that machine's business: the folder is not checked."""
    monkeypatch.chdir(ROOT)
    parser = script_parser(recorded.command.program)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # some ran on a GPU machine
    monkeypatch.setattr(sys.modules["arguments"], "_check_folder_writable", lambda text, folder: None)
    shown = f"benchmarks/results/{recorded.place}: `{recorded.command.text}`"
    try:
        args = vars(parser.parse_args(list(recorded.command.argv)))
    except SystemExit:
        pytest.fail(f"{shown}: {refusal(capsys)}")
    settings = {name: value for name, value in recorded_settings(recorded.record).items()
                if name not in NOT_SETTINGS.get(recorded.command.program, {})}
    now = {name: WRITTEN_AS.get(name, lambda value: value)(args[name]) for name in settings
           if args.get(name) is not None}  # None: a default the script settles later, recorded as the value it took
    differ = {name: (value, settings[name]) for name, value in now.items() if value != settings[name]}
    assert differ == {}, f"{shown} now reads (now, then): {differ}"
    error, written = check_script(recorded.command.program, recorded.command.argv, monkeypatch, capsys)
    assert error is None, f"{shown}: {error}"
    file = re.split(r"[/:]", recorded.place)[0]
    if file not in WRITTEN_ELSEWHERE and "(then)" not in recorded.place:
        assert file in [path.name for path in written], f"{shown} writes {', '.join(os.path.relpath(ROOT / path, ROOT) for path in written)}, not {file}"


def test_the_recorded_commands_are_found():
    """The walk finds the commands of the results files that record one, of each script that records it, so that a
    change to it cannot check nothing; each placeholder it fills is still in a recorded command."""
    assert len(RECORDED) >= 50
    programs = {item.command.program for item in RECORDED}
    assert {"backbones", "generative", "hipt_slides", "ops", "selective_search", "train_backbones"} <= programs
    texts = [json.dumps(json.loads(path.read_text())) for path in (BENCHMARKS / "results").glob("*.json")]
    texts += [path.read_text() for path in (BENCHMARKS / "results").glob("*.log")]
    assert [word for word in RECORDED_PLACEHOLDERS if not any(re.search(rf"\b{word}\b", text) for text in texts)] == []
    assert [file for file in WRITTEN_ELSEWHERE if not (BENCHMARKS / "results" / file).is_file()] == []
