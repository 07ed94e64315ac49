"""The loss curve of a run: every logged value is drawn inside the panel."""

import json

import pytest

import visionzoo.train.plots as plots


def _drawn_figure(tmp_path, monkeypatch, records):
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep the figure to look at it
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(record) for record in records))
    plots.plot_metrics(metrics, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").is_file()
    figure = figures[0]
    figure.canvas.draw()
    return figure


def _points_outside(ax):
    """The (label, y) of each plotted point that falls outside the panel's height."""
    outside = []
    for line in ax.lines:
        for (_, y), (_, shown) in zip(line.get_xydata(), ax.transData.transform(line.get_xydata())):
            if not ax.bbox.y0 - 0.5 <= shown <= ax.bbox.y1 + 0.5:
                outside.append((line.get_label(), float(y)))
    return outside


def test_losses_at_or_below_zero_are_drawn_inside_the_panel(tmp_path, monkeypatch):
    """A VQGAN's hinge generator loss (-mean D(fake)) is negative and 0 before the discriminator starts; on the log
    axis those points fell below the panel, so loss.png showed 3 of its 7 points."""
    records = [{"step": step, "epoch": 0, "autoencoder/loss": 1 / step, "lr": 1e-3,
                "autoencoder/g_loss": 0.0 if step < 3 else (-0.3 if step % 2 else 0.2)} for step in range(1, 8)]
    ax = _drawn_figure(tmp_path, monkeypatch, records).axes[0]
    assert _points_outside(ax) == []
    top = max(ax.transData.transform((1, 1 / step))[1] for step in range(1, 8))
    assert ax.transData.transform((1, 0.2))[1] < top  # still a loss axis: 0.2 below 1


@pytest.mark.parametrize("losses", [[2.0, 0.5, 0.02], [3.0, 3.0, 3.0]])
def test_positive_losses_keep_their_log_axis(tmp_path, monkeypatch, losses):
    records = [{"step": step + 1, "loss": loss} for step, loss in enumerate(losses)]
    records.append({"step": 3, "split": "val", "accuracy": 0.0})  # a validation metric of 0 is on its linear panel
    figure = _drawn_figure(tmp_path, monkeypatch, records)
    assert figure.axes[0].get_yscale() == "log"
    assert all(_points_outside(ax) == [] for ax in figure.axes)


def test_the_symmetric_log_axis_labels_do_not_overlap(tmp_path, monkeypatch):
    """With the linear band ending at the smallest magnitude (0.006 here), the -10^-3, 0 and 10^-3 tick labels
    were drawn over one another."""
    records = [{"step": 1, "loss": 4.77, "vq": 0.0081, "g_loss": 0.0},
               {"step": 2, "loss": 1.85, "vq": 0.0062, "g_loss": -0.32}]
    figure = _drawn_figure(tmp_path, monkeypatch, records)
    ax, renderer = figure.axes[0], figure.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in ax.get_yticklabels() if label.get_text()]
    assert len(boxes) > 3
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert _points_outside(ax) == []


def test_validation_metrics_without_ground_truth_are_left_out(tmp_path, monkeypatch):
    """COCO marks a metric with no ground truth -1: Shapes has no object of COCO's 'large' area, so every detector
    run's validation panel drew map_large as a score of -1, squeezing the real ones into the top half of the axis."""
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]
    records += [{"step": step, "split": "val", "map": 0.1 * step, "map_large": -1.0, "ap/diamond": -1.0}
                for step in (1, 2)]
    records.append({"step": 2, "split": "val", "ap/star": -1.0})
    records.append({"step": 3, "split": "val", "ap/star": 0.5})  # -1 once, a score later: kept
    ax = _drawn_figure(tmp_path, monkeypatch, records).axes[1]
    assert sorted(line.get_label() for line in ax.lines) == ["ap/star", "map"]


def test_the_validation_panel_of_a_run_on_one_coco_file_says_it_is_on_the_training_images(tmp_path, monkeypatch):
    """loss.png of a run on one COCO .json file, which serves every split, drew its val metrics on a panel called
    "validation", though they were measured on the training images; its val records carry a note, which the panel's
    label now says in short."""
    records = [{"step": 1, "loss": 2.0}, {"step": 1, "split": "val", "map": 0.5}]
    assert _drawn_figure(tmp_path, monkeypatch, records).axes[1].get_ylabel() == "validation"
    records[1]["note"] = "a.json serves every split: the val figures are on the training images"
    assert _drawn_figure(tmp_path, monkeypatch, records).axes[1].get_ylabel() == "validation (on the training images)"


def test_the_validation_panel_draws_metrics_not_the_counts_of_images_scored(tmp_path, monkeypatch):
    """Val records say how many images their metrics score (images_scored of split_images, --val-size); those counts
    are not metrics to draw beside them."""
    records = [{"step": 1, "loss": 2.0}, {"step": 1, "split": "val", "accuracy": 0.5, "images_scored": 3,
                                          "split_images": 270}]
    ax = _drawn_figure(tmp_path, monkeypatch, records).axes[1]
    assert [line.get_label() for line in ax.lines] == ["accuracy"]
