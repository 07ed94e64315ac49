"""Glue shared by the CLI and the tour: build a run from names, and reload a trained model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch.utils.data import Dataset, Subset

from visionzoo.checkpoint import MODEL_PREFIX, CheckpointError, model_state, read_checkpoint, read_metadata
from visionzoo.data import CocoDetection, Splits, builtin_name, same_images_note
from visionzoo.data.factory import SPLITS, split_of_folder
from visionzoo.data.shapes import MIN_IMAGE_SIZE as SHAPES_MIN_SIZE
from visionzoo.models._registry import without_weight_sources
from visionzoo.train.engine import CHECKPOINT_NAME, TrainConfig, TrainResult, fit, run_outputs
from visionzoo.train.task import Setup, Task, check_task_options, get_task
from visionzoo.utils import image_array, with_article

# timm's crop fraction where a configuration gives none (timm.data.constants.DEFAULT_CROP_PCT)
DEFAULT_CROP_PCT = 0.875


def _registered_name(model_name: str) -> str:
    """The name the model is registered (and its checkpoints recorded) under: timm's ``NAME.TAG`` is ``NAME``."""
    from visionzoo.models import get_model_entry

    return get_model_entry(model_name).name


def task_class(model_name: str) -> type[Task]:
    from visionzoo.models import get_model_entry

    return get_task(get_model_entry(model_name).task)


def build_setup(model_name: str, data: str, img_size: int | None = None, model_args: Mapping[str, Any] | None = None,
                checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
                splits: tuple[str, ...] = SPLITS) -> Setup:
    """The task, model and data ``splits`` (those ``data`` has) of ``model_name`` trained on ``data`` (a data set name
    or folder).

    A model registered with ``train_defaults`` (e.g. ``{"lr": 2e-3}``) overrides its task's engine defaults
    with them; the user's settings still come first."""
    from visionzoo.models import get_model_entry

    setup = task_class(model_name).setup(model_name, data, img_size, dict(model_args or {}), checkpoint, options,
                                         splits)
    preferred = get_model_entry(model_name).default_cfg.get("train_defaults")
    if preferred:
        setup.task.defaults = {**setup.task.defaults, **preferred}
    return setup


def first_items(dataset: Dataset, count: int | None) -> Dataset:
    """The first ``count`` items of ``dataset`` (all with None or a larger ``count``); keeps the wrapped data set's
    attributes."""
    if count is None or count >= len(dataset):
        return dataset
    if hasattr(dataset, "subset"):  # a data set with proposals: computed for these images alone
        return dataset.subset(range(count))
    subset = Subset(dataset, range(count))
    subset.classes = getattr(dataset, "classes", None)
    return subset


def check_image_files(dataset: Dataset, count: int | None = None) -> None:
    """Before the first ``count`` images of ``dataset`` (all with None) are evaluated: ValueError naming a COCO image
    file that cannot be read, from its header (:meth:`CocoDetection.check_files`), rather than once the images before
    it are evaluated. Other data are not checked."""
    inner = getattr(dataset, "dataset", dataset)  # a detector's proposals wrap the split
    if isinstance(inner, CocoDetection) and len(inner) == len(dataset):  # not a Subset: its indices would differ
        inner.check_files(count)


def training_images(dataset: Dataset, count: int | None, data: str) -> Dataset:
    """``data``'s train split ``dataset`` as ``count`` images (all with None): its first ``count``, and where it has
    fewer, a procedural data set (a class with ``with_length``, e.g. :class:`~visionzoo.data.Shapes`) is drawn to
    ``count`` scenes; any other refuses (ValueError naming ``data``). The class is asked, not the object: a
    wrapper (e.g. one holding region proposals) that forwards attributes to its Shapes would lose its own."""
    if count is None or count <= len(dataset):
        return first_items(dataset, count)
    if callable(getattr(type(dataset), "with_length", None)):
        return dataset.with_length(count)
    raise ValueError(f"--train-size {count}: the train split of {data} has {len(dataset)} images (Shapes draws "
                     "more scenes, except for models that precompute region proposals)")


