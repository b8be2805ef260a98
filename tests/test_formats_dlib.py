"""dlib imglab XML reader: boxes as instances and bboxes, part names, ignore, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXTURES, ingest_records
from kpconv.data import formats
from kpconv.errors import AnnotationError

W, H = 40, 30
HEAD = ("<?xml version='1.0' encoding='ISO-8859-1'?>\n"
        "<?xml-stylesheet type='text/xsl' href='image_metadata_stylesheet.xsl'?>\n<dataset>\n<name>faces</name>\n"
        "<images>\n")


def write(tmp_path: Path, images: str) -> Path:
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    p = tmp_path / "faces.xml"
    p.write_text(HEAD + images + "</images>\n</dataset>\n", encoding="iso-8859-1")
    return p


run = ingest_records


def test_detect():
    assert formats.detect([FIXTURES / "dlib" / "training_with_keypoints.xml"]).name == "dlib"
    assert not formats.get("dlib").detect([FIXTURES / "cvat" / "annotations.xml"])


def test_boxes_parts_and_numeric_names(tmp_path):
    xml = ("<image file='a.png'>\n"
           "  <box top='3' left='4' width='20' height='15'>\n"
           "    <part name='10' x='8' y='6'/>\n    <part name='02' x='12' y='9'/>\n    <part name='00' x='4' y='3'/>\n"
           "  </box>\n"
           "  <box top='0' left='0' width='5' height='5'/>\n"                      # a detection box, no parts
           "  <box top='1' left='1' width='5' height='5' ignore='1'><part name='00' x='2' y='2'/></box>\n"
           "  <box top='10' left='20' width='10' height='10'><part name='02' x='24' y='12'/></box>\n"
           "</image>\n")
    result, header, records = run(tmp_path, [write(tmp_path, xml)])
    assert header.keypoints == ["00", "02", "10"]                  # numeric order, names kept
    # dlib's parts are pixel indices: + 0.5 to kpconv's continuous pixels; boxes are unchanged
    assert records[0].keypoints == [[round(4.5 / W, 6), round(3.5 / H, 6), 2], [round(12.5 / W, 6), round(9.5 / H, 6), 2],
                                    [round(8.5 / W, 6), round(6.5 / H, 6), 2]]
    assert records[0].bbox == [0.1, 0.1, 0.5, 0.5]                  # the box
    assert [r.instance for r in records] == ["0", "1"]
    assert result.report.counts == {"crowd": 1}
    assert header.source["boxes_without_parts"] == 1


def test_bad_part_is_located(tmp_path):
    xml = ("<image file='a.png'>\n  <box top='3' left='4' width='20' height='15'><part name='00' x='abc' y='6'/></box>\n"
           "  <box top='3' left='4' width='20' height='15'><part name='00' x='5' y='6'/></box>\n</image>\n")
    result, _, records = run(tmp_path, [write(tmp_path, xml)])
    assert len(records) == 1
    assert str(result.report.first[0]).replace(f"{tmp_path}/", "") == (
        "faces.xml: record image a.png box 0: field '00': part '00': expected numbers x and y, got 'abc', '6'")


def test_no_parts_at_all(tmp_path):
    p = write(tmp_path, "<image file='a.png'><box top='3' left='4' width='20' height='15'/></image>\n")
    with pytest.raises(AnnotationError, match="no <part name=...> in any <box>"):
        run(tmp_path, [p])
