"""Grids of pictures."""

from PIL import Image

from visionzoo.train.drawing import grid


def test_grid_cells_fit_the_largest_picture():
    pictures = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue"), Image.new("RGB", (40, 30), "red")]
    canvas = grid(pictures, columns=2)
    assert canvas.size == (80, 100)
    assert canvas.getpixel((39, 29)) == (255, 0, 0) and canvas.getpixel((40, 49)) == (0, 0, 255)
    assert canvas.getpixel((60, 0)) == (255, 255, 255) and canvas.getpixel((0, 50)) == (255, 0, 0)
