"""CocoDetection and create_dataset on COCO folders: reading, clipping, masks, and every bad-input case."""

from __future__ import annotations

import copy
import io
import json
import logging
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.io import read_image

from visionzoo.data import DATASETS, CocoDetection, Digits, Shapes, collate_detection, create_dataset
from visionzoo.data.masks import mask_to_rle
from visionzoo.metrics import coco_evaluate

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"),
]

CATEGORIES = [{"id": 12, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def _write_images(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = {}
    for name, (width, height) in sizes.items():
        pixels[name] = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels[name]).save(folder / name)
    return pixels


def _images():
    return [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 50, "height": 20},
        {"id": 5, "file_name": "c.png"},  # no size in the file: read from the image header
    ]


def _annotations():
    return [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 8], "area": 80.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 12, "bbox": [35, -4, 10, 10], "iscrowd": 0},  # clipped
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [-5.5, 2, 20, 30.5], "iscrowd": 1},  # clipped
    ]


def _write(tmp_path: Path, images=None, annotations=None, categories=None, name="instances.json") -> Path:
    content = {
        "images": _images() if images is None else images,
        "annotations": _annotations() if annotations is None else annotations,
        "categories": CATEGORIES if categories is None else categories,
    }
    ann_file = tmp_path / name
    ann_file.write_text(json.dumps(content))
    return ann_file


@pytest.fixture
def folder(tmp_path):
    pixels = _write_images(tmp_path / "images", {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    return tmp_path, pixels


def test_reads_images_boxes_and_labels_with_clipping(folder):
    root, pixels = folder
    ds = CocoDetection(root / "images", _write(root))
    assert len(ds) == 3 and ds.image_ids == [1, 2, 5]
    assert ds.classes == ["cat", "dog", "zebra"] and ds.cat_ids == [3, 7, 12]
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 12} and ds.cat_id_to_label == {3: 1, 7: 2, 12: 3}
    assert ds.num_skipped == 0
    image, target = ds[0]
    assert target["image_id"] == 1
    assert torch.equal(image, torch.from_numpy(pixels["a.png"]).permute(2, 0, 1).float() / 255)
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 11.0], [35.0, 0.0, 40.0, 6.0]]))
    assert target["labels"].tolist() == [1, 3]
    assert target["area"].tolist() == [80.0, 100.0]  # the file's area, else its box's w * h (as coco-eval)
    image, target = ds[1]
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 2.0, 14.5, 20.0]]))
    assert target["iscrowd"].tolist() == [1]
    image, target = ds[2]
    assert image.shape == (3, 24, 16) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert "masks" not in target  # no segmentations in this file


def test_boxes_agree_with_pycocotools(folder):
    root, _ = folder
    ann_file = _write(root)
    ds, coco = CocoDetection(root / "images", ann_file), COCO(str(ann_file))
    for index, image_id in enumerate(ds.image_ids):
        info = coco.imgs[image_id]
        width, height = info.get("width", 16), info.get("height", 24)
        expected = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            x, y, w, h = ann["bbox"]
            expected.append([max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)])
        _, target = ds[index]
        assert torch.allclose(target["boxes"], torch.tensor(expected, dtype=torch.float32).reshape(-1, 4))
        labels = [
            ds.cat_id_to_label[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        ]
        assert target["labels"].tolist() == labels


def test_polygon_and_rle_masks_match_pycocotools(folder):
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [[2, 3, 12, 3, 12, 11, 2, 11], [20, 20, 30, 20, 25, 28]]
    annotations[1]["segmentation"] = {"size": [30, 40], "counts": [1050, 5, 25, 5, 115]}
    annotations[2]["segmentation"] = [[0, 2, 14.5, 2, 7, 20]]
    ann_file = _write(root, annotations=annotations)
    ds, coco = CocoDetection(root / "images", ann_file), COCO(str(ann_file))
    assert ds.has_masks
    for index in range(2):
        _, target = ds[index]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[ds.image_ids[index]]))
        for mask, ann in zip(target["masks"], anns):
            assert torch.equal(mask, torch.from_numpy(coco.annToMask(ann).astype(bool))), ann["id"]
        assert target["masks"].shape[1:] == ((30, 40) if index == 0 else (20, 50))
    _, target = ds[0]
    assert target["masks"][1].sum() == 10 and target["masks"][1, 0:5, 35:37].all()  # the exact RLE
    assert target["masks"][0, 3:11, 2:12].all()
    assert target["masks"][0].sum() == 80 + 39  # the rectangle and the triangle
    _, target = ds[2]
    assert target["masks"].shape == (0, 24, 16)


def test_polygons_of_fewer_than_3_points_beside_a_real_one_decode_as_pycocotools_decodes_them(folder):
    """A two-point "polygon" or one with an odd coordinate left over, beside a real polygon (labelling tools write
    them), made CocoDetection refuse the whole file ("a polygon must be a list of at least 3 (x, y) pairs") where
    pycocotools' annToMask rasterises the short ones to nothing and reads an odd list's whole pairs."""
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [[2, 3, 12, 3, 12, 11, 2, 11], [20, 20, 30, 20], [5, 5]]
    annotations[1]["segmentation"] = [[35, 0, 40, 0, 40, 6, 35]]
    annotations[2]["segmentation"] = [[0, 2, 14.5, 2, 7, 20], []]
    ann_file = _write(root, annotations=annotations)
    ds, coco = CocoDetection(root / "images", ann_file), COCO(str(ann_file))
    for index in range(2):
        _, target = ds[index]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[ds.image_ids[index]]))
        for mask, ann in zip(target["masks"], anns):
            assert torch.equal(mask, torch.from_numpy(coco.annToMask(ann).astype(bool))), ann["id"]
    assert ds[0][1]["masks"][0].sum() == 80


