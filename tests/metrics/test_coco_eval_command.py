"""``visionzoo coco-eval``: pycocotools' table, JSON output, and one-line errors."""

import copy
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

from visionzoo.cli import main
from visionzoo.metrics.coco import SUMMARY_NAMES


@pytest.fixture
def files(tmp_path, make_coco):
    gt, dets = make_coco(9)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    return tmp_path / "gt.json", tmp_path / "dt.json", gt, dets


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_table_is_pycocotools_summary(files, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_path, dt_path, _, _ = files
    assert main(["coco-eval", str(gt_path), str(dt_path)]) == 0
    ours = capsys.readouterr().out.splitlines()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        coco = COCO(str(gt_path))
        ev = COCOeval(coco, coco.loadRes(str(dt_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    expected = [line for line in buffer.getvalue().splitlines() if line.startswith(" Average")]
    assert ours[:12] == expected
    assert ours[13].split() == ["category", "id", "AP", "AR"]
    assert any(line.startswith("note: ") and "left out" in line for line in ours)


def test_json_output(files, capsys):
    gt_path, dt_path, gt, dets = files
    assert main(["coco-eval", str(gt_path), str(dt_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from visionzoo.metrics import coco_evaluate

    direct = coco_evaluate(gt, dets)
    assert [out[n] for n in SUMMARY_NAMES] == [direct[n] for n in SUMMARY_NAMES]
    assert set(out["per_category"]) == {str(c["id"]) for c in gt["categories"]}


def test_empty_detections_file(files, capsys, tmp_path):
    gt_path, _, _, _ = files
    (tmp_path / "empty.json").write_text("[]")
    assert main(["coco-eval", str(gt_path), str(tmp_path / "empty.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["AP"] == 0 and out["AR100"] == 0
    assert np.isin([row["AP"] for row in out["per_category"].values()], [0.0, -1.0]).all()


def test_errors_are_one_line(files, capsys, tmp_path):
    gt_path, dt_path, _, dets = files
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 7, "category_id": 1,\n "bbox": [1, 2, 3, 4] "score": 0.5}]')
    one_line_error(
        capsys, ["coco-eval", str(gt_path), str(bad)], "bad.json", "malformed JSON at line 2 column"
    )
    unknown = copy.deepcopy(dets)
    unknown[5]["image_id"] = 99999
    bad.write_text(json.dumps(unknown))
    one_line_error(capsys, ["coco-eval", str(gt_path), str(bad)], "result 5 has image_id 99999")
    nan = copy.deepcopy(dets)
    nan[0]["score"] = float("nan")
    bad.write_text(json.dumps(nan))  # json writes NaN, which json.load reads back
    one_line_error(capsys, ["coco-eval", str(gt_path), str(bad)], "result 0 has a NaN score")
    one_line_error(capsys, ["coco-eval", str(tmp_path / "nope.json"), str(dt_path)], "nope.json")
    bad.write_text(json.dumps({"not": "a list"}))
    one_line_error(capsys, ["coco-eval", str(gt_path), str(bad)], "expected a list of result objects")


def test_a_folder_given_as_a_file_is_called_a_folder_naming_its_json(files, capsys, tmp_path):
    """`coco-eval data/shapes dets.json` said "ground-truth file not found: data/shapes", of a folder that exists."""
    gt_path, dt_path, _, _ = files
    export = tmp_path / "export"
    (export / "annotations").mkdir(parents=True)
    (export / "annotations" / "instances_val.json").write_text(gt_path.read_text())
    one_line_error(capsys, ["coco-eval", str(export), str(dt_path)], f"ground-truth file {export} is a folder",
                   str(export / "annotations" / "instances_val.json"))
    one_line_error(capsys, ["coco-eval", str(gt_path), str(tmp_path / "export" / "annotations")],
                   "detections file", "is a folder")


@pytest.mark.parametrize(
    "target, field, value, fragments",
    [
        ("gt", "iscrowd", "0", ("gt.json: annotation 1 (id ", "iscrowd must be 0 or 1, got '0'")),
        ("gt", "iscrowd", "false", ("gt.json: annotation 1 (id ", "iscrowd must be 0 or 1, got 'false'")),
        ("gt", "id", None, ("gt.json: annotation 1: id must be a number or a string, got None",)),
        ("gt", "image_id", [0], ("gt.json: annotation 1: image_id must be a number or a string",)),
        ("dt", "category_id", None, ("dt.json: result 1: category_id must be a number or a string",)),
        ("dt", "image_id", [0], ("dt.json: result 1: image_id must be a number or a string, got [0]",)),
        ("dt", "score", None, ("dt.json: result 1: score must be a number, got None",)),
    ],
)
def test_bad_values_are_one_line_errors_naming_file_and_entry(files, capsys, target, field, value, fragments):
    gt_path, dt_path, gt, dets = files
    if target == "gt":
        gt = copy.deepcopy(gt)
        gt["annotations"][1][field] = value
        gt_path.write_text(json.dumps(gt))
    else:
        dets = copy.deepcopy(dets)
        dets[1][field] = value
        dt_path.write_text(json.dumps(dets))
    one_line_error(capsys, ["coco-eval", str(gt_path), str(dt_path)], *fragments)


@pytest.mark.parametrize("key, value", [("images", {"1": {"id": 1}}), ("categories", "cats"), ("annotations", {"a": 1})])
def test_a_list_of_the_ground_truth_that_is_not_a_list_is_named(files, capsys, tmp_path, key, value):
    """An 'images' object was read as its keys: "image 0 is not an object: '1'" blamed an image the file does not
    have."""
    gt_path, dt_path, gt, _ = files
    bad = tmp_path / "bad_gt.json"
    bad.write_text(json.dumps({**gt, key: value}))
    one_line_error(capsys, ["coco-eval", str(bad), str(dt_path)],
                   f"bad_gt.json: {key!r} must be a list, got {type(value).__name__}")


@pytest.mark.parametrize("field", ["category_id", "image_id"])
def test_result_ids_of_another_type_than_the_ground_truths_are_refused(files, capsys, field):
    """Results whose category_id were strings ("3") against a ground truth of integer ids were all left out as
    "categories absent from" it: AP 0 everywhere, with a note that hid why (image_id said "absent", not why)."""
    gt_path, dt_path, _, dets = files
    dt_path.write_text(json.dumps([{**d, field: str(d[field])} for d in dets]))
    one_line_error(capsys, ["coco-eval", str(gt_path), str(dt_path)],
                   f"dt.json: result 0 has {field} {str(dets[0][field])!r}, a string, but the ground truth's",
                   "are numbers")


def test_an_annotation_id_of_zero_is_noted_as_where_pycocotools_differs(files, capsys, tmp_path):
    """Ground truth numbering its annotations from 0 (as some exporters do) got other numbers than pycocotools on the
    same files without a word: pycocotools takes match id 0 for "no match", so never finds annotation 0."""
    gt_path, dt_path, gt, _ = files
    assert main(["coco-eval", str(gt_path), str(dt_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    from_one = json.loads(captured.out)
    from_zero = copy.deepcopy(gt)
    for annotation in from_zero["annotations"]:
        annotation["id"] -= 1
    zero_path = tmp_path / "from_zero.json"
    zero_path.write_text(json.dumps(from_zero))
    for extra in ([], ["--json"]):
        assert main(["coco-eval", str(zero_path), str(dt_path), *extra]) == 0
        captured = capsys.readouterr()
        notes = captured.err.strip().splitlines()
        assert len(notes) == 1 and notes[0].startswith(f"note: {zero_path} has an annotation of id 0"), notes
        assert "pycocotools" in notes[0]
    # the numbers are those of the same file numbered from 1
    assert {name: json.loads(captured.out)[name] for name in SUMMARY_NAMES} == {
        name: from_one[name] for name in SUMMARY_NAMES}


@pytest.mark.parametrize("token", ["Infinity", "-Infinity"])
def test_an_infinite_score_in_a_results_file_is_refused_naming_the_entry(files, capsys, tmp_path, token):
    """JSON has no Infinity, but Python's json reads the token (as pycocotools does), and coco-eval ranked such a
    result first (or last) of all without a word; a NaN score or an infinite box was already refused."""
    gt_path, _, _, dets = files
    bad = tmp_path / "bad.json"
    text = json.dumps(dets[:3]).replace(json.dumps(dets[2]["score"]), token, 1)
    bad.write_text(text)
    assert token in text
    one_line_error(capsys, ["coco-eval", str(gt_path), str(bad)],
                   f"{bad}: result 2 has a non-finite score {float(token)}")
    bad.write_text(json.dumps(dets[:3]).replace(json.dumps(dets[1]["bbox"]), f"[1, 2, {token}, 4]", 1))
    one_line_error(capsys, ["coco-eval", str(gt_path), str(bad)],
                   f"{bad}: result 1 has a non-finite bbox [1.0, 2.0, {float(token)}, 4.0]")


def test_a_ground_truth_file_given_as_the_results_is_called_one(files, capsys):
    """`coco-eval GT GT` said only "expected a list of result objects, got dict"; it now says the second file looks
    like a ground-truth annotation file and what coco-eval takes second."""
    gt_path, _, _, _ = files
    one_line_error(capsys, ["coco-eval", str(gt_path), str(gt_path)],
                   f"{gt_path}: looks like a ground-truth annotation file (it has images, annotations, categories)",
                   "coco-eval takes the ground truth first and the results second",
                   "a JSON list of {image_id, category_id, bbox, score} objects")


def test_results_given_as_the_ground_truth_are_called_results(files, capsys):
    """`coco-eval DETS GT` (the files the other way round) said "expected a COCO dict with 'images' and
    'categories', got list"; it now says the first file looks like results and which file goes first."""
    gt_path, dt_path, _, _ = files
    one_line_error(capsys, ["coco-eval", str(dt_path), str(gt_path)],
                   f"{dt_path}: looks like a results file (a list of result objects), not ground truth",
                   "coco-eval takes the ground truth first (a JSON object with images, annotations, categories) and "
                   "the results second")


@pytest.mark.parametrize("as_json", [False, True])
def test_ground_truth_without_objects_is_noted_beside_its_minus_ones(files, capsys, tmp_path, as_json):
    """coco-eval of an image-info file (COCO's image_info_test2017.json, no 'annotations') printed twelve -1s and
    nothing else, as eval notes of a split without objects; it now notes why on stderr."""
    gt_path, dt_path, gt, _ = files
    info = tmp_path / "image_info.json"
    info.write_text(json.dumps({key: value for key, value in gt.items() if key != "annotations"}))
    assert main(["coco-eval", str(info), str(dt_path), *(["--json"] if as_json else [])]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"note: {info} holds no ground-truth objects to score (no annotations, as an image-info "
                            "file, or only crowd regions): every metric is -1, pycocotools' mark for nothing to score\n")
    assert main(["coco-eval", str(gt_path), str(dt_path)]) == 0
    assert capsys.readouterr().err == ""


def test_results_of_only_some_images_are_noted_as_the_others_objects_missed(files, capsys, tmp_path):
    """predict --coco-json on a few test images, then coco-eval against the whole test split's file, gave an mAP
    near 0 without a word: pycocotools counts every object of the images without results as missed. Noted when most
    images with objects have no results (a detector gives results of low scores too)."""
    gt_path, _, gt, dets = files
    with_objects = sorted({a["image_id"] for a in gt["annotations"] if not a.get("iscrowd")})
    covered = {d["image_id"] for d in dets}
    every = dets + [{**dets[0], "image_id": image} for image in with_objects if image not in covered]
    (tmp_path / "every.json").write_text(json.dumps(every))
    assert main(["coco-eval", str(gt_path), str(tmp_path / "every.json")]) == 0
    assert "no results" not in capsys.readouterr().err
    half = [d for d in every if d["image_id"] in with_objects[len(with_objects) // 2:]]  # a detector's misses
    (tmp_path / "half.json").write_text(json.dumps(half))
    assert main(["coco-eval", str(gt_path), str(tmp_path / "half.json")]) == 0
    assert "no results" not in capsys.readouterr().err
    some = [d for d in dets if d["image_id"] in with_objects[:2]]
    (tmp_path / "some.json").write_text(json.dumps(some))
    assert main(["coco-eval", str(gt_path), str(tmp_path / "some.json"), "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # the note stays off stdout
    missing = len(with_objects) - 2
    assert (f"note: {tmp_path / 'some.json'} has no results on {missing} of the {len(with_objects)} images with "
            f"objects in {gt_path}") in captured.err, captured.err