def run_training(model_name: str, data: str, config: TrainConfig, img_size: int | None = None,
                 model_args: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                 train_images: int | None = None, val_images: int | None = None) -> tuple[Setup, TrainResult]:
    """Train ``model_name`` on ``data``'s train split (``train_images`` of it, see :func:`training_images`),
    evaluating on its val split (its first ``val_images``, all of a smaller split; a resumed run keeps the count it
    recorded unless given another). A resumed run continues at the image size it was trained at unless
    ``img_size`` says otherwise (the engine refuses a different one; it also keeps the run's optimisation
    settings, see :func:`~visionzoo.train.engine.resumed_config`), and with the task options it was
    trained with where ``options`` leaves them None (a prior's ``tokenizer``, a DeiT's ``teacher``; the task's
    defaults where the run recorded none), and its ``model_args`` under those given again. A soft distillation
    resumed as hard drops its recorded temperature unless one is given. An option
    that the model's task does not take is refused (ValueError), not ignored."""
    model_name = _registered_name(model_name)
    check_task_options(task_class(model_name), model_name, options or {})
    checkpoint = Path(config.out) / CHECKPOINT_NAME
    build_options, build_args = options, {}
    recorded_teacher, recorded_teacher_file = None, None
    given_args, resumed_args = dict(model_args or {}), None
    if config.resume and checkpoint.is_file():
        meta = checkpoint_metadata(checkpoint)
        trained = meta.get("run", {})
        # Before its recorded model arguments build this model: another model would refuse them, naming an argument
        trained_model = (meta.get("model") or {}).get("name")
        if trained_model not in (None, model_name):
            raise ValueError(f"--resume: the run in {config.out} was trained as {trained_model!r}, not {model_name!r}; "
                             f"resume it as {trained_model}, or train {model_name} in a new --out")
        _check_resumed_data(trained.get("data"), data, config.out)
        img_size = img_size or trained.get("img_size")
        train_images = train_images or trained.get("train_images")
        val_images = val_images or trained.get("val_images")
        given = {key: value for key, value in (options or {}).items() if value is not None}
        stored = trained.get("options") or {}
        started_from = stored.get("initial_checkpoint")
        if given.get("initial_checkpoint") is not None and not (
                started_from is not None and _same_file(given["initial_checkpoint"], started_from)):
            started = f"started from {started_from}" if started_from else "started from no --initial-checkpoint"
            raise ValueError(f"--initial-checkpoint {given['initial_checkpoint']}: the run in {config.out} {started}; "
                             "--resume goes on from the run's own weights: leave --initial-checkpoint out")
        given.pop("initial_checkpoint", None)  # the run's own spelling of that file
        if "objective" in given and given["objective"] != stored.get("objective", "classify"):
            # another objective is another model (a pretraining's encoder and colour head, or a classifier)
            raise ValueError(f"--objective {given['objective']}: the run in {config.out} was trained with --objective "
                             f"{stored.get('objective', 'classify')}; leave --objective out to continue it, or start "
                             f"a new --out from its weights with --initial-checkpoint {checkpoint}")
        conditional = given.get("class_conditional")
        trained_classes = ((meta.get("model") or {}).get("args") or {}).get("num_classes", 0)
        if conditional is not None and conditional != bool(trained_classes):
            # else the start embeddings' shapes differ, and loading the checkpoint names a tensor, not the option
            flag = "--class-conditional" if conditional else "--no-class-conditional"
            how = f"on {trained_classes} classes (--class-conditional)" if trained_classes else \
                "unconditionally (--no-class-conditional)"
            raise ValueError(f"{flag}: the run in {config.out} was trained {how}; leave {flag} out to continue it, "
                             "or train in a new --out")
        tokenizer = stored.get("tokenizer")
        if given.get("tokenizer") is not None and tokenizer is not None and not _same_file(given["tokenizer"], tokenizer):
            # The engine loads the tokenizer's weights from the run's checkpoint: another file's would be ignored.
            raise ValueError(f"--tokenizer {given['tokenizer']}: the run in {config.out} learnt the codes of {tokenizer}, "
                             "whose weights its checkpoint holds and goes on with; leave --tokenizer out, or train "
                             "a prior over another tokenizer in a new --out")
        defaults = {name: action.default for name, action in task_class(model_name).own_options().items()}
        options = build_options = {**defaults, **stored, **given}
        if options.get("teacher") and options.get("distillation") == "hard" and "distillation_tau" not in given:
            # the run's temperature tempered its soft distillation; hard distillation, now asked for, takes none
            options["distillation_tau"] = None
        recorded_tokenizer = ((meta.get("model") or {}).get("args") or {}).get("tokenizer")
        if options.get("tokenizer") is not None and isinstance(recorded_tokenizer, Mapping):
            # A prior goes on with the tokenizer weights its checkpoint holds, built from their record, not from
            # the file it was trained over (which may be gone), as a fine-tuned run goes on below.
            build_options = {**options, "tokenizer": None}
            build_args = {"tokenizer": recorded_tokenizer}
        recorded_teacher, recorded_teacher_file = trained.get("teacher_sha256"), trained.get("teacher_file")
        # the --model-arg the run was trained with (a model built without them would not take its weights), less
        # the files its nested models started from (backbone_args={"checkpoint": ...}): the run's own replace them
        model_args = without_weight_sources({**(trained.get("model_args") or {}), **(model_args or {})})
        resumed_args = {**((meta.get("model") or {}).get("args") or {}), **(trained.get("model_args") or {})}
        if options.get("initial_checkpoint") is not None:
            # A fine-tuned run goes on from its own checkpoint, not from the file it started from (which may be
            # gone); its model arguments, taken from that file's, are the ones its checkpoint recorded.
            build_options = {**options, "initial_checkpoint": None}
            recorded = {key: value for key, value in meta["model"].get("args", {}).items()
                        if key not in ("num_classes", "in_chans")}
            model_args = {**recorded, **(model_args or {})}
    if config.overwrite or config.resume:  # the files the run reads, the resumed run's recorded ones too
        _check_inputs_not_written(config, {"--data": data, **{f"--{name.replace('_', '-')}": value
                                                              for name, value in (options or {}).items()}})
    teacher_file = (options or {}).get("teacher_checkpoint")
    teacher_sha256 = _teacher_sha256(teacher_file)  # hashed once: checked on resume, recorded for the next one
    _check_resumed_teacher(recorded_teacher, teacher_sha256, teacher_file, config.out, recorded_teacher_file)
    torch.manual_seed(config.seed or 0)  # the initial weights follow the run's seed (None: 0)
    setup = build_setup(model_name, data, img_size, {**build_args, **(model_args or {})}, options=build_options)
    if resumed_args is not None:
        _check_resumed_model_args(checkpoint, setup.model, given_args, resumed_args, config.out)
    if builtin_name(data) is None and Path(data).expanduser().is_file():
        apart = "a COCO folder (annotations/instances_{train,val}.json) holds them apart"
        folder = split_of_folder(data)
        if folder is not None:  # the user gave one split's file of a folder that holds them apart already
            root, split, others = folder
            apart = f"it is the {split} split of COCO folder {root}, which has {' and '.join(others)} too: give " \
                    f"--data {root} to hold them apart"
        logging.getLogger(__name__).warning(
            f"{data} is one annotation file: its images serve as the train, val and test splits, so validation "
            f"scores are on training images; {apart}")
    if setup.task.name == "detection" and getattr(setup.splits["train"], "num_objects", None) == 0:
        # a file exported before it was labelled: the whole budget would be spent on background
        logging.getLogger(__name__).warning(
            f"{setup.splits['train'].ann_file} lists no objects to learn in the train split (no annotation, or only "
            "crowd regions): the detector learns to find nothing")
    train = training_images(setup.splits["train"], train_images, data)
    setup.task.fit_training_images(setup.model, train, whole=len(train) >= len(setup.splits["train"]))
    val = setup.splits["val"]  # training needs both (a missing one raises, naming its files); evaluation only its own
    _check_val_classes(setup.splits["train"], val, data)
    check_image_files(val, val_images)  # else a bad file stops the run at its final evaluation
    evaluated = first_items(val, val_images)
    run_meta = {**setup.run_meta, "options": dict(options or {}), "model_args": dict(model_args or {}),
                "train_images": len(train), "val_images": len(evaluated), "val_split_images": len(val)}
    if teacher_sha256 is not None:  # what a resumed run checks that it distils from the same teacher
        run_meta["teacher_sha256"] = teacher_sha256
        # the file it started from, which a resume that gives another file of other weights names
        run_meta["teacher_file"] = recorded_teacher_file or str(teacher_file)
    note = same_images_note(data, "val")
    if note is not None:  # beside the val figures the run writes (metrics.jsonl, summary.json), for a later reader
        run_meta["note"] = note
    classes = _class_names(setup.splits["train"])
    if classes is not None:
        run_meta["classes"] = classes
        run_meta["inference"] = _inference_record(setup.splits["train"])
    result = fit(setup.task, setup.model, train, evaluated, config, run_meta)
    return setup, result


