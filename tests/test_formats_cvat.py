"""CVAT XML reader: skeletons (outside, occluded, edges from the svg), plain points (group_id,
boxes), several skeleton labels, CVAT for video tracks, the images/ layout, subsets, errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXTURES, ingest_records
from kpconv.data import formats
from kpconv.errors import AnnotationError

W, H = 40, 30
META = """<meta><task><id>1</id><name>t</name><labels>
<label><name>cat</name><type>skeleton</type><svg>&lt;line data-type="edge" data-node-from="1" data-node-to="2"&gt;&lt;/line&gt;&lt;circle data-type="element node" data-node-id="1" data-label-name="nose"&gt;&lt;/circle&gt;&lt;circle data-type="element node" data-node-id="2" data-label-name="tail"&gt;&lt;/circle&gt;</svg></label>
<label><name>nose</name><type>points</type><parent>cat</parent></label>
<label><name>tail</name><type>points</type><parent>cat</parent></label>
{more}</labels></task></meta>"""


def xml(body: str, more: str = "") -> str:
    return f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>{META.format(more=more)}{body}</annotations>\n'


def pt(label, xy="10.00,12.00", **attrs):
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<points label="{label}" source="manual" points="{xy}" z_order="0"{extra}></points>'


def write(tmp_path: Path, text: str, images=("a.png",), folder="") -> Path:
    for name in images:
        p = tmp_path / folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(p)
    p = tmp_path / "annotations.xml"
    p.write_text(text)
    return p


run = ingest_records


def test_detect():
    assert formats.detect([FIXTURES / "cvat" / "annotations.xml"]).name == "cvat"
    assert formats.detect([FIXTURES / "cvat"]).name == "cvat"             # the export's folder
    assert not formats.get("cvat").detect([FIXTURES / "dlib" / "training_with_keypoints.xml"])
    assert not formats.get("cvat").detect([FIXTURES / "coco" / "annotations.json"])


def test_skeleton_outside_occluded_and_edges(tmp_path):
    body = ('<image id="0" name="a.png" subset="Train" width="40" height="30">'
            '<skeleton label="cat" source="manual" z_order="0">'
            + pt("nose", "10.00,12.00", outside="0", occluded="1") + pt("tail", "1,1", outside="1", occluded="0")
            + '</skeleton><skeleton label="cat" source="manual" z_order="0">'
            + pt("nose", "20,6", outside="0", occluded="0") + pt("tail", "30,15", outside="0", occluded="0")
            + "</skeleton></image>")
    result, header, records = run(tmp_path, [write(tmp_path, xml(body))])
    assert header.keypoints == ["nose", "tail"] and header.skeleton == [(0, 1)]
    assert header.source["mode"] == "skeleton" and header.source["category"] == "cat"
    assert records[0].keypoints == [[0.25, 0.4, 1], [0.0, 0.0, 0]]     # occluded: v = 1; outside: not labelled
    assert records[1].keypoints == [[0.5, 0.2, 2], [0.75, 0.5, 2]]
    assert [r.instance for r in records] == ["0", "1"] and records[0].split == "train"
    assert records[0].source == {"file": "annotations.xml", "id": "image a.png skeleton 0"}


def test_images_folder_layout_and_stated_size(tmp_path):
    body = ('<image id="0" name="a.png" width="41" height="30"><skeleton label="cat">' + pt("nose", outside="0")
            + "</skeleton></image>")
    result, header, records = run(tmp_path, [write(tmp_path, xml(body), folder="images")])
    assert records[0].image == "images/a.png"
    assert result.report.counts == {"size_mismatch": 1}


def test_several_skeleton_labels(tmp_path):
    more = ('<label><name>dog</name><type>skeleton</type></label>'
            '<label><name>nose</name><type>points</type><parent>dog</parent></label>'
            '<label><name>tail</name><type>points</type><parent>dog</parent></label>')
    body = ('<image id="0" name="a.png"><skeleton label="cat">' + pt("nose", outside="0") + '</skeleton>'
            '<skeleton label="dog">' + pt("tail", "5,5", outside="0") + "</skeleton></image>")
    p = write(tmp_path, xml(body, more))
    result, header, records = run(tmp_path, [p])
    assert [r.category for r in records] == ["cat", "dog"] and result.report.counts == {"several_categories": 1}
    result, _, records = run(tmp_path, [p], category="dog")
    assert [(r.category, r.keypoints[1]) for r in records] == [(None, [0.125, 0.166667, 2])]
    assert result.report.counts == {"other_category": 1}
    with pytest.raises(AnnotationError, match="--category 'cow': no skeleton label, points label or box label of "
                                              "that name; skeleton labels: cat, dog; points labels: none"):
        run(tmp_path, [p], category="cow")
    p.write_text(xml(body, more.replace("<name>tail</name><type>points</type><parent>dog",
                                        "<name>paw</name><type>points</type><parent>dog")))
    with pytest.raises(AnnotationError, match="several skeleton labels with different keypoints: cat, dog; choose"):
        run(tmp_path, [p])


def test_plain_points_group_ids_and_boxes(tmp_path):
    meta = "<meta><task><labels><label><name>tail</name></label><label><name>nose</name></label></labels></task></meta>"
    body = ('<image id="0" name="a.png">' + pt("nose", "4,4", group_id="3") + pt("tail", "8,8", group_id="3")
            + '<box label="cat" xtl="2" ytl="2" xbr="12" ybr="10" group_id="3"></box>'
            + pt("nose", "20,20", group_id="5", occluded="1") + "</image>"
            '<image id="1" name="b.png">' + pt("nose", "4,4") + pt("tail", "8,8") + "</image>")
    text = f'<?xml version="1.0"?><annotations><version>1.1</version>{meta}{body}</annotations>'
    result, header, records = run(tmp_path, [write(tmp_path, text, images=("a.png", "b.png"))])
    assert header.keypoints == ["tail", "nose"] and header.source["mode"] == "points"   # <meta> order
    assert [(r.image, r.instance) for r in records] == [("a.png", "3"), ("a.png", "5"), ("b.png", "0")]
    assert records[0].bbox == [0.05, 0.066667, 0.25, 0.266667]
    assert records[1].keypoints[1] == [0.5, 0.666667, 1]


def test_bad_points_are_located(tmp_path):
    body = ('<image id="0" name="a.png"><skeleton label="cat">' + pt("nose", "10;12", outside="0")
            + '</skeleton><skeleton label="cat">' + pt("nose", outside="0") + pt("nose", outside="0")
            + '</skeleton><skeleton label="cat">' + pt("nose", outside="0") + "</skeleton></image>")
    result, _, records = run(tmp_path, [write(tmp_path, xml(body))])
    assert len(records) == 1
    assert [str(p).replace(f"{tmp_path}/", "") for p in result.report.first] == [
        "annotations.xml: record image a.png skeleton 0: field 'nose': point 'nose': expected points=\"x,y\" "
        "(one point), got '10;12'",
        "annotations.xml: record image a.png skeleton 1: field 'nose': label 'nose' appears twice in one instance: "
        "its points cannot be told apart; give them distinct labels in CVAT (e.g. 'nose_left', 'nose_right') and "
        "read them with --keypoints NAME,..., or leave 'nose' out with --keypoints"]


def test_malformed_xml_stops_with_its_line(tmp_path):
    p = write(tmp_path, '<?xml version="1.0"?>\n<annotations>\n<image name="a.png">\n</annotations>\n')
    with pytest.raises(AnnotationError, match=r"annotations.xml:4: invalid XML: mismatched tag: line 4"):
        run(tmp_path, [p])


def test_video_tracks(tmp_path):
    shutil.copytree(FIXTURES / "cvat-video", tmp_path / "v")
    result, header, records = run(tmp_path, [tmp_path / "v" / "annotations.xml"])
    assert [(r.image, r.instance) for r in records] == [
        ("images/frame_000000.png", "0"), ("images/frame_000001.png", "0"), ("images/frame_000002.png", "0"),
        ("images/frame_000001.png", "1")]      # track 0 outside at frame 3; track 1 outside at frame 2
    assert {r.group for r in records} == {"mouse_cage3.mp4"}
    assert records[1].keypoints[0] == [0.3125, 0.291667, 2]     # the interpolated frame, as CVAT dumps it
    assert not result.report.counts


def test_points_shapes_with_several_points_are_one_instance_each(tmp_path):
    """Face landmarks drawn as one <points> shape of N points: keypoints face_0 .. face_{N-1}."""
    meta = "<meta><task><labels><label><name>face</name><type>points</type></label></labels></task></meta>"
    body = ('<image id="0" name="a.png">' + pt("face", "4,3;8,6;12,9", occluded="0")
            + pt("face", "20,15;24,18", occluded="1") + "</image>")
    text = f'<?xml version="1.0"?><annotations><version>1.1</version>{meta}{body}</annotations>'
    result, header, records = run(tmp_path, [write(tmp_path, text)])
    assert header.keypoints == ["face_0", "face_1", "face_2"]
    assert [r.keypoints for r in records] == [[[0.1, 0.1, 2], [0.2, 0.2, 2], [0.3, 0.3, 2]],
                                              [[0.5, 0.5, 1], [0.6, 0.6, 1], [0.0, 0.0, 0]]]
    assert [r.instance for r in records] == ["0", "1"] and not result.report.counts


POINTS_META = ("<meta><task><labels><label><name>person</name><type>rectangle</type></label>"
               "<label><name>LBlade</name><type>points</type></label><label><name>RBlade</name><type>points</type>"
               "</label></labels></task></meta>")


def box(label, xtl, ytl, xbr, ybr, **attrs):
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<box label="{label}" xtl="{xtl}" ytl="{ytl}" xbr="{xbr}" ybr="{ybr}"{extra}></box>'


def points_doc(body: str, meta: str = POINTS_META) -> str:
    return f'<?xml version="1.0"?><annotations><version>1.1</version>{meta}{body}</annotations>'


def test_points_grouped_by_the_smallest_box_that_holds_them(tmp_path):
    """No group_id: each point goes to the smallest <box> around it, which is the instance's bbox."""
    body = ('<image id="0" name="a.png">' + box("person", 0, 0, 40, 30) + box("person", 20, 10, 30, 20)
            + pt("LBlade", "4,4") + pt("RBlade", "8,8") + pt("LBlade", "22,12") + pt("RBlade", "28,18")
            + "</image>")
    result, header, records = run(tmp_path, [write(tmp_path, points_doc(body))])
    assert header.keypoints == ["LBlade", "RBlade"] and not result.report.counts
    assert [(r.instance, r.keypoints, r.bbox) for r in records] == [
        ("box0", [[0.1, 0.133333, 2], [0.2, 0.266667, 2]], [0.0, 0.0, 1.0, 1.0]),
        ("box1", [[0.55, 0.4, 2], [0.7, 0.6, 2]], [0.5, 0.333333, 0.25, 0.333333])]


