"""`visionzoo sample`: a seeded grid and per-image PNGs from a trained generative model; bad requests are one line."""

import gc
import itertools
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.cli import main
from visionzoo.metrics import domain
from visionzoo.train import TrainConfig, commands
from visionzoo.train.commands import grid_size, sample_batches
from visionzoo.train.gan import GANTask
from visionzoo.train.run import run_training

TINY_GAN = dict(latent_dim=8, generator_width=4, discriminator_width=4)


@pytest.fixture(scope="module")
def gan_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "run"
    patch = pytest.MonkeyPatch()
    patch.setattr(domain, "domain_features", lambda data, size, in_chans=None: domain.DomainFeatures(in_chans, widths=(4, 8, 8)))
    try:
        run_training("dcgan", "digits", TrainConfig(out=str(out), max_steps=2, batch_size=16, progress=False,
                                                    precision="fp32"), 16, TINY_GAN)
    finally:
        patch.undo()
    return out / "checkpoint.safetensors"


def test_sample_writes_a_seeded_grid_and_the_single_images(gan_checkpoint, tmp_path):
    grid, images = tmp_path / "grid.png", tmp_path / "images"
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "6", "--nrow", "3", "--out", str(grid)]
    assert main(args + ["--images-dir", str(images)]) == 0
    with Image.open(grid) as picture:
        assert picture.size == (2 + 3 * 18, 2 + 2 * 18)
        first = torch.from_numpy(np.asarray(picture).copy())
    assert sorted(p.name for p in images.iterdir()) == [f"{i:05d}.png" for i in range(6)]
    assert main(args) != 0  # the grid exists: refused without --overwrite
    assert main(args + ["--overwrite"]) == 0
    with Image.open(grid) as picture:
        assert torch.equal(torch.from_numpy(np.asarray(picture).copy()), first)
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    with Image.open(grid) as picture:
        assert not torch.equal(torch.from_numpy(np.asarray(picture).copy()), first)


