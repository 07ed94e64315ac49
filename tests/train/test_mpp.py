"""Masked patch prediction (ViT paper, B.1.2): its checkpoints for evaluation and fine-tuning."""

import pytest
import torch

from visionzoo.checkpoint import read_checkpoint
from visionzoo.cli import main
from visionzoo.train.run import load_for_inference

SMALL = ["--data", "digits", "--img-size", "32", "--precision", "fp32", "--no-progress", "--batch-size", "16"]


@pytest.fixture(scope="module")
def mpp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mpp") / "run"
    assert main(["train", "vit_tiny_patch8_32", *SMALL, "--objective", "mpp", "--max-steps", "3", "--ema-decay", "0.5",
                 "--out", str(run)]) == 0
    return run / "checkpoint.safetensors"


def test_use_ema_evaluates_the_ema_weights_of_a_pretraining(mpp_run):
    """`visionzoo eval --use-ema` of a masked patch prediction run scored its trained weights (val accuracy 0.1315,
    its EMA's 0.1259 in the run's own evaluation): the pretraining's model was built from the trained section."""
    tensors, _ = read_checkpoint(mpp_run)
    for use_ema, section in ((True, "ema."), (False, "model.")):
        model = load_for_inference("vit_tiny_patch8_32", mpp_run, use_ema=use_ema).model
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, tensors[section + key], rtol=0, atol=0, msg=f"{section}{key}")
    assert not torch.equal(tensors["ema.mask_token"], tensors["model.mask_token"])


def test_the_validation_score_does_not_depend_on_the_batch_size(mpp_run):
    """The "fixed" corruption of the val split was drawn batch by batch from one seed, so the same checkpoint
    scored val accuracy 0.1315 at --batch-size 64 (the run's own evaluation), 0.1380 at 32 and 0.1407 at 128
    (`visionzoo eval`'s default)."""
    import contextlib

    setup = load_for_inference("vit_tiny_patch8_32", mpp_run)
    val = torch.utils.data.Subset(setup.splits["val"], range(60))
    scores = [setup.task.evaluate(setup.model.eval(), val, size, contextlib.nullcontext) for size in (60, 16, 7)]
    for other in scores[1:]:
        assert other["accuracy"] == scores[0]["accuracy"]
        assert other["loss"] == pytest.approx(scores[0]["loss"], rel=1e-5)


def test_a_fine_tuned_run_resumes_without_the_file_it_started_from(mpp_run, tmp_path, capsys):
    """`--resume` of a run fine-tuned with --initial-checkpoint read that file again to build the model, so once
    the pretraining was deleted the run could not go on ("checkpoint .../checkpoint.safetensors does not exist"),
    though its own checkpoint holds every weight."""
    import shutil

    pretrained = tmp_path / "pretrained.safetensors"
    shutil.copy(mpp_run, pretrained)
    out = tmp_path / "fine-tuned"
    base = ["train", "vit_tiny_patch8_32", *SMALL, "--out", str(out)]
    assert main([*base, "--max-steps", "1", "--initial-checkpoint", str(pretrained)]) == 0
    pretrained.unlink()
    assert main([*base, "--max-steps", "2", "--resume"]) == 0
    _, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["step"] == 2 and meta["run"]["options"]["initial_checkpoint"] == str(pretrained)
    capsys.readouterr()
    assert main([*base, "--max-steps", "3", "--resume", "--initial-checkpoint", str(mpp_run)]) == 2
    assert "--resume goes on from the run's own" in capsys.readouterr().err


def test_fine_tuning_takes_every_encoder_weight_of_the_pretraining_but_its_colour_head(mpp_run):
    """From the pretraining's EMA (as timm's --initial-checkpoint): every backbone tensor equal, the 8-colour head
    and the [mask] embedding left behind, the 10-class head freshly initialised."""
    from visionzoo.train.classification import build_classifier

    tensors, _ = read_checkpoint(mpp_run)
    pretrained = {key.removeprefix("ema.encoder."): value for key, value in tensors.items()
                  if key.startswith("ema.encoder.")}
    model = build_classifier("vit_tiny_patch8_32", 10, 1, {}, initial_checkpoint=mpp_run)
    own = model.state_dict()
    assert set(own) == set(pretrained)
    for key, value in own.items():
        if key.startswith("head."):
            assert value.shape[0] == 10 and pretrained[key].shape[0] == 8
        else:
            assert torch.equal(value, pretrained[key]), key