def test_rle_counts_written_as_whole_floats_decode_as_pycocotools_decodes_them(folder):
    """Uncompressed RLE counts written as floats (1050.0, as NumPy-built files have them) made CocoDetection refuse the
    file ("RLE counts must be a string (compressed) or a list of non-negative ints"), where pycocotools and coco-eval
    read them."""
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [[2, 3, 12, 3, 12, 11, 2, 11]]
    annotations[1]["segmentation"] = {"size": [30, 40], "counts": [1050.0, 5.0, 25, 5.0, 115.0]}
    annotations[2]["segmentation"] = [[0, 2, 14.5, 2, 7, 20]]
    ann_file = _write(root, annotations=annotations)
    ds, coco = CocoDetection(root / "images", ann_file), COCO(str(ann_file))
    _, target = ds[0]
    reference = coco.annToMask(coco.loadAnns([2])[0]).astype(bool)
    assert reference.sum() == 10 and torch.equal(target["masks"][1], torch.from_numpy(reference))
    annotations[1]["segmentation"] = {"size": [30, 40], "counts": [1050.5, 5, 25, 5, 115]}
    with pytest.raises(ValueError, match=r"annotation id 2: RLE counts must be a string \(compressed\) or a list of"):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_a_segmentation_listing_rles_decodes_to_their_union_as_pycocotools_decodes_it(folder):
    """A segmentation given as a list of uncompressed RLEs (one per part) made CocoDetection refuse the file ("a
    polygon must be a list of at least 3 (x, y) pairs"), where pycocotools' annToMask merges them."""
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [{"size": [30, 40], "counts": [95, 5, 1100]},
                                      {"size": [30, 40], "counts": [1050, 5, 25, 5, 115]}]
    annotations[1]["segmentation"] = [[35, 0, 40, 0, 40, 6, 35, 6]]
    annotations[2]["segmentation"] = [[0, 2, 14.5, 2, 7, 20]]
    ann_file = _write(root, annotations=annotations)
    ds, coco = CocoDetection(root / "images", ann_file), COCO(str(ann_file))
    _, target = ds[0]
    reference = coco.annToMask(coco.loadAnns([1])[0]).astype(bool)
    assert reference.sum() == 15 and torch.equal(target["masks"][0], torch.from_numpy(reference))
    annotations[0]["segmentation"][1]["size"] = [40, 30]
    with pytest.raises(ValueError, match=r"annotation id 1: RLE size \[40, 30\] differs from the image's \[30, 40\]"):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_masks_score_perfectly_against_their_polygons_in_ours_and_pycocotools(folder):
    """The loader's masks, as results, match their own polygons at every IoU threshold (up to 0.95)
    in our evaluator and in pycocotools': data and metrics rasterise polygons alike."""
    root, _ = folder
    annotations = _annotations()
    # small shapes on half pixels: a rasteriser one pixel off loses IoU 0.95 and more
    annotations[0]["segmentation"] = [[2.5, 3.5, 6.5, 3.5, 6.5, 7.5]]
    annotations[1]["segmentation"] = [[35.5, 0.5, 39.5, 0.5, 39.5, 5.5, 35.5, 5.5]]
    annotations[2]["segmentation"] = [[0.5, 2.5, 9.5, 2.5, 4.5, 9.5], [10.5, 10.5, 13.5, 10.5, 13.5, 13.5]]
    for ann in annotations:
        ann["iscrowd"] = 0
        ann.pop("area", None)
    ann_file = _write(root, annotations=annotations)
    with redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    for ann in coco.dataset["annotations"]:
        ann["area"] = float(coco.annToMask(ann).sum())
    ds = CocoDetection(root / "images", ann_file)
    results = []
    for index in range(len(ds)):
        _, target = ds[index]
        for mask, label in zip(target["masks"], target["labels"].tolist()):
            segmentation = mask_to_rle(mask.numpy())
            category = ds.label_to_cat_id[label]
            results.append(
                {
                    "image_id": target["image_id"],
                    "category_id": category,
                    "segmentation": segmentation,
                    "score": 1.0,
                }
            )
    assert len(results) == 3
    ours = coco_evaluate(coco.dataset, results, iou_type="segm")
    with redirect_stdout(io.StringIO()):
        reference = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "segm")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert reference.stats[0] == pytest.approx(1.0, abs=1e-12) and reference.stats[8] == 1.0
    assert ours["AP"] == reference.stats[0] and ours["AR100"] == reference.stats[8]


def test_invalid_json_names_file_line_and_column(folder):
    root, _ = folder
    ann_file = root / "broken.json"
    ann_file.write_text('{"images": [\n  {"id": 1,\n   "file_name": "a.png",,}\n]}')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 3, column 25"):
        CocoDetection(root / "images", ann_file)