def _check_inputs_not_written(config: TrainConfig, inputs: Mapping[str, Any]) -> None:
    """Refuse an input (by flag: a file the run reads; an option that is not a path matches none) that is one of the
    files the run writes into its folder, which --overwrite removes and --resume writes over: a pretraining fine-tuned
    into its own folder, or a teacher that is the run's own checkpoint, would be lost once read (the teacher would
    also no longer match the one a later --resume checks)."""
    folder = Path(config.out).expanduser().resolve()
    written = {folder / name: name for name in run_outputs()}
    for flag, path in inputs.items():
        if not isinstance(path, str) or not path or builtin_name(path) is not None:
            continue
        name = written.get(Path(path).expanduser().resolve())
        if name is not None:
            how = "--resume writes over" if config.resume else "--overwrite replaces"
            raise ValueError(f"{flag} {path} is the run's own {name} in --out {config.out}, which {how}: the run would "
                             "lose it; copy it out of that folder and give the copy, or give another --out")


def _check_resumed_model_args(checkpoint: Path, model: torch.nn.Module, given: Mapping[str, Any],
                              trained: Mapping[str, Any], out: str) -> None:
    """Refuse a resumed run whose --model-arg ``given`` (other than the run's ``trained`` ones) build a model the
    checkpoint's weights do not fit (another stem, width or depth), naming the arguments: the engine's load would
    list every mismatched tensor instead. Shapes come from the file's header alone."""
    changed = {key: value for key, value in given.items() if key not in trained or trained[key] != value}
    if not changed:
        return
    with safe_open(str(checkpoint), framework="pt") as handle:
        saved = {key[len(MODEL_PREFIX):]: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()
                 if key.startswith(MODEL_PREFIX)}
    if saved == {key: tuple(value.shape) for key, value in model.state_dict().items()}:
        return  # e.g. another drop_path_rate: the weights still fit
    asked = ", ".join(f"{key}={json.dumps(value)}" for key, value in changed.items())
    was = ", ".join(f"with {key}={json.dumps(trained[key])}" if key in trained else f"without {key}"
                    for key in changed)
    raise ValueError(f"--model-arg {asked}: the run in {out} was trained {was}, and its weights do not fit the model "
                     f"that builds; leave --model-arg {', '.join(changed)} out to continue it, or train in a new --out")


