"""Grids of pictures."""

import numpy as np
import torch
from PIL import Image

from visionzoo.train.drawing import draw_detections, grid


def test_grid_cells_fit_the_largest_picture():
    pictures = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue"), Image.new("RGB", (40, 30), "red")]
    canvas = grid(pictures, columns=2)
    assert canvas.size == (80, 100)
    assert canvas.getpixel((39, 29)) == (255, 0, 0) and canvas.getpixel((40, 49)) == (0, 0, 255)
    assert canvas.getpixel((60, 0)) == (255, 255, 255) and canvas.getpixel((0, 50)) == (255, 0, 0)


def _label_rows(picture):
    """The rows holding near-white pixels: the label text (the image is black, the box and label band coloured)."""
    pixels = np.asarray(picture)
    return np.flatnonzero((pixels >= 180).all(axis=2).any(axis=1))


def test_a_box_at_the_top_edge_keeps_its_label_inside_the_picture():
    """The label went above the box: for a box from the image's top row (2.4% of Shapes' boxes start within the
    label's height of it) no pixel of its text was drawn."""
    image = torch.zeros(3, 32, 32)
    at_top = draw_detections(image, [[4, 0, 20, 20]], ["hexagon"], [0.93], min_side=96)
    rows = _label_rows(at_top)
    assert rows.size and rows.max() < 20 * 3  # inside the box's top
    lower = draw_detections(image, [[4, 15, 20, 30]], ["hexagon"], [0.93], min_side=96)
    rows = _label_rows(lower)
    assert rows.size and rows.max() < 15 * 3  # above the box, where there is room
