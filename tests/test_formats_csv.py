"""The CSV reader (wide and long tables): detection by header, names and order, "not labelled"
cells, and problems located by line and column."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXTURES
from kpconv.data import formats
from kpconv.errors import AnnotationError
from kpconv.data.formats import csv_table
from kpconv.data.formats.base import IngestOptions, ReadContext
from kpconv.data.ingest import ingest
from kpconv.data.problems import Report


@pytest.fixture
def table(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")

    def write(text, name="labels.csv"):
        p = tmp_path / name
        p.write_text(text)
        return p
    return write


def read(path, **opts):
    report = Report()
    result = csv_table.CsvReader().read([Path(path)], ReadContext(IngestOptions(**opts), report, Path(path).parent))
    return result, list(result.instances), report


# ---------------------------------------------------------------------------------------- detect
@pytest.mark.parametrize("text, ok", [
    ("image,nose_x,nose_y\n", True),
    ("Image,Nose_X,Nose_Y,Nose_V\n", True),
    ("image,instance,keypoint,x,y,visible\n", True),
    ("\ufeffimage,keypoint,x,y\n", True),           # BOM
    ("file,nose_x,nose_y\n", False),               # no image column
    ("image,nose_x\n", False),                     # no pair
    ("image,keypoint,x\n", False),
    ("scorer,alice,alice\nbodyparts,nose,nose\ncoords,x,y\n", False),  # DeepLabCut
    ("", False),
])
def test_detect_by_header(table, text, ok):
    assert csv_table.CsvReader.detect([table(text)]) is ok


def test_detect_does_not_claim_deeplabcut_files():
    dlc = next((FIXTURES / "dlc").rglob("CollectedData_*.csv"))
    assert not csv_table.CsvReader.detect([dlc])
    assert csv_table.CsvReader.detect([FIXTURES / "csv" / "labels.csv"])
    assert formats.detect([FIXTURES / "csv-long" / "labels.csv"]) is csv_table.CsvReader


def test_detect_needs_a_table_file(table, tmp_path):
    assert not csv_table.CsvReader.detect([tmp_path])
    assert not csv_table.CsvReader.detect([table('{"image": 1, "nose_x": 2}\n', "labels.json")])
    assert csv_table.CsvReader.detect([table("image\tnose_x\tnose_y\n", "labels.tsv")])


def test_detect_by_content_whatever_the_extension(table, tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    dat = table("image,nose_x,nose_y\na.png,1,2\n", "labels.dat")
    assert formats.detect([dat]) is csv_table.CsvReader
    tabbed = table("image\tnose_x\tnose_y\na.png\t1\t2\n", "export.txt")    # tabs, no commas: tab-separated
    assert formats.detect([tabbed]) is csv_table.CsvReader
    out = tmp_path / "m.jsonl"
    assert ingest([tabbed], output=str(out)).written == 1


# ------------------------------------------------------------------------------------------ wide
def test_wide_names_order_empty_and_nan(table):
    p = table("image,instance,Nose_x,Nose_y,tail_x,tail_y,tail_v,extra\n"
              "a.png,0,1.5,2,NaN,nan,,note\n"
              "a.png,,3,4,5,6,1,\n"
              "\n"
              "a.png,2,,,7,8,0,\n")
    result, insts, report = read(p)
    assert result.meta.keypoints == ["Nose", "tail"]  # the header's case is kept
    assert [i.keypoints for i in insts] == [{"Nose": (1.5, 2.0, 2)}, {"Nose": (3.0, 4.0, 2), "tail": (5.0, 6.0, 1)},
                                            {}]  # v = 0: not labelled (ingest reports no_keypoints)
    assert [i.instance for i in insts] == ["0", None, "2"]
    assert [i.location.line for i in insts] == [2, 3, 5]
    assert report.count() == 0 and result.extra == {"layout": "wide"}


def test_wide_bbox_group_split_and_size(table):
    p = table("image,bbox_x,bbox_y,bbox_w,bbox_h,nose_x,nose_y,group,split,width,height\n"
              "a.png,1,2,3,4,5,6,g1,val,40,30\n"
              "a.png,,,,,5,6,,,,\n")
    _, insts, _ = read(p)
    assert insts[0].bbox == (1, 2, 3, 4) and insts[0].group == "g1" and insts[0].split == "val"
    assert insts[0].size == (40, 30)
    assert insts[1].bbox is None and insts[1].group is None and insts[1].size is None


def test_wide_keypoints_option_selects_and_orders(table):
    p = table("image,a_x,a_y,b_x,b_y,c_x,c_y\na.png,1,1,2,2,3,3\n")
    result, insts, _ = read(p, keypoints=["c", "a"])
    assert result.meta.keypoints == ["c", "a"] and insts[0].keypoints == {"c": (3, 3, 2), "a": (1, 1, 2)}
    with pytest.raises(AnnotationError, match="--keypoints: 'd' not in the header"):
        read(p, keypoints=["d"])


@pytest.mark.parametrize("header, message", [
    ("image,a_x,a_y,bbox_x,bbox_y\n", "a bbox needs the four columns"),
    ("image,a_x,a_y,b_y\n", "column 'b_y' has no matching 'b_x'"),
    ("image,a_x,a_y,a_x,a_y\n", "column(s) a_x, a_y appear more than once"),
])
def test_wide_bad_header(table, header, message):
    with pytest.raises(AnnotationError) as e:
        read(table(header + "a.png,1,1,1,1\n"))
    assert message in str(e.value) and e.value.location.line == 1


@pytest.mark.parametrize("row, reason, field, message", [
    ("a.png,abc,2", "wrong_type", "nose_x", "expected a number, got 'abc'"),
    ("a.png,inf,2", "bad_coordinate", "nose_x", "expected a finite number, got 'inf'"),
    ("a.png,-Infinity,2", "bad_coordinate", "nose_x", "expected a finite number, got '-Infinity'"),
    ("a.png,1,", "missing_field", "nose_y", "keypoint 'nose' has only one coordinate; expected both nose_x and nose_y, "
                                          "or neither (not labelled)"),
    (",1,2", "missing_field", "image", "empty image path"),
    ("a.png,1,2,3", "malformed_record", None, "expected 3 cells (as in the header), got 4"),
])
def test_wide_located_problems(table, row, reason, field, message):
    p = table(f"image,nose_x,nose_y\na.png,1,1\n{row}\n")
    _, insts, report = read(p)
    assert len(insts) == 1
    (prob,) = report.first
    assert (prob.reason, prob.location.line, prob.location.field) == (reason, 3, None)
    assert str(prob) == f"{p}:3: " + (f"column '{field}': " if field else "") + message


def test_wide_visibility_problems(table):
    p = table("image,nose_x,nose_y,nose_v\na.png,1,1,3\na.png,,,2\n")
    _, insts, report = read(p)
    assert insts == []
    assert [(x.reason, x.location.line, x.message.split(":")[0]) for x in report.first] == [
        ("bad_visibility", 2, "column 'nose_v'"), ("missing_field", 3, "column 'nose_x'")]


def test_malformed_csv_quote(table):
    with pytest.raises(AnnotationError, match=r"labels.csv:3: malformed CSV"):
        read(table('image,nose_x,nose_y\na.png,1,1\n"a.png"x,1,1\n'))


# ------------------------------------------------------------------------------------------ long
def test_long_groups_rows_into_instances(table):
    p = table("image,instance,keypoint,x,y,visible\n"
              "a.png,0,nose,1,2,2\n"
              "a.png,1,nose,3,4,\n"
              "a.png,0,tail,5,6,1\n"
              "a.png,1,tail,nan,NaN,0\n"
              "a.png,1,ear,7,8,2\n")
    result, insts, report = read(p)
    assert result.meta.keypoints == ["nose", "tail", "ear"]  # order of first appearance
    assert [(i.instance, i.keypoints, i.location.line) for i in insts] == [
        ("0", {"nose": (1, 2, 2), "tail": (5, 6, 1)}, 2),
        ("1", {"nose": (3, 4, 2), "ear": (7, 8, 2)}, 3)]
    assert report.count() == 0 and result.extra == {"layout": "long"}


def test_long_without_instance_column(table):
    _, insts, _ = read(table("image,keypoint,x,y\na.png,nose,1,2\na.png,tail,3,4\n"))
    assert len(insts) == 1 and insts[0].instance is None and set(insts[0].keypoints) == {"nose", "tail"}


def test_long_keypoints_option_and_unknown_name(table):
    p = table("image,instance,keypoint,x,y\na.png,0,tail,1,2\na.png,0,nose,3,4\n"
              "a.png,1,nose,1,1\na.png,1,whisker,2,2\n")
    result, insts, report = read(p, keypoints=["nose", "tail"])
    assert result.meta.keypoints == ["nose", "tail"]
    assert [i.instance for i in insts] == ["0"]  # instance 1 had a bad row: skipped whole
    (prob,) = report.first
    assert (prob.reason, prob.location.line) == ("unknown_keypoint", 5)
    assert str(prob) == f"{p}:5: column 'keypoint': keypoint 'whisker' is not one of --keypoints (nose, tail)"


def test_long_duplicate_keypoint(table):
    _, insts, report = read(table("image,keypoint,x,y\na.png,nose,1,2\na.png,nose,3,4\n"))
    assert insts == []
    assert report.first[0].reason == "malformed_record"
    assert "given twice (first at line 2)" in report.first[0].message and report.first[0].location.line == 3


def test_files_must_agree(table):
    a = table("image,nose_x,nose_y\na.png,1,1\n", "a.csv")
    b = table("image,tail_x,tail_y\na.png,1,1\n", "b.csv")
    long = table("image,keypoint,x,y\na.png,nose,1,1\n", "c.csv")
    report = Report()
    reader = csv_table.CsvReader()
    with pytest.raises(AnnotationError, match="differ from those of"):
        reader.read([a, b], ReadContext(IngestOptions(), report, a.parent))
    with pytest.raises(AnnotationError, match="mix the wide and the long layout"):
        reader.read([a, long], ReadContext(IngestOptions(), report, a.parent))
    result = reader.read([a, a], ReadContext(IngestOptions(), report, a.parent))
    assert len(list(result.instances)) == 2