def test_points_grouped_by_group_id_pose_grouping(tmp_path):
    body = ('<image id="0" name="a.png">' + pt("LBlade", "4,4", group_id="1") + pt("LBlade", "22,12", group_id="2")
            + pt("RBlade", "8,8", group_id="1") + box("person", 2, 2, 12, 10, group_id="1") + "</image>")
    result, _, records = run(tmp_path, [write(tmp_path, points_doc(body))])
    assert [(r.instance, r.keypoints) for r in records] == [
        ("1", [[0.1, 0.133333, 2], [0.2, 0.266667, 2]]), ("2", [[0.55, 0.4, 2], [0.0, 0.0, 0]])]
    assert records[0].bbox == [0.05, 0.066667, 0.25, 0.266667] and not result.report.counts


def test_a_repeated_label_without_grouping_is_a_clear_error(tmp_path):
    """Two shoulders both labelled 'LBlade', nothing groups them: ambiguous, said so, never a choice."""
    body = ('<image id="0" name="a.png">' + pt("LBlade", "4,4") + pt("LBlade", "22,12") + pt("RBlade", "8,8")
            + '</image><image id="1" name="b.png">' + pt("LBlade", "4,4") + "</image>")
    p = write(tmp_path, points_doc(body), images=("a.png", "b.png"))
    result, _, records = run(tmp_path, [p])
    assert len(records) == 1 and result.report.counts == {"ambiguous_label": 1}
    msg = str(result.report.first[0])
    assert "record image a.png: field 'LBlade': label 'LBlade' appears twice in one instance (points with no " \
           "group_id and in no <box> are one instance per image" in msg
    assert "distinct labels in CVAT (e.g. 'LBlade_left', 'LBlade_right') and read them with --keypoints" in msg
    result, header, records = run(tmp_path, [p], keypoints=["RBlade"])
    assert header.keypoints == ["RBlade"] and [r.image for r in records] == ["a.png"]      # the suggested way out works


