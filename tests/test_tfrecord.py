"""TFRecord framing without TensorFlow, checked against TensorFlow."""
from __future__ import annotations

import io
import struct

import pytest

from kpconv.errors import VerifyError
from kpconv.data.tfrecord import TFRecordWriter, crc32c, frame, masked_crc32c, read_records

RECORD = b"\n\x0f\n\r\n\x01a\x12\x08\x12\x06\n\x04\x00\x00\x00?"   # an Example with one float feature


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
    items = [b"", b"x" * 1000, RECORD]
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
def test_framing_identical_to_tensorflow(tmp_path):
    import tensorflow as tf

    tf_path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(tf_path) as w:
        w.write(RECORD)
        w.write(b"")
    ours = _write(tmp_path, "ours.tfrecord", "none", [RECORD, b""])
    assert ours.read_bytes() == open(tf_path, "rb").read()

    gz = _write(tmp_path, "ours.tfrecord.gz", "gzip", [RECORD, b"x"])
    got = list(tf.data.TFRecordDataset(str(gz), compression_type="GZIP").as_numpy_iterator())
    assert got == [RECORD, b"x"]