def _check_resumed_data(trained: str | None, data: str, out: str) -> None:
    """Refuse resuming a run on another built-in data set (or a built-in one for a folder, or back): its weights
    and classes are another task's. Two paths may name one COCO folder that has moved, so those pass."""
    if trained is None:
        return
    names = [builtin_name(trained), builtin_name(data)]
    if names != [None, None] and names[0] != names[1]:
        raise ValueError(f"--resume: the run in {out} was trained on {trained}, not {data}; resume it with "
                         f"--data {trained}, or train on {data} in a new --out")


def _teacher_sha256(teacher_checkpoint: str | None) -> str | None:
    """The sha256 of the teacher file, or None without one (a missing file is the teacher's own error)."""
    if not teacher_checkpoint or not Path(teacher_checkpoint).expanduser().is_file():
        return None
    with open(Path(teacher_checkpoint).expanduser(), "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_resumed_teacher(recorded: str | None, sha256: str | None, teacher_checkpoint: str | None, out: str,
                           recorded_file: str | None = None) -> None:
    """Refuse to resume a distillation whose teacher file now holds other weights than the run started with
    (a teacher retrained into the same file, or another file given, ``recorded_file`` being the one the run
    started distilling from): the rest of the run would distil from another teacher."""
    if recorded is None or sha256 is None:
        return  # a run recorded before teachers were fingerprinted, or no teacher file to compare
    if sha256 != recorded and recorded_file is not None and not _same_file(teacher_checkpoint, recorded_file):
        raise ValueError(f"--resume: --teacher-checkpoint {teacher_checkpoint} holds other weights than "
                         f"{recorded_file}, the teacher the run in {out} started distilling from (their sha256 differ); "
                         "give that file, or train in a new --out")
    if sha256 != recorded:
        raise ValueError(f"--resume: the teacher file {teacher_checkpoint} has changed since the run in {out} started "
                         "distilling from it (its sha256 differs); restore that file, or train in a new --out")


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether paths ``a`` and ``b`` name one file (the same text, or one existing file by two names)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    return a == b or (a.exists() and b.exists() and a.samefile(b))


def _inference_record(dataset: Dataset) -> dict[str, Any]:
    """What predict and sample rebuild the model from without the data (see :class:`RecordedData`): the shape of
    ``dataset``'s first image, the kind of its target and the data's COCO category ids (label order) where it has
    them."""
    from visionzoo.detection.proposal_cache import WithProposals

    # the proposals wrapper would compute every image's proposals to give its first sample
    base = dataset.dataset if isinstance(dataset, WithProposals) else dataset
    image, target = base[0]
    record: dict[str, Any] = {"image_shape": [int(n) for n in image.shape],
                              "target": sorted(key for key in ("label", "boxes") if key in target)
                              if isinstance(target, Mapping) else "label"}
    label_to_cat_id = getattr(base, "label_to_cat_id", None)
    if label_to_cat_id:
        record["category_ids"] = [label_to_cat_id[label] for label in sorted(label_to_cat_id)]
    return record


