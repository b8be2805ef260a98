"""YOLO pose reader: data.yaml, splits as folders and lists, label rows, flip_idx, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kpconv.data import formats
from kpconv.errors import AnnotationError
from kpconv.data.formats.base import IngestOptions
from kpconv.data.formats.yolo import label_path
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest

W, H = 64, 48

YAML = """path: .
train: images/train
val: images/val
kpt_shape: [3, 3]
flip_idx: [0, 2, 1]
kpt_names:
  0: [nose, left_eye, right_eye]
names:
  0: person
"""


def dataset(tmp_path: Path, labels: dict, yaml: str = YAML, images=()) -> Path:
    root = tmp_path / "ds"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    for rel, text in labels.items():
        split, stem = rel.split("/")
        img = root / "images" / split / f"{stem}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(img)
        lab = root / "labels" / split / f"{stem}.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text(text)
    for rel in images:
        img = root / "images" / rel
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(img)
    (root / "data.yaml").write_text(yaml)
    return root


def run(tmp_path, sources, **kw):
    out = tmp_path / "out.jsonl"
    result = ingest([str(s) for s in sources], output=str(out), fmt=kw.pop("fmt", "yolo"), **kw)
    header, records = read_manifest(str(out))
    return result, header, records


def test_dataset_folder(tmp_path):
    root = dataset(tmp_path, {
        "train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0.25 0.25 1 0 0 0\n0 0.2 0.2 0.2 0.2 0.1 0.1 2 0 0 0 0.3 0.3 2\n",
        "val/b": "0 0.5 0.5 1 1 0.75 0.25 2.0 0 0 0 0 0 0\n"}, images=["train/unlabelled.png"])
    result, header, records = run(tmp_path, [root], fmt="auto")
    assert result.format == "yolo"
    assert header.keypoints == ["nose", "left_eye", "right_eye"]
    assert header.flip_pairs == [(1, 2)]
    assert header.images_root == root.as_posix()
    assert header.source["kpt_shape"] == [3, 3] and header.source["splits"] == ["train", "val"]
    assert [(r.image, r.instance, r.split) for r in records] == [
        ("images/train/a.png", "0", "train"), ("images/train/a.png", "1", "train"), ("images/val/b.png", "0", "val")]
    a0 = records[0]
    assert a0.keypoints == [[0.5, 0.5, 2], [0.25, 0.25, 1], [0.0, 0.0, 0]]
    assert a0.bbox == [0.25, 0.25, 0.5, 0.5]
    assert a0.source == {"file": "labels/train/a.txt", "line": 1}
    assert records[1].keypoints[2] == [0.3, 0.3, 2] and records[1].source["line"] == 2
    assert records[2].keypoints[0] == [0.75, 0.25, 2]
    assert result.report.counts == {"no_label_file": 1}     # the unlabelled image: counted and located
    assert str(result.report.first[0]) == (f"{root}/images/train/unlabelled.png: image images/train/unlabelled.png "
                                           "has no label file labels/train/unlabelled.txt: no instance read from it "
                                           "(a background image to YOLO; kpconv's records are instances, so it adds "
                                           "nothing)")


def test_yaml_given_flip_idx_overrides_names(tmp_path):
    yaml = YAML.replace("flip_idx: [0, 2, 1]", "flip_idx: [0, 1, 2]")
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0.25 0.25 2 0.7 0.25 2\n"}, yaml=yaml.replace("val: images/val\n", ""))
    _, header, _ = run(tmp_path, [root / "data.yaml"])
    assert header.flip_pairs == []  # stated by the source: identity, no pair


def test_two_dim_keypoints_and_default_names(tmp_path):
    yaml = "train: images/train\nkpt_shape: [2, 2]\n"
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 0 0\n"}, yaml=yaml)
    _, header, records = run(tmp_path, [root])
    assert header.keypoints == ["kp0", "kp1"]
    assert header.flip_pairs == []
    assert records[0].keypoints == [[0.5, 0.5, 2], [0.0, 0.0, 0]]
    _, header, _ = run(tmp_path, [root], options=IngestOptions(keypoints=["head", "tail"]))
    assert header.keypoints == ["head", "tail"]
    with pytest.raises(AnnotationError, match="kpt_shape"):
        run(tmp_path, [root], options=IngestOptions(keypoints=["head"]))


def test_txt_split_list(tmp_path):
    yaml = YAML.replace("train: images/train", "train: train.txt")
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n",
                              "train/b": "0 0.5 0.5 0.5 0.5 0.4 0.5 2 0 0 0 0 0 0\n",
                              "val/c": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"}, yaml=yaml)
    (root / "train.txt").write_text("./images/train/b.png\nimages/train/a.png\n")
    _, _, records = run(tmp_path, [root])
    assert [r.image for r in records] == ["images/train/b.png", "images/train/a.png", "images/val/c.png"]


def test_bad_rows_are_located(tmp_path):
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2\n0 0.5 0.5 0.5 0.5 0.5 x 2 0 0 0 0 0 0\n"
                                         "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"})
    result, _, records = run(tmp_path, [root])
    assert len(records) == 1 and records[0].source["line"] == 3
    msgs = [str(p) for p in result.report.first]
    lab = root / "labels/train/a.txt"
    assert msgs == [f"{lab}:1: expected 14 values (class, cx, cy, w, h and 3 x 3 keypoint values), got 8",
                    f"{lab}:2: expected numbers, got 'x'"]


def test_out_of_image_and_bad_visibility_go_through_ingest(tmp_path):
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 1.5 0.5 2 0 0 0 0 0 0\n"
                                         "0 0.5 0.5 0.5 0.5 0.5 0.5 7 0 0 0 0 0 0\n"
                                         "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"})
    result, _, records = run(tmp_path, [root])
    assert len(records) == 1
    assert result.report.counts == {"out_of_image": 1, "bad_visibility": 1}


@pytest.mark.parametrize("yaml, field", [
    ("train: images/train\nkpt_shape: [3]\n", "kpt_shape"),
    ("train: images/train\nkpt_shape: [3, 3]\nflip_idx: [0, 2]\n", "flip_idx"),
    ("train: images/train\nkpt_shape: [3, 3]\nflip_idx: [1, 2, 0]\n", "flip_idx"),
    ("train: images/train\nkpt_shape: [3, 3]\nkpt_names: [a, b]\n", "kpt_names"),
    ("train: images/nope\nkpt_shape: [3, 3]\n", "train"),
])
def test_bad_yaml(tmp_path, yaml, field):
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"}, yaml=yaml)
    with pytest.raises(AnnotationError) as e:
        run(tmp_path, [root])
    assert f"data.yaml: field '{field}'" in str(e.value)


def test_category_keeps_one_class(tmp_path):
    yaml = YAML.replace("  0: person\n", "  0: person\n  1: dog\n")
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"
                                         "1 0.5 0.5 0.5 0.5 0.4 0.5 2 0 0 0 0 0 0\n"}, yaml=yaml)
    result, header, records = run(tmp_path, [root], options=IngestOptions(category="dog"))
    assert [r.keypoints[0][0] for r in records] == [0.4]
    assert result.report.counts == {"other_category": 1}
    assert header.source["classes"] == ["person", "dog"]


def test_several_classes_are_read_with_their_class_never_merged_silently(tmp_path):
    yaml = YAML.replace("  0: person\n", "  0: person\n  1: dog\n")
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"
                                         "1 0.5 0.5 0.5 0.5 0.4 0.5 2 0 0 0 0 0 0\n"}, yaml=yaml)
    result, header, records = run(tmp_path, [root])
    assert [r.category for r in records] == ["person", "dog"]
    assert result.report.counts == {"several_categories": 1} and not result.report.fails_strict
    assert str(result.report.first[0]).endswith("field 'names': 2 classes read together: person, dog; each record "
                                                "keeps its class in 'category' (choose one with --category)")
    result, header, records = run(tmp_path, [root], options=IngestOptions(category="1"))
    assert [r.category for r in records] == [None] and result.report.counts == {"other_category": 1}
    # one class: no category on the records
    root = dataset(tmp_path / "one", {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"})
    _, _, records = run(tmp_path, [root])
    assert [r.category for r in records] == [None]


def test_image_in_two_splits_is_a_located_warning(tmp_path):
    yaml = YAML.replace("train: images/train", "train: train.txt").replace("val: images/val", "val: val.txt")
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n",
                              "train/b": "0 0.5 0.5 0.5 0.5 0.4 0.5 2 0 0 0 0 0 0\n"}, yaml=yaml)
    (root / "train.txt").write_text("images/train/a.png\nimages/train/b.png\n")
    (root / "val.txt").write_text("images/train/b.png\n")
    result, _, records = run(tmp_path, [root])
    assert [(r.image, r.split) for r in records] == [("images/train/a.png", "train"), ("images/train/b.png", "train")]
    assert result.report.counts == {"image_in_two_splits": 1} and result.report.fails_strict
    assert str(result.report.first[0]) == (f"{root / 'val.txt'}:1: image images/train/b.png is listed in split "
                                           "'train' and again in 'val'; keeping it in 'train'")


def test_label_path_rule():
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    assert label_path(Path("/images/d/images/x.y.png")) == Path("/images/d/labels/x.y.txt")
    assert label_path(Path("/d/pics/x.png")) == Path("/d/pics/x.txt")


def test_detect(tmp_path):
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"})
    cls = formats.get("yolo")
    assert cls.detect([root]) and cls.detect([root / "data.yaml"])
    other = tmp_path / "det.yaml"
    other.write_text("train: images\nnames: [a]\n")
    assert not cls.detect([other])
    assert not cls.detect([tmp_path])


def test_stated_path_missing_here_falls_back_to_the_yaml_folder(tmp_path):
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0 0 0 0 0 0\n"},
                   yaml=YAML.replace("path: .", "path: ../datasets/animals-pose"))
    _, header, records = run(tmp_path, [root])
    assert header.images_root == root.as_posix()
    assert header.source["path_not_found"] == "../datasets/animals-pose"
    assert [r.image for r in records] == ["images/train/a.png"]


def test_keypoints_option_subset_and_unknown_name(tmp_path):
    root = dataset(tmp_path, {"train/a": "0 0.5 0.5 0.5 0.5 0.5 0.5 2 0.25 0.25 2 0.75 0.25 1\n"})
    _, header, records = run(tmp_path, [root], options=IngestOptions(keypoints=["right_eye", "nose"]))
    assert header.keypoints == ["right_eye", "nose"] and header.flip_pairs == []
    assert records[0].keypoints == [[0.75, 0.25, 1], [0.5, 0.5, 2]]
    with pytest.raises(AnnotationError, match=r"data.yaml: field 'kpt_names': --keypoints: 'tail' not among"):
        run(tmp_path, [root], options=IngestOptions(keypoints=["nose", "tail"]))
