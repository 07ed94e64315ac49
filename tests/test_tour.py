"""The tour (`make demo`): its job list and budget shares, a real short run of two jobs, its errors."""

import json
from functools import partial

import pytest

from test_cli import one_line_error
from visionzoo.cli import main
from visionzoo.tour import TOUR_JOBS, job_minutes


def test_budget_shares_follow_weights_and_caps():
    shares = job_minutes(TOUR_JOBS, 13.0)
    assert abs(sum(shares) - 13.0) < 1e-9
    assert {job.name for job in TOUR_JOBS} >= {"faster-rcnn-shapes", "vit-digits", "swin-digits", "convnext-digits",
                                               "deit-distilled-digits", "resnet18-digits"}
    assert all(share <= (job.max_minutes or 0.0) for job, share in zip(TOUR_JOBS, job_minutes(TOUR_JOBS, 60.0)))


def test_list_prints_every_job(capsys):
    assert main(["tour", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(job.name in out for job in TOUR_JOBS)


def test_list_with_only_prints_the_chosen_jobs_and_their_share(capsys):
    """--only A --list listed every job, each with its share of the whole tour."""
    assert main(["tour", "--only", "vit-digits", "--only", "dcgan-digits", "--minutes", "6", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["vit-digits", "dcgan-digits"]
    assert main(["tour", "--minutes", "6", "--list"]) == 0
    whole_tour = {line.split()[0]: float(line.split()[-2]) for line in capsys.readouterr().out.splitlines()}
    for line in lines:  # two jobs share the 6 minutes that the whole tour spreads over all of them
        assert float(line.split()[-2]) > whole_tour[line.split()[0]]


STEPS = 40
EVAL_IMAGES = 60


def time_inference_once(monkeypatch):
    """The rows' inference speed from one timed call, not the best of 3: the report's figures are not under test."""
    import visionzoo.tour as tour

    monkeypatch.setattr(tour, "best_inference_seconds", partial(tour.best_inference_seconds, repeats=1))


def test_a_short_tour_writes_a_report_with_pictures(tmp_path, capsys, monkeypatch):
    time_inference_once(monkeypatch)
    out = tmp_path / "tour"
    # A step budget, with time to spare: the figures below do not depend on how busy the machine is.
    argv = ["tour", "--out", str(out), "--minutes", "6", "--max-steps", str(STEPS), "--only", "faster-rcnn-shapes",
            "--only", "vit-digits", "--only", "vqvae-digits", "--no-progress", "--precision", "fp32",
            "--eval-images", str(EVAL_IMAGES)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"faster-rcnn-shapes", "vit-digits", "vqvae-digits"}
    assert all(row["steps"] == STEPS for row in rows.values())
    assert all(row["test_images"] == EVAL_IMAGES for row in rows.values())
    assert rows["vqvae-digits"]["metric"] == "psnr" and rows["vqvae-digits"]["value"] > 15
    assert rows["faster-rcnn-shapes"]["metric"] == "map" and rows["vit-digits"]["metric"] == "accuracy"
    assert rows["vit-digits"]["value"] > 0.2  # ten classes: above chance after a few steps
    for row in rows.values():
        assert all((out / picture).is_file() for picture in row["pictures"])
    assert "faster-rcnn-shapes" in (out / "report.md").read_text()
    # the steps each row trained, beside its seconds: what --max-steps reproduces on another machine
    table = [line.split(" | ") for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0][4:6] == ["steps", "train s"] and all(line[4] == str(STEPS) for line in table[1:])
    assert f"the first {EVAL_IMAGES} images of the test split" in (out / "report.md").read_text()
    one_line_error(capsys, argv, "exists")  # the report folder is not overwritten without --overwrite


def test_unknown_job_is_one_clear_error(capsys):
    one_line_error(capsys, ["tour", "--only", "faster-rcnn-shape"], "no tour job 'faster-rcnn-shape'; closest: ")
    # it read "no tour job 'zzzzqq'; closest: none close", a suggestion of nothing
    one_line_error(capsys, ["tour", "--only", "zzzzqq"], "no tour job 'zzzzqq'; `visionzoo tour --list` lists them")
    with pytest.raises(SystemExit) as exit_info:
        main(["tour", "--eval-images", "1"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--eval-images" in err and "at least 2 images" in err


def test_the_sliding_window_reuses_the_trained_rcnn_and_reports_regions(tmp_path, monkeypatch):
    import visionzoo.tour as tour

    small = dict(train_images=8, eval_images=2)
    jobs = [tour.TourJob("rcnn-shapes", "rcnn_shapes", "shapes", config={"batch_size": 2}, **small),
            tour.TourJob("sliding-window-shapes", "sliding_window_shapes", "shapes", weight=0.0,
                         weights_from="rcnn-shapes", eval_images=1,
                         model_args={"proposal_args": {"sizes": (48, 64), "stride_fraction": 0.5}})]
    monkeypatch.setattr(tour, "TOUR_JOBS", jobs)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    time_inference_once(monkeypatch)
    out = tmp_path / "tour"
    assert main(["tour", "--out", str(out), "--minutes", "0.05", "--no-progress", "--precision", "fp32"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["rcnn-shapes"]["steps"] > 0 and rows["sliding-window-shapes"]["steps"] == 0
    assert rows["sliding-window-shapes"]["trained_by"] == "rcnn-shapes"
    assert rows["sliding-window-shapes"]["regions_per_image"] == 61  # 40 windows of 48 px, 21 of 64 px
    assert 0 < rows["rcnn-shapes"]["regions_per_image"] <= 2000
    assert "(rcnn-shapes's)" in (out / "report.md").read_text()
    assert len(list((tmp_path / "cache" / "proposals").glob("*.safetensors"))) == 3  # 8 train, 2 val, 2 test images


def test_a_job_that_needs_another_job_is_one_clear_error(tmp_path, capsys):
    one_line_error(capsys, ["tour", "--out", str(tmp_path / "t"), "--only", "sliding-window-shapes"],
                   "uses the weights of rcnn-shapes, which this tour does not run")
    assert not (tmp_path / "t").exists()  # refused before anything ran


def _report_row(job):
    """The report row of a job that ran (as run_job returns it), for a tour whose jobs are replaced."""
    return {"name": job.name, "model": job.model, "task": "reconstruction", "dataset": "digits 32px",
            "parameters": 10, "train_seconds": 1.0, "steps": 3, "metric": "psnr", "value": 20.0,
            "inference_images_per_s": 5.0, "regions_per_image": None, "pictures": []}


def test_a_failed_job_is_reported_and_the_tour_goes_on(tmp_path, monkeypatch, capsys):
    """One job's failure ended the whole tour with no report, losing the rows of the jobs before it."""
    import visionzoo.tour as tour

    jobs = [tour.TourJob("a", "vqvae_small", "digits"), tour.TourJob("b", "vqvae_small", "digits"),
            tour.TourJob("c", "vqgan_transformer", "digits", uses={"tokenizer": "b"}),
            tour.TourJob("d", "vqvae_small", "digits")]
    ran = []

    def fake_run_job(job, minutes, out, *args, **kwargs):
        ran.append(job.name)
        if job.name == "a":
            raise ValueError("bad  option\nfor a")
        if job.name == "b":
            raise RuntimeError("boom | crash")
        return _report_row(job)

    monkeypatch.setattr(tour, "TOUR_JOBS", jobs)
    monkeypatch.setattr(tour, "run_job", fake_run_job)
    out = tmp_path / "tour"
    assert main(["tour", "--out", str(out), "--minutes", "1", "--no-progress"]) == 1
    assert ran == ["a", "b", "d"]  # c needs b's weights and is not run; d still is
    rows = {row["name"]: row for row in json.loads((out / "report.json").read_text())["rows"]}
    assert rows["a"]["failed"] == "bad option for a"
    assert rows["b"]["failed"] == "RuntimeError: boom | crash"
    assert rows["c"]["failed"] == "not run: it uses the weights of b, which failed"
    assert "failed" not in rows["d"] and rows["d"]["value"] == 20.0
    assert "RuntimeError: boom" in (out / "b" / "error.txt").read_text()  # the traceback is kept
    report = (out / "report.md").read_text()
    assert "**failed**: RuntimeError: boom \\| crash" in report and "| 20.0000 |" in report
    err = capsys.readouterr().err
    assert "[tour] a failed: bad option for a" in err and "3 of 4 jobs failed: a, b, c" in err


def test_a_job_gets_an_earlier_jobs_checkpoint_as_an_option_and_samplers_show_their_samples(tmp_path, monkeypatch):
    import visionzoo.tour as tour

    tiny = {"channels": 8, "res_channels": 4, "embed_dim": 4, "num_codes": 16}
    jobs = [tour.TourJob("vqvae-digits", "vqvae_small", "digits", img_size=16, model_args=tiny, eval_images=16),
            tour.TourJob("prior-digits", "vqgan_transformer", "digits", uses={"tokenizer": "vqvae-digits"},
                         model_args={"embed_dim": 16, "depth": 1, "num_heads": 2}, eval_images=16)]
    monkeypatch.setattr(tour, "TOUR_JOBS", jobs)
    out = tmp_path / "tour"
    assert main(["tour", "--out", str(out), "--minutes", "0.05", "--no-progress", "--precision", "fp32"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "report.json").read_text())["rows"]}
    prior = rows["prior-digits"]
    assert prior["task"] == "autoregressive" and prior["steps"] > 0 and prior["inference_images_per_s"] > 0
    assert prior["pictures"][0] == "prior-digits/samples.png" and (out / "prior-digits" / "samples.png").is_file()
    assert "vqvae-digits/predictions.png" in rows["vqvae-digits"]["pictures"]
    meta = json.loads((out / "prior-digits" / "checkpoint.json").read_text())
    assert meta["run"]["options"]["tokenizer"] == str(out / "vqvae-digits" / "checkpoint.safetensors")


def test_every_job_passes_options_its_task_takes():
    from visionzoo.train.run import task_class
    from visionzoo.train.task import check_task_options

    for job in TOUR_JOBS:
        if job.pipeline is not None:  # not one engine run of job.model
            continue
        check_task_options(task_class(job.model), job.model, {**job.options, **dict.fromkeys(job.uses, "x")})


def test_an_existing_report_folder_is_refused_without_suggesting_resume_which_tour_lacks(tmp_path, capsys):
    """The tour's refusal said "use --resume to continue it or --overwrite", and `tour --resume` is no option."""
    out = tmp_path / "tour"
    out.mkdir()
    (out / "report.json").write_text("{}")
    err = one_line_error(capsys, ["tour", "--only", "vit-digits", "--out", str(out)], "exists", "--overwrite")
    assert "--resume" not in err
    assert (out / "report.json").read_text() == "{}"


def test_a_job_evaluated_on_fewer_images_than_the_report_states_is_named(tmp_path, monkeypatch):
    """report.md said "evaluated on the test split" (or "the first 60 images" with --eval-images 60) of every row,
    while R-CNN's rows were scored on their first 100 test images and the sliding window's on 4."""
    import visionzoo.tour as tour

    tiny = {"channels": 8, "res_channels": 4, "embed_dim": 4, "num_codes": 16}
    jobs = [tour.TourJob("capped", "vqvae_small", "digits", img_size=16, model_args=tiny, eval_images=16),
            tour.TourJob("whole", "vqvae_small", "digits", img_size=16, model_args=tiny)]
    monkeypatch.setattr(tour, "TOUR_JOBS", jobs)
    for extra, whole in (([], "the test split"), (["--eval-images", "40"], "the first 40 images of the test split")):
        out = tmp_path / f"tour{len(extra)}"
        argv = ["tour", "--out", str(out), "--minutes", "0.05", "--max-steps", "1", "--no-progress", "--precision",
                "fp32", *extra]
        assert main(argv) == 0
        rows = {row["name"]: row for row in json.loads((out / "report.json").read_text())["rows"]}
        assert rows["capped"]["test_images"] == 16 and rows["whole"]["test_images"] in (270, 40)
        report = (out / "report.md").read_text()
        assert f"evaluated on {whole}" in report
        assert "scored on fewer test images: capped on its first 16." in report
        assert "whole on" not in report


def test_overwrite_replaces_an_earlier_tours_files_and_keeps_the_users(tmp_path, monkeypatch, capsys):
    """--overwrite removed the whole report folder, with the notes the user kept beside the report and in a job's
    folder."""
    import visionzoo.tour as tour

    monkeypatch.setattr(tour, "TOUR_JOBS", [tour.TourJob("a", "vqvae_small", "digits"),
                                            tour.TourJob("b", "vqvae_small", "digits")])
    monkeypatch.setattr(tour, "run_job", lambda job, *args, **kwargs: tour.failed_row(job, "skipped"))
    out = tmp_path / "tour"
    for folder in (out, out / "a", out / "b"):
        folder.mkdir(parents=True)
        (folder / ".visionzoo-run").touch()
    for name in ("report.json", "report.md", "a/checkpoint.safetensors", "a/predictions.png", "a/error.txt",
                 "b/metrics.jsonl", "b/samples.png"):
        (out / name).write_text("old")
    (out / "notes.md").write_text("mine")
    (out / "b" / "notes.md").write_text("mine too")
    assert main(["tour", "--only", "a", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".visionzoo-run", "b", "notes.md", "report.json", "report.md"]
    assert sorted(p.name for p in (out / "b").iterdir()) == [".visionzoo-run", "notes.md"]
    assert (out / "notes.md").read_text() == "mine" and (out / "b" / "notes.md").read_text() == "mine too"
    assert json.loads((out / "report.json").read_text())["rows"][0]["failed"] == "skipped"


def test_the_default_budget_gives_the_hipt_slides_row_its_own_minutes_and_the_other_rows_theirs():
    """The HIPT slides row came with a larger default --minutes, so that the rows before it keep their shares of the
    24 minutes they had."""
    import argparse

    import visionzoo.tour as tour

    parser = argparse.ArgumentParser()
    tour._arguments(parser)
    shares = dict(zip([job.name for job in TOUR_JOBS], job_minutes(TOUR_JOBS, parser.get_default("minutes"))))
    others = [job for job in TOUR_JOBS if job.name != "hipt-slides"]
    assert [shares[job.name] for job in others] == pytest.approx(job_minutes(others, 24.0), abs=1e-12)
    assert 1.5 <= shares["hipt-slides"] <= 2.0


def _small_slides(monkeypatch):
    """The hipt-slides row on a few tiles and slides: seconds, not minutes."""
    import visionzoo.tour as tour

    monkeypatch.setattr(tour.hipt_slides, "ENCODER_BATCH", 8)
    monkeypatch.setattr(tour.hipt_slides, "ENCODER_TILES", {"train": 32, "val": 8, "test": 12})
    monkeypatch.setattr(tour.hipt_slides, "SLIDES", {"train": 24, "test": 10})
    monkeypatch.setattr(tour.hipt_slides, "POOLS", {"train": 48, "test": 48})
    return tour


def test_the_hipt_slides_row_trains_its_two_stages_and_reports_the_test_slides_accuracy(tmp_path, monkeypatch):
    _small_slides(monkeypatch)
    out = tmp_path / "tour"
    argv = ["tour", "--out", str(out), "--only", "hipt-slides", "--max-steps", "2", "--eval-images", "6",
            "--no-progress", "--precision", "fp32"]
    assert main(argv) == 0
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert (row["name"], row["dataset"], row["metric"]) == ("hipt-slides", "slides 256px", "accuracy")
    assert 0.0 <= row["value"] <= 1.0 and row["value"] == row["test_metrics"]["accuracy"]
    assert 0.0 <= row["test_metrics"]["tile_accuracy"] <= 1.0
    assert row["steps"] == 2 and row["vit4k_steps"] == 2  # --max-steps caps both stages
    assert row["test_images"] == 6 and row["inference_images_per_s"] > 0
    assert "hipt-slides/predictions.png" in row["pictures"]
    assert all((out / picture).is_file() for picture in row["pictures"])
    assert "| hipt_vit256_small+vit4k_xs | slide classification | slides 256px |" in (out / "report.md").read_text()


def test_a_failure_in_the_hipt_slides_row_is_reported_as_a_failed_row(tmp_path, monkeypatch, capsys):
    tour = _small_slides(monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("vit4k broke")

    monkeypatch.setattr(tour.hipt_slides, "train_vit4k", broken)
    out = tmp_path / "tour"
    argv = ["tour", "--out", str(out), "--only", "hipt-slides", "--max-steps", "1", "--eval-images", "4",
            "--no-progress", "--precision", "fp32"]
    assert main(argv) == 1
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert row["failed"] == "RuntimeError: vit4k broke"
    assert "vit4k broke" in (out / "hipt-slides" / "error.txt").read_text()
    assert "1 of 1 jobs failed: hipt-slides" in capsys.readouterr().err


def test_the_hipt_slides_row_times_its_slides_under_the_tours_precision(tmp_path):
    """The row timed its slides in fp32 whatever --precision said, where every other row's inference figure is
    taken under the tour's autocast; the slides are now read under the autocast factory the row is given."""
    import contextlib

    import torch

    from visionzoo.data.slides import ShapeSlides
    from visionzoo.tour import _time_and_picture_slides

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.autocast_seen = []

        def forward(self, images):
            self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
            return torch.zeros(len(images), 6, dtype=torch.bfloat16 if self.autocast_seen[-1] else torch.float32)

    slides = ShapeSlides("test", grid_size=2, tile_size=16, length=2, pool_size=48, seed=0)
    for factory, expected in ((lambda: torch.autocast("cpu", dtype=torch.bfloat16), True),
                              (contextlib.nullcontext, False)):
        model = Recorder()
        rate = _time_and_picture_slides(model, slides, tmp_path / "p.png", factory)
        assert rate > 0 and model.autocast_seen == [expected] * 3
        assert (tmp_path / "p.png").is_file()


def test_best_inference_seconds_keeps_the_shortest_call_and_stops_after_a_slow_one():
    from visionzoo.tour import best_inference_seconds

    calls = []
    seconds, result = best_inference_seconds(lambda: calls.append(1) or len(calls), repeats=3)
    assert len(calls) == 3 and result == 3 and seconds >= 0
    calls.clear()
    seconds, result = best_inference_seconds(lambda: calls.append(1) or len(calls), repeats=3, enough=0.0)
    assert len(calls) == 1 and result == 1


def test_every_job_runs_on_the_device_the_tour_is_given_and_the_report_names_it(tmp_path, monkeypatch):
    """The tour took no --device: on a GPU machine its jobs trained on the GPU (the engine's default) while it
    evaluated under the CPU's autocast and the report said nothing of where they ran."""
    import torch

    import visionzoo.tour as tour

    jobs = [tour.TourJob("a", "vqvae_small", "digits"), tour.TourJob("b", "vqvae_small", "digits")]
    devices = []

    def fake_run_job(job, minutes, out, *args, device, **kwargs):
        devices.append(device)
        return _report_row(job)

    monkeypatch.setattr(tour, "TOUR_JOBS", jobs)
    monkeypatch.setattr(tour, "run_job", fake_run_job)
    out = tmp_path / "tour"
    assert main(["tour", "--out", str(out), "--minutes", "1", "--no-progress", "--device", "cpu"]) == 0
    assert devices == [torch.device("cpu")] * 2
    assert json.loads((out / "report.json").read_text())["device"] == "cpu"
    assert "within 1 minutes on this machine (cpu)," in (out / "report.md").read_text()


def test_tour_device_cuda_without_a_gpu_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(capsys, ["tour", "--out", str(tmp_path / "tour"), "--device", "cuda"],
                   "--device cuda was asked for, but no CUDA device is available")
    assert not (tmp_path / "tour").exists()


def test_a_job_trains_and_is_evaluated_on_the_tours_device(tmp_path, monkeypatch):
    import torch

    import visionzoo.tour as tour

    seen = {}

    def stop_at_training(model, data, config, *args, **kwargs):
        seen["device"] = config.device
        raise RuntimeError("stopped here")

    monkeypatch.setattr(tour, "run_training", stop_at_training)
    with pytest.raises(RuntimeError, match="stopped here"):
        tour.run_job(tour.TourJob("a", "vqvae_small", "digits"), 0.01, tmp_path, device=torch.device("cpu"))
    assert seen["device"] == "cpu"


def test_the_hipt_slides_row_trains_both_stages_on_the_tours_device(tmp_path, monkeypatch):
    import torch

    tour = _small_slides(monkeypatch)
    seen = {}
    train_encoder, train_vit4k = tour.hipt_slides.train_encoder, tour.hipt_slides.train_vit4k

    def encoder_spy(train, val, config, model_args):
        seen["encoder"] = config.device
        return train_encoder(train, val, config, model_args)

    def vit4k_spy(*args, device, **kwargs):
        seen["vit4k"] = device
        return train_vit4k(*args, device=device, **kwargs)

    monkeypatch.setattr(tour.hipt_slides, "train_encoder", encoder_spy)
    monkeypatch.setattr(tour.hipt_slides, "train_vit4k", vit4k_spy)
    argv = ["tour", "--out", str(tmp_path / "tour"), "--only", "hipt-slides", "--max-steps", "1", "--eval-images",
            "4", "--no-progress", "--precision", "fp32", "--device", "cpu"]
    assert main(argv) == 0
    assert seen == {"encoder": "cpu", "vit4k": torch.device("cpu")}
