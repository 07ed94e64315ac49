"""export-data: Shapes as PNG + COCO JSON, read back by create_dataset and by pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from visionzoo.cli import main
from visionzoo.data import CocoDetection, Shapes, create_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "shapes"
    code = main(
        [
            "export-data",
            "shapes",
            "--out",
            str(out),
            "--split",
            "val",
            "test",
            "--num",
            "12",
            "--image-size",
            "96",
        ]
    )
    assert code == 0
    return out


def test_layout_and_json_content(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["annotations", "test", "val"]
    assert sorted(p.name for p in (exported / "val").iterdir()) == [f"{i:06d}.png" for i in range(12)]
    content = json.loads((exported / "annotations" / "instances_val.json").read_text())
    shapes = Shapes("val", image_size=96, length=12)
    assert [c["name"] for c in content["categories"]] == shapes.classes
    assert [c["id"] for c in content["categories"]] == list(range(1, len(shapes.classes) + 1))
    assert [image["caption"] for image in content["images"]] == [shapes[i][1]["caption"] for i in range(12)]
    assert all(a["iscrowd"] == 0 for a in content["annotations"])
    assert len({a["id"] for a in content["annotations"]}) == len(content["annotations"])


def test_read_back_with_create_dataset_gives_the_same_targets_and_pixels(exported):
    shapes = Shapes("val", image_size=96, length=12)
    ds = create_dataset(exported, "val")
    assert isinstance(ds, CocoDetection) and len(ds) == 12 and ds.classes == shapes.classes
    for i in range(12):
        image, target = ds[i]
        original, expected = shapes[i]
        assert target["image_id"] == expected["image_id"] == i
        assert torch.equal(target["boxes"], expected["boxes"])
        assert torch.equal(target["labels"], expected["labels"])
        assert torch.equal(target["masks"], expected["masks"])
        assert torch.equal(target["area"], expected["area"])
        quantised = (original.clamp(0, 1) * 255).round().to(torch.uint8)
        png = torch.from_numpy(np.array(Image.open(exported / "val" / f"{i:06d}.png"))).permute(2, 0, 1)
        assert torch.equal(png, quantised)
        assert torch.equal(image, quantised.float() / 255)


def test_read_back_with_pycocotools(exported):
    shapes = Shapes("test", image_size=96, length=12)
    coco = COCO(str(exported / "annotations" / "instances_test.json"))
    assert sorted(coco.imgs) == list(range(12))
    for i in range(12):
        _, expected = shapes[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        assert torch.equal(xyxy, expected["boxes"])
        assert [a["category_id"] for a in anns] == expected["labels"].tolist()
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == [
            shapes.classes[k - 1] for k in expected["labels"].tolist()
        ]
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
        assert np.array_equal(masks, expected["masks"].numpy())
        assert [a["area"] for a in anns] == expected["masks"].sum((1, 2)).tolist()


def test_refuses_non_empty_folder_without_overwrite(exported, capsys):
    before = (exported / "annotations" / "instances_val.json").read_bytes()
    capsys.readouterr()
    code = main(["export-data", "shapes", "--out", str(exported), "--split", "val", "--num", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err and str(exported) in err
    assert (exported / "annotations" / "instances_val.json").read_bytes() == before


def test_overwrite_replaces_the_split(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert (
        main(["export-data", "shapes", "--out", str(out), "--split", "train", "--num", "3", "--overwrite"])
        == 0
    )
    assert len(create_dataset(out, "train")) == 3
    assert (out / "notes.txt").read_text() == "mine"


def test_a_smaller_export_over_a_larger_one_leaves_only_its_own_images_and_the_users_files(tmp_path):
    """--overwrite with a smaller --num left 000002.png.. of the earlier export beside the new ones: a folder of
    5 PNGs for a JSON of 2 images, and tools that read the folder (e.g. visionzoo fid) mixed the two exports."""
    out = tmp_path / "out"
    assert main(["export-data", "shapes", "--out", str(out), "--split", "val", "--num", "5", "--image-size", "16"]) == 0
    for name in ("notes.txt", "0003.png", "000003.png.bak"):
        (out / "val" / name).write_text("mine")
    argv = ["export-data", "shapes", "--out", str(out), "--split", "val", "--num", "2", "--image-size", "16"]
    assert main(argv + ["--overwrite"]) == 0
    content = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert [image["file_name"] for image in content["images"]] == ["000000.png", "000001.png"]
    assert sorted(p.name for p in (out / "val").iterdir()) == ["000000.png", "000001.png",
                                                                 "000003.png.bak", "0003.png", "notes.txt"]
    assert all((out / "val" / name).read_text() == "mine" for name in ("notes.txt", "0003.png", "000003.png.bak"))


def test_overwrite_keeps_a_users_date_named_png_in_the_split_folder(tmp_path):
    """export-data --overwrite deleted the user's 20261205.png (a photo named by its date) from DIR/val/ as image
    20261205 of an earlier export; an export names its images with 6 digits (it writes at most 100,000), so longer
    names are now left alone."""
    out = tmp_path / "out"
    (out / "val").mkdir(parents=True)
    for name in ("20261205.png", "1234567.png"):
        (out / "val" / name).write_text("mine")
    argv = ["export-data", "shapes", "--out", str(out), "--split", "val", "--num", "2", "--image-size", "16"]
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "val").iterdir()) == ["000000.png", "000001.png", "1234567.png",
                                                                 "20261205.png"]


def test_unknown_dataset_is_one_line_error(tmp_path, capsys):
    assert main(["export-data", "digits", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot export 'digits'" in err and "shapes" in err
    assert not (tmp_path / "x").exists()


def test_a_num_above_the_cap_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """--num 10**9 started writing a billion PNGs (Shapes draws any number of scenes)."""
    from visionzoo.data import export

    written = []
    monkeypatch.setattr(export, "write_coco_split", lambda dataset, out, split, progress: written.append(len(dataset)))
    assert main(["export-data", "shapes", "--out", str(tmp_path / "x"), "--num", str(10**9)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num 1000000000" in err and "100000 images per split" in err, err
    assert written == [] and not (tmp_path / "x").exists()
    export.export_shapes(tmp_path / "y", splits=["val"], num=export.MAX_EXPORT_IMAGES)  # the cap itself is taken
    assert written == [export.MAX_EXPORT_IMAGES]


def test_the_library_refuses_an_export_of_no_images_as_the_cli_does(tmp_path):
    """export_shapes(num=0) wrote a split of no images, which create_dataset then refused ('no images')."""
    from visionzoo.data.export import export_shapes

    with pytest.raises(ValueError, match="--num must be at least 1, got 0"):
        export_shapes(tmp_path / "x", splits=["val"], num=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_one_split_given_as_a_string_is_that_split(tmp_path):
    """export_shapes(splits="val") failed with "unknown Shapes split 'v'": the string was read letter by letter."""
    from visionzoo.data.export import export_shapes

    written = export_shapes(tmp_path / "x", splits="val", num=1, image_size=16, progress=False)
    assert list(written) == ["val"] and len(create_dataset(tmp_path / "x", "val")) == 1


def test_the_json_is_written_through_a_temporary_file_of_its_own(tmp_path):
    """The JSON went through the fixed name instances_val.json.tmp: two exports into one folder wrote into the
    same temporary file (one could publish the other's half-written JSON), and with --overwrite a file of the
    user's of that name was consumed, though other files are left alone."""
    out = tmp_path / "out"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "instances_val.json.tmp").write_text("mine")
    assert main(["export-data", "shapes", "--out", str(out), "--split", "val", "--num", "1", "--image-size", "16",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_val.json", "instances_val.json.tmp"]
    assert (out / "annotations" / "instances_val.json.tmp").read_text() == "mine"
    assert len(create_dataset(out, "val")) == 1


def test_a_repeated_split_option_exports_every_split_named(tmp_path):
    """--split val --split test exported test alone (the last option replaced the first) without a word."""
    out = tmp_path / "x"
    assert main(["export-data", "shapes", "--out", str(out), "--split", "val", "--split", "test", "--num", "1",
                 "--image-size", "16"]) == 0
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_test.json", "instances_val.json"]
    assert main(["export-data", "shapes", "--out", str(tmp_path / "all"), "--num", "1", "--image-size", "16"]) == 0
    assert len(list((tmp_path / "all" / "annotations").iterdir())) == 3  # no --split: every split


@pytest.mark.parametrize("name", ["annotations", "val"])
def test_a_file_where_the_export_writes_a_folder_is_named_before_anything_is_written(tmp_path, capsys, name):
    # --overwrite into a folder holding a file named annotations failed part-way with "[Errno 17] File exists"
    (tmp_path / name).write_text("mine")
    assert main(["export-data", "shapes", "--out", str(tmp_path), "--split", "val", "--num", "2", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{tmp_path / name} is a file where the export writes its {name} folder; move it or give "
                        "another --out") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and (tmp_path / name).read_text() == "mine"


@pytest.mark.parametrize("name", ["annotations/instances_val.json", "val/000001.png"])
def test_a_folder_where_the_export_writes_a_file_is_named_before_anything_is_written(tmp_path, capsys, name):
    """--overwrite into a folder holding a folder of the name of a file the export writes wrote the images, then
    failed with "[Errno 21] Is a directory", naming a temporary file where it was the JSON."""
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / "notes.txt").write_text("mine")
    assert main(["export-data", "shapes", "--out", str(tmp_path), "--split", "val", "--num", "2", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{tmp_path / name} is a folder where the export writes a file; move it or give another "
                        "--out") and "\n" not in err, err
    assert not (tmp_path / "val" / "000000.png").exists() and (tmp_path / name / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_export_data_names_seed_as_the_option_the_user_gave(tmp_path, capsys, seed):
    """export-data --seed -1 said "Shapes seed must be in [0, 2**32)", naming the class, not the option."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export-data", "shapes", "--out", str(tmp_path / "out"), "--seed", seed])
    assert exit_info.value.code == 2
    assert f"argument --seed: expected an integer in [0, 2**32), got {seed}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["15", "4097"])
def test_export_data_names_image_size_as_the_option_the_user_gave(tmp_path, capsys, size):
    """export-data --image-size 8 said "Shapes image_size must be at least 16, got 8", naming the class's argument,
    not the option, and --help gave no range."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export-data", "shapes", "--out", str(tmp_path / "out"), "--image-size", size])
    assert exit_info.value.code == 2
    assert f"argument --image-size: expected an integer in [16, 4096], got {size}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
