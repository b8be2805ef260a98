"""TFRecord framing and tf.train.Example encoding without TensorFlow, checked against TensorFlow."""
from __future__ import annotations

import io
import struct

import pytest

from kpconv.errors import VerifyError
from kpconv.tfrecord import (TFRecordWriter, crc32c, decode_example, encode_example, frame, masked_crc32c,
                             read_records)

FEATURES = {
    "image/encoded": ("bytes", [b"\x00\xff\xfe binary"]),
    "name": ("bytes", ["é unicode"]),
    "b/many": ("bytes", [b"", b"a", b"bc"]),
    "f": ("float", [0.5, -1.25, 3.14159, 1e-7]),
    "i": ("int64", [0, 1, -1, 300, 2 ** 40, -(2 ** 62)]),
    "empty/f": ("float", []),
    "empty/i": ("int64", []),
    "empty/b": ("bytes", []),
}


def test_crc32c_check_value():
    # the standard CRC-32C check value, and TensorFlow's masking of it
    assert crc32c(b"123456789") == 0xE3069283
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_frame_layout():
    data = b"hello"
    rec = frame(data)
    assert struct.unpack("<Q", rec[:8])[0] == 5
    assert struct.unpack("<I", rec[8:12])[0] == masked_crc32c(rec[:8])
    assert rec[12:17] == data
    assert struct.unpack("<I", rec[17:])[0] == masked_crc32c(data)


def test_example_round_trip():
    decoded = decode_example(encode_example(FEATURES))
    assert set(decoded) == set(FEATURES)
    assert decoded["i"] == ("int64", [0, 1, -1, 300, 2 ** 40, -(2 ** 62)])
    assert decoded["name"] == ("bytes", ["é unicode".encode()])
    assert decoded["empty/f"] == ("float", [])
    assert decoded["f"][1] == pytest.approx([0.5, -1.25, 3.14159, 1e-7], rel=1e-6)


def test_encoding_is_independent_of_insertion_order():
    reordered = dict(reversed(list(FEATURES.items())))
    assert encode_example(reordered) == encode_example(FEATURES)


def _write(tmp_path, name, compression, items):
    path = tmp_path / name
    with open(path, "wb") as f:
        w = TFRecordWriter(f, compression)
        for d in items:
            w.write(d)
        w.close()
    return path


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_read_back(tmp_path, compression):
    items = [b"", b"x" * 1000, encode_example(FEATURES)]
    path = _write(tmp_path, "a.tfrecord", compression, items)
    assert list(read_records(str(path), compression)) == items


def test_gzip_output_is_deterministic(tmp_path):
    a = _write(tmp_path, "a.gz", "gzip", [b"abc"] * 10).read_bytes()
    b = _write(tmp_path, "b.gz", "gzip", [b"abc"] * 10).read_bytes()
    assert a == b


def test_corruption_names_the_record(tmp_path):
    path = _write(tmp_path, "a.tfrecord", "none", [b"first", b"second", b"third"])
    raw = bytearray(path.read_bytes())
    second = len(frame(b"first"))
    raw[second + 12 + 2] ^= 0x01  # a byte of the second record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match=r"record 1: data CRC mismatch"):
        list(read_records(str(path)))
    path.write_bytes(bytes(raw[:second + 14]))  # truncated inside the second record
    with pytest.raises(VerifyError, match=r"record 1: truncated record"):
        list(read_records(str(path), check_crc=False))


@pytest.mark.slow
def test_bytes_identical_to_tensorflow(tmp_path):
    import tensorflow as tf

    ex = tf.train.Example()
    for name, (kind, values) in FEATURES.items():
        f = ex.features.feature[name]
        lst = {"bytes": f.bytes_list, "float": f.float_list, "int64": f.int64_list}[kind]
        lst.SetInParent()
        lst.value.extend(v.encode() if isinstance(v, str) else v for v in values)
    ref = ex.SerializeToString(deterministic=True)
    assert encode_example(FEATURES) == ref

    tf_path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(tf_path) as w:
        w.write(ref)
        w.write(b"")
    ours = _write(tmp_path, "ours.tfrecord", "none", [encode_example(FEATURES), b""])
    assert ours.read_bytes() == open(tf_path, "rb").read()

    gz = _write(tmp_path, "ours.tfrecord.gz", "gzip", [encode_example(FEATURES), b"x"])
    got = list(tf.data.TFRecordDataset(str(gz), compression_type="GZIP").as_numpy_iterator())
    assert got == [ref, b"x"]


def test_record_spec_json_matches_records_module():
    import json

    from conftest import REPO
    from kpconv.records import FEATURES, SPEC_VERSION

    spec = json.loads((REPO / "schemas" / "record-spec.json").read_text())
    assert spec["spec_version"] == SPEC_VERSION
    assert {f["name"]: (f["dtype"], tuple(f["shape"])) for f in spec["features"]} == FEATURES
    # no name is a prefix of another, so every protobuf library's deterministic map order agrees
    names = list(FEATURES)
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]


def test_to_example_and_decode_record():
    from kpconv.records import decode_record, to_example

    data = to_example(image=b"\xff\xd8jpeg", image_format="jpeg", height=2, width=3, source_path="a/b.jpg",
                      original_height=20, original_width=30, instance_id="7", bbox=[0.1, 0.2, 0.3, 0.4],
                      keypoints=[(0.5, 0.25, 2), (0.0, 0.0, 0)], transform=[10, 0, 0, 0, 10, 0])
    r = decode_record(data, 2)
    assert r["image/encoded"] == b"\xff\xd8jpeg" and r["image/source_path"] == "a/b.jpg"
    assert r["keypoints/visibility"] == [2, 0] and r["keypoints/x"] == [0.5, 0.0]
    with pytest.raises(ValueError, match="expected 3 value"):
        decode_record(data, 3)