class RecordedData(Dataset):
    """The data a run trained on as its checkpoint recorded them (``run["classes"]``, ``run["inference"]``): one
    blank image of its first image's shape with a target of its kind, its classes, image size and category ids,
    which is all a task's set-up reads of the data to rebuild the model. Predict and sample build on it, so that
    a checkpoint alone is enough for them (the data may be elsewhere, or large to parse)."""

    def __init__(self, run: Mapping[str, Any]):
        record = run["inference"]
        self.classes = list(run["classes"])
        self.image_size = run.get("img_size")
        self.image_shape = tuple(record["image_shape"])
        self.target = record["target"]
        if "category_ids" in record:
            self.label_to_cat_id = {label: cat_id for label, cat_id in enumerate(record["category_ids"], 1)}

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        if index != 0:
            raise IndexError(index)
        target: Any = 0
        if self.target != "label":
            target = {}
            if "label" in self.target:
                target["label"] = 0
            if "boxes" in self.target:
                target.update(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64))
        return torch.zeros(self.image_shape), target


def _class_names(dataset: Any) -> list[str] | None:
    classes = getattr(dataset, "classes", None)
    return None if classes is None else [str(name) for name in classes]


def _first_class_difference(expected: list[str], classes: list[str]) -> tuple[int, str | None, str | None]:
    """(index, ``classes``' name, ``expected``'s name) where two different class lists first differ (None past the
    end of one)."""
    index = next((i for i, (a, b) in enumerate(zip(expected, classes)) if a != b), min(len(expected), len(classes)))
    return (index, classes[index] if index < len(classes) else None,
            expected[index] if index < len(expected) else None)


def _check_val_classes(train: Any, val: Any, data: str) -> None:
    """Raise when ``val`` names its classes (labels 1..K) other than ``train``: a COCO folder numbers each file's
    sorted category ids, so a val file listing fewer categories would score the model's classes as others."""
    expected, classes = _class_names(train), _class_names(val)
    if expected is None or classes is None or classes == expected:
        return
    index, theirs, ours = _first_class_difference(expected, classes)
    source = getattr(val, "ann_file", f"the val split of {data}")
    if theirs is None:
        difference = f"has no class {index}, where the train split names {ours!r}"
    elif ours is None:
        difference = f"names class {index} {theirs!r}, where the train split has none"
    else:
        difference = f"names class {index} {theirs!r} where the train split names {ours!r}"
    raise ValueError(f"{source} {difference}: its scores would be counted against other classes; list the same "
                     "categories in every split's file")


def checkpoint_metadata(path: str | Path, model_name: str | None = None) -> dict[str, Any]:
    """The JSON document of one of our training checkpoints, without reading its tensors. With ``model_name``, an
    official file that only its family's own reader takes (HIPT's DINO training states) is told to be foreign weights,
    as a plain state dict is, rather than refused as no state dict."""
    try:
        meta = read_metadata(path)
    except CheckpointError as error:
        from visionzoo.models import get_model_entry

        reader = None if model_name is None else get_model_entry(model_name).checkpoint_reader
        if reader is None:
            raise
        try:
            reader(path)
        except CheckpointError:
            raise error from None
        meta = None
    if meta is None:
        raise CheckpointError(
            f"{path} is a state dict without visionzoo's metadata, not a checkpoint written by `visionzoo train`; "
            f"load its weights with create_model(MODEL, checkpoint={str(path)!r}), or train from them with "
            f"`visionzoo train MODEL --initial-checkpoint {path}` (classifiers)")
    return meta


