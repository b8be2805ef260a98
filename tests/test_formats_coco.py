"""The COCO keypoints reader: detection, categories, splits, located problems (each required field
removed in turn), and the file-level errors."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXTURES
from kpconv.data import formats
from kpconv.errors import AnnotationError, FormatDetectionError, Location, NothingToWrite
from kpconv.data.formats import coco
from kpconv.data.formats.base import DenseRows, IngestOptions, ReadContext
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest
from kpconv.data.problems import Report

NAMES = ["nose", "left_eye", "right_eye"]


def doc(**over):
    d = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                    {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
         "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0,
                          "keypoints": [4, 5, 2, 8, 3, 2, 0, 0, 0], "bbox": [4, 3, 4, 2]},
                         {"id": 11, "image_id": 2, "category_id": 1, "iscrowd": 0,
                          "keypoints": [20, 10, 2, 24, 8, 1, 16, 8, 2], "num_keypoints": 3}],
         "categories": [{"id": 1, "name": "person", "keypoints": NAMES, "skeleton": [[1, 2], [1, 3]]}]}
    d.update(over)
    return d


@pytest.fixture
def dataset(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / name)

    def write(d, name="annotations.json"):
        p = tmp_path / name
        p.write_text(json.dumps(d))
        return p
    return write


def read_result(path, **opts):
    return coco.CocoReader().read([Path(path)], ReadContext(IngestOptions(**opts), Report(), Path(path).parent))


def read(paths, **opts):
    report = Report()
    ctx = ReadContext(IngestOptions(**opts), report, Path(paths[0]).parent)
    result = coco.CocoReader().read([Path(p) for p in paths], ctx)
    insts = []      # (DenseRows blocks row by row)
    for item in result.instances:
        insts.extend([item.row(i, result.meta.keypoints) for i in range(len(item))] if isinstance(item, DenseRows)
                     else [item])
    return result, insts, report


# ---------------------------------------------------------------------------------------- detect
def test_detect_by_content(dataset, tmp_path):
    assert coco.CocoReader.detect([dataset(doc())])
    assert formats.detect([dataset(doc())]) is coco.CocoReader
    assert not coco.CocoReader.detect([dataset({"images": [], "annotations": []}, "other.json")])
    # no keypoint names, but annotations with keypoints (face landmark sets): COCO too
    assert coco.CocoReader.detect([dataset(doc(categories=[{"id": 1, "name": "cat"}]), "nokp.json")])
    assert not coco.CocoReader.detect([dataset(doc(categories=[{"id": 1, "name": "cat"}], annotations=[]),
                                               "nothing.json")])
    (tmp_path / "broken.json").write_text('{"annotations": [')
    assert not coco.CocoReader.detect([tmp_path / "broken.json"])
    (tmp_path / "a.txt").write_text(json.dumps(doc()))
    assert coco.CocoReader.detect([tmp_path / "a.txt"])  # by content, whatever the extension
    assert not coco.CocoReader.detect([FIXTURES / "kpconv-json" / "annotations.json"])
    assert not coco.CocoReader.detect([FIXTURES / "labelme" / "img001.json"])


def test_detect_big_file_by_scanning(dataset, monkeypatch):
    monkeypatch.setattr(coco, "_DETECT_PARSE_LIMIT", 10)  # force the scan path
    # categories last, after a long annotations list: the scan reads past the first chunk
    d = doc()
    d["annotations"] = d["annotations"] * 20000
    big = {"images": d["images"], "annotations": d["annotations"], "categories": d["categories"]}
    p = dataset(big)
    assert p.stat().st_size > (1 << 16)
    assert coco.CocoReader.detect([p])
    assert not coco.CocoReader.detect([dataset({"images": [], "annotations": d["annotations"]}, "x.json")])
    assert not coco.CocoReader.detect([FIXTURES / "kpconv-json" / "annotations.json"])


@pytest.mark.parametrize("name, split", [("person_keypoints_train2017.json", "train"), ("val.json", "val"),
                                         ("x_valid.json", "val"), ("minival.json", "val"),
                                         ("coco-test-dev.json", "test"), ("annotations.json", None),
                                         ("trainval.json", None)])
def test_split_from_file_name(name, split):
    assert coco.split_from_name(Path(name)) == split


# ------------------------------------------------------------------------------------------ read
def test_reads_pixels_skeleton_and_sizes(dataset):
    path = dataset(doc())
    result, insts, report = read([path])
    assert result.meta.keypoints == NAMES
    assert result.meta.skeleton == [(0, 1), (0, 2)]  # 1-based in COCO, 0-based here
    assert [i.image for i in insts] == ["a.png", "b.png"]
    assert insts[0].keypoints == {"nose": (4, 5, 2), "left_eye": (8, 3, 2)}  # v = 0: not labelled
    assert insts[1].keypoints["left_eye"] == (24, 8, 1)
    assert insts[0].location == Location(str(path), record="10")
    blocks = list(read_result(path).instances)       # in blocks: the flat lists as they are
    assert len(blocks) == 1 and isinstance(blocks[0], DenseRows) and blocks[0].image == ["a.png", "b.png"]
    assert blocks[0].keypoints[0] == [4, 5, 2, 8, 3, 2, 0, 0, 0] and blocks[0].record == ["10", "11"]
    assert insts[0].bbox == [4, 3, 4, 2] and insts[1].bbox is None
    assert insts[0].size == (40, 30) and insts[0].instance is None and insts[0].split is None
    assert insts[0].location.record == "10"
    assert report.count() == 0


def test_crowd_other_category_and_no_keypoints(dataset, tmp_path):
    d = doc()
    d["categories"].append({"id": 2, "name": "ball"})
    d["annotations"] += [{**d["annotations"][0], "id": 12, "iscrowd": 1},
                         {**d["annotations"][0], "id": 13, "category_id": 2},
                         {**d["annotations"][0], "id": 14, "keypoints": [0] * 9}]
    out = tmp_path / "m.jsonl"
    result = ingest([dataset(d)], output=str(out))
    assert result.written == 2
    assert dict(result.report.counts) == {"crowd": 1, "other_category": 1, "no_keypoints": 1}
    assert not result.report.fails_strict


def test_category_choice(dataset):
    d = doc()
    d["categories"].append({"id": 7, "name": "paw", "keypoints": ["toe"], "skeleton": []})
    d["annotations"].append({"id": 20, "image_id": 1, "category_id": 7, "keypoints": [3, 3, 2]})
    p = dataset(d)
    with pytest.raises(AnnotationError, match=r"several categories have keypoints: 1 \('person'\), 7 \('paw'\)"):
        read([p])
    for chosen in ("paw", "7"):
        result, insts, report = read([p], category=chosen)
        assert result.meta.keypoints == ["toe"] and len(insts) == 1 and report.counts["other_category"] == 2
    with pytest.raises(AnnotationError, match="--category 'dog': no category"):
        read([p], category="dog")
    d["categories"].append({"id": 8, "name": "ball"})
    with pytest.raises(AnnotationError, match="category 8 \\('ball'\\) has no keypoints"):
        read([dataset(d)], category="ball")


def test_several_files_train_val(dataset):
    d = doc()
    train = dataset({**d, "annotations": d["annotations"][:1]}, "person_keypoints_train2017.json")
    val = dataset({**d, "annotations": d["annotations"][1:]}, "person_keypoints_val2017.json")
    result, insts, _ = read([train, val])
    assert [i.split for i in insts] == ["train", "val"]
    assert result.source_files == [str(train), str(val)]
    other = copy.deepcopy(d)
    other["categories"][0]["keypoints"] = ["nose", "right_eye", "left_eye"]
    with pytest.raises(AnnotationError) as e:
        read([train, dataset(other, "val.json")])
    assert "person_keypoints_train2017.json" in str(e.value) and "val.json" in str(e.value)


def test_keypoints_option_selects_a_subset(dataset, tmp_path):
    out = tmp_path / "m.jsonl"
    ingest([dataset(doc())], output=str(out), options=IngestOptions(keypoints=["left_eye", "nose"]))
    header, recs = read_manifest(str(out))
    assert header.keypoints == ["left_eye", "nose"] and header.skeleton == [(1, 0)]  # nose-left_eye, renumbered
    # COCO keypoints are pixel indices: + 0.5 to kpconv's continuous pixels (40x30 image)
    assert recs[0].keypoints == [[round(8.5 / 40, 6), round(3.5 / 30, 6), 2], [round(4.5 / 40, 6), round(5.5 / 30, 6), 2]]
    with pytest.raises(AnnotationError, match="'tail' not among the COCO keypoint names"):
        read([dataset(doc())], keypoints=["tail"])


# ------------------------------------------------------------------------------ located problems
@pytest.mark.parametrize("field, value, reason, message", [
    ("keypoints", None, "missing_field", "annotation has no keypoints"),
    ("image_id", None, "missing_field", "annotation has no image_id"),
    ("category_id", None, "missing_field", "annotation has no category_id"),
    ("keypoints", [1, 2, 2], "wrong_type", "expected a flat list of 9 numbers [x, y, v] * 3, got a list of 3"),
    ("keypoints", "1,2,2", "wrong_type", "got str"),
    ("keypoints", [1, 2, 2, 3, "4", 2, 0, 0, 0], "wrong_type", "got a non-number '4'"),
    ("keypoints", [1, 2, True, 3, 4, 2, 0, 0, 0], "wrong_type", "got a non-number True"),
    ("image_id", 99, "malformed_record", "image_id 99 is not in images[]"),
    ("image_id", [1], "malformed_record", "image_id [1] is not in images[]"),
])
def test_located_record_problems(dataset, field, value, reason, message):
    d = doc()
    if value is None:
        del d["annotations"][0][field]
    else:
        d["annotations"][0][field] = value
    _, insts, report = read([dataset(d)])
    assert len(insts) == 1  # the other annotation is still read
    (p,) = report.first
    assert p.reason == reason and message in p.message
    assert p.location.record == "10" and p.location.field == field
    assert str(p).startswith(f"{dataset(d)}: record 10: field '{field}': ")


@pytest.mark.parametrize("change, reason, field", [
    (lambda im: im.pop("file_name"), "missing_field", "file_name"),
    (lambda im: im.update(file_name=5), "wrong_type", "file_name"),
    (lambda im: im.update(width="40"), "wrong_type", "width"),
])
def test_bad_image_entry(dataset, change, reason, field):
    d = doc()
    change(d["images"][0])
    _, insts, report = read([dataset(d)])
    assert [i.image for i in insts] == ["b.png"]
    assert report.first[0].reason == reason and report.first[0].location.field == field
    assert report.first[0].location.record == "image 1"
    assert report.first[1].reason == "malformed_record"  # its annotation is skipped, and says why


def test_image_without_stated_size(dataset):
    d = doc()
    del d["images"][0]["width"], d["images"][0]["height"]
    _, insts, _ = read([dataset(d)])
    assert insts[0].size is None


# ----------------------------------------------------------------------------------- file errors
def test_malformed_json_has_line_and_column(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"images": [],\n "annotations": [}\n')
    with pytest.raises(AnnotationError) as e:
        read([p])
    assert e.value.location.line == 2
    assert str(e.value).startswith(f"{p}:2: invalid JSON: ") and "column 18" in str(e.value)


@pytest.mark.parametrize("drop", ["images", "annotations", "categories"])
def test_missing_top_level_field(dataset, drop):
    d = doc()
    del d[drop]
    with pytest.raises(AnnotationError, match=f"field '{drop}': missing top-level field"):
        read([dataset(d)])


def test_wrong_top_level_types(dataset, tmp_path):
    with pytest.raises(AnnotationError, match="field 'annotations': expected a list, got dict"):
        read([dataset(doc(annotations={}))])
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(AnnotationError, match="expected a JSON object"):
        read([tmp_path / "list.json"])


# ------------------------------------------------------------------------- COCO as real files bend it
def _cat(**kw):
    return {"id": 1, "name": "person", "keypoints": NAMES, **kw}


@pytest.mark.parametrize("skeleton, pairs, problems", [
    ([[1, 2], [1, 3]], [(0, 1), (0, 2)], {}),
    ([[0, 1], [0, 2]], [(0, 1), (0, 2)], {"skeleton_0_based": 1}),            # 0-based: a 0, no K
    ([[1, 2], [16, 17], [3, 1]], [(0, 1), (2, 0)], {"bad_skeleton": 1}),      # a COCO skeleton on K = 3
    ([[1, 2], "x", [1]], [(0, 1)], {"bad_skeleton": 1}),
    ("1-2", [], {"bad_skeleton": 1}),
])
def test_skeleton_never_fails_the_file(dataset, skeleton, pairs, problems):
    result, insts, report = read([dataset(doc(categories=[_cat(skeleton=skeleton)]))])
    assert result.meta.skeleton == pairs and len(insts) == 2
    assert dict(report.counts) == problems
    if "bad_skeleton" in problems:
        assert "field 'skeleton'" in str(report.first[0]) and "dropped skeleton edge" in str(report.first[0]) \
            or "skeleton ignored" in str(report.first[0])


def test_bad_skeleton_message_names_the_edges(dataset):
    _, _, report = read([dataset(doc(categories=[_cat(skeleton=[[1, 2], [16, 17]])]))])
    assert str(report.first[0]) == ("annotations.json: record category 1: field 'skeleton': dropped skeleton "
                                    "edge(s) [16, 17]: expected [i, j] with 1 <= i, j <= 3").replace(
        "annotations.json", str(report.first[0].location.file))


def test_categories_sharing_keypoints_are_read_together(dataset, tmp_path):
    d = doc(categories=[_cat(id=1, name="dog"), _cat(id=2, name="cat"), {"id": 3, "name": "ball"}])
    d["annotations"][1]["category_id"] = 2
    result, insts, report = read([dataset(d)])
    assert [i.category for i in insts] == ["dog", "cat"]
    assert report.counts["several_categories"] == 1 and not report.fails_strict
    assert result.extra["category"] == ["dog", "cat"]
    # through ingest: the records carry the category, and --category still selects one
    out = tmp_path / "m.jsonl"
    ingest([dataset(d)], output=str(out))
    recs = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert [r["category"] for r in recs] == ["dog", "cat"]
    result, insts, report = read([dataset(d)], category="cat")
    assert [i.category for i in insts] == [None] and report.counts["other_category"] == 1
    # one category: no category field on the records (as before)
    ingest([dataset(doc())], output=str(out))
    assert all("category" not in json.loads(x) for x in out.read_text().splitlines()[1:])


def test_categories_with_different_keypoints_ask(dataset):
    d = doc(categories=[_cat(id=1, name="dog"), _cat(id=2, name="cat"), _cat(id=3, name="hand", keypoints=["a"])])
    with pytest.raises(AnnotationError, match=r"categories have different keypoint lists: 1 \('dog'\), 2 \('cat'\) "
                                              r"\(3 keypoints\); 3 \('hand'\) \(1 keypoints\); choose one"):
        read([dataset(d)])


def test_no_keypoint_names_generated_from_the_annotations(dataset):
    d = doc(categories=[{"id": 1, "name": "face"}])
    result, insts, report = read([dataset(d)])
    assert result.meta.keypoints == ["kp0", "kp1", "kp2"] and len(insts) == 2
    assert report.counts == {"generated_names": 1}
    assert "named kp0..kp2 from the annotations' 3 points" in str(report.first[0])
    # --keypoints names every point
    result, insts, report = read([dataset(d)], keypoints=["nose", "left_eye", "right_eye"])
    assert result.meta.keypoints == ["nose", "left_eye", "right_eye"] and not report.counts
    assert insts[1].keypoints["left_eye"] == (24, 8, 1)


@pytest.mark.parametrize("nested", [
    [[4, 5, 2], [8, 3, 2], [0, 0, 0]],
    [[4, 5], [8, 3], [0, 0]],            # [x, y]: (0, 0) is not labelled, the others visible
])
def test_nested_keypoints(dataset, nested):
    d = doc()
    d["annotations"][0]["keypoints"] = nested
    d["annotations"][1]["keypoints"] = [[1, 2, 2]]
    result, insts, report = read([dataset(d)])
    assert len(insts) == 1 and insts[0].keypoints == {"nose": (4, 5, 2), "left_eye": (8, 3, 2)}
    assert str(report.first[0]).endswith("record 11: field 'keypoints': expected 3 points [[x, y, v], ...] or "
                                         "[[x, y], ...], got a nested list of 1 points")


def test_folder_source_and_explicit_format(dataset, tmp_path):
    dataset(doc())
    result, insts, _ = read([tmp_path])
    assert len(insts) == 2
    with pytest.raises(FormatDetectionError):
        formats.get("cocoa")


def test_every_record_skipped(dataset, tmp_path):
    d = doc()
    for a in d["annotations"]:
        a["iscrowd"] = 1
    with pytest.raises(NothingToWrite):
        ingest([dataset(d)], output=str(tmp_path / "m.jsonl"))
    assert not (tmp_path / "m.jsonl").exists()


def test_several_categories_sharing_a_0_based_skeleton(dataset):
    """A 0-based skeleton shared by several categories (AP-10K style): noted and converted, and every
    record of every category read (none skipped)."""
    cats = [{"id": i, "name": n, "keypoints": NAMES, "skeleton": [[0, 1], [0, 2]]} for i, n in ((0, "cat"), (1, "dog"))]
    anns = [{"id": 10, "image_id": 1, "category_id": 0, "keypoints": [4, 5, 2, 8, 3, 2, 0, 0, 0]},
            {"id": 11, "image_id": 2, "category_id": 1, "keypoints": [20, 10, 2, 24, 8, 1, 16, 8, 2]}]
    p = dataset(doc(categories=cats, annotations=anns))
    result, insts, report = read([p])
    assert result.meta.skeleton == [(0, 1), (0, 2)]
    assert [(i.category, i.image) for i in insts] == [("cat", "a.png"), ("dog", "b.png")]
    assert report.counts == {"skeleton_0_based": 1, "several_categories": 1} and report.skipped == 0
    for name, image in (("dog", "b.png"), ("1", "b.png"), ("cat", "a.png")):
        result, insts, report = read([p], category=name)
        assert result.meta.skeleton == [(0, 1), (0, 2)] and [i.image for i in insts] == [image]
        assert report.counts == {"skeleton_0_based": 1, "other_category": 1}


def test_an_image_id_given_twice_is_reported_not_chosen(dataset):
    d = doc()
    d["images"].append({"id": 1, "file_name": "b.png", "width": 40, "height": 30})
    _, insts, report = read([dataset(d)])
    assert [i.image for i in insts] == ["b.png"] and report.counts == {"duplicate_image_id": 1, "malformed_record": 1}
    assert str(report.first[0]).endswith("record image 1: field 'id': image id 1 is given twice in images[] ('a.png' "
                                         "and 'b.png'); its annotations are skipped: they could belong to either")
    d = doc()
    d["images"].append(dict(d["images"][0]))        # the same entry twice: nothing to choose
    _, insts, report = read([dataset(d)])
    assert len(insts) == 2 and not report.counts


def test_duplicate_annotations_are_reported(dataset):
    d = doc()
    d["annotations"].append(dict(d["annotations"][0]))                        # the same id again
    d["annotations"].append({**d["annotations"][1], "id": 12})                # the same keypoints, another id
    d["annotations"].append({**d["annotations"][1], "id": 13, "keypoints": [0] * 9})   # nothing labelled: kept
    _, insts, report = read([dataset(d)])
    assert len(insts) == 3 and report.counts == {"duplicate_annotation": 2}
    assert [str(p).split(": ", 1)[1] for p in report.first] == [
        "record annotations[2]: field 'id': annotation id 10 is given twice; keeping the first",
        "record 12: field 'keypoints': the same keypoints on image b.png as an earlier annotation; keeping the first"]


def test_an_image_in_two_split_files_is_reported(dataset):
    d = doc()
    train = dataset(d, "person_keypoints_train.json")
    val = dataset({**d, "annotations": [{**d["annotations"][0], "id": 20, "keypoints": [5, 5, 2, 0, 0, 0, 0, 0, 0]}]},
                  "person_keypoints_val.json")
    _, insts, report = read([train, val])
    assert [(i.image, i.split) for i in insts] == [("a.png", "train"), ("b.png", "train")]
    assert report.counts == {"image_in_two_splits": 1} and report.skipped == 1
    assert str(report.first[0]).endswith(f"person_keypoints_val.json: record 20: field 'image_id': image a.png is in "
                                         f"split 'train' ({train}) and again in 'val'; keeping it in 'train': this "
                                         "annotation is skipped")


def test_a_size_stated_turned_by_90_degrees_is_an_error_naming_the_file(dataset, tmp_path):
    """A rotated phone photo: the annotation says 30x40, the file (EXIF applied) is 40x30."""
    d = doc()
    d["images"][0].update(width=30, height=40)
    result = ingest([str(dataset(d))], output=str(tmp_path / "m.jsonl"))
    assert result.report.counts == {"size_swapped": 1} and result.written == 1
    assert str(result.report.first[0]).endswith(
        "record 10: field 'image': annotation states 30x40 but image a.png is 40x30 (EXIF orientation applied): the "
        "annotation was made on the image turned by 90 degrees, its coordinates cannot be placed on this one; rotate "
        "the image file (or its EXIF orientation) to match the annotation")


@pytest.mark.parametrize("x, counts", [(40.4, {"clamped": 1}), (41.0, {"out_of_image": 1})])
def test_the_clamping_tolerance_is_one_pixel_whatever_the_image_size(dataset, tmp_path, x, counts):
    """1 px, not 1 % of the size (40 px on a 4000-px photo). (COCO's x is a pixel index: 40.4 is 40.9 px,
    41.0 is 41.5 px in kpconv's continuous pixels of this 40-px-wide image.)"""
    d = doc()
    d["annotations"][1]["keypoints"][0] = x
    result = ingest([str(dataset(d))], output=str(tmp_path / "m.jsonl"))
    assert result.report.counts == counts
