"""The glue of the CLI and the tour: reading image files for predict and fid, choosing the training images."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visionzoo.data import Shapes
from visionzoo.train.run import load_images, training_images


@pytest.mark.parametrize("channels", [1, 3])
def test_a_sixteen_bit_png_is_read_scaled_to_the_unit_interval(tmp_path, channels):
    values = np.array([[0, 300, 5000, 20000], [40000, 50000, 65000, 65535]], dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as written:
        assert written.mode == "I;16"
    (image,) = load_images([path], None, channels)
    expected = torch.from_numpy(values.astype(np.float32) / 65535).expand(channels, -1, -1)
    assert image.shape == (channels, 2, 4) and torch.equal(image, expected)  # not 0, 1, 1, 1, ... (clipped at 255)
    resized = load_images([path], 4, channels)
    assert resized.shape == (1, channels, 4, 4) and 0 < resized.mean() < 0.7


def test_a_folder_given_as_an_image_is_named_a_folder_not_missing(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give the image files in it"):
        load_images([tmp_path], None, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images([tmp_path / "gone.png"], None, 3)


def _rgb_picture() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("mode, name", [("L", "grey.png"), ("LA", "grey_alpha.png"), ("P", "palette.png"),
                                        ("RGBA", "rgba.png"), ("1", "bilevel.png"), ("CMYK", "cmyk.jpg"),
                                        ("RGB", "photo.webp"), ("P", "anim.gif")])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_common_mode_is_read_as_pil_converts_it(tmp_path, mode, name, channels):
    picture = _rgb_picture().convert(mode)
    picture.save(tmp_path / name)
    (image,) = load_images([tmp_path / name], None, channels)
    with Image.open(tmp_path / name) as stored:
        expected = np.asarray(stored.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255
    assert image.shape == (channels, 20, 30)
    assert torch.equal(image, torch.from_numpy(expected.reshape(20, 30, channels)).permute(2, 0, 1))


def test_a_cielab_tiff_is_read_grey_through_rgb_and_an_unconvertible_mode_names_the_file(tmp_path):
    """A LAB image (PIL reads CIELab TIFFs so) failed for a 1-channel model with 'conversion from LAB to RGB not
    supported', naming no file: PIL converts LAB to RGB but not to L."""
    from PIL import ImageCms

    from visionzoo.utils import image_array

    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = ImageCms.applyTransform(_rgb_picture(), to_lab)
    lab.save(tmp_path / "lab.tif")
    (grey,) = load_images([tmp_path / "lab.tif"], None, 1)
    (colour,) = load_images([tmp_path / "lab.tif"], None, 3)
    expected = np.asarray(lab.convert("RGB").convert("L"), dtype=np.float32) / 255
    assert torch.equal(grey[0], torch.from_numpy(expected)) and colour.shape == (3, 20, 30)
    with pytest.raises(ValueError, match=r"^image x\.png has mode La, which PIL cannot convert to L"):
        image_array(_rgb_picture().convert("La"), 1, "image x.png")