def load_for_inference(model_name: str, checkpoint: str | Path, data: str | None = None,
                       img_size: int | None = None, use_ema: bool = False, split: str | None = None,
                       data_free: bool = False) -> Setup:
    """Rebuild a trained run from its checkpoint; ``data``/``img_size`` default to the training ones. With ``split``
    only that split of the data is opened (and checked), as eval scores it alone; else every split it has. With
    ``data_free`` (predict, sample: they read no data set) and no ``data``, none is opened: the model is rebuilt from
    what the checkpoint recorded of its data (:class:`RecordedData`, the one split ``"train"``), which older
    checkpoints lack (their data are opened then).

    The model gets the trained weights, or with ``use_ema`` the EMA weights where the run kept them
    (``--ema-decay``): timm's ``validate.py`` default and ``--use-ema``, where ``create_model``'s
    default is the EMA weights. ``use_ema`` for a run that kept none raises ValueError (timm's falls back to
    the trained weights without a word). A detector's data are read with ``skip_invalid_boxes``: scored, not trained on.
    """
    from visionzoo.models._registry import _saved_model

    model_name = _registered_name(model_name)
    meta = checkpoint_metadata(checkpoint, model_name)
    has_ema = _has_ema_weights(checkpoint)
    if use_ema and not has_ema:
        raise ValueError(f"--use-ema: {checkpoint} holds no EMA weights (its run was trained without --ema-decay); "
                         "leave --use-ema out for its trained weights")
    # Before the run's options reach the set-up: another task's (a code prior's --tokenizer) would be refused first.
    _saved_model(meta, model_name, str(checkpoint))
    run = meta.get("run", {})
    trained_on = run.get("data")
    if data is None and not trained_on:
        raise CheckpointError(f"{checkpoint} records no data set it was trained on (it was not written by `visionzoo "
                              "train`), which the model is rebuilt with; `visionzoo eval` takes --data")
    # predict and sample (no data, no split) rebuild the model from what the checkpoint recorded of its data; older
    # checkpoints, which recorded too little, open the data as eval does
    recorded = data_free and data is None and split is None and "inference" in run and "classes" in run
    if recorded:
        splits: tuple[str, ...] | Splits = Splits({"train": RecordedData(run)}, {})
    else:
        splits = SPLITS if split is None else (split,)
    if not recorded and data is None and trained_on and builtin_name(trained_on) is None and \
            not Path(trained_on).expanduser().exists():
        where = "" if Path(trained_on).is_absolute() else f" (a relative path, read from {Path.cwd()})"
        raise FileNotFoundError(f"{checkpoint} was trained on {trained_on}, which is not there{where}: the model is "
                                "rebuilt with that data's classes and settings; run from the folder the run was "
                                "trained in, or put the data back (eval also takes --data FOLDER)")
    options = dict(run.get("options") or {})
    if "skip_invalid_boxes" in task_class(model_name).own_options():
        # data read to be scored, never trained on: a box with no area in its image is scored as pycocotools scores
        # it (an object not found), not refused with advice for `train`
        options["skip_invalid_boxes"] = True
    trained_size = run.get("img_size")
    if data is not None and builtin_name(data) is None and trained_on and builtin_name(trained_on) is not None and \
            task_class(model_name).name == "detection":
        # a detector learned the built-in data's objects unsquashed: another folder's files keep their shape, as
        # predict gives them (it squashes only for a run trained on a folder read at an --img-size)
        trained_size = None
    if img_size is None and trained_size is not None and builtin_name(data) == "shapes" and \
            trained_size < SHAPES_MIN_SIZE:  # else Shapes' own error, naming a size the user never gave
        raise ValueError(f"--data {data}: {checkpoint} was trained at {trained_size} px (on {trained_on}), the size its "
                         f"images are read at, and Shapes images are at least {SHAPES_MIN_SIZE} px: give --img-size "
                         f"{SHAPES_MIN_SIZE} or more for a model that reads other sizes, or other --data")
    with _held_logs(logging.getLogger("visionzoo.models._registry")) as held:  # "adapting ..." would precede a refusal
        setup = build_setup(model_name, data or run.get("data"), img_size or trained_size,
                            checkpoint=checkpoint, options=options, splits=splits)
    if has_ema and not use_ema:  # create_model(checkpoint=) took the EMA weights
        _load_trained_weights(setup.model, checkpoint)
    trained = (meta.get("model") or {}).get("args") or {}
    built = getattr(setup.model, "model_args", {})
    classes = getattr(setup.task, "classes", None)
    # the data's classes as the user counts them: a detector's num_classes also counts its background
    uncounted = {"num_classes": built.get("num_classes", 0) - len(classes) if classes else 0}
    for key, what, consequence in (("num_classes", "classes", "its classifier would be untrained"),
                                   ("in_chans", "image channels", "its first layer would be adapted")):
        if trained.get(key) is not None and built.get(key) is not None and trained[key] != built[key]:
            offset = uncounted.get(key, 0)
            raise ValueError(f"{checkpoint} was trained on {run.get('data')} with {trained[key] - offset} {what}, "
                             f"{data or run.get('data')} has {built[key] - offset}: {consequence}, not the trained model")
    trained_classes = run.get("classes")  # checkpoints written before it was recorded lack it
    for split, dataset in setup.splits.items():
        classes = _class_names(dataset)
        if trained_classes is None or classes is None or classes == trained_classes:
            continue
        index, theirs, ours = _first_class_difference(trained_classes, classes)
        if theirs is None:
            difference = f"has no class {index} ({ours!r})"
        elif ours is None:
            difference = f"names class {index} {theirs!r}, which it was not trained on"
        else:
            difference = f"names class {index} {theirs!r}, not {ours!r}"
        raise ValueError(f"{checkpoint} was trained on classes {trained_classes}; the {split} split of "
                         f"{data or run.get('data')} {difference}: its scores would be counted against other classes")
    for record in held:
        logging.getLogger(record.name).handle(record)
    return setup