def test_create_model_loads_a_pretraining_checkpoint_as_timm_loads_a_checkpoint_path(mpp_run):
    """create_model(name, checkpoint=<a masked-patch pretraining>) refused the file: '80 missing keys: blocks.0...;
    81 unexpected keys: encoder.blocks.0...', though it holds that very model."""
    from visionzoo.models import create_model

    tensors, _ = read_checkpoint(mpp_run)
    ema = {key.removeprefix("ema.encoder."): value for key, value in tensors.items() if key.startswith("ema.encoder.")}
    pretrained = create_model("vit_tiny_patch8_32", checkpoint=mpp_run)  # the colour head too: 8 classes
    assert pretrained.state_dict().keys() == ema.keys()
    assert all(torch.equal(value, ema[key]) for key, value in pretrained.state_dict().items())
    classifier = create_model("vit_tiny_patch8_32", checkpoint=mpp_run, num_classes=10)
    assert classifier.head.out_features == 10 and pretrained.head.out_features == 8
    assert torch.equal(classifier.blocks[0].attn.qkv.weight, ema["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("name, model_args", [("deit_tiny_distilled_patch8_32", {}),
                                              ("vit_tiny_patch8_32", {"global_pool": "avg"})])
def test_pretraining_runs_under_distributed_data_parallel(tmp_path, name, model_args):
    """Under torchrun the second step of a DeiT's pretraining failed ("Expected to have finished reduction in the
    prior iteration"): its head_dist, like an avg-pool ViT's fc_norm, gets no gradient from patch prediction. One
    process of gloo here, which runs the same check as the two of torchrun."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from visionzoo.train.mpp import MaskedPatchTask

    task, model = MaskedPatchTask.build(name, [str(i) for i in range(10)], 1, model_args, None, None, {"translate": 0})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model, find_unused_parameters=task.find_unused_parameters)
        batch = (torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(4, dtype=torch.long))
        for _ in range(2):
            task.training_step(wrapped, batch, "main")["loss"].backward()
    finally:
        dist.destroy_process_group()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize("name, model_args", [("vit_tiny_patch8_32", {}), ("vit_tiny_patch8_32", {"global_pool": "avg"}),
                                              ("vit_tiny_patch8_32", {"global_pool": "map"}),
                                              ("deit_tiny_distilled_patch8_32", {})])
def test_pretraining_asks_ddp_to_find_unused_parameters_only_where_it_leaves_some(name, model_args):
    """torchrun of a plain ViT's pretraining warned on every rank that "find_unused_parameters=True was specified in
    DDP constructor, but did not find any unused parameters", a traversal of the autograd graph each step for
    nothing: the task asked for it for every model, where only some leave parameters without a gradient."""
    from visionzoo.train.mpp import MaskedPatchTask

    task, model = MaskedPatchTask.build(name, [str(i) for i in range(10)], 1, model_args, None, None, {"translate": 0})
    batch = (torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(4, dtype=torch.long))
    task.training_step(model, batch, "main")["loss"].backward()
    unused = [key for key, parameter in model.named_parameters() if parameter.grad is None]
    assert task.find_unused_parameters == bool(unused), unused


def test_fine_tuning_reports_the_tensors_it_leaves_out(mpp_run, caplog):
    """Fine-tuning from a pretraining left its [mask] embedding and colour head behind without a word."""
    import logging

    from visionzoo.train.classification import build_classifier

    with caplog.at_level(logging.INFO, logger="visionzoo.train.classification"):
        build_classifier("vit_tiny_patch8_32", 10, 1, {}, initial_checkpoint=mpp_run)
    assert (f"{mpp_run}: starting from 78 of its 81 tensors; left out: encoder.head.bias, encoder.head.weight, "
            "mask_token; the model's head freshly initialised") in caplog.text


@pytest.mark.parametrize("model_args", [["dynamic_img_size=true", "dynamic_img_pad=true"], ["dynamic_img_size=true"]])
def test_images_not_cut_into_whole_patches_are_refused_before_the_run(capsys, tmp_path, model_args):
    """At --img-size 30 with 8-px patches, a padding ViT failed at the first step with a traceback ("shape
    '[16, 16, 192]' is invalid for input of size 27648": 16 tokens, 9 colours) and a non-padding one there too,
    after the run folder was written."""
    out = tmp_path / "run"
    argv = ["train", "vit_tiny_patch8_32", *SMALL[:2], "--img-size", "30", *SMALL[4:], "--objective", "mpp",
            "--max-steps", "1", "--out", str(out)]
    for arg in model_args:
        argv += ["--model-arg", arg]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert ("digits's 30×30 images are not a multiple of the 8×8 patch size; give e.g. --img-size 24" in error
            and "\n" not in error), error
    assert not out.exists()


def test_evaluating_a_pretraining_on_images_of_other_channels_says_so(mpp_run, capsys):
    """`visionzoo eval` of the 1-channel Digits pretraining on RGB Shapes failed with "3 shape mismatches:
    encoder.head.bias (8,) vs model (512,), ...", where a classifier's run names the data that does not fit."""
    assert main(["eval", "vit_tiny_patch8_32", "--checkpoint", str(mpp_run), "--data", "shapes"]) == 2
    error = capsys.readouterr().err.strip()
    assert "was pretrained on 1-channel images, these have 3: it predicts 8 patch colours, not their 512" in error


def test_a_swapped_patch_takes_another_patchs_embedding():
    """The paper swaps 10% of the corrupted patches for "a random other patch embedding"; the source was drawn among
    all of the batch's patches, the patch itself included, so at validation (one image of 16 patches per draw)
    7.3% of the swaps kept the patch as it was (0.0073 of the corrupted patches)."""
    from visionzoo.train.mpp import evaluation_corruption, sample_corruption

    own = torch.arange(4000 * 16).view(4000, 16)
    for corruption in (evaluation_corruption(0, 4000, 16), sample_corruption(4000, 16, torch.Generator().manual_seed(0))):
        assert not ((corruption.source == own) & corruption.swapped).any()
        assert corruption.source.min() >= 0 and corruption.source.max() < 4000 * 16
    drawn = evaluation_corruption(0, 4000, 16)
    within = drawn.source - own + torch.arange(16)  # the index of the source patch in its image
    assert ((within >= 0) & (within < 16)).all()
    counts = torch.bincount(within[:, 0], minlength=16)  # the first patch's sources: the 15 others, evenly
    assert counts[0] == 0 and counts[1:].min() > 0.8 * 4000 / 15
    single = sample_corruption(1, 1, torch.Generator().manual_seed(0))  # no other patch: it keeps its own
    assert single.source.item() == 0


def test_pretraining_on_a_coco_folder_needs_no_class_labels(tmp_path, capsys):
    """`visionzoo train vit --objective mpp --data FOLDER` on a COCO folder stopped with "this data set has no
    image-level class labels", though masked patch prediction learns patch colours and uses no labels."""
    from visionzoo.data.export import export_shapes

    export_shapes(tmp_path / "coco", splits=["train", "val"], num=4, image_size=32, progress=False)
    out = tmp_path / "run"
    assert main(["train", "vit_tiny_patch8_32", "--data", str(tmp_path / "coco"), *SMALL[2:], "--batch-size", "4",
                 "--objective", "mpp", "--max-steps", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    checkpoint = out / "checkpoint.safetensors"
    assert main(["eval", "vit_tiny_patch8_32", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "coco"),
                 "--split", "val"]) == 0, capsys.readouterr().err


def test_pretraining_on_a_coco_folder_reads_no_boxes_so_refuses_none(tmp_path, capsys):
    """A COCO folder with one box of no area inside its image stopped `train vit --objective mpp` with advice to pass
    --skip-invalid-boxes, which the same command then refused as an option for detectors: a dead end, though masked
    patch prediction reads the images only, never a box."""
    import json

    from visionzoo.data.export import export_shapes

    folder = tmp_path / "coco"
    export_shapes(folder, splits=["train", "val"], num=4, image_size=32, progress=False)
    ann_file = folder / "annotations" / "instances_train.json"
    annotations = json.loads(ann_file.read_text())
    annotations["annotations"][0]["bbox"][2] = 0
    ann_file.write_text(json.dumps(annotations))
    out = tmp_path / "run"
    assert main(["train", "vit_tiny_patch8_32", "--data", str(folder), *SMALL[2:], "--batch-size", "4",
                 "--objective", "mpp", "--max-steps", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "checkpoint.safetensors").is_file()


def test_pretraining_on_coco_images_of_several_sizes_without_img_size_names_two_of_them(tmp_path, capsys):
    """A COCO folder of images of several sizes, read at their own sizes (no --img-size; --model-arg
    dynamic_img_size=true, as the refusal of a size the ViT was not built for advises), ended in torch's traceback
    "stack expects each tensor to be equal size" at the first batch holding two sizes."""
    import json

    from PIL import Image

    from visionzoo.data.export import export_shapes

    folder = tmp_path / "coco"
    export_shapes(folder, splits=["train", "val"], num=4, image_size=32, progress=False)
    Image.open(folder / "val" / "000002.png").resize((48, 32)).save(folder / "val" / "000002.png")
    ann_file = folder / "annotations" / "instances_val.json"
    annotations = json.loads(ann_file.read_text())
    image_id = annotations["images"][2]["id"]
    annotations["images"][2]["width"] = 48
    annotations["annotations"] = [a for a in annotations["annotations"] if a["image_id"] != image_id]
    ann_file.write_text(json.dumps(annotations))
    argv = ["train", "vit_tiny_patch8_32", "--data", str(folder), "--precision", "fp32", "--no-progress",
            "--batch-size", "4", "--objective", "mpp", "--model-arg", "dynamic_img_size=true", "--max-steps", "1"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert f"instances_val.json: image id {image_id} is 48x32" in error and "instances_train.json" in error, error
    assert "--img-size" in error and not (tmp_path / "run").exists()
    assert main([*argv, "--img-size", "32", "--out", str(tmp_path / "resized")]) == 0, capsys.readouterr().err


def test_eval_of_a_pretraining_whose_logits_are_not_finite_is_refused(mpp_run, capsys, monkeypatch):
    """eval --json of a masked patch prediction run whose colour logits overflowed (bf16's range) printed "loss": NaN,
    which no JSON reader takes, beside an accuracy read from the arbitrary order of NaN logits; it now refuses as a
    classifier's eval does."""
    from visionzoo.train.mpp import MaskedPatchPredictor

    forward = MaskedPatchPredictor.forward
    monkeypatch.setattr(MaskedPatchPredictor, "forward", lambda self, *a, **k: forward(self, *a, **k) * float("nan"))
    capsys.readouterr()
    assert main(["eval", "vit_tiny_patch8_32", "--checkpoint", str(mpp_run), "--split", "val", "--json",
                 "--precision", "bf16", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (f"visionzoo eval: error: vit_tiny_patch8_32's outputs are not "
                                                   f"finite (NaN or infinity) with {mpp_run}; try --precision fp32\n")


def test_eval_of_a_pretraining_says_its_accuracy_is_of_patch_colours(mpp_run, capsys):
    """`visionzoo eval` of a masked patch prediction checkpoint on Digits printed "accuracy 0.1167" under the header
    a classifier gets, read as the digits' classification accuracy: it is that of the corrupted patches' colours."""
    import json

    assert main(["eval", "vit_tiny_patch8_32", "--checkpoint", str(mpp_run), "--data", "digits", "--split", "val",
                 "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("vit_tiny_patch8_32 on val split (") and (
        "masked patch prediction: the 3-bit mean colour of its images' corrupted patches, not their labels") in header
    assert main(["eval", "vit_tiny_patch8_32", "--checkpoint", str(mpp_run), "--data", "digits", "--split", "val",
                 "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scores"].startswith("masked patch prediction") and 0 <= report["accuracy"] <= 1


def test_predict_with_a_pretraining_names_its_file_and_the_command_that_fine_tunes_it(mpp_run, tmp_path, capsys):
    """`visionzoo predict` of a masked patch prediction checkpoint answered "this checkpoint is ...; fine-tune it with
    `visionzoo train MODEL --initial-checkpoint FILE` first", naming neither the file nor the model it knew."""
    from PIL import Image

    image = tmp_path / "grey.png"
    Image.new("L", (32, 32), 128).save(image)
    assert main(["predict", "vit_tiny_patch8_32", "--checkpoint", str(mpp_run), str(image), "--out",
                 str(tmp_path / "pred")]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"{mpp_run} is a masked patch prediction pretraining, not a classifier; fine-tune it first (`visionzoo "
            f"train vit_tiny_patch8_32 --initial-checkpoint {mpp_run}`)" in error and "\n" not in error), error


def test_fine_tuning_a_pretraining_at_another_image_size_resamples_its_position_table(mpp_run, tmp_path, capsys):
    """Fine-tuning the 32-px pretraining at 16 px (--model-arg img_size=16) was refused ("does not fit model
    vit_tiny_patch8_32: 1 shape mismatches: pos_embed (1, 17, 192) vs model (1, 5, 192)"), where a timm file of the
    same weights has its position table resampled, as timm's filter does."""
    from visionzoo.layers import resample_abs_pos_embed
    from visionzoo.train.classification import build_classifier

    out = tmp_path / "ft"
    assert main(["train", "vit_tiny_patch8_32", *SMALL[:2], "--img-size", "16", "--model-arg", "img_size=16",
                 *SMALL[4:], "--initial-checkpoint", str(mpp_run), "--max-steps", "1", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    model = build_classifier("vit_tiny_patch8_32", 10, 1, {"img_size": 16}, initial_checkpoint=mpp_run)
    pretrained = read_checkpoint(mpp_run)[0]["ema.encoder.pos_embed"]
    expected = resample_abs_pos_embed(pretrained, (2, 2), (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=1e-5, atol=1e-6)
