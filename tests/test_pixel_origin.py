"""Each reader's pixel convention (``PIXEL_ORIGIN``, kpconv.data.formats.base.PIXEL_ORIGINS): a 16x12 image with one
bright pixel at column 7, row 5, labelled as each tool labels that pixel's centre (7, 5 where pixel centres
are at integer coordinates; 7.5, 5.5 where coordinates are continuous; a percentage or a fraction where the
format normalizes), gives the manifest point (7.5, 5.5) in kpconv's continuous pixels (records.CONVENTIONS):
the bright pixel's centre."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kpconv.data import formats
from kpconv.data.formats.base import PIXEL_ORIGINS, continuous_offset, from_continuous
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest

W, H, PX, PY = 16, 12, 7, 5     # the image, and the bright pixel's column and row


def _image(path):
    a = np.full((H, W, 3), 30, np.uint8)
    a[PY, PX] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _coco(d):
    _image(d / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": [PX, PY, 2],
                            "bbox": [PX, PY, 1, 1]}],
           "categories": [{"id": 1, "name": "dot", "keypoints": ["dot"], "skeleton": []}]}
    (d / "a.json").write_text(json.dumps(doc))
    return d / "a.json"


def _csv(d):
    _image(d / "a.png")
    (d / "labels.csv").write_text(f"image,dot_x,dot_y\na.png,{PX + 0.5},{PY + 0.5}\n")
    return d / "labels.csv"


def _cvat(d):
    _image(d / "images" / "a.png")
    (d / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
        f'  <image id="0" name="a.png" width="{W}" height="{H}">\n'
        f'    <points label="dot" source="manual" occluded="0" points="{PX + 0.5:.2f},{PY + 0.5:.2f}" z_order="0">'
        '</points>\n  </image>\n</annotations>\n')
    return d / "annotations.xml"


def _dlc(d):
    _image(d / "labeled-data" / "v" / "a.png")
    (d / "labeled-data" / "v" / "CollectedData_x.csv").write_text(
        f"scorer,x,x\nbodyparts,dot,dot\ncoords,x,y\nlabeled-data/v/a.png,{PX},{PY}\n")
    return d


def _dlib(d):
    _image(d / "a.png")
    (d / "a.xml").write_text(
        "<?xml version='1.0' encoding='ISO-8859-1'?>\n<dataset>\n<name>t</name>\n<images>\n"
        f"  <image file='a.png'>\n    <box top='{PY}' left='{PX}' width='1' height='1'>\n"
        f"      <part name='dot' x='{PX}' y='{PY}'/>\n    </box>\n  </image>\n</images>\n</dataset>\n")
    return d / "a.xml"


def _kpconv_json(d):
    _image(d / "a.png")
    doc = {"kpconv_annotations": 1, "keypoints": ["dot"],
           "images": [{"file": "a.png", "instances": [{"keypoints": {"dot": [PX + 0.5, PY + 0.5]}}]}]}
    (d / "a.json").write_text(json.dumps(doc))
    return d / "a.json"


def _label_studio(d):
    _image(d / "a.png")
    result = {"original_width": W, "original_height": H, "image_rotation": 0,
              "value": {"x": (PX + 0.5) / W * 100, "y": (PY + 0.5) / H * 100, "width": 0.6, "keypointlabels": ["dot"]},
              "id": "k1", "from_name": "kp", "to_name": "img", "type": "keypointlabels", "origin": "manual"}
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/1a2b3c4d-a.png"},
              "annotations": [{"id": 1, "result": [result], "was_cancelled": False}]}]
    (d / "project-1-at-2024-05-02-10-02-1a2b3c4d.json").write_text(json.dumps(tasks))
    return d / "project-1-at-2024-05-02-10-02-1a2b3c4d.json"


def _labelme(d):
    _image(d / "a.png")
    doc = {"version": "5.2.1", "flags": {}, "imagePath": "a.png", "imageData": None, "imageHeight": H,
           "imageWidth": W, "shapes": [{"label": "dot", "points": [[PX + 0.5, PY + 0.5]], "group_id": None,
                                        "shape_type": "point", "flags": {}}]}
    (d / "a.json").write_text(json.dumps(doc))
    return d


def _sleap(d):
    sio = pytest.importorskip("sleap_io")
    _image(d / "a.png")
    video = sio.Video.from_filename([str(d / "a.png")])
    inst = sio.Instance.from_numpy(np.array([[PX, PY]], float), skeleton=sio.Skeleton(nodes=["dot"]))
    sio.save_slp(sio.Labels(labeled_frames=[sio.LabeledFrame(video=video, frame_idx=0, instances=[inst])]),
                 str(d / "l.slp"), verbose=False)
    return d / "l.slp"


def _yolo(d):
    _image(d / "images" / "train" / "a.png")
    (d / "data.yaml").write_text("path: .\ntrain: images/train\nkpt_shape: [1, 3]\nnames:\n  0: dot\n")
    x, y = (PX + 0.5) / W, (PY + 0.5) / H
    (d / "labels" / "train").mkdir(parents=True)
    (d / "labels" / "train" / "a.txt").write_text(f"0 {x!r} {y!r} {1 / W!r} {1 / H!r} {x!r} {y!r} 2\n")
    return d


# format -> (how the tool writes the bright pixel's centre, the convention that implies)
LABELLED = {"coco": (_coco, "center"), "csv": (_csv, "corner"), "cvat": (_cvat, "corner"), "dlc": (_dlc, "center"),
            "dlib": (_dlib, "center"), "kpconv-json": (_kpconv_json, "corner"),
            "label-studio": (_label_studio, "corner"), "labelme": (_labelme, "corner"), "sleap": (_sleap, "center"),
            "yolo": (_yolo, "corner")}


def test_every_reader_declares_its_convention():
    assert set(LABELLED) == set(formats.names())    # a new reader needs its case here
    for name in formats.names():
        assert formats.get(name).pixel_origin in PIXEL_ORIGINS


@pytest.mark.parametrize("fmt", sorted(LABELLED))
def test_a_labelled_pixel_centre_is_that_pixel_centre_in_the_manifest(tmp_path, fmt):
    make, origin = LABELLED[fmt]
    assert formats.get(fmt).pixel_origin == origin
    source = make(tmp_path / "data")
    out = tmp_path / "m.jsonl"
    ingest([str(source)], output=str(out), fmt=fmt)
    header, records = read_manifest(str(out))
    assert len(records) == 1
    image = np.asarray(Image.open(header.images_root + "/" + records[0].image).convert("L"))
    x, y, v = records[0].keypoints[0]
    assert v == 2
    assert (x * W, y * H) == pytest.approx((PX + 0.5, PY + 0.5), abs=1e-4)
    # the point lies on the bright pixel (the continuous convention: pixel i spans i .. i + 1)
    assert image[int(y * H), int(x * W)] == 255 and np.count_nonzero(image == 255) == 1


def test_writers_convert_back():
    assert from_continuous(PX + 0.5, "center") == PX and from_continuous(PX + 0.5, "corner") == PX + 0.5
    assert from_continuous(np.array([PX + 0.5]), formats.get("dlc").pixel_origin).tolist() == [PX]
    assert continuous_offset("center") == 0.5
    with pytest.raises(ValueError, match="pixel origin 'middle'"):
        continuous_offset("middle")