def _with_official_weights(model_name: str, use: str) -> tuple[str, Any]:
    """The registered name of ``model_name`` and its registry entry; ValueError where it has no official weights
    ``use`` (e.g. "to sample from")."""
    from visionzoo.models import get_model_entry

    model_name = _registered_name(model_name)
    entry = get_model_entry(model_name)
    if entry.pretrained is None:
        raise ValueError(f"{model_name} has no official weights {use} (`visionzoo list-models --pretrained` lists "
                         "those that do); give a --checkpoint of `visionzoo train`")
    return model_name, entry


def pretrained_for_sampling(model_name: str) -> Setup:
    """A generative model with its official weights (``create_model(name, pretrained=True)``), as ``visionzoo sample
    --pretrained`` draws from it: its task built without data (no class names: a ``--label`` is a class index), no
    splits, and the image side of the model's default configuration."""
    from visionzoo.models import create_model

    model_name, entry = _with_official_weights(model_name, "to sample from")
    task_cls = task_class(model_name)
    if task_cls.sample is Task.sample:  # before building the task, which a classifier's needs its classes for
        raise ValueError(f"{model_name} is {with_article(task_cls.name)} model, which draws no images; `visionzoo sample` needs "
                         "a generative model")
    task = task_cls()
    model = create_model(model_name, pretrained=True)
    side = getattr(model, "img_size", None) or entry.default_cfg.get("input_size", (None, None))[-1]
    return Setup(task, model, {}, {"img_size": side})


# How taming-transformers reads an image for its VQGANs (taming/data/base.py): the shorter side resized to the
# model's size (albumentations' SmallestMaxSize, bilinear) and the centre square cropped; our VQGAN takes it in
# [0, 1] and scales it to taming's [-1, 1] itself.
TAMING_CROP = {"crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"}


def pretrained_for_prediction(model_name: str) -> Setup:
    """A classifier, detector or VQGAN with its official weights (``create_model(name, pretrained=True)``), as
    ``visionzoo predict --pretrained`` runs it: its task built without data, with the class names torchvision
    publishes for the weights' head (:func:`official_class_names`), no splits, and ``run_meta["eval_transform"]``,
    the configuration :func:`load_eval_images` reads the images with: a classifier's default configuration, a VQGAN's
    side with taming-transformers' crop (``TAMING_CROP``); a detector resizes them itself."""
    from visionzoo.models import create_model
    from visionzoo.train.classification import ClassificationTask, normalization
    from visionzoo.train.detection import DetectionTask
    from visionzoo.train.reconstruction import ReconstructionTask

    model_name, entry = _with_official_weights(model_name, "to predict with")
    task_cls = task_class(model_name)
    if task_cls not in (ClassificationTask, DetectionTask) and not issubclass(task_cls, ReconstructionTask):
        raise ValueError(f"{model_name} is {with_article(task_cls.name)} model; `visionzoo predict --pretrained` runs "
                         "the official weights of classifiers, detectors and VQGANs (`visionzoo list-models "
                         "--pretrained`)")
    if task_cls is ClassificationTask and not entry.default_cfg.get("num_classes"):  # refused before the download
        raise ValueError(f"{model_name}'s official weights have no classifier (self-supervised features), so `visionzoo "
                         f"predict` has no classes to name: create_model({model_name!r}, pretrained=True) gives their "
                         "features")
    model = create_model(model_name, pretrained=True)
    if issubclass(task_cls, ReconstructionTask):
        side = entry.default_cfg["input_size"][-1]
        return Setup(task_cls(), model, {}, {"img_size": side, "in_chans": 3,
                                             "eval_transform": {"input_size": (3, side, side), **TAMING_CROP}})
    outputs = model.default_cfg["num_classes"]  # the head of the official weights
    if task_cls is DetectionTask:  # label 0 is the background
        return Setup(DetectionTask(official_class_names("coco", outputs - 1)), model, {},
                     {"img_size": None, "in_chans": 3})
    mean, std = normalization(model, 3)
    task = ClassificationTask(official_class_names("imagenet", outputs), mean, std)
    return Setup(task, model, {}, {"img_size": model.default_cfg["input_size"][-1], "in_chans": 3,
                                   "eval_transform": model.default_cfg})


def official_class_names(kind: str, count: int) -> list[str]:
    """The names of ``count`` classes of official weights: ImageNet-1k's 1,000 (``kind`` "imagenet") or COCO's 90
    labels 1..90 ("coco", "N/A" for the ids COCO leaves unused), as torchvision publishes them with its weights
    (``meta["categories"]``); for another ``count`` (a head of ImageNet-21k's 21,843 classes) the class indices
    as strings, from "0" (from "1" for COCO's labels)."""
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    if kind == "imagenet":
        names, first = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"]), 0
    else:
        names, first = list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])[1:], 1
    return names if len(names) == count else [str(index) for index in range(first, first + count)]