def test_sample_on_the_cpu_by_device_draws_todays_images_and_cuda_without_a_gpu_is_one_line(gan_checkpoint, tmp_path,
                                                                                          capsys, monkeypatch):
    """sample took no --device (refused as an unrecognized argument) and always drew on the CPU: 50,000 images for
    FID on the CPU beside an idle GPU. --device cpu draws, from a --seed, the images sample drew without it; --device
    cuda where no GPU is says so in one line and writes nothing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the default is then the CPU, as before
    argv = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "5", "--batch-size", "2", "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "before.png"), "--images-dir", str(tmp_path / "before")]) == 0
    assert main([*argv, "--out", str(tmp_path / "cpu.png"), "--images-dir", str(tmp_path / "cpu"), "--device", "cpu",
                 "--precision", "fp32"]) == 0
    assert (tmp_path / "cpu.png").read_bytes() == (tmp_path / "before.png").read_bytes()
    names = sorted(path.name for path in (tmp_path / "before").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "cpu").iterdir()) and len(names) == 5
    for name in names:
        assert (tmp_path / "cpu" / name).read_bytes() == (tmp_path / "before" / name).read_bytes(), name
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "cuda"), "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert error == "visionzoo sample: error: --device cuda was asked for, but no CUDA device is available\n"
    assert not (tmp_path / "cuda").exists()


def test_bad_sample_requests_are_one_line(gan_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", out, "--top-k", "5"]) != 0
    assert "--top-k does not apply to a GAN" in capsys.readouterr().err  # the option, not the keyword top_k
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", str(tmp_path / "grid.gif")]) != 0
    assert "--out must be a .png or .jpg" in capsys.readouterr().err
    assert main(["sample", "resnet18", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", out]) != 0
    assert "missing.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused by the parser, before the checkpoint is read
        main(["sample", "dcgan", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", out, "--top-p", "1.5"])
    assert "--top-p: expected a number in (0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()


def test_a_grid_inside_the_images_dir_is_refused_before_sampling(gan_checkpoint, tmp_path, capsys):
    """--out images/00000.png used to be replaced by the first sample (reported as "6 samples ... in" it); a grid of
    another name stayed among the samples, which `visionzoo fid` reads as one more."""
    images = tmp_path / "images"
    for name in ("00000.png", "grid.png"):
        args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "6", "--out", str(images / name),
                "--images-dir", str(images)]
        assert main(args) != 0
        error = capsys.readouterr().err
        assert f"--out {images / name} is in --images-dir {images}" in error and len(error.strip().splitlines()) == 1
    assert not images.exists()


@pytest.mark.parametrize("images_dir", ["grid.png", "grid.png/deeper"])
def test_an_images_dir_at_or_below_the_grid_is_refused_before_sampling(gan_checkpoint, tmp_path, capsys, images_dir):
    """--out grid.png --images-dir grid.png (or grid.png/deeper) drew every sample into a folder grid.png, then
    failed on the grid with "[Errno 21] Is a directory: 'grid.png'", naming no option: the grid was lost, after a
    sampling run that may have taken hours."""
    out, images = tmp_path / "grid.png", tmp_path / images_dir
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "3", "--out", str(out),
                 "--images-dir", str(images)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"visionzoo sample: error: --images-dir {images} is --out {out} or inside it, the path "
                                "the grid is written to; give the grid and the samples separate paths"]
    assert not out.exists()


def test_a_code_priors_checkpoint_given_for_image_gpt_names_its_model(tmp_path, capsys):
    """The prior's recorded --tokenizer used to reach Image GPT's set-up first: "--tokenizer is for code priors ..."."""
    from visionzoo.checkpoint import save_checkpoint

    prior = tmp_path / "prior.safetensors"
    save_checkpoint(prior, {"model.x": torch.zeros(1)}, {
        "model": {"name": "vqgan_transformer", "args": {"tokenizer": {"name": "vqvae_small", "args": {}}}},
        "run": {"data": "digits", "img_size": 16, "options": {"tokenizer": str(tmp_path / "tokenizer.safetensors")}}})
    assert main(["sample", "image_gpt_small", "--checkpoint", str(prior), "--out", str(tmp_path / "grid.png")]) != 0
    error = capsys.readouterr().err
    assert f"checkpoint {prior} is for model 'vqgan_transformer', not 'image_gpt_small'" in error
    assert len(error.strip().splitlines()) == 1


def test_predict_on_a_sampler_points_to_sample(gan_checkpoint, tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.new("L", (16, 16)).save(image)
    assert main(["predict", "dcgan", str(image), "--checkpoint", str(gan_checkpoint), "--out", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "use `visionzoo sample`" in error


def test_overwrite_replaces_an_earlier_longer_runs_samples_and_keeps_other_files(gan_checkpoint, tmp_path, capsys):
    """A shorter run used to leave 00004.png ... 00009.png of a longer one beside its own; other images in the folder
    were kept without a word, though `visionzoo fid` of the folder reads them as samples."""
    images = tmp_path / "images"
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--images-dir", str(images), "--overwrite"]
    assert main([*args, "-n", "10", "--out", str(tmp_path / "a.png")]) == 0
    others = ["notes.txt", "cat.png", "0001.png", "1.png", "00001.jpg"]
    for name in others:
        (images / name).write_text("keep me")
    capsys.readouterr()
    assert main([*args, "-n", "4", "--out", str(tmp_path / "b.png")]) == 0
    # the images among them would be read as samples by `visionzoo fid`: said, not silently mixed in
    assert (f"note: {images} also holds 4 other images (00001.jpg, 0001.png, 1.png, ...), which `visionzoo fid "
            f"{images}` would read with the samples") in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == sorted([f"{i:05d}.png" for i in range(4)] + others)
    assert all((images / name).read_text() == "keep me" for name in others)
    capsys.readouterr()
    assert main([*args[:-1], "-n", "2", "--out", str(tmp_path / "c.png")]) == 2  # without --overwrite: refused
    assert "already holds samples" in capsys.readouterr().err
    assert sorted(p.name for p in images.glob("?????.png")) == [f"{i:05d}.png" for i in range(4)]


def test_an_out_that_is_a_folder_is_refused_in_one_line_before_sampling(tmp_path, capsys):
    folder = tmp_path / "grid.png"
    folder.mkdir()
    (folder / "mine.txt").write_text("mine")
    assert main(["sample", "dcgan", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(folder),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"visionzoo sample: error: --out {folder} is a folder; give the path of a .png or .jpg file"]
    assert (folder / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("exists", [False, True])
def test_an_out_of_a_grids_name_with_a_trailing_slash_is_refused_not_written_as_a_grid(gan_checkpoint, tmp_path, capsys,
                                                                                       exists):
    """--out x.png/ (a folder, by its slash) wrote the grid file x.png, and with x.png there and --overwrite replaced
    it; README and --help say a trailing separator names a folder."""
    grid = tmp_path / "x.png"
    if exists:
        grid.write_text("mine")
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "4", "--out", f"{grid}/",
                 "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"visionzoo sample: error: --out {grid}/ ends in a separator, so names a folder, but "
                                f"has a grid's suffix .png; give --out {grid} for a grid, or a folder name without "
                                ".png or .jpg for one PNG a sample"]
    assert [p.name for p in tmp_path.iterdir()] == (["x.png"] if exists else [])
    assert not exists or grid.read_text() == "mine"


def test_an_out_folder_with_a_dot_in_its_name_is_refused_with_the_way_to_give_it(gan_checkpoint, tmp_path, capsys):
    """--out runs/dcgan.v2 (a folder to the user) was refused as "--out must be a .png or .jpg file (a grid) or a
    folder (one PNG a sample), got runs/dcgan.v2", which did not say how to give such a folder."""
    folder = tmp_path / "dcgan.v2"
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "2", "--out"]
    assert main([*args, str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"visionzoo sample: error: --out must be a .png or .jpg file (a grid) or a folder (one "
                                f"PNG a sample), got {folder}; for a folder of that name, end it with a separator: "
                                f"{folder}{os.sep}"]
    assert not folder.exists()
    assert main([*args, f"{folder}{os.sep}"]) == 0  # as the error says
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png"]


def test_a_jpeg_grid_too_large_for_the_format_is_refused_in_one_line_before_sampling(gan_checkpoint, tmp_path, capsys):
    """3700 images of 16 pixels in one column (66602 pixels high) used to sample, then end in Pillow's traceback
    'broken data stream when writing image file'; JPEG's sides stop at 65500."""
    out = tmp_path / "grid.jpg"
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", str(out), "-n", "3700", "--nrow", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "-n 3700" in err and "--nrow 1" in err and "66602" in err and ".png" in err
    assert not out.exists()
    assert grid_size(3700, 1, 16) == (20, 66602) and grid_size(3, 8, 16) == (56, 20)


def test_many_samples_are_drawn_in_batches_of_bounded_size(gan_checkpoint, tmp_path, monkeypatch):
    """-n 10000 used to be one call of the sampler: an Image GPT's key-value cache alone grew to about 18 GB."""
    assert list(sample_batches(1200)) == [500, 500, 200] and list(sample_batches(500)) == [500]
    assert list(sample_batches(3, 2)) == [2, 1]
    calls = []
    sample = GANTask.sample

    def counted(self, model, count, *args, **kwargs):
        calls.append(count)
        return sample(self, model, count, *args, **kwargs)

    monkeypatch.setattr(GANTask, "sample", counted)
    monkeypatch.setattr(commands, "SAMPLE_BATCH", 3)
    images = tmp_path / "images"
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "7", "--out", str(tmp_path / "grid.png"),
                 "--images-dir", str(images)]) == 0
    assert calls == [3, 3, 1]
    assert sorted(p.name for p in images.iterdir()) == [f"{i:05d}.png" for i in range(7)]