def test_an_image_above_pils_pixel_limit_is_one_error_naming_it(tmp_path, monkeypatch):
    """PIL's DecompressionBombError (a 15000 x 15000 scan is above its 179 million pixels) is no OSError: predict
    and COCO folders let it through as a traceback that named no file."""
    from visionzoo.data import create_dataset
    from visionzoo.data.export import export_shapes

    Image.new("RGB", (50, 40)).save(tmp_path / "scan.png")
    export_shapes(tmp_path / "coco", splits=["val"], num=1, image_size=48, progress=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the error comes above twice the limit
    with pytest.raises(ValueError, match=r"image .*scan\.png cannot be read: Image size \(2000 pixels\) exceeds"):
        load_images([tmp_path / "scan.png"], None, 3)
    folder = create_dataset(tmp_path / "coco", "val")
    with pytest.raises(ValueError, match=r"instances_val\.json: image id 0: image .*000000\.png cannot be read: Image size"):
        folder[0]


class _ForwardingWrapper(torch.utils.data.Dataset):
    """A data set wrapping Shapes and forwarding attributes to it, as the region-proposal cache does."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        return self.inner[index]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def subset(self, indices):
        return _ForwardingWrapper(torch.utils.data.Subset(self.inner, list(indices)))


def test_training_images_draws_shapes_but_keeps_a_forwarding_wrapper():
    """With --train-size, a Shapes wrapped with region proposals was replaced by the bare Shapes its
    forwarded with_length returned, so R-CNN trained without its cached proposals."""
    shapes = Shapes("train", image_size=32, length=4)
    assert len(training_images(shapes, 9, "shapes")) == 9
    assert training_images(shapes, None, "shapes") is shapes
    wrapped = _ForwardingWrapper(shapes)
    fewer = training_images(wrapped, 3, "shapes")
    assert isinstance(fewer, _ForwardingWrapper) and len(fewer) == 3
    with pytest.raises(ValueError, match="--train-size 9: the train split of shapes has 4 images"):
        training_images(wrapped, 9, "shapes")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_use_ema_of_a_run_without_ema_weights_is_refused_not_ignored(tmp_path, capsys, command):
    """`visionzoo eval --use-ema` of a run trained without --ema-decay printed the trained weights' scores as
    if they were the EMA's: the flag was taken and ignored."""
    from visionzoo.cli import main

    run = tmp_path / "run"
    assert main(["train", "resnet18", "--data", "digits", "--img-size", "16", "--model-arg", "small_input=true",
                 "--batch-size", "8", "--train-size", "8", "--max-steps", "1", "--precision", "fp32", "--no-progress",
                 "--out", str(run)]) == 0
    image = tmp_path / "digit.png"
    Image.new("L", (16, 16)).save(image)
    capsys.readouterr()
    argv = {"eval": ["--split", "val"], "predict": [str(image), "--out", str(tmp_path / "pred")]}[command]
    checkpoint = run / "checkpoint.safetensors"
    assert main([command, "resnet18", "--checkpoint", str(checkpoint), "--use-ema", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert f"--use-ema: {checkpoint} holds no EMA weights" in error and "\n" not in error, error


def test_training_refuses_a_val_split_whose_categories_give_other_labels(tmp_path):
    """A val file listing only the categories it uses (no 'square') numbered its labels apart from the train
    file's: the run trained, then scored the detector's 'square' boxes against val's triangles (ap/square on a
    split without squares), where eval of the same checkpoint refuses that folder."""
    import json

    from visionzoo.cli import main
    from visionzoo.train import TrainConfig
    from visionzoo.train.run import run_training

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    ann_file = folder / "annotations" / "instances_val.json"
    content = json.loads(ann_file.read_text())
    content["categories"] = [c for c in content["categories"] if c["name"] != "square"]
    content["annotations"] = [a for a in content["annotations"] if a["category_id"] != 2]
    ann_file.write_text(json.dumps(content))
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, precision="fp32")
    with pytest.raises(ValueError, match=r"instances_val\.json names class 1 'triangle' where the train split names "
                                         r"'square'"):
        run_training("fasterrcnn_shapes", str(folder), config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    ("drop diamond", r"instances_val\.json has no class 5, where the train split names 'diamond'"),
    ("add blob", r"instances_val\.json names class 6 'blob', where the train split has none"),
])
def test_a_val_split_with_fewer_or_more_categories_is_refused_naming_the_class(tmp_path, change, message):
    """A val file without the train file's last category said "names class 5 'nothing' where the train split names
    'diamond'", as if a category were named 'nothing'; one with a category more said "... where the train split names
    'nothing'"."""
    import json

    from visionzoo.cli import main
    from visionzoo.train import TrainConfig
    from visionzoo.train.run import run_training

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    ann_file = folder / "annotations" / "instances_val.json"
    content = json.loads(ann_file.read_text())
    if change == "drop diamond":
        content["categories"] = [c for c in content["categories"] if c["name"] != "diamond"]
        content["annotations"] = [a for a in content["annotations"] if a["category_id"] != 6]
    else:
        content["categories"].append({"id": 7, "name": "blob"})
    ann_file.write_text(json.dumps(content))
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, precision="fp32")
    with pytest.raises(ValueError, match=message) as error:
        run_training("fasterrcnn_shapes", str(folder), config)
    assert "nothing" not in str(error.value)
@pytest.mark.parametrize("other", ["vit_tiny_patch4_32", "dcgan"])
def test_resuming_a_run_as_another_model_names_both_models(tmp_path, capsys, other):
    """Resuming a resnet18 run (trained with --model-arg small_input=true) as another model built that model with the
    run's recorded model arguments first, and failed as "vit_tiny_patch4_32 takes no argument 'small_input'": an
    argument the user had not given this time, and not the mistake."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.cli import main

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.safetensors", {"model.x": torch.zeros(1)}, {
        "model": {"name": "resnet18", "args": {"small_input": True, "num_classes": 10, "in_chans": 1}}, "step": 1,
        "total_steps": 1, "config": {"max_steps": 1}, "optimizers": {},
        "run": {"data": "digits", "img_size": 8, "in_chans": 1, "options": {}, "model_args": {"small_input": True}}})
    capsys.readouterr()
    assert main(["train", other, "--data", "digits", "--resume", "--out", str(run), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert f"--resume: the run in {run} was trained as 'resnet18', not '{other}'" in error and "\n" not in error, error


def test_a_file_with_our_metadata_but_no_run_record_is_one_error_not_a_traceback(tmp_path, capsys):
    """A safetensors whose visionzoo metadata holds no training record (here `{}`, or only the model) ended `eval` in
    a TypeError traceback from pathlib (no data set to rebuild the run with) and `train --resume` in KeyError:
    'total_steps'."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.cli import main

    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.safetensors"
    for meta in ({}, {"model": {"name": "resnet18", "args": {}}}):
        save_checkpoint(path, {"model.x": torch.zeros(1)}, meta)
        capsys.readouterr()
        assert main(["eval", "resnet18", "--checkpoint", str(path)]) == 2
        error = capsys.readouterr().err.strip()
        assert f"{path} records no data set it was trained on" in error and "\n" not in error, error
        assert main(["train", "resnet18", "--data", "digits", "--resume", "--out", str(run), "--no-progress"]) == 2
        error = capsys.readouterr().err.strip()
        assert f"{path} is not a visionzoo training checkpoint" in error and "\n" not in error, error