def _has_ema_weights(checkpoint: str | Path) -> bool:
    """Whether our training ``checkpoint`` (a .safetensors file) has an ``ema.`` section, from its header alone."""
    with safe_open(str(checkpoint), framework="pt") as handle:
        return any(key.startswith("ema.") for key in handle.keys())


def _load_trained_weights(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """The ``model.`` section of our training ``checkpoint`` into ``model`` (the task's model, which the
    engine saved and resumes from that section), for a file that also has EMA weights, which the tasks'
    ``create_model(checkpoint=)`` took."""
    from visionzoo.models._registry import load_state_dict_strict

    tensors, meta = read_checkpoint(checkpoint)
    load_state_dict_strict(model, model_state(tensors, meta), str(checkpoint))


@contextlib.contextmanager
def _held_logs(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    """Keep ``logger``'s records back in the yielded list (the caller emits them once it has not refused)."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def load_images(paths: list[str | Path], size: int | None, channels: int) -> torch.Tensor | list[torch.Tensor]:
    """Image files as ``Tensor[B, channels, size, size]`` float in [0, 1] (resized with antialiasing), or with
    ``size`` None as a list of Tensor[channels, H_i, W_i] at their own sizes. Grayscale, palette and RGBA
    files are converted to ``channels``; 16-bit greyscale files are scaled by 65535 (see :func:`image_array`)."""
    from torchvision.transforms.functional import resize  # here: importing torchvision takes seconds

    images = []
    for path in paths:
        with _opened_image(path) as pil:
            pixels = image_array(pil, channels, f"image {path}")
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        images.append(tensor if size is None else resize(tensor, [size, size], antialias=True).clamp(0, 1))
    return images if size is None else torch.stack(images)


def load_eval_images(paths: list[str | Path], cfg: Mapping[str, Any]) -> torch.Tensor:
    """Image files as timm's evaluation transform for a model's default configuration ``cfg`` reads them, before its
    normalisation (which the task applies): ``Tensor[B, 3, S, S]`` float in [0, 1], S ``cfg["input_size"]``'s side.
    See :func:`eval_crop`; files are converted to RGB as :func:`load_images` converts them."""
    images = []
    for path in paths:
        with _opened_image(path) as pil:
            pixels = image_array(pil, 3, f"image {path}")
        rgb = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
        images.append(eval_crop(rgb, cfg))
    return torch.stack(images)


def eval_crop(image: Image.Image, cfg: Mapping[str, Any]) -> torch.Tensor:
    """An RGB PIL ``image`` as timm's ``create_transform(**resolve_data_config(pretrained_cfg=cfg),
    is_training=False)`` gives it, less the normalisation: the shorter side resized to ``floor(size / crop_pct)`` with
    ``cfg["interpolation"]`` (PIL's resampling, on the uint8 image, as timm's), the centre ``size`` × ``size``
    cropped; Tensor[3, size, size] float in [0, 1]. ValueError for a configuration of another kind (a non-square
    input, a crop mode other than timm's centre crop)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional

    height, width = cfg["input_size"][-2:]
    mode = cfg.get("crop_mode", "center")
    if height != width or mode != "center":
        raise ValueError(f"{cfg.get('architecture')}: predicting with its official weights takes a square input_size "
                         f"and a centre crop; its configuration has {height}x{width}, crop_mode {mode!r}")
    scaled = math.floor(width / cfg.get("crop_pct", DEFAULT_CROP_PCT))
    image = functional.resize(image, [scaled], interpolation=InterpolationMode(cfg.get("interpolation", "bilinear")))
    image = functional.center_crop(image, [height, width])
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)


def image_sizes(paths: list[str | Path]) -> list[tuple[int, int]]:
    """The (width, height) of each image file as stored, read from its header without decoding its pixels: the
    errors :func:`load_images` raises for a missing, folder or unreadable file, before any file is decoded."""
    sizes = []
    for path in paths:
        with _opened_image(path) as pil:
            sizes.append(pil.size)
    return sizes


@contextlib.contextmanager
def _opened_image(path: str | Path) -> Iterator[Image.Image]:
    """The image file ``path`` opened with PIL; an error while it is open or read names the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a folder; give the image files in it (e.g. {path / '*.png'})")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as pil:
            yield pil
    except (OSError, Image.DecompressionBombError) as error:  # the bomb error is no OSError: it named no file
        raise ValueError(f"image {path} cannot be read: {error}") from None
