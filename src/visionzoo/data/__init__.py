"""visionzoo.data: built-in datasets (Shapes, Digits), COCO-format folders, and the dataset factory.

- :class:`Shapes`: procedural scenes with boxes, masks, captions and a classification label.
- :class:`Digits`: scikit-learn's real handwritten digits with a fixed stratified split.
- :class:`CocoDetection`: images + instances JSON in COCO's format, checked when built.
- :func:`create_dataset`: a name in ``DATASETS`` or a COCO folder / JSON path.
- :func:`collate_detection`: batches of detection samples as lists.
"""

from visionzoo.data.coco import CocoDetection
from visionzoo.data.digits import Digits
from visionzoo.data.factory import (
           DATASETS,
           Splits,
           builtin_name,
           collate_detection,
           create_dataset,
           images_only,
           open_splits,
           require_one_image_size,
           same_images_note,
)
from visionzoo.data.shapes import Shapes

__all__ = ["DATASETS", "CocoDetection", "Digits", "Shapes", "Splits", "builtin_name", "collate_detection", "create_dataset",
           "images_only", "open_splits", "require_one_image_size",
           "same_images_note"]
