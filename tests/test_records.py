"""The record spec (kpconv.data.records): one definition, the protobuf library's Example messages, the
generated schemas/record-spec.json, and the same bytes as TensorFlow."""
from __future__ import annotations

import json

import pytest

from conftest import REPO
from kpconv.data.records import FEATURES, SPEC_VERSION, decode_record, feature_description, spec_json, to_example

FIELDS = dict(image=b"\xff\xd8jpeg", image_format="jpeg", height=2, width=3, source_path="a/é.jpg",
              original_height=20, original_width=30, instance_id="7", bbox=[0.1, 0.2, 0.3, 0.4],
              keypoints=[(0.5, 0.25, 2), (0.0, 0.0, 0)], transform=[10, 0, 0.5, 0, 10, -1.5])


def test_round_trip():
    r = decode_record(to_example(**FIELDS), 2)
    assert r["image/encoded"] == b"\xff\xd8jpeg" and r["image/source_path"] == "a/é.jpg"
    assert r["image/format"] == "jpeg" and r["instance/id"] == "7"
    assert (r["image/width"], r["image/height"], r["image/original_width"]) == (3, 2, 30)
    assert r["keypoints/visibility"] == [2, 0] and r["keypoints/x"] == [0.5, 0.0]
    assert r["instance/bbox"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert r["transform/stored_to_original"] == [10, 0, 0.5, 0, 10, -1.5]


def test_every_instance_of_the_image_round_trips():
    r = decode_record(to_example(**FIELDS, instance_index=1, centers=[(0.1, 0.2), (0.6, 0.7)],
                                 boxes=[(0, 0, 0.2, 0.4), (0.5, 0.5, 0.2, 0.4)],
                                 instance_keypoints=[[(0.1, 0.2, 2), (0, 0, 0)], FIELDS["keypoints"]]), 2)
    assert r["image/instances/keypoints"] == pytest.approx([0.1, 0.2, 2, 0, 0, 0, 0.5, 0.25, 2, 0, 0, 0])
    assert r["instance/index"] == 1
    assert r["image/instances/center"] == pytest.approx([0.1, 0.2, 0.6, 0.7])
    assert r["image/instances/bbox"] == pytest.approx([0, 0, 0.2, 0.4, 0.5, 0.5, 0.2, 0.4])
    with pytest.raises(ValueError, match="instance_index 2: expected one of 2"):
        to_example(**FIELDS, instance_index=2, centers=[(0, 0)] * 2, boxes=[(0, 0, 1, 1)] * 2)
    from kpconv.proto import Example

    ex = Example.FromString(to_example(**FIELDS))
    ex.features.feature["image/instances/bbox"].float_list.value.append(1.0)
    with pytest.raises(ValueError, match="'image/instances/bbox': expected a positive multiple of 4"):
        decode_record(ex.SerializeToString(), 2)


def test_records_that_do_not_follow_the_spec_are_named():
    data = to_example(**FIELDS)
    with pytest.raises(ValueError, match="feature 'keypoints/x': expected 3 value"):
        decode_record(data, 3)
    with pytest.raises(ValueError, match="not a tf.train.Example"):
        decode_record(b"\xff\xff\xff", 2)
    from kpconv.proto import Example

    ex = Example.FromString(data)
    del ex.features.feature["instance/id"]
    with pytest.raises(ValueError, match="feature 'instance/id' is missing"):
        decode_record(ex.SerializeToString(), 2)
    ex = Example.FromString(data)
    ex.features.feature["image/width"].float_list.value.append(3.0)
    with pytest.raises(ValueError, match="feature 'image/width': expected int64, got float"):
        decode_record(ex.SerializeToString(), 2)


def test_record_spec_json_is_generated_from_the_definition():
    """schemas/record-spec.json is current (regenerate: python -c 'from kpconv.data.records import spec_json;
    print(spec_json(), end="")' > kpconv/schemas/record-spec.json)."""
    text = (REPO / "schemas" / "record-spec.json").read_text(encoding="utf-8")
    assert text == spec_json()
    spec = json.loads(text)
    assert spec["spec_version"] == SPEC_VERSION
    assert [f["name"] for f in spec["features"]] == list(FEATURES)
    # no name is a prefix of another, so every protobuf library's deterministic map order agrees
    names = list(FEATURES)
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]


@pytest.mark.slow
def test_bytes_and_messages_identical_to_tensorflow():
    import tensorflow as tf
    from tensorflow.core.example import example_pb2, feature_pb2

    from kpconv import proto

    assert proto.FEATURE_PROTO == feature_pb2.DESCRIPTOR.serialized_pb      # the vendored messages are TF's
    assert proto.EXAMPLE_PROTO == example_pb2.DESCRIPTOR.serialized_pb
    values = {"image/encoded": [FIELDS["image"]], "image/format": [b"jpeg"], "image/height": [2],
              "image/width": [3], "image/source_path": ["a/é.jpg".encode()], "image/original_height": [20],
              "image/original_width": [30], "instance/id": [b"7"], "instance/bbox": FIELDS["bbox"],
              "keypoints/x": [0.5, 0.0], "keypoints/y": [0.25, 0.0], "keypoints/visibility": [2, 0],
              "transform/stored_to_original": FIELDS["transform"], "instance/index": [0],
              "image/instances/center": [0.25, 0.4000000059604645], "image/instances/bbox": FIELDS["bbox"],
              "image/instances/keypoints": [0.5, 0.25, 2, 0.0, 0.0, 0]}
    ex = tf.train.Example()
    for name, (dtype, _, _) in reversed(FEATURES.items()):   # inserted in reverse: the order must not matter
        lst = getattr(ex.features.feature[name], f"{dtype}_list")
        lst.value.extend(values[name])
    assert to_example(**FIELDS) == ex.SerializeToString(deterministic=True)
    parsed = tf.io.parse_single_example(to_example(**FIELDS), feature_description(2))
    assert parsed["keypoints/visibility"].numpy().tolist() == [2, 0]
    assert tf.sparse.to_dense(parsed["image/instances/center"]).numpy().tolist() == pytest.approx([0.25, 0.4])