def test_a_file_that_is_not_utf8_names_the_file_and_byte(folder):
    # before: "'utf-8' codec can't decode byte 0xe9 in position 53: invalid continuation byte", no file
    root, _ = folder
    ann_file = root / "latin1.json"
    ann_file.write_bytes('{"images": [],\n "categories": [{"id": 1, "name": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text \(byte 53, line 2: 0xe9\); JSON files are UTF-8"):
        CocoDetection(root / "images", ann_file)
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text"):
        create_dataset(ann_file)  # reads the file first to find the images folder


def test_a_utf8_file_with_a_byte_order_mark_is_read_as_coco_eval_reads_it(folder):
    """A JSON file saved with a UTF-8 byte order mark (Notepad's, PowerShell's) was refused by --data and predict
    --image-ids, "invalid JSON at line 1, column 1: Unexpected UTF-8 BOM", while coco-eval read the same file."""
    root, _ = folder
    plain = _write(root)
    marked = root / "marked.json"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    ds = CocoDetection(root / "images", marked)
    assert ds.classes == ["cat", "dog", "zebra"] and len(ds) == 3
    assert coco_evaluate(str(marked), [])["AP"] == 0
    bad = root / "marked_latin1.json"
    bad.write_bytes(b"\xef\xbb\xbf" + '{"images": [],\n "categories": [{"id": 1, "name": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"marked_latin1\.json: not UTF-8 text \(byte 56, line 2: 0xe9\)"):
        CocoDetection(root / "images", bad)


def test_missing_keys_name_file_and_entry(folder):
    root, _ = folder
    with pytest.raises(ValueError, match=r"instances\.json: the top level is missing 'categories'"):
        ann_file = root / "instances.json"
        ann_file.write_text(json.dumps({"images": [], "annotations": []}))
        CocoDetection(root / "images", ann_file)
    annotations = _annotations()
    del annotations[1]["bbox"]
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 2 is missing 'bbox'"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    images = _images()
    del images[1]["file_name"]
    with pytest.raises(ValueError, match=r"instances\.json: image id 2 is missing 'file_name'"):
        CocoDetection(root / "images", _write(root, images=images))
    annotations = _annotations()
    del annotations[2]["id"]
    with pytest.raises(ValueError, match=r"annotations\[2\] is missing 'id'"):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_unknown_references_and_bad_boxes_name_the_annotation(folder):
    root, _ = folder
    annotations = _annotations()
    annotations[1]["image_id"] = 99
    with pytest.raises(ValueError, match="annotation id 2 refers to image id 99"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    annotations = _annotations()
    annotations[2]["category_id"] = 4
    with pytest.raises(ValueError, match="annotation id 3 has category_id 4"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    annotations = _annotations()
    annotations[0]["bbox"] = [1, 2, "wide", 4]
    with pytest.raises(ValueError, match=r"annotation id 1: bbox must hold four numbers"):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_references_of_the_other_id_type_say_so(folder):
    # before: "refers to image id 1, not in 'images'" for image_id "1" while 'images' has 1: the quotes
    # that make the difference were dropped
    root, _ = folder
    annotations = _annotations()
    annotations[1]["image_id"] = "1"
    with pytest.raises(ValueError, match=r"annotation id 2 refers to image id '1', not in 'images' "
                                         r"\(which has 1, an integer: ids must match in type\)$"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    annotations = _annotations()
    annotations[2]["category_id"] = "7"
    with pytest.raises(ValueError, match=r"annotation id 3 has category_id '7', not in 'categories' \(which has 7,"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    images = _images()
    images[0]["id"], images[1]["id"], images[2]["id"] = "1", "2", "5"
    with pytest.raises(ValueError, match=r"refers to image id 1, not in 'images' \(which has '1', a string"):
        CocoDetection(root / "images", _write(root, images=images))
    annotations = _annotations()
    annotations[1]["image_id"] = "x1"
    with pytest.raises(ValueError, match=r"refers to image id 'x1', not in 'images'$"):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_missing_image_names_path_and_image_id(folder):
    root, _ = folder
    images = _images()
    images[1]["file_name"] = "gone.png"
    with pytest.raises(FileNotFoundError, match=r"image id 2: file not found: .*images/gone\.png"):
        CocoDetection(root / "images", _write(root, images=images))


def test_several_missing_images_are_counted_in_the_one_line_that_names_the_first(folder):
    """A split with several listed images missing on disk (an interrupted download) named the first alone, so the
    user put it back and ran again (parsing the file again) to learn of the next; the line now counts them all."""
    root, _ = folder
    images = _images()
    for entry in images[1:]:
        entry["file_name"] = f"gone{entry['id']}.png"
    with pytest.raises(FileNotFoundError) as error:
        CocoDetection(root / "images", _write(root, images=images))
    assert str(error.value) == (f"{root / 'instances.json'}: image id 2: file not found: {root / 'images' / 'gone2.png'} "
                                "(and 1 more of its 3 images: image id 5, gone5.png)")


def test_masks_left_out_because_some_annotations_lack_a_segmentation_are_reported(folder, caplog):
    # before: one annotation without a segmentation silently took the masks away from every sample
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [[2, 3, 12, 3, 12, 11]]
    annotations[2]["segmentation"] = {"size": [20, 50], "counts": [1000]}
    with caplog.at_level(logging.WARNING, logger="visionzoo.data.coco"):
        ds = CocoDetection(root / "images", _write(root, annotations=annotations))
    assert not ds.has_masks and "masks" not in ds[0][1]
    assert "instances.json: 1 of 3 annotations have no segmentation (the first: annotation id 2)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="visionzoo.data.coco"):
        CocoDetection(root / "images", _write(root, annotations=annotations), load_masks=False)
        CocoDetection(root / "images", _write(root))  # none has one: boxes only, nothing to report
    assert caplog.text == ""


def test_box_without_area_raises_or_is_skipped_and_counted(folder, caplog):
    root, _ = folder
    annotations = _annotations() + [
        {"id": 8, "image_id": 1, "category_id": 3, "bbox": [45, 5, 10, 10]},  # right of the 40 px image
        {"id": 9, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 4]},  # zero width
        {"id": 10, "image_id": 2, "category_id": 3, "bbox": [5, 5, -3, 4]},  # negative width
        {"id": 11, "image_id": 2, "category_id": 3, "bbox": [20.0, 5, 1e-7, 4]},  # 0 wide in float32
    ]
    ann_file = _write(root, annotations=annotations)
    with pytest.raises(
        ValueError, match=r"instances\.json: annotation id 8: box \[45, 5, 10, 10\] has no area"
    ):
        CocoDetection(root / "images", ann_file)
    with caplog.at_level(logging.WARNING, logger="visionzoo.data.coco"):
        ds = CocoDetection(root / "images", ann_file, skip_invalid=True)
    assert ds.num_skipped == 4
    assert "skipped 4 boxes" in caplog.text and "instances.json" in caplog.text
    assert sum(len(ds[i][1]["boxes"]) for i in range(len(ds))) == 3


def test_a_reader_of_the_images_alone_drops_a_box_without_area_without_a_warning_about_training_on_boxes(
        folder, caplog):
    """Masked patch prediction, tokenizers and priors read no box, so dropping one loses them nothing; they used to
    be warned that such boxes were "left out of training" and scored by evaluation "as objects not found"."""
    from visionzoo.data import images_only

    root, _ = folder
    ann_file = _write(root, annotations=_annotations() + [{"id": 9, "image_id": 2, "category_id": 3,
                                                           "bbox": [5, 5, 0, 4]}])
    with caplog.at_level(logging.DEBUG, logger="visionzoo.data.coco"):
        ds = CocoDetection(root / "images", ann_file, **images_only(root))
    assert ds.num_skipped == 1 and len(ds) == len(_images())
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "skipped 1 boxes" in caplog.text and "training" not in caplog.text  # still said, at debug level


@pytest.mark.parametrize(
    "bbox, message",
    [
        # before: each said "has no area inside its image", which misleads for a box with a negative size
        ([12, 3, -10, 8], r"box \[12, 3, -10, 8\] has a negative width -10 \(COCO's bbox is \[x, y, width, height\]\)"),
        ([12, 3, -1, -2.5], r"box .* has a negative width -1 and height -2.5 \(COCO's"),
        ([2, 3, 0, 8], r"box \[2, 3, 0, 8\] has zero width \(image id 1, 40x30\); pass skip_invalid=True"),
        ([2, 3, 5, 0.0], r"box .* has zero height \(image id 1,"),
        ([45, 5, 10, 10], r"box .* has no area inside its image \(image id 1, 40x30\)"),
        # before: kept, then 0 wide in the float32 targets, which ended training mid-run naming neither file nor box
        ([30.1, 3, 1e-6, 8], r"box .* is too thin for float32 \(the boxes' precision\)"),
    ],
)
def test_a_box_without_area_says_why(folder, bbox, message):
    root, _ = folder
    annotations = _annotations()
    annotations[0]["bbox"] = bbox
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 1: " + message):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_image_size_mismatch_is_reported_when_read(folder):
    root, _ = folder
    images = _images()
    images[0]["width"] = 41
    ds = CocoDetection(root / "images", _write(root, images=images))
    with pytest.raises(ValueError, match=r"image id 1: .*a\.png is 40x30, the annotations say 41x30"):
        ds[0]


def test_an_exif_rotated_jpeg_is_read_as_stored_like_torchvision_and_a_turned_size_says_why(folder):
    root, _ = folder
    stored = np.random.default_rng(3).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # shown turned a quarter, 30x40
    image.save(root / "images" / "a.jpg", exif=exif.tobytes(), quality=95)
    images = _images()
    images[0]["file_name"] = "a.jpg"  # the entry says 40x30, the stored size
    ds = CocoDetection(root / "images", _write(root, images=images))
    pixels, _ = ds[0]
    assert pixels.shape == read_image(str(root / "images" / "a.jpg")).shape == (3, 30, 40)
    expected = np.asarray(Image.open(root / "images" / "a.jpg").convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(pixels, torch.from_numpy(expected).permute(2, 0, 1))
    # before: only "a.jpg is 40x30, the annotations say 30x40", with nothing about the EXIF tag
    images[0]["width"], images[0]["height"] = 30, 40
    ds = CocoDetection(root / "images", _write(root, images=images, annotations=_annotations()[:1]))
    with pytest.raises(ValueError, match=r"a\.jpg is 40x30, the annotations say 30x40; its EXIF orientation 6 shows "
                                         r"it turned to 30x40, but images are read as stored, without it"):
        ds[0]


def test_image_size_resizes_boxes_and_masks(folder):
    root, _ = folder
    annotations = _annotations()
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    ds = CocoDetection(root / "images", _write(root, annotations=annotations), image_size=60)
    image, target = ds[0]
    assert image.shape == (3, 60, 60) and target["masks"].shape == (2, 60, 60)
    assert torch.allclose(target["boxes"][0], torch.tensor([2 * 1.5, 3 * 2.0, 12 * 1.5, 11 * 2.0]))
    # what evaluation reads stays in the file's pixels (before: area scaled to 80 * 1.5 * 2.0)
    assert target["area"][0] == pytest.approx(80.0)
    assert target["unclipped_boxes"][0].tolist() == [2.0, 3.0, 12.0, 11.0]
    assert target["original_size"].tolist() == [30, 40]
    rows, cols = torch.nonzero(target["masks"][0], as_tuple=True)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (3, 6, 18, 22)


def _coco_folder(root: Path, split: str, year: str = "", images_folder: str | None = None) -> None:
    images = images_folder or f"{split}{year}"
    _write_images(root / images, {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    _write(root / "annotations", name=f"instances_{split}{year}.json")


def test_create_dataset_reads_coco_layouts(tmp_path):
    _coco_folder(tmp_path / "plain", "val")
    _coco_folder(tmp_path / "year", "train", year="2017")
    _coco_folder(tmp_path / "shared", "test", images_folder="images")
    for root, split in (
        (tmp_path / "plain", "val"),
        (tmp_path / "year", "train"),
        (tmp_path / "shared", "test"),
    ):
        ds = create_dataset(root, split)
        assert isinstance(ds, CocoDetection) and len(ds) == 3 and ds.classes == ["cat", "dog", "zebra"]
    ann_file = tmp_path / "year" / "annotations" / "instances_train2017.json"
    with pytest.raises(
        FileNotFoundError, match=r"looked for .*instances_train\.json, .*instances_train2017\.json"
    ):
        create_dataset(tmp_path / "plain", "train")
    assert create_dataset(ann_file).images_dir == tmp_path / "year" / "train2017"  # the split's folder
    lone = tmp_path / "lone.json"
    lone.write_bytes(ann_file.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"image id 1: file not found"):
        create_dataset(lone)  # its images are not beside it


def test_create_dataset_reads_a_split_folder_under_images(tmp_path):
    """A COCO folder with its images in images/val2017/ (as Ultralytics downloads COCO) could not be read at all:
    images/ was taken as the images folder, and the first image was "not found: coco/images/a.png"."""
    root = tmp_path / "coco"
    _coco_folder(root, "val", year="2017", images_folder="images/val2017")
    _coco_folder(root, "train", images_folder="images/train")
    for split, images in (("val", "images/val2017"), ("train", "images/train")):
        ds = create_dataset(root, split)
        assert ds.images_dir == root / images and len(ds) == 3 and ds[2][0].shape == (3, 24, 16)
    # file names that hold the split folder are still read from images/ itself
    prefixed = tmp_path / "prefixed"
    _write_images(prefixed / "images" / "val", {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    (prefixed / "annotations").mkdir()
    _write(prefixed / "annotations", images=[dict(e, file_name=f"val/{e['file_name']}") for e in _images()],
           name="instances_val.json")
    ds = create_dataset(prefixed, "val")
    assert ds.images_dir == prefixed / "images" and len(ds) == 3


def _count_json_reads(monkeypatch) -> list[Path]:
    """The paths of the annotation files parsed from now on, in order (visionzoo.data's read_json counted)."""
    from visionzoo.data import coco, factory

    parsed = []
    read_json = coco.read_json

    def counting(path):
        parsed.append(Path(path))
        return read_json(path)

    monkeypatch.setattr(coco, "read_json", counting)
    monkeypatch.setattr(factory, "read_json", counting)
    return parsed


@pytest.mark.parametrize("layout", ["images/train", "file"])
def test_create_dataset_parses_the_annotation_file_once(tmp_path, monkeypatch, layout):
    """A COCO folder of the images/{split} layout, and a .json file given alone, had their annotation file parsed
    twice as they were opened: once to find the folder of the first image, again to read it (COCO's 450 MB
    instances_train2017.json takes tens of seconds a parse). It is now parsed once."""
    _coco_folder(tmp_path, "train", images_folder="images/train")
    parsed = _count_json_reads(monkeypatch)
    data = tmp_path if layout != "file" else tmp_path / "annotations" / "instances_train.json"
    ds = create_dataset(data, "train")
    assert ds.images_dir == tmp_path / "images" / "train" and len(ds) == 3
    assert parsed == [tmp_path / "annotations" / "instances_train.json"]


def test_the_splits_of_one_json_file_are_one_data_set_read_once(folder, monkeypatch, caplog):
    """open_splits of one .json file, which serves every split, built it three times (train, val, test): the file
    was parsed and every image file checked three times (the headers of those without a size read thrice), and a
    warning of it (boxes skipped) was logged three times. The splits are now one data set, read once."""
    from visionzoo.data import open_splits

    root, _ = folder
    ann_file = _write(root, annotations=[*_annotations(), {"id": 9, "image_id": 2, "category_id": 3,
                                                           "bbox": [2, 3, 0, 8]}])
    parsed = _count_json_reads(monkeypatch)
    with caplog.at_level(logging.WARNING):
        splits = open_splits(ann_file, skip_invalid=True)
    assert list(splits) == ["train", "val", "test"] and splits["train"] is splits["val"] is splits["test"]
    assert len(splits["test"]) == 3 and parsed == [ann_file]
    assert caplog.text.count("skipped 1 boxes") == 1


@pytest.mark.parametrize("images", ["val", "val2017", "images/val"])
def test_file_names_that_hold_the_split_folder_are_read_from_the_folders_root(tmp_path, images):
    """A COCO folder whose file names hold the split folder relative to the folder itself (val/a.png, with the images
    in coco/val/) could not be read: coco/val/ was taken as the images folder and the first image was "file not
    found: coco/val/val/a.png". As for images/val/ under images/, the first listed image decides."""
    root = tmp_path / "coco"
    _write_images(root / images, {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    (root / "annotations").mkdir()
    year = "2017" if images.endswith("2017") else ""
    _write(root / "annotations", images=[dict(e, file_name=f"{images}/{e['file_name']}") for e in _images()],
           name=f"instances_val{year}.json")
    ds = create_dataset(root, "val")
    assert ds.images_dir == root and len(ds) == 3 and ds[2][0].shape == (3, 24, 16)


def test_create_dataset_finds_images_folder_beside_json(tmp_path):
    _write_images(tmp_path / "images", {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    ds = create_dataset(str(_write(tmp_path, name="mine.json")), image_size=32)
    assert ds.images_dir == tmp_path / "images" and ds[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("images", ["images", "images/default"])
def test_create_dataset_finds_the_images_of_a_json_in_an_annotations_folder(tmp_path, images):
    """CVAT's COCO export (annotations/instances_default.json beside images/, or Datumaro's images/default/) could not
    be read: --data of the file looked beside it and in annotations/images/ alone, and "default" is no split of a
    COCO folder, so no --data took it."""
    _write_images(tmp_path / images, {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    (tmp_path / "annotations").mkdir()
    ds = create_dataset(str(_write(tmp_path / "annotations", name="instances_default.json")))
    assert ds.images_dir == tmp_path / images and len(ds) == 3 and ds[1][0].shape == (3, 20, 50)


def test_a_json_in_an_annotations_folder_reads_file_names_relative_to_the_folder_above(tmp_path):
    """A .json in annotations/ whose file names are relative to the data set's folder (images/a.png, as the folder
    layout reads them) could not be given alone: it looked in annotations/, annotations/images/ and images/, and the
    first image was "file not found: annotations/images/a.png"."""
    _write_images(tmp_path / "images", {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    (tmp_path / "annotations").mkdir()
    ann_file = _write(tmp_path / "annotations", images=[dict(e, file_name=f"images/{e['file_name']}") for e in _images()],
                      name="mine.json")
    ds = create_dataset(ann_file)
    assert ds.images_dir == tmp_path and len(ds) == 3 and ds[1][0].shape == (3, 20, 50)


@pytest.mark.parametrize("images", [{"0": {"file_name": "a.png"}}, 5, "a.png"])
def test_a_json_whose_images_is_not_a_list_says_so(tmp_path, images):
    """`--data FILE.json` looked for the first image's folder before the file was checked: an 'images' object
    ended in "KeyError: 0", a number in "TypeError: 'int' object is not subscriptable", both tracebacks."""
    ann_file = tmp_path / "mine.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": [], "categories": CATEGORIES}))
    with pytest.raises(ValueError, match=r"mine\.json: 'images' must be a list"):
        create_dataset(ann_file)


def test_create_dataset_builds_named_datasets_and_rejects_unknown_names(tmp_path):
    assert DATASETS == ("shapes", "digits")
    shapes = create_dataset("shapes", "val", image_size=64, length=3)
    assert (
        isinstance(shapes, Shapes) and shapes.image_size == 64 and len(shapes) == 3 and shapes.split == "val"
    )
    assert create_dataset("Shapes").image_size == 128
    digits = create_dataset("digits", "test", image_size=32, channels=3)
    assert isinstance(digits, Digits) and digits[0][0].shape == (3, 32, 32)
    assert create_dataset("digits")[0][0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"unknown dataset 'shapse'; closest: shapes"):
        create_dataset("shapse")
    # it read "unknown dataset 'nonexist'; closest: none close; built-in: ...", a suggestion of nothing
    with pytest.raises(ValueError) as error:
        create_dataset("nonexist")
    assert str(error.value) == ("unknown dataset 'nonexist'; built-in: shapes, digits, or give a COCO folder or "
                                ".json file")
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        create_dataset(str(tmp_path / "nowhere"))


def test_collate_detection_keeps_lists():
    ds = Shapes("val", length=3)
    images, targets = collate_detection([ds[0], ds[1], ds[2]])
    assert len(images) == 3 and len(targets) == 3
    assert torch.equal(images[1], ds[1][0]) and torch.equal(targets[2]["boxes"], ds[2][1]["boxes"])
    assert collate_detection([]) == ([], [])


def test_bad_segmentations_name_the_annotation(folder):
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match=r"annotation id 1: a polygon must be a list of at least 3"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    annotations[0]["segmentation"] = {"size": [30, 41], "counts": "PPYo0"}
    with pytest.raises(ValueError, match=r"annotation id 1: RLE size \[30, 41\] differs"):
        CocoDetection(root / "images", _write(root, annotations=annotations))
    for size in (30, "30 40", [30], None):  # not [height, width]: once a TypeError naming neither file nor entry
        annotations[0]["segmentation"] = {"size": size, "counts": "PPYo0"}
        with pytest.raises(ValueError, match=r"instances\.json: annotation id 1: RLE size must be \[height, width\]"):
            CocoDetection(root / "images", _write(root, annotations=annotations))
    annotations[0]["segmentation"] = {"size": [30, 40], "counts": [5, 7]}  # too few pixels: found when read
    for ann in annotations[1:]:
        ann["segmentation"] = [[0, 0, 4, 0, 4, 4]]
    ds = CocoDetection(root / "images", _write(root, annotations=annotations))
    with pytest.raises(
        ValueError,
        match=r"instances\.json: annotation id 1: segmentation: RLE counts sum to 12, expected 30x40",
    ):
        ds[0]



def test_segmentations_that_cannot_be_decoded_are_no_concern_of_a_data_set_that_loads_no_masks(folder):
    """Labelling tools write boxes-only annotations with segmentation [[]] or a two-point "polygon"; pycocotools'
    bbox evaluation reads such a file, but CocoDetection(load_masks=False), which never decodes a segmentation,
    refused it ("a polygon must be a list of at least 3 (x, y) pairs"), and so did every detector's training."""
    root, _ = folder
    annotations = _annotations()
    annotations[0]["segmentation"] = [[]]
    annotations[1]["segmentation"] = [[35, 0, 40, 6]]
    annotations[2]["segmentation"] = {"size": [30, 40], "counts": [1200]}  # the size of another image
    for annotation in annotations:
        annotation.setdefault("area", 50.0)  # pycocotools' evaluation needs it
    ann_file = _write(root, annotations=annotations)
    with pytest.raises(ValueError, match="annotation id 1: a polygon must be a list of at least 3"):
        CocoDetection(root / "images", ann_file)
    ds = CocoDetection(root / "images", ann_file, load_masks=False)
    boxes = [ds[i][1]["boxes"].tolist() for i in range(len(ds))]
    assert boxes == [[[2.0, 3.0, 12.0, 11.0], [35.0, 0.0, 40.0, 6.0]], [[0.0, 2.0, 14.5, 20.0]], []]
    assert all("masks" not in ds[i][1] for i in range(len(ds)))
    gt = COCO(str(ann_file))
    dets = gt.loadRes([{"image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 8], "score": 0.9}])
    evaluation = COCOeval(gt, dets, "bbox")
    with redirect_stdout(io.StringIO()):
        evaluation.evaluate()  # the reference reads the file

def test_unreadable_images_raise_naming_the_file(folder):
    root, _ = folder
    ann_file = _write(root)
    (root / "images" / "a.png").write_bytes(b"not an image at all")
    ds = CocoDetection(root / "images", ann_file)
    with pytest.raises(ValueError, match=r"image id 1: image .*a\.png cannot be read: cannot identify"):
        ds[0]
    png = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ValueError, match=r"image id 2: image .*b\.png cannot be read: .*truncated"):
        ds[1]
    (root / "images" / "c.png").write_bytes(b"no header to read the size from")
    with pytest.raises(ValueError, match=r"image id 5: image .*c\.png cannot be read"):
        CocoDetection(root / "images", ann_file)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("file_name", None, r"image id 2: file_name must be a non-empty string, got None"),
        ("file_name", "", r"image id 2: file_name must be a non-empty string, got ''"),
        ("id", [2], r"image id \[2\]: id must be an integer or a string, got \[2\]"),
        ("id", None, r"image id None: id must be an integer or a string, got None"),
        ("width", None, r"image id 2: width must be a positive integer, got None"),
        ("width", "abc", r"image id 2: width must be a positive integer, got 'abc'"),
        ("height", 0, r"image id 2: height must be a positive integer, got 0"),
        ("height", 20.5, r"image id 2: height must be a positive integer, got 20\.5"),
    ],
)
def test_bad_image_entries_name_file_and_image(folder, field, value, message):
    root, _ = folder
    images = _images()
    images[1][field] = value
    with pytest.raises(ValueError, match=r"instances\.json: " + message):
        CocoDetection(root / "images", _write(root, images=images))


def test_image_ids_mixing_integers_and_strings_raise(folder):
    root, _ = folder
    images = _images()
    images[0]["id"] = "1"
    annotations = [a for a in _annotations() if a["image_id"] != 1]
    with pytest.raises(
        ValueError, match=r"instances\.json: image id 2 is an integer but image id '1' is a string"
    ):
        CocoDetection(root / "images", _write(root, images=images, annotations=annotations))


def test_string_ids_are_read(folder):
    root, _ = folder
    images = _images()
    for image in images:
        image["id"] = f"img{image['id']}"
    annotations = _annotations()
    for ann in annotations:
        ann["image_id"] = f"img{ann['image_id']}"
    ds = CocoDetection(root / "images", _write(root, images=images, annotations=annotations))
    assert ds.image_ids == ["img1", "img2", "img5"] and len(ds[0][1]["boxes"]) == 2


def test_no_images_raises_naming_the_file(folder):
    root, _ = folder
    with pytest.raises(ValueError, match=r"instances\.json: 'images' is empty"):
        CocoDetection(root / "images", _write(root, images=[], annotations=[]))



def test_two_categories_of_one_name_are_refused_naming_both_ids(folder):
    """Classes are known by name (a detector's ap/NAME, predict's labels, a checkpoint's classes): two categories
    named 'square' (ids 7 and 90) gave 5 ap/ numbers for 6 classes, the second overwriting the first."""
    root, _ = folder
    categories = [*CATEGORIES, {"id": 90, "name": "cat"}]
    with pytest.raises(ValueError, match=r"instances\.json: category ids 3 and 90 are both named 'cat'"):
        CocoDetection(root / "images", _write(root, categories=categories))

@pytest.mark.parametrize(
    "field, value, message",
    [
        ("id", None, r"annotation id None: id must be an integer or a string, got None"),
        ("image_id", [1], r"annotation id 2: image_id must be an integer or a string, got \[1\]"),
        ("category_id", [3], r"annotation id 2: category_id must be an integer or a string, got \[3\]"),
        ("iscrowd", "no", r"annotation id 2: iscrowd must be 0 or 1, got 'no'"),
        ("iscrowd", "0", r"annotation id 2: iscrowd must be 0 or 1, got '0'"),
        ("iscrowd", None, r"annotation id 2: iscrowd must be 0 or 1, got None"),
        ("area", -100, r"annotation id 2: area must be a non-negative number, got -100"),
        ("area", "big", r"annotation id 2: area must be a non-negative number, got 'big'"),
        # before: float() took these, so a bbox of strings or booleans was read as numbers
        ("bbox", ["35", "-4", "10", "10"], r"annotation id 2: bbox must hold four numbers, got \['35', '-4', '10', '10'\]"),
        ("bbox", [35, True, 10, 10], r"annotation id 2: bbox must hold four numbers, got \[35, True, 10, 10\]"),
    ],
)
def test_bad_annotation_values_name_file_and_annotation(folder, field, value, message):
    root, _ = folder
    annotations = _annotations()
    annotations[1][field] = value
    with pytest.raises(ValueError, match=r"instances\.json: " + message):
        CocoDetection(root / "images", _write(root, annotations=annotations))


def test_bad_category_ids_raise(folder):
    root, _ = folder
    categories = copy.deepcopy(CATEGORIES)
    categories[1]["id"] = [3]
    with pytest.raises(ValueError, match=r"category id \[3\]: id must be an integer or a string, got \[3\]"):
        CocoDetection(root / "images", _write(root, categories=categories))
    categories = copy.deepcopy(CATEGORIES) + [{"id": "4", "name": "owl"}]
    with pytest.raises(ValueError, match=r"category id '4' is a string but category id 12 is an integer"):
        CocoDetection(root / "images", _write(root, categories=categories))


def test_iscrowd_as_bool_and_missing_area_are_read(folder):
    root, _ = folder
    annotations = _annotations()
    annotations[2]["iscrowd"] = True
    annotations[0]["area"] = None
    ds = CocoDetection(root / "images", _write(root, annotations=annotations))
    assert ds[1][1]["iscrowd"].tolist() == [1]
    assert ds[0][1]["area"][0] == pytest.approx(80.0)


def test_image_size_disagreeing_with_rle_and_file_blames_the_image(folder):
    root, _ = folder
    images = _images()
    images[0]["width"] = 41  # the file is 40x30, as the RLE says
    annotations = _annotations()
    annotations[0]["segmentation"] = {"size": [30, 40], "counts": [1200]}
    with pytest.raises(ValueError, match=r"image id 1: .*a\.png is 40x30, the annotations say 41x30"):
        CocoDetection(root / "images", _write(root, images=images, annotations=annotations))


def test_a_sixteen_bit_greyscale_image_is_read_scaled_not_clipped(folder):
    root, _ = folder
    values = np.random.default_rng(0).integers(0, 65536, size=(30, 40), dtype=np.uint16)
    Image.fromarray(values).save(root / "images" / "a.png")  # mode I;16, as 40x30 as the entry says
    image, _ = CocoDetection(root / "images", _write(root))[0]
    expected = torch.from_numpy(values.astype(np.float32) / 65535).expand(3, -1, -1)
    assert image.dtype == torch.float32 and torch.equal(image, expected)


def test_create_dataset_refuses_image_size_zero_for_named_datasets_as_for_folders():
    # before: image_size=0 quietly gave the default size (128 px Shapes, 8 px Digits)
    with pytest.raises(ValueError, match="Shapes image_size must be at least 16, got 0"):
        create_dataset("shapes", "val", image_size=0, length=2)
    with pytest.raises(ValueError, match="Digits image_size must be positive, got 0"):
        create_dataset("digits", "test", image_size=0)


@pytest.mark.parametrize("image_size", [16.5, True, "16"])
def test_image_size_must_be_an_integer_when_built(folder, image_size):
    """image_size=16.5 or True built the data set and failed at the first sample with a TypeError from torch's
    interpolate, naming neither the setting nor the value."""
    root, _ = folder
    with pytest.raises(ValueError, match=f"CocoDetection image_size must be an integer, got {image_size!r}"):
        CocoDetection(root / "images", _write(root), image_size=image_size)


def test_an_image_info_file_is_read_by_readers_of_images_and_refused_by_name_for_boxes(folder):
    """A COCO file without 'annotations' (COCO's image_info_test2017.json lists images alone), which pycocotools and
    torchvision load, was refused with "the top level is missing 'annotations'" even by tasks that read no box. A
    reader of the images alone now takes it; a reader of boxes is told the file is an image-info file."""
    root, pixels = folder
    ann_file = root / "image_info.json"
    ann_file.write_text(json.dumps({"images": _images(), "categories": CATEGORIES}))
    ds = CocoDetection(root / "images", ann_file, read_boxes=False, load_masks=False, skip_invalid=True)
    assert len(ds) == 3 and ds.classes == ["cat", "dog", "zebra"] and ds.num_objects == 0
    image, target = ds[1]
    assert torch.equal(image, torch.from_numpy(pixels["b.png"]).permute(2, 0, 1).float() / 255)
    assert target["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"image_info\.json: it holds no 'annotations', as an image-info file "
                                         r"\(images alone, like COCO's image_info_test2017\.json\)"):
        CocoDetection(root / "images", ann_file)


def test_check_files_names_an_unreadable_image_or_a_size_its_entry_does_not_give(folder):
    root, _ = folder
    ds = CocoDetection(root / "images", _write(root))
    ds.check_files()
    (root / "images" / "b.png").write_bytes((root / "images" / "b.png").read_bytes()[:-30])
    ds.check_files(1)  # b.png is the second image
    with pytest.raises(ValueError, match=r"instances\.json: image id 2: image .*b\.png cannot be read"):
        ds.check_files()
    Image.new("RGB", (41, 30)).save(root / "images" / "a.png")
    with pytest.raises(ValueError, match=r"image id 1: .*a\.png is 41x30, the annotations say 40x30"):
        ds.check_files(1)


@pytest.mark.parametrize("progressive", [False, True])
def test_check_files_names_a_truncated_jpeg_and_takes_one_with_bytes_after_its_end(folder, progressive):
    """A JPEG cut short passed check_files, whose header and PIL's verify (a no-op for JPEG) look at nothing past
    the header: train checked its val split before the first step, trained to the end of its budget, and only
    then stopped at its evaluation, on that file. A complete JPEG followed by other bytes (a phone's motion photo
    appends a video) is still taken."""
    root, pixels = folder
    images = [{**image, "file_name": image["file_name"].replace(".png", ".jpg")} for image in _images()]
    for name, array in pixels.items():
        Image.fromarray(array).save(root / "images" / name.replace(".png", ".jpg"), quality=90, progressive=progressive)
    ds = CocoDetection(root / "images", _write(root, images=images))
    jpeg = root / "images" / "b.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data + b"appended video" * 50)
    ds.check_files()
    for cut in (len(data) // 2, len(data) - 2):
        jpeg.write_bytes(data[:cut])
        ds.check_files(1)  # b.jpg is the second image
        with pytest.raises(ValueError, match=r"instances\.json: image id 2: image .*b\.jpg cannot be read: .*truncated"):
            ds.check_files()


def test_a_split_folder_without_the_images_gives_way_to_the_one_that_holds_them(tmp_path):
    """A COCO folder with both val/ (notes, labels of another tool) and images/val/ (the images) could not be read:
    val/ was taken as the images folder, and the first image was "file not found: coco/val/a.png". The first of the
    folders looked in that holds the first listed image is now read."""
    root = tmp_path / "coco"
    _coco_folder(root, "val", images_folder="images/val")
    (root / "val").mkdir()
    (root / "val" / "notes.txt").write_text("labels live elsewhere")
    ds = create_dataset(root, "val")
    assert ds.images_dir == root / "images" / "val" and len(ds) == 3 and ds[2][0].shape == (3, 24, 16)
    _write_images(root / "val", {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)}, seed=1)
    assert create_dataset(root, "val").images_dir == root / "val"  # both hold them: val/ first, as before


def test_a_split_with_two_annotation_files_says_which_it_reads(tmp_path, caplog):
    """A COCO folder with both instances_val.json and instances_val2017.json (an old export beside a new one) read
    the first without a word, so a user could score a file they did not mean; it now warns, naming both."""
    root = tmp_path / "coco"
    _coco_folder(root, "val")
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": [], "annotations": [],
                                                                            "categories": []}))
    with caplog.at_level(logging.WARNING):
        ds = create_dataset(root, "val")
    assert ds.ann_file == root / "annotations" / "instances_val.json" and len(ds) == 3
    assert caplog.text.count("annotations for split 'val'") == 1
    assert (f"{root} has two annotations for split 'val': reading {root / 'annotations' / 'instances_val.json'}, "
            f"not {root / 'annotations' / 'instances_val2017.json'}") in caplog.text
    caplog.clear()
    (root / "annotations" / "instances_val2017.json").unlink()
    with caplog.at_level(logging.WARNING):
        create_dataset(root, "val")
    assert caplog.text == ""


@pytest.mark.parametrize("split", ["val", "val2017"])
def test_a_coco_folders_annotation_file_given_alone_finds_the_split_folder_beside_annotations(tmp_path, split):
    """The annotation file of a COCO folder given alone (export-data's coco/annotations/instances_val.json, COCO's
    own annotations/instances_val2017.json beside val2017/) could not be read: its images were looked for in
    annotations/, images/ and the folder above, not in the split's folder, and the first was "file not found:
    coco/annotations/a.png"."""
    root = tmp_path / "coco"
    _coco_folder(root, "val", year=split[3:])
    ds = create_dataset(root / "annotations" / f"instances_{split}.json")
    assert ds.images_dir == root / split and len(ds) == 3 and ds[2][0].shape == (3, 24, 16)


def test_a_split_whose_images_are_in_two_folders_says_which_it_reads(tmp_path, caplog):
    """A COCO folder with the val images in both val/ and images/val/ (a copy resized since, say) read val/ without a
    word; it still does, and now warns, naming both folders."""
    root = tmp_path / "coco"
    _coco_folder(root, "val")
    _write_images(root / "images" / "val", {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)}, seed=1)
    with caplog.at_level(logging.WARNING):
        ds = create_dataset(root, "val")
    assert ds.images_dir == root / "val"
    assert caplog.text.count("hold the images of split") == 1
    assert f"{root / 'val'} and {root / 'images' / 'val'} hold the images of split 'val' (a.png): reading {root / 'val'}" \
        in caplog.text
    caplog.clear()
    for name in ("a.png", "b.png", "c.png"):
        (root / "images" / "val" / name).unlink()
    with caplog.at_level(logging.WARNING):
        create_dataset(root, "val")
    assert caplog.text == ""


def test_a_folder_holding_annotation_files_itself_names_what_to_give(tmp_path):
    """--data of a Roboflow split folder (DIR/valid/, holding _annotations.coco.json) or of a folder holding a COCO
    .json beside its images said only that it "has no COCO annotations for any split"; it now names what to give."""
    from visionzoo.data import open_splits

    split = tmp_path / "roboflow" / "valid"
    _write_images(split, {"a.png": (40, 30), "b.png": (50, 20), "c.png": (16, 24)})
    _write(split, name="_annotations.coco.json")
    with pytest.raises(FileNotFoundError, match=r"has no COCO annotations for any split: .*; it holds "
                                                 r"_annotations\.coco\.json, Roboflow's valid split: give --data "
                                                 rf"{tmp_path / 'roboflow'} \(the export\) or the file"):
        open_splits(split)
    plain = tmp_path / "plain"
    _write_images(plain / "images", {"a.png": (40, 30)})
    _write(plain, name="mine.json")
    with pytest.raises(FileNotFoundError, match=rf"; it holds mine\.json: give --data {plain / 'mine.json'}"):
        open_splits(plain)