def test_skeletons_and_points_in_one_file_are_both_read(tmp_path):
    body = ('<image id="0" name="a.png"><skeleton label="cat">' + pt("nose", "4,4", outside="0")
            + pt("tail", "8,8", outside="0") + "</skeleton>" + box("dog", 20, 10, 30, 20) + pt("paw", "22,12")
            + "</image>")
    more = '<label><name>paw</name><type>points</type></label><label><name>dog</name><type>rectangle</type></label>'
    p = write(tmp_path, xml(body, more))
    result, header, records = run(tmp_path, [p])
    assert header.keypoints == ["nose", "tail", "paw"] and header.source["mode"] == "mixed"
    assert [(r.category, r.keypoints) for r in records] == [
        ("cat", [[0.1, 0.133333, 2], [0.2, 0.266667, 2], [0.0, 0.0, 0]]),
        ("dog", [[0.0, 0.0, 0], [0.0, 0.0, 0], [0.55, 0.4, 2]])]
    assert result.report.counts == {"several_categories": 1}
    for category in ("paw", "dog", "points"):      # --category picks the points by their label or box label
        _, header, records = run(tmp_path, [p], category=category)
        assert header.keypoints == ["paw"] and [r.keypoints for r in records] == [[[0.55, 0.4, 2]]]
    result, header, records = run(tmp_path, [p], category="cat")
    assert header.keypoints == ["nose", "tail"] and len(records) == 1
    assert result.report.counts == {"other_category": 1}       # the points not read: counted, located
    assert str(result.report.first[0]).endswith("annotations.xml: record image 0: 1 plain <points> shape(s) not "
                                                "read: the chosen category is a skeleton (choose them with "
                                                "--category points)")
    result, _, _ = run(tmp_path, [p], category="points")
    assert result.report.counts == {"other_category": 1}
    assert str(result.report.first[0]).endswith("record image a.png skeleton 0: skeleton 'cat' is not the chosen "
                                                "category")


def test_ungrouped_points_beside_groups_get_an_id_of_their_own(tmp_path):
    """group_id 0 and the image's ungrouped points: two instances, not a duplicate instance '0'."""
    body = ('<image id="0" name="a.png">' + pt("LBlade", "4,4", group_id="0") + pt("RBlade", "8,8", group_id="0")
            + pt("LBlade", "22,12") + "</image>")
    result, _, records = run(tmp_path, [write(tmp_path, points_doc(body))])
    assert [r.instance for r in records] == ["0", "ungrouped"] and not result.report.counts
