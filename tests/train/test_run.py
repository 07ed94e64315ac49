"""The glue of the CLI and the tour: reading image files for predict and fid, choosing the training images."""

import numpy as np
import pytest
import torch
from PIL import Image

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
