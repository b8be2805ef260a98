"""The TFRecord record spec: the one place that knows what a shard record holds. Versioned.

Each record is a ``tf.train.Example`` for one instance (spec version ``SPEC_VERSION``):

=============================  ========  =====  ==============================================
feature                        dtype     shape  meaning
=============================  ========  =====  ==============================================
image/encoded                  bytes     ()     encoded image bytes (JPEG or PNG)
image/format                   bytes     ()     ``jpeg`` or ``png``
image/height, image/width      int64     ()     stored image size in pixels
image/source_path              bytes     ()     image path from the manifest (relative to its root)
image/original_height, _width  int64     ()     original image size (EXIF orientation applied)
instance/id                    bytes     ()     instance id (unique within the source image)
instance/bbox                  float     (4,)   [x, y, w, h] normalized to the stored image
keypoints/x, keypoints/y       float     (K,)   normalized to the stored image (continuous pixel
                                                convention: pixel i's centre is (i + 0.5) / size)
keypoints/visibility           int64     (K,)   0 not labelled / outside, 1 occluded, 2 visible
transform/stored_to_original   float     (6,)   [a, b, c, d, e, f]: an original pixel coordinate is
                                                x' = a*x + b*y + c, y' = d*x + e*y + f for a stored
                                                pixel coordinate (x, y) (continuous convention)
=============================  ========  =====  ==============================================

Keypoint names, skeleton and flip pairs live in ``dataset_info.json``, not in the records. A JSON
description of this table is ``schemas/record-spec.json``.

Nothing here imports TensorFlow at module import time.
"""
from __future__ import annotations

SPEC_VERSION = 1

# name -> (dtype, shape); shape "K" means one value per keypoint.
FEATURES = {
    "image/encoded": ("bytes", ()),
    "image/format": ("bytes", ()),
    "image/height": ("int64", ()),
    "image/width": ("int64", ()),
    "image/source_path": ("bytes", ()),
    "image/original_height": ("int64", ()),
    "image/original_width": ("int64", ()),
    "instance/id": ("bytes", ()),
    "instance/bbox": ("float", (4,)),
    "keypoints/x": ("float", ("K",)),
    "keypoints/y": ("float", ("K",)),
    "keypoints/visibility": ("int64", ("K",)),
    "transform/stored_to_original": ("float", (6,)),
}


def feature_description(num_keypoints: int) -> dict:
    """``{name: tf.io.FixedLenFeature}`` for ``tf.io.parse_single_example`` / ``parse_example``."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    out = {}
    for name, (dtype, shape) in FEATURES.items():
        shape = tuple(num_keypoints if s == "K" else s for s in shape)
        out[name] = tf.io.FixedLenFeature(shape, dtypes[dtype])
    return out


def parse_example(serialized, num_keypoints: int):
    """Parse one serialized record (a scalar string tensor) into a dict of tensors."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_description(num_keypoints))


def record_features(*, image: bytes, image_format: str, height: int, width: int, source_path: str,
                    original_height: int, original_width: int, instance_id: str, bbox, keypoints,
                    transform) -> dict:
    """The features of one record, for :func:`kpconv.tfrecord.encode_example` (no TensorFlow needed).

    ``keypoints`` is K x (x, y, v) normalized to the stored image; ``bbox`` and ``transform`` as in
    the table above."""
    kinds = {name: dtype for name, (dtype, _) in FEATURES.items()}
    values = {
        "image/encoded": [image],
        "image/format": [image_format],
        "image/height": [height],
        "image/width": [width],
        "image/source_path": [source_path],
        "image/original_height": [original_height],
        "image/original_width": [original_width],
        "instance/id": [instance_id],
        "instance/bbox": list(bbox),
        "keypoints/x": [p[0] for p in keypoints],
        "keypoints/y": [p[1] for p in keypoints],
        "keypoints/visibility": [int(p[2]) for p in keypoints],
        "transform/stored_to_original": list(transform),
    }
    return {name: (kinds[name], values[name]) for name in FEATURES}


def to_example(**fields) -> bytes:
    """One serialized record (``tf.train.Example`` bytes, deterministic); arguments as :func:`record_features`."""
    from .tfrecord import encode_example

    return encode_example(record_features(**fields))


def decode_record(data: bytes, num_keypoints: int) -> dict:
    """A serialized record -> ``{name: value}`` (scalars unwrapped, bytes kept, strings decoded), without
    TensorFlow. Raises ValueError naming the feature when the record does not follow the spec."""
    from .tfrecord import decode_example

    raw = decode_example(data)
    out = {}
    for name, (dtype, shape) in FEATURES.items():
        if name not in raw:
            raise ValueError(f"feature {name!r} is missing")
        kind, values = raw[name]
        if kind != dtype:
            raise ValueError(f"feature {name!r}: expected {dtype}, got {kind}")
        n = 1 if shape == () else (num_keypoints if shape[0] == "K" else shape[0])
        if len(values) != n:
            raise ValueError(f"feature {name!r}: expected {n} value(s), got {len(values)}")
        if shape == ():
            value = values[0]
            if dtype == "bytes" and name != "image/encoded":
                value = value.decode("utf-8")
            out[name] = value
        else:
            out[name] = list(values)
    return out
