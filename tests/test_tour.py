"""The tour (`make demo`): its job list and budget shares, a real short run of two jobs, its errors."""

import json

from test_cli import one_line_error
from visionzoo.cli import main
from visionzoo.tour import TOUR_JOBS, job_minutes


def test_budget_shares_follow_weights_and_caps():
    shares = job_minutes(TOUR_JOBS, 13.0)
    assert abs(sum(shares) - 13.0) < 1e-9
    assert {job.name for job in TOUR_JOBS} >= {"faster-rcnn-shapes", "vit-digits", "swin-digits", "convnext-digits",
                                               "deit-distilled-digits", "resnet18-digits"}
    assert all(share <= job.max_minutes for job, share in zip(TOUR_JOBS, job_minutes(TOUR_JOBS, 60.0)))


def test_list_prints_every_job(capsys):
    assert main(["tour", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(job.name in out for job in TOUR_JOBS)


def test_a_short_tour_writes_a_report_with_pictures(tmp_path, capsys):
    out = tmp_path / "tour"
    argv = ["tour", "--out", str(out), "--minutes", "0.3", "--only", "faster-rcnn-shapes", "--only", "vit-digits",
            "--no-progress", "--precision", "fp32"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"faster-rcnn-shapes", "vit-digits"}
    assert rows["faster-rcnn-shapes"]["metric"] == "map" and rows["vit-digits"]["metric"] == "accuracy"
    assert rows["vit-digits"]["value"] > 0.2  # ten classes: above chance after a few steps
    for row in rows.values():
        assert row["steps"] > 0 and all((out / picture).is_file() for picture in row["pictures"])
    assert "faster-rcnn-shapes" in (out / "report.md").read_text()
    one_line_error(capsys, argv, "exists")  # the report folder is not overwritten without --overwrite


def test_unknown_job_is_one_clear_error(capsys):
    one_line_error(capsys, ["tour", "--only", "faster-rcnn-shape"], "no tour job 'faster-rcnn-shape'")
