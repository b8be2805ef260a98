"""DeepLabCut reader: single- and multi-animal CSVs, index layouts, project folders, errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from kpconv.data import formats
from kpconv.errors import AnnotationError
from kpconv.data.formats.base import IngestOptions
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest

W, H = 64, 48

SINGLE = """scorer,alice,alice,alice,alice,alice,alice
bodyparts,snout,snout,left_ear,left_ear,right_ear,right_ear
coords,x,y,x,y,x,y
labeled-data/video1/img001.png,32,24,10.5,8,50,8
labeled-data/video1/img002.png,16,12,,,40,NaN
"""

# three index columns, as newer DeepLabCut versions write
SINGLE_3INDEX = """scorer,,,alice,alice,alice,alice,alice,alice
bodyparts,,,snout,snout,left_ear,left_ear,right_ear,right_ear
coords,,,x,y,x,y,x,y
labeled-data,video1,img001.png,32,24,10.5,8,50,8
labeled-data,video1,img002.png,16,12,,,40,NaN
"""

MULTI = """scorer,bob,bob,bob,bob,bob,bob,bob,bob
individuals,mouse1,mouse1,mouse1,mouse1,mouse2,mouse2,mouse2,mouse2
bodyparts,snout,snout,tail,tail,snout,snout,tail,tail
coords,x,y,x,y,x,y,x,y
labeled-data/video2/f0.png,1,2,3,4,,,,
labeled-data/video2/f1.png,5,6,7,8,9,10,11,12
"""


def project(tmp_path: Path, csvs: dict, config: str = None) -> Path:
    root = tmp_path / "proj"
    for rel, text in csvs.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        for video, frame in re.findall(r"labeled-data[/,]([^,/]+)[/,]([^,]+\.png)", text):
            full = root / "labeled-data" / video / frame
            if not full.exists():
                full.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (W, H)).save(full)
    if config is not None:
        (root / "config.yaml").write_text(config, encoding="utf-8")
    return root


def run(tmp_path, sources, **kw):
    out = tmp_path / "out.jsonl"
    result = ingest([str(s) for s in sources], output=str(out), fmt=kw.pop("fmt", "dlc"), **kw)
    header, records = read_manifest(str(out))
    return result, header, records


def approx(kps):
    return [[round(x, 4), round(y, 4), v] for x, y, v in kps]


@pytest.mark.parametrize("text", [SINGLE, SINGLE_3INDEX], ids=["one-index-column", "three-index-columns"])
def test_single_animal(tmp_path, text):
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": text})
    csv = root / "labeled-data/video1/CollectedData_alice.csv"
    result, header, records = run(tmp_path, [csv])
    assert header.keypoints == ["snout", "left_ear", "right_ear"]
    assert header.images_root == root.as_posix()  # default: the project folder
    assert header.source["scorer"] == "alice" and header.source["multi_animal"] is False
    assert header.flip_pairs == [(1, 2)]
    assert [r.image for r in records] == ["labeled-data/video1/img001.png"]
    r = records[0]
    # DeepLabCut's pixel centres are at integer coordinates: + 0.5 to kpconv's continuous pixels
    assert approx(r.keypoints) == [[round(32.5 / W, 4), round(24.5 / H, 4), 2], [round(11 / W, 4), round(8.5 / H, 4), 2],
                                   [round(50.5 / W, 4), round(8.5 / H, 4), 2]]
    assert r.group == "video1" and r.instance == "0"
    assert r.source == {"file": "labeled-data/video1/CollectedData_alice.csv", "line": 4}
    # img002: right_ear has x but its y is NaN -> a labelled point with a bad coordinate, record skipped
    assert result.report.counts == {"bad_coordinate": 1}
    p = result.report.first[0]
    assert p.location.line == 5 and p.location.field == "right_ear"


def test_empty_cells_are_unlabelled(tmp_path):
    text = SINGLE.replace("40,NaN", ",")
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": text})
    _, _, records = run(tmp_path, [root])
    assert len(records) == 2
    assert records[1].keypoints[1] == [0.0, 0.0, 0] and records[1].keypoints[2] == [0.0, 0.0, 0]
    assert records[1].keypoints[0][2] == 2


def test_multi_animal_instances_are_individuals(tmp_path):
    root = project(tmp_path, {"labeled-data/video2/CollectedData_bob.csv": MULTI})
    result, header, records = run(tmp_path, [root])
    assert header.keypoints == ["snout", "tail"]
    assert header.source["multi_animal"] is True
    assert [(r.image.rsplit("/", 1)[1], r.instance) for r in records] == [
        ("f0.png", "mouse1"), ("f1.png", "mouse1"), ("f1.png", "mouse2")]
    # mouse2 in f0 has no labelled point: counted as a note, not written
    assert result.report.counts == {"no_keypoints": 1}
    assert approx(records[2].keypoints) == [[round(9.5 / W, 4), round(10.5 / H, 4), 2],
                                            [round(11.5 / W, 4), round(12.5 / H, 4), 2]]


def test_project_folder_several_videos_and_skeleton(tmp_path):
    other = SINGLE.replace("video1", "video3").replace("alice", "carol")
    root = project(tmp_path, {"labeled-data/video3/CollectedData_carol.csv": other,
                              "labeled-data/video1/CollectedData_alice.csv": SINGLE.replace("40,NaN", "40,9")},
                   config="Task: t\nskeleton:\n- - snout\n  - left_ear\n- [snout, right_ear]\n- [snout, nope]\n")
    result, header, records = run(tmp_path, [root], fmt="auto")
    assert result.format == "dlc"
    assert header.skeleton == [(0, 1), (0, 2)]
    assert header.source["files"] == ["labeled-data/video1/CollectedData_alice.csv",
                                      "labeled-data/video3/CollectedData_carol.csv", "config.yaml"]
    assert header.source["scorer"] == ["alice", "carol"]
    assert [(r.group, r.image.rsplit("/", 1)[1]) for r in records] == [
        ("video1", "img001.png"), ("video1", "img002.png"), ("video3", "img001.png")]


def test_several_csvs_as_a_glob(tmp_path):
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": SINGLE,
                              "labeled-data/video3/CollectedData_alice.csv": SINGLE.replace("video1", "video3")})
    csvs = sorted(root.glob("labeled-data/*/CollectedData_*.csv"))
    _, header, records = run(tmp_path, csvs, fmt="auto")
    assert header.images_root == root.as_posix()
    assert {r.group for r in records} == {"video1", "video3"}


def test_inconsistent_headers_between_csvs(tmp_path):
    other = SINGLE.replace("right_ear", "tail").replace("video1", "video3")
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": SINGLE,
                              "labeled-data/video3/CollectedData_alice.csv": other})
    with pytest.raises(AnnotationError) as e:
        run(tmp_path, [root])
    assert "video3/CollectedData_alice.csv:3" in str(e.value)
    assert "header differs" in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_not_a_number_is_located(tmp_path):
    text = SINGLE.replace("10.5,8", "abc,8").replace("40,NaN", "40,9")
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": text})
    result, _, records = run(tmp_path, [root])
    assert [str(p) for p in result.report.first] == [
        f"{root / 'labeled-data/video1/CollectedData_alice.csv'}:4: column 'left_ear x': expected a number, got 'abc'"]
    assert [r.source["line"] for r in records] == [5]


@pytest.mark.parametrize("bad, where", [
    ("scorer,a,a\ncoords,x,y\nimg.png,1,2\n", ":1"),
    ("scorer,a,a\nbodyparts,p,p\ncoords,x,z\nimg.png,1,2\n", ":3"),
    ("scorer,a,a,a\nbodyparts,p,p,q\ncoords,x,y,x\nimg.png,1,2,3\n", ":3"),
])
def test_bad_headers(tmp_path, bad, where):
    p = tmp_path / "proj/labeled-data/v/CollectedData_a.csv"
    p.parent.mkdir(parents=True)
    p.write_text(bad)
    with pytest.raises(AnnotationError) as e:
        run(tmp_path, [p])
    assert f"CollectedData_a.csv{where}:" in str(e.value)


def test_keypoints_option_selects_a_subset(tmp_path):
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": SINGLE})
    # right_ear (NaN y in img002) is not selected, so img002 is no longer reported
    result, header, records = run(tmp_path, [root], options=IngestOptions(keypoints=["left_ear", "snout"]))
    assert header.keypoints == ["left_ear", "snout"]
    assert result.report.counts == {}
    assert [r.keypoints[0][2] for r in records] == [2, 0]
    assert approx(records[1].keypoints)[1] == [round(16.5 / W, 4), round(12.5 / H, 4), 2]


def test_detect_is_by_content(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("image,nose_x,nose_y\na.png,1,2\n")
    assert not formats.get("dlc").detect([p])
    q = tmp_path / "whatever.csv"
    q.write_text(SINGLE)
    assert formats.get("dlc").detect([q])
    assert formats.detect([q]).name == "dlc"
    assert not formats.get("dlc").detect([tmp_path])  # a folder without labeled-data


def test_nan_pairs_are_unlabelled_and_a_row_without_points_is_a_note(tmp_path):
    text = SINGLE.replace("16,12", "nan,NaN").replace("40,NaN", "NaN,")
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": text})
    result, _, records = run(tmp_path, [root])
    assert [r.source["line"] for r in records] == [4]
    assert result.report.counts == {"no_keypoints": 1}


def test_repeated_frame_row_is_a_duplicate(tmp_path):
    text = SINGLE.replace("40,NaN", "40,9") + "labeled-data/video1/img001.png,1,1,2,2,3,3\n"
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": text})
    result, _, records = run(tmp_path, [root])
    assert [r.source["line"] for r in records] == [4, 5]
    assert result.report.counts == {"duplicate_instance": 1}
    assert result.report.first[0].location.line == 6


def test_likelihood_columns_and_backslash_paths(tmp_path):
    text = ("scorer,alice,alice,alice,alice,alice,alice\n"
            "bodyparts,snout,snout,snout,tail,tail,tail\n"
            "coords,x,y,likelihood,x,y,likelihood\n"
            "labeled-data\\video1\\img001.png,32,24,0.9,8,12,0.1\n")
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": text})
    Image.new("L", (W, H)).save(root / "labeled-data/video1/img001.png")
    _, header, records = run(tmp_path, [root])
    assert header.keypoints == ["snout", "tail"]
    assert [(r.image, r.group) for r in records] == [("labeled-data/video1/img001.png", "video1")]
    assert records[0].keypoints == [[round(32.5 / W, 6), round(24.5 / H, 6), 2], [round(8.5 / W, 6), round(12.5 / H, 6), 2]]


def test_project_without_tables(tmp_path):
    (tmp_path / "proj/labeled-data/v").mkdir(parents=True)
    with pytest.raises(AnnotationError, match="no labeled-data/.*CollectedData.*found in this folder"):
        run(tmp_path, [tmp_path / "proj"])
    (tmp_path / "proj/labeled-data/v/CollectedData_a.h5").write_bytes(b"\x89HDF\r\n\x1a\nnot really")
    with pytest.raises(AnnotationError, match=r"CollectedData_a.h5: cannot read as a pandas HDF5 table"):
        run(tmp_path, [tmp_path / "proj"])


# ------------------------------------------------------- tables wherever they sit, and the .h5 twin
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_top_level_table_finds_its_images_root(tmp_path):
    """lightning-pose layout: project/CollectedData.csv with paths labeled-data/imgNN.png."""
    import shutil

    root = tmp_path / "lp"
    shutil.copytree(FIXTURES / "dlc-top", root)
    for src in (root, root / "CollectedData.csv"):
        result, header, records = run(tmp_path, [src], fmt="auto")
        assert result.format == "dlc" and len(records) == 3
        assert header.images_root == root.as_posix()
        assert records[0].image == "labeled-data/img002.png" and records[0].group is None
    # a CSV named .dat is found by its content
    (root / "CollectedData.csv").rename(root / "labels.dat")
    result, header, records = run(tmp_path, [root / "labels.dat"], fmt="auto")
    assert result.format == "dlc" and len(records) == 3 and header.images_root == root.as_posix()


def test_standard_layout_root_is_still_the_project(tmp_path):
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": SINGLE})
    _, header, _ = run(tmp_path, [root / "labeled-data/video1/CollectedData_alice.csv"])
    assert header.images_root == root.as_posix()


def test_h5_gives_the_csv_twins_records_and_is_not_read_twice(tmp_path):
    import pandas as pd

    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": MULTI.replace("video2", "video1")})
    csv_path = root / "labeled-data/video1/CollectedData_alice.csv"
    h5 = csv_path.with_suffix(".h5")
    pd.read_csv(csv_path, header=[0, 1, 2, 3], index_col=0).to_hdf(h5, key="df_with_missing", mode="w")
    _, _, from_csv = run(tmp_path, [csv_path])
    _, h_h5, from_h5 = run(tmp_path, [h5], fmt="auto")
    strip = [(r.image, r.instance, r.keypoints, r.bbox, r.group) for r in from_csv]
    assert strip == [(r.image, r.instance, r.keypoints, r.bbox, r.group) for r in from_h5]
    assert from_h5[0].source == {"file": "labeled-data/video1/CollectedData_alice.h5", "id": "row 0"}
    # both present: the folder and a glob read the CSV, once
    for sources in ([root], [csv_path, h5], [h5, csv_path]):
        result, header, recs = run(tmp_path, sources)
        assert header.source["files"] == ["labeled-data/video1/CollectedData_alice.csv"]
        assert len(recs) == len(from_csv)
    # only the .h5: the folder reads it
    csv_path.unlink()
    _, header, recs = run(tmp_path, [root])
    assert header.source["files"] == ["labeled-data/video1/CollectedData_alice.h5"] and len(recs) == len(from_csv)


def test_h5_without_pandas_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *a, **kw):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(AnnotationError, match=r"CollectedData_alice.h5: reading DeepLabCut .h5 files needs pandas "
                                              r"and PyTables: pip install 'kpconv\[h5\]'"):
        run(tmp_path, [FIXTURES / "dlc-h5"], fmt="auto")


def test_keypoints_option_with_an_unknown_name(tmp_path):
    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": SINGLE})
    with pytest.raises(AnnotationError, match=r"CollectedData_alice.csv:2: --keypoints: 'nose' not among the bodyparts"):
        run(tmp_path, [root], options=IngestOptions(keypoints=["snout", "nose"]))


def test_h5_with_index_names_and_several_keys(tmp_path):
    import pandas as pd

    root = project(tmp_path, {"labeled-data/video1/CollectedData_alice.csv": SINGLE})
    csv_path = root / "labeled-data/video1/CollectedData_alice.csv"
    _, _, from_csv = run(tmp_path, [csv_path])
    df = pd.read_csv(csv_path, header=[0, 1, 2], index_col=0).rename_axis(index="frame")
    h5 = tmp_path / "CollectedData_alice.h5"
    df.to_hdf(h5, key="df_with_missing", mode="w")
    df.to_hdf(h5, key="other", mode="a")
    _, _, from_h5 = run(tmp_path, [h5], images=root)
    assert [(r.image, r.keypoints) for r in from_h5] == [(r.image, r.keypoints) for r in from_csv]