def test_timms_tagged_name_of_the_trained_model_is_that_model_in_eval_and_resume(tmp_path, capsys):
    """create_model takes 'resnet18.tv_in1k' (timm's name with the tag of our weights) as resnet18, and records
    resnet18; `eval` and `train --resume` given that name refused the run ('is for model 'resnet18', not
    'resnet18.tv_in1k'', 'was trained as 'resnet18'')."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.cli import main

    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.safetensors"
    save_checkpoint(path, {"model.x": torch.zeros(1)}, {"model": {"name": "resnet18", "args": {}}})
    capsys.readouterr()
    assert main(["eval", "resnet18.tv_in1k", "--checkpoint", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{path} records no data set it was trained on" in error, error  # past the model's name
    save_checkpoint(path, {"model.x": torch.zeros(1)}, {
        "model": {"name": "resnet18", "args": {"num_classes": 10, "in_chans": 1}}, "step": 1, "total_steps": 1,
        "config": {"max_steps": 1}, "optimizers": {},
        "run": {"data": "shapes", "img_size": 8, "in_chans": 1, "options": {}, "model_args": {}}})
    assert main(["train", "resnet18.tv_in1k", "--data", "digits", "--resume", "--out", str(run), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "was trained as" not in error and "shapes" in error, error  # refused for its data, not its name


@pytest.mark.parametrize("flag", ["--initial-checkpoint", "--teacher-checkpoint"])
def test_overwrite_refuses_a_file_the_run_reads_that_it_would_replace_and_keeps_another(tmp_path, capsys, flag):
    """--overwrite emptied the run folder after reading the run's --initial-checkpoint or --teacher-checkpoint from
    it (a pretraining fine-tuned into its own folder): the weights the user started from were deleted. Now it replaces
    only the run's files: a file of the run's own name is refused, another is read and kept."""
    from visionzoo.cli import main
    from visionzoo.models import create_model

    run = tmp_path / "run"
    run.mkdir()
    (run / ".visionzoo-run").touch()
    teacher = ["--teacher", "resnet18"] if flag == "--teacher-checkpoint" else []
    small = ["train", "resnet18", "--data", "digits", "--max-steps", "1", "--batch-size", "4", "--precision", "fp32",
             "--no-progress", "--out", str(run), "--overwrite", *teacher, flag]
    weights = run / "checkpoint.safetensors"
    save_file(create_model("resnet18", num_classes=10, in_chans=1).state_dict(), weights)
    capsys.readouterr()
    assert main([*small, str(weights)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{flag} {weights} is the run's own checkpoint.safetensors in --out {run}" in error and "\n" not in error
    assert "--overwrite" in error and weights.is_file() and not (run / "metrics.jsonl").exists()
    kept = weights.rename(run / "start.safetensors")
    assert main([*small, str(kept)]) == 0, capsys.readouterr().err
    assert kept.is_file() and (run / "metrics.jsonl").is_file()


def test_resume_refuses_a_teacher_that_is_the_runs_own_checkpoint(tmp_path, capsys):
    """A run resumed with --teacher-checkpoint RUN/checkpoint.safetensors distilled from its own checkpoint, wrote the
    student over it, and every later --resume was refused as 'the teacher file has changed'."""
    from visionzoo.cli import main

    run = tmp_path / "run"
    small = ["train", "resnet18", "--data", "digits", "--batch-size", "4", "--precision", "fp32", "--no-progress",
             "--out", str(run)]
    assert main([*small, "--max-steps", "1"]) == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*small, "--max-steps", "2", "--resume", "--teacher", "resnet18", "--teacher-checkpoint",
                 str(run / "checkpoint.safetensors")]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"--teacher-checkpoint {run / 'checkpoint.safetensors'} is the run's own checkpoint.safetensors in --out "
            f"{run}") in error and "--resume" in error and "\n" not in error, error
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_resume_takes_the_runs_initial_checkpoint_given_again_under_another_spelling(tmp_path, capsys):
    """--resume compared --initial-checkpoint with the run's as text: the same file given as ./FILE, by its absolute
    path or through a .. was refused as 'other weights'."""
    import json

    from visionzoo.cli import main
    from visionzoo.models import create_model

    (tmp_path / "sub").mkdir()
    weights = tmp_path / "start.pth"
    torch.save(create_model("resnet18", num_classes=10, in_chans=1).state_dict(), weights)
    run = tmp_path / "run"
    small = ["train", "resnet18", "--data", "digits", "--batch-size", "4", "--precision", "fp32", "--no-progress",
             "--out", str(run)]
    assert main([*small, "--max-steps", "1", "--initial-checkpoint", str(weights)]) == 0
    capsys.readouterr()
    assert main([*small, "--max-steps", "2", "--resume", "--initial-checkpoint",
                 str(tmp_path / "sub" / ".." / "start.pth")]) == 0, capsys.readouterr().err
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 2
    other = tmp_path / "other.pth"
    other.write_bytes(weights.read_bytes())
    assert main([*small, "--max-steps", "3", "--resume", "--initial-checkpoint", str(other)]) == 2
    assert f"--initial-checkpoint {other}: the run in {run} started from {weights}" in capsys.readouterr().err


def test_an_unknown_task_names_the_registered_tasks():
    """get_task('zzzzqq') said "registered: none close", naming no task where none was close to the name."""
    import re

    from visionzoo.train.task import _TASKS, get_task

    with pytest.raises(ValueError) as caught:
        get_task("zzzzqq")
    message = str(caught.value)
    assert "none close" not in message
    assert re.fullmatch(r"unknown task 'zzzzqq'; registered: (.+)", message).group(1).split(", ") == sorted(_TASKS)
    with pytest.raises(ValueError, match=r"unknown task 'detectoin'; closest registered: detection"):
        get_task("detectoin")


def _photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB photo stand-in of ``size`` (width, height): smooth gradients and noise, so that resampling matters."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return Image.fromarray((smooth + rng.integers(0, 56, (height, width, 3))).astype(np.uint8))


@pytest.mark.parametrize("name", ["resnet18", "vit_small_patch16_224", "convnext_nano", "swin_base_patch4_window12_384"])
@pytest.mark.parametrize("size", [(333, 250), (250, 333), (224, 224)])
def test_the_eval_crop_of_official_weights_is_timms_evaluation_transform(name, size):
    """`predict --pretrained` reads an image as timm evaluates the weights: the shorter side resized to
    floor(size / crop_pct) with the configuration's interpolation (bilinear for the ResNets, bicubic for ViT, Swin,
    ConvNeXt), the centre cropped. Normalised as the task normalises it, equal to timm's transform of the same PIL
    image: both resize the uint8 image with PIL (torchvision's resize of a uint8 tensor differs by up to 2/255)."""
    from timm.data import create_transform, resolve_data_config

    from visionzoo.models import get_model_entry
    from visionzoo.models._registry import _default_cfg
    from visionzoo.train.run import eval_crop

    cfg = _default_cfg(get_model_entry(name))
    image = _photo(size)
    ours = eval_crop(image, cfg)
    side = cfg["input_size"][-1]
    assert ours.shape == (3, side, side) and ours.dtype == torch.float32
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    theirs = create_transform(**resolve_data_config(pretrained_cfg=cfg), is_training=False)(image)
    assert torch.equal((ours - mean) / std, theirs)


def test_load_eval_images_reads_grey_and_rgba_files_as_rgb(tmp_path):
    from visionzoo.models import get_model_entry
    from visionzoo.models._registry import _default_cfg
    from visionzoo.train.run import eval_crop, load_eval_images

    cfg = _default_cfg(get_model_entry("resnet18"))
    photo = _photo((300, 240))
    photo.convert("L").save(tmp_path / "grey.png")
    photo.convert("RGBA").save(tmp_path / "rgba.png")
    images = load_eval_images([tmp_path / "grey.png", tmp_path / "rgba.png"], cfg)
    assert images.shape == (2, 3, 224, 224)
    assert torch.equal(images[0], eval_crop(photo.convert("L").convert("RGB"), cfg))
    assert torch.equal(images[1], eval_crop(photo, cfg))


def test_an_eval_configuration_other_than_a_square_centre_crop_is_refused_by_name():
    from visionzoo.train.run import eval_crop

    cfg = {"architecture": "some_net", "input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "squash"}
    with pytest.raises(ValueError, match="some_net: .*crop_mode 'squash'"):
        eval_crop(_photo((64, 64)), cfg)