def test_the_batch_plan_is_lazy_so_its_memory_does_not_grow_with_n():
    """-n 10**9 with --images-dir first built a Python list of every batch's size (2,000,000 entries at the default
    batch, 10**9 at --batch-size 1) before the first image was drawn."""
    tracemalloc.start()
    try:
        batches = sample_batches(2_000_000, 1)
        first = list(itertools.islice(batches, 3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first == [1, 1, 1] and peak < 64 * 1024
    assert sum(sample_batches(10**6 + 7, 1000)) == 10**6 + 7


def test_a_seed_torch_cannot_take_is_refused_when_parsed(capsys, tmp_path):
    """-n 3 --seed 2**64 ended in torch's "Overflow when unpacking long long", after the model was loaded."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "dcgan", "--checkpoint", "missing.safetensors", "--out", str(tmp_path / "s.png"),
              "--seed", str(2**64)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--seed" in err and "[-2**63, 2**64)" in err
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("label", ["12", "seven"])
def test_a_label_for_a_gan_is_refused_as_not_applying_not_as_an_unknown_class(gan_checkpoint, tmp_path, capsys, label):
    """--label 12 on a DCGAN said "--label '12' is not a class of this model; classes: 0, 1, ..., 9": the Digits'
    classes, of a model that takes no class at all (--label 3 then said the label does not apply)."""
    out = tmp_path / "grid.png"
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", str(out), "--label", label]) == 2
    # it named the Python keyword ("label does not apply"), not the option
    assert capsys.readouterr().err == ("visionzoo sample: error: --label does not apply to a GAN, which samples from "
                                       "its latent alone\n")
    assert not out.exists()
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", str(out), "--label", label,
                 "--top-k", "5"]) == 2
    assert capsys.readouterr().err == ("visionzoo sample: error: --label, --top-k do not apply to a GAN, which samples "
                                       "from its latent alone\n")


def test_an_out_folder_gets_each_sample_as_it_is_drawn_not_all_at_the_end(gan_checkpoint, tmp_path, monkeypatch,
                                                                           capsys):
    """-n 50000 --out grid.png held all 50,000 images in memory (1.3 GB for 16-pixel digits) and wrote a 146 x 112502
    grid; samples for FID could only come through that grid. --out DIR now writes each batch's PNGs as it is drawn."""
    written = []
    sample = GANTask.sample

    def counted(self, model, count, *args, **kwargs):
        written.append(len(list(folder.iterdir())) if folder.exists() else 0)
        return sample(self, model, count, *args, **kwargs)

    monkeypatch.setattr(GANTask, "sample", counted)
    folder = tmp_path / "samples"
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "7", "--batch-size", "3", "--out", str(folder)]
    assert main(args) == 0
    assert written == [0, 3, 6]  # each batch was on disk before the next was drawn
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.png" for i in range(7)]
    assert f"7 samples of dcgan in {folder}" in capsys.readouterr().out
    # the same images as a grid's --images-dir at that batch size
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "7", "--batch-size", "3",
                 "--out", str(tmp_path / "g.png"), "--images-dir", str(tmp_path / "also")]) == 0
    for index in range(7):
        with Image.open(folder / f"{index:05d}.png") as mine, Image.open(tmp_path / "also" / f"{index:05d}.png") as also:
            assert np.array_equal(np.asarray(mine), np.asarray(also))
    assert main(args) == 2  # samples there: refused without --overwrite, as --images-dir
    assert "already holds samples" in capsys.readouterr().err
    assert main([*args[:-2], "-n", "2", "--out", str(folder), "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png"]


def test_a_grid_of_too_many_images_is_refused_before_loading_pointing_to_a_folder(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "dcgan", "--checkpoint", str(tmp_path / "missing.safetensors"), "-n", "50000",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "-n 50000" in err
    assert "a grid holds at most 4096 images" in err and "--out DIR" in err
    assert not out.exists()


def test_out_and_images_dir_both_folders_and_a_bad_batch_size_are_refused_in_one_line(tmp_path, capsys):
    assert main(["sample", "dcgan", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "a"),
                 "--images-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--images-dir" in err and "grid" in err
    with pytest.raises(SystemExit):
        main(["sample", "dcgan", "--checkpoint", "missing.safetensors", "--out", str(tmp_path / "a"),
              "--batch-size", "0"])
    assert "--batch-size: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_nrow_with_a_folder_out_is_refused_as_images_dir_is(tmp_path, capsys):
    """--out DIR --nrow 4 drew and wrote the samples, --nrow unused without a word (the user may have meant a grid);
    --images-dir with a folder --out was already refused."""
    folder = tmp_path / "samples"
    assert main(["sample", "dcgan", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(folder),
                 "--nrow", "4"]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: --nrow lays out a grid --out; the folder --out "
                                       f"{folder} gets every sample as its own PNG\n")
    assert not folder.exists()


def _live_tensor_bytes() -> int:
    """The bytes of every tensor storage Python still holds (the model's weights among them)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor):
            storage = obj.untyped_storage()
            try:
                storages[storage.data_ptr()] = storage.nbytes()
            except RuntimeError:  # a fake tensor of a graph that torch.export traced in an earlier test: no memory
                continue
    return sum(storages.values())


@pytest.mark.parametrize("grid", [True, False])
def test_the_memory_of_sampling_does_not_grow_with_n(gan_checkpoint, tmp_path, monkeypatch, capsys, grid):
    """-n 50000 --out grid.png --images-dir DIR (a grid to look at, the PNGs for FID) was refused: the grid kept every
    sample in memory. The samples now go to DIR batch by batch and the grid keeps its first GRID_MAX_IMAGES alone."""
    held = []
    sample = GANTask.sample

    def measured(self, model, count, *args, **kwargs):
        held.append(_live_tensor_bytes())
        return sample(self, model, count, *args, **kwargs)

    monkeypatch.setattr(GANTask, "sample", measured)
    monkeypatch.setattr(commands, "GRID_MAX_IMAGES", 4)
    images, out = tmp_path / "images", tmp_path / "grid.png"
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "30", "--batch-size", "3"]
    args += ["--out", str(out), "--images-dir", str(images)] if grid else ["--out", str(images)]
    assert main(args) == 0
    assert len(held) == 10 and sorted(p.name for p in images.iterdir()) == [f"{i:05d}.png" for i in range(30)]
    # once the grid's first images are in (by the third batch), nothing more stays: less than one 16-pixel image more
    assert held[-1] - held[2] < 16 * 16 * 4
    if grid:
        with Image.open(out) as picture:
            assert picture.size == grid_size(4, 8, 16)
            tiles = np.asarray(picture)
        for index in range(4):
            with Image.open(images / f"{index:05d}.png") as sample_image:
                x = 2 + index * 18
                assert np.array_equal(tiles[2:18, x:x + 16], np.asarray(sample_image))
        assert (f"the first 4 of the 30 samples of dcgan in {out} (a grid holds at most 4 images); all 30 are in "
                f"{images}") in capsys.readouterr().out


def test_the_note_on_other_images_in_an_out_folder_names_out(gan_checkpoint, tmp_path, capsys):
    """--out DIR into a folder holding other images said "give an empty --images-dir for FID", an option the user had
    not given (and which --out DIR refuses)."""
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "cat.png").write_text("mine")
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "2", "--out", str(folder)]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--images-dir" not in err
    assert err.endswith("give an empty --out folder for FID")
    assert (folder / "cat.png").read_text() == "mine"


def test_numbered_samples_beyond_n_in_the_folder_are_refused_not_mixed_in(gan_checkpoint, tmp_path, capsys):
    """-n 3 --out DIR into a folder holding 00007.png (another run's, whose first samples had gone) wrote 00000.png ...
    00002.png beside it without a word, and `visionzoo fid DIR` read four samples, one of another run."""
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "00007.png").write_text("another run's")
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "3", "--out", str(folder)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"visionzoo sample: error: {folder} already holds samples; use --overwrite to replace them"
    assert sorted(p.name for p in folder.iterdir()) == ["00007.png"]
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]


def test_sample_names_past_99999_keep_their_order_and_mark_the_folder_as_holding_samples(gan_checkpoint, tmp_path,
                                                                                          capsys):
    """Samples were named {:05d}.png: past 99999 the names grew to 6 digits, so 100000.png sorted before 99999.png,
    and a run's 000001.png (a run of over 100,000 samples pads to 6 digits) was not seen as another run's sample:
    -n 3 into its folder wrote beside it without a word, and --overwrite left it there."""
    from visionzoo.train.commands import holds_samples, is_sample_name, remove_earlier_samples, sample_name

    for count in (1, 100000, 100001, 10**7 + 1):
        names = [sample_name(index, count) for index in sorted({0, 9, 99999, count // 2, count - 1}) if index < count]
        assert names == sorted(names) and len({len(name) for name in names}) == 1
        assert all(is_sample_name(name) for name in names)
    assert sample_name(7, 100000) == "00007.png" and sample_name(7, 100001) == "000007.png"
    assert sample_name(10**7, 10**7 + 1) == "10000000.png"
    assert not any(is_sample_name(name) for name in ("0001.png", "1.png", "00001.jpg", "0000a.png", "cat.png"))
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "000001.png").write_text("another run's")
    (folder / "0001.png").write_text("mine")
    assert holds_samples(folder)
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "3", "--out", str(folder)]
    assert main(args) == 2
    assert "already holds samples" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png", "0001.png"]
    remove_earlier_samples(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["0001.png"]


def test_a_users_date_named_png_in_the_folder_is_not_taken_for_a_sample(gan_checkpoint, tmp_path, capsys):
    """A folder holding the user's 20261205.png (a photo named by its date) was said to "already hold samples", and
    the --overwrite that message advised deleted the photo as an earlier run's sample. A name of more than 5 digits
    is a sample's only beside a sample's first of its length (a run of over 100,000 writes 000000.png first), so the
    photo is now kept, sampled beside, and named as an image `visionzoo fid` would read with the samples."""
    from visionzoo.train.commands import holds_samples

    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "20261205.png").write_text("mine")
    assert not holds_samples(folder)
    args = ["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "2", "--out", str(folder)]
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 0
        err = capsys.readouterr().err
        assert err.startswith(f"note: {folder} also holds 1 other image (20261205.png)") and err.count("\n") == 1
        assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "20261205.png"]
        assert (folder / "20261205.png").read_text() == "mine"
    (folder / "00000000.png").write_text("a run of 20 million's first sample")  # beside it, 20261205.png is one
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png"]


def test_samples_with_non_finite_values_are_refused_not_written_black(gan_checkpoint, tmp_path, capsys, monkeypatch):
    """A checkpoint whose generator held a NaN weight wrote its NaN images as black PNGs ("4 samples of dcgan in
    DIR"), and `visionzoo fid DIR` gave a number for them. Such weights are now refused before drawing, as eval and
    predict refuse them; images that overflow from finite weights are still refused once drawn."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(gan_checkpoint, "pt") as source:
        tensors = {key: source.get_tensor(key) for key in source.keys()}
        metadata = source.metadata()
    tensors["model.generator.layers.0.weight"][0] = float("nan")
    broken = tmp_path / "nan.safetensors"
    save_file(tensors, broken, metadata=metadata)
    folder = tmp_path / "samples"
    assert main(["sample", "dcgan", "--checkpoint", str(broken), "-n", "4", "--out", str(folder)]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: {broken}: dcgan's weights hold non-finite values "
                                       "(NaN or infinity), first in generator.layers.0.weight: its outputs would not "
                                       "be finite (did the run diverge?)\n")
    assert not folder.exists()
    sample = GANTask.sample
    monkeypatch.setattr(GANTask, "sample", lambda *a, **k: sample(*a, **k) * float("inf"))
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", "4", "--out", str(folder),
                 "--precision", "bf16"]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: dcgan drew images with non-finite values (NaN or "
                                       f"infinity) from {gan_checkpoint}; try --precision fp32\n")
    assert not folder.exists()


def test_running_out_of_memory_advises_the_options_sample_takes(gan_checkpoint, tmp_path, monkeypatch, capsys):
    """Out of memory, sample advised to "lower --img-size, --batch-size or the number of images"; it takes no
    --img-size (the model's size is the checkpoint's), and --img-size 32 was then refused as an unknown option."""

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 16000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(GANTask, "sample", out_of_memory)
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", str(tmp_path / "grid.png")]) == 2
    assert capsys.readouterr().err == ("visionzoo sample: error: out of memory: an allocation of 16.0 GB failed; lower "
                                       "--batch-size or the number of images\n")


@pytest.mark.parametrize("count", [5 * 10**18, 10**19])
def test_a_batch_too_large_for_a_tensor_is_out_of_memory_not_a_traceback(gan_checkpoint, tmp_path, capsys, count):
    """-n 10**19 --batch-size 10**19 ended in torch's traceback "Overflow when unpacking long long" (5 * 10**18:
    "Storage size calculation overflowed"), where a batch merely too large for the machine is one line."""
    folder = tmp_path / "samples"
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "-n", str(count), "--batch-size", str(count),
                 "--out", str(folder)]) == 2
    assert capsys.readouterr().err == ("visionzoo sample: error: out of memory: an allocation failed; lower "
                                       "--batch-size or the number of images\n")
    assert not folder.exists()


def test_a_capped_jpeg_grid_too_tall_names_the_grids_images_not_a_count_the_user_did_not_give(gan_checkpoint, tmp_path,
                                                                                                capsys):
    """-n 5000 --nrow 1 --out grid.jpg --images-dir DIR was refused as "-n 4096 images of 16 pixels at --nrow 1 make a
    20 x 73730 grid": the user gave -n 5000; 4096 is the grid's cap."""
    out = tmp_path / "grid.jpg"
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--out", str(out), "-n", "5000", "--nrow",
                 "1", "--images-dir", str(tmp_path / "images")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("visionzoo sample: error: the grid's 4096 images (the first of -n 5000) of 16 pixels at --nrow 1 "
                   "make a 20 x 73730 grid; a JPEG --out is at most 65500 pixels a side: change --nrow, or write a "
                   ".png")
    assert not out.exists() and not (tmp_path / "images").exists()


def test_sample_help_says_what_a_class_conditional_model_draws_without_label(capsys):
    """`sample --help` said only "--label: class to draw (name or index) for a class-conditional model": nothing
    told that without it a class-conditional prior or Image GPT draws unconditional samples (its "no class" start
    token), not a mix of its classes as samples.png shows."""
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "without --label, a class-conditional model draws unconditionally" in help_text


@pytest.fixture(scope="module")
def image_gpt_run(tmp_path_factory):
    """A tiny Image GPT trained 2 steps on Digits at 8 px."""
    out = tmp_path_factory.mktemp("igpt") / "run"
    assert main(["train", "image_gpt_small", "--data", "digits", "--img-size", "8", "--max-steps", "2",
                 "--batch-size", "8", "--no-progress", "--out", str(out), "--model-arg", "embed_dim=16",
                 "--model-arg", "depth=1", "--model-arg", "num_heads=2"]) == 0
    return out / "checkpoint.safetensors"


def _cells(path, columns, rows, side=32):
    """A grid PNG (padding 2, white) cut into its cells, Tensor[rows, columns, 3, side, side]."""
    with Image.open(path) as picture:
        assert picture.size == (2 + columns * (side + 2), 2 + rows * (side + 2))
        pixels = torch.from_numpy(np.asarray(picture.convert("RGB")).copy()).permute(2, 0, 1)
    return torch.stack([torch.stack([pixels[:, 2 + r * (side + 2):r * (side + 2) + side + 2,
                                            2 + c * (side + 2):c * (side + 2) + side + 2] for c in range(columns)])
                        for r in range(rows)])


def test_sample_complete_writes_images_their_top_halves_and_completions_of_a_split(image_gpt_run, tmp_path, capsys):
    """Image GPT's completions of half-images were only the run's completions.png or the Python API."""
    grid = tmp_path / "grid.png"
    argv = ["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", "val", "-n", "12",
            "--out", str(grid)]
    assert main(argv) == 0
    assert f"12 images of the val split of digits completed by image_gpt_small in {grid}" in capsys.readouterr().out
    cells = _cells(grid, 8, 10)  # two groups of 8 (the second of 4 and white cells): images, halves, 3 completions
    images, halves, completions = cells[0], cells[1], cells[2:5]
    top, bottom = (..., slice(0, 16), slice(None)), (..., slice(16, None), slice(None))
    assert torch.equal(halves[bottom], torch.full_like(halves[bottom], 128))  # the bottom half given grey
    assert torch.equal(images[top], halves[top]) and not torch.equal(images[bottom], halves[bottom])
    assert all(torch.equal(c[top], completions[0][top]) for c in completions)  # the given top half, in palette colours
    assert not torch.equal(completions[0][bottom], completions[1][bottom])  # the bottoms drawn, each its own
    assert torch.equal(cells[5:, 4:], torch.full_like(cells[5:, 4:], 255))  # the second group's empty cells
    assert not torch.equal(cells[5, 0], cells[0, 0])  # the ninth image starts the second group
    first = grid.read_bytes()
    assert main([*argv, "--overwrite"]) == 0  # seeded
    assert grid.read_bytes() == first
    # it read "--label 3: label 3 given, but this model is unconditional ...", saying the label twice
    unconditional = ("visionzoo sample: error: --label 3 given, but this model is unconditional (trained without "
                     "classes)\n")
    assert main([*argv, "--overwrite", "--label", "3"]) == 2  # as sample refuses it
    assert capsys.readouterr().err == unconditional
    assert main(["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--out", str(grid), "--overwrite",
                 "--label", "3"]) == 2
    assert capsys.readouterr().err == unconditional


def test_sample_complete_reads_a_folder_of_images_at_the_runs_size(image_gpt_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, value in enumerate((0, 255, 90)):
        Image.new("L" if index else "RGB", (40, 30), value).save(folder / f"{index}.{'png' if index else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    grid = tmp_path / "grid.png"
    assert main(["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", str(folder),
                 "--out", str(grid), "--nrow", "3"]) == 0
    assert f"3 images of {folder} completed by image_gpt_small in {grid}" in capsys.readouterr().out
    cells = _cells(grid, 3, 5)
    assert cells[0, 1].float().mean() > 200 and cells[0, 0].float().mean() < 50  # 1.png white, 0.jpg black, in order
    assert main(["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", str(folder), "-n", "1",
                 "--out", str(grid), "--overwrite"]) == 0
    assert f"1 image of {folder} completed by image_gpt_small in {grid}" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["val", "folder"])
def test_sample_complete_is_refused_in_one_line_for_a_model_that_cannot_complete(gan_checkpoint, tmp_path, capsys,
                                                                                source):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("L", (16, 16)).save(folder / "a.png")
    out = tmp_path / "grid.png"
    assert main(["sample", "dcgan", "--checkpoint", str(gan_checkpoint), "--complete",
                 "val" if source == "val" else str(folder), "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("visionzoo sample: error: --complete: dcgan draws images, it does not complete "
                                       "them; Image GPT does (image_gpt, image_gpt_small)\n")
    assert not out.exists()


def test_bad_complete_requests_are_one_line(image_gpt_run, tmp_path, capsys):
    base = ["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run)]
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra, message in [
        (["--complete", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.png")],
         f"--complete {tmp_path / 'nowhere'} is neither a split of the run's data (train, val, test) nor a folder"),
        (["--complete", str(empty), "--out", str(tmp_path / "g.png")],
         f"--complete {empty} holds no PNG or JPEG files"),
        (["--complete", "val", "--out", str(tmp_path / "folder")],
         "--complete writes a grid of completions: give a .png or .jpg --out"),
        (["--complete", "val", "--out", str(tmp_path / "g.png"), "--images-dir", str(tmp_path / "d")],
         "--complete writes a grid of completions: give a .png or .jpg --out"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("visionzoo sample: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "folder").exists()


def test_a_jpeg_grid_of_completions_too_large_for_the_format_is_refused_before_completing(image_gpt_run, tmp_path,
                                                                                         capsys, monkeypatch):
    from visionzoo.train.autoregressive import AutoregressiveTask

    monkeypatch.setattr(AutoregressiveTask, "complete", lambda *args, **kwargs: pytest.fail("completed"))
    out = tmp_path / "grid.jpg"
    assert main(["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", "train", "-n", "400",
                 "--nrow", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("visionzoo sample: error: --complete: 400 images at --nrow 1 make a grid of 2000 "
                                       "rows of 32 px cells, 36 x 68002 pixels; a JPEG --out is at most 65500 pixels a "
                                       "side: change -n or --nrow, or write a .png\n")
    assert not out.exists()



def test_sample_complete_completes_at_most_batch_size_images_at_a_time(image_gpt_run, tmp_path, capsys, monkeypatch):
    """--batch-size was ignored by --complete, which completed one row of --nrow images at a time whatever it was; it
    is now the most images completed at a time, and without it a row of --nrow is, as before."""
    from visionzoo.generative.image_gpt import ImageGPT

    batches = []
    complete = ImageGPT.complete
    monkeypatch.setattr(ImageGPT, "complete", lambda self, images, *args, **kwargs: (
        batches.append(images.shape[0]), complete(self, images, *args, **kwargs))[1])
    base = ["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", "val", "-n", "5", "--nrow",
            "4", "--seed", "1"]
    assert main([*base, "--out", str(tmp_path / "default.png")]) == 0
    assert batches == [4, 4, 4, 1, 1, 1]  # a row of --nrow at a time, three completions each
    batches.clear()
    assert main([*base, "--out", str(tmp_path / "rows.png"), "--batch-size", "4"]) == 0
    assert batches == [4, 4, 4, 1, 1, 1]
    assert (tmp_path / "rows.png").read_bytes() == (tmp_path / "default.png").read_bytes()
    for size, expected in (("2", [2, 2, 2, 2, 2, 2, 1, 1, 1]), ("8", [5, 5, 5])):
        batches.clear()
        grid = tmp_path / f"batch{size}.png"
        assert main([*base, "--out", str(grid), "--batch-size", size]) == 0
        assert batches == expected
        assert "5 images of the val split of digits completed" in capsys.readouterr().out
        cells, first = _cells(grid, 4, 10), _cells(tmp_path / "default.png", 4, 10)
        assert torch.equal(cells[:2], first[:2]) and torch.equal(cells[5:7], first[5:7])  # the same images and halves
        assert torch.equal(cells[5:, 1:], torch.full_like(cells[5:, 1:], 255))  # the second row's one image
        assert main([*base, "--out", str(grid), "--batch-size", size, "--overwrite"]) == 0  # seeded
        assert _cells(grid, 4, 10).equal(cells)


def _image_gpt_run_on_a_coco_folder(tmp_path, num: int):
    """A COCO folder ``tmp_path / "coco"`` of ``num`` 16 px Shapes images a split (train and val, no test) and a
    tiny Image GPT run ``tmp_path / "run"`` trained on it for one step: (folder, run)."""
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", str(num), "--image-size", "16", "--split",
                 "train", "val"]) == 0
    run = tmp_path / "run"
    assert main(["train", "image_gpt_small", "--data", str(folder), "--img-size", "8", "--max-steps", "1",
                 "--batch-size", "8", "--no-progress", "--out", str(run), "--model-arg", "embed_dim=16",
                 "--model-arg", "depth=1", "--model-arg", "num_heads=2"]) == 0
    return folder, run


def test_sample_complete_of_a_split_a_coco_folder_lacks_names_the_ones_it_has_and_complete_not_split(tmp_path, capsys):
    """sample --complete test of a run on a COCO folder without test annotations told the user to "give --split val",
    an option sample does not take; it now says "give --complete val"."""
    folder, run = _image_gpt_run_on_a_coco_folder(tmp_path, 16)
    capsys.readouterr()
    out = tmp_path / "grid.png"
    assert main(["sample", "image_gpt_small", "--checkpoint", str(run / "checkpoint.safetensors"), "--complete", "test",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visionzoo sample: error: no annotations for split 'test' in {folder}: looked for ")
    assert err.endswith("; it has train and val: give --complete val\n") and err.count("\n") == 1
    assert not out.exists()


def test_sample_complete_of_fewer_images_than_nrow_lays_out_only_their_columns(image_gpt_run, tmp_path, capsys):
    """--complete val -n 3 wrote a grid 8 cells wide, 5 of its columns white, and said "a row of 8 images"; with
    --nrow 100 a 3402 px wide grid of 97 white columns. As sample's grids, it now has a column an image."""
    base = ["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", "val", "-n", "3"]
    for nrow in ([], ["--nrow", "100"]):
        grid = tmp_path / f"grid{len(nrow)}.png"
        assert main([*base, *nrow, "--out", str(grid)]) == 0
        assert capsys.readouterr().out == (f"3 images of the val split of digits completed by image_gpt_small in {grid}: "
                                           "a row of 3 images, a row of their top halves and 3 rows of completions of "
                                           "each, in turn\n")
        cells = _cells(grid, 3, 5)
        assert not torch.equal(cells[0, 2], torch.full_like(cells[0, 2], 255))  # the third image, no white cell
    assert (tmp_path / "grid0.png").read_bytes() == (tmp_path / "grid2.png").read_bytes()


def test_sample_complete_caps_the_images_it_completes_with_advice_it_takes(image_gpt_run, tmp_path, capsys,
                                                                          monkeypatch):
    """--complete -n past the grid's cap was told to give --out DIR or --images-dir, which --complete refuses, and a
    folder of 3 images with -n 10 past the cap was refused though 3 would be completed: the cap is now on the images
    completed, with advice that --complete takes."""
    monkeypatch.setattr(commands, "GRID_MAX_IMAGES", 4)
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        Image.new("L", (8, 8), 60 * index).save(folder / f"{index}.png")
    base = ["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run)]
    assert main([*base, "--complete", str(folder), "-n", "10", "--out", str(tmp_path / "folder.png")]) == 0
    assert f"3 images of {folder} completed" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main([*base, "--complete", "val", "-n", "10", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("visionzoo sample: error: --complete: -n 10 images of the val split of digits are "
                                       "more than the 4 a grid of completions holds; give -n 4 or fewer\n")
    assert not out.exists()
    monkeypatch.setattr(commands, "GRID_MAX_IMAGES", 2)
    assert main([*base, "--complete", str(folder), "-n", "10", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: --complete: the 3 images of {folder} are more than the "
                                       "2 a grid of completions holds; give -n 2 or fewer\n")


def test_sample_complete_of_one_image_a_row_says_image_not_images(image_gpt_run, tmp_path, capsys):
    """--complete -n 1 (and --nrow 1) said "a row of 1 images, a row of their top halves"."""
    grid = tmp_path / "grid.png"
    base = ["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--complete", "val", "--out", str(grid)]
    for extra, count in ((["-n", "1"], "1 image"), (["-n", "2", "--nrow", "1", "--overwrite"], "2 images")):
        assert main([*base, *extra]) == 0
        assert capsys.readouterr().out == (f"{count} of the val split of digits completed by image_gpt_small in {grid}: "
                                           "a row of 1 image, a row of its top half and 3 rows of completions of it, "
                                           "in turn\n")


@pytest.fixture(scope="module")
def conditional_runs(tmp_path_factory):
    """Tiny class-conditional Image GPT (8 px) and VQGAN prior runs on Digits, 2 steps each."""
    root = tmp_path_factory.mktemp("conditional")
    tiny = ["--batch-size", "8", "--max-steps", "2", "--no-progress", "--model-arg", "embed_dim=16",
            "--model-arg", "depth=1", "--model-arg", "num_heads=2"]
    assert main(["train", "image_gpt_small", "--data", "digits", "--img-size", "8", "--class-conditional",
                 "--out", str(root / "igpt"), *tiny]) == 0
    assert main(["train", "vqvae_small", "--data", "digits", "--img-size", "16", "--out", str(root / "tokenizer"),
                 "--model-arg", "channels=16", "--model-arg", "res_channels=8", "--model-arg", "embed_dim=8",
                 "--model-arg", "num_codes=32", "--batch-size", "8", "--max-steps", "2", "--no-progress"]) == 0
    assert main(["train", "vqgan_transformer", "--data", "digits", "--tokenizer",
                 str(root / "tokenizer" / "checkpoint.safetensors"), "--out", str(root / "prior"), *tiny]) == 0
    return {"image_gpt_small": root / "igpt" / "checkpoint.safetensors",
            "vqgan_transformer": root / "prior" / "checkpoint.safetensors"}


@pytest.mark.parametrize("model", ["image_gpt_small", "vqgan_transformer"])
@pytest.mark.parametrize("label", ["11", "seven"])
def test_a_label_the_model_has_no_class_for_names_the_label_option(conditional_runs, tmp_path, capsys, model, label):
    """sample --label 11 of a class-conditional Digits model said "label must be a class in 0..9 (0, 1, ..., 9), got
    11", the Python API's words, which name no option; the command now names --label and what it was given."""
    out = tmp_path / "grid.png"
    argv = ["sample", model, "--checkpoint", str(conditional_runs[model]), "--out", str(out), "--label", label]
    capsys.readouterr()
    assert main(argv) == 2
    got = 11 if label == "11" else repr(label)
    # it read "--label 11: label must be a class in 0..9 (...), got 11", the label and its value twice
    assert capsys.readouterr().err == (f"visionzoo sample: error: --label must be a class in 0..9 "
                                       f"(0, 1, 2, 3, 4, 5, 6, 7, 8, 9), got {got}\n")
    assert not out.exists()
    if model == "image_gpt_small":  # --complete refuses it as sample does
        assert main([*argv, "--complete", "val"]) == 2
        assert capsys.readouterr().err.startswith("visionzoo sample: error: --label must be a class in 0..9 (")
        assert not out.exists()


def test_sample_complete_of_a_split_with_no_images_does_not_speak_of_training(tmp_path, capsys):
    """sample --complete test of a COCO folder whose instances_test.json lists no images said "'images' is empty:
    there is nothing to train or evaluate on", though sample neither trains nor evaluates; the words now fit it."""
    folder, run = _image_gpt_run_on_a_coco_folder(tmp_path, 8)
    val = json.loads((folder / "annotations" / "instances_val.json").read_text())
    ann_file = folder / "annotations" / "instances_test.json"
    ann_file.write_text(json.dumps({**val, "images": [], "annotations": []}))
    (folder / "test").mkdir()
    capsys.readouterr()
    out = tmp_path / "grid.png"
    assert main(["sample", "image_gpt_small", "--checkpoint", str(run / "checkpoint.safetensors"), "--complete", "test",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"visionzoo sample: error: {ann_file}: 'images' is empty: it lists no images to read\n"
    assert not out.exists()


def test_a_top_k_beyond_the_vocabulary_names_the_option(image_gpt_run, tmp_path, capsys):
    """sample --top-k 100000 said "top_k 100000 is more than the ... tokens", naming the Python keyword, not the
    option, as --label and the GAN's refusals did."""
    out = tmp_path / "grid.png"
    for extra in ([], ["--complete", "val"]):
        assert main(["sample", "image_gpt_small", "--checkpoint", str(image_gpt_run), "--out", str(out), "--top-k",
                     "100000", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("visionzoo sample: error: --top-k 100000 is more than the ") and len(err.splitlines()) == 1
        assert err.endswith(" tokens of this model's vocabulary, so it would keep them all and change nothing; give at "
                            f"most {err.split('more than the ')[1].split()[0]}\n")
    assert not out.exists()
